"""The sim node in task mode, in its own process, driven over real DDS by the scripted expert.

The test keeps its own copy of the seeded stream of tasks (aura_ros.sim.tasks) and checks that
the sim runs in lockstep with the commands: every command advances the task exactly one step and
the next frame is the one the local copy renders; a command stamped before the current
observation is dropped; after each task the outcome arrives on task/result and each task's
instruction on instruction. By default the tasks follow one another with no reset (the endless
run: the same scene, the arm where it was); with task_reset_service the service is called between
tasks.
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
from sensor_msgs.msg import Image
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from aura_ros.ros import qos
from aura_ros.ros.env import local_ros_env
from aura_ros.ros.image_conversion import image_to_rgb
from aura_ros.sim.scene import JOINT_NAMES
from aura_ros.sim.tasks import TaskStream, iter_specs

TIMEOUT_S = 20.0
DISTRACTORS = 3
RUN_SIM = "from aura_ros.ros.sim_node import main; main()"


@pytest.mark.parametrize("with_reset", [False, True], ids=["stream", "reset_service"])
def test_task_mode_runs_tasks_in_lockstep_with_the_commands(tmp_path, with_reset):
    ns = f"/aura_sim_task_{uuid.uuid4().hex[:10]}"
    runner = PythonRunner(env=local_ros_env(), cwd=tmp_path)
    args = ["--ros-args", "-r", f"__ns:={ns}", "-p", "task:=cue_recall", "-p", f"task_distractors:={DISTRACTORS}",
            "-p", "seed:=5", "-p", "rate_hz:=20.0", "-p", "task_pause_s:=0.2"]
    if with_reset:
        args += ["-p", f"task_reset_service:={ns}/reset_memory"]
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node(f"aura_task_driver_{uuid.uuid4().hex[:8]}", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    frames: list[Image] = []
    results: list[dict] = []
    resets: list[float] = []
    instructions: list[str] = []

    def on_reset(request, response):
        resets.append(time.monotonic())
        response.success = True
        return response

    node.create_subscription(Image, f"{ns}/image", frames.append, qos.SENSOR)
    node.create_subscription(String, f"{ns}/task/result", lambda m: results.append(json.loads(m.data)), qos.STATS)
    node.create_service(Trigger, f"{ns}/reset_memory", on_reset)
    node.create_subscription(String, f"{ns}/instruction", lambda m: instructions.append(m.data), qos.INSTRUCTION)
    pub = node.create_publisher(JointTrajectory, f"{ns}/joint_trajectory", qos.COMMANDS)
    try:
        with runner.spawn(RUN_SIM, *args, name="sim_node") as sim:
            def spin_until(done, timeout=TIMEOUT_S) -> bool:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and not done():
                    assert sim.alive(), f"the sim exited:\n{sim.output()}"
                    executor.spin_once(timeout_sec=0.02)
                return done()

            last_stamp = [None]

            def wait_frame(expected: np.ndarray) -> None:
                """The next step's frame (a new stamp: re-sent frames keep theirs) is the local copy's."""
                def stamp(msg: Image) -> tuple[int, int]:
                    return msg.header.stamp.sec, msg.header.stamp.nanosec

                assert spin_until(lambda: bool(frames) and stamp(frames[-1]) != last_stamp[0]), sim.output()
                last_stamp[0] = stamp(frames[-1])
                assert np.array_equal(image_to_rgb(frames[-1]), expected)

            def command(action, stamp=None) -> None:
                msg = JointTrajectory(joint_names=list(JOINT_NAMES),
                                      points=[JointTrajectoryPoint(positions=[float(v) for v in action])])
                msg.header.stamp = stamp or node.get_clock().now().to_msg()
                pub.publish(msg)

            assert spin_until(lambda: pub.get_subscription_count() > 0), sim.output()
            stream = TaskStream(5, iter_specs(5, (("cue_recall", DISTRACTORS),)))
            for episode in range(3):
                task = stream.task
                wait_frame(stream.observe().image)
                if episode == 0:
                    # a command from before this observation (a hold, a step on an older frame) is dropped
                    command(task.expert_action() * 0 + 1.0, stamp=rclpy.time.Time(seconds=1).to_msg())
                    assert not spin_until(lambda: frames[-1].header.stamp.sec != last_stamp[0][0]
                                          or frames[-1].header.stamp.nanosec != last_stamp[0][1], timeout=1.0)
                while not task.done:
                    action = stream.expert_action()
                    stream.apply(action)
                    command(action)
                    if not task.done:
                        wait_frame(stream.observe().image)
                assert spin_until(lambda e=episode: len(results) > e), sim.output()
                r = results[episode]
                assert r["success"] is True and r["seed"] == task.seed and r["episode"] == episode
                assert r["steps"] == task.total_steps and r["cue_step"] == task.cue_step
                assert r["reset"] is with_reset
                if with_reset:
                    assert spin_until(lambda e=episode: len(resets) > e), "the reset service was not called"
                # Each task's instruction went out as it began (the next one's too, once this one ended).
                assert spin_until(lambda e=episode: len(instructions) >= e + 2), sim.output()
            # The local copy continues one scene from task to task, and the sim's frames matched it
            # at every step: the sim's tasks share a scene too.
            assert len(resets) == (3 if with_reset else 0)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
