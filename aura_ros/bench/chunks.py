"""`aura-ros bench chunks`: the command stream at the robot when the policy step is slow (issue 27).

The sim node and the policy node run as separate processes over DDS on localhost (a private
domain). The node's inference is slowed with ``model.min_step_s`` (the worker pads every step to
at least that long, as a larger model would take it; a step whose own decoding takes longer is
not padded: H x joints action tokens are decoded one forward pass each). The bench
process subscribes to the command topic as the robot's controller would and records when each
command arrives. It runs the same set-up with chunk execution (``action.chunk`` H) and, for
comparison, with one inference per tick (``action.chunk`` 1).

Reported per run: commands per second at the robot, the intervals between consecutive commands
(p50, p99, max; by arrival time at the subscriber and by the node's header stamps), steps per
second, the interval between steps, and the node's own counters (ticks with an empty queue,
chunks, rows dropped as late, rows blended).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from aura_ros.tools.harness import private_domain, start_process, stop_process

INSTRUCTION = "pick up the red block and put it in the bin"
COUNTERS = ("chunks", "queue_empty_ticks", "chunk_actions_late", "chunk_actions_blended", "chunk_actions_cleared",
            "held_ticks", "hold_commands", "skipped_ticks", "missed_deadlines", "model_errors")


@dataclass
class RunReport:
    chunk: int
    rate_hz: float
    min_step_s: float
    refill_below: float
    sim_rate_hz: float
    seconds: float = 0.0  # the measured window
    commands: int = 0
    command_hz: float = 0.0
    gap_p50_ms: float = 0.0  # intervals between consecutive commands, by arrival at the subscriber
    gap_p99_ms: float = 0.0
    gap_max_ms: float = 0.0
    stamp_gap_p50_ms: float = 0.0  # the same by the node's header stamps (when each left the node)
    stamp_gap_p99_ms: float = 0.0
    stamp_gap_max_ms: float = 0.0
    gaps_over_2_periods: int = 0  # intervals longer than two control periods
    steps: int = 0
    steps_hz: float = 0.0
    step_interval_p50_ms: float = 0.0  # between consecutive steps' stats (the inference period)
    step_latency_p50_ms: float = 0.0  # the model's own step time (GateStats), before the padding
    counters: dict = field(default_factory=dict)
    exit_codes: dict = field(default_factory=dict)


def _percentiles(values: np.ndarray) -> tuple[float, float, float]:
    if values.size == 0:
        return 0.0, 0.0, 0.0
    return (float(np.percentile(values, 50)) * 1e3, float(np.percentile(values, 99)) * 1e3,
            float(values.max()) * 1e3)


def run_one(env: dict, chunk: int, rate_hz: float, min_step_s: float, refill_below: float, seconds: float,
            warmup_s: float, out: Path, progress=print, sim_rate_hz: float | None = None) -> RunReport:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from trajectory_msgs.msg import JointTrajectory

    from aura_ros.msg import GateStats
    from aura_ros.ros import qos

    tag = f"chunk{chunk}"
    # The sim's rate is its camera's and joint states' rate (a camera at 30 Hz beside 50 Hz control).
    sim = start_process("aura_ros.ros.sim_node", {"rate_hz": sim_rate_hz or rate_hz}, env, out / f"sim_node_{tag}.log")
    node = start_process("aura_ros.ros.policy_node", {
        "control.rate_hz": rate_hz, "action.chunk": chunk, "action.refill_below": refill_below,
        "model.min_step_s": min_step_s, "action.time_from_start_s": 1.0 / rate_hz,
        "instruction": f"'{INSTRUCTION}'"}, env, out / f"policy_node_{tag}.log")
    rep = RunReport(chunk, rate_hz, min_step_s, refill_below, sim_rate_hz or rate_hz)
    arrivals: list[float] = []
    stamps: list[float] = []
    steps: list[tuple[float, float]] = []  # (arrival, model step ms)
    counters: dict[str, int] = {}
    recording = [False]

    def on_command(m: JointTrajectory) -> None:
        if recording[0]:
            arrivals.append(time.monotonic())
            stamps.append(m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)

    def on_gate(g: GateStats) -> None:
        if recording[0]:
            steps.append((time.monotonic(), g.step_latency_ms))

    def on_diag(d: DiagnosticArray) -> None:
        for s in d.status:
            if s.name.startswith("aura_ros") and "policy" in s.name:
                counters.update({kv.key: int(kv.value) for kv in s.values if kv.key in COUNTERS})

    rclpy.init()
    mon = Node(f"aura_bench_chunks_{tag}")
    mon.create_subscription(JointTrajectory, "joint_trajectory", on_command, qos.COMMANDS)
    mon.create_subscription(GateStats, "/aura_policy/gate_stats", on_gate, qos.STATS)
    mon.create_subscription(DiagnosticArray, "/diagnostics", on_diag, qos.DIAGNOSTICS)
    first_step = [False]
    mon.create_subscription(GateStats, "/aura_policy/gate_stats", lambda g: first_step.__setitem__(0, True), qos.STATS)
    at_start: dict[str, int] = {}
    try:
        t0 = time.monotonic()
        while not first_step[0]:
            rclpy.spin_once(mon, timeout_sec=0.1)
            for proc, name in ((sim, "sim_node"), (node, "policy_node")):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {out}")
            if time.monotonic() - t0 > 120:
                raise RuntimeError(f"no step within 120 s; see {out}")
        end = time.monotonic() + warmup_s
        while time.monotonic() < end:
            rclpy.spin_once(mon, timeout_sec=0.05)
        at_start = dict(counters)
        recording[0] = True
        start = time.monotonic()
        end = start + seconds
        last = 0.0
        while time.monotonic() < end:
            rclpy.spin_once(mon, timeout_sec=0.05)
            if time.monotonic() - last > 5.0:
                last = time.monotonic()
                progress(f"bench chunks: chunk {chunk}, {last - start:.0f}/{seconds:.0f} s, {len(arrivals)} commands, "
                         f"{len(steps)} steps")
        recording[0] = False
        # The last /diagnostics of the window (published once a second).
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            rclpy.spin_once(mon, timeout_sec=0.05)
        rep.seconds = time.monotonic() - 1.5 - start
    finally:
        mon.destroy_node()
        rclpy.try_shutdown()
        rep.exit_codes = {"policy_node": stop_process(node), "sim_node": stop_process(sim)}
    rep.commands = len(arrivals)
    if len(arrivals) > 1:
        rep.command_hz = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
        gaps = np.diff(np.asarray(arrivals))
        rep.gap_p50_ms, rep.gap_p99_ms, rep.gap_max_ms = _percentiles(gaps)
        rep.stamp_gap_p50_ms, rep.stamp_gap_p99_ms, rep.stamp_gap_max_ms = _percentiles(np.diff(np.asarray(stamps)))
        rep.gaps_over_2_periods = int(np.sum(gaps > 2.0 / rate_hz))
    rep.steps = len(steps)
    if len(steps) > 1:
        times = np.asarray([t for t, _ in steps])
        rep.steps_hz = (len(steps) - 1) / (times[-1] - times[0])
        rep.step_interval_p50_ms = float(np.percentile(np.diff(times), 50)) * 1e3
        rep.step_latency_p50_ms = float(np.median([ms for _, ms in steps]))
    rep.counters = {k: counters.get(k, 0) - at_start.get(k, 0) for k in COUNTERS}
    return rep


def run(chunks=(32, 1), rate_hz: float = 50.0, min_step_s: float = 0.3, refill_below: float = 0.75,
        seconds: float = 60.0, warmup_s: float = 5.0, out: Path = Path("out/bench_chunks"),
        progress=print, sim_rate_hz: float | None = None) -> list[RunReport]:
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    for chunk in chunks:
        with private_domain() as env:
            reports.append(run_one(env, chunk, rate_hz, min_step_s, refill_below, seconds, warmup_s, out, progress,
                                   sim_rate_hz))
        progress(table(reports[-1:]))
    (out / "chunks.json").write_text(json.dumps([asdict(r) for r in reports], indent=1))
    (out / "chunks.md").write_text(table(reports) + "\n")
    return reports


def table(reports: list[RunReport]) -> str:
    rows = ["| chunk | control Hz | camera Hz | min step s | commands/s | gap p50 / p99 / max ms (arrival) | "
            "gap p50 / p99 / max ms (stamps) | gaps > 2 periods | steps/s | step interval p50 ms | "
            "model step p50 ms | empty-queue ticks | late rows | blended rows |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        c = r.counters
        rows.append(
            f"| {r.chunk} | {r.rate_hz:g} | {r.sim_rate_hz:g} | {r.min_step_s:g} | {r.command_hz:.2f} | "
            f"{r.gap_p50_ms:.1f} / {r.gap_p99_ms:.1f} / {r.gap_max_ms:.1f} | "
            f"{r.stamp_gap_p50_ms:.1f} / {r.stamp_gap_p99_ms:.1f} / {r.stamp_gap_max_ms:.1f} | "
            f"{r.gaps_over_2_periods} of {max(0, r.commands - 1)} | {r.steps_hz:.2f} | {r.step_interval_p50_ms:.0f} | "
            f"{r.step_latency_p50_ms:.1f} | {c.get('queue_empty_ticks', 0)} | {c.get('chunk_actions_late', 0)} | "
            f"{c.get('chunk_actions_blended', 0)} |")
    return "\n".join(rows)
