"""The sim source: a simulated robot (aura_ros.sim.SimScene) behind real ROS 2 topics.

Publishes, every 1/rate_hz seconds:
- ``image`` (sensor_msgs/Image, rgb8) and, with publish_compressed, ``image/compressed`` (JPEG),
- ``joint_states`` (sensor_msgs/JointState: shoulder, elbow, wrist, gripper),
- ``/diagnostics`` about once a second (counters of frames, commands and drops).
Subscribes to every command type the policy node can send, so it follows whichever is in use:
``joint_trajectory`` (trajectory_msgs/JointTrajectory: the first point), ``commands``
(std_msgs/Float64MultiArray: positions in the sim's joint order) and ``cmd_vel``
(geometry_msgs/TwistStamped: linear.x and angular.z drive the base, a differential drive).

    python -m aura_ros.ros.sim_node --ros-args -p rate_hz:=30.0 -p width:=640 -p height:=480

The scene advances by exactly 1/rate_hz per tick rather than by measured wall time, so a run is
deterministic given the seed and the commands; the timer only sets how fast that happens.
All callbacks share the node's default (mutually exclusive) callback group, so the scene is only
ever touched from one callback at a time and needs no lock.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import TwistStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from aura_ros.ros import qos
from aura_ros.ros.image_conversion import rgb_to_compressed_msg, rgb_to_image_msg
from aura_ros.sim.scene import JOINT_NAMES, SimScene

# A command-type warning is logged at most this often; every drop is still counted.
WARN_THROTTLE_S = 5.0
DIAGNOSTICS_PERIOD_S = 1.0


@dataclass(frozen=True)
class _Param:
    default: object
    description: str
    range: tuple[float, float] | None = None
    read_only: bool = False


PARAMS: dict[str, _Param] = {
    "rate_hz": _Param(10.0, "Publish rate of image and joint_states; the scene advances 1/rate_hz per tick",
                      (0.1, 1000.0)),
    "width": _Param(96, "Image width in pixels", (16, 7680), read_only=True),
    "height": _Param(96, "Image height in pixels", (16, 4320), read_only=True),
    "publish_compressed": _Param(False, "Also publish image/compressed (JPEG)"),
    "jpeg_quality": _Param(90, "JPEG quality of image/compressed", (1, 100)),
    "seed": _Param(0, "Seed of the scene layout and of the periodic scripted events", (0, 2**31 - 1),
                   read_only=True),
    "event_period_steps": _Param(50, "A scripted event (object appears, changes colour, gripper closes/opens, "
                                     "object vanishes) every this many steps; 0 disables them", (0, 1_000_000),
                                 read_only=True),
    "cmd_vel_timeout_s": _Param(0.5, "The base stops when no cmd_vel arrived for this long", (0.01, 60.0)),
    "frame_id": _Param("aura_sim_camera", "frame_id of the image headers", read_only=True),
}


def _descriptor(name: str, spec: _Param) -> ParameterDescriptor:
    d = ParameterDescriptor(name=name, description=spec.description, read_only=spec.read_only)
    if spec.range is not None:
        lo, hi = spec.range
        if isinstance(spec.default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
        else:
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
    return d


class SimSourceNode(Node):
    """The simulated robot as a ROS node (see the module docstring for its topics)."""

    def __init__(self, node_name: str = "aura_sim", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        for name, spec in PARAMS.items():
            self.declare_parameter(name, spec.default, _descriptor(name, spec))
        p = {name: self.get_parameter(name).value for name in PARAMS}
        self._rate_hz = float(p["rate_hz"])
        self._publish_compressed = bool(p["publish_compressed"])
        self._jpeg_quality = int(p["jpeg_quality"])
        self._cmd_vel_timeout_s = float(p["cmd_vel_timeout_s"])
        self._frame_id = str(p["frame_id"])
        self.scene = SimScene(width=int(p["width"]), height=int(p["height"]), seed=int(p["seed"]),
                              event_period_steps=int(p["event_period_steps"]))

        self.counters: Counter[str] = Counter()
        self.last_drop = ""
        self._dropped_reported = 0
        self._last_warn: dict[str, float] = {}
        self._pending_targets: dict[str, float] | None = None
        self._twist: tuple[float, float] | None = None
        self._twist_time = -math.inf

        self._image_pub = self.create_publisher(Image, "image", qos.SENSOR)
        self._compressed_pub = None
        self._set_compressed(self._publish_compressed)
        self._joint_pub = self.create_publisher(JointState, "joint_states", qos.SENSOR)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", qos.DIAGNOSTICS)
        self.create_subscription(JointTrajectory, "joint_trajectory", self._on_trajectory, qos.COMMANDS)
        self.create_subscription(Float64MultiArray, "commands", self._on_commands, qos.COMMANDS)
        self.create_subscription(TwistStamped, "cmd_vel", self._on_cmd_vel, qos.COMMANDS)
        self._timer = self.create_timer(1.0 / self._rate_hz, self._tick)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        # Ranges and read-only are enforced by rclpy itself; this applies the live ones.
        self.add_post_set_parameters_callback(self._apply_parameters)
        self.get_logger().info(
            f"sim source: {self.scene.width}x{self.scene.height} rgb8 at {self._rate_hz:g} Hz, joints "
            f"{list(JOINT_NAMES)}, seed {self.scene.seed}, an event every {self.scene.event_period_steps} steps"
            f"{', image/compressed on' if self._publish_compressed else ''}")

    # ------------------------------------------------------------------ parameters

    def _apply_parameters(self, params: list[Parameter]) -> None:
        for param in params:
            if param.name == "rate_hz":
                self._rate_hz = float(param.value)
                self.destroy_timer(self._timer)
                self._timer = self.create_timer(1.0 / self._rate_hz, self._tick)
            elif param.name == "publish_compressed":
                self._set_compressed(bool(param.value))
            elif param.name == "jpeg_quality":
                self._jpeg_quality = int(param.value)
            elif param.name == "cmd_vel_timeout_s":
                self._cmd_vel_timeout_s = float(param.value)

    def _set_compressed(self, enabled: bool) -> None:
        # The publisher exists only while enabled: a subscriber to image/compressed then sees no
        # publisher at all rather than a silent one.
        self._publish_compressed = enabled
        if enabled and self._compressed_pub is None:
            self._compressed_pub = self.create_publisher(CompressedImage, "image/compressed", qos.SENSOR)
        elif not enabled and self._compressed_pub is not None:
            self.destroy_publisher(self._compressed_pub)
            self._compressed_pub = None

    # ------------------------------------------------------------------ commands

    def _drop(self, kind: str, reason: str) -> None:
        """Count a malformed command and warn, at most once per WARN_THROTTLE_S per command type."""
        self.counters[f"dropped_{kind}"] += 1
        self.last_drop = f"{kind}: {reason}"
        now = time.monotonic()
        if now - self._last_warn.get(kind, -math.inf) >= WARN_THROTTLE_S:
            self._last_warn[kind] = now
            self.get_logger().warn(f"dropped a {kind} command: {reason} "
                                   f"({self.counters[f'dropped_{kind}']} dropped so far)")

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        names = list(msg.joint_names)
        if not msg.points:
            return self._drop("joint_trajectory", "no points")
        if not names:
            return self._drop("joint_trajectory", "no joint_names")
        if len(set(names)) != len(names):
            return self._drop("joint_trajectory", f"duplicate joint names {names}")
        unknown = [n for n in names if n not in JOINT_NAMES]
        if unknown:
            return self._drop("joint_trajectory", f"unknown joints {unknown} (the sim has {list(JOINT_NAMES)})")
        positions = np.asarray(msg.points[0].positions, dtype=np.float64)
        if positions.size != len(names):
            return self._drop("joint_trajectory", f"first point has {positions.size} positions for "
                                                  f"{len(names)} joint names")
        if not np.all(np.isfinite(positions)):
            return self._drop("joint_trajectory", "NaN or infinite position")
        self._accept("joint_trajectory", dict(zip(names, positions.tolist())))

    def _on_commands(self, msg: Float64MultiArray) -> None:
        data = np.asarray(msg.data, dtype=np.float64)
        if data.size != len(JOINT_NAMES):
            return self._drop("commands", f"{data.size} values, expected {len(JOINT_NAMES)} "
                                          f"({', '.join(JOINT_NAMES)})")
        if not np.all(np.isfinite(data)):
            return self._drop("commands", "NaN or infinite value")
        self._accept("commands", dict(zip(JOINT_NAMES, data.tolist())))

    def _accept(self, kind: str, targets: dict[str, float]) -> None:
        # Several commands between two ticks: the newest value of each joint wins.
        self._pending_targets = {**(self._pending_targets or {}), **targets}
        self.counters[f"accepted_{kind}"] += 1

    def _on_cmd_vel(self, msg: TwistStamped) -> None:
        v, w = msg.twist.linear.x, msg.twist.angular.z
        if not (math.isfinite(v) and math.isfinite(w)):
            return self._drop("cmd_vel", "NaN or infinite velocity")
        self._twist, self._twist_time = (v, w), time.monotonic()
        self.counters["accepted_cmd_vel"] += 1

    # ------------------------------------------------------------------ tick

    def _tick(self) -> None:
        targets, self._pending_targets = self._pending_targets, None
        # Like a diff-drive controller: the last velocity holds until it times out, then the base stops.
        fresh = time.monotonic() - self._twist_time <= self._cmd_vel_timeout_s
        fired = self.scene.step(1.0 / self._rate_hz, position_targets=targets,
                                base_velocity=self._twist if fresh else None)
        for event in fired:
            self.counters["events"] += 1
            self.get_logger().info(f"step {event.step}: {event.kind} {event.detail}")
        stamp = self.get_clock().now().to_msg()
        frame = self.scene.render()
        self._image_pub.publish(rgb_to_image_msg(frame, "rgb8", self._frame_id, stamp))
        if self._compressed_pub is not None:
            self._compressed_pub.publish(rgb_to_compressed_msg(frame, "jpeg", self._jpeg_quality,
                                                               self._frame_id, stamp))
        names, positions, velocities = self.scene.joint_state()
        state = JointState(name=names, position=positions.tolist(), velocity=velocities.tolist())
        state.header.stamp = stamp
        self._joint_pub.publish(state)
        self.counters["steps"] += 1

    def _publish_diagnostics(self) -> None:
        dropped = sum(v for k, v in self.counters.items() if k.startswith("dropped_"))
        # WARN while drops keep happening (since the last report), OK again once they stop.
        recent, self._dropped_reported = dropped - self._dropped_reported, dropped
        x, y, yaw = self.scene.base_pose
        values = {**{k: str(v) for k, v in sorted(self.counters.items())}, "dropped_total": str(dropped),
                  "last_drop": self.last_drop, "base_pose": f"{x:.3f} {y:.3f} {yaw:.3f}",
                  "held_object": self.scene.held_object or "", "objects": str(len(self.scene.objects))}
        status = DiagnosticStatus(
            level=DiagnosticStatus.WARN if recent else DiagnosticStatus.OK,
            name=f"aura_sim: {self.get_fully_qualified_name()}", hardware_id="aura_sim",
            message=f"{recent} malformed command(s) dropped in the last {DIAGNOSTICS_PERIOD_S:g} s" if recent
            else f"running ({dropped} malformed command(s) dropped in total)",
            values=[KeyValue(key=k, value=v) for k, v in values.items()])
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def main(args: list[str] | None = None) -> None:
    """Entry point: ``python -m aura_ros.ros.sim_node [--ros-args ...]``; Ctrl-C exits cleanly."""
    rclpy.init(args=args)
    node = None
    try:
        node = SimSourceNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ParameterException as exc:  # a value out of range or of the wrong type on the command line
        raise SystemExit(f"aura_sim: bad parameter: {exc}") from None
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
