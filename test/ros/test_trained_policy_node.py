"""Record -> train -> run: a policy trained with `aura-ros train` on a LeRobot dataset of another
robot (an SO-101: its own joint names and limits, a front and a wrist camera) starts in the policy
node from the params file written beside its weights, with no hand editing, and drives that
robot's topics over real DDS."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from helpers.observer import RUN_MODULE, spin_until
from trajectory_msgs.msg import JointTrajectory

from aura_ros.msg import MemoryBudget
from aura_ros.ros import qos

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "lerobot_v3_so101_tiny"
NODE = "aura_ros.ros.policy_node"

ROBOT = """
    import sys, numpy as np, rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image, JointState
    from aura_ros.ros import qos
    from aura_ros.ros.image_conversion import rgb_to_image_msg
    names = sys.argv[1].split(',')
    rclpy.init()
    n = Node('so101')
    front = n.create_publisher(Image, 'front/image', qos.SENSOR)
    wrist = n.create_publisher(Image, 'wrist/image', qos.SENSOR)
    js = n.create_publisher(JointState, 'joint_states', qos.SENSOR)
    rng = np.random.default_rng(0)
    while rclpy.ok():
        front.publish(rgb_to_image_msg(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
        wrist.publish(rgb_to_image_msg(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
        m = JointState(name=names, position=[0.1, -0.3, 0.8, 0.5])
        m.header.stamp = n.get_clock().now().to_msg()
        js.publish(m)
        rclpy.spin_once(n, timeout_sec=0.05)
    """


def test_a_policy_trained_on_a_lerobot_dataset_runs_from_its_params_file(run_python, observer, tmp_path):
    from aura_ros.tools.cli import main

    out = tmp_path / "so101_policy"
    rc = main(["train", "--out", str(out), "--lerobot", str(FIXTURE), "--camera-topics", "front/image,wrist/image",
               "--steps", "2", "--batch-size", "2", "--no-progress"])
    assert rc == 0
    params_file = out / "aura_ros_policy.yaml"
    params = yaml.safe_load(params_file.read_text())["/**"]["ros__parameters"]
    names = params["action.joint_names"]
    assert names == ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "gripper.pos"]
    assert params["image.camera_topics"] == ["front/image", "wrist/image"]

    cmds: list[JointTrajectory] = []
    mems: list[MemoryBudget] = []
    observer.create_subscription(JointTrajectory, "/joint_trajectory", cmds.append, qos.COMMANDS)
    observer.create_subscription(MemoryBudget, "/aura_policy/memory", mems.append, qos.STATS)
    node_args = ["--ros-args", "--params-file", str(params_file), "-p", "control.rate_hz:=20.0"]
    with run_python.spawn(ROBOT, ",".join(names), name="so101"), \
            run_python.spawn(RUN_MODULE, NODE, *node_args, name="policy") as policy:
        assert spin_until(observer, lambda: len(cmds) >= 5 and len(mems) >= 5, 90), policy.output()
    low, high = np.array(params["action.low"]), np.array(params["action.high"])
    for cmd in cmds:
        assert list(cmd.joint_names) == names
        values = np.array(cmd.points[0].positions)
        assert np.all(values >= low) and np.all(values <= high)
    assert mems[-1].budget_bytes == int(params["memory.vram_budget_mb"] * 2**20)
