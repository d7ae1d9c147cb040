"""`aura-ros bench tasks`: closed-loop success on the memory tasks, per memory policy, at equal budget.

Each episode is one seeded memory task (aura_ros.sim.tasks): a cue (or a latent fact) early on,
a distractor stretch of D steps, then a recall phase where the robot must act on what it saw.
The policy (the embedded default, or ``--model``) drives the task in closed loop through the
Policy seam only: ``make_policy`` -> ``step(Observation)`` -> ``Action.first`` -> ``task.apply``.
Every memory policy gets the same seeds and the same KV budget:

- unbounded: the growing reference cache, run only on episodes up to a stated cap of steps;
- sliding_window, streaming_llm, h2o: the baselines;
- action_gate: ours; action_gate_novelty: the gate with its observation (novelty) term, when
  GateConfig has ``w_novelty`` (otherwise the row is skipped with the reason).

Reported first: the scripted expert's success and chance (1 / n_choices), so a policy's figure
can be read against what the task allows. Per (task, policy, D): success with a 95% Wilson
interval, the long-term write rate, the KV bytes allocated (constant for a bounded cache) and
how often the cue step was still in the cache when the recall phase started (from the policy's
kept steps). Deterministic by seed: episode i of every policy and every D uses seed + i.
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

from aura_ros.core.registry import unsupported

TASK_NAMES = ("cue_recall", "latent_fact")
POLICIES = ("unbounded", "sliding_window", "streaming_llm", "h2o", "action_gate", "action_gate_novelty")
EXPERT = "expert"
Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (well behaved at 0 and n)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def novelty_supported() -> bool:
    from aura_ros.memory.gate import GateConfig

    return "w_novelty" in {f.name for f in dataclasses.fields(GateConfig)}


def policy_config(name: str, budget_bytes: int, recent_steps: int, novelty_weight: float):
    """The PolicyConfig of a memory policy at ``budget_bytes``; raises ValueError for an unknown name."""
    from aura_ros.core.config import PolicyConfig
    from aura_ros.memory.gate import GateConfig

    if name == "unbounded":
        return PolicyConfig(eviction="unbounded", recent_steps=recent_steps)
    if name in ("sliding_window", "streaming_llm", "h2o", "action_gate"):
        return PolicyConfig(eviction=name, budget_bytes=budget_bytes, recent_steps=recent_steps)
    if name == "action_gate_novelty":
        gate = GateConfig(w_novelty=novelty_weight)  # only called when novelty_supported()
        return PolicyConfig(eviction="action_gate", budget_bytes=budget_bytes, recent_steps=recent_steps, gate=gate)
    raise ValueError(f"unknown memory policy {name!r}; choose from {', '.join(POLICIES)}")


def bytes_per_token(model: str | None, model_kwargs: dict | None = None) -> int:
    """KV bytes of one token of ``model``, read through the seam (allocated / capacity of a small cache)."""
    from aura_ros.core.config import PolicyConfig
    from aura_ros.core.registry import make_policy

    st = make_policy(model, PolicyConfig(eviction="sliding_window", budget_bytes=4 * 2**20),
                     **(model_kwargs or {})).stats()
    return max(1, st.allocated_bytes // max(1, st.capacity_tokens))


@dataclass
class EpisodeResult:
    task: str
    policy: str
    distractors: int
    episode: int
    seed: int
    success: bool
    n_choices: int
    steps: int
    cue_step: int
    recall_start_step: int
    cue_kept: int  # 1/0: the cue's step was in the cache when recall started; -1: not measured (expert)
    writes: int  # steps written to long-term memory by the gate
    write_rate: float  # writes / steps for the gated policies; 1.0 for the baselines (every step enters)
    allocated_bytes_min: int
    allocated_bytes_max: int
    used_bytes_max: int
    kept_steps_at_recall: int
    seconds: float


@dataclass
class SummaryRow:
    task: str
    policy: str
    distractors: int
    n: int
    successes: int
    success: float
    ci_low: float
    ci_high: float
    chance: float
    write_rate: float
    allocated_bytes: int  # the one value of a bounded cache; the largest of the unbounded one
    allocated_constant: bool
    cue_kept: float  # fraction of episodes (nan for the expert)
    note: str = ""


def run_episode(task_name: str, policy_name: str, distractors: int, episode: int, seed: int, config=None,
                model: str | None = None, task_kwargs: dict | None = None,
                model_kwargs: dict | None = None) -> EpisodeResult:
    """One closed-loop episode; ``config`` None runs the task's scripted expert."""
    from aura_ros.sim.tasks import make_task

    t0 = time.perf_counter()
    task = make_task(task_name, seed, distractors, **(task_kwargs or {}))
    policy = None
    if config is not None:
        from aura_ros.core.registry import make_policy

        policy = make_policy(model, config, instruction=task.instruction, **(model_kwargs or {}))
    policy_step_of: dict[int, int] = {}  # task step -> the policy's step number (what kept_steps holds)
    cue_kept, kept_at_recall, writes, steps = -1, 0, 0, 0
    alloc: list[int] = []
    used_max = 0
    limit = task.total_steps + 16  # a task that never says done is a bug, not an endless loop
    while not task.done:
        if steps >= limit:
            raise RuntimeError(f"{task_name} seed {seed}: not done after {steps} steps (total_steps "
                               f"{task.total_steps})")
        obs = task.observe()
        if policy is None:
            action = np.asarray(task.expert_action(), dtype=np.float64)
        else:
            if task.step_index == task.recall_start_step:
                # memory_map() rather than stats().kept_steps: the unbounded reference leaves the latter empty.
                kept = {step for step, *_ in policy.memory_map() if step >= 0}
                kept_at_recall = len(kept)
                cue_kept = int(policy_step_of.get(task.cue_step, -10**9) in kept)
            from aura_ros.core.types import Observation

            out = policy.step(Observation(obs.image, obs.joint_state, event=bool(getattr(obs, "event", False))))
            policy_step_of[task.step_index] = out.step
            writes += int(out.gate.written)
            alloc.append(out.stats.allocated_bytes)
            used_max = max(used_max, out.stats.used_bytes)
            action = out.first
        task.apply(action)
        steps += 1
    gated = config is not None and config.eviction == "action_gate"
    return EpisodeResult(
        task=task_name, policy=policy_name, distractors=distractors, episode=episode, seed=seed,
        success=bool(task.success), n_choices=int(task.n_choices), steps=steps, cue_step=int(task.cue_step),
        recall_start_step=int(task.recall_start_step), cue_kept=cue_kept, writes=writes if gated else steps,
        write_rate=(writes / steps if gated else 1.0) if policy is not None else float("nan"),
        allocated_bytes_min=min(alloc, default=0), allocated_bytes_max=max(alloc, default=0),
        used_bytes_max=used_max, kept_steps_at_recall=kept_at_recall, seconds=time.perf_counter() - t0)


def summarise(results: list[EpisodeResult], skipped: dict[tuple[str, str, int], str]) -> list[SummaryRow]:
    """One row per (task, policy, D), in the order: expert first, then POLICIES; skipped rows with their reason."""
    groups: dict[tuple[str, str, int], list[EpisodeResult]] = {}
    for r in results:
        groups.setdefault((r.task, r.policy, r.distractors), []).append(r)
    # A bounded policy's allocation is constant when one value covers every episode of every task and D.
    per_policy_alloc: dict[str, set[int]] = {}
    for r in results:
        if r.policy != EXPERT:
            per_policy_alloc.setdefault(r.policy, set()).update({r.allocated_bytes_min, r.allocated_bytes_max})
    order = (EXPERT,) + POLICIES
    keys = sorted(set(groups) | set(skipped), key=lambda k: (TASK_NAMES.index(k[0]) if k[0] in TASK_NAMES else 99,
                                                               k[0], order.index(k[1]), k[2]))
    rows = []
    for key in keys:
        task, pol, d = key
        rs = groups.get(key, [])
        if not rs:
            rows.append(SummaryRow(task, pol, d, 0, 0, float("nan"), float("nan"), float("nan"), float("nan"),
                                   float("nan"), 0, False, float("nan"), skipped.get(key, "")))
            continue
        k, n = sum(r.success for r in rs), len(rs)
        lo, hi = wilson(k, n)
        kept = [r.cue_kept for r in rs if r.cue_kept >= 0]
        rows.append(SummaryRow(
            task, pol, d, n, k, k / n, lo, hi, 1.0 / rs[0].n_choices,
            float(np.mean([r.write_rate for r in rs])) if pol != EXPERT else float("nan"),
            max(r.allocated_bytes_max for r in rs), len(per_policy_alloc.get(pol, {0, 1})) == 1,
            float(np.mean(kept)) if kept else float("nan"), skipped.get(key, "")))
    return rows


def _fmt(x: float, spec: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(rows: list[SummaryRow], meta: dict) -> str:
    """The reference block first (expert, chance, unbounded at the shortest D), then the full table."""
    lines = []
    short = min((r.distractors for r in rows), default=0)
    for task in dict.fromkeys(r.task for r in rows):
        ref = {r.policy: r for r in rows if r.task == task and r.distractors == short}
        exp, unb = ref.get(EXPERT), ref.get("unbounded")
        parts = [f"**{task}** (D = {short}):"]
        if exp and exp.n:
            parts.append(f"expert {exp.success:.2f} [{exp.ci_low:.2f}, {exp.ci_high:.2f}],")
        chance = next((r.chance for r in rows if r.task == task and not math.isnan(r.chance)), float("nan"))
        parts.append(f"chance {_fmt(chance)},")
        if unb and unb.n:
            parts.append(f"trained policy with the unbounded cache {unb.success:.2f} "
                         f"[{unb.ci_low:.2f}, {unb.ci_high:.2f}]")
        else:
            parts.append("trained policy with the unbounded cache: not run")
        lines.append("- " + " ".join(parts))
    lines += ["", f"Budget {meta['budget_tokens']} tokens ({meta['budget_bytes'] / 2**20:.3f} MiB) for every bounded "
                  f"policy; unbounded only on episodes of at most {meta['unbounded_cap_steps']} steps; "
                  f"{meta['recent_steps']} recent steps; 95% Wilson intervals.", "",
              "| task | policy | D | n | success | 95% CI | write rate | KV allocated MiB | cue kept at recall "
              "| note |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        alloc = "-" if not r.n or r.policy == EXPERT else (
            f"{r.allocated_bytes / 2**20:.3f}"
            + ("" if r.allocated_constant or r.policy == "unbounded" else " (varies)")
            + (" (grows)" if r.policy == "unbounded" else ""))
        ci = f"[{r.ci_low:.2f}, {r.ci_high:.2f}]" if r.n else "-"
        lines.append(f"| {r.task} | {r.policy} | {r.distractors} | {r.n} | {_fmt(r.success)} | {ci} | "
                     f"{_fmt(r.write_rate, '.3f')} | {alloc} | {_fmt(r.cue_kept)} | {r.note} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[SummaryRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r.task for r in rows))
    ds = [r.distractors for r in rows] or [1]
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(6.2 * max(1, len(tasks)) + 1.8, 4.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for pol in (EXPERT,) + POLICIES:
            pts = sorted((r for r in rows if r.task == task and r.policy == pol and r.n), key=lambda r: r.distractors)
            if not pts:
                continue
            x = [r.distractors for r in pts]
            style = dict(ls="--", color="black", lw=1) if pol == EXPERT else dict(marker="o", ms=4)
            line, = ax.plot(x, [r.success for r in pts], label=pol, **style)
            if pol != EXPERT:
                ax.fill_between(x, [r.ci_low for r in pts], [r.ci_high for r in pts], color=line.get_color(),
                                alpha=0.07)
        chance = next((r.chance for r in rows if r.task == task and not math.isnan(r.chance)), None)
        if chance is not None:
            ax.axhline(chance, color="grey", ls=":", lw=1, label="chance")
        ax.set_xscale("log")
        ax.set_xlim(min(ds) / 1.3, max(ds) * 1.3)
        ax.set_ylim(-0.03, 1.03)
        ax.set(xlabel="distractor steps D", ylabel="success (95% Wilson band)", title=task)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out: Path, results: list[EpisodeResult], rows: list[SummaryRow], meta: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "tasks_episodes.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[fl.name for fl in dataclasses.fields(EpisodeResult)])
        w.writeheader()
        w.writerows(asdict(r) for r in results)
    with open(out / "tasks_success.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[fl.name for fl in dataclasses.fields(SummaryRow)])
        w.writeheader()
        w.writerows(asdict(r) for r in rows)
    (out / "tasks_table.md").write_text(markdown(rows, meta))
    plot(rows, out / "tasks_success.png")

    def clean(v):
        return None if isinstance(v, float) and math.isnan(v) else v

    summary = {"meta": meta, "rows": [{k: clean(v) for k, v in asdict(r).items()} for r in rows]}
    (out / "tasks_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _per_d(episodes: str | int, distractors: list[int]) -> dict[int, int]:
    """``--episodes`` as one N for every D, or one N per D ("20,20,5")."""
    parts = [int(x) for x in str(episodes).split(",") if x.strip()]
    if len(parts) == 1:
        parts = parts * len(distractors)
    if len(parts) != len(distractors) or any(p < 1 for p in parts):
        raise ValueError(f"--episodes needs one N >= 1 or one per distractor length ({len(distractors)}), "
                         f"got {episodes!r}")
    return dict(zip(distractors, parts))


def run(tasks=TASK_NAMES, policies=POLICIES, distractors=(20, 200, 2000), episodes: str | int = 20,
        budget_tokens: int | None = 1024, budget_mb: float | None = None, unbounded_cap: int = 600,
        recent_steps: int = 8, novelty_weight: float = 1.0, model: str | None = None, seed: int = 0,
        expert: bool = True, out: Path = Path("out/bench_tasks"), progress: bool = True, log=print,
        model_kwargs: dict | None = None) -> dict:
    """The whole benchmark; returns the summary (also written to ``out``). ``model_kwargs``: the
    backend's loading options (``registry.backend_options``: a GGUF's mmproj, kv_type, threads)."""
    import platform

    import psutil
    import torch
    from tqdm import tqdm

    from aura_ros.sim.tasks import EPISODE_TASKS

    unknown = [t for t in tasks if t not in EPISODE_TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; single episodes run {sorted(EPISODE_TASKS)} "
                         "(recall_previous runs in streams: aura-ros bench streams)")
    bad = [p for p in policies if p not in POLICIES]
    if bad:
        raise ValueError(f"unknown memory policy {bad}; choose from {', '.join(POLICIES)}")
    distractors = [int(d) for d in distractors]
    n_at = _per_d(episodes, distractors)
    bpt = bytes_per_token(model, model_kwargs)
    if budget_mb is not None:
        budget_bytes = int(budget_mb * 2**20)
        budget_tokens = budget_bytes // bpt
    else:
        budget_bytes = int(budget_tokens) * bpt
    skipped: dict[tuple[str, str, int], str] = {}
    refused = unsupported(model, policies, model_kwargs)
    if "action_gate_novelty" in policies and not novelty_supported():
        refused["action_gate_novelty"] = "GateConfig has no w_novelty (the gate's novelty term is not in this build)"
    runnable = []
    for pol in policies:
        if pol in refused:
            log(f"skipping {pol}: {refused[pol]}")
            for t in tasks:
                for d in distractors:
                    skipped[(t, pol, d)] = refused[pol]
            continue
        runnable.append(pol)
    # Which (task, policy, D) run; the unbounded cache only while the episode fits its stated cap.
    plan: list[tuple[str, str, int, int]] = []
    for t in tasks:
        for d in distractors:
            probe = max(_total_steps(t, seed + i, d) for i in range(n_at[d]))
            if expert:
                plan += [(t, EXPERT, d, i) for i in range(n_at[d])]
            for pol in runnable:
                if pol == "unbounded" and probe > unbounded_cap:
                    skipped[(t, pol, d)] = f"episodes up to {probe} steps > unbounded cap {unbounded_cap}"
                    continue
                plan += [(t, pol, d, i) for i in range(n_at[d])]
    results: list[EpisodeResult] = []
    t0 = time.time()
    bar = tqdm(plan, desc="bench tasks", unit="ep", disable=not progress, dynamic_ncols=True)
    wins: dict[tuple[str, str, int], list[int]] = {}
    for t, pol, d, i in bar:
        config = None if pol == EXPERT else policy_config(pol, budget_bytes, recent_steps, novelty_weight)
        r = run_episode(t, pol, d, i, seed + i, config, model, model_kwargs=model_kwargs)
        results.append(r)
        w = wins.setdefault((t, pol, d), [0, 0])
        w[0] += r.success
        w[1] += 1
        bar.set_postfix_str(f"{t} {pol} D={d}: {w[0]}/{w[1]} ok")
    bar.close()
    rows = summarise(results, skipped)
    meta = {"tasks": list(tasks), "policies": list(policies), "distractors": distractors,
            "episodes_per_d": {str(d): n for d, n in n_at.items()}, "budget_tokens": int(budget_tokens),
            "budget_bytes": int(budget_bytes), "bytes_per_token": bpt, "unbounded_cap_steps": unbounded_cap,
            "recent_steps": recent_steps,
            "novelty_weight": novelty_weight if "action_gate_novelty" in runnable else None,
            "model": model or "embedded default", "model_options": dict(model_kwargs or {}), "seed": seed,
            "seconds": time.time() - t0,
            "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
                       f"torch {torch.__version__}, {torch.get_num_threads()} threads"}
    return write_outputs(Path(out), results, rows, meta)


def read_episodes(path: Path) -> list[EpisodeResult]:
    """Episode rows back from a tasks_episodes.csv (to merge runs made in parallel, one per task)."""
    types = {f.name: f.type for f in dataclasses.fields(EpisodeResult)}
    conv = {"int": int, "float": float, "str": str, "bool": lambda v: v == "True"}
    with open(path, newline="") as f:
        return [EpisodeResult(**{k: conv[types[k]](v) for k, v in row.items()}) for row in csv.DictReader(f)]


def merge(sources: list[Path], out: Path) -> dict:
    """One set of outputs from several runs' folders (their episodes and metadata; skipped rows kept)."""
    results: list[EpisodeResult] = []
    metas = []
    skipped: dict[tuple[str, str, int], str] = {}
    for src in sources:
        results += read_episodes(Path(src) / "tasks_episodes.csv")
        summary = json.loads((Path(src) / "tasks_summary.json").read_text())
        metas.append(summary["meta"])
        for r in summary["rows"]:
            if r["n"] == 0:
                skipped[(r["task"], r["policy"], r["distractors"])] = r["note"]
    meta = dict(metas[0])
    for key in ("budget_bytes", "recent_steps", "unbounded_cap_steps", "model"):
        if any(m[key] != meta[key] for m in metas):
            raise ValueError(f"runs differ in {key}: {[m[key] for m in metas]}; they cannot be merged")
    meta["tasks"] = list(dict.fromkeys(t for m in metas for t in m["tasks"]))
    meta["seconds"] = sum(m["seconds"] for m in metas)
    meta["merged_from"] = [str(s) for s in sources]
    return write_outputs(Path(out), results, summarise(results, skipped), meta)


def _total_steps(task: str, seed: int, distractors: int) -> int:
    from aura_ros.sim.tasks import make_task

    return int(make_task(task, seed, distractors).total_steps)
