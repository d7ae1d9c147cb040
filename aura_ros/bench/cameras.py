"""What each camera costs: `aura-ros bench cameras`.

The same policy (the embedded default unless ``model``) runs the sim's memory stream with one camera
(top) and with two (top + wrist) at the same KV budget, through the real step loop (cache full,
evictions included). Reported per camera count: tokens per step, the steps the budget holds, and
the step time (median, p90) measured after the cache is full. The counts are interleaved in rounds
and each figure is the best round's, so a burst of load from another process on a small machine
does not decide the comparison.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

VIEWS = ("top", "wrist")


def run_once(n_cameras: int, steps: int, budget_mb: float, model: str | None, seed: int = 0) -> dict:
    from aura_ros.core.config import PolicyConfig
    from aura_ros.core.registry import make_policy
    from aura_ros.core.types import Observation
    from aura_ros.sim.tasks import make_stream

    cfg = PolicyConfig(budget_bytes=int(budget_mb * 2**20), n_cameras=n_cameras)
    policy = make_policy(model, cfg)
    stream = make_stream(seed, None, (("cue_recall", 200),), cameras=VIEWS[:n_cameras])
    times, tokens, full_at = [], 0, None
    for i in range(steps):
        obs = stream.observe()
        t0 = time.perf_counter()
        action = policy.step(Observation(obs.image, obs.joint_state, instruction=obs.instruction if obs.new_task
                                         and i > 0 else None, new_task=obs.new_task and i > 0))
        times.append((time.perf_counter() - t0) * 1e3)
        stream.apply(action.first)
        s = action.stats
        if i == 0:
            tokens = s.used_tokens - s.pinned_tokens
        if full_at is None and s.evictions_total > 0:
            full_at = i
    after = np.array(times[(full_at or 0):])
    stats = policy.stats()
    return {"cameras": n_cameras, "tokens_per_step": int(tokens), "capacity_tokens": int(stats.capacity_tokens),
            "steps_kept": int(stats.steps_kept), "full_at_step": full_at, "steps": steps,
            "median_ms": float(np.median(after)), "p90_ms": float(np.percentile(after, 90))}


def run(steps: int = 300, budget_mb: float = 0.5, rounds: int = 3, model: str | None = None,
        out: Path = Path("out/bench_cameras"), log=print) -> dict:
    best: dict[int, dict] = {}
    for r in range(rounds):
        for n in (1, 2):
            res = run_once(n, steps, budget_mb, model)
            log(f"round {r + 1}: {n} camera(s): {res['tokens_per_step']} tokens/step, "
                f"median {res['median_ms']:.2f} ms, p90 {res['p90_ms']:.2f} ms")
            if n not in best or res["median_ms"] < best[n]["median_ms"]:
                best[n] = res
    ratio = best[2]["median_ms"] / best[1]["median_ms"]
    summary = {"budget_mb": budget_mb, "steps": steps, "rounds": rounds, "model": model or "embedded default",
               "rows": [best[1], best[2]], "two_over_one": round(ratio, 3)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "cameras.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = ["| cameras | tokens per step | steps held at the budget | step ms (median) | step ms (p90) |",
             "|---|---|---|---|---|"]
    table += [f"| {r['cameras']} | {r['tokens_per_step']} | {r['steps_kept']} | {r['median_ms']:.2f} | "
              f"{r['p90_ms']:.2f} |" for r in summary["rows"]]
    (out / "cameras_table.md").write_text("\n".join(table) + "\n")
    log("\n".join(table))
    log(f"two cameras / one camera, step time: {ratio:.2f}x (at {budget_mb} MiB, after the cache is full)")
    return summary
