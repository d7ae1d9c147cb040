"""The demo (the README's first command): the closed loop on a laptop, over real topics.

1. Starts the simulated arm (sim_node) and the policy node (embedded default model, a small KV
   budget) as separate processes on a private, localhost-only ROS domain.
2. Listens to the node's ~/memory and ~/gate_stats like rqt would, printing a live progress line.
3. Runs the same loop with an unbounded DynamicCache (layer 2, in process) for comparison.
4. Writes a PNG of KV bytes and step latency against step, both runs side by side, and a CSV.
"""
from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

INSTRUCTION = "pick up the red block and put it in the bin"


def start_process(module: str, params: dict, env: dict, log: Path) -> subprocess.Popen:
    """Run ``python -m module --ros-args -p k:=v ...`` in its own session, output to ``log``."""
    args = [sys.executable, "-m", module, "--ros-args"]
    for k, v in params.items():
        args += ["-p", f"{k}:={v}"]
    return subprocess.Popen(args, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _gated_run(steps: int, budget_mb: float, rate_hz: float, out: Path) -> list[dict]:
    from aura_ros.ros.env import apply_local_ros_env

    env = apply_local_ros_env(domain_id=random.randint(120, 200))
    import rclpy
    from rclpy.node import Node

    from aura_ros.msg import GateStats, MemoryBudget
    from aura_ros.ros import qos

    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    sim = start_process("aura_ros.ros.sim_node", {"rate_hz": rate_hz}, env, logs / "sim_node.log")
    node = start_process("aura_ros.ros.policy_node", {"control.rate_hz": rate_hz, "memory.vram_budget_mb": budget_mb,
                                               "instruction": f"'{INSTRUCTION}'"}, env, logs / "policy_node.log")
    rclpy.init()
    listener = Node("aura_demo_monitor")
    rows: dict[int, dict] = {}
    memory: dict[int, MemoryBudget] = {}

    def on_memory(msg: MemoryBudget) -> None:
        memory[msg.step] = msg

    def on_gate(msg: GateStats) -> None:
        m = memory.get(msg.step)
        rows[msg.step] = {"step": msg.step, "latency_ms": msg.step_latency_ms, "writes": msg.writes_total,
                          "evictions": msg.evictions_total, "gate": msg.gate_value,
                          "used_bytes": m.used_bytes if m else -1, "allocated_bytes": m.allocated_bytes if m else -1,
                          "budget_bytes": m.budget_bytes if m else -1, "rss_bytes": m.process_rss_bytes if m else -1}

    listener.create_subscription(MemoryBudget, "/aura_policy/memory", on_memory, qos.STATS)
    listener.create_subscription(GateStats, "/aura_policy/gate_stats", on_gate, qos.STATS)
    t0 = time.monotonic()
    last_print, last_count, last_t = 0.0, 0, t0
    try:
        while len(rows) < steps:
            rclpy.spin_once(listener, timeout_sec=0.1)
            now = time.monotonic()
            for proc, name in ((sim, "sim_node"), (node, "policy_node")):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}); see {logs / (name + '.log')}")
            if now - t0 > 120 and not rows:
                raise RuntimeError(f"no GateStats after 120 s; see {logs}")
            if now - last_print > 0.5 and rows:
                hz = (len(rows) - last_count) / (now - last_t)
                r = rows[max(rows)]
                print(f"\rstep {r['step']:>6} | {hz:5.1f} Hz | KV {r['used_bytes'] / 2**20:6.3f}/"
                      f"{r['budget_bytes'] / 2**20:.3f} MiB | writes {r['writes']:>5} | evictions {r['evictions']:>6} | "
                      f"{r['latency_ms']:5.1f} ms/step", end="", flush=True)
                last_print, last_count, last_t = now, len(rows), now
    finally:
        print()
        listener.destroy_node()
        rclpy.try_shutdown()
        stop_process(node)
        stop_process(sim)
    return [rows[k] for k in sorted(rows)][:steps]


def _unbounded_run(steps: int) -> list[dict]:
    from aura_ros.core.config import PolicyConfig
    from aura_ros.core.registry import make_policy
    from aura_ros.core.types import Observation
    from aura_ros.sim.scene import SimScene

    policy = make_policy(None, PolicyConfig(eviction="unbounded"), instruction=INSTRUCTION)
    scene = SimScene(seed=0)
    rows = []
    for i in range(steps):
        _, positions, _ = scene.joint_state()
        action = policy.step(Observation(scene.render(), positions))
        scene.apply_position_command(action.first, 0.1)
        st = action.stats
        rows.append({"step": st.step, "latency_ms": st.step_latency_ms, "used_bytes": st.used_bytes,
                     "allocated_bytes": st.allocated_bytes})
        if i % 50 == 0 or i == steps - 1:
            print(f"\runbounded step {i + 1:>5}/{steps} | KV {st.allocated_bytes / 2**20:7.2f} MiB | "
                  f"{st.step_latency_ms:6.1f} ms/step", end="", flush=True)
    print()
    return rows


def _plot(gated: list[dict], unbounded: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for rows, label in ((unbounded, "unbounded DynamicCache"), (gated, "aura_ros action-gated cache")):
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(steps: int = 2000, budget_mb: float = 1.0, rate_hz: float = 30.0, out: Path = Path("out/demo"),
             unbounded_steps: int = 800) -> int:
    out.mkdir(parents=True, exist_ok=True)
    print(f"aura_ros demo: sim + policy node over ROS 2 (localhost only), {steps} steps at {rate_hz:g} Hz, "
          f"KV budget {budget_mb:g} MiB")
    gated = _gated_run(steps, budget_mb, rate_hz, out)
    print(f"unbounded comparison: the same loop with a DynamicCache, {unbounded_steps} steps")
    unbounded = _unbounded_run(unbounded_steps)
    with open(out / "demo.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "step", "allocated_bytes", "used_bytes", "latency_ms"])
        for name, rows in (("gated", gated), ("unbounded", unbounded)):
            for r in rows:
                w.writerow([name, r["step"], r["allocated_bytes"], r["used_bytes"], f"{r['latency_ms']:.3f}"])
    _plot(gated, unbounded, out / "demo.png")
    g_alloc = {r["allocated_bytes"] for r in gated if r["allocated_bytes"] >= 0}
    n = min(len(unbounded), len(gated))
    g_late = np.median([r["latency_ms"] for r in gated[max(0, n - 50): n]])
    u_late = np.median([r["latency_ms"] for r in unbounded[max(0, n - 50): n]])
    print("\nsummary")
    print(f"  gated run:     {len(gated)} steps, KV allocated {sorted(g_alloc)[0] / 2**20:.3f} MiB at every step "
          f"({'constant' if len(g_alloc) == 1 else 'CHANGED'}), writes {gated[-1]['writes']}, "
          f"evictions {gated[-1]['evictions']}, p50 {np.median([r['latency_ms'] for r in gated]):.1f} ms/step")
    print(f"  unbounded run: {len(unbounded)} steps, KV grew {unbounded[0]['allocated_bytes'] / 2**20:.2f} -> "
          f"{unbounded[-1]['allocated_bytes'] / 2**20:.2f} MiB")
    print(f"  around step {n}: gated {g_late:.1f} ms/step, unbounded {u_late:.1f} ms/step")
    print(f"  plot: {out / 'demo.png'}   data: {out / 'demo.csv'}   node logs: {out / 'logs'}")
    return 0 if len(g_alloc) == 1 else 1
