"""rosbag2 recordings (MCAP or sqlite3) -> ``Demonstrations``, through ``rosbags`` (no ROS install).

A user records a teleoperated robot with ``ros2 bag record`` (or ``aura-ros record`` where rosbag2
is missing); ``read_bags`` turns the recordings into the episodes the trainer takes. Message types
come from the bag itself (its embedded definitions), else from the Jazzy typestore.

The rules:

- **Recordings.** Each path (a rosbag2 folder, or a .mcap / .db3 file) is one recording. Without
  an episode marker a recording is one ``EpisodeRecord``.
- **Episodes and tasks.** With ``episode_marker`` (a topic), each message on it starts a new
  episode; steps before the first marker are left out (and counted in the log). Inside an episode,
  each message on the instruction topic starts a task: the record's ``task_starts`` and
  ``task_instructions`` (and ``events`` True on each task's first step), the way ``expert_stream``
  records tasks run back to back with no reset. A marker topic that is the instruction topic
  makes each task its own episode. Steps before the first instruction form a task with the
  ``instruction`` argument's text (or ""); two instructions with no step between them: the later
  one counts. The instruction topic's messages win over the argument.
- **The step clock.** With a command topic, each command message is one step: the observation is
  the newest frame of every camera and the newest joint state received before it (by the bag's
  receive timestamps), the action is the command. Commands before every camera and the joint
  states have spoken once are left out (counted in the log). Without commands, each frame of the
  first camera is a step, with the newest frame of the other cameras and the newest joint state,
  and the action is the next step's joint state (so an episode's last frame has no step).
- **Cameras.** sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8 and the other encodings of
  ``aura_ros.core.images``) or CompressedImage (JPEG/PNG, decoded with OpenCV). Default: every
  image topic of the bag, the sim's camera topics first, in any namespace (``topics.SIM_CAMERA_TOPICS``
  order: .../image, .../wrist/image), then the rest sorted; ``<t>/compressed`` is left out where
  ``<t>`` is recorded raw (the same camera), and so is the policy's memory-map image. One camera: a step's image is an
  HxWx3 uint8 array; several: a tuple of frames in camera order. Only frames that a step uses are
  decoded.
- **Joints.** Names come from the JointState messages (in order of first appearance; messages may
  carry different subsets, e.g. arm and gripper apart). The command topic decides which joints the
  policy drives and their order: a JointTrajectory's joint_names (its first point; the first
  command's order, later ones mapped by name; every command must name the same joints, all present
  in the joint states), a Float64MultiArray's values in joint-state order (one per joint), a
  TwistStamped's linear.x and angular.z (the "joints" ``linear_x``, ``angular_z``; the states are
  then every joint). Without commands, every joint. Joint-state joints the commands do not drive
  are left out of the states.
- **The action space.** Joint names as above; limits ``derived_limits`` over the actions and
  the states (the actions alone for twist); discrete joints ``discrete_joint_names``. Every
  recording must give the same joints and cameras.

Bad data raises ``DataError`` with one line: an unreadable bag, no camera topic, a requested topic
absent, no joint states, mismatched joints, a frame (used by a step) that does not decode, an
episode too short. ``log`` gets one line per choice made (which topic is camera k, the joint
states, the commands, the instruction, the marker) and the steps and episodes found.
"""
from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aura_ros.core import topics
from aura_ros.core.images import ImageConversionError, compressed_to_rgb, image_to_rgb
from aura_ros.data import DataError, Demonstrations, check_episode, derived_limits, discrete_joint_names
from aura_ros.sim.tasks import EpisodeRecord

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
STRING_TYPE = "std_msgs/msg/String"
TRAJECTORY_TYPE = "trajectory_msgs/msg/JointTrajectory"
ARRAY_TYPE = "std_msgs/msg/Float64MultiArray"
TWIST_TYPE = "geometry_msgs/msg/TwistStamped"
COMMAND_TYPES = (TRAJECTORY_TYPE, ARRAY_TYPE, TWIST_TYPE)
TWIST_JOINTS = ("linear_x", "angular_z")
# Image topics that are no camera: the policy node's memory map (in its replays and recordings).
NOT_CAMERAS = (topics.MEMORY_MAP,)


# ----------------------------------------------------------------------------- CDR
def deserialize(store, rawdata: bytes | memoryview, typename: str):
    """CDR bytes -> a rosbags message, accepting trailing bytes after the message.

    rosbags refuses a message followed by more than 3 bytes; the bytes that rclpy's
    ``serialize_message`` (the rmw's serializer, which ``ros2 bag record`` and ``aura-ros record``
    store as received) gives for JointState, JointTrajectory and others carry such a tail, although
    the message itself decodes. So the check is left out; everything else (encapsulation, field
    decoding) stays.
    """
    from rosbags.serde import SerdeError

    if len(rawdata) < 4 or bytes(rawdata[:2]) not in {b"\x00\x00", b"\x00\x01"}:
        raise SerdeError(f"invalid or unsupported CDR encapsulation for {typename!r}")
    msgdef = store.get_msgdef(typename)
    func = msgdef.deserialize_cdr_le if rawdata[1] else msgdef.deserialize_cdr_be
    try:
        message, _ = func(memoryview(rawdata)[4:], 0, msgdef.cls, store)
    except (struct.error, UnicodeDecodeError, ValueError, IndexError) as exc:
        raise SerdeError(f"could not deserialize {typename!r}: {exc}") from exc
    return message


def _read_errors() -> tuple[type[BaseException], ...]:
    import sqlite3

    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag2 import ReaderError
    from rosbags.serde import SerdeError

    return (AnyReaderError, ReaderError, SerdeError, sqlite3.Error, struct.error, EOFError, ValueError, KeyError,
            IndexError, AssertionError, OSError)


# ----------------------------------------------------------------------------- topics
def _absolute(name: str) -> str:
    return topics.resolve(name) if not name.startswith("~") else name


@dataclass(frozen=True)
class BagChoice:
    """The topics a recording is read through."""

    cameras: tuple[str, ...]
    camera_types: tuple[str, ...]
    joint_states: str
    commands: str | None
    command_type: str | None
    instruction: str | None
    marker: str | None


def _sim_rank(topic: str) -> int:
    """Where ``topic`` stands among the sim's camera topics (image, wrist/image), in any namespace;
    len(SIM_CAMERA_TOPICS) for any other camera."""
    rels = list(topics.SIM_CAMERA_TOPICS.values())
    name = topic[:-len(topics.COMPRESSED_SUFFIX)] if topic.endswith(topics.COMPRESSED_SUFFIX) else topic
    # The longest name that fits: /ns/wrist/image is the wrist camera, not a top camera in /ns/wrist.
    fits = [r for r in rels if name == "/" + r or name.endswith("/" + r)]
    return rels.index(max(fits, key=len)) if fits else len(rels)


def _default_cameras(by_topic: dict[str, str]) -> list[str]:
    images = [t for t, m in by_topic.items() if m in IMAGE_TYPES and t not in NOT_CAMERAS]
    # "<t>/compressed" beside a raw "<t>" is the same camera: keep the lossless one.
    images = [t for t in images if not (t.endswith(topics.COMPRESSED_SUFFIX)
                                        and by_topic.get(t[:-len(topics.COMPRESSED_SUFFIX)]) == IMAGE_TYPE)]
    return sorted(images, key=lambda t: (_sim_rank(t), t))


def _listing(by_topic: dict[str, str]) -> str:
    return ", ".join(f"{t} ({m})" for t, m in sorted(by_topic.items())) or "no topics"


def _choose(where: str, by_topic: dict[str, str], cameras, joint_states, commands, instruction_topic,
            episode_marker) -> BagChoice:
    def need(name: str, what: str, types: tuple[str, ...]) -> str:
        topic = _absolute(name)
        if topic not in by_topic:
            raise DataError(f"{where}: the requested {what} topic {topic} is not in the bag; it has: "
                            f"{_listing(by_topic)}")
        if by_topic[topic] not in types:
            raise DataError(f"{where}: {what} topic {topic} is {by_topic[topic]}, expected {' or '.join(types)}")
        return topic

    if cameras is not None:
        if isinstance(cameras, str):
            cameras = [cameras]
        cams = [need(c, "camera", IMAGE_TYPES) for c in cameras]
        if not cams:
            raise DataError(f"{where}: no camera topic given")
    else:
        cams = _default_cameras(by_topic)
        if not cams:
            raise DataError(f"{where}: no camera topic (sensor_msgs/msg/Image or CompressedImage); the bag has: "
                            f"{_listing(by_topic)}")

    joint_topics = sorted(t for t, m in by_topic.items() if m == JOINT_STATE_TYPE)
    wanted = _absolute(joint_states or "joint_states")
    if wanted in by_topic or joint_states not in (None, "joint_states", topics.JOINT_STATES):
        joints = need(wanted, "joint states", (JOINT_STATE_TYPE,))
    elif len(joint_topics) == 1:
        joints = joint_topics[0]
    elif not joint_topics:
        raise DataError(f"{where}: no joint states (a sensor_msgs/msg/JointState topic); the bag has: "
                        f"{_listing(by_topic)}")
    else:
        raise DataError(f"{where}: no {topics.JOINT_STATES} and several JointState topics "
                        f"({', '.join(joint_topics)}): choose one")

    if commands:
        cmd = need(commands, "command", COMMAND_TYPES)
    elif commands is None:
        preferred = [topics.COMMANDS[k] for k in ("joint_trajectory", "float64_multi_array", "twist")]
        found = [t for t in preferred if by_topic.get(t) in COMMAND_TYPES]
        found += sorted(t for t, m in by_topic.items() if m in COMMAND_TYPES and t not in found)
        cmd = found[0] if found else None
    else:
        cmd = None  # "": the frame clock even where commands were recorded

    instr = _absolute(instruction_topic) if instruction_topic else None
    if instr is not None and instr not in by_topic:
        if instruction_topic not in ("instruction", topics.INSTRUCTION):
            need(instr, "instruction", (STRING_TYPE,))
        # The default in a namespace: the only String topic named instruction (/robot1/instruction).
        named = [t for t, m in by_topic.items() if m == STRING_TYPE and t.endswith("/instruction")]
        instr = named[0] if len(named) == 1 else None
    elif instr is not None:
        instr = need(instr, "instruction", (STRING_TYPE,))
    marker = _absolute(episode_marker) if episode_marker else None
    if marker is not None and marker not in by_topic:
        raise DataError(f"{where}: the requested episode marker topic {marker} is not in the bag; it has: "
                        f"{_listing(by_topic)}")
    return BagChoice(tuple(cams), tuple(by_topic[c] for c in cams), joints, cmd, by_topic.get(cmd) if cmd else None,
                     instr, marker)


# ----------------------------------------------------------------------------- reading one recording
@dataclass
class _Frame:
    """A camera message, decoded once, when a step first uses it."""

    msg: object
    msgtype: str
    t_ns: int
    image: np.ndarray | None = None

    def rgb(self, where: str, topic: str) -> np.ndarray:
        if self.image is None:
            try:
                self.image = (image_to_rgb if self.msgtype == IMAGE_TYPE else compressed_to_rgb)(self.msg)
            except ImageConversionError as exc:
                raise DataError(f"{where}: the frame on {topic} at {self.t_ns} ns does not decode: {exc}") from None
            self.msg = None
        return self.image


@dataclass
class _Step:
    """One step's observation, before its action is known."""

    t_ns: int
    frames: tuple[_Frame, ...]
    state: np.ndarray
    starts_task: bool
    instruction: str


@dataclass
class _Episode:
    images: list = field(default_factory=list)
    states: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    times: list = field(default_factory=list)
    task_starts: list = field(default_factory=list)
    instructions: list = field(default_factory=list)


@dataclass
class _Recording:
    episodes: list[_Episode]
    joint_names: tuple[str, ...]  # the states' (and, except for twist, the actions') joints
    action_names: tuple[str, ...]
    skipped: int  # steps left out: before every input had spoken, or before the first marker


def _open(path: Path):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    if not path.exists():
        raise DataError(f"{path}: no such bag (expected a rosbag2 folder, or a .mcap or .db3 file)")
    if path.is_dir() and not (path / "metadata.yaml").exists():
        inner = sorted(p.name for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
        hint = f"; it holds {', '.join(inner)}: pass that file instead" if inner else ""
        raise DataError(f"{path}: not a rosbag2 bag (a folder without metadata.yaml){hint}")
    if path.suffix == ".bag":
        raise DataError(f"{path}: a ROS 1 bag; record with ROS 2 (ros2 bag record, or aura-ros record)")
    try:
        reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_JAZZY))
        reader.open()
    except _read_errors() as exc:
        raise DataError(f"{path}: cannot read the bag, it looks truncated or corrupt "
                        f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    return reader


def _positions(msg, names: list[str], latest: dict[str, float], where: str, topic: str) -> None:
    got = list(msg.name)
    pos = np.asarray(msg.position, dtype=np.float64)
    if not got:
        raise DataError(f"{where}: joint states on {topic} carry no joint names")
    if pos.size != len(got):
        raise DataError(f"{where}: joint states on {topic} name {len(got)} joints and carry {pos.size} positions")
    for n, v in zip(got, pos):
        if n not in latest and n not in names:
            names.append(n)
        latest[n] = float(v)


def _read_one(path: Path, choice_args: dict, first: BagChoice | None,
              fallback_instruction: str) -> tuple[_Recording, BagChoice]:
    where = str(path)
    reader = _open(path)
    try:
        by_topic: dict[str, str] = {}
        for c in reader.connections:
            by_topic.setdefault(c.topic, c.msgtype)
        if first is not None and choice_args["cameras"] is None:
            choice_args = {**choice_args, "cameras": list(first.cameras)}  # every recording: the same cameras
        choice = _choose(where, by_topic, **choice_args)
        wanted = {*choice.cameras, choice.joint_states, choice.commands, choice.instruction, choice.marker} - {None}
        conns = [c for c in reader.connections if c.topic in wanted]
        store = reader.typestore

        # Pass 1: the joint names (every JointState, in order of first appearance), cheap next to the frames.
        names: list[str] = []
        seen: dict[str, float] = {}
        js_conns = [c for c in conns if c.topic == choice.joint_states]
        try:
            for conn, _, raw in reader.messages(connections=js_conns):
                _positions(deserialize(store, raw, conn.msgtype), names, seen, where, conn.topic)
        except DataError:
            raise
        except _read_errors() as exc:
            raise DataError(f"{where}: reading stopped part-way, the bag looks truncated or corrupt "
                            f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None
        if not names:
            raise DataError(f"{where}: no joint states: {choice.joint_states} has no messages")

        # Pass 2: the steps.
        latest_frames: dict[str, _Frame] = {}
        latest: dict[str, float] = {}
        episodes: list[_Episode] = []
        episode: _Episode | None = None if choice.marker else _Episode()
        instruction = None  # the newest instruction text
        new_task = False  # an instruction (or a marker) arrived since the last step
        action_names: tuple[str, ...] | None = TWIST_JOINTS if choice.command_type == TWIST_TYPE else None
        state_names = names
        skipped = 0
        pending: _Step | None = None  # frame clock: the step that waits for the next one's joint state

        def close_episode() -> None:
            nonlocal pending
            pending = None
            if episode is not None and episode.actions:
                episodes.append(episode)

        def observe(t_ns: int) -> _Step | None:
            """The step whose observation is what arrived before ``t_ns`` (None: not every input yet)."""
            nonlocal new_task, skipped
            if episode is None or len(latest_frames) < len(choice.cameras) or any(n not in latest
                                                                                  for n in state_names):
                skipped += 1
                return None
            starts = new_task or not episode.actions
            new_task = False
            return _Step(t_ns, tuple(latest_frames[c] for c in choice.cameras),
                         np.array([latest[n] for n in state_names], dtype=np.float64), starts,
                         instruction if instruction is not None else fallback_instruction)

        def add(step: _Step, action: np.ndarray) -> None:
            if step.starts_task or not episode.actions:
                episode.task_starts.append(len(episode.actions))
                episode.instructions.append(step.instruction)
            imgs = tuple(f.rgb(where, topic) for f, topic in zip(step.frames, choice.cameras))
            episode.images.append(imgs[0] if len(imgs) == 1 else imgs)
            episode.states.append(step.state)
            episode.actions.append(action)
            episode.times.append(step.t_ns)

        messages = reader.messages(connections=conns)
        while True:
            try:
                item = next(messages, None)
            except _read_errors() as exc:
                raise DataError(f"{where}: reading stopped part-way, the bag looks truncated or corrupt "
                                f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None
            if item is None:
                break
            conn, t, raw = item
            topic = conn.topic
            try:
                msg = deserialize(store, raw, conn.msgtype)
            except _read_errors() as exc:
                raise DataError(f"{where}: a {conn.msgtype} message on {topic} at {t} ns does not decode "
                                f"({type(exc).__name__}: {exc})") from None
            if topic == choice.marker:
                close_episode()
                episode, new_task = _Episode(), True
            if topic == choice.instruction:
                instruction, new_task = str(msg.data), True
            if topic == choice.joint_states:
                _positions(msg, [], latest, where, topic)
            elif topic in choice.cameras:
                latest_frames[topic] = _Frame(msg, conn.msgtype, t)
                if choice.commands is None and topic == choice.cameras[0]:
                    step = observe(t)
                    if step is not None and pending is not None:
                        add(pending, step.state.copy())  # the action: this step's joint state
                    pending = step
            elif topic == choice.commands:
                if action_names is None or conn.msgtype == TRAJECTORY_TYPE:
                    action_names, state_names = _command_joints(msg, conn.msgtype, names, action_names, where, topic)
                step = observe(t)
                if step is not None:
                    add(step, _command_vector(msg, conn.msgtype, state_names, where, topic))
        close_episode()
        if choice.commands is None:
            action_names = tuple(names)
        if action_names is None:
            raise DataError(f"{where}: the command topic {choice.commands} has no messages")
        return _Recording(episodes, tuple(state_names), tuple(action_names), skipped), choice
    finally:
        reader.close()


def _command_joints(msg, msgtype: str, names: list[str], known: tuple[str, ...] | None, where: str,
                    topic: str) -> tuple[tuple[str, ...], list[str]]:
    """(action joint names, state joint names) from a command message."""
    if msgtype == TWIST_TYPE:
        return TWIST_JOINTS, names
    if msgtype == ARRAY_TYPE:
        n = len(np.asarray(msg.data))
        if n != len(names):
            raise DataError(f"{where}: mismatched joints: a Float64MultiArray on {topic} has {n} values, the joint "
                            f"states {len(names)} joints ({', '.join(names)})")
        return tuple(names), names
    commanded = list(msg.joint_names)
    if not commanded or len(set(commanded)) != len(commanded):
        raise DataError(f"{where}: mismatched joints: a JointTrajectory on {topic} names {commanded}")
    if known is not None:
        if set(commanded) != set(known):
            raise DataError(f"{where}: mismatched joints: a JointTrajectory on {topic} names {commanded}, an earlier "
                            f"one {list(known)}")
        return known, list(known)
    missing = [n for n in commanded if n not in names]
    if missing:
        raise DataError(f"{where}: mismatched joints: the commands on {topic} drive {missing}, which the joint "
                        f"states ({', '.join(names)}) do not report")
    return tuple(commanded), commanded


def _command_vector(msg, msgtype: str, names: list[str], where: str, topic: str) -> np.ndarray:
    if msgtype == TWIST_TYPE:
        return np.array([msg.twist.linear.x, msg.twist.angular.z], dtype=np.float64)
    if msgtype == ARRAY_TYPE:
        data = np.asarray(msg.data, dtype=np.float64)
        if data.size != len(names):
            raise DataError(f"{where}: mismatched joints: a Float64MultiArray on {topic} has {data.size} values, "
                            f"the joint states {len(names)} joints")
        return data
    if not msg.points:
        raise DataError(f"{where}: a JointTrajectory on {topic} has no points")
    joint_names = list(msg.joint_names)
    pos = np.asarray(msg.points[0].positions, dtype=np.float64)
    if pos.size != len(joint_names):
        raise DataError(f"{where}: mismatched joints: a JointTrajectory on {topic} names {len(joint_names)} joints "
                        f"and its first point has {pos.size} positions")
    return np.array([pos[joint_names.index(n)] for n in names], dtype=np.float64)


# ----------------------------------------------------------------------------- the API
def read_bags(paths: Sequence[str | Path] | str | Path, cameras: Sequence[str] | None = None,
              joint_states: str | None = "joint_states", commands: str | None = None,
              instruction_topic: str | None = "instruction", instruction: str | None = None,
              episode_marker: str | None = None, log: Callable[[str], None] | None = print) -> Demonstrations:
    """Read rosbag2 recordings into ``Demonstrations`` (see the module docstring for the rules).

    paths: recordings (rosbag2 folders, or .mcap / .db3 files); each is one recording.
    cameras: camera topics in frame order (None: every image topic, the sim's first).
    joint_states: the JointState topic (the default falls back to the bag's only JointState topic).
    commands: the command topic (None: /joint_trajectory, /commands or /cmd_vel, else the only
        command topic, else the frame clock; "": the frame clock).
    instruction_topic: std_msgs/String whose messages start tasks (None or absent: no tasks; the
        default falls back to the bag's only String topic named .../instruction).
    instruction: the text of tasks without an instruction message ("" when None).
    episode_marker: a topic whose every message starts an episode (None: one episode a recording).
    Topic names without a leading "/" are taken from the root namespace ("joint_states" is
    /joint_states). Raises DataError (one line) for data it cannot use.
    """
    say = log or (lambda _line: None)
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError("no bag given")
    args = dict(cameras=cameras, joint_states=joint_states, commands=commands, instruction_topic=instruction_topic,
                episode_marker=episode_marker)
    records: list[EpisodeRecord] = []
    first: BagChoice | None = None
    joint_names = action_names = None
    all_states, all_actions, intervals = [], [], []
    twist = False
    for path in paths:
        rec, choice = _read_one(path, args, first, instruction or "")
        if first is None:
            first = choice
            for k, (cam, typ) in enumerate(zip(choice.cameras, choice.camera_types)):
                say(f"bags: camera {k}: {cam} ({typ.rsplit('/', 1)[-1]})")
            say(f"bags: joint states: {choice.joint_states} ({', '.join(rec.joint_names)})")
            say(f"bags: commands: {choice.commands} ({choice.command_type.rsplit('/', 1)[-1]}), one step each"
                if choice.commands else "bags: commands: none; a step per frame of camera 0, the action is the next "
                                        "step's joint state")
            say(f"bags: instruction: {choice.instruction}" if choice.instruction else
                f"bags: instruction: no topic; every task gets {instruction or ''!r}")
            if choice.marker:
                say(f"bags: episodes start at each message on {choice.marker}")
            joint_names, action_names = rec.joint_names, rec.action_names
            twist = choice.command_type == TWIST_TYPE
        elif (rec.joint_names, rec.action_names) != (joint_names, action_names):
            raise DataError(f"{path}: mismatched joints: {', '.join(rec.action_names)} where {paths[0]} has "
                            f"{', '.join(action_names)}")
        if not rec.episodes:
            raise DataError(f"{path}: episode too short (0 steps; at least 3 are needed): no step has every camera, "
                            f"the joint states" + (" and a command" if choice.commands else " and a next frame"))
        for k, ep in enumerate(rec.episodes):
            where = f"{path}" + (f" episode {k}" if len(rec.episodes) > 1 else "")
            check_episode(where, len(ep.actions))
            states, actions = np.array(ep.states), np.array(ep.actions)
            events = np.zeros(len(actions), dtype=bool)
            events[ep.task_starts] = True
            records.append(EpisodeRecord(
                instruction=ep.instructions[0], images=ep.images, states=states, actions=actions, events=events,
                success=True, task=path.name, seed=-1, task_starts=tuple(ep.task_starts),
                task_instructions=tuple(ep.instructions)))
            all_states.append(states)
            all_actions.append(actions)
            intervals.extend(np.diff(ep.times).tolist())
        steps = sum(len(e.actions) for e in rec.episodes)
        tasks = sum(len(e.task_starts) for e in rec.episodes)
        say(f"bags: {path}: {len(rec.episodes)} episode(s), {tasks} task(s), {steps} steps"
            + (f" ({rec.skipped} left out: before every input had spoken or before the first marker)"
               if rec.skipped else ""))
    actions = np.concatenate(all_actions)
    values = actions if twist else np.concatenate([actions, np.concatenate(all_states)])
    low, high = derived_limits(values)
    positive = [d for d in intervals if d > 0]
    fps = float(1e9 / np.median(positive)) if positive else 0.0
    demos = Demonstrations(episodes=records, joint_names=tuple(action_names), low=low, high=high,
                           discrete_joints=discrete_joint_names(tuple(action_names), actions),
                           cameras=first.cameras, fps=fps, source=", ".join(str(p) for p in paths))
    say(f"bags: {len(records)} episode(s), {demos.n_steps} steps at {fps:.1f} steps/s; joints "
        f"{', '.join(demos.joint_names)}" + (f" (discrete: {', '.join(demos.discrete_joints)})"
                                             if demos.discrete_joints else ""))
    return demos
