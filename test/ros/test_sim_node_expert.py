"""The sim node's cameras, expert mode and wait_for_subscribers, in its own process over real DDS.

- ``cameras``: each view on its topic (top on image, wrist on wrist/image, and their /compressed
  twins), one stamp for all the views of a tick, the frames the local scene renders.
- ``task_expert``: the node is its own teleoperator: each tick the observation (every camera and
  joint_states, one stamp), then the scripted expert's JointTrajectory stamped after it; the
  sequence is the in-process ``expert_stream``; commands from others are not even subscribed to.
- ``wait_for_subscribers``: nothing goes out until every topic has its subscriber.
"""
from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest
import rclpy
from helpers.ros_proc import PythonRunner
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from aura_ros.ros import qos
from aura_ros.ros.env import local_ros_env
from aura_ros.ros.image_conversion import compressed_to_rgb, image_to_rgb
from aura_ros.sim.scene import JOINT_NAMES, SimScene
from aura_ros.sim.tasks import expert_stream, stream_specs

TIMEOUT_S = 20.0
RUN_SIM = "from aura_ros.ros.sim_node import main; main()"
SEED, DISTRACTORS, TASKS = 5, 3, 2


class Side:
    """The test's ROS side: a node in its own context, messages per topic, a bounded spin."""

    def __init__(self, sim) -> None:
        self.sim = sim
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"aura_expert_test_{uuid.uuid4().hex[:8]}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.got: dict[str, list] = {}

    def listen(self, msg_type, topic: str, profile) -> None:
        self.got[topic] = []
        self.node.create_subscription(msg_type, topic, self.got[topic].append, profile)

    def spin_until(self, done, timeout: float = TIMEOUT_S) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return True
            assert self.sim.alive(), f"the sim exited:\n{self.sim.output()}"
            self.executor.spin_once(timeout_sec=0.02)
        return done()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def test_cameras_publish_each_view_on_its_topic_with_one_stamp(tmp_path):
    ns = f"/aura_sim_cams_{uuid.uuid4().hex[:10]}"
    runner = PythonRunner(env=local_ros_env(), cwd=tmp_path)
    args = ["--ros-args", "-r", f"__ns:={ns}", "-p", "cameras:=[wrist, top]", "-p", "publish_compressed:=true",
            "-p", "rate_hz:=20.0", "-p", "event_period_steps:=0", "-p", "width:=96", "-p", "height:=80"]
    with runner.spawn(RUN_SIM, *args, name="sim_cams") as sim:
        side = Side(sim)
        try:
            raw = {"top": f"{ns}/image", "wrist": f"{ns}/wrist/image"}
            for topic in raw.values():
                side.listen(Image, topic, qos.SENSOR)
                side.listen(CompressedImage, topic + "/compressed", qos.SENSOR)
            assert side.spin_until(lambda: all(len(v) >= 3 for v in side.got.values())), sim.output()
            # A tick's views share one stamp; find one that every topic got.
            common = set.intersection(*({stamp_ns(m) for m in msgs} for msgs in side.got.values()))
            assert common, "no stamp common to the four topics"
            t = max(common)
            frame = {k: image_to_rgb(next(m for m in side.got[v] if stamp_ns(m) == t)) for k, v in raw.items()}
            # No commands and no events: the scene stands still, so a local copy renders the same frames.
            local = SimScene(width=96, height=80, seed=0, event_period_steps=0)
            for view in ("top", "wrist"):
                assert np.array_equal(frame[view], local.render_view(view)), view
                jpeg = next(m for m in side.got[raw[view] + "/compressed"] if stamp_ns(m) == t)
                assert np.abs(compressed_to_rgb(jpeg).astype(int) - frame[view]).mean() < 8
            assert not np.array_equal(frame["top"], frame["wrist"])
            assert "(wrist on wrist/image, top on image)" in sim.output()
        finally:
            side.close()


def test_expert_mode_waits_for_its_subscribers_then_teleoperates_the_stream(tmp_path):
    ns = f"/aura_sim_expert_{uuid.uuid4().hex[:10]}"
    runner = PythonRunner(env=local_ros_env(), cwd=tmp_path)
    args = ["--ros-args", "-r", f"__ns:={ns}", "-p", "task:=cue_recall", "-p", f"task_distractors:={DISTRACTORS}",
            "-p", f"seed:={SEED}", "-p", "rate_hz:=20.0", "-p", "task_expert:=true", "-p", "cameras:=[top, wrist]",
            "-p", "wait_for_subscribers:=1"]
    with runner.spawn(RUN_SIM, *args, name="sim_expert") as sim:
        side = Side(sim)
        try:
            topics = {"top": f"{ns}/image", "wrist": f"{ns}/wrist/image", "joints": f"{ns}/joint_states",
                      "command": f"{ns}/joint_trajectory", "instruction": f"{ns}/instruction",
                      "result": f"{ns}/task/result"}
            side.listen(Image, topics["top"], qos.DEMONSTRATION)
            side.listen(Image, topics["wrist"], qos.DEMONSTRATION)
            side.listen(JointState, topics["joints"], qos.DEMONSTRATION)
            side.listen(JointTrajectory, topics["command"], qos.COMMANDS)
            side.listen(String, topics["instruction"], qos.INSTRUCTION)
            junk = side.node.create_publisher(Float64MultiArray, f"{ns}/commands", qos.COMMANDS)
            # Every topic but task/result has its subscriber: the sim holds.
            assert side.spin_until(lambda: all(side.node.count_publishers(t) for t in topics.values())), sim.output()
            assert side.spin_until(lambda: f"waiting for 1 subscriber(s) on {topics['result']}\n" in sim.output()), \
                sim.output()
            side.spin_until(lambda: False, timeout=1.0)
            assert not any(side.got.values()), {k: len(v) for k, v in side.got.items()}
            # The expert takes no commands from others: no subscription on any command topic.
            for name in ("joint_trajectory", "commands", "cmd_vel"):
                assert not [i for i in side.node.get_subscriptions_info_by_topic(f"{ns}/{name}")
                            if i.node_name == "aura_sim"], name
            side.listen(String, topics["result"], qos.STATS)
            junk.publish(Float64MultiArray(data=[1.0, 1.0, 1.0, 1.0]))
            assert side.spin_until(lambda: len(side.got[topics["result"]]) >= TASKS), sim.output()
        finally:
            side.close()
    got = side.got
    results = [json.loads(m.data) for m in got[topics["result"]]]
    assert [r["success"] for r in results[:TASKS]] == [True] * TASKS
    # Each command answers the observation before it: every camera and the joint state with one
    # stamp, the command stamped later. In order, they are the in-process expert stream.
    commands = got[topics["command"]]
    steps = sum(r["steps"] for r in results[:TASKS])
    assert len(commands) >= steps
    by_stamp = {k: {stamp_ns(m): m for m in got[topics[k]]} for k in ("top", "wrist", "joints")}
    obs_stamps = sorted(by_stamp["joints"])
    expected = expert_stream(SEED, stream_specs(SEED, TASKS, (("cue_recall", DISTRACTORS),)), cameras=("top", "wrist"))
    for k in range(steps):
        t = obs_stamps[k]
        assert t in by_stamp["top"] and t in by_stamp["wrist"], k
        assert obs_stamps[k] < stamp_ns(commands[k]) < (obs_stamps[k + 1] if k + 1 < len(obs_stamps) else 2**63)
        assert list(commands[k].joint_names) == list(JOINT_NAMES)
        assert np.array_equal(commands[k].points[0].positions, expected.actions[k]), k
        assert np.array_equal(by_stamp["joints"][t].position, expected.states[k]), k
        assert np.array_equal(image_to_rgb(by_stamp["top"][t]), expected.images[k][0]), k
        assert np.array_equal(image_to_rgb(by_stamp["wrist"][t]), expected.images[k][1]), k
    texts = [m.data for m in got[topics["instruction"]]]
    assert texts[:TASKS] == list(expected.task_instructions)


@pytest.mark.parametrize("params, says", [
    (["cameras:=[top, side]"], "cameras must be distinct views"),
    (["cameras:=[top, top]"], "cameras must be distinct views"),
    (["task_expert:=true"], "task_expert needs a task"),
    (["task:=cue_recall", "task_expert:=true", "task_reset_service:=/x/reset_memory"], "task_reset_service"),
], ids=["unknown view", "twice", "expert without task", "expert with reset"])
def test_bad_camera_and_expert_parameters_exit_with_a_clear_error(run_python, params, says):
    args = ["--ros-args", "-r", f"__node:=aura_sim_bad_{uuid.uuid4().hex[:6]}"]
    for p in params:
        args += ["-p", p]
    result = run_python.run(RUN_SIM, *args, timeout=30.0, check=False)
    assert result.returncode != 0
    assert "bad parameter" in result.stderr and says in result.stderr, result.stderr
