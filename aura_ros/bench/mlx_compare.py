"""MLX beside transformers on the shipped default (`python -m aura_ros.bench.mlx_compare`).

Three figures for the MLX backend, each next to the transformers backend's where one exists:
- agreement: the max |logit difference| over the action tokens, both backends fed the same
  cue_recall episode at a budget that forces evictions (the test asserts it, this reports it);
- step time at budgets of 0.5 and 2 MiB, and what eviction adds per step, against the same store
  with no eviction (``bench.scaling``: its "physical_limit" row), the view cap off so that a full
  store is read in full;
- a long run (``--soak`` steps) on MLX: the KV bytes at every step, the largest position, MLX's own
  active memory and the process RSS at the start and the end.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def logit_agreement(budget_bytes: int = 64 * 1024, seed: int = 3, distractors: int = 40) -> dict:
    from aura_ros.core.config import PolicyConfig
    from aura_ros.core.registry import make_policy
    from aura_ros.core.types import Observation
    from aura_ros.sim.tasks import make_task

    task = make_task("cue_recall", seed, distractors)
    config = PolicyConfig(budget_bytes=budget_bytes, recent_steps=2)
    ref = make_policy(None, config, backend="transformers", instruction=task.instruction)
    mlx = make_policy(None, config, backend="mlx", instruction=task.instruction)
    worst, same = 0.0, 0
    while not task.done:
        o = task.observe()
        a = ref.step(Observation(o.image, o.joint_state))
        b = mlx.step(Observation(o.image, o.joint_state))
        worst = max(worst, float(np.abs(a.logits - b.logits).max()))
        same += int(np.array_equal(a.bins, b.bins))
        task.apply(a.first)
    return {"max_logit_diff": worst, "steps": a.step + 1, "same_bins_steps": same,
            "evictions": b.stats.evictions_total, "budget_bytes": budget_bytes}


def step_times(budgets=(0.5, 2.0), rounds: int = 60, evict_every: int = 4, torch_threads: int = 1) -> list[dict]:
    """``bench.scaling``'s timed steps, both backends' runs interleaved round by round (a change of
    the machine's load touches both alike), with the view cap off so that a full store is read in
    full. Per backend and budget: "physical_limit" (the same full store, no eviction at all) and
    "action_gate" (evicting a block when full); ``evict_cost_ms`` is what eviction adds per step."""
    from dataclasses import asdict

    import torch

    from aura_ros.bench import scaling

    torch.set_num_threads(torch_threads)
    rows = []
    for b in budgets:
        rng = np.random.default_rng(0)
        runs = {(backend, p): scaling._start(p, b, 0.05, None, 0, {"backend": backend}, max_context_steps=0)
                for backend in ("mlx", "transformers") for p in ("physical_limit", "action_gate")}
        for r in runs.values():
            scaling._fill(r.policy, rng, r.step_tokens, leave=2 * r.step_tokens, capacity=r.full_tokens or None)
        order = list(runs.values())
        for i in range(rounds):
            k = i % evict_every
            level = None if k == 0 else (k - 0.5) / (evict_every - 1)
            for j in range(len(order)):
                scaling._timed_step(order[(i + j) % len(order)], rng, level)
        for (backend, _), r in runs.items():
            row = {"backend": backend} | asdict(scaling._row(r, b))
            rows.append(row)
            print(f"[{backend}] {b:g} MiB {row['policy']:>15}: mean {row['mean_ms']:.2f} ms (quiet "
                  f"{row['quiet_ms']:.2f}, evicting {row['evict_ms']:.2f}, every {row['period_steps']:.1f} steps, "
                  f"cost {row['evict_cost_ms']:.2f} ms/step), p50 {row['p50_ms']:.2f}", flush=True)
    return rows


def eviction_cost(budgets=(0.5, 2.0), evictions: int = 30, torch_threads: int = 1) -> list[dict]:
    """What one eviction costs the store itself (planner + compaction + re-rotation), timed alone:
    the whole-step figures above carry the shared machine's noise, this does not. Each store is
    filled with synthetic steps of the real step size to within a step of full, then a step's
    reserve() evicts a block; refilled (untimed) before the next. ``per_step_ms``: the cost
    amortised over the steps a freed block lasts."""
    import torch

    from aura_ros.bench import scaling

    torch.set_num_threads(torch_threads)
    rows = []
    for b in budgets:
        for backend in ("mlx", "transformers"):
            rng = np.random.default_rng(0)
            run = scaling._start("action_gate", b, 0.05, None, 0, {"backend": backend}, max_context_steps=0)
            store, s = run.policy.kv_store, run.step_tokens
            times, freed = [], []
            for _ in range(evictions):
                scaling._fill(run.policy, rng, s, leave=s)
                used, ev = store.used_tokens, store.evictions_total
                t0 = time.perf_counter()
                store.reserve(s)
                times.append((time.perf_counter() - t0) * 1e3)
                assert store.evictions_total > ev
                freed.append(used - store.used_tokens)
            period = float(np.mean(freed)) / s
            rows.append({"backend": backend, "budget_mb": b, "capacity_tokens": store.capacity, "step_tokens": s,
                         "eviction_ms_mean": float(np.mean(times)), "eviction_ms_p50": float(np.median(times)),
                         "period_steps": period, "per_step_ms": float(np.mean(times)) / period})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def soak(steps: int, budget_bytes: int = 512 * 1024, report_every: int = 1000) -> dict:
    import mlx.core as mx
    import psutil

    from aura_ros.core.config import PolicyConfig
    from aura_ros.core.registry import make_policy
    from aura_ros.core.types import Observation
    from aura_ros.sim.scene import SimScene

    policy = make_policy(None, PolicyConfig(budget_bytes=budget_bytes), backend="mlx",
                         instruction="pick up the red block and put it in the bin")
    scene = SimScene(seed=0)
    proc = psutil.Process()
    allocated, max_pos, marks = set(), 0, []
    t0 = time.perf_counter()
    for t in range(steps):
        _, pos, _ = scene.joint_state()
        a = policy.step(Observation(scene.render(), pos))
        scene.apply_position_command(a.first, 0.1)
        allocated.add(a.stats.allocated_bytes)
        max_pos = max(max_pos, a.stats.max_position)
        if t % report_every == 0 or t == steps - 1:
            marks.append({"step": t, "allocated_bytes": a.stats.allocated_bytes, "used_tokens": a.stats.used_tokens,
                          "max_position": a.stats.max_position, "evictions_total": a.stats.evictions_total,
                          "mlx_active_bytes": int(mx.get_active_memory()), "rss_bytes": proc.memory_info().rss,
                          "mean_ms_so_far": (time.perf_counter() - t0) * 1e3 / (t + 1)})
            print(json.dumps(marks[-1]), flush=True)
    return {"steps": steps, "budget_bytes": budget_bytes, "allocated_bytes_values": sorted(allocated),
            "capacity_tokens": a.stats.capacity_tokens, "max_position": max_pos, "marks": marks}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/bench_mlx"))
    ap.add_argument("--soak", type=int, default=20000, help="steps of the long MLX run (0: skip)")
    ap.add_argument("--skip-times", action="store_true")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"agreement": logit_agreement()}
    print(json.dumps(summary["agreement"]), flush=True)
    if not args.skip_times:
        summary["step_times"] = step_times()
        summary["eviction_cost"] = eviction_cost()
    if args.soak:
        summary["soak"] = soak(args.soak)
    (args.out / "mlx_compare.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
