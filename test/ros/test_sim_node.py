"""The sim source node in its own process, observed and commanded over real DDS on localhost.

One sim process (160x120, 20 Hz, compressed on, no periodic events so that only the tests'
commands move it) serves the module; it lives in a namespace of its own so that a parallel run
on the same domain cannot mix with it. The pytest process subscribes and publishes from a node
in its own rclpy Context.
"""
from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import TwistStamped
from helpers.ros_proc import PythonRunner, SpawnedProcess
from rcl_interfaces.srv import SetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from aura_ros.ros import qos
from aura_ros.ros.env import local_ros_env
from aura_ros.ros.image_conversion import compressed_to_rgb, image_to_rgb
from aura_ros.sim.scene import MAX_JOINT_VELOCITY

# Discovery on localhost takes up to ~3 s (ENVIRONMENT.md); every wait is bounded well above that.
TIMEOUT_S = 20.0
WIDTH, HEIGHT, RATE_HZ = 160, 120, 20.0
RUN_SIM = "from aura_ros.ros.sim_node import main; main()"


class Observer:
    """The test side: latest messages per topic, publishers for commands, a bounded spin."""

    def __init__(self, ns: str, sim: SpawnedProcess) -> None:
        self.ns, self.sim = ns, sim
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"aura_sim_observer_{uuid.uuid4().hex[:8]}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.images: list[Image] = []
        self.compressed: list[CompressedImage] = []
        self.states: list[JointState] = []
        self.diagnostics: list[dict[str, str]] = []
        sub = self.node.create_subscription
        sub(Image, f"{ns}/image", self.images.append, qos.SENSOR)
        sub(CompressedImage, f"{ns}/image/compressed", self.compressed.append, qos.SENSOR)
        sub(JointState, f"{ns}/joint_states", self.states.append, qos.SENSOR)
        sub(DiagnosticArray, "/diagnostics", self._on_diagnostics, qos.DIAGNOSTICS)
        pub = self.node.create_publisher
        self.commands = pub(Float64MultiArray, f"{ns}/commands", qos.COMMANDS)
        self.trajectory = pub(JointTrajectory, f"{ns}/joint_trajectory", qos.COMMANDS)
        self.cmd_vel = pub(TwistStamped, f"{ns}/cmd_vel", qos.COMMANDS)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == f"aura_sim: {self.ns}/aura_sim":
                self.diagnostics.append({"level": status.level, "message": status.message,
                                         **{kv.key: kv.value for kv in status.values}})

    def spin_until(self, done: Callable[[], bool], timeout: float = TIMEOUT_S) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return True
            if not self.sim.alive():
                raise AssertionError(f"the sim exited ({self.sim.proc.returncode}):\n{self.sim.output()}")
            self.executor.spin_once(timeout_sec=0.05)
        return done()

    def positions(self) -> np.ndarray:
        assert self.spin_until(lambda: bool(self.states)), "no joint_states"
        return np.asarray(self.states[-1].position)

    def wait_matched(self, publisher) -> None:
        assert self.spin_until(lambda: publisher.get_subscription_count() > 0), (
            f"the sim never subscribed to {publisher.topic_name}:\n{self.sim.output()}")

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Iterator[tuple[Observer, SpawnedProcess]]:
    ns = f"/aura_sim_test_{uuid.uuid4().hex[:10]}"
    # conftest applied this session's domain to os.environ; local_ros_env() copies it.
    runner = PythonRunner(env=local_ros_env(), cwd=tmp_path_factory.mktemp("sim_node"))
    args = ["--ros-args", "-r", f"__ns:={ns}", "-p", f"width:={WIDTH}", "-p", f"height:={HEIGHT}",
            "-p", f"rate_hz:={RATE_HZ}", "-p", "publish_compressed:=true", "-p", "event_period_steps:=0"]
    with runner.spawn(RUN_SIM, *args, name="sim_node") as proc:
        observer = Observer(ns, proc)
        try:
            yield observer, proc
        finally:
            observer.close()


def test_publishes_frames_and_joint_states(sim):
    obs, proc = sim
    assert obs.spin_until(lambda: obs.images and obs.compressed and len(obs.states) >= 2), (
        f"images {len(obs.images)}, compressed {len(obs.compressed)}, states {len(obs.states)}:\n{proc.output()}")
    img = obs.images[-1]
    assert (img.width, img.height, img.encoding, img.step) == (WIDTH, HEIGHT, "rgb8", WIDTH * 3)
    assert img.header.frame_id == "aura_sim_camera"
    frame = image_to_rgb(img)
    assert frame.shape == (HEIGHT, WIDTH, 3)
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 5
    assert obs.compressed[-1].format == "rgb8; jpeg compressed bgr8"
    assert compressed_to_rgb(obs.compressed[-1]).shape == (HEIGHT, WIDTH, 3)
    state = obs.states[-1]
    assert list(state.name) == ["shoulder", "elbow", "wrist", "gripper"]
    assert len(state.position) == len(state.velocity) == 4
    stamps = [s.header.stamp.sec + s.header.stamp.nanosec * 1e-9 for s in obs.states]
    assert all(b > a for a, b in zip(stamps, stamps[1:])), "joint_states stamps must increase"
    # The rate: about 20 Hz (bounds loose: a loaded 2-core CI box).
    n0, t0 = len(obs.states), time.monotonic()
    obs.spin_until(lambda: False, timeout=1.0)
    rate = (len(obs.states) - n0) / (time.monotonic() - t0)
    assert 8.0 < rate < 30.0, f"joint_states at {rate:.1f} Hz, expected ~{RATE_HZ:g}"


def test_float64_command_moves_joints_at_limited_speed(sim):
    obs, _ = sim
    obs.wait_matched(obs.commands)
    start = obs.positions()
    target = np.array([1.0, -0.5, 0.5, 1.0])
    obs.states.clear()
    obs.commands.publish(Float64MultiArray(data=target.tolist()))  # reliable: one is enough
    assert obs.spin_until(lambda: obs.states and np.allclose(obs.states[-1].position, target, atol=1e-9)), (
        f"joints at {obs.positions()} after {TIMEOUT_S:.0f} s, target {target}, start {start}")
    speeds = np.array([np.abs(s.velocity) for s in obs.states])
    assert np.all(speeds <= MAX_JOINT_VELOCITY + 1e-9)
    assert speeds.max() > 0  # it moved through intermediate states, not in one jump
    moving = [s for s in obs.states if np.any(np.asarray(s.velocity) != 0)]
    # The slowest joint needs distance / max speed seconds: that many ticks, minus one for rounding.
    ticks = np.max(np.abs(target - start) / MAX_JOINT_VELOCITY) * RATE_HZ
    assert len(moving) >= math.floor(ticks) - 1, (len(moving), ticks)


def test_joint_trajectory_moves_only_the_named_joints(sim):
    obs, _ = sim
    obs.wait_matched(obs.trajectory)
    before = obs.positions()
    msg = JointTrajectory(joint_names=["wrist", "shoulder"],
                          points=[JointTrajectoryPoint(positions=[-0.7, -1.0]),
                                  JointTrajectoryPoint(positions=[2.0, 2.0])])  # only the first point is used
    obs.trajectory.publish(msg)
    expected = before.copy()
    expected[[2, 0]] = [-0.7, -1.0]
    assert obs.spin_until(lambda: np.allclose(obs.states[-1].position, expected, atol=1e-9)), (
        f"joints at {obs.positions()}, expected {expected}")


def test_malformed_commands_are_dropped_counted_and_survived(sim):
    obs, proc = sim
    for pub in (obs.commands, obs.trajectory, obs.cmd_vel):
        obs.wait_matched(pub)
    before = obs.positions()
    bad_twist = TwistStamped()
    bad_twist.twist.linear.x = math.nan
    bad = [
        (obs.commands, Float64MultiArray(data=[0.1, 0.2, 0.3])),
        (obs.commands, Float64MultiArray(data=[0.1, math.nan, 0.3, 0.0])),
        (obs.trajectory, JointTrajectory(joint_names=["shoulder"], points=[])),
        (obs.trajectory, JointTrajectory(joint_names=["knee"], points=[JointTrajectoryPoint(positions=[1.0])])),
        (obs.trajectory, JointTrajectory(joint_names=["shoulder", "elbow"],
                                         points=[JointTrajectoryPoint(positions=[1.0])])),
        (obs.trajectory, JointTrajectory(joint_names=["shoulder", "shoulder"],
                                         points=[JointTrajectoryPoint(positions=[1.0, 2.0])])),
        (obs.cmd_vel, bad_twist),
    ]
    for pub, msg in bad:
        pub.publish(msg)

    def counted() -> bool:
        d = obs.diagnostics[-1] if obs.diagnostics else {}
        got = (d.get("dropped_commands"), d.get("dropped_joint_trajectory"), d.get("dropped_cmd_vel"))
        return got == ("2", "4", "1")

    assert obs.spin_until(counted), f"diagnostics: {obs.diagnostics[-1:]}\n{proc.output()}"
    assert obs.diagnostics[-1]["dropped_total"] == "7"
    assert obs.diagnostics[-1]["level"] == DiagnosticStatus.WARN  # WARN while drops are recent
    log = proc.output()
    assert "dropped a commands command: 3 values, expected 4" in log
    assert "dropped a joint_trajectory command: no points" in log
    assert "dropped a cmd_vel command: NaN or infinite velocity" in log
    # Throttled: one warning per command type, not one per drop.
    assert log.count("dropped a joint_trajectory command") == 1
    # Still alive, still publishing, joints untouched, and a good command still works.
    n = len(obs.states)
    assert obs.spin_until(lambda: len(obs.states) >= n + 3)
    np.testing.assert_array_equal(obs.positions(), before)
    target = before.copy()
    target[3] = 0.0
    obs.commands.publish(Float64MultiArray(data=target.tolist()))
    assert obs.spin_until(lambda: np.allclose(obs.states[-1].position, target, atol=1e-9))


def test_cmd_vel_moves_the_view_and_times_out(sim):
    obs, _ = sim
    obs.wait_matched(obs.cmd_vel)
    # At rest (no events, joints arrived) consecutive frames are identical.
    obs.positions()
    obs.images.clear()
    assert obs.spin_until(lambda: len(obs.images) >= 2)
    still = image_to_rgb(obs.images[-1])
    assert np.array_equal(image_to_rgb(obs.images[-2]), still)
    twist = TwistStamped()
    twist.twist.linear.x, twist.twist.angular.z = 0.2, 0.5
    end = time.monotonic() + 1.0
    while time.monotonic() < end:  # 10 Hz, like a teleop
        obs.cmd_vel.publish(twist)
        obs.spin_until(lambda: False, timeout=0.1)
    assert not np.array_equal(image_to_rgb(obs.images[-1]), still)
    # The last twist stops holding after cmd_vel_timeout_s (0.5 s): the view settles again.
    obs.spin_until(lambda: False, timeout=1.0)
    obs.images.clear()
    assert obs.spin_until(lambda: len(obs.images) >= 3)
    assert np.array_equal(image_to_rgb(obs.images[-1]), image_to_rgb(obs.images[-3]))
    assert obs.spin_until(lambda: obs.diagnostics and float(obs.diagnostics[-1]["base_pose"].split()[0]) > 0.05)


def test_live_parameters_apply_and_limits_hold(sim):
    """rate_hz and publish_compressed change at run time; ranges and read-only are enforced."""
    obs, _ = sim
    client = obs.node.create_client(SetParameters, f"{obs.ns}/aura_sim/set_parameters")
    assert obs.spin_until(client.service_is_ready), "no set_parameters service"

    def set_params(**values) -> list:
        msgs = [Parameter(name, value=value).to_parameter_msg() for name, value in values.items()]
        future = client.call_async(SetParameters.Request(parameters=msgs))
        assert obs.spin_until(future.done), "set_parameters did not answer"
        return future.result().results

    def rate(seconds: float = 1.5) -> float:
        n0, t0 = len(obs.states), time.monotonic()
        obs.spin_until(lambda: False, timeout=seconds)
        return (len(obs.states) - n0) / (time.monotonic() - t0)

    try:
        results = set_params(rate_hz=0.0, width=320, jpeg_quality=101)
        assert [r.successful for r in results] == [False, False, False], results
        assert all(r.reason for r in results)
        assert [r.successful for r in set_params(rate_hz=5.0, publish_compressed=False)] == [True, True]
        assert 3.0 < rate() < 7.5
        obs.compressed.clear()
        obs.spin_until(lambda: False, timeout=0.5)
        assert not obs.compressed
    finally:
        set_params(rate_hz=RATE_HZ, publish_compressed=True)
    assert obs.spin_until(lambda: bool(obs.compressed))
    assert 12.0 < rate() < 30.0


def test_out_of_range_parameter_exits_with_a_clear_error(run_python):
    result = run_python.run(RUN_SIM, "--ros-args", "-p", "rate_hz:=0.0", "-r", "__node:=aura_sim_bad",
                            timeout=30.0, check=False)
    assert result.returncode != 0
    assert "bad parameter" in result.stderr and "rate_hz" in result.stderr, result.stderr


def test_sigint_shuts_down_cleanly(run_python):
    code = RUN_SIM
    with run_python.spawn(code, "--ros-args", "-r", f"__ns:=/aura_sim_sigint_{uuid.uuid4().hex[:8]}",
                          "-p", "rate_hz:=50.0", name="sim_sigint") as proc:
        deadline = time.monotonic() + TIMEOUT_S
        while "sim source: 96x96 rgb8 at 50 Hz" not in proc.output():
            assert proc.alive() and time.monotonic() < deadline, proc.output()
            time.sleep(0.05)
        time.sleep(0.3)  # a few ticks
        assert proc.interrupt() == 0, proc.output()
        assert "Traceback" not in proc.output(), proc.output()

