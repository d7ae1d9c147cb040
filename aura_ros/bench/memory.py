"""`aura-ros bench memory`: flat memory and flat step time over a long episode, per policy.

One closed-loop episode per policy at equal budget, the embedded default model (or any model)
driving the simulated arm: the unbounded DynamicCache (until a stated cap), the sliding window,
StreamingLLM, H2O and the action gate. At log-spaced checkpoints it records the cache's
allocated and used bytes, the process RSS and the p50/p99 step latency of the steps since the
previous checkpoint. Figures are compared as ratios within one run on one machine.
"""
from __future__ import annotations

import csv
import gc
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil

POLICIES = ("unbounded", "sliding_window", "streaming_llm", "h2o", "action_gate")


@dataclass
class Checkpoint:
    policy: str
    step: int
    allocated_bytes: int
    used_bytes: int
    used_tokens: int
    max_position: int
    rss_bytes: int
    p50_ms: float
    p99_ms: float
    writes_total: int
    evictions_total: int
    # Over every step so far, not just the checkpoints: steps whose allocated bytes differed from
    # the first step's, and the largest position any step reached.
    allocated_changes: int = 0
    max_position_all: int = 0


def checkpoints(steps: int) -> list[int]:
    """1, 2, 5 x 10^k up to ``steps`` (and ``steps`` itself)."""
    out = sorted({m * 10 ** k for k in range(0, 7) for m in (1, 2, 5) if m * 10 ** k <= steps} | {steps})
    return [c for c in out if c >= 10]


def run_policy(policy_name: str, steps: int, budget_bytes: int, model: str | None, unbounded_cap: int,
               seed: int = 0, progress=None, model_kwargs: dict | None = None) -> list[Checkpoint]:
    from aura_ros.core.config import PolicyConfig
    from aura_ros.core.registry import make_policy
    from aura_ros.core.types import Observation
    from aura_ros.sim.scene import SimScene

    config = PolicyConfig(budget_bytes=budget_bytes, eviction=policy_name,
                          unbounded_max_tokens=None if policy_name != "unbounded" else 10 ** 9)
    policy = make_policy(model, config, instruction="pick up the red block and put it in the bin",
                         **(model_kwargs or {}))
    scene = SimScene(seed=seed)
    process = psutil.Process()
    marks = checkpoints(steps if policy_name != "unbounded" else min(steps, unbounded_cap))
    out: list[Checkpoint] = []
    window: list[float] = []
    dt = 0.1
    first_allocated, changes, max_position = None, 0, 0
    for step in range(1, marks[-1] + 1):
        frame = scene.render()
        _, positions, _ = scene.joint_state()
        action = policy.step(Observation(frame, positions))
        scene.apply_position_command(action.first, dt)
        st = action.stats
        window.append(st.step_latency_ms)
        if first_allocated is None:
            first_allocated = st.allocated_bytes
        changes += st.allocated_bytes != first_allocated
        max_position = max(max_position, st.max_position)
        if step == marks[len(out)]:
            lat = np.asarray(window)
            out.append(Checkpoint(policy_name, step, st.allocated_bytes, st.used_bytes, st.used_tokens,
                                  st.max_position, process.memory_info().rss, float(np.percentile(lat, 50)),
                                  float(np.percentile(lat, 99)), st.writes_total, st.evictions_total, changes,
                                  max_position))
            window = []
            if progress:
                progress(f"{policy_name:>15} step {step:>7}: KV {st.used_bytes / 2**20:7.3f}/"
                         f"{st.allocated_bytes / 2**20:7.3f} MiB, p50 {out[-1].p50_ms:6.2f} ms, "
                         f"RSS {out[-1].rss_bytes / 2**20:7.1f} MiB")
    del policy
    gc.collect()
    return out


def ratios(rows: list[Checkpoint], steps: int) -> dict:
    """The headline ratios of issue targets, computed from one run."""
    by = {}
    for r in rows:
        by.setdefault(r.policy, {})[r.step] = r
    out: dict[str, float | str] = {}
    for pol, marks in by.items():
        first_mark = min(marks)
        last = marks[max(marks)]
        ref = marks.get(1000) or marks[first_mark]
        out[f"{pol}.allocated_constant"] = last.allocated_changes == 0 and all(
            m.allocated_bytes == marks[first_mark].allocated_bytes for m in marks.values())
        out[f"{pol}.max_position"] = last.max_position_all
        out[f"{pol}.p50_last_over_p50_1k"] = last.p50_ms / ref.p50_ms if ref.p50_ms else float("nan")
        if 1000 in marks:
            out[f"{pol}.rss_growth_1k_to_last"] = last.rss_bytes / marks[1000].rss_bytes - 1.0
    gate, window = by.get("action_gate", {}), by.get("sliding_window", {})
    common = sorted(set(gate) & set(window))
    if common:
        g = np.median([gate[s].p50_ms for s in common if s >= 100] or [gate[common[-1]].p50_ms])
        w = np.median([window[s].p50_ms for s in common if s >= 100] or [window[common[-1]].p50_ms])
        out["action_gate_overhead_vs_sliding_window"] = float(g / w - 1.0)
    unb = by.get("unbounded", {})
    if unb and gate:
        s = max(k for k in unb if k in gate) if set(unb) & set(gate) else None
        if s:
            out["unbounded_over_action_gate_p50_at_step"] = s
            out["unbounded_over_action_gate_p50"] = unb[s].p50_ms / gate[s].p50_ms
    return out


def plot(rows: list[Checkpoint], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for pol in POLICIES:
        pts = [r for r in rows if r.policy == pol]
        if not pts:
            continue
        x = [r.step for r in pts]
        ax1.plot(x, [r.allocated_bytes / 2**20 for r in pts], marker="o", ms=3, label=pol)
        ax2.plot(x, [r.p50_ms for r in pts], marker="o", ms=3, label=pol)
    for ax, title, unit in ((ax1, "KV cache allocated", "MiB"), (ax2, "step latency p50", "ms")):
        ax.set_xscale("log")
        ax.set_xlabel("control step")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(rows: list[Checkpoint], out: Path, meta: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "memory_checkpoints.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        w.writeheader()
        w.writerows(asdict(r) for r in rows)
    r = ratios(rows, meta["steps"])
    (out / "memory_summary.json").write_text(json.dumps({"meta": meta, "ratios": r}, indent=1))
    lines = ["| policy | step | allocated MiB | used MiB | max position | RSS MiB | p50 ms | p99 ms | writes "
             "| evictions |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in rows:
        lines.append(f"| {c.policy} | {c.step} | {c.allocated_bytes / 2**20:.3f} | {c.used_bytes / 2**20:.3f} | "
                     f"{c.max_position} | {c.rss_bytes / 2**20:.1f} | {c.p50_ms:.2f} | {c.p99_ms:.2f} | "
                     f"{c.writes_total} | {c.evictions_total} |")
    (out / "memory_table.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "memory.png")
    return r


def run(steps: int = 20000, budget_mb: float = 2.0, model: str | None = None, policies=POLICIES,
        unbounded_cap: int = 2000, out: Path = Path("out/bench_memory"), progress=print,
        model_kwargs: dict | None = None) -> dict:
    """``model_kwargs``: the backend's loading options (``registry.backend_options``)."""
    import platform

    import torch

    from aura_ros.core.registry import backend_for, unsupported

    llama = backend_for(model) == "llama_cpp"
    skipped = unsupported(model, policies, model_kwargs)
    for pol, why in skipped.items():
        progress(f"skipping {pol}: {why}")
    rows: list[Checkpoint] = []
    t0 = time.time()
    kv_prints = _kv_buffer_prints() if llama else 0
    for pol in policies:
        if pol not in skipped:
            rows += run_policy(pol, steps, int(budget_mb * 2**20), model, unbounded_cap, progress=progress,
                               model_kwargs=model_kwargs)
    meta = {"steps": steps, "budget_mb": budget_mb, "model": model or "embedded default",
            "model_options": dict(model_kwargs or {}), "skipped": skipped,
            "unbounded_cap_steps": unbounded_cap, "policies": list(policies), "seconds": time.time() - t0,
            "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
                       f"torch {torch.__version__}, {torch.get_num_threads()} threads"}
    if llama:
        # llama.cpp's own word: one "KV buffer size" print per context created, i.e. per policy run.
        meta["llama_kv_buffer_prints"] = _kv_buffer_prints() - kv_prints
    return write_outputs(rows, out, meta)


def _kv_buffer_prints() -> int:
    from aura_ros.backends.llama_cpp.policy import kv_buffer_log

    return kv_buffer_log().count("KV buffer size")
