"""What a ROS user at a terminal and an adversarial tester do to a running node: real processes,
real DDS on localhost, real signals to a real process group. Each test asserts the state after.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from aura_ros.msg import GateStats, MemoryBudget
from aura_ros.ros import qos
from aura_ros.ros.image_conversion import rgb_to_compressed_msg, rgb_to_image_msg
from aura_ros.srv import GetMemoryMap

NODE_CMD = [sys.executable, "-m", "aura_ros.ros.policy_node"]
JOINTS = ["shoulder", "elbow", "wrist", "gripper"]


def ros_args(params: dict) -> list[str]:
    out = ["--ros-args"]
    for k, v in params.items():
        out += ["-p", f"{k}:={v}"]
    return out


class NodeProcess:
    """The policy node in a process group of its own, as `ros2 launch` runs it under a terminal."""

    def __init__(self, params: dict, env: dict, cwd: Path, name: str = "policy"):
        self.log = cwd / f"{name}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(NODE_CMD + ros_args(params), env=env, cwd=cwd, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"node did not exit in {timeout} s:\n{self.output()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture
def started(ros_env, tmp_path):
    procs: list[NodeProcess] = []

    def start(params: dict, name: str = "policy") -> NodeProcess:
        env = dict(ros_env)
        env["PYTHONWARNINGS"] = "default"  # a FutureWarning from transformers would show in the log
        procs.append(NodeProcess(params, env, tmp_path, name))
        return procs[-1]
    yield start
    for p in procs:
        p.kill()


class Operator:
    """The test's ROS side: a camera and joint states, the stats, /diagnostics, services."""

    def __init__(self):
        self.node = Node(f"operator_{time.monotonic_ns()}")
        n = self.node
        self.image = n.create_publisher(Image, "image", qos.SENSOR)
        self.compressed = n.create_publisher(CompressedImage, "image/compressed", qos.SENSOR)
        self.joints = n.create_publisher(JointState, "joint_states", qos.SENSOR)
        # What `ros2 topic pub /instruction std_msgs/msg/String ...` offers: reliable, volatile.
        self.instruction = n.create_publisher(String, "instruction", qos.INSTRUCTION_VOLATILE)
        self.gates: list[GateStats] = []
        self.mems: list[MemoryBudget] = []
        self.cmds: list[JointTrajectory] = []
        self.maps: list[Image] = []
        n.create_subscription(Image, "/aura_policy/memory_map", self.maps.append, qos.STATS)
        self.diag: list[tuple[float, DiagnosticStatus]] = []
        n.create_subscription(GateStats, "/aura_policy/gate_stats", self.gates.append, qos.STATS)
        n.create_subscription(MemoryBudget, "/aura_policy/memory", self.mems.append, qos.STATS)
        n.create_subscription(JointTrajectory, "joint_trajectory", self.cmds.append, qos.COMMANDS)
        n.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.diag.extend(
            (time.monotonic(), s) for s in m.status if s.name.startswith("aura_ros")), qos.DIAGNOSTICS)
        self.frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)

    def joint_msg(self, positions=(0.0, 0.1, 0.2, 0.0), stamp: float | None = None) -> JointState:
        m = JointState(name=JOINTS, position=[float(p) for p in positions])
        t = self.node.get_clock().now().nanoseconds * 1e-9 if stamp is None else stamp
        m.header.stamp.sec, m.header.stamp.nanosec = int(t), int((t % 1) * 1e9)
        return m

    def spin_until(self, predicate, timeout: float, feed_image=True, joints=(0.0, 0.1, 0.2, 0.0)) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if feed_image:
                self.image.publish(rgb_to_image_msg(self.frame))
            if joints is not None:
                self.joints.publish(self.joint_msg(joints))
            rclpy.spin_once(self.node, timeout_sec=0.05)
            if predicate():
                return True
        return False

    def counter(self, key: str) -> int:
        for _, s in reversed(self.diag):
            for kv in s.values:
                if kv.key == key:
                    return int(kv.value)
        return 0

    def value(self, key: str) -> str | None:
        for _, s in reversed(self.diag):
            for kv in s.values:
                if kv.key == key:
                    return kv.value
        return None

    def set_param(self, name: str, value) -> object:
        v = (ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value) if isinstance(value, float)
             else ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value) if isinstance(value, int)
             else ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value))
        return self.call(SetParameters, "/aura_policy/set_parameters",
                         SetParameters.Request(parameters=[ParameterMsg(name=name, value=v)])).results[0]

    def call(self, srv_type, name: str, request, timeout: float = 20.0):
        client = self.node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
        future = client.call_async(request)
        end = time.monotonic() + timeout
        while time.monotonic() < end and not future.done():
            rclpy.spin_once(self.node, timeout_sec=0.05)
        assert future.done(), f"{name} did not answer"
        return future.result()

    def memory_map(self) -> GetMemoryMap.Response:
        return self.call(GetMemoryMap, "/aura_policy/get_memory_map", GetMemoryMap.Request())


@pytest.fixture
def operator():
    rclpy.init()
    op = Operator()
    yield op
    op.node.destroy_node()
    rclpy.try_shutdown()


def test_terminal_session_inputs_services_and_two_sigints(started, operator, tmp_path):
    snap = tmp_path / "arm.left"
    node = started({"control.rate_hz": 20.0, "memory.vram_budget_mb": 1.0, "memory.snapshot_path": str(snap),
                    "instruction": "stack the red cubes"})
    op = operator
    # No joint state yet: the node holds, but it has nothing safe to command, so no hold counts.
    assert op.spin_until(lambda: op.counter("held_ticks") >= 3, 60, joints=None), node.output()
    assert op.counter("hold_commands") == 0 and not op.cmds
    assert op.spin_until(lambda: len(op.gates) >= 5, 30), node.output()

    # A joint state stamped far in the future is dropped and does not lock out the next ones.
    op.joints.publish(op.joint_msg(stamp=2e9))  # 2033
    n = len(op.gates)
    assert op.spin_until(lambda: op.counter("dropped_joint_state") >= 1 and len(op.gates) > n + 5, 20)

    # Absurd but finite joint values are clipped: a step stays a normal size.
    sizes = [t for t in op.memory_map().tokens]
    n = len(op.gates)
    assert op.spin_until(lambda: len(op.gates) > n + 5, 20, joints=(1e6, -1e308, 3.0, 0.5))
    assert op.counter("joint_state_clipped") >= 1 or op.spin_until(lambda: op.counter("joint_state_clipped") >= 1, 5)
    assert max(op.memory_map().tokens) <= max(sizes) + 8
    cmd = np.array(op.cmds[-1].points[0].positions)
    assert np.all(cmd >= [-3.14, -2.5, -3.14, 0.0]) and np.all(cmd <= [3.14, 2.5, 3.14, 1.0])

    # `ros2 topic pub` (volatile) reaches the instruction subscription; the pinned prompt changes.
    pinned = op.memory_map().pinned_tokens
    op.instruction.publish(String(data="now put every blue cube into the left bin, one at a time, slowly"))
    assert op.spin_until(lambda: op.memory_map().pinned_tokens > pinned, 20), node.output()
    # The live `instruction` parameter is applied too.
    pinned = op.memory_map().pinned_tokens
    assert op.set_param("instruction", "stop").successful
    assert op.spin_until(lambda: op.memory_map().pinned_tokens < pinned, 20), node.output()

    # ~/memory_map: a picture of the cache about once a second, and on demand.
    assert op.spin_until(lambda: len(op.maps) >= 2, 10), node.output()
    m = op.maps[-1]
    assert (m.encoding, m.width, m.height) == ("rgb8", 640, 160) and len(m.data) == 640 * 160 * 3
    n = len(op.maps)
    op.memory_map()
    assert op.spin_until(lambda: len(op.maps) > n, 0.9)

    # A large PNG is decoded off the executor thread, its time reported; steps go on meanwhile.
    big = np.random.default_rng(1).integers(0, 255, (1500, 2000, 3), dtype=np.uint8)
    png = rgb_to_compressed_msg(big, "png")
    op.compressed.publish(png)
    n = len(op.gates)
    assert op.spin_until(lambda: op.value("decode_ms") is not None and len(op.gates) > n + 5, 30), node.output()

    # A live setting reaches the input callbacks at once: a frame over the new pixel limit is dropped.
    assert op.set_param("image.max_pixels", 100).successful
    before = op.counter("dropped_image")
    op.image.publish(rgb_to_image_msg(op.frame))
    assert op.spin_until(lambda: op.counter("dropped_image") > before, 10, feed_image=False)
    assert op.set_param("image.max_pixels", 7680 * 4320).successful

    # The live snapshot period is applied: a periodic snapshot appears before any shutdown.
    assert op.set_param("memory.snapshot_period_s", 0.3).successful
    assert op.spin_until(lambda: any(p.name == "arm.left.json" for p in tmp_path.iterdir()), 10), node.output()

    # A budget larger than the machine's free memory is refused with the reason.
    huge = op.set_param("memory.vram_budget_mb", 1_000_000.0)
    assert not huge.successful and "free" in huge.reason

    # A burst of 30 simultaneous calls is answered (rclpy's default request queue holds 10). One
    # client with a deep response queue: new clients can lose a response to their own discovery.
    client = op.node.create_client(GetMemoryMap, "/aura_policy/get_memory_map", qos_profile=qos.SERVICES)
    assert client.wait_for_service(10)
    op.spin_until(lambda: False, 1.0)
    futures = [client.call_async(GetMemoryMap.Request()) for _ in range(30)]
    end = time.monotonic() + 30
    while time.monotonic() < end and not all(f.done() for f in futures):
        rclpy.spin_once(op.node, timeout_sec=0.05)
    assert all(f.done() and f.result().pinned_tokens > 0 for f in futures)

    # The live diagnostics period is applied.
    assert op.set_param("diagnostics.period_s", 0.2).successful
    op.diag.clear()
    op.spin_until(lambda: False, 2.0)
    assert len(op.diag) >= 6, len(op.diag)

    # Ctrl-C in a terminal: SIGINT to the whole process group, and a second one during cleanup.
    # (launch forwards one more). The later ones land in the middle of teardown.
    for pause in (0.05, 0.25, 0.0):
        os.killpg(node.proc.pid, signal.SIGINT)
        time.sleep(pause)
        if node.proc.poll() is not None:
            break
    code = node.wait(30)
    out = node.output()
    assert code == 0, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert "memory snapshot written" in out, out
    assert "control step failed" not in out and "context is invalid" not in out, out  # nothing half-published
    assert "FutureWarning" not in out and "\x1b[" not in out and "incompatible QoS" not in out, out
    # A path with a dot keeps its whole name (arm.left is not arm.json).
    assert any(p.name.startswith("arm.left") for p in tmp_path.iterdir()), list(tmp_path.iterdir())


def test_unwritable_snapshot_path_still_exits_cleanly(started, operator, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    node = started({"control.rate_hz": 20.0, "memory.snapshot_path": str(blocker / "memory")})
    assert operator.spin_until(lambda: len(operator.gates) >= 3, 60), node.output()
    node.proc.send_signal(signal.SIGTERM)
    code = node.wait(30)
    out = node.output()
    assert code == 0, out
    assert "final snapshot not written" in out and "Traceback" not in out, out


@pytest.mark.parametrize("params, needle", [
    ({"memory.vram_budget_mb": 0.002, "instruction": "pick up the red block and put it in the bin"}, "budget"),
    ({"memory.eviction": "lru"}, "memory.eviction"),
    ({"memory.vram_budget_mb": -1.0}, "memory.vram_budget_mb"),
])
def test_bad_start_up_values_give_one_line_and_an_exit(started, params, needle):
    node = started(params)
    code = node.wait(60)
    out = node.output()
    assert code != 0 and needle in out, out
    assert "Traceback" not in out, out


def test_inactive_node_says_so_on_diagnostics(started, operator):
    node = started({"autostart": False})
    op = operator

    def seen():
        return any(s.level == DiagnosticStatus.WARN and "unconfigured" in s.message for _, s in op.diag)
    assert op.spin_until(seen, 60, feed_image=False, joints=None), node.output()
    assert not op.gates
