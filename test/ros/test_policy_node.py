"""The policy node and the sim in separate processes, over real DDS on localhost.

The pytest process is the observer (like rqt): it subscribes to commands, ~/memory and
~/gate_stats, sets parameters through the node's parameter services, and publishes bad input.
"""
from __future__ import annotations

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import TwistStamped
from helpers.observer import RUN_MODULE, call, ros_args, spin_until
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from aura_ros.msg import GateStats, MemoryBudget
from aura_ros.ros import qos
from aura_ros.srv import GetMemoryMap

NODE = "aura_ros.ros.policy_node"
SIM = "aura_ros.ros.sim_node"


def set_param(node: Node, name: str, value: float):
    req = SetParameters.Request(parameters=[ParameterMsg(
        name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value))])
    return call(node, SetParameters, "/aura_policy/set_parameters", req).results[0]


@pytest.mark.parametrize("action_type,msg_type,topic", [
    ("joint_trajectory", JointTrajectory, "/joint_trajectory"),
    ("float64_multi_array", Float64MultiArray, "/commands"),
    ("twist", TwistStamped, "/cmd_vel"),
])
def test_closed_loop_publishes_commands_and_stats(run_python, observer, action_type, msg_type, topic):
    params = {"control.rate_hz": 20.0, "action.type": action_type}
    if action_type == "twist":
        params.update({"action.joint_names": "[linear_x,angular_z]", "action.low": "[-0.5,-1.0]",
                       "action.high": "[0.5,1.0]", "action.discrete_joints": "['']"})
    got: dict[str, list] = {"cmd": [], "mem": [], "gate": []}
    observer.create_subscription(msg_type, topic, got["cmd"].append, qos.COMMANDS)
    observer.create_subscription(MemoryBudget, "/aura_policy/memory", got["mem"].append, qos.STATS)
    observer.create_subscription(GateStats, "/aura_policy/gate_stats", got["gate"].append, qos.STATS)
    with run_python.spawn(RUN_MODULE, SIM, *ros_args({"rate_hz": 20.0}), name="sim"), \
            run_python.spawn(RUN_MODULE, NODE, *ros_args(params), name="policy") as policy:
        ok = spin_until(observer, lambda: len(got["gate"]) >= 10 and len(got["cmd"]) >= 10, 60)
        assert ok, f"got {[len(v) for v in got.values()]}; node output:\n{policy.output()}"
    mem, gate = got["mem"][-1], got["gate"][-1]
    assert mem.allocated_bytes == got["mem"][0].allocated_bytes <= mem.budget_bytes
    assert 0 < mem.used_bytes <= mem.allocated_bytes and mem.pinned_tokens > 0
    assert gate.step >= 9 and gate.step_latency_ms > 0 and 0 <= gate.gate_value <= 1
    cmd = got["cmd"][-1]
    if action_type == "joint_trajectory":
        assert list(cmd.joint_names) == ["shoulder", "elbow", "wrist", "gripper"]
        values = np.array(cmd.points[0].positions)
        assert np.all(values >= [-3.14, -2.5, -3.14, 0.0]) and np.all(values <= [3.14, 2.5, 3.14, 1.0])
    elif action_type == "float64_multi_array":
        assert len(cmd.data) == 4
    else:
        assert -0.5 <= cmd.twist.linear.x <= 0.5 and -1.0 <= cmd.twist.angular.z <= 1.0


def test_live_budget_change_and_refusal(run_python, observer):
    mems: list[MemoryBudget] = []
    observer.create_subscription(MemoryBudget, "/aura_policy/memory", mems.append, qos.STATS)
    with run_python.spawn(RUN_MODULE, SIM, *ros_args({"rate_hz": 20.0}), name="sim"), \
            run_python.spawn(RUN_MODULE, NODE, *ros_args({"control.rate_hz": 20.0, "memory.vram_budget_mb": 2.0}),
                             name="policy") as policy:
        assert spin_until(observer, lambda: len(mems) >= 3, 60), policy.output()
        assert mems[-1].budget_bytes == 2 * 2**20
        result = set_param(observer, "memory.vram_budget_mb", 0.5)
        assert result.successful, result.reason
        n = len(mems)
        assert spin_until(observer, lambda: len(mems) > n + 2 and mems[-1].budget_bytes == 2**19, 20)
        assert mems[-1].allocated_bytes <= 2**19 and mems[-1].used_bytes <= mems[-1].allocated_bytes
        too_small = set_param(observer, "memory.vram_budget_mb", 0.0011)
        assert not too_small.successful and "pinned" in too_small.reason
        out_of_range = set_param(observer, "memory.vram_budget_mb", -3.0)
        assert not out_of_range.successful and out_of_range.reason
        n = len(mems)
        assert spin_until(observer, lambda: len(mems) > n + 2, 20)
        assert mems[-1].budget_bytes == 2**19  # the refused values changed nothing
        mm = call(observer, GetMemoryMap, "/aura_policy/get_memory_map", GetMemoryMap.Request())
        assert mm.pinned_tokens > 0 and len(mm.kept_steps) == len(mm.gate_values) == len(mm.tokens) > 0
        assert list(mm.kept_steps) == sorted(mm.kept_steps)
        reset = call(observer, Trigger, "/aura_policy/reset_memory", Trigger.Request())
        assert reset.success


def test_stale_camera_holds_and_warns_then_resumes(run_python, observer):
    """A sim whose camera stops for a while: the node holds, WARNs, and resumes with its memory."""
    gates: list[GateStats] = []
    diags: list[DiagnosticArray] = []
    observer.create_subscription(GateStats, "/aura_policy/gate_stats", gates.append, qos.STATS)
    observer.create_subscription(DiagnosticArray, "/diagnostics", diags.append, qos.DIAGNOSTICS)
    camera = """
        import sys, time, numpy as np, rclpy
        from rclpy.node import Node
        from sensor_msgs.msg import Image, JointState
        from aura_ros.ros import qos
        from aura_ros.ros.image_conversion import rgb_to_image_msg
        rclpy.init()
        n = Node('stale_camera')
        img = n.create_publisher(Image, 'image', qos.SENSOR)
        js = n.create_publisher(JointState, 'joint_states', qos.SENSOR)
        frame = np.zeros((48, 48, 3), np.uint8)
        t0 = None
        while rclpy.ok():
            if t0 is None and img.get_subscription_count() > 0:
                t0 = time.monotonic()  # the node subscribes once its model is loaded
            t = time.monotonic() - t0 if t0 is not None else 0.0
            if not 4.0 < t < 8.0:  # the camera is silent for 4 s
                img.publish(rgb_to_image_msg(frame))
            m = JointState(name=['shoulder', 'elbow', 'wrist', 'gripper'], position=[0.0, 0.1, 0.2, 0.0])
            m.header.stamp = n.get_clock().now().to_msg()
            js.publish(m)
            rclpy.spin_once(n, timeout_sec=0.05)
        """
    with run_python.spawn(camera, name="camera"), \
            run_python.spawn(RUN_MODULE, NODE, *ros_args({"control.rate_hz": 20.0, "timeouts.image_s": 0.5}),
                             name="policy") as policy:
        assert spin_until(observer, lambda: len(gates) >= 5, 60), policy.output()

        def warned():
            return any(s.level == DiagnosticStatus.WARN and "stale" in s.message and "image" in s.message
                       for d in diags for s in d.status)
        assert spin_until(observer, warned, 20), [s.message for d in diags for s in d.status]
        held_at = gates[-1].step
        assert spin_until(observer, lambda: gates[-1].step > held_at + 5, 20), policy.output()
        assert gates[-1].oldest_kept_step <= held_at  # memory from before the gap is still there
