"""Writes real rosbag2 recordings with rosbags (not with aura_ros's own code), for the replay tests."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from aura_ros.sim.scene import SimScene

STORE = get_typestore(Stores.ROS2_JAZZY)
T = STORE.types
T0 = 1_700_000_000 * 10**9  # recorded wall-clock time of the first message


@dataclass
class Recording:
    frame_times: list[int]
    frames: list[np.ndarray]  # RGB
    joint_times: list[int]
    joints: list[np.ndarray]  # policy joint order
    joint_names: tuple[str, ...]
    command_times: list[int]
    commands: list[np.ndarray]


def make_recording(n_frames: int = 8, camera_hz: float = 10.0, joints_hz: float = 50.0, seed: int = 0) -> Recording:
    """A sim episode: frames at camera_hz, joint states at joints_hz (starting a little earlier),
    and a recorded command per frame (a scripted controller's targets)."""
    scene = SimScene(seed=seed, event_period_steps=3)
    names, _, _ = scene.joint_state()
    dt_j = 1.0 / joints_hz
    rec = Recording([], [], [], [], tuple(names), [], [])
    t_end = n_frames / camera_hz
    t, k = 0.0, 0
    next_frame = 0.01
    rng = np.random.default_rng(seed)
    while len(rec.frames) < n_frames and t < t_end + 1:
        _, pos, _ = scene.joint_state()
        rec.joint_times.append(T0 + int(round(t * 1e9)))
        rec.joints.append(np.array(pos, dtype=np.float64))
        if t + 1e-9 >= next_frame:
            rec.frame_times.append(T0 + int(round(t * 1e9)) + 1000)  # just after that joint state
            rec.frames.append(scene.render())
            target = np.array(pos) + rng.normal(0, 0.2, size=len(pos))
            target[-1] = float(k % 2)
            rec.command_times.append(rec.frame_times[-1] + 500)
            rec.commands.append(np.clip(target, [-3, -2.4, -3, 0], [3, 2.4, 3, 1]))
            scene.set_position_targets(rec.commands[-1])
            next_frame += 1.0 / camera_hz
            k += 1
        scene.step(dt_j)
        t += dt_j
    return rec


def _header(t_ns: int, frame_id: str = "camera"):
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9),
                                    frame_id=frame_id)


def image_msg(rgb: np.ndarray, t_ns: int, encoding: str = "rgb8"):
    data = rgb[:, :, ::-1] if encoding == "bgr8" else rgb
    h, w = rgb.shape[:2]
    return T["sensor_msgs/msg/Image"](header=_header(t_ns), height=h, width=w, encoding=encoding, is_bigendian=0,
                                      step=w * 3, data=np.ascontiguousarray(data).reshape(-1).astype(np.uint8))


def compressed_msg(rgb: np.ndarray, t_ns: int, fmt: str = "png"):
    ok, enc = cv2.imencode("." + fmt, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return T["sensor_msgs/msg/CompressedImage"](header=_header(t_ns), format=f"rgb8; {fmt} compressed bgr8",
                                                data=enc.reshape(-1).astype(np.uint8))


def joint_msg(pos: np.ndarray, names: tuple[str, ...], t_ns: int):
    # Recorded in another order, with one joint the policy does not use: replay maps by name.
    order = list(reversed(range(len(names))))
    return T["sensor_msgs/msg/JointState"](header=_header(t_ns, "base"),
                                           name=[names[i] for i in order] + ["head_pan"],
                                           position=np.array([pos[i] for i in order] + [0.5]),
                                           velocity=np.array([], dtype=np.float64),
                                           effort=np.array([], dtype=np.float64))


def trajectory_msg(pos: np.ndarray, names: tuple[str, ...], t_ns: int):
    point = T["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.asarray(pos, dtype=np.float64), velocities=np.array([], dtype=np.float64),
        accelerations=np.array([], dtype=np.float64), effort=np.array([], dtype=np.float64),
        time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=100_000_000))
    return T["trajectory_msgs/msg/JointTrajectory"](header=_header(t_ns, ""), joint_names=list(names), points=[point])


def write_bag(path: Path, rec: Recording, camera: str | None = "raw", storage: str = "mcap",
              camera_topic: str | None = None, commands: bool = True, rmw_joints: bool = False,
              joints: bool = True, instructions: list[tuple[int, str]] = (),
              more_cameras: dict[str, list[tuple[int, np.ndarray]]] | None = None) -> Path:
    """camera: 'raw' (sensor_msgs/Image rgb8), 'compressed' (PNG), 'jpeg', or None (no camera topic).
    rmw_joints: joint states as rclpy's serialize_message bytes (what ``ros2 bag record`` stores).
    joints: False for a camera-only recording. instructions: (time, text) on /instruction.
    more_cameras: further raw Image topics, (time, rgb) per frame."""
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    msgs = []
    with Writer(path, version=9, storage_plugin=plugin) as w:
        if joints:
            js = w.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=STORE)
            msgs += [(t, js, "sensor_msgs/msg/JointState", joint_msg(p, rec.joint_names, t))
                     for t, p in zip(rec.joint_times, rec.joints)]
        if instructions:
            ins = w.add_connection("/instruction", "std_msgs/msg/String", typestore=STORE)
            msgs += [(t, ins, "std_msgs/msg/String", T["std_msgs/msg/String"](data=text)) for t, text in instructions]
        if camera is not None:
            typ = "sensor_msgs/msg/Image" if camera == "raw" else "sensor_msgs/msg/CompressedImage"
            topic = camera_topic or ("/camera/image_raw" if camera == "raw" else "/camera/image_raw/compressed")
            cam = w.add_connection(topic, typ, typestore=STORE)
            build = (lambda f, t: image_msg(f, t)) if camera == "raw" else \
                (lambda f, t: compressed_msg(f, t, "png" if camera == "compressed" else "jpg"))
            msgs += [(t, cam, typ, build(f, t)) for t, f in zip(rec.frame_times, rec.frames)]
        for topic, frames in (more_cameras or {}).items():
            cam = w.add_connection(topic, "sensor_msgs/msg/Image", typestore=STORE)
            msgs += [(t, cam, "sensor_msgs/msg/Image", image_msg(f, t)) for t, f in frames]
        if commands:
            cmd = w.add_connection("/joint_trajectory", "trajectory_msgs/msg/JointTrajectory", typestore=STORE)
            msgs += [(t, cmd, "trajectory_msgs/msg/JointTrajectory", trajectory_msg(c, rec.joint_names, t))
                     for t, c in zip(rec.command_times, rec.commands)]
        for t, conn, typ, msg in sorted(msgs, key=lambda m: m[0]):
            if rmw_joints and typ == "sensor_msgs/msg/JointState":
                w.write(conn, t, _rmw_bytes(msg))
            else:
                w.write(conn, t, STORE.serialize_cdr(msg, typ))
    return path


def _rmw_bytes(msg) -> bytes:
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState

    out = JointState(name=list(msg.name), position=[float(v) for v in msg.position])
    out.header.stamp.sec, out.header.stamp.nanosec = msg.header.stamp.sec, msg.header.stamp.nanosec
    return serialize_message(out)
