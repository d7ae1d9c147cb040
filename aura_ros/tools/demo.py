"""The demo (the README's first command): the trained policy doing memory tasks back to back, with
no reset between them, over real topics.

1. Starts the simulated arm running a stream of memory tasks (sim_node with ``task``: cue_recall by
   default, and a share of recall_previous tasks, ``--cross-task``; in each, a bin lights up once,
   D distractor steps follow, then the robot must drop its block into the bin that lit up, or into
   the one that lit up in the task before) and the policy node (the embedded default policy, the
   action-gated KV cache at its default budget) as separate processes on a private,
   localhost-only ROS domain. The sim runs in lockstep with the policy's commands, one task after
   another on one scene; nobody resets the memory: each task's instruction is the only boundary.
2. Listens to the node's ~/memory and ~/gate_stats and the sim's task/result like rqt would,
   printing a live line: task, successes, step, KV bytes, writes, evictions, step time.
3. Runs the same stream (same seeds, same budget) in process through the Policy seam with the
   action-gated cache and with a sliding window, so the two are compared at equal memory; then a
   stretch with an unbounded cache, to show what a growing cache costs.
4. Writes out/demo/demo.png (KV memory, step latency, success by task over the stream, success
   per cache with 95% intervals), demo.csv (per step), demo_episodes.csv (per task) and
   demo_summary.json.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from aura_ros.tools.harness import private_domain, start_process, stop_process

DEFAULT_TASK = "cue_recall"


def _gated_run(task: str, episodes: int, distractors: int, budget_mb: float, rate_hz: float, seed: int,
               out: Path, foxglove_port: int | None = 0,
               cross_task: float = 0.0) -> tuple[list[dict], list[dict], dict[str, str], object]:
    """The live run over DDS: per-step rows from the node's topics, per-task results, the sim's
    counters (its last /diagnostics: steps, commands dropped as older than their observation, ...)
    and the last memory-map image. Everything the node publishes is also served live to Foxglove
    (``foxglove_port``; None: off) and recorded to out/demo.mcap."""
    with private_domain() as env:
        return _gated_run_in(env, task, episodes, distractors, budget_mb, rate_hz, seed, out, foxglove_port,
                             cross_task)


def _gated_run_in(env: dict, task: str, episodes: int, distractors: int, budget_mb: float, rate_hz: float,
                  seed: int, out: Path, foxglove_port: int | None, cross_task: float = 0.0):
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from aura_ros.core import topics
    from aura_ros.msg import GateStats, MemoryBudget
    from aura_ros.ros import qos
    from aura_ros.ros.image_conversion import image_to_rgb
    from aura_ros.sim.tasks import make_task
    from aura_ros.tools.foxglove_live import LiveView

    instruction = make_task(task, seed, distractors).instruction
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    image_timeout_s = max(0.25, 3.0 / rate_hz)
    # No reset service: the tasks follow one another and the memory goes on (the endless run).
    sim = start_process("aura_ros.ros.sim_node", {
        "rate_hz": rate_hz, "task": task, "task_distractors": distractors, "seed": seed,
        "task_cross_task": cross_task}, env, logs / "sim_node.log")
    node = start_process("aura_ros.ros.policy_node", {
        "control.rate_hz": rate_hz, "memory.vram_budget_mb": budget_mb, "memory.eviction": "action_gate",
        "timeouts.image_s": image_timeout_s, "instruction": f"'{instruction}'"}, env, logs / "policy_node.log")
    try:
        view = LiveView(port=foxglove_port, mcap_path=out / "demo.mcap")
    except Exception as exc:  # the port is taken (another Foxglove server): any free one will do
        print(f"Foxglove port {foxglove_port} unavailable ({exc}); using a free port")
        view = LiveView(port=0, mcap_path=out / "demo.mcap")
    if view.url:
        print(f"Foxglove: open {view.url} (Open connection -> Foxglove WebSocket), then import "
              f"config/foxglove_layout.json; recording {out / 'demo.mcap'}", flush=True)
    rclpy.init()
    listener = Node("aura_demo_monitor")
    last_map: list = []

    def on_map(msg: Image) -> None:
        view.log_message(topics.MEMORY_MAP, msg)
        last_map[:] = [msg]
    rows: dict[int, dict] = {}
    memory: dict[int, MemoryBudget] = {}
    results: list[dict] = []

    def on_memory(msg: MemoryBudget) -> None:
        view.log_message(topics.MEMORY, msg)
        memory[msg.step] = msg

    def on_gate(msg: GateStats) -> None:
        view.log_message(topics.GATE_STATS, msg)
        m = memory.pop(msg.step, None)
        rows[msg.step] = {"step": msg.step, "latency_ms": msg.step_latency_ms, "writes": msg.writes_total,
                          "evictions": msg.evictions_total, "gate": msg.gate_value, "written": msg.written,
                          "used_bytes": m.used_bytes if m else -1, "allocated_bytes": m.allocated_bytes if m else -1,
                          "budget_bytes": m.budget_bytes if m else -1, "rss_bytes": m.process_rss_bytes if m else -1}

    listener.create_subscription(MemoryBudget, topics.MEMORY, on_memory, qos.STATS)
    listener.create_subscription(GateStats, topics.GATE_STATS, on_gate, qos.STATS)
    listener.create_subscription(String, "/task/result", lambda m: results.append(json.loads(m.data)), qos.STATS)
    sim_counters: dict[str, str] = {}

    def on_diagnostics(msg: DiagnosticArray) -> None:
        view.log_message(topics.DIAGNOSTICS, msg)
        for status in msg.status:
            if status.hardware_id == "aura_sim":
                sim_counters.update({kv.key: kv.value for kv in status.values})

    listener.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, on_diagnostics, qos.DIAGNOSTICS)
    listener.create_subscription(Image, topics.IMAGE, lambda m: view.log_message(topics.IMAGE, m), qos.SENSOR)
    listener.create_subscription(Image, topics.MEMORY_MAP, on_map, qos.STATS)
    t0 = time.monotonic()
    last_print, last_count, last_t, last_progress = 0.0, 0, t0, t0
    try:
        while len(results) < episodes:
            n_before = len(rows) + len(results)
            rclpy.spin_once(listener, timeout_sec=0.1)
            now = time.monotonic()
            if len(rows) + len(results) != n_before:
                last_progress = now
            for proc, name in ((sim, "sim_node"), (node, "policy_node")):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}); see {logs / (name + '.log')}")
            if now - last_progress > 120:
                raise RuntimeError(f"no step and no episode result for 120 s; see {logs}")
            if now - last_print > 0.5 and rows:
                hz = (len(rows) - last_count) / (now - last_t)
                r = rows[max(rows)]
                ok = sum(x["success"] for x in results)
                marks = "".join("+" if x["success"] else "-" for x in results)
                print(f"\rtask {min(len(results) + 1, episodes):>2}/{episodes} (no reset) | "
                      f"successes {ok:>2}/{len(results):<2} {marks:<{episodes}} | "
                      f"step {r['step']:>6} | {hz:5.1f} Hz | KV {r['used_bytes'] / 2**20:6.3f}/"
                      f"{r['budget_bytes'] / 2**20:.3f} MiB | writes {r['writes']:>4} | "
                      f"evictions {r['evictions']:>5} | "
                      f"{r['latency_ms']:5.1f} ms/step", end="", flush=True)
                last_print, last_count, last_t = now, len(rows), now
    finally:
        print()
        view.close()
        listener.destroy_node()
        rclpy.try_shutdown()
        stop_process(node)
        stop_process(sim)
    ok = sum(x["success"] for x in results[:episodes])
    print(f"over DDS: {ok}/{min(len(results), episodes)} tasks succeeded, back to back with no reset")
    memory_map = image_to_rgb(last_map[0]) if last_map else None
    return [rows[k] for k in sorted(rows)], results[:episodes], sim_counters, memory_map


def _in_process(task: str, episodes: int, distractors: int, budget_bytes: int, seed: int,
                cross_task: float = 0.0) -> list:
    """The same stream through the Policy seam, no reset: the action gate and a sliding window at one budget."""
    from aura_ros.bench.streams import run_stream
    from aura_ros.bench.tasks import policy_config
    from aura_ros.core.registry import make_policy
    from aura_ros.sim.tasks import stream_specs

    specs = stream_specs(seed, episodes, ((task, distractors),), cross_task)
    out = []
    for pol in ("action_gate", "sliding_window"):
        policy = make_policy(None, policy_config(pol, budget_bytes, recent_steps=8, novelty_weight=0.0))
        rs = run_stream(seed, specs, policy, mode="stream", label=pol, budget_mb=budget_bytes / 2**20,
                        gated=pol == "action_gate")
        out += rs
        print(f"in process, {pol:>14}: {len(rs)} tasks, no reset | successes {sum(r.success for r in rs):>2} | "
              f"cue kept at recall {sum(r.cue_kept == 1 for r in rs):>2} | "
              + "".join("+" if r.success else "-" for r in rs))
    return out


def _unbounded_run(task: str, steps: int, seed: int) -> list[dict]:
    """The unbounded cache on one long episode of the task: what growing memory costs."""
    from aura_ros.core.config import PolicyConfig
    from aura_ros.core.registry import make_policy
    from aura_ros.core.types import Observation
    from aura_ros.sim.tasks import make_task

    episode = make_task(task, seed, steps)
    policy = make_policy(None, PolicyConfig(eviction="unbounded"), instruction=episode.instruction)
    rows = []
    for i in range(min(steps, episode.total_steps)):
        obs = episode.observe()
        action = policy.step(Observation(obs.image, obs.joint_state))
        episode.apply(action.first)
        st = action.stats
        rows.append({"step": st.step, "latency_ms": st.step_latency_ms, "used_bytes": st.used_bytes,
                     "allocated_bytes": st.allocated_bytes})
        if i % 50 == 0 or i == steps - 1:
            print(f"\runbounded step {i + 1:>5}/{steps} | KV {st.allocated_bytes / 2**20:7.2f} MiB | "
                  f"{st.step_latency_ms:6.1f} ms/step", end="", flush=True)
    print()
    return rows


def _success_bars(dds: list[dict], local: list) -> list[tuple[str, int, int]]:
    """(label, successes, episodes) for the success panel and the summary."""
    bars = [("action gate, over DDS", sum(r["success"] for r in dds), len(dds))]
    for pol, label in (("action_gate", "action gate, in process"), ("sliding_window", "sliding window, in process")):
        rs = [r for r in local if r.policy == pol]
        bars.append((label, sum(r.success for r in rs), len(rs)))
    return bars


def _plot(gated: list[dict], unbounded: list[dict], bars, chance: float, title: str, path: Path,
          memory_map: np.ndarray | None = None, dds: list[dict] | None = None, local: list | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aura_ros.bench.tasks import wilson

    fig = plt.figure(figsize=(22, 7.2 if memory_map is not None else 4.6))
    rows = 2 if memory_map is not None else 1
    grid = fig.add_gridspec(rows, 4, height_ratios=[4.6, 2.6][:rows])
    ax1, ax2, ax5, ax3 = (fig.add_subplot(grid[0, i]) for i in range(4))
    # Success by task over the stream (no reset): cumulative success rate after each task.
    series = [("action gate, over DDS", [bool(r["success"]) for r in dds or []])]
    for pol, label in (("action_gate", "action gate, in process"), ("sliding_window", "sliding window, in process")):
        series.append((label, [r.success for r in local or [] if r.policy == pol]))
    for label, ok in series:
        if ok:
            idx = np.arange(1, len(ok) + 1)
            ax5.plot(idx, np.cumsum(ok) / idx, marker="o", ms=3, label=label)
    ax5.axhline(chance, color="grey", ls=":", lw=1)
    ax5.set(xlabel="task index (back to back, no reset)", ylabel="success so far", ylim=(-0.03, 1.03),
            title="success by task over the stream")
    ax5.grid(alpha=0.3)
    ax5.legend(fontsize=8)
    if memory_map is not None:
        ax4 = fig.add_subplot(grid[1, :])
        ax4.imshow(memory_map, interpolation="nearest", aspect="auto")
        ax4.set_axis_off()
        ax4.set_title("what the cache holds at the end of the run over DDS (~/memory_map)")
    title = title + " (no reset)"
    gated = [r for r in gated if r["allocated_bytes"] >= 0]
    for rows, label in ((unbounded, "unbounded DynamicCache"), (gated, "aura_ros action-gated cache")):
        if not rows:
            continue
        x = [r["step"] for r in rows]
        ax1.plot(x, [r["allocated_bytes"] / 2**20 for r in rows], label=label)
        lat = np.asarray([r["latency_ms"] for r in rows])
        k = 25
        smooth = np.convolve(lat, np.ones(k) / k, mode="valid") if lat.size > k else lat
        ax2.plot(x[len(x) - smooth.size:], smooth, label=label)
    ax1.set(xlabel="control step", ylabel="KV cache MiB", title="KV cache memory")
    ax2.set(xlabel="control step", ylabel="ms (moving mean of 25)", title="step latency")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    labels = [b[0] for b in bars]
    rates = [b[1] / b[2] if b[2] else 0.0 for b in bars]
    ci = [wilson(b[1], b[2]) if b[2] else (0.0, 0.0) for b in bars]
    err = np.clip(np.array([[r - lo for r, (lo, _) in zip(rates, ci)],
                            [hi - r for r, (_, hi) in zip(rates, ci)]]), 0, None)
    colors = ["tab:orange", "tab:orange", "tab:blue"]
    ax3.bar(range(len(bars)), rates, yerr=err, capsize=5, color=colors, alpha=0.85)
    for i, b in enumerate(bars):
        ax3.text(i + 0.08, rates[i] + 0.02, f"{b[1]}/{b[2]}", ha="left", va="bottom", fontweight="bold")
    ax3.axhline(chance, color="grey", ls=":", label=f"chance {chance:.2f}")
    ax3.set_xticks(range(len(bars)), labels, fontsize=8)
    ax3.set(ylim=(0, 1.05), ylabel="success (95% Wilson interval)", title=title)
    ax3.legend(loc="upper right", fontsize=8)
    ax3.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(episodes: int = 8, distractors: int = 60, budget_mb: float = 0.5, rate_hz: float = 10.0,
             out: Path = Path("out/demo"), unbounded_steps: int = 400, task: str = DEFAULT_TASK, seed: int = 0,
             threads: int = 1, foxglove_port: int | None = 0, cross_task: float = 0.25) -> int:
    """``episodes`` tasks back to back with no reset (``cross_task`` of them, after the first, ask for
    the previous task's bin)."""
    import torch

    from aura_ros.bench.tasks import wilson
    from aura_ros.sim.tasks import make_task

    if threads > 0:
        torch.set_num_threads(threads)  # the node runs with one thread too (model.torch_threads)

    out.mkdir(parents=True, exist_ok=True)
    probe = make_task(task, seed, distractors)
    chance = 1.0 / probe.n_choices
    print(f"aura_ros demo: the trained default policy on {episodes} memory tasks back to back with no reset "
          f"({task}, D = {distractors}: a bin lights up once, then the robot must use it {distractors} steps later; "
          f"a share {cross_task:g} of the tasks ask for the bin of the task before)")
    print(f"sim + policy node over ROS 2 (localhost only) at {rate_hz:g} Hz, action-gated KV cache at "
          f"{budget_mb:g} MiB")
    t0 = time.time()
    gated, dds_results, sim_counters, memory_map = _gated_run(task, episodes, distractors, budget_mb, rate_hz, seed,
                                                              out, foxglove_port, cross_task)
    print(f"the same {episodes} tasks in process at the same budget, no reset: action gate, then sliding window")
    local = _in_process(task, episodes, distractors, int(budget_mb * 2**20), seed, cross_task)
    print(f"unbounded comparison: the same task with a DynamicCache, {unbounded_steps} steps")
    unbounded = _unbounded_run(task, unbounded_steps, seed)

    with open(out / "demo.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "step", "allocated_bytes", "used_bytes", "latency_ms"])
        for name, rows in (("gated", gated), ("unbounded", unbounded)):
            for r in rows:
                w.writerow([name, r["step"], r["allocated_bytes"], r["used_bytes"], f"{r['latency_ms']:.3f}"])
    with open(out / "demo_episodes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "task_index", "task", "seed", "success", "steps", "cue_kept_at_recall",
                    "stale_cues_kept", "write_rate"])
        for r in dds_results:
            w.writerow(["action_gate_dds", r["episode"], r["task"], r["seed"], r["success"], r["steps"], "", "", ""])
        for r in local:
            w.writerow([f"{r.policy}_in_process", r.index - 1, r.task, r.seed, r.success, r.steps, r.cue_kept,
                        r.stale_cues_kept, f"{r.writes / max(r.steps, 1):.4f}"])
    bars = _success_bars(dds_results, local)
    _plot(gated, unbounded, bars, chance, f"{task}, D = {distractors}, KV budget {budget_mb:g} MiB", out / "demo.png",
          memory_map, dds_results, local)

    g_alloc = {r["allocated_bytes"] for r in gated if r["allocated_bytes"] >= 0}
    n = min(len(unbounded), len(gated))
    g_late = float(np.median([r["latency_ms"] for r in gated[max(0, n - 50): n]])) if n else float("nan")
    u_late = float(np.median([r["latency_ms"] for r in unbounded[max(0, n - 50): n]])) if n else float("nan")
    writes = gated[-1]["writes"] if gated else 0
    lines = ["", "summary",
             f"  {episodes} tasks back to back, no reset ({task}, D = {distractors}, recall_previous share "
             f"{cross_task:g}, stream seed {seed}), KV budget {budget_mb:g} MiB, chance {chance:.2f}",
             "  by task (+ success, - failure): " + " | ".join(
                 f"{label} {''.join('+' if ok else '-' for ok in oks)}" for label, oks in (
                     ("DDS", [r["success"] for r in dds_results]),
                     ("gate", [r.success for r in local if r.policy == "action_gate"]),
                     ("window", [r.success for r in local if r.policy == "sliding_window"])))]
    for label, k, m in bars:
        lo, hi = wilson(k, m) if m else (float("nan"), float("nan"))
        lines.append(f"  success, {label:<27} {k:>2}/{m:<2} = {k / max(m, 1):.2f}  "
                     f"95% CI [{lo:.2f}, {hi:.2f}]")
    for pol in ("action_gate", "sliding_window"):
        rs = [r for r in local if r.policy == pol]
        lines.append(f"  cue step still in the cache when recall starts, {pol}: "
                     f"{sum(r.cue_kept == 1 for r in rs)}/{len(rs)}")
    if gated:
        lines.append(f"  over DDS: {len(gated)} steps, KV allocated {sorted(g_alloc)[0] / 2**20:.3f} MiB "
                     f"at every step "
                     f"({'constant' if len(g_alloc) == 1 else 'CHANGED'}), writes {writes} "
                     f"({writes / max(len(gated), 1):.3f} of steps), evictions {gated[-1]['evictions']}, "
                     f"p50 {np.median([r['latency_ms'] for r in gated]):.1f} ms/step")
    task_steps = sum(r["steps"] for r in dds_results)
    lines.append(f"  lockstep over DDS: {len(gated)} policy steps for {task_steps} task steps "
                 f"(the extra ones: steps on a frame the sim re-sent while the policy thought); commands dropped "
                 f"by the sim: "
                 f"{sim_counters.get('commands_older_than_observation', '0')} older than their observation, "
                 f"{sim_counters.get('commands_between_episodes', '0')} between episodes (its last diagnostics)")
    if unbounded:
        lines.append(f"  unbounded run: {len(unbounded)} steps, "
                     f"KV grew {unbounded[0]['allocated_bytes'] / 2**20:.2f} -> "
                     f"{unbounded[-1]['allocated_bytes'] / 2**20:.2f} MiB; "
                     f"around step {n}: gated {g_late:.1f} ms/step, "
                     f"unbounded {u_late:.1f} ms/step")
    lines.append(f"  {time.time() - t0:.0f} s in total. plot: {out / 'demo.png'}   data: {out / 'demo.csv'}, "
                 f"{out / 'demo_episodes.csv'}   node logs: {out / 'logs'}")
    print("\n".join(lines))
    summary = {"task": task, "distractors": distractors, "episodes": episodes, "seed": seed, "budget_mb": budget_mb,
               "rate_hz": rate_hz, "chance": chance, "cross_task": cross_task,
               "memory_reset_between_tasks": [bool(r.get("reset")) for r in dds_results],
               "tasks_dds": [r["task"] for r in dds_results],
               "success_by_task": {"action gate, over DDS": [bool(r["success"]) for r in dds_results],
                                   **{f"{pol}, in process": [r.success for r in local if r.policy == pol]
                                      for pol in ("action_gate", "sliding_window")}},
               "success": {label: {"successes": k, "episodes": m} for label, k, m in bars},
               "cue_kept_at_recall": {pol: sum(r.cue_kept == 1 for r in local if r.policy == pol)
                                      for pol in ("action_gate", "sliding_window")},
               "gated_steps": len(gated), "task_steps_over_dds": task_steps, "sim_counters": sim_counters,
               "gated_allocated_bytes": sorted(g_alloc),
               "gated_writes": writes, "gated_evictions": gated[-1]["evictions"] if gated else 0,
               "unbounded_steps": len(unbounded),
               "unbounded_allocated_bytes": [unbounded[0]["allocated_bytes"], unbounded[-1]["allocated_bytes"]]
               if unbounded else [], "seconds": time.time() - t0}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    (out / "demo_summary.txt").write_text("\n".join(lines[1:]) + "\n")
    return 0 if len(g_alloc) == 1 and len(dds_results) == episodes else 1
