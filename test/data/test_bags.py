"""read_bags on rosbag2 recordings written here with rosbags' own Writer (not with aura_ros's code):
what becomes a step, a task and an episode, the topic choices, and a one-line DataError for each
kind of bad data."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from aura_ros.data import DataError
from aura_ros.data.bags import read_bags

STORE = get_typestore(Stores.ROS2_JAZZY)
T = STORE.types
ARM = ("shoulder", "elbow", "wrist", "gripper")
T0 = 1_700_000_000 * 10**9
MS = 10**6


def _header(t_ns: int):
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9),
                                    frame_id="")


def frame(k: int, h: int = 6, w: int = 8, salt: int = 0) -> np.ndarray:
    rng = np.random.default_rng(1000 * salt + k)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def image(rgb: np.ndarray, encoding: str = "rgb8", pad: int = 0):
    h, w = rgb.shape[:2]
    pixels = {"rgb8": rgb, "bgr8": rgb[:, :, ::-1], "mono8": rgb[:, :, :1],
              "rgba8": np.dstack([rgb, np.full((h, w), 9, np.uint8)])}[encoding]
    rows = np.ascontiguousarray(pixels).reshape(h, -1)
    rows = np.hstack([rows, np.full((h, pad), 0xEE, np.uint8)])
    return T["sensor_msgs/msg/Image"](header=_header(0), height=h, width=w, encoding=encoding, is_bigendian=0,
                                      step=rows.shape[1], data=rows.reshape(-1))


def png(rgb: np.ndarray):
    ok, enc = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return T["sensor_msgs/msg/CompressedImage"](header=_header(0), format="rgb8; png compressed bgr8",
                                                data=enc.reshape(-1))


def joints(pos, names=ARM):
    return T["sensor_msgs/msg/JointState"](header=_header(0), name=list(names), position=np.asarray(pos, float),
                                           velocity=np.array([], float), effort=np.array([], float))


def trajectory(pos, names=ARM):
    point = T["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.asarray(pos, float), velocities=np.array([], float), accelerations=np.array([], float),
        effort=np.array([], float), time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=0))
    return T["trajectory_msgs/msg/JointTrajectory"](header=_header(0), joint_names=list(names), points=[point])


def array(values):
    layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    return T["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.asarray(values, float))


def twist(v: float, w: float):
    vec = T["geometry_msgs/msg/Vector3"]
    body = T["geometry_msgs/msg/Twist"](linear=vec(x=v, y=0.0, z=0.0), angular=vec(x=0.0, y=0.0, z=w))
    return T["geometry_msgs/msg/TwistStamped"](header=_header(0), twist=body)


def text(s: str):
    return T["std_msgs/msg/String"](data=s)


TYPES = {"Image": "sensor_msgs/msg/Image", "CompressedImage": "sensor_msgs/msg/CompressedImage",
         "JointState": "sensor_msgs/msg/JointState", "JointTrajectory": "trajectory_msgs/msg/JointTrajectory",
         "Float64MultiArray": "std_msgs/msg/Float64MultiArray", "TwistStamped": "geometry_msgs/msg/TwistStamped",
         "String": "std_msgs/msg/String"}


def write(path: Path, messages, storage: str = "mcap", raw: dict | None = None) -> Path:
    """messages: (t_ns, topic, msg); the type comes from the message class. raw: topic -> a function
    that turns the CDR bytes into what is stored (a damaged message)."""
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as w:
        conns = {}
        for t, topic, msg in sorted(messages, key=lambda m: m[0]):
            typ = TYPES[type(msg).__name__.split("__")[-1]]
            if topic not in conns:
                conns[topic] = w.add_connection(topic, typ, typestore=STORE)
            data = bytes(STORE.serialize_cdr(msg, typ))
            if raw and topic in raw:
                data = raw[topic](data)
            w.write(conns[topic], t, data)
    return path


def robot_messages(n: int, cameras=("/image",), joints_first_ms: int = 5, instructions=(), commands=True,
                   joint_names=ARM, command_names=None):
    """A teleoperated arm at 10 Hz: at each step k (t = 100 ms * k) the cameras' frames, the joint
    state 5 ms before them (and a stale one 40 ms before), then the command 20 ms later."""
    msgs, expected = [], {"frames": [], "states": [], "actions": []}
    for k in range(n):
        t = T0 + 100 * MS * k
        q = np.array([0.1 * k, -0.2 * k, 0.3, float(k // 3 % 2)])
        msgs.append((t - 40 * MS, "/joint_states", joints(q - 1.0, joint_names)))
        msgs.append((t - joints_first_ms * MS, "/joint_states", joints(q, joint_names)))
        fr = []
        for c, cam in enumerate(cameras):
            f = frame(k, salt=c)
            fr.append(f)
            msgs.append((t + c, cam, png(f) if cam.endswith("/compressed") else image(f)))
        a = np.array([0.1 * k + 0.05, -0.2 * k, 0.35 + 0.01 * k, float((k + 1) // 3 % 2)])
        if commands:
            msgs.append((t + 20 * MS, "/joint_trajectory", trajectory(a, command_names or joint_names)))
        expected["frames"].append(fr[0] if len(fr) == 1 else tuple(fr))
        expected["states"].append(q)
        expected["actions"].append(a)
    msgs += [(T0 + 100 * MS * k - 50 * MS + i, "/instruction", text(s)) for i, (k, s) in enumerate(instructions)]
    return msgs, expected


def frames_equal(got, want) -> bool:
    if isinstance(want, tuple):
        return isinstance(got, tuple) and len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
    return isinstance(got, np.ndarray) and np.array_equal(got, want)


def quiet(_line: str) -> None:
    pass


# ----------------------------------------------------------------------------- steps
def test_each_command_is_a_step_with_the_newest_frames_and_joint_state(tmp_path):
    msgs, exp = robot_messages(6, cameras=("/image", "/wrist/image/compressed"))
    lines: list[str] = []
    demos = read_bags([write(tmp_path / "bag", msgs)], log=lines.append)
    (rec,) = demos.episodes
    assert len(rec.images) == 6
    assert all(frames_equal(g, w) for g, w in zip(rec.images, exp["frames"]))
    assert np.array_equal(rec.states, np.array(exp["states"]))
    assert np.array_equal(rec.actions, np.array(exp["actions"]))
    assert rec.task_starts == (0,) and rec.task_instructions == ("",) and rec.events.tolist() == [True] + [False] * 5
    assert demos.joint_names == ARM and demos.cameras == ("/image", "/wrist/image/compressed")
    assert demos.discrete_joints == ("gripper",)
    assert all(lo < v < hi for lo, hi, v in zip(demos.low, demos.high, rec.actions.max(0)))
    assert demos.fps == pytest.approx(10.0)
    out = "\n".join(lines)
    assert "camera 0: /image (Image)" in out and "camera 1: /wrist/image/compressed (CompressedImage)" in out
    assert "joint states: /joint_states" in out and "commands: /joint_trajectory (JointTrajectory)" in out
    assert "6 steps" in out


def test_commands_before_every_input_are_left_out(tmp_path):
    msgs, exp = robot_messages(5)
    # The first step's frame never arrived: its command has no observation yet.
    msgs = [m for m in msgs if not (m[1] == "/image" and m[0] == T0)]
    lines: list[str] = []
    (rec,) = read_bags(write(tmp_path / "bag", msgs), log=lines.append).episodes
    assert np.array_equal(rec.actions, np.array(exp["actions"][1:]))
    assert "1 left out" in "\n".join(lines)


def test_joints_in_the_trajectory_order_and_extra_joint_states_left_out(tmp_path):
    names = ("head_pan", *reversed(ARM))  # recorded in another order, with a joint nobody commands
    msgs = []
    for k in range(4):
        t = T0 + 100 * MS * k
        q = np.array([0.1 * k, 0.2, 0.3, 1.0])
        msgs.append((t - MS, "/joint_states", joints([9.0, *q[::-1]], names)))
        msgs.append((t, "/image", image(frame(k))))
        order = [0, 1, 2, 3] if k == 0 else [2, 0, 3, 1]  # later commands name the joints in another order
        msgs.append((t + MS, "/joint_trajectory", trajectory(q[order] + 1, [ARM[i] for i in order])))
    demos = read_bags(write(tmp_path / "bag", msgs), log=quiet)
    assert demos.joint_names == ARM
    rec = demos.episodes[0]
    assert np.allclose(rec.states[:, 0], [0.0, 0.1, 0.2, 0.3]) and rec.states.shape == (4, 4)
    assert np.allclose(rec.actions - rec.states, 1.0)


def test_split_joint_states_are_merged_by_name(tmp_path):
    msgs = []
    for k in range(4):
        t = T0 + 100 * MS * k
        msgs.append((t - 2 * MS, "/joint_states", joints([0.1 * k, 0.2, 0.3], ARM[:3])))
        msgs.append((t - MS, "/joint_states", joints([float(k % 2)], ARM[3:])))
        msgs.append((t, "/image", image(frame(k))))
        msgs.append((t + MS, "/joint_trajectory", trajectory([0, 0, 0, 1.0])))
    rec = read_bags(write(tmp_path / "bag", msgs), log=quiet).episodes[0]
    assert rec.states[:, 3].tolist() == [0.0, 1.0, 0.0, 1.0] and np.allclose(rec.states[:, 0], [0.0, 0.1, 0.2, 0.3])


def test_without_commands_each_frame_is_a_step_and_the_action_the_next_joint_state(tmp_path):
    msgs, exp = robot_messages(5, commands=False)
    lines: list[str] = []
    demos = read_bags(write(tmp_path / "bag", msgs), log=lines.append)
    rec = demos.episodes[0]
    assert len(rec.actions) == 4  # the last frame has no next step
    assert np.array_equal(rec.states, np.array(exp["states"][:4]))
    assert np.array_equal(rec.actions, np.array(exp["states"][1:]))
    assert all(frames_equal(g, w) for g, w in zip(rec.images, exp["frames"]))
    assert "commands: none" in "\n".join(lines)


def test_commands_empty_string_forces_the_frame_clock(tmp_path):
    msgs, exp = robot_messages(5)
    rec = read_bags(write(tmp_path / "bag", msgs), commands="", log=quiet).episodes[0]
    assert np.array_equal(rec.actions, np.array(exp["states"][1:]))


@pytest.mark.parametrize("kind", ["array", "twist"])
def test_float64_multi_array_and_twist_commands(tmp_path, kind):
    msgs = []
    for k in range(4):
        t = T0 + 100 * MS * k
        msgs.append((t - MS, "/joint_states", joints([0.1 * k, 0.2, 0.3, 0.0])))
        msgs.append((t, "/image", image(frame(k))))
        if kind == "array":
            msgs.append((t + MS, "/commands", array([k, 1.0, 2.0, 3.0])))
        else:
            msgs.append((t + MS, "/cmd_vel", twist(0.5 * k, -0.25)))
    demos = read_bags(write(tmp_path / "bag", msgs), log=quiet)
    rec = demos.episodes[0]
    if kind == "array":
        assert demos.joint_names == ARM and rec.actions[:, 0].tolist() == [0, 1, 2, 3]
    else:
        assert demos.joint_names == ("linear_x", "angular_z")
        assert rec.actions.tolist() == [[0.5 * k, -0.25] for k in range(4)] and rec.states.shape == (4, 4)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "mono8"])
def test_raw_encodings_with_row_padding(tmp_path, encoding):
    msgs, _ = robot_messages(3)
    frames = {}
    for i, (t, topic, _msg) in enumerate(msgs):
        if topic == "/image":
            rgb = frame(i)
            frames[t] = np.repeat(rgb[:, :, :1], 3, axis=2) if encoding == "mono8" else rgb
            msgs[i] = (t, topic, image(rgb, encoding, pad=3))
    rec = read_bags(write(tmp_path / "bag", msgs), log=quiet).episodes[0]
    assert all(np.array_equal(got, frames[t]) for got, t in zip(rec.images, sorted(frames)))


def test_rmw_serialized_messages_with_their_tail(tmp_path):
    """What ros2 bag record and aura-ros record store: rclpy's serializer's bytes (a tail that
    rosbags' strict reader refuses)."""
    rclpy_ser = pytest.importorskip("rclpy.serialization")
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    msgs, exp = robot_messages(4)
    tails = {"/joint_states": lambda d: bytes(rclpy_ser.serialize_message(JointState(
                 name=list(ARM), position=STORE.deserialize_cdr(d, "sensor_msgs/msg/JointState").position.tolist()))),
             "/joint_trajectory": lambda d: bytes(rclpy_ser.serialize_message(JointTrajectory(
                 joint_names=list(ARM), points=[JointTrajectoryPoint(positions=STORE.deserialize_cdr(
                     d, "trajectory_msgs/msg/JointTrajectory").points[0].positions.tolist())])))}
    rec = read_bags(write(tmp_path / "bag", msgs, raw=tails), log=quiet).episodes[0]
    assert np.array_equal(rec.states, np.array(exp["states"])) and np.array_equal(rec.actions, np.array(exp["actions"]))


def test_sqlite3_bags_and_single_files(tmp_path):
    msgs, exp = robot_messages(4)
    bag = write(tmp_path / "bag", msgs, storage="sqlite3")
    (db3,) = bag.glob("*.db3")
    for path in (bag, db3):
        rec = read_bags(path, log=quiet).episodes[0]
        assert np.array_equal(rec.actions, np.array(exp["actions"]))


# ----------------------------------------------------------------------------- tasks and episodes
def test_each_instruction_starts_a_task_of_one_record(tmp_path):
    msgs, _ = robot_messages(9, instructions=[(0, "first"), (4, "second"), (7, "stale"), (7, "third")])
    lines: list[str] = []
    (rec,) = read_bags(write(tmp_path / "bag", msgs), log=lines.append).episodes
    assert rec.task_starts == (0, 4, 7)
    assert rec.task_instructions == ("first", "second", "third") and rec.instruction == "first"
    assert np.flatnonzero(rec.events).tolist() == [0, 4, 7]
    assert rec.instruction_at(5) == "second"
    assert "instruction: /instruction" in "\n".join(lines)


def test_steps_before_the_first_instruction_take_the_argument(tmp_path):
    msgs, _ = robot_messages(6, instructions=[(3, "later")])
    (rec,) = read_bags(write(tmp_path / "bag", msgs), instruction="pick up the block", log=quiet).episodes
    assert rec.task_starts == (0, 3) and rec.task_instructions == ("pick up the block", "later")


def test_episode_marker_splits_a_recording(tmp_path):
    msgs, exp = robot_messages(10, instructions=[(0, "task a")])
    msgs += [(T0 + 100 * MS * k - 60 * MS, "/episode", text("")) for k in (2, 6)]
    lines: list[str] = []
    demos = read_bags(write(tmp_path / "bag", msgs), episode_marker="episode", log=lines.append)
    a, b = demos.episodes
    assert np.array_equal(a.actions, np.array(exp["actions"][2:6])) and np.array_equal(b.actions,
                                                                                        np.array(exp["actions"][6:]))
    assert a.task_instructions == b.task_instructions == ("task a",)
    assert "2 left out" in "\n".join(lines)  # the steps before the first marker


def test_the_instruction_topic_as_marker_makes_each_task_an_episode(tmp_path):
    msgs, _ = robot_messages(9, instructions=[(0, "one"), (3, "two"), (6, "three")])
    demos = read_bags(write(tmp_path / "bag", msgs), episode_marker="instruction", log=quiet)
    assert [e.task_instructions for e in demos.episodes] == [("one",), ("two",), ("three",)]
    assert [len(e.actions) for e in demos.episodes] == [3, 3, 3]


def test_several_bags_are_several_episodes(tmp_path):
    bags = [write(tmp_path / f"bag{i}", robot_messages(3 + i)[0]) for i in range(3)]
    demos = read_bags(bags, log=quiet)
    assert [len(e.actions) for e in demos.episodes] == [3, 4, 5] and demos.n_steps == 12
    assert [e.task for e in demos.episodes] == ["bag0", "bag1", "bag2"]


# ----------------------------------------------------------------------------- camera choice
def test_default_cameras_sim_topics_first_then_sorted_raw_before_its_compressed_twin(tmp_path):
    msgs, _ = robot_messages(3, cameras=("/a_cam/image_raw", "/wrist/image", "/image", "/image/compressed"))
    msgs += [(T0 + 100 * MS * k + 5, "/aura_policy/memory_map", image(frame(k))) for k in range(3)]
    demos = read_bags(write(tmp_path / "bag", msgs), log=quiet)
    assert demos.cameras == ("/image", "/wrist/image", "/a_cam/image_raw")
    assert isinstance(demos.episodes[0].images[0], tuple) and len(demos.episodes[0].images[0]) == 3


def test_defaults_find_the_sims_topics_in_a_namespace(tmp_path):
    msgs, exp = robot_messages(4, cameras=("/robot1/wrist/image", "/robot1/image"), instructions=[(0, "go")])
    msgs = [(t, "/robot1" + topic if not topic.startswith("/robot1") else topic, m) for t, topic, m in msgs]
    demos = read_bags(write(tmp_path / "bag", msgs), log=quiet)
    assert demos.cameras == ("/robot1/image", "/robot1/wrist/image")
    rec = demos.episodes[0]
    assert all(np.array_equal(g[0], w[1]) and np.array_equal(g[1], w[0]) for g, w in zip(rec.images, exp["frames"]))
    assert rec.task_instructions == ("go",) and np.array_equal(rec.actions, np.array(exp["actions"]))


def test_cameras_asked_for_in_their_order(tmp_path):
    msgs, exp = robot_messages(3, cameras=("/image", "/wrist/image"))
    rec = read_bags(write(tmp_path / "bag", msgs), cameras=["wrist/image"], log=quiet).episodes[0]
    assert all(np.array_equal(g, w[1]) for g, w in zip(rec.images, exp["frames"]))


# ----------------------------------------------------------------------------- bad data
def _bad_png(data: bytes) -> bytes:
    msg = STORE.deserialize_cdr(data, "sensor_msgs/msg/CompressedImage")
    msg.data = msg.data[: len(msg.data) // 2]
    return bytes(STORE.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage"))


def _short_image(data: bytes) -> bytes:
    msg = STORE.deserialize_cdr(data, "sensor_msgs/msg/Image")
    msg.data = msg.data[:-5]
    return bytes(STORE.serialize_cdr(msg, "sensor_msgs/msg/Image"))


def _bag(tmp_path, **kw):
    raw = kw.pop("raw", None)
    msgs, _ = robot_messages(**{"n": 4, **kw})
    return write(tmp_path / "bag", msgs, raw=raw)


def _no_camera(tmp_path):
    msgs, _ = robot_messages(4)
    return write(tmp_path / "bag", [m for m in msgs if m[1] != "/image"])


def _no_joints(tmp_path):
    msgs, _ = robot_messages(4)
    return write(tmp_path / "bag", [m for m in msgs if m[1] != "/joint_states"])


def _garbage(tmp_path):
    path = tmp_path / "bag.mcap"
    path.write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 50)
    return path


def _truncated(tmp_path):
    bag = _bag(tmp_path, n=20)
    (mcap,) = bag.glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    return bag


def _no_metadata(tmp_path):
    bag = _bag(tmp_path)
    (bag / "metadata.yaml").unlink()
    return bag


BAD = {
    "no camera topic": (_no_camera, {}, "no camera topic"),
    "camera asked for is absent": (_bag, {"cameras": ["/front/image"]}, "requested camera topic /front/image is not"),
    "joint states asked for are absent": (_bag, {"joint_states": "/arm/joint_states"},
                                          "requested joint states topic /arm/joint_states is not"),
    "commands asked for are absent": (_bag, {"commands": "cmd"}, "requested command topic /cmd is not"),
    "marker asked for is absent": (_bag, {"episode_marker": "/episode"}, "requested episode marker topic /episode"),
    "instruction topic asked for is absent": (_bag, {"instruction_topic": "/task_text"},
                                              "requested instruction topic /task_text"),
    "no joint states": (_no_joints, {}, "no joint states"),
    "commands drive an unreported joint": (lambda p: _bag(p, command_names=("shoulder", "elbow", "wrist", "thumb")),
                                           {}, "mismatched joints"),
    "too short": (lambda p: _bag(p, n=2), {}, "episode too short (2 steps"),
    "frame does not decode (png)": (lambda p: _bag(p, cameras=("/image/compressed",),
                                                   raw={"/image/compressed": _bad_png}), {}, "does not decode"),
    "frame does not decode (raw)": (lambda p: _bag(p, raw={"/image": _short_image}), {}, "does not decode"),
    "unreadable (garbage)": (_garbage, {}, "cannot read the bag"),
    "unreadable (truncated)": (_truncated, {}, "truncated or corrupt"),
    "unreadable (no metadata)": (_no_metadata, {}, "not a rosbag2 bag"),
    "no such bag": (lambda p: p / "missing", {}, "no such bag"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_is_one_line_data_error(tmp_path, case):
    make, kwargs, words = BAD[case]
    with pytest.raises(DataError) as err:
        read_bags([make(tmp_path)], log=quiet, **kwargs)
    message = str(err.value)
    assert words in message and "\n" not in message


def test_trajectories_naming_different_joints_are_mismatched(tmp_path):
    msgs, _ = robot_messages(4)
    msgs.append((T0 + 250 * MS, "/joint_trajectory", trajectory([0.0, 0.0, 0.0], ARM[:3])))
    with pytest.raises(DataError, match="mismatched joints"):
        read_bags(write(tmp_path / "bag", msgs), log=quiet)


def test_float64_multi_array_of_the_wrong_size_is_mismatched(tmp_path):
    msgs, _ = robot_messages(4, commands=False)
    msgs += [(T0 + 100 * MS * k + 20 * MS, "/commands", array([1.0, 2.0])) for k in range(4)]
    with pytest.raises(DataError, match="mismatched joints: a Float64MultiArray on /commands has 2 values"):
        read_bags(write(tmp_path / "bag", msgs), log=quiet)


def test_bags_with_different_joints_are_mismatched(tmp_path):
    a = write(tmp_path / "a", robot_messages(4)[0])
    b = write(tmp_path / "b", robot_messages(4, joint_names=("j1", "j2", "j3", "j4"))[0])
    with pytest.raises(DataError, match="mismatched joints"):
        read_bags([a, b], log=quiet)


def test_a_later_bag_without_the_first_bags_camera(tmp_path):
    a = write(tmp_path / "a", robot_messages(4, cameras=("/image", "/wrist/image"))[0])
    b = write(tmp_path / "b", robot_messages(4, cameras=("/image",))[0])
    with pytest.raises(DataError, match="requested camera topic /wrist/image is not in the bag"):
        read_bags([a, b], log=quiet)
