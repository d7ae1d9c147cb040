"""`aura-ros soak`: the node and the sim for a given number of steps (or hours), checking the
memory invariants on every MemoryBudget / GateStats message as they arrive over DDS.

Checked throughout: the KV allocation never changes; used <= allocated <= budget; the largest
position stays within the capacity; the step counter never goes back; the node's RSS after a
warm-up grows by no more than ``--rss-growth`` (default 5%); the /diagnostics key set (the
node's counters' storage) stays bounded. Exits non-zero on the first broken invariant.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aura_ros.tools.harness import private_domain, start_process, stop_process

INSTRUCTION = "pick up the red block and put it in the bin"
# p50/p99 of the steps in a window this long before each checkpoint (1k, 10k, 100k, ... and the end)
LATENCY_WINDOW = 500


@dataclass
class SoakReport:
    steps: int = 0
    seconds: float = 0.0
    allocated_bytes: int = -1
    budget_bytes: int = 0
    max_used_bytes: int = 0
    max_position: int = 0
    capacity_tokens: int = 0
    rss_after_warmup: int = 0
    rss_last: int = 0
    writes_total: int = 0
    evictions_total: int = 0
    diagnostic_keys_max: int = 0
    p50_ratio_last_over_1k: float = 0.0
    p99_ratio_last_over_1k: float = 0.0
    rss_growth_1k_to_last: float = 0.0
    p50_latency_ms: float = 0.0
    checkpoints: dict = field(default_factory=dict)  # step -> {p50_ms, p99_ms, rss_bytes, allocated_bytes}
    # [last step, p50 ms, p99 ms] of every ``trace_steps`` steps: tells a trend from a noisy window.
    latency_trace: list = field(default_factory=list)
    interrupted: bool = False  # stopped by Ctrl-C: the figures cover the steps run so far
    exit_codes: dict = field(default_factory=dict)  # node -> its exit code after the soak's SIGINT
    violations: list[str] = field(default_factory=list)

    @property
    def rss_growth(self) -> float:
        return self.rss_last / self.rss_after_warmup - 1.0 if self.rss_after_warmup else 0.0


def run_soak(steps: int = 2000, hours: float | None = None, budget_mb: float = 0.5, rate_hz: float = 50.0,
             warmup_steps: int = 200, rss_growth: float = 0.05, out: Path = Path("out/soak"),
             progress=print, trace_steps: int = 1000) -> SoakReport:
    with private_domain() as env:
        return _run_soak(env, steps, hours, budget_mb, rate_hz, warmup_steps, rss_growth, out, progress, trace_steps)


def _run_soak(env: dict, steps: int, hours: float | None, budget_mb: float, rate_hz: float, warmup_steps: int,
              rss_growth: float, out: Path, progress, trace_steps: int) -> SoakReport:
    import numpy as np
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node

    from aura_ros.msg import GateStats, MemoryBudget
    from aura_ros.ros import qos

    out.mkdir(parents=True, exist_ok=True)
    sim = start_process("aura_ros.ros.sim_node", {"rate_hz": rate_hz}, env, out / "sim_node.log")
    node = start_process("aura_ros.ros.policy_node", {"control.rate_hz": rate_hz, "memory.vram_budget_mb": budget_mb,
                                                      "instruction": f"'{INSTRUCTION}'"}, env, out / "policy_node.log")
    rep = SoakReport()
    latencies: list[float] = []
    bucket: list[float] = []
    last_step = [-1]
    rss: dict[int, int] = {}

    def checkpoint(step: int) -> None:
        window = np.asarray(latencies[-LATENCY_WINDOW:])
        rep.checkpoints[step] = {"p50_ms": float(np.percentile(window, 50)), "p99_ms": float(np.percentile(window, 99)),
                                 "rss_bytes": rss.get(step, rep.rss_last), "allocated_bytes": rep.allocated_bytes}
        rss.clear()

    def violate(text: str) -> None:
        rep.violations.append(text)

    def on_memory(m: MemoryBudget) -> None:
        if rep.allocated_bytes < 0:
            rep.allocated_bytes, rep.budget_bytes = m.allocated_bytes, m.budget_bytes
            rep.capacity_tokens = m.capacity_tokens
        if m.allocated_bytes != rep.allocated_bytes:
            violate(f"step {m.step}: allocated {m.allocated_bytes} != {rep.allocated_bytes}")
        if not m.used_bytes <= m.allocated_bytes <= m.budget_bytes:
            violate(f"step {m.step}: used {m.used_bytes} / allocated {m.allocated_bytes} / budget {m.budget_bytes}")
        rep.max_used_bytes = max(rep.max_used_bytes, m.used_bytes)
        rss[m.step] = m.process_rss_bytes
        if m.step == warmup_steps or (rep.rss_after_warmup == 0 and m.step > warmup_steps):
            rep.rss_after_warmup = m.process_rss_bytes
        rep.rss_last = m.process_rss_bytes

    def on_gate(g: GateStats) -> None:
        if g.step <= last_step[0]:
            violate(f"step went back: {g.step} after {last_step[0]}")
        last_step[0] = g.step
        rep.steps += 1
        rep.max_position = max(rep.max_position, g.max_position)
        if rep.capacity_tokens and g.max_position > rep.capacity_tokens:
            violate(f"step {g.step}: max position {g.max_position} > capacity {rep.capacity_tokens}")
        rep.writes_total, rep.evictions_total = g.writes_total, g.evictions_total
        latencies.append(g.step_latency_ms)
        bucket.append(g.step_latency_ms)
        if len(bucket) >= trace_steps:
            rep.latency_trace.append([g.step, round(float(np.percentile(bucket, 50)), 3),
                                      round(float(np.percentile(bucket, 99)), 3)])
            bucket.clear()
        if len(latencies) > 10 * LATENCY_WINDOW:
            del latencies[: 5 * LATENCY_WINDOW]
        if g.step >= 1000 and _is_checkpoint(g.step):
            checkpoint(g.step)

    def on_diag(d: DiagnosticArray) -> None:
        for s in d.status:
            if s.name.startswith("aura_ros"):
                rep.diagnostic_keys_max = max(rep.diagnostic_keys_max, len(s.values))

    rclpy.init()
    mon = Node("aura_soak_monitor")
    mon.create_subscription(MemoryBudget, "/aura_policy/memory", on_memory, qos.STATS)
    mon.create_subscription(GateStats, "/aura_policy/gate_stats", on_gate, qos.STATS)
    mon.create_subscription(DiagnosticArray, "/diagnostics", on_diag, qos.DIAGNOSTICS)
    t0 = time.monotonic()
    deadline = t0 + hours * 3600 if hours else None
    last_print = 0.0
    try:
        while (rep.steps < steps if deadline is None else time.monotonic() < deadline) and not rep.violations:
            rclpy.spin_once(mon, timeout_sec=0.1)
            for proc, name in ((sim, "sim_node"), (node, "policy_node")):
                if proc.poll() is not None:
                    violate(f"{name} exited with {proc.returncode}; see {out / (name + '.log')}")
            if rep.steps == 0 and time.monotonic() - t0 > 120:
                violate("no GateStats within 120 s")
            if time.monotonic() - last_print > 2.0:
                last_print = time.monotonic()
                progress(f"soak: {rep.steps} steps, {time.monotonic() - t0:.0f} s, KV {rep.max_used_bytes / 2**20:.3f}/"
                         f"{rep.budget_bytes / 2**20:.3f} MiB, max position {rep.max_position}, "
                         f"RSS {rep.rss_last / 2**20:.1f} MiB")
    except KeyboardInterrupt:
        # An hours-long soak stopped by hand still reports the steps it ran.
        rep.interrupted = True
    finally:
        mon.destroy_node()
        rclpy.try_shutdown()
        rep.exit_codes = {"policy_node": stop_process(node), "sim_node": stop_process(sim)}
    rep.seconds = time.monotonic() - t0
    rep.p50_latency_ms = float(np.median(latencies)) if latencies else 0.0
    if latencies and last_step[0] not in rep.checkpoints:
        checkpoint(last_step[0])
    first = rep.checkpoints.get(1000)
    last = rep.checkpoints.get(last_step[0])
    if first and last and first is not last:
        rep.p50_ratio_last_over_1k = last["p50_ms"] / first["p50_ms"]
        rep.p99_ratio_last_over_1k = last["p99_ms"] / first["p99_ms"]
        rep.rss_growth_1k_to_last = last["rss_bytes"] / first["rss_bytes"] - 1.0
    if rep.steps > warmup_steps and rep.rss_growth > rss_growth:
        violate(f"RSS grew {rep.rss_growth:.1%} after warm-up (limit {rss_growth:.0%})")
    (out / "soak.json").write_text(json.dumps({**asdict(rep), "rss_growth": rep.rss_growth}, indent=1))
    return rep


def _is_checkpoint(step: int) -> bool:
    """1k, 2k, 5k, 10k, 20k, 50k, 100k, ..."""
    k = step
    while k >= 10 and k % 10 == 0:
        k //= 10
    return k in (1, 2, 5) and step % 1000 == 0
