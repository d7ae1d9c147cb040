"""The policy on another host: the sim ("the robot") and the policy node in two network namespaces
joined by a veth pair, discovering each other as docs/cross_host.md tells a user to (multicast on
the subnet plus static peers, the UDP-only network profile: no localhost shortcut).

The loop runs over the link with frames at 10 Hz; the link is then cut for ~4 s and restored: the
node holds and warns on /diagnostics, and the episode continues with its memory. A watcher
process on each side (aura_ros.tools.cross_host) writes what it sees; nothing here asserts a
timing (`aura-ros bench cross-host` measures them).
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.observer import ros_args

from aura_ros.ros.env import cross_host_env
from aura_ros.tools.cross_host import (
    DISCOVERY_PORT,
    EventLog,
    HostPair,
    discovery_server_argv,
    netns_unavailable,
    spawn,
    watch_argv,
)

_NO_NETNS = netns_unavailable()
needs_netns = pytest.mark.skipif(bool(_NO_NETNS), reason=f"two network namespaces: {_NO_NETNS}")

CUT_S = 4.0
TIMEOUT_S = 0.5  # the node's timeouts.image_s and timeouts.joint_state_s
STALE_AFTER_S = TIMEOUT_S + 1.0  # by then the node holds (margin for a step in flight, a loaded CPU)


@pytest.fixture
def hosts():
    pair = HostPair()
    try:
        pair.create()  # a failure half-way is undone below too
        yield pair
    finally:
        pair.delete()


@pytest.fixture
def processes():
    started: list[tuple[subprocess.Popen, Path]] = []

    def start(host, argv, env, log: Path) -> subprocess.Popen:
        proc = spawn(host, argv, env, log)
        started.append((proc, log))
        return proc
    yield start
    for proc, _ in started:  # SIGINT first (a clean rclpy shutdown), then kill
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc, _ in started:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _wait(logs: list[EventLog], predicate, timeout: float, procs=()) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for log in logs:
            log.poll()
        if predicate():
            return True
        if any(p.poll() is not None for p in procs):
            return False
        time.sleep(0.1)
    return False


def test_cross_host_env_is_what_the_docs_tell_a_user(tmp_path):
    base = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_LOCALHOST_ONLY": "1", "ROS_DISCOVERY_SERVER": "x:1",
            "PATH": "/usr/bin"}
    env = cross_host_env(["10.0.0.2", " robot.local "], 7, tmp_path, base=base)
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET" and env["ROS_STATIC_PEERS"] == "10.0.0.2;robot.local"
    assert env["ROS_DOMAIN_ID"] == "7" and env["ROS_LOG_DIR"] == str(tmp_path)
    assert "ROS_LOCALHOST_ONLY" not in env and "ROS_DISCOVERY_SERVER" not in env
    assert env["FASTRTPS_DEFAULT_PROFILES_FILE"].endswith("config/fastdds_network.xml")
    server = cross_host_env(["10.0.0.2"], 7, tmp_path, base=base, discovery_server="10.0.0.9:11811")
    assert server["ROS_DISCOVERY_SERVER"] == "10.0.0.9:11811" and "ROS_STATIC_PEERS" not in server
    assert cross_host_env([], 7, tmp_path, base=base, profile="fastdds.xml")["FASTRTPS_DEFAULT_PROFILES_FILE"].endswith(
        "config/fastdds.xml")


@needs_netns
def test_policy_on_another_host_loop_cut_and_recovery(hosts, processes, ros_env, tmp_path):
    assert hosts.isolation_problems() == []  # only lo + the veth, no default route in either
    domain = int(ros_env["ROS_DOMAIN_ID"])
    log_dir = tmp_path / "ros_log"
    # What each host exports (docs/cross_host.md): the other host as a static peer, the same domain.
    robot_env = cross_host_env([hosts.gpu.address], domain, log_dir, base=ros_env)
    gpu_env = cross_host_env([hosts.robot.address], domain, log_dir, base=ros_env)
    assert robot_env["FASTRTPS_DEFAULT_PROFILES_FILE"].endswith("fastdds_network.xml")

    gpu_log, robot_log = EventLog(tmp_path / "gpu.jsonl"), EventLog(tmp_path / "robot.jsonl")
    logs = [gpu_log, robot_log]
    # The sim publishes raw frames and JPEGs at 10 Hz; the node reads both, over the link.
    sim = processes(hosts.robot, [sys.executable, "-m", "aura_ros.ros.sim_node",
                                  *ros_args({"rate_hz": 10.0, "publish_compressed": True})], robot_env,
                    tmp_path / "sim.log")
    policy = processes(hosts.gpu, [sys.executable, "-m", "aura_ros.ros.policy_node",
                                   *ros_args({"control.rate_hz": 10.0, "timeouts.image_s": TIMEOUT_S,
                                              "timeouts.joint_state_s": TIMEOUT_S})], gpu_env, tmp_path / "policy.log")
    processes(hosts.gpu, watch_argv("gpu", gpu_log.path), gpu_env, tmp_path / "watch_gpu.log")
    processes(hosts.robot, watch_argv("robot", robot_log.path, frames=()), robot_env, tmp_path / "watch_robot.log")

    def output() -> str:
        return "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(tmp_path.glob("*.log")))

    # 1. The closed loop over the link: frames reach the GPU host, steps advance there, and the
    # commands reach the robot.
    before = hosts.link_bytes(hosts.robot)
    ok = _wait(logs, lambda: len(gpu_log.of("gate")) >= 20 and len(robot_log.of("cmd")) >= 20
               and gpu_log.of("frame") and gpu_log.of("frame_jpeg"), 60, (sim, policy))
    assert ok, f"gate {len(gpu_log.of('gate'))}, commands at the robot {len(robot_log.of('cmd'))}\n{output()}"
    rx, tx = (now - then for now, then in zip(hosts.link_bytes(hosts.robot), before))
    assert tx > 100_000 and rx > 10_000, (rx, tx)  # frames out of the robot, commands back: over the veth
    diag = [d for d in gpu_log.of("diag") if d["steps"] > 0]
    assert diag and diag[-1]["frames"] > 0

    # 2. The link is cut: the node holds (its held ticks grow) and warns that its inputs are stale;
    # no command reaches the robot meanwhile.
    step_before = gpu_log.of("gate")[-1]["step"]
    cut_at = hosts.cut()
    held_before = max(d["held_ticks"] for d in gpu_log.of("diag"))
    _wait(logs, lambda: False, CUT_S, (sim, policy))
    warned = [d for d in gpu_log.of("diag") if d["t"] > cut_at and d["level"] == 1 and "stale" in d["msg"]]
    assert warned, [d["msg"] for d in gpu_log.of("diag") if d["t"] > cut_at]
    assert max(d["held_ticks"] for d in gpu_log.of("diag")) > held_before
    assert any(c["t"] > cut_at for c in gpu_log.of("cmd")), "the node sent no hold command on its side"
    # Its inputs go stale 0.5 s after the cut (timeouts.*): from then on no step, only holds.
    assert not [g for g in gpu_log.of("gate") if g["t"] > cut_at + STALE_AFTER_S], "stepped on stale inputs"
    step_held = gpu_log.of("gate")[-1]["step"]
    restored_at = hosts.restore()
    # Nothing reached the robot while the link was down (a grace of 0.3 s for what was on the wire).
    assert not [c for c in robot_log.of("cmd") if cut_at + 0.3 < c["t"] < restored_at]

    # 3. The link is back: new steps, their commands at the robot (stamped after the first new
    # step: not the holds), and the memory from before the cut is still there.
    def steps_reach_the_robot() -> bool:
        new = [g for g in gpu_log.of("gate") if g["t"] > restored_at]
        return (len(new) > 10 and
                sum(c["stamp"] > new[0]["stamp"] for c in robot_log.of("cmd")) >= 5)
    ok = _wait(logs, steps_reach_the_robot, 30, (sim, policy))
    assert ok, f"steps {step_held} -> {gpu_log.of('gate')[-1]['step']}\n{output()}"
    assert gpu_log.of("gate")[-1]["oldest"] <= step_before  # memory from before the cut is still there
    assert sim.poll() is None and policy.poll() is None, output()


@needs_netns
@pytest.mark.skipif(discovery_server_argv("127.0.0.1") is None, reason="no Fast DDS discovery server in this install")
def test_discovery_server_for_a_fleet(hosts, processes, ros_env, tmp_path):
    """The same two hosts as clients of a discovery server (on the GPU host): nothing matches
    before the server runs, the loop runs once it does."""
    domain = int(ros_env["ROS_DOMAIN_ID"])
    server = f"{hosts.gpu.address}:{DISCOVERY_PORT}"
    env = cross_host_env(domain_id=domain, log_dir=tmp_path / "ros_log", base=ros_env, discovery_server=server)
    assert "ROS_STATIC_PEERS" not in env
    gpu_log, robot_log = EventLog(tmp_path / "gpu.jsonl"), EventLog(tmp_path / "robot.jsonl")
    sim = processes(hosts.robot, [sys.executable, "-m", "aura_ros.ros.sim_node", *ros_args({"rate_hz": 10.0})], env,
                    tmp_path / "sim.log")
    policy = processes(hosts.gpu, [sys.executable, "-m", "aura_ros.ros.policy_node"], env, tmp_path / "policy.log")
    processes(hosts.gpu, watch_argv("gpu", gpu_log.path, frames=()), env, tmp_path / "watch_gpu.log")
    processes(hosts.robot, watch_argv("robot", robot_log.path, frames=()), env, tmp_path / "watch_robot.log")
    policy_log = tmp_path / "policy.log"
    assert _wait([], lambda: "lifecycle: active" in policy_log.read_text(errors="replace"), 60, (sim, policy)), \
        policy_log.read_text(errors="replace")
    _wait([gpu_log, robot_log], lambda: False, 2.0, (sim, policy))
    assert not robot_log.of("cmd") and not gpu_log.of("gate")  # without the server, nobody found anybody
    processes(hosts.gpu, discovery_server_argv(hosts.gpu.address), env, tmp_path / "discovery_server.log")
    ok = _wait([gpu_log, robot_log], lambda: len(gpu_log.of("gate")) >= 10 and len(robot_log.of("cmd")) >= 10, 30,
               (sim, policy))
    assert ok, "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-2000:]}" for p in tmp_path.glob("*.log"))
