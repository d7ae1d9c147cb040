"""`aura-ros replay BAG`: run the policy over a recorded rosbag2 (MCAP or sqlite3), no ROS install.

Robotics engineers tune on recordings: record a run on the robot (``ros2 bag record``), then
replay its camera and joint states through the policy with any budget, eviction policy and model,
and look at the result in Foxglove. Replay calls only the policy seam (``Policy.step``), like the
node, and builds its output messages with the node's own builders (``aura_ros.ros.messages``,
``image_conversion``, ``diagnostics``), so the output bag carries what the node would publish.

Reading and writing use the ``rosbags`` package (pure Python: rosbag2 MCAP and sqlite3, the Jazzy
message types built in, aura_ros's messages registered from the .msg text in msg/).

Schedule: one control step per camera frame (default), at the frame's recorded time, with the
newest joint state recorded at or before it (and, with ``more_cameras``, the newest frame of each
further camera: a policy trained on several cameras gets its frames in that order; steps before
every camera has sent a frame are skipped and counted) (one recorded at the same time counts, whichever was
written first); or, with ``rate_hz``, steps on a fixed grid from the first frame, each with the
newest frame and joint state at that time. Frames before the first joint state are skipped (the
node holds too). A bag without joint states replays only with ``zero_joints``: every joint at zero
(clipped into the limits), so the policy sees an arm that never moves. Everything is
deterministic given the bag.

The output bag (MCAP) has, at the recorded times: the inputs as the node sees them (``/joint_states``
paired with each frame, ``/image`` or ``/image/compressed``, ``/instruction``), so that a replay of
the output pairs the same frames with the same joint states; the commands (``/joint_trajectory``), MemoryBudget
(``/aura_policy/memory``), GateStats (``/aura_policy/gate_stats``), the memory-map image
(``/aura_policy/memory_map``, every ``map_period_s`` of recorded time and at the last step) and
``/diagnostics`` (every ``map_period_s``).
"""
from __future__ import annotations

import shutil
import sqlite3
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from tqdm import tqdm

from aura_ros.core import topics
from aura_ros.data.bags import deserialize  # CDR bytes -> a message, accepting the rmw serializer's tail
from aura_ros.tools.msgdefs import MSG_NAMES, msg_text

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
STRING_TYPE = "std_msgs/msg/String"
COMMAND_TYPES = ("trajectory_msgs/msg/JointTrajectory", "std_msgs/msg/Float64MultiArray")


class BagError(Exception):
    """A bag that replay cannot use: missing, not a rosbag2 bag, truncated or corrupt, without a
    camera or joint-state topic, or with a topic of an unexpected type. The message says which and
    what the bag has."""


JOINTS_HINT = "pass --zero-joints to replay it with every joint at zero (the policy then sees an arm that never moves)"


# ----------------------------------------------------------------------------- types
def make_typestore():
    """The Jazzy types plus aura_ros/msg/MemoryBudget and GateStats from their .msg text."""
    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for name in MSG_NAMES:
        types.update(get_types_from_msg(msg_text(name), f"aura_ros/msg/{name}"))
    store.register(types)
    return store


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class BagTopics:
    camera: str
    camera_type: str  # IMAGE_TYPE or COMPRESSED_TYPE
    joints: str | None  # None: zero joints (the bag's joint states, if any, are not read)
    commands: str | None
    command_type: str | None
    instruction: str | None
    camera_count: int
    start_ns: int
    end_ns: int


def _read_errors() -> tuple[type[BaseException], ...]:
    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag2 import ReaderError

    errors: list[type[BaseException]] = [AnyReaderError, ReaderError, sqlite3.Error, struct.error, EOFError,
                                         ValueError, KeyError, IndexError, AssertionError, OSError]
    try:
        from rosbags.serde import SerdeError

        errors.append(SerdeError)
    except ImportError:  # older rosbags
        pass
    return tuple(errors)


def _open(bag: Path) -> AnyReader:
    bag = Path(bag)
    if not bag.exists():
        raise BagError(f"{bag}: no such bag (expected a rosbag2 folder, or a .mcap or .db3 file)")
    try:
        reader = AnyReader([bag], default_typestore=make_typestore())
        reader.open()
    except BagError:
        raise
    except _read_errors() as exc:
        what = _not_a_bag(bag)
        if what:
            raise BagError(f"{bag}: {what}") from exc
        raise BagError(f"{bag}: cannot read the bag, it looks truncated or corrupt "
                       f"({type(exc).__name__}: {exc})") from exc
    return reader


MCAP_MAGIC = b"\x89MCAP0\r\n"


def _not_a_bag(bag: Path) -> str | None:
    """What ``bag`` is, when rosbags refused it because it is no ROS 2 bag rather than a damaged
    one (None: it looks like a bag, so it is damaged)."""
    if bag.is_dir():
        if (bag / "metadata.yaml").exists():
            return None
        inner = sorted(p.name for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
        if inner:  # a recording stopped before rosbag2 wrote metadata.yaml
            return (f"a folder without metadata.yaml, so not a rosbag2 bag; it holds {', '.join(inner)}: "
                    f"pass that file instead")
        return ("a folder without metadata.yaml and without .mcap or .db3 files: not a rosbag2 bag "
                "(expected a rosbag2 folder, or a .mcap or .db3 file)")
    with bag.open("rb") as f:
        if f.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
            return None
    from mcap.exceptions import McapError
    from mcap.reader import make_reader

    try:
        with bag.open("rb") as f:
            reader = make_reader(f)
            header = reader.get_header()
            if header.profile == "ros2":
                return None
            summary = reader.get_summary()
    except (McapError, struct.error, EOFError, ValueError, OSError):
        return None
    encodings = sorted({c.message_encoding for c in summary.channels.values()}) if summary else []
    kind = (f"messages encoded {', '.join(encodings)}" if encodings else "no channel summary")
    source = "Foxglove SDK" if header.library.startswith("foxglove") else header.library or "unknown library"
    return (f"an MCAP file but not ROS 2 (profile {header.profile!r}, written by {source}, {kind}), "
            f"such as the demo's or `aura-ros foxglove --mcap` recording: open it in Foxglove as it is; "
            f"replay reads ROS 2 bags (ros2 bag record, or replay's own output)")


def _listing(reader: AnyReader) -> str:
    seen = sorted({(c.topic, c.msgtype) for c in reader.connections})
    return ", ".join(f"{t} ({m})" for t, m in seen) or "no topics"


def _pick(reader: AnyReader, wanted: str | None, types: tuple[str, ...], what: str, preferred: tuple[str, ...],
          required: bool = True) -> tuple[str | None, str | None]:
    """The topic for ``what``: the one asked for (checked), else the preferred names, else the only
    topic of a matching type."""
    by_topic: dict[str, str] = {c.topic: c.msgtype for c in reader.connections}
    if wanted:
        if wanted not in by_topic:
            raise BagError(f"the bag has no {what} topic {wanted!r}; it has: {_listing(reader)}")
        if by_topic[wanted] not in types:
            raise BagError(f"{what} topic {wanted!r} is {by_topic[wanted]}, expected one of {', '.join(types)}")
        return wanted, by_topic[wanted]
    for name in preferred:
        if by_topic.get(name) in types:
            return name, by_topic[name]
    matching = sorted(t for t, m in by_topic.items() if m in types)
    if len(matching) == 1 or (matching and not required):
        return matching[0], by_topic[matching[0]]
    if not required:
        return None, None
    if not matching:
        raise BagError(f"the bag has no {what} topic (a {' or '.join(types)}); it has: {_listing(reader)}")
    raise BagError(f"the bag has several {what} topics ({', '.join(matching)}): choose one with "
                   f"--{what.replace(' ', '-')}-topic")


def inspect_bag(bag: Path, camera_topic: str | None = None, joints_topic: str | None = None,
                command_topic: str | None = None, zero_joints: bool = False) -> BagTopics:
    """Which topics replay will use, checked (BagError says what is missing and what the bag has)."""
    reader = _open(bag)
    try:
        return _topics(reader, camera_topic, joints_topic, command_topic, zero_joints)
    finally:
        reader.close()


def _topics(reader: AnyReader, camera_topic, joints_topic, command_topic, zero_joints: bool = False) -> BagTopics:
    camera, camera_type = _pick(reader, camera_topic, (IMAGE_TYPE, COMPRESSED_TYPE), "camera",
                                (topics.IMAGE, topics.IMAGE_COMPRESSED, "/camera/image_raw",
                                 "/camera/color/image_raw", "/camera/image_raw/compressed"))
    joints = None
    if not zero_joints:
        if not joints_topic and not any(c.msgtype == JOINT_STATE_TYPE for c in reader.connections):
            raise BagError(f"the bag has no joint states (a {JOINT_STATE_TYPE} topic); it has: {_listing(reader)}; "
                           f"record {topics.JOINT_STATES} with the camera, or {JOINTS_HINT}")
        joints, _ = _pick(reader, joints_topic, (JOINT_STATE_TYPE,), "joints", (topics.JOINT_STATES,))
    commands, command_type = _pick(reader, command_topic, COMMAND_TYPES, "command",
                                   tuple(topics.COMMANDS.values()), required=False)
    instruction, _ = _pick(reader, None, (STRING_TYPE,), "instruction", (topics.INSTRUCTION,), required=False)
    if instruction != topics.INSTRUCTION:
        instruction = None  # another String topic is not an instruction
    count = sum(c.msgcount for c in reader.connections if c.topic == camera)
    if count == 0:
        raise BagError(f"camera topic {camera!r} has no messages")
    return BagTopics(camera, camera_type, joints, commands, command_type, instruction, count,
                     reader.start_time, reader.end_time)


@dataclass
class Tick:
    """One control step's inputs, at recorded time ``t_ns``."""

    t_ns: int
    image: np.ndarray | tuple[np.ndarray, ...]  # the frame, or one per camera (with more_cameras)
    joints: np.ndarray
    instruction: str | None
    recorded_command: np.ndarray | None  # the newest recorded command (policy joint order), if any
    camera_raw: bytes  # the frame's CDR bytes (written to the output as is)
    joints_raw: bytes
    more_raw: tuple[tuple[str, str, bytes], ...] = ()  # further cameras: (topic, type, CDR bytes)


def _joint_vector(msg, names: tuple[str, ...], topic: str) -> np.ndarray:
    got = list(msg.name)
    pos = np.asarray(msg.position, dtype=np.float64)
    if got:
        missing = [n for n in names if n not in got]
        if missing:
            raise BagError(f"joint states on {topic} name {got}, without the policy's joints {missing}; to run "
                           f"the policy on this robot's joints pass --joint-names {','.join(got)} with one limit "
                           f"each in --low=... and --high=...")
        return np.array([pos[got.index(n)] for n in names])
    if pos.size != len(names):
        raise BagError(f"joint states on {topic} have no names and {pos.size} positions; the policy has "
                       f"{len(names)} joints {list(names)}: pass the robot's {pos.size} joints in recorded order "
                       f"with --joint-names a,b,... and one limit each in --low=... and --high=...")
    return pos


def _zero_joint_state(store, names: tuple[str, ...], positions: np.ndarray, t_ns: int) -> bytes:
    """The JointState that stands in for the missing ones (written to the output as the input)."""
    T = store.types
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=t_ns // 1_000_000_000,
                                                                              nanosec=t_ns % 1_000_000_000),
                                      frame_id="")
    msg = T[JOINT_STATE_TYPE](header=header, name=list(names), position=np.asarray(positions, dtype=np.float64),
                              velocity=np.array([], dtype=np.float64), effort=np.array([], dtype=np.float64))
    return bytes(store.serialize_cdr(msg, JOINT_STATE_TYPE))


def _command_vector(msg, msgtype: str, names: tuple[str, ...]) -> np.ndarray | None:
    if msgtype == COMMAND_TYPES[0]:  # JointTrajectory: the first point, by joint name
        if not msg.points or any(n not in msg.joint_names for n in names):
            return None
        pos = np.asarray(msg.points[0].positions, dtype=np.float64)
        return np.array([pos[list(msg.joint_names).index(n)] for n in names])
    data = np.asarray(msg.data, dtype=np.float64)  # Float64MultiArray: the policy's joint order
    return data if data.size == len(names) else None


def iter_ticks(bag: Path, joint_names: tuple[str, ...], *, camera_topic: str | None = None,
               joints_topic: str | None = None, command_topic: str | None = None, rate_hz: float | None = None,
               on_dropped: Callable[[str], None] | None = None,
               zero_joints: tuple[np.ndarray] | None = None, more_cameras: tuple[str, ...] = ()) -> Iterator[Tick]:
    """The control steps of a recording, in recorded time order (see the module docstring).

    ``zero_joints``: ``(positions,)`` to use instead of joint states (the bag's are not read);
    ``more_cameras``: further camera topics, whose newest frames join each step's (in this order)."""
    from aura_ros.ros.image_conversion import ImageConversionError, compressed_to_rgb, image_to_rgb

    reader = _open(bag)
    try:
        sel = _topics(reader, camera_topic, joints_topic, command_topic, zero_joints is not None)
        extra = {topic: _pick(reader, topic, (IMAGE_TYPE, COMPRESSED_TYPE), "camera", ())[1] for topic in more_cameras}
        newest: dict[str, tuple[np.ndarray, bytes]] = {}  # further camera -> its newest frame
        wanted = set(extra) | {sel.camera} | ({sel.joints} if sel.joints else set()) \
            | ({sel.commands} if sel.commands else set()) | ({sel.instruction} if sel.instruction else set())
        conns = [c for c in reader.connections if c.topic in wanted]
        to_rgb = image_to_rgb if sel.camera_type == IMAGE_TYPE else compressed_to_rgb
        joints = joints_raw = command = None
        if zero_joints is not None:
            joints = np.asarray(zero_joints[0], dtype=np.float64)
            store = make_typestore()  # the reader's has only the bag's own types
        instruction: str | None = None
        frame: tuple[int, np.ndarray, bytes] | None = None  # newest frame (rate mode)
        # Frames wait until every message of their timestamp is read: a joint state or instruction
        # recorded at the same time belongs to the frame whichever was written first.
        pending: list[tuple[int, np.ndarray, bytes]] = []
        period = int(round(1e9 / rate_hz)) if rate_hz else None
        next_tick: int | None = None
        last_seen = 0

        def make(t_ns: int, image: np.ndarray, raw: bytes) -> Tick | None:
            nonlocal instruction
            if len(newest) < len(extra):
                if on_dropped:
                    on_dropped(f"frame at {t_ns} ns before every camera had sent one")
                return None
            raw_joints = joints_raw if zero_joints is None else \
                _zero_joint_state(store, joint_names, joints, t_ns)
            frames = (image, *(newest[topic][0] for topic in more_cameras)) if more_cameras else image
            tick = Tick(t_ns, frames, joints.copy(), instruction, None if command is None else command.copy(), raw,
                        raw_joints, tuple((topic, extra[topic], newest[topic][1]) for topic in more_cameras))
            instruction = None
            return tick

        messages = reader.messages(connections=conns)
        while True:
            try:
                item = next(messages, None)
            except _read_errors() as exc:
                raise BagError(f"{bag}: reading stopped part-way, the bag looks truncated or corrupt "
                               f"({type(exc).__name__}: {exc})") from exc
            t = item[1] if item is not None else None
            if pending and (t is None or t > pending[0][0]):
                for ft, image, raw in pending:
                    if joints is None:
                        if on_dropped:
                            on_dropped(f"frame at {ft} ns before the first joint state")
                    elif period:
                        frame = (ft, image, raw)
                        if next_tick is None:
                            next_tick = ft
                    else:
                        tick = make(ft, image, raw)
                        if tick is not None:
                            yield tick
                pending.clear()
            # Rate mode: every grid time before this message (up to the last message at the end)
            # is a step with the frame and joint state that were newest then.
            while period and next_tick is not None and joints is not None \
                    and (next_tick < t if t is not None else next_tick <= last_seen):
                tick = make(next_tick, frame[1], frame[2])
                if tick is not None:
                    yield tick
                next_tick += period
            if item is None:
                break
            conn, t, raw = item
            last_seen = t
            try:
                msg = deserialize(reader.typestore, raw, conn.msgtype)
            except _read_errors() as exc:
                raise BagError(f"{bag}: a {conn.msgtype} message on {conn.topic} at {t} ns cannot be decoded "
                               f"({type(exc).__name__}: {exc})") from exc
            if conn.topic == sel.joints:
                joints, joints_raw = _joint_vector(msg, joint_names, conn.topic), bytes(raw)
            elif conn.topic == sel.commands:
                command = _command_vector(msg, conn.msgtype, joint_names)
            elif conn.topic == sel.instruction:
                instruction = str(msg.data)
            elif conn.topic == sel.camera:
                try:
                    pending.append((t, to_rgb(msg), bytes(raw)))
                except ImageConversionError as exc:
                    if on_dropped:
                        on_dropped(f"bad frame at {t} ns: {exc}")
            elif conn.topic in extra:
                try:
                    convert = image_to_rgb if extra[conn.topic] == IMAGE_TYPE else compressed_to_rgb
                    newest[conn.topic] = (convert(msg), bytes(raw))
                except ImageConversionError as exc:
                    if on_dropped:
                        on_dropped(f"bad frame on {conn.topic} at {t} ns: {exc}")
    finally:
        reader.close()


# ----------------------------------------------------------------------------- replay
@dataclass
class ReplayResult:
    name: str
    out: Path | None
    steps: int
    commands: np.ndarray  # [steps, dim]: the action executed at each step (Action.first)
    stamps_ns: list[int]
    writes_total: int = 0
    evictions_total: int = 0
    long_term_steps_kept: int = 0
    p50_step_ms: float = 0.0
    command_error: float | None = None  # mean |policy - recorded| over joints and steps, where recorded
    dropped: list[str] = field(default_factory=list)


def _stamp(t_ns: int):
    from builtin_interfaces.msg import Time

    return Time(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000)


class _BagOut:
    """The output bag: connections by topic, messages built with the node's builders (rclpy types)."""

    def __init__(self, out: Path, typestore):
        self.writer = Writer(out, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.typestore = typestore
        self.conns: dict[str, object] = {}

    def write(self, topic: str, msgtype: str, t_ns: int, data: bytes) -> None:
        conn = self.conns.get(topic)
        if conn is None:
            conn = self.conns[topic] = self.writer.add_connection(topic, msgtype, typestore=self.typestore)
        self.writer.write(conn, t_ns, data)

    def write_msg(self, topic: str, msgtype: str, t_ns: int, msg) -> None:
        """An rclpy message, re-encoded by rosbags: the same CDR without the rmw serializer's tail,
        so that strict readers (rosbags) read the output as well as ROS 2 and Foxglove do."""
        from rclpy.serialization import serialize_message

        self.write_raw_clean(topic, msgtype, t_ns, serialize_message(msg))

    def write_raw_clean(self, topic: str, msgtype: str, t_ns: int, raw: bytes) -> None:
        self.write(topic, msgtype, t_ns, bytes(self.typestore.serialize_cdr(deserialize(self.typestore, raw, msgtype),
                                                                           msgtype)))

    def close(self) -> None:
        self.writer.close()


def replay(bag: Path, out: Path | None, config=None, *, model: str | None = None, instruction: str = "",
           name: str = "replay", camera_topic: str | None = None, joints_topic: str | None = None,
           command_topic: str | None = None, rate_hz: float | None = None, map_period_s: float = 1.0,
           map_size: tuple[int, int] = (640, 160), max_steps: int | None = None, action_type: str = "joint_trajectory",
           progress: bool = True, overwrite: bool = False, policy=None, zero_joints: bool = False,
           more_cameras: tuple[str, ...] = ()) -> ReplayResult:
    """Run a policy over ``bag``; write the output bag to ``out`` (None: no output bag).

    ``config``: a PolicyConfig (budget, eviction, ...); ``policy``: an already built Policy
    (then ``config``/``model``/``instruction`` are not used). ``zero_joints``: every joint at zero
    (clipped into the limits) instead of the bag's joint states. ``more_cameras``: further camera
    topics for a policy with several cameras (the camera topic first, then these). Raises BagError
    for a bag it cannot use.
    """
    from std_msgs.msg import Header, String

    from aura_ros.core.config import PolicyConfig
    from aura_ros.core.memory_map import policy_memory_map
    from aura_ros.core.registry import make_policy
    from aura_ros.core.types import Observation
    from aura_ros.ros.diagnostics import Health, diagnostics_msg
    from aura_ros.ros.image_conversion import rgb_to_image_msg
    from aura_ros.ros.messages import command_msg, command_type, gate_msg, memory_msg

    bag = Path(bag)
    sel = inspect_bag(bag, camera_topic, joints_topic, command_topic, zero_joints)  # fail before loading a model
    if policy is None:
        from dataclasses import replace as _with

        config = _with(config or PolicyConfig(), n_cameras=1 + len(more_cameras))
        policy = make_policy(model, config, instruction=instruction)
    names = tuple(policy.config.joint_names)
    zeros = (np.clip(np.zeros(len(names)), policy.config.low, policy.config.high),) if zero_joints else None
    cmd_type = command_type(action_type)
    cmd_msgtype = f"{cmd_type.__module__.split('.')[0]}/msg/{cmd_type.__name__}"
    input_topic = topics.IMAGE if sel.camera_type == IMAGE_TYPE else topics.IMAGE_COMPRESSED
    writer = None
    if out is not None:
        out = Path(out)
        if out.exists():
            if not overwrite:
                raise FileExistsError(f"{out} exists: choose another --out or pass --overwrite")
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        out.parent.mkdir(parents=True, exist_ok=True)
        writer = _BagOut(out, make_typestore())
    health = Health()
    health.lifecycle = "active"  # replay steps every tick (the node sets this from its lifecycle)
    dropped: list[str] = []
    commands, stamps, latencies, errors = [], [], [], []
    map_period = int(map_period_s * 1e9)
    next_map = None
    stats = None
    total = sel.camera_count if not rate_hz else int((sel.end_ns - sel.start_ns) * rate_hz / 1e9) + 1
    if max_steps:
        total = min(total, max_steps)
    bar = tqdm(total=total, desc=name, unit="step", disable=not progress, leave=False)
    ok = False
    try:
        last_t = None
        for tick in iter_ticks(bag, names, camera_topic=sel.camera, joints_topic=sel.joints,
                               command_topic=sel.commands, rate_hz=rate_hz, on_dropped=dropped.append,
                               zero_joints=zeros, more_cameras=tuple(more_cameras)):
            if max_steps is not None and len(commands) >= max_steps:
                break
            action = policy.step(Observation(tick.image, tick.joints, instruction=tick.instruction))
            stats = action.stats
            commands.append(np.asarray(action.first, dtype=np.float64))
            stamps.append(tick.t_ns)
            latencies.append(stats.step_latency_ms)
            if tick.recorded_command is not None:
                errors.append(float(np.mean(np.abs(commands[-1] - tick.recorded_command))))
            health.step_done(stats, 0.0 if not rate_hz else 1.0 / rate_hz, 0.0, stats.evicted_written_total)
            last_t = tick.t_ns
            if writer is not None:
                header = Header(stamp=_stamp(tick.t_ns), frame_id="")
                # The step's inputs at its time, joint state first: a reader that pairs by write
                # order alone (not only replay) pairs this frame with this joint state.
                writer.write_raw_clean(topics.JOINT_STATES, JOINT_STATE_TYPE, tick.t_ns, tick.joints_raw)
                if tick.instruction is not None:
                    writer.write_msg(topics.INSTRUCTION, STRING_TYPE, tick.t_ns, String(data=tick.instruction))
                writer.write_raw_clean(input_topic, sel.camera_type, tick.t_ns, tick.camera_raw)
                for topic, msgtype, raw in tick.more_raw:
                    writer.write_raw_clean(topic, msgtype, tick.t_ns, raw)
                writer.write_msg(topics.COMMANDS[action_type], cmd_msgtype, tick.t_ns,
                                 command_msg(action_type, names, action.positions, header))
                writer.write_msg(topics.MEMORY, "aura_ros/msg/MemoryBudget", tick.t_ns, memory_msg(stats, header))
                writer.write_msg(topics.GATE_STATS, "aura_ros/msg/GateStats", tick.t_ns, gate_msg(stats, header))
                if next_map is None or tick.t_ns >= next_map:
                    _write_map(writer, policy, tick.t_ns, map_size, rgb_to_image_msg, policy_memory_map)
                    writer.write_msg(topics.DIAGNOSTICS, "diagnostic_msgs/msg/DiagnosticArray", tick.t_ns,
                                     diagnostics_msg(topics.NODE_NAME, health, _stamp(tick.t_ns), True))
                    next_map = tick.t_ns + map_period
            bar.update(1)
        if not commands:
            raise BagError(f"{bag}: no control step could be made ({len(dropped)} frames dropped"
                           + (f", first: {dropped[0]}" if dropped else "") + ")")
        if writer is not None and last_t is not None and next_map is not None and next_map - map_period != last_t:
            _write_map(writer, policy, last_t, map_size, rgb_to_image_msg, policy_memory_map)
        ok = True
    finally:
        bar.close()
        if writer is not None:
            writer.close()
            if not ok and out.exists():
                shutil.rmtree(out, ignore_errors=True)
    return ReplayResult(name=name, out=out, steps=len(commands), commands=np.array(commands), stamps_ns=stamps,
                        writes_total=stats.writes_total, evictions_total=stats.evictions_total,
                        long_term_steps_kept=stats.long_term_steps_kept,
                        p50_step_ms=float(np.median(latencies)) if latencies else 0.0,
                        command_error=float(np.mean(errors)) if errors else None, dropped=dropped)


def _write_map(writer: _BagOut, policy, t_ns: int, size, rgb_to_image_msg, policy_memory_map) -> None:
    img = policy_memory_map(policy, width=size[0], height=size[1])
    writer.write_msg(topics.MEMORY_MAP, IMAGE_TYPE, t_ns, rgb_to_image_msg(img, "rgb8", stamp=_stamp(t_ns)))


# ----------------------------------------------------------------------------- comparison
def compare(bag: Path, variants: list[tuple[str, object]], out_dir: Path | None, **kwargs) -> list[ReplayResult]:
    """Replay ``bag`` once per (name, PolicyConfig); each output bag goes to ``out_dir/name``."""
    return [replay(bag, None if out_dir is None else Path(out_dir) / name, config, name=name, **kwargs)
            for name, config in variants]


def comparison_table(results: list[ReplayResult]) -> str:
    """A markdown table: writes, evictions, long-term steps kept, p50 step time, command error."""
    has_cmd = any(r.command_error is not None for r in results)
    head = ("| run | steps | writes | evictions | long-term kept | p50 step ms |"
            + (" cmd MAE vs recorded |" if has_cmd else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        row = (f"| {r.name} | {r.steps} | {r.writes_total} | {r.evictions_total} | {r.long_term_steps_kept} | "
               f"{r.p50_step_ms:.1f} |")
        if has_cmd:
            row += f" {r.command_error:.4f} |" if r.command_error is not None else " - |"
        lines.append(row)
    return "\n".join(lines)


def read_topics(bag: Path) -> dict[str, int]:
    """topic -> message count of a bag (to check an output bag)."""
    reader = _open(bag)
    try:
        counts: dict[str, int] = {}
        for c in reader.connections:
            counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
        return counts
    finally:
        reader.close()
