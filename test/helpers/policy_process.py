"""The policy node in its own process and the operator's ROS side, for tests that drive a running
node over real DDS on localhost as a user at a terminal (or an adversarial tester) would.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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
from aura_ros.ros.image_conversion import rgb_to_image_msg
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
