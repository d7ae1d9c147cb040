"""aura-ros serve: two robots from one process and one model, each fed by its own sim in its
namespace, over real DDS on localhost. Each robot has its own topics, parameters and memory; a
reset or bad input on one leaves the other's memory as it was; Ctrl-C ends the process cleanly."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from helpers.observer import RUN_MODULE, call, spin_until, trigger
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from aura_ros.msg import MemoryBudget
from aura_ros.ros import qos
from aura_ros.ros.serve import parse_robots, shared_snapshot_paths
from aura_ros.srv import GetMemoryMap

SIM = "aura_ros.ros.sim_node"
ROBOTS = ("a", "b")
B_BUDGET_MB = 0.75
PARAMS = f"""
/**:
  ros__parameters:
    control.rate_hz: 10.0
    model.torch_threads: 1
    timeouts.image_s: 0.5
/b/aura_policy:
  ros__parameters:
    memory.vram_budget_mb: {B_BUDGET_MB}
"""


def start_serve(ros_env, tmp_path, *args: str, log_name: str = "serve.log") -> tuple[subprocess.Popen, object]:
    log = tmp_path / log_name
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "aura_ros.ros.serve", *args], env=ros_env, cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # its own process group, as under a terminal
    return proc, log


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def memory_map(observer, robot: str) -> tuple:
    r = call(observer, GetMemoryMap, f"/{robot}/aura_policy/get_memory_map", GetMemoryMap.Request())
    return r.step, list(r.kept_steps), list(r.long_term), list(r.tokens)


def counter(diags: list, node: str, key: str) -> int:
    for status in reversed(diags):
        if status.name.endswith(node):
            for kv in status.values:
                if kv.key == key:
                    return int(kv.value)
    return 0


def test_robot_names_are_checked():
    assert parse_robots("a, arm_2") == ["a", "arm_2"]
    for bad in ("a,a", "a,,b", "2arm", "a/b", ""):
        with pytest.raises(ValueError):
            parse_robots(bad)


def test_robots_may_not_share_a_snapshot_path(tmp_path):
    assert shared_snapshot_paths({"a": str(tmp_path / "a"), "b": str(tmp_path / "b"), "c": "", "d": ""}) is None
    why = shared_snapshot_paths({"a": str(tmp_path / "m"), "b": str(tmp_path / "x" / ".." / "m")})
    assert why and "a, b ->" in why


def test_two_robots_one_model_own_memory_and_a_clean_ctrl_c(ros_env, run_python, observer, tmp_path):
    params = tmp_path / "robots.yaml"
    params.write_text(PARAMS)
    mems: dict[str, list[MemoryBudget]] = {r: [] for r in ROBOTS}
    cmds: dict[str, list] = {r: [] for r in ROBOTS}
    diags: list = []
    for r in ROBOTS:
        observer.create_subscription(MemoryBudget, f"/{r}/aura_policy/memory", mems[r].append, qos.STATS)
        observer.create_subscription(JointTrajectory, f"/{r}/joint_trajectory", cmds[r].append, qos.COMMANDS)
    observer.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diags.extend(m.status), qos.DIAGNOSTICS)
    bad_joints = observer.create_publisher(JointState, "/a/joint_states", qos.SENSOR)
    bad_image = observer.create_publisher(Image, "/a/image", qos.SENSOR)
    sim_args = ["--ros-args", "-p", "rate_hz:=10.0", "-r"]
    proc, log = start_serve(ros_env, tmp_path, "--robots", ",".join(ROBOTS), "--ros-args", "--params-file",
                            str(params))
    try:
        with run_python.spawn(RUN_MODULE, SIM, *sim_args, "__ns:=/a", name="sim_a"), \
                run_python.spawn(RUN_MODULE, SIM, *sim_args, "__ns:=/b", name="sim_b") as sim_b:
            both = spin_until(observer, lambda: all(len(mems[r]) >= 5 and len(cmds[r]) >= 5 for r in ROBOTS), 120)
            assert both, f"{[len(mems[r]) for r in ROBOTS]}:\n{log.read_text(errors='replace')}"
            # Each robot its own parameters (the params file addresses /b/aura_policy) and cache.
            assert mems["b"][-1].budget_bytes == int(B_BUDGET_MB * 2**20) != mems["a"][-1].budget_bytes
            assert mems["a"][-1].allocated_bytes != mems["b"][-1].allocated_bytes
            # One model for both: the process says how often it was loaded and for how many robots.
            shared = spin_until(observer, lambda: any(
                s.name == "aura_ros: aura_serve" and {kv.key: kv.value for kv in s.values}.get(
                    "transformers model 0 robots") == "2" for s in diags), 10)
            assert shared, [s.name for s in diags]
            serve = next(s for s in reversed(diags) if s.name == "aura_ros: aura_serve")
            values = {kv.key: kv.value for kv in serve.values}
            assert values["transformers model 0 loads"] == "1" and values["robots"] == "a,b"
            assert "loaded 1 time(s), shared by 2 robots" in log.read_text(errors="replace")

            # Robot b's inputs stop: it holds, and its memory stays as it is from now on.
            assert sim_b.interrupt() == 0
            seen = len(mems["b"])
            while True:
                spin_until(observer, lambda: False, 1.5)
                if len(mems["b"]) == seen:
                    break
                seen = len(mems["b"])
            b_before = memory_map(observer, "b")
            assert b_before[1], "robot b kept no steps"

            # Robot a: a reset, then malformed input; it keeps stepping throughout.
            a_before = memory_map(observer, "a")
            assert min(a_before[1]) < a_before[0]
            reply = trigger(observer, "/a/aura_policy/reset_memory")
            assert reply.success, reply.message
            for _ in range(20):
                bad_joints.publish(JointState(name=["shoulder", "elbow", "wrist", "gripper"],
                                              position=[math.nan, 0.0, 0.0, 0.0]))
                bad_image.publish(Image(height=4, width=4, encoding="no_such_encoding", step=12, data=bytes(48)))
                spin_until(observer, lambda: False, 0.05)
            steps_a = len(mems["a"])
            dropped = spin_until(observer, lambda: counter(diags, "/a/aura_policy", "dropped_joint_state") > 0
                                 and counter(diags, "/a/aura_policy", "dropped_image") > 0
                                 and len(mems["a"]) >= steps_a + 5, 30)
            assert dropped, [s for s in diags if s.name.endswith("/a/aura_policy")][-1:]
            a_after = memory_map(observer, "a")
            assert a_after[0] > a_before[0] and min(a_after[1]) >= a_before[0]  # only steps after the reset
            assert memory_map(observer, "b") == b_before  # step, kept steps, long-term flags, tokens
            assert counter(diags, "/b/aura_policy", "dropped_joint_state") == 0
            assert counter(diags, "/b/aura_policy", "dropped_image") == 0

        # Ctrl-C at a terminal: SIGINT to the process group, and again during the teardown.
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(60)
    finally:
        kill(proc)
    text = log.read_text(errors="replace")
    assert code == 0 and "Traceback" not in text and "KeyboardInterrupt" not in text, (code, text)


def test_one_snapshot_path_for_two_robots_is_refused_and_not_written(ros_env, tmp_path):
    snap = tmp_path / "memory"
    proc, log = start_serve(ros_env, tmp_path, "--robots", "a,b", "--ros-args", "-p",
                            f"memory.snapshot_path:={snap}")
    try:
        code = proc.wait(120)
    finally:
        kill(proc)
    text = log.read_text(errors="replace")
    assert code == 2 and "robots share a memory.snapshot_path (a, b ->" in text, text
    assert not list(tmp_path.glob("memory*")), "a snapshot was written"


def test_attention_scoring_eviction_is_refused_when_serving(ros_env, tmp_path):
    proc, log = start_serve(ros_env, tmp_path, "--robots", "a,b", "--ros-args", "-p", "memory.eviction:=h2o")
    try:
        code = proc.wait(120)
    finally:
        kill(proc)
    text = log.read_text(errors="replace")
    assert code == 2, text
    assert "shared by the robots of this process" in text and "robot 'a' not started" in text


def test_ctrl_c_at_any_moment_exits_cleanly(ros_env, tmp_path):
    """SIGINT to the process group, again after a pause (or in a storm until the exit): one lands in
    each robot's teardown, with the final snapshots of both robots to write."""
    for pause in (0.0, 0.3, "storm"):
        snaps = tmp_path / f"snap-{pause}"
        params = tmp_path / f"robots-{pause}.yaml"
        params.write_text("".join(f"/{r}/aura_policy:\n  ros__parameters:\n    memory.snapshot_path: {snaps / r}\n"
                                  for r in ROBOTS))
        proc, log = start_serve(ros_env, tmp_path, "--robots", ",".join(ROBOTS), "--ros-args", "--params-file",
                                str(params), log_name=f"serve-{pause}.log")
        try:
            deadline = time.monotonic() + 120
            while "serving 2 robots" not in log.read_text(errors="replace"):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGINT)
            if pause == "storm":  # one every 2 ms until it has exited
                while proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGINT)
                    time.sleep(0.002)
            else:
                time.sleep(pause)
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGINT)
            code = proc.wait(60)
        finally:
            kill(proc)
        text = log.read_text(errors="replace")
        assert code == 0 and "Traceback" not in text and "KeyboardInterrupt" not in text, (pause, code, text)
        assert sorted(p.name for p in snaps.glob("*.json")) == ["a.json", "b.json"], (pause, text)
