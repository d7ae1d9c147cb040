"""Several cameras on the policy node, over real DDS: image.camera_topics lists one topic per camera;
each step holds a frame of every camera (their image tokens in the one step segment), and a camera
that goes silent holds the robot as a stale single camera does."""
from __future__ import annotations

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from helpers.observer import RUN_MODULE, ros_args, spin_until

from aura_ros.msg import GateStats, MemoryBudget
from aura_ros.ros import qos

NODE = "aura_ros.ros.policy_node"

CAMERAS = """
    import time, numpy as np, rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image, JointState
    from aura_ros.ros import qos
    from aura_ros.ros.image_conversion import rgb_to_image_msg
    rclpy.init()
    n = Node('two_cameras')
    front = n.create_publisher(Image, 'image', qos.SENSOR)
    wrist = n.create_publisher(Image, 'wrist/image', qos.SENSOR)
    js = n.create_publisher(JointState, 'joint_states', qos.SENSOR)
    frame = np.zeros((48, 48, 3), np.uint8)
    t0 = None
    while rclpy.ok():
        if t0 is None and front.get_subscription_count() > 0 and wrist.get_subscription_count() > 0:
            t0 = time.monotonic()  # the node subscribes once its model is loaded
        t = time.monotonic() - t0 if t0 is not None else 0.0
        front.publish(rgb_to_image_msg(frame))
        if not 4.0 < t < 8.0:  # the wrist camera is silent for 4 s
            wrist.publish(rgb_to_image_msg(frame + 40))
        m = JointState(name=['shoulder', 'elbow', 'wrist', 'gripper'], position=[0.0, 0.1, 0.2, 0.0])
        m.header.stamp = n.get_clock().now().to_msg()
        js.publish(m)
        rclpy.spin_once(n, timeout_sec=0.05)
    """


def _step_tokens(n_cameras: int) -> int:
    from aura_ros.backends.transformers.policy import VLMPolicy
    from aura_ros.core.config import PolicyConfig

    policy = VLMPolicy.from_pretrained(None, PolicyConfig(n_cameras=n_cameras), n_threads=1)
    frame = np.zeros((48, 48, 3), np.uint8)
    return policy._step_tokens((frame,) * n_cameras if n_cameras > 1 else frame, np.array([0.0, 0.1, 0.2, 0.0]))


def test_two_cameras_step_together_and_a_silent_one_holds(run_python, observer):
    mems: list[MemoryBudget] = []
    gates: list[GateStats] = []
    diags: list[DiagnosticArray] = []
    observer.create_subscription(MemoryBudget, "/aura_policy/memory", mems.append, qos.STATS)
    observer.create_subscription(GateStats, "/aura_policy/gate_stats", gates.append, qos.STATS)
    observer.create_subscription(DiagnosticArray, "/diagnostics", diags.append, qos.DIAGNOSTICS)
    params = {"control.rate_hz": 20.0, "timeouts.image_s": 0.5, "image.camera_topics": "[image,wrist/image]"}
    with run_python.spawn(CAMERAS, name="cameras"), \
            run_python.spawn(RUN_MODULE, NODE, *ros_args(params), name="policy") as policy:
        assert spin_until(observer, lambda: len(mems) >= 3, 60), policy.output()
        first = mems[0]
        # One step of two frames: the step's tokens are those of an observation with two cameras.
        assert first.step == 0 and first.used_tokens - first.pinned_tokens == _step_tokens(2) > _step_tokens(1)

        def warned():
            return any(s.level == DiagnosticStatus.WARN and "stale" in s.message and "image" in s.message
                       for d in diags for s in d.status)
        assert spin_until(observer, warned, 20), [s.message for d in diags for s in d.status]
        held_at = gates[-1].step
        assert spin_until(observer, lambda: gates[-1].step > held_at + 5, 20), policy.output()


def test_compressed_transport_subscribes_to_no_raw_frames(run_python, observer):
    """image.transport:=compressed: the node reads <topic>/compressed only, so a camera's raw
    frames are never sent to it (across a network they stay on the robot)."""
    params = {"image.transport": "compressed", "image.camera_topics": "[image,wrist/image]"}
    with run_python.spawn(RUN_MODULE, NODE, *ros_args(params), name="policy") as policy:
        assert spin_until(observer, lambda: observer.count_subscribers("/wrist/image/compressed") > 0, 60), \
            policy.output()
        counts = {t: observer.count_subscribers(t) for t in ("/image", "/wrist/image", "/image/compressed",
                                                                "/wrist/image/compressed")}
    assert counts == {"/image": 0, "/wrist/image": 0, "/image/compressed": 1, "/wrist/image/compressed": 1}, counts
