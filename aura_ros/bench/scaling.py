"""`aura-ros bench scaling`: step time against the KV budget, per eviction policy, at capacity.

For each budget every policy gets its own cache, filled to capacity with synthetic steps of the
real step size (random keys and values, gate values of a realistic mix), so that a 256 MiB cache is
full in seconds rather than after an hour of stepping. Then every timed step runs through
``policy.step`` and evicts as the policy decides. The policies take their steps in turn, one each
per round, so a change of machine load touches all of them alike and the ratios stay fair.

The reference is the physical limit: the same model and the same full cache, with no eviction at
all. Its cache is filled to one step short of capacity, so the timed step fills it without
evicting; after each timed step the step's tokens are cut off again (a length reset, no data
moves), so the next step sees the same full cache. Its step time is the forward pass over a full
cache plus the policy's per-step work, and nothing of eviction (not even the planner).

A policy that frees a block when full (``block_fraction``) evicts once every P steps, with P in
the hundreds at large budgets: timing whole periods at 256 MiB would take hours. So the bench
times two kinds of step for each policy and combines them as the long run does. Every
``evict_every``-th round the cache is first refilled (untimed) to within one step of capacity, so
that round's step evicts; the other rounds' steps are quiet, each after a refill to a point spread
evenly over the freed block (the cache's fill, and so the attention's cost, falls by a block at
each eviction and climbs back between them). P is measured from the tokens each
eviction freed, and the amortised step time is ``quiet + (evicting - quiet) / P``: the mean step
time of an endless run. Two figures come of it: the eviction cost per step, ``(evicting - quiet) /
P``, which is what the machinery adds (measured within one cache, so it is free of the few-percent
differences between caches); and the amortised mean against the physical limit, which also holds
what a block buys: between evictions the cache is on average half a block short of full, so its
attention is cheaper. The evicting step's own time is reported too: it is the latency a
controller sees once every P steps.
"""
from __future__ import annotations

import csv
import gc
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

POLICIES = ("physical_limit", "sliding_window", "streaming_llm", "h2o", "action_gate")
BUDGETS_MB = (1.0, 8.0, 64.0, 256.0)


@dataclass
class Row:
    policy: str
    budget_mb: float
    capacity_tokens: int
    steps: int
    block_fraction: float
    mean_ms: float  # amortised over the eviction period: the mean step time of an endless run
    quiet_ms: float  # mean of the steps that evicted nothing
    evict_ms: float  # mean of the steps that evicted
    period_steps: float  # steps per eviction (tokens freed per eviction / tokens per step)
    evict_cost_ms: float  # what evicting adds per step, amortised: (evict_ms - quiet_ms) / period_steps
    p50_ms: float  # of all timed steps
    p99_ms: float
    allocated_bytes_first: int
    allocated_bytes_last: int
    evictions: int  # evicting steps timed
    overhead: float = math.nan  # mean_ms / the physical limit's mean_ms - 1


@dataclass
class _Run:
    """One policy's cache and scene during a budget's rounds."""

    name: str
    policy: object
    scene: object
    config: object
    step_tokens: int
    first_alloc: int
    quiet: list = field(default_factory=list)
    evicting: list = field(default_factory=list)
    freed: list = field(default_factory=list)
    alloc: int = 0
    full_tokens: int = 0  # physical limit: the budget's capacity, which each timed step fills

    @property
    def physical(self) -> bool:
        return self.full_tokens > 0


def _fill(policy, rng: np.random.Generator, step_tokens: int, leave: int, capacity: int | None = None) -> None:
    """Add synthetic steps of ``step_tokens`` tokens until fewer than ``leave`` tokens are free
    (free within ``capacity`` when given, else within the cache's own). The store writes its own
    filler (``MemoryStore._storage_fill``: random keys and values, or on llama.cpp random
    plain-text tokens decoded at the next positions)."""
    from aura_ros.memory.segments import Kind

    cache = policy.kv_store
    step = policy.step_index
    while (capacity or cache.capacity) - cache.used_tokens >= leave:
        cache.reserve(step_tokens)
        cache._storage_fill(step_tokens, rng)
        gate = float(rng.random() ** 4)  # mostly quiet steps, a few events
        cache.commit(Kind.OBSERVATION, step, gate=gate, written=gate >= 0.5)
        step += 1
    policy.step_index = step
    cache.current_step = step - 1


def _start(policy_name: str, budget_mb: float, block_fraction: float, model: str | None, seed: int,
           model_kwargs: dict | None = None, max_context_steps: int | None = None) -> _Run:
    from aura_ros.core.config import PolicyConfig
    from aura_ros.core.registry import make_policy
    from aura_ros.core.types import Observation
    from aura_ros.sim.scene import SimScene

    eviction = "sliding_window" if policy_name == "physical_limit" else policy_name
    config = PolicyConfig(budget_bytes=int(budget_mb * 2**20), eviction=eviction,
                          block_fraction=0.0 if policy_name == "physical_limit" else block_fraction)
    if max_context_steps is not None:  # 0: the budget alone bounds what is read (a full cache is full)
        config = replace(config, max_context_steps=int(max_context_steps))
    policy = make_policy(model, config, instruction="pick up the red block and put it in the bin",
                         **(model_kwargs or {}))
    scene = SimScene(seed=seed)
    # Warm-up steps give the real step size and the first allocation.
    first = None
    for _ in range(3):
        _, pos, _ = scene.joint_state()
        a = policy.step(Observation(scene.render(), pos))
        first = first or a.stats.allocated_bytes
    step_tokens = a.stats.used_tokens // max(a.stats.steps_kept, 1)
    run = _Run(policy_name, policy, scene, config, step_tokens, first)
    if policy_name == "physical_limit":
        run.full_tokens = policy.kv_store.capacity
    return run


def _timed_step(run: _Run, rng: np.random.Generator, level: float | None) -> None:
    """One timed step. level None: first refill to within a step of capacity, so the step evicts.
    level in (0, 1): first refill to that point of the block that the last eviction freed, so the
    quiet steps see the fill levels of a real eviction period, not only the emptiest."""
    from aura_ros.core.types import Observation

    cache = run.policy.kv_store
    s = run.step_tokens
    if not run.physical:
        if level is None:
            _fill(run.policy, rng, s, leave=s)  # the next step cannot fit
        else:
            block = max(int(run.config.block_fraction * cache.capacity), s)
            _fill(run.policy, rng, s, leave=2 * s + int((1.0 - level) * (block - s)))
    _, pos, _ = run.scene.joint_state()
    frame = run.scene.render()
    used, ev = cache.used_tokens, cache.evictions_total
    t0 = time.perf_counter()
    a = run.policy.step(Observation(frame, pos))
    ms = (time.perf_counter() - t0) * 1e3
    run.scene.apply_position_command(a.first, 0.1)
    run.alloc = a.stats.allocated_bytes
    if run.physical:  # cut the step off again: the next one sees the same full cache
        _rewind(cache, used)
        run.quiet.append(ms)
    elif cache.evictions_total > ev:
        run.evicting.append(ms)
        run.freed.append(used + run.step_tokens - cache.used_tokens)
    else:
        run.quiet.append(ms)


def _rewind(cache, used: int) -> None:
    """Forget everything after slot ``used`` (a length reset: nothing moves). The physical run never
    evicts, so its positions are its slots and the store's truncation cuts exactly the step."""
    cache.table.segments = [seg for seg in cache.table.segments if seg.start < used]
    cache._storage_truncate(used)


def _row(run: _Run, budget_mb: float) -> Row:
    quiet = float(np.mean(run.quiet)) if run.quiet else math.nan
    evicting = float(np.mean(run.evicting)) if run.evicting else math.nan
    period = max(float(np.mean(run.freed)) / run.step_tokens, 1.0) if run.freed else math.inf
    if period <= 1.05 or not run.quiet:  # it evicts (nearly) every step: its own schedule, plain mean
        mean = float(np.mean(run.quiet + run.evicting))
    elif not run.evicting:
        mean = quiet
    else:
        mean = quiet + (evicting - quiet) / period
    t = np.asarray(run.quiet + run.evicting)
    cost = 0.0 if not run.evicting else (evicting - quiet) / period if run.quiet else math.nan
    return Row(run.name, budget_mb, run.full_tokens or run.policy.kv_store.capacity, int(t.size),
               run.config.block_fraction, mean, quiet, evicting, period, cost, float(np.percentile(t, 50)),
               float(np.percentile(t, 99)), run.first_alloc, run.alloc, len(run.evicting))


def run_budget(budget_mb: float, policies, rounds: int, block_fraction: float, model: str | None = None,
               evict_every: int = 4, seed: int = 0, model_kwargs: dict | None = None,
               max_context_steps: int | None = None) -> list[Row]:
    """All policies at one budget, a step each per round (see the module docstring)."""
    rng = np.random.default_rng(seed)
    runs = [_start(p, budget_mb, block_fraction, model, seed, model_kwargs, max_context_steps) for p in policies]
    for r in runs:
        # Physical limit: one step short of full, so each timed step fills the budget exactly.
        _fill(r.policy, rng, r.step_tokens, leave=2 * r.step_tokens, capacity=r.full_tokens or None)
    for i in range(rounds):
        k = i % evict_every  # 0: an evicting step; 1..E-1: quiet steps at the middles of E-1 strata
        level = None if k == 0 else (k - 0.5) / (evict_every - 1)
        # Rotate who goes first, so no policy always follows the same neighbour.
        for j in range(len(runs)):
            _timed_step(runs[(i + j) % len(runs)], rng, level)
    rows = [_row(r, budget_mb) for r in runs]
    del runs
    gc.collect()
    return rows


def rounds_for(budget_mb: float, min_rounds: int, max_rounds: int, full_budget_mb: float = 1.0) -> int:
    """Fewer rounds as the forward pass grows (a 256 MiB step takes a second or more)."""
    return int(max(min_rounds, min(max_rounds, max_rounds * full_budget_mb / max(budget_mb, full_budget_mb))))


def run(budgets=BUDGETS_MB, policies=POLICIES, block_fraction: float = 0.05, min_steps: int = 40,
        max_steps: int = 400, model: str | None = None, out: Path = Path("out/bench_scaling"), evict_every: int = 4,
        progress=print, model_kwargs: dict | None = None, max_context_steps: int | None = None) -> list[Row]:
    """``model_kwargs``: the backend's loading options (``registry.backend_options``);
    ``max_context_steps``: PolicyConfig's view cap (None: its default)."""
    import platform

    import psutil
    import torch

    from aura_ros.core.registry import unsupported

    refused = unsupported(model, policies, model_kwargs)
    for p, why in refused.items():
        progress(f"skipping {p}: {why}")
    policies = tuple(p for p in policies if p not in refused)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    t0 = time.time()
    for b in budgets:
        rows += run_budget(b, policies, rounds_for(b, min_steps, max_steps), block_fraction, model, evict_every,
                           model_kwargs=model_kwargs, max_context_steps=max_context_steps)
        ref = next((r.mean_ms for r in rows if r.policy == "physical_limit" and r.budget_mb == b), math.nan)
        for r in rows:
            if r.budget_mb == b:
                r.overhead = r.mean_ms / ref - 1
                progress(f"{b:7.1f} MiB {r.policy:>15}: mean {r.mean_ms:8.2f} ms (quiet {r.quiet_ms:8.2f}, "
                         f"evicting {r.evict_ms:8.2f}, every {r.period_steps:6.1f} steps, "
                         f"cost {r.evict_cost_ms:6.2f} ms/step)  {r.overhead * 100:+6.1f} %")
    with open(out / "scaling.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))
    lines = ["| budget MiB | capacity tokens | policy | steps timed | mean ms (amortised) | quiet step ms "
             "| evicting step ms | evicts every (steps) | eviction cost per step | mean vs physical limit |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    ref = {r.budget_mb: r.mean_ms for r in rows if r.policy == "physical_limit"}
    for r in rows:
        over = "" if math.isnan(r.overhead) else f"{r.overhead * 100:+.1f} %"
        cost = f"{r.evict_cost_ms:.2f} ms ({r.evict_cost_ms / ref.get(r.budget_mb, math.nan) * 100:.1f} %)"
        lines.append(f"| {r.budget_mb:g} | {r.capacity_tokens} | {r.policy} | {r.steps} | {r.mean_ms:.2f} | "
                     f"{_ms(r.quiet_ms)} | {_ms(r.evict_ms)} | {_period(r.period_steps)} | {cost} | {over} |")
    lo, hi = min(budgets), max(budgets)
    scale = {p: next((r.mean_ms for r in rows if r.policy == p and r.budget_mb == hi), np.nan)
             / next((r.mean_ms for r in rows if r.policy == p and r.budget_mb == lo), np.nan) for p in policies}
    lines.append("")
    lines.append(f"step time at {hi:g} MiB / at {lo:g} MiB: " + ", ".join(f"{p} {v:.2f}" for p, v in scale.items()))
    (out / "scaling_table.md").write_text("\n".join(lines) + "\n")
    meta = {"budgets_mb": list(budgets), "policies": list(policies), "block_fraction": block_fraction,
            "model": model or "embedded default", "model_options": dict(model_kwargs or {}),
            "evict_every": evict_every, "seconds": time.time() - t0, "scale_hi_over_lo": scale,
            "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
                       f"torch {torch.__version__}, {torch.get_num_threads()} threads"}
    (out / "scaling_summary.json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1))
    _plot(rows, policies, out / "scaling.png")
    return rows


def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"


def _period(v: float) -> str:
    return "never" if math.isinf(v) else f"{v:.1f}"


def _plot(rows: list[Row], policies, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in policies:
        pts = [r for r in rows if r.policy == p]
        ax.plot([r.budget_mb for r in pts], [r.mean_ms for r in pts], marker="o", label=p)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("KV budget (MiB)")
    ax.set_ylabel("mean step time (ms)")
    ax.set_title("step time at capacity, per eviction policy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
