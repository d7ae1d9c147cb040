"""`aura-ros bench cross-host`: the policy on another host, measured over a link (run by hand, root).

The sim ("the robot") and the policy node run in two network namespaces joined by a veth pair
(aura_ros.tools.cross_host), with the discovery and the Fast DDS profile docs/cross_host.md gives
a user: multicast on the subnet plus static peers (or, with ``discovery="server"``, a Fast DDS
discovery server on the GPU host), UDP only. The sim runs at ``rate_hz`` with frames of
``width`` x ``height``; per mode:

- ``raw``: the sim publishes sensor_msgs/Image (rgb8) only, and it crosses the link;
- ``jpeg``: the sim publishes both, and only image/compressed crosses: the node takes compressed
  frames only (``image.transport:=compressed``), as docs/cross_host.md tells a user whose camera
  driver publishes both.

Measured over a window of steady running: steps/s at the node, commands/s arriving at the robot,
frames/s taken in by the node (its /diagnostics counter) and arriving at the GPU-side watcher,
their latency (arrival against the sim's header stamp; both namespaces share the system clock),
the latency of commands to the robot, the link's bytes/s.
Then the link is cut (``ip link set down`` on the robot's end: no netem qdisc on this kernel)
``cuts`` times for ``cut_s`` seconds each (and once for ``long_cut_s``, longer than Fast DDS's
20 s participant lease, if given) and restored; per cut: the time from the restore to the first
frame at the GPU host, to the node's first new step, and to that step's command arriving at the
robot (the loop closed again); the commands stamped during the cut that still arrived after it (the
reliable command topic's history); whether the memory from before the cut is still in the cache.

Note: the GPU-side watcher reads the frames the node reads, so two readers' copies cross the link.
A watcher on each side writes what it sees (JSON lines); nothing here changes the nodes.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from aura_ros.tools.cross_host import (
    DISCOVERY_PORT,
    EventLog,
    HostPair,
    discovery_server_argv,
    netns_unavailable,
    spawn,
    watch_argv,
)
from aura_ros.tools.harness import ros_args, stop_process

MODES = ("raw", "jpeg")
LOOP_START_TIMEOUT_S = 120.0
RECOVERY_TIMEOUT_S = 60.0
SETTLE_S = 3.0
STEP_STAMP_SLACK_S = 0.03


def _pct(values, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def _wait(logs, predicate, timeout: float, procs=()) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for log in logs:
            log.poll()
        if predicate():
            return True
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a node exited: " + ", ".join(p.args[-1] for p in procs if p.poll() is not None))
        time.sleep(0.05)
    return False


def run_mode(mode: str, width: int = 96, height: int = 96, rate_hz: float = 10.0, cuts: int = 3,
             cut_s: float = 4.0, long_cut_s: float = 0.0, window_s: float = 10.0, discovery: str = "static",
             out: Path = Path("out/bench_cross_host"), log=print, profile: str = "fastdds_network.xml") -> dict:
    from aura_ros.ros.env import cross_host_env

    work = Path(out) / f"{mode}_{width}x{height}_{discovery}_{Path(profile).stem}"
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("*.jsonl"):
        old.unlink()
    domain = int(os.environ.get("ROS_DOMAIN_ID", "") or 42)  # the namespaces isolate it anyway
    procs = []
    with HostPair() as pair:
        if discovery == "server":
            server = f"{pair.gpu.address}:{DISCOVERY_PORT}"
            robot_env = gpu_env = cross_host_env(domain_id=domain, log_dir=work / "ros_log", discovery_server=server,
                                                 profile=profile)
            procs.append(spawn(pair.gpu, discovery_server_argv(pair.gpu.address), gpu_env, work / "server.log"))
        else:
            robot_env = cross_host_env([pair.gpu.address], domain, work / "ros_log", profile=profile)
            gpu_env = cross_host_env([pair.robot.address], domain, work / "ros_log", profile=profile)
        sim_args = ros_args({"rate_hz": rate_hz, "width": width, "height": height,
                             "publish_compressed": mode == "jpeg"})
        # JPEG: the node subscribes to compressed frames only, so the raw ones stay on the robot
        # (DDS sends a sample only to the readers that match it).
        policy_args = ros_args({"control.rate_hz": rate_hz, **({"image.transport": "compressed"} if mode == "jpeg"
                                                               else {})})
        gpu_log, robot_log = EventLog(work / "gpu.jsonl"), EventLog(work / "robot.jsonl")
        logs = [gpu_log, robot_log]
        try:
            sim = spawn(pair.robot, [sys.executable, "-m", "aura_ros.ros.sim_node", *sim_args], robot_env,
                        work / "sim.log")
            policy = spawn(pair.gpu, [sys.executable, "-m", "aura_ros.ros.policy_node", *policy_args], gpu_env,
                           work / "policy.log")
            procs += [sim, policy,
                      spawn(pair.gpu, watch_argv("gpu", gpu_log.path, frames=(mode,)), gpu_env,
                            work / "watch_gpu.log"),
                      spawn(pair.robot, watch_argv("robot", robot_log.path, frames=()), robot_env,
                            work / "watch_robot.log")]
            nodes = (sim, policy)
            frame_kind = "frame" if mode == "raw" else "frame_jpeg"
            t_start = time.monotonic()
            if not _wait(logs, lambda: len(gpu_log.of("gate")) >= 10 and len(robot_log.of("cmd")) >= 10,
                         LOOP_START_TIMEOUT_S, nodes):
                raise RuntimeError(f"the loop did not start over the link; see {work}/*.log")
            loop_start_s = time.monotonic() - t_start
            _wait(logs, lambda: False, 2.0, nodes)  # past the start-up transients

            # Steady running.
            bytes0, w0 = pair.link_bytes(pair.robot), time.monotonic()
            _wait(logs, lambda: False, window_s, nodes)
            bytes1, w1 = pair.link_bytes(pair.robot), time.monotonic()

            def within(events):
                return [e for e in events if w0 <= e["t"] < w1]
            frames, cmds = within(gpu_log.of(frame_kind)), within(robot_log.of("cmd"))
            gates, diag = within(gpu_log.of("gate")), within(gpu_log.of("diag"))
            steady = {
                "steps_per_s": len(gates) / (w1 - w0), "commands_per_s_at_robot": len(cmds) / (w1 - w0),
                "frames_per_s_at_gpu": len(frames) / (w1 - w0),
                # What the node itself took in (its `frames` counter on /diagnostics, ~1 Hz).
                "frames_per_s_at_node": ((diag[-1]["frames"] - diag[0]["frames"]) / (diag[-1]["t"] - diag[0]["t"])
                                         if len(diag) >= 2 else float("nan")),
                "frame_bytes": int(np.median([f["bytes"] for f in frames])) if frames else 0,
                "frame_latency_ms_p50": _pct([f["lat_ms"] for f in frames], 50),
                "frame_latency_ms_p90": _pct([f["lat_ms"] for f in frames], 90),
                "command_latency_ms_p50": _pct([c["lat_ms"] for c in cmds], 50),
                "command_latency_ms_p90": _pct([c["lat_ms"] for c in cmds], 90),
                "step_ms_p50": _pct([g["ms"] for g in gates], 50),
                "link_kbytes_per_s_robot_to_gpu": (bytes1[1] - bytes0[1]) / (w1 - w0) / 1e3,
                "link_kbytes_per_s_gpu_to_robot": (bytes1[0] - bytes0[0]) / (w1 - w0) / 1e3,
            }
            log(f"{mode} {width}x{height}: {steady['steps_per_s']:.1f} steps/s, "
                f"{steady['commands_per_s_at_robot']:.1f} commands/s at the robot, "
                f"{steady['frames_per_s_at_gpu']:.1f} frames/s at the GPU host, frame latency p50 "
                f"{steady['frame_latency_ms_p50']:.1f} ms")

            recoveries = []
            for duration in [cut_s] * cuts + ([long_cut_s] if long_cut_s > 0 else []):
                rec = _cut_once(pair, gpu_log, robot_log, frame_kind, duration, nodes)
                recoveries.append(rec)
                log(f"  cut {duration:g} s: first frame {_fmt(rec['first_frame_s'])}, first step "
                    f"{_fmt(rec['first_step_s'])}, first step's command at the robot "
                    f"{_fmt(rec['first_step_command_at_robot_s'])} (s after the restore); {rec['replayed_commands']} "
                    f"commands from the cut replayed; memory kept: {rec['memory_kept']}")
        finally:
            for p in reversed(procs):
                stop_process(p, grace_s=5.0)
    return {"mode": mode, "width": width, "height": height, "rate_hz": rate_hz, "discovery": discovery,
            "profile": profile, "loop_start_s": loop_start_s, "steady": steady, "cuts": recoveries}


def _cut_once(pair: HostPair, gpu_log: EventLog, robot_log: EventLog, frame_kind: str, duration: float,
              nodes) -> dict:
    """Cut the link for ``duration`` s, restore it, and time what comes back (see the module docstring)."""
    logs = [gpu_log, robot_log]
    step_before = gpu_log.of("gate")[-1]["step"]
    cut_at = pair.cut()
    _wait(logs, lambda: False, duration, nodes)
    restored_at = pair.restore()
    restored_wall = time.time() - (time.monotonic() - restored_at)

    def first(events, stamped_after: float = -1.0) -> dict | None:
        return next((e for e in events if e["t"] > restored_at and e.get("stamp", 0.0) >= stamped_after), None)

    def first_step_command() -> dict | None:
        # A step publishes its command, then its GateStats (stamped a moment later); the holds
        # before it are a tick (1 / rate_hz) earlier.
        step = first(gpu_log.of("gate"))
        return None if step is None else first(robot_log.of("cmd"), step["stamp"] - STEP_STAMP_SLACK_S)
    _wait(logs, lambda: first_step_command() is not None, RECOVERY_TIMEOUT_S, nodes)
    _wait(logs, lambda: False, SETTLE_S, nodes)
    def since(event: dict | None) -> float | None:
        return None if event is None else event["t"] - restored_at
    after = [g for g in gpu_log.of("gate") if g["t"] > restored_at]
    held = [d for d in gpu_log.of("diag") if cut_at < d["t"] < restored_at]
    return {
        "cut_s": duration, "step_before": step_before,
        "first_frame_s": since(first(gpu_log.of(frame_kind))),
        "first_step_s": since(first(gpu_log.of("gate"))),
        "first_step_command_at_robot_s": since(first_step_command()),
        # Stamped before the restore, arrived after it: the reliable command topic's history.
        "replayed_commands": sum(1 for c in robot_log.of("cmd") if c["t"] > restored_at and c["stamp"] < restored_wall),
        "warned_stale": any("stale" in d["msg"] for d in held),
        "memory_kept": bool(after) and after[-1]["oldest"] <= step_before,
    }


def _fmt(x, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def tables(results: list[dict]) -> str:
    lines = ["| frames | discovery, profile | steps/s | commands/s at robot | frames/s at the node / watcher | "
             "frame bytes | frame latency p50 / p90 ms | command latency p50 / p90 ms | link robot->GPU KB/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["steady"]
        lines.append(f"| {r['mode']} {r['width']}x{r['height']} @ {r['rate_hz']:g} Hz | {r['discovery']}, "
                     f"{Path(r['profile']).stem} | "
                     f"{s['steps_per_s']:.1f} | {s['commands_per_s_at_robot']:.1f} | "
                     f"{_fmt(s['frames_per_s_at_node'], 1)} / {s['frames_per_s_at_gpu']:.1f} | "
                     f"{s['frame_bytes']} | {_fmt(s['frame_latency_ms_p50'], 1)} / {_fmt(s['frame_latency_ms_p90'], 1)}"
                     f" | {_fmt(s['command_latency_ms_p50'], 1)} / {_fmt(s['command_latency_ms_p90'], 1)} | "
                     f"{s['link_kbytes_per_s_robot_to_gpu']:.0f} |")
    lines += ["", "| frames | cut s | first frame after restore, s | first step, s | first step's command at robot, s "
                  "| commands from the cut replayed | node warned stale | memory from before kept |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for c in r["cuts"]:
            lines.append(f"| {r['mode']} {r['width']}x{r['height']} | {c['cut_s']:g} | {_fmt(c['first_frame_s'])} | "
                         f"{_fmt(c['first_step_s'])} | {_fmt(c['first_step_command_at_robot_s'])} | "
                         f"{c['replayed_commands']} | {'yes' if c['warned_stale'] else 'no'} | "
                         f"{'yes' if c['memory_kept'] else 'no'} |")
    return "\n".join(lines) + "\n"


def run(modes=MODES, width: int = 96, height: int = 96, rate_hz: float = 10.0, cuts: int = 3, cut_s: float = 4.0,
        long_cut_s: float = 0.0, window_s: float = 10.0, discovery: str = "static",
        out: Path = Path("out/bench_cross_host"), log=print, profile: str = "fastdds_network.xml") -> dict:
    reason = netns_unavailable()
    if reason:
        raise RuntimeError(f"two network namespaces are needed: {reason}")
    if discovery == "server" and discovery_server_argv("127.0.0.1") is None:
        raise RuntimeError("no Fast DDS discovery server (fast-discovery-server) in this install")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    results = [run_mode(m, width, height, rate_hz, cuts, cut_s, long_cut_s, window_s, discovery, out, log, profile)
               for m in modes]
    table = tables(results)
    summary = {"results": results, "seconds": time.monotonic() - t0}
    (out / "cross_host.json").write_text(json.dumps(summary, indent=1))
    (out / "cross_host_table.md").write_text(table)
    log(table)
    return summary
