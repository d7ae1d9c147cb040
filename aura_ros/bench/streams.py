"""`aura-ros bench streams`: the endless run. Tasks back to back on one policy, no reset.

A robot's episode never ends: tasks follow one another and nobody empties the memory between them.
Each stream is K tasks on one scene (``sim.tasks.TaskStream``), mixed as asked (cue_recall,
latent_fact, each with its own D; a share of recall_previous tasks, whose bin is the one that lit
up in the task before, so an emptied memory is at chance there). Every (policy, budget) runs the
same streams twice on one policy object:

- stream: no reset; each task's first observation says ``new_task`` with its instruction (the
  memory records the boundary: memory.planner's stale rule);
- reset: the reference, ``reset()`` and the instruction before each task (the memory a task
  would have if the robot were restarted for it).

Reported: success by task index 1..K (95 % Wilson intervals over the streams), success per task
type, the long-term write rate, long-term steps and stale cues kept at each recall, and the KV
bytes allocated (one value over a whole stream for a bounded cache). Deterministic by seed:
stream i of every policy, budget and mode uses seed + i.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from aura_ros.bench.tasks import policy_config, wilson
from aura_ros.sim.tasks import parse_mix

POLICIES = ("sliding_window", "streaming_llm", "action_gate", "action_gate_novelty")
MODES = ("stream", "reset")


@dataclass
class StreamTaskResult:
    policy: str
    budget_mb: float
    mode: str  # "stream" (no reset) or "reset" (the reference)
    stream: int
    seed: int
    index: int  # task index in the stream, 1..K
    task: str
    distractors: int
    success: bool
    n_choices: int
    cue_kept: int  # 1/0: the task's cue step was in the cache at its recall; -1: no cue step (not written)
    stale_cues_kept: int  # cue steps of earlier tasks in the cache at this task's recall
    long_term_kept: int  # long-term steps in the cache at this task's recall
    steps_kept: int
    writes: int  # long-term writes in this task (every step for a baseline)
    steps: int
    allocated_bytes_min: int
    allocated_bytes_max: int


def run_stream(seed: int, specs, policy, mode: str = "stream", label: str = "", budget_mb: float = float("nan"),
               stream_index: int = 0, gated: bool = True,
               cameras: tuple[str, ...] = ("top",)) -> list[StreamTaskResult]:
    """One stream of tasks on ``policy`` (any Policy; it is reset first). ``mode`` "stream": no
    reset, each task's first observation carries ``new_task`` and its instruction; "reset":
    ``reset()`` and the task's instruction before each task. ``cameras``: the sim's views each
    observation holds (the policy's ``n_cameras``)."""
    from aura_ros.core.types import Observation
    from aura_ros.sim.tasks import TaskStream

    if mode not in MODES:
        raise ValueError(f"mode is one of {MODES}, got {mode!r}")
    stream = TaskStream(seed, specs, cameras=cameras)
    policy.reset()
    if policy.instruction != stream.task.instruction:
        policy.set_instruction(stream.task.instruction)
    out: list[StreamTaskResult] = []
    step_of: dict[tuple[int, int], int] = {}  # (task index, task step) -> the policy's step number
    cue_steps: list[int] = []  # the policy's step number of each earlier task's cue
    writes = steps = 0
    alloc: list[int] = []
    at_recall = (-1, 0, 0, 0)
    while not stream.done:
        task, i = stream.task, stream.index
        obs = stream.observe()
        if obs.new_task and mode == "reset" and i > 0:
            policy.reset()
            if policy.instruction != obs.instruction:
                policy.set_instruction(obs.instruction)
        if task.step_index == task.recall_start_step:
            summary = policy.memory_map()
            kept = {step for step, *_ in summary if step >= 0}
            cue = step_of.get((i, task.cue_step)) if task.shows_light else None
            at_recall = (-1 if cue is None else int(cue in kept), sum(1 for c in cue_steps if c in kept),
                         sum(1 for _, _, w, _ in summary if w), len(kept))
        new = obs.new_task and mode == "stream" and i > 0
        act = policy.step(Observation(obs.image, obs.joint_state, instruction=obs.instruction if new else None,
                                      new_task=new))
        step_of[(i, task.step_index)] = act.step
        writes += int(act.gate.written)
        steps += 1
        alloc.append(act.stats.allocated_bytes)
        stream.apply(act.first)
        if task.done:
            if task.shows_light:
                cue_steps.append(step_of[(i, task.cue_step)])
            out.append(StreamTaskResult(
                policy=label, budget_mb=budget_mb, mode=mode, stream=stream_index, seed=seed, index=i + 1,
                task=task.name, distractors=task.distractor_steps, success=bool(task.success),
                n_choices=task.n_choices, cue_kept=at_recall[0], stale_cues_kept=at_recall[1],
                long_term_kept=at_recall[2], steps_kept=at_recall[3], writes=writes if gated else steps,
                steps=steps, allocated_bytes_min=min(alloc), allocated_bytes_max=max(alloc)))
            writes = steps = 0
            alloc = []
    return out


def _cell(rs: list[StreamTaskResult]) -> dict:
    k, n = sum(r.success for r in rs), len(rs)
    lo, hi = wilson(k, n)
    return {"n": n, "successes": k, "success": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi}


def summarise(results: list[StreamTaskResult]) -> dict:
    """By (policy, budget, mode): success per task index, per task type, and over all tasks."""
    groups: dict[tuple[str, float, str], list[StreamTaskResult]] = {}
    for r in results:
        groups.setdefault((r.policy, r.budget_mb, r.mode), []).append(r)
    rows = []
    for (pol, mb, mode), rs in groups.items():
        by_index = {}
        for idx in sorted({r.index for r in rs}):
            by_index[idx] = _cell([r for r in rs if r.index == idx])
        by_task = {t: _cell([r for r in rs if r.task == t]) for t in sorted({r.task for r in rs})}
        allocs = {r.allocated_bytes_min for r in rs} | {r.allocated_bytes_max for r in rs}
        steps = sum(r.steps for r in rs)
        rows.append({
            "policy": pol, "budget_mb": mb, "mode": mode, "all": _cell(rs), "by_index": by_index,
            "by_task": by_task, "min_index_success": min(c["success"] for c in by_index.values()),
            "write_rate": sum(r.writes for r in rs) / steps if steps else float("nan"),
            "long_term_kept": float(np.mean([r.long_term_kept for r in rs])),
            "stale_cues_kept": float(np.mean([r.stale_cues_kept for r in rs])),
            "cue_kept": float(np.mean([r.cue_kept for r in rs if r.cue_kept >= 0]))
            if any(r.cue_kept >= 0 for r in rs) else float("nan"),
            "allocated_bytes": max(allocs), "allocated_constant": len(allocs) == 1})
    return {"rows": rows}


def _fmt(x, spec=".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(summary: dict, meta: dict) -> str:
    rows = summary["rows"]
    lines = [f"Streams of {meta['tasks_per_stream']} tasks ({meta['mix_text']}, recall_previous share "
             f"{meta['cross_task']}), {meta['streams']} streams, seed {meta['seed']}; model: {meta['model']}; "
             f"95 % Wilson intervals.", "",
             "| policy | budget MiB | mode | success (all tasks) | 95 % CI | lowest by task index | per task type "
             "| write rate | long-term kept at recall | stale cues kept | KV allocated MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r["all"]
        types = "; ".join(f"{t} {c['success']:.2f} ({c['n']})" for t, c in r["by_task"].items())
        alloc = f"{r['allocated_bytes'] / 2**20:.3f}" + ("" if r["allocated_constant"] else " (varies)")
        lines.append(f"| {r['policy']} | {_fmt(r['budget_mb'], '.2f')} | {r['mode']} | {a['success']:.2f} "
                     f"({a['successes']}/{a['n']}) | [{a['ci_low']:.2f}, {a['ci_high']:.2f}] | "
                     f"{r['min_index_success']:.2f} | {types} | {_fmt(r['write_rate'], '.3f')} | "
                     f"{r['long_term_kept']:.1f} | {r['stale_cues_kept']:.2f} | {alloc} |")
    lines += ["", "Success by task index (stream / reset):", ""]
    keys = sorted({(r["policy"], r["budget_mb"]) for r in rows}, key=lambda k: (k[0], k[1]))
    k_max = meta["tasks_per_stream"]
    lines.append("| policy | budget MiB | " + " | ".join(str(i) for i in range(1, k_max + 1)) + " |")
    lines.append("|---|---|" + "---|" * k_max)
    for pol, mb in keys:
        cells = []
        by = {r["mode"]: r["by_index"] for r in rows if r["policy"] == pol and r["budget_mb"] == mb}
        for i in range(1, k_max + 1):
            parts = [_fmt(by[m][i]["success"]) if m in by and i in by[m] else "-" for m in MODES]
            cells.append(" / ".join(parts))
        lines.append(f"| {pol} | {_fmt(mb, '.2f')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    fig, axes = plt.subplots(1, len(policies), figsize=(5.5 * len(policies) + 1.5, 4.2), squeeze=False)
    for ax, pol in zip(axes[0], policies):
        for r in (r for r in rows if r["policy"] == pol):
            idx = sorted(r["by_index"])
            y = [r["by_index"][i]["success"] for i in idx]
            style = dict(ls="-", marker="o", ms=3) if r["mode"] == "stream" else dict(ls="--", lw=1)
            line, = ax.plot(idx, y, label=f"{r['mode']} {r['budget_mb']:.2f} MiB", **style)
            if r["mode"] == "stream":
                ax.fill_between(idx, [r["by_index"][i]["ci_low"] for i in idx],
                                [r["by_index"][i]["ci_high"] for i in idx], color=line.get_color(), alpha=0.08)
        ax.axhline(1 / 3, color="grey", ls=":", lw=1, label="chance")
        ax.set(xlabel="task index in the stream (no reset)", ylabel="success", title=pol, ylim=(-0.03, 1.03))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out: Path, results: list[StreamTaskResult], meta: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "streams_tasks.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[fl.name for fl in dataclasses.fields(StreamTaskResult)])
        w.writeheader()
        w.writerows(asdict(r) for r in results)
    summary = summarise(results)
    with open(out / "streams_by_index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["policy", "budget_mb", "mode", "index", "n", "successes", "success", "ci_low", "ci_high"])
        for r in summary["rows"]:
            for i, c in sorted(r["by_index"].items()):
                w.writerow([r["policy"], r["budget_mb"], r["mode"], i, c["n"], c["successes"],
                            round(c["success"], 4), round(c["ci_low"], 4), round(c["ci_high"], 4)])
    (out / "streams_table.md").write_text(markdown(summary, meta))
    plot(summary, out / "streams_success.png")

    def clean(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    (out / "streams_summary.json").write_text(json.dumps(clean({"meta": meta, **summary}), indent=1))
    return summary


def run(policies=("sliding_window", "streaming_llm", "action_gate"), budgets_mb=(0.5,), mix="cue_recall:200",
        tasks_per_stream: int = 20, streams: int = 8, cross_task: float = 0.0, modes=MODES, recent_steps: int = 8,
        novelty_weight: float = 1.0, max_context_steps: int | None = None, model: str | None = None, seed: int = 0,
        out: Path = Path("out/bench_streams"), progress: bool = True, model_kwargs: dict | None = None,
        cameras: tuple[str, ...] = ("top",), log=print) -> dict:
    """The whole benchmark; returns the summary (also written to ``out``)."""
    from dataclasses import replace

    from tqdm import tqdm

    from aura_ros.core.registry import make_policy, unsupported
    from aura_ros.sim.tasks import stream_specs

    mix_entries = parse_mix(mix) if isinstance(mix, str) else tuple(mix)
    bad = [p for p in policies if p not in POLICIES]
    if bad:
        raise ValueError(f"unknown memory policy {bad}; choose from {', '.join(POLICIES)}")
    refused = unsupported(model, policies, model_kwargs)
    for pol, why in refused.items():
        log(f"skipping {pol}: {why}")
    runnable = [p for p in policies if p not in refused]
    specs = [stream_specs(seed + i, tasks_per_stream, mix_entries, cross_task) for i in range(streams)]
    plan = [(pol, mb, mode, i) for pol in runnable for mb in budgets_mb for mode in modes for i in range(streams)]
    results: list[StreamTaskResult] = []
    t0 = time.time()
    policies_built: dict[tuple[str, float], object] = {}
    bar = tqdm(plan, desc="bench streams", unit="stream", disable=not progress, dynamic_ncols=True)
    for pol, mb, mode, i in bar:
        key = (pol, mb)
        if key not in policies_built:
            cfg = policy_config(pol, int(mb * 2**20), recent_steps, novelty_weight)
            if max_context_steps is not None:
                cfg = replace(cfg, max_context_steps=int(max_context_steps))
            cfg = replace(cfg, n_cameras=len(cameras))
            policies_built = {key: make_policy(model, cfg, **(model_kwargs or {}))}
        policy = policies_built[key]
        rs = run_stream(seed + i, specs[i], policy, mode=mode, label=pol, budget_mb=mb, stream_index=i,
                        gated=policy.config.eviction == "action_gate", cameras=tuple(cameras))
        results += rs
        bar.set_postfix_str(f"{pol} {mb} MiB {mode}: {sum(r.success for r in rs)}/{len(rs)}")
    bar.close()
    meta = {"policies": list(runnable), "budgets_mb": list(budgets_mb), "mix": [list(m) for m in mix_entries],
            "mix_text": ",".join(f"{m[0]} D={m[1]}" for m in mix_entries), "tasks_per_stream": tasks_per_stream,
            "streams": streams, "cross_task": cross_task, "modes": list(modes), "recent_steps": recent_steps,
            "max_context_steps": max_context_steps, "model": model or "embedded default", "seed": seed,
            "cameras": list(cameras),
            "seconds": round(time.time() - t0, 1)}
    return write_outputs(Path(out), results, meta)
