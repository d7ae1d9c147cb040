"""`aura-ros bench scaling`: step time against the KV budget, per eviction policy, at capacity.

For each budget the cache is first filled to capacity with synthetic steps of the real step size
(random keys and values, gate values of a realistic mix), so that a 256 MiB cache is full in
seconds rather than after an hour of stepping; then every timed step runs through
``policy.step`` and evicts as the policy decides. The reference is the physical limit: the
same model on a cache of the same size that evicts the newest older step, which moves nothing
(no compaction, no re-rotation), so its step time is the forward pass over a full cache and
nothing else. Overhead = mean step time / the physical limit's - 1; means, not medians, so an
eviction that frees a block every few hundred steps is paid for in the figure.
"""
from __future__ import annotations

import csv
import gc
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

POLICIES = ("physical_limit", "sliding_window", "streaming_llm", "h2o", "action_gate")
BUDGETS_MB = (1.0, 8.0, 64.0, 256.0)


@dataclass(frozen=True)
class NewestFirst:
    """The physical-limit reference: evict the newest step that may go (nothing after it moves)."""

    uses_attention = False

    def score(self, view) -> np.ndarray:
        return -view.step.astype(np.float64)


@dataclass
class Row:
    policy: str
    budget_mb: float
    capacity_tokens: int
    steps: int
    block_fraction: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    allocated_bytes_first: int
    allocated_bytes_last: int
    evictions: int


def _fill(policy, rng: np.random.Generator, step_tokens: int) -> None:
    """Fill the transformers cache to capacity with synthetic steps of ``step_tokens`` tokens."""
    import torch

    from aura_ros.memory.segments import Kind

    cache = policy.cache
    step = policy.step_index
    while cache.free_tokens > 2 * step_tokens:
        cache.reserve(step_tokens)
        for layer in cache.layers:
            k = torch.randn(1, layer.kv_heads, step_tokens, layer.k_dim, dtype=layer.dtype, device=layer.device)
            layer.update(k, torch.randn(1, layer.kv_heads, step_tokens, layer.v_dim, dtype=layer.dtype,
                                        device=layer.device))
        gate = float(rng.random() ** 4)  # mostly quiet steps, a few events
        cache.commit(Kind.OBSERVATION, step, gate=gate, written=gate >= 0.5)
        step += 1
    policy.step_index = step
    cache.current_step = step - 1


def run_one(policy_name: str, budget_mb: float, steps: int, block_fraction: float, model: str | None,
            seed: int = 0) -> Row:
    from aura_ros.core.config import PolicyConfig
    from aura_ros.core.registry import make_policy
    from aura_ros.core.types import Observation
    from aura_ros.memory.scorers import EvictionPolicy
    from aura_ros.sim.scene import SimScene

    eviction = "sliding_window" if policy_name == "physical_limit" else policy_name
    config = PolicyConfig(budget_bytes=int(budget_mb * 2**20), eviction=eviction,
                          block_fraction=0.0 if policy_name == "physical_limit" else block_fraction)
    policy = make_policy(model, config, instruction="pick up the red block and put it in the bin")
    if policy_name == "physical_limit":
        policy.cache.policy = EvictionPolicy("physical_limit", NewestFirst(), protect_pinned=True,
                                             protect_recent=False)
    scene = SimScene(seed=seed)
    rng = np.random.default_rng(seed)
    # Warm-up steps give the real step size and the first allocation.
    first = None
    for _ in range(3):
        _, pos, _ = scene.joint_state()
        a = policy.step(Observation(scene.render(), pos))
        first = first or a.stats.allocated_bytes
    step_tokens = a.stats.used_tokens // max(a.stats.steps_kept, 1)
    _fill(policy, rng, step_tokens)
    times = []
    ev0 = policy.stats().evictions_total
    for _ in range(steps):
        _, pos, _ = scene.joint_state()
        frame = scene.render()
        t0 = time.perf_counter()
        a = policy.step(Observation(frame, pos))
        times.append((time.perf_counter() - t0) * 1e3)
        scene.apply_position_command(a.first, 0.1)
    t = np.asarray(times)
    row = Row(policy_name, budget_mb, a.stats.capacity_tokens, steps, config.block_fraction, float(t.mean()),
              float(np.percentile(t, 50)), float(np.percentile(t, 99)), first, a.stats.allocated_bytes,
              a.stats.evictions_total - ev0)
    del policy
    gc.collect()
    return row


def steps_for(budget_mb: float, block_fraction: float, min_steps: int, step_tokens_guess: int = 40,
              bytes_per_token: int = 512) -> int:
    """Enough steps to see at least three block evictions (so their cost is in the mean)."""
    capacity = budget_mb * 2**20 / bytes_per_token
    period = block_fraction * capacity / step_tokens_guess
    return int(max(min_steps, 3 * period))


def run(budgets=BUDGETS_MB, policies=POLICIES, block_fraction: float = 0.02, min_steps: int = 100,
        max_steps: int = 2000, model: str | None = None, out: Path = Path("out/bench_scaling"),
        progress=print) -> list[Row]:
    import platform

    import psutil
    import torch

    out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    t0 = time.time()
    for b in budgets:
        n = min(max_steps, steps_for(b, block_fraction, min_steps))
        for p in policies:
            rows.append(run_one(p, b, n, block_fraction, model))
            r = rows[-1]
            progress(f"{b:7.1f} MiB {p:>15}: mean {r.mean_ms:8.2f} ms  p50 {r.p50_ms:8.2f}  p99 {r.p99_ms:8.2f}  "
                     f"({r.steps} steps, {r.evictions} evictions)")
    ref = {r.budget_mb: r.mean_ms for r in rows if r.policy == "physical_limit"}
    with open(out / "scaling.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*asdict(rows[0]), "overhead"])
        w.writeheader()
        for r in rows:
            w.writerow({**asdict(r), "overhead": r.mean_ms / ref[r.budget_mb] - 1 if r.budget_mb in ref else ""})
    lines = ["| budget MiB | capacity tokens | policy | steps | mean ms | p50 ms | p99 ms "
             "| overhead vs physical limit |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        over = f"{(r.mean_ms / ref[r.budget_mb] - 1) * 100:+.1f} %" if r.budget_mb in ref else ""
        lines.append(f"| {r.budget_mb:g} | {r.capacity_tokens} | {r.policy} | {r.steps} | {r.mean_ms:.2f} | "
                     f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | {over} |")
    lo, hi = min(budgets), max(budgets)
    scale = {p: next((r.mean_ms for r in rows if r.policy == p and r.budget_mb == hi), np.nan)
             / next((r.mean_ms for r in rows if r.policy == p and r.budget_mb == lo), np.nan) for p in policies}
    lines.append("")
    lines.append(f"step time at {hi:g} MiB / at {lo:g} MiB: " + ", ".join(f"{p} {v:.2f}" for p, v in scale.items()))
    (out / "scaling_table.md").write_text("\n".join(lines) + "\n")
    meta = {"budgets_mb": list(budgets), "policies": list(policies), "block_fraction": block_fraction,
            "seconds": time.time() - t0, "scale_hi_over_lo": scale,
            "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
                       f"torch {torch.__version__}, {torch.get_num_threads()} threads"}
    (out / "scaling_summary.json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1))
    _plot(rows, policies, out / "scaling.png")
    return rows


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
