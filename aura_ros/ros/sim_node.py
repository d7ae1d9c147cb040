"""The sim source: a simulated robot (aura_ros.sim.SimScene) behind real ROS 2 topics.

Publishes, every 1/rate_hz seconds:
- each camera of ``cameras`` (sim.scene.CAMERA_VIEWS; default ["top"]) on its topic
  (topics.SIM_CAMERA_TOPICS: ``image`` for top, ``wrist/image`` for wrist; sensor_msgs/Image,
  rgb8, all with one stamp) and, with publish_compressed, ``<topic>/compressed`` (JPEG),
- ``joint_states`` (sensor_msgs/JointState: shoulder, elbow, wrist, gripper),
- ``/diagnostics`` about once a second (counters of frames, commands and drops).
Subscribes to every command type the policy node can send, so it follows whichever is in use:
``joint_trajectory`` (trajectory_msgs/JointTrajectory: the first point), ``commands``
(std_msgs/Float64MultiArray: positions in the sim's joint order) and ``cmd_vel``
(geometry_msgs/TwistStamped: linear.x and angular.z drive the base, a differential drive).

    python -m aura_ros.ros.sim_node --ros-args -p rate_hz:=30.0 -p width:=640 -p height:=480

The scene advances by exactly 1/rate_hz per tick rather than by measured wall time, so a run is
deterministic given the seed and the commands; the timer only sets how fast that happens.

With ``task`` set (a memory task of aura_ros.sim.tasks: cue_recall, latent_fact; or a mix,
``task_mix``, with a share of recall_previous tasks, ``task_cross_task``) the node runs seeded
tasks back to back on one scene, as a robot lives: no reset, a new block handed over after each
drop, each task's instruction published on ``instruction`` as it begins (the policy node takes
every instruction message as the next task). It runs in lockstep with the policy: each command
advances the task one step and the next observation is published at once; the timer only
re-publishes the current observation (so the policy's inputs stay fresh while it thinks).
Commands stamped before the observation they would answer are dropped (a policy's hold, or a step
on an older frame). After each task the node publishes the outcome on ``task/result``
(std_msgs/String, one JSON object: task, episode (the task's index), seed, success, steps,
cue_step, recall_start_step). For a run with resets instead, ``task_reset_service`` (a
std_srvs/Trigger, e.g. /aura_policy/reset_memory) is called between tasks after ``task_pause_s``
of silence (longer than the policy's image timeout, so the policy holds instead of stepping on the
old frame); the next task starts once the reset is acknowledged.

    python -m aura_ros.ros.sim_node --ros-args -p task:=cue_recall -p task_distractors:=200

With ``task_expert`` (task mode only) the node is its own teleoperator, a robot whose
demonstrations are being recorded: every tick it publishes the current observation (the cameras
and joint_states, one stamp), then the scripted expert's action on ``joint_trajectory``
(trajectory_msgs/JointTrajectory, stamped after the observation), applies it and advances the task;
each task's instruction goes out as the task begins and its outcome on ``task/result``. A bag of
these topics is what a teleoperated robot's bag holds, and reads back (aura_ros.data.bags) into
the episode record that ``sim.tasks.expert_stream`` makes in process. Commands from others are not
subscribed to. The cameras and joint states are then published reliably (qos.DEMONSTRATION), so a
recorder that subscribes reliably gets every step.

``wait_for_subscribers`` (N > 0): nothing is published and nothing steps until every camera (raw or
compressed), joint_states and, in task mode, instruction, task/result (and joint_trajectory in
expert mode) has at least N subscribers: a recorder started first then misses no step.

    python -m aura_ros.ros.sim_node --ros-args -p task:=cue_recall -p task_expert:=true \
        -p "cameras:=[top, wrist]" -p wait_for_subscribers:=1

All callbacks share the node's default (mutually exclusive) callback group, so the scene is only
ever touched from one callback at a time and needs no lock.
"""
from __future__ import annotations

import json
import math
import time
from collections import Counter

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import TwistStamped
from rclpy.duration import Duration
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from aura_ros.core import topics
from aura_ros.ros import qos
from aura_ros.ros.image_conversion import rgb_to_compressed_msg, rgb_to_image_msg
from aura_ros.ros.params import ParamTable, Spec
from aura_ros.ros.signals import ignore_further_signals, stop_on_first_signal
from aura_ros.sim.scene import CAMERA_VIEWS, JOINT_NAMES, SimScene

# A command-type warning is logged at most this often; every drop is still counted.
WARN_THROTTLE_S = 5.0
DIAGNOSTICS_PERIOD_S = 1.0
WAIT_LOG_PERIOD_S = 2.0  # while waiting for subscribers, say which topics still lack them this often


SIM_PARAMS = ParamTable((
    Spec("rate_hz", "rate_hz", 10.0, "Publish rate of image and joint_states; the scene advances 1/rate_hz per tick",
         live=True, range=(0.1, 1000.0)),
    Spec("width", "width", 96, "Image width in pixels", range=(16, 7680)),
    Spec("height", "height", 96, "Image height in pixels", range=(16, 4320)),
    Spec("publish_compressed", "publish_compressed", False, "Also publish image/compressed (JPEG)", live=True),
    Spec("jpeg_quality", "jpeg_quality", 90, "JPEG quality of image/compressed", live=True, range=(1, 100)),
    Spec("seed", "seed", 0, "Seed of the scene layout and of the periodic scripted events", range=(0, 2**31 - 1)),
    Spec("event_period_steps", "event_period_steps", 50,
         "A scripted event (object appears, changes colour, gripper closes/opens, object vanishes) every this many "
         "steps; 0 disables them", range=(0, 1_000_000)),
    Spec("cmd_vel_timeout_s", "cmd_vel_timeout_s", 0.5, "The base stops when no cmd_vel arrived for this long",
         live=True, range=(0.01, 60.0)),
    Spec("frame_id", "frame_id", "aura_sim_camera", "frame_id of the image headers"),
    Spec("cameras", "cameras", ["top"],
         "Camera views published, each on its topic ("
         + ", ".join(f"{v} on {t}" for v, t in topics.SIM_CAMERA_TOPICS.items()) + ")"),
    Spec("wait_for_subscribers", "wait_for_subscribers", 0,
         "Publish and step only once every camera, joint_states (and the task topics) has at least this many "
         "subscribers, e.g. a recorder started first; 0 = at once", range=(0, 1000)),
    Spec("task", "task", "", "Memory tasks (cue_recall, latent_fact) run in lockstep with the commands, one after "
         "another on one scene with no reset (the robot's endless episode); '' = the free scene"),
    Spec("task_distractors", "task_distractors", 200, "Distractor steps D of each task",
         range=(0, 10_000_000)),
    Spec("task_mix", "task_mix", "",
         "Tasks drawn per task from task:D[:weight],... (e.g. cue_recall:200,latent_fact:50); '' = task and "
         "task_distractors alone"),
    Spec("task_cross_task", "task_cross_task", 0.0,
         "Share of tasks that ask for the bin that lit up in the previous task (recall_previous)", range=(0.0, 1.0)),
    Spec("task_reset_service", "task_reset_service", "",
         "std_srvs/Trigger called between tasks (the policy's reset_memory), for a run with resets; '' = none, "
         "the memory goes on from task to task"),
    Spec("task_pause_s", "task_pause_s", 1.5,
         "With task_reset_service: pause between tasks, longer than the policy's image timeout, so it holds",
         range=(0.0, 60.0)),
    Spec("task_expert", "task_expert", False,
         "Task mode: the scripted expert teleoperates, one step a tick (its action published on joint_trajectory "
         "after the observation); commands from others are not subscribed to"),
), "SimSettings")
RESET_TIMEOUT_S = 5.0  # a reset service that does not answer: go on, warn


class SimSourceNode(Node):
    """The simulated robot as a ROS node (see the module docstring for its topics)."""

    def __init__(self, node_name: str = "aura_sim", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        SIM_PARAMS.declare(self)
        p = SIM_PARAMS.read(self)
        self._rate_hz = float(p.rate_hz)
        self._publish_compressed = bool(p.publish_compressed)
        self._jpeg_quality = int(p.jpeg_quality)
        self._cmd_vel_timeout_s = float(p.cmd_vel_timeout_s)
        self._frame_id = str(p.frame_id)
        self._seed = int(p.seed)
        self._task_name = str(p.task)
        self._task_distractors = int(p.task_distractors)
        self._task_pause_s = float(p.task_pause_s)
        self._cameras = tuple(str(c) for c in p.cameras)
        if not self._cameras or any(c not in CAMERA_VIEWS for c in self._cameras) \
                or len(set(self._cameras)) != len(self._cameras):
            raise ParameterException(f"cameras must be distinct views among {list(CAMERA_VIEWS)}, got "
                                     f"{list(self._cameras)}", ["cameras"])
        self._expert = bool(p.task_expert)
        if self._expert and not self._task_name:
            raise ParameterException("task_expert needs a task (task:=cue_recall or latent_fact)", ["task_expert"])
        if self._expert and p.task_reset_service:
            raise ParameterException("task_expert runs the tasks back to back; task_reset_service is for a policy "
                                     "that is reset between tasks", ["task_expert", "task_reset_service"])
        self._wait_for = int(p.wait_for_subscribers)
        self._last_wait_log = -math.inf
        self.task = None  # the running MemoryTask in task mode
        self.task_results: list[dict] = []
        self.stream = None  # the endless TaskStream in task mode
        if self._task_name:
            from aura_ros.sim.tasks import EPISODE_TASKS, TaskStream, iter_specs, parse_mix

            if self._task_name not in EPISODE_TASKS:
                raise ParameterException(f"task must be one of {sorted(EPISODE_TASKS)} or '', got "
                                         f"{self._task_name!r}", ["task"])
            mix = ((self._task_name, self._task_distractors),)
            if p.task_mix:
                try:
                    mix = parse_mix(str(p.task_mix))
                except ValueError as exc:
                    raise ParameterException(f"task_mix: {exc}", ["task_mix"]) from None
            self.stream = TaskStream(self._seed, iter_specs(self._seed, mix, float(p.task_cross_task)),
                                     cameras=self._cameras)
            self._begin_task()
        else:
            self.scene = SimScene(width=int(p.width), height=int(p.height), seed=self._seed,
                                  event_period_steps=int(p.event_period_steps))

        self.counters: Counter[str] = Counter()
        self.last_drop = ""
        self._dropped_reported = 0
        self._last_warn: dict[str, float] = {}
        self._pending_targets: dict[str, float] | None = None
        self._twist: tuple[float, float] | None = None
        self._twist_time = -math.inf

        # The expert is a demonstration being recorded: every frame and joint state reaches a reliable reader.
        self._sensor_qos = qos.DEMONSTRATION if self._expert else qos.SENSOR
        self._image_pubs = {view: self.create_publisher(Image, topics.SIM_CAMERA_TOPICS[view], self._sensor_qos)
                            for view in self._cameras}
        self._compressed_pubs: dict = {}
        self._set_compressed(self._publish_compressed)
        self._joint_pub = self.create_publisher(JointState, topics.REL_JOINT_STATES, self._sensor_qos)
        self._diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, qos.DIAGNOSTICS)
        self._expert_pub = None
        if self._expert:
            self._expert_pub = self.create_publisher(JointTrajectory, topics.REL_COMMANDS["joint_trajectory"],
                                                     qos.COMMANDS)
        else:
            self.create_subscription(JointTrajectory, topics.REL_COMMANDS["joint_trajectory"], self._on_trajectory,
                                     qos.COMMANDS)
            self.create_subscription(Float64MultiArray, topics.REL_COMMANDS["float64_multi_array"],
                                     self._on_commands, qos.COMMANDS)
            self.create_subscription(TwistStamped, topics.REL_COMMANDS["twist"], self._on_cmd_vel, qos.COMMANDS)
        self._timer = self.create_timer(1.0 / self._rate_hz, self._tick)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        # Task mode: the outcome of each episode, the episode's instruction, the reset between episodes.
        self._result_pub = self._instruction_pub = self._reset_client = None
        if self.task is not None:
            self._result_pub = self.create_publisher(String, "task/result", qos.STATS)
            self._instruction_pub = self.create_publisher(String, "instruction", qos.INSTRUCTION)
            if not self._wait_for:
                self._publish_instruction()  # else once the subscribers are there
            if p.task_reset_service:
                self._reset_client = self.create_client(Trigger, str(p.task_reset_service))
        # Ranges and read-only are enforced by rclpy itself; this applies the live ones.
        self.add_post_set_parameters_callback(self._apply_parameters)
        cams = "" if self._cameras == ("top",) else \
            " (" + ", ".join(f"{v} on {topics.SIM_CAMERA_TOPICS[v]}" for v in self._cameras) + ")"
        waiting = f"; waiting for {self._wait_for} subscriber(s) on every topic" if self._wait_for else ""
        compressed = ", " + ", ".join(topics.SIM_CAMERA_TOPICS[v] + topics.COMPRESSED_SUFFIX for v in self._cameras) \
            + " on"
        if self.task is not None:
            pace = (f"the scripted expert teleoperates at {self._rate_hz:g} steps/s (joint_trajectory)" if self._expert
                    else f"lockstep with the commands, observations re-sent at {self._rate_hz:g} Hz")
            self.get_logger().info(
                f"sim source: task {self._task_name} (D = {self._task_distractors}), {self.scene.width}x"
                f"{self.scene.height} rgb8{cams}, {pace}, seeds from {self._seed}{waiting}")
            return
        self.get_logger().info(
            f"sim source: {self.scene.width}x{self.scene.height} rgb8{cams} at {self._rate_hz:g} Hz, joints "
            f"{list(JOINT_NAMES)}, seed {self.scene.seed}, an event every {self.scene.event_period_steps} steps"
            f"{compressed if self._publish_compressed else ''}{waiting}")

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
        if enabled and not self._compressed_pubs:
            self._compressed_pubs = {
                view: self.create_publisher(CompressedImage, topics.SIM_CAMERA_TOPICS[view] + topics.COMPRESSED_SUFFIX,
                                            self._sensor_qos) for view in self._cameras}
        elif not enabled and self._compressed_pubs:
            for pub in self._compressed_pubs.values():
                self.destroy_publisher(pub)
            self._compressed_pubs = {}

    def _publish_frames(self, frames, stamp) -> None:
        """One frame per camera (a single frame: the one camera), each on its topic, one stamp."""
        if not isinstance(frames, tuple):
            frames = (frames,)
        for view, frame in zip(self._cameras, frames):
            self._image_pubs[view].publish(rgb_to_image_msg(frame, "rgb8", self._frame_id, stamp))
            if view in self._compressed_pubs:
                self._compressed_pubs[view].publish(rgb_to_compressed_msg(frame, "jpeg", self._jpeg_quality,
                                                                          self._frame_id, stamp))

    def _subscribers_ready(self) -> bool:
        """wait_for_subscribers: whether every topic has its subscribers (logs the missing ones now and then)."""
        counts = {self._image_pubs[v].topic_name: self._image_pubs[v].get_subscription_count()
                  + (self._compressed_pubs[v].get_subscription_count() if v in self._compressed_pubs else 0)
                  for v in self._cameras}
        others = [self._joint_pub, self._instruction_pub, self._result_pub, self._expert_pub]
        counts.update({pub.topic_name: pub.get_subscription_count() for pub in others if pub is not None})
        missing = [t for t, n in counts.items() if n < self._wait_for]
        if not missing:
            return True
        now = time.monotonic()
        if now - self._last_wait_log >= WAIT_LOG_PERIOD_S:
            self._last_wait_log = now
            self.get_logger().info(f"waiting for {self._wait_for} subscriber(s) on {', '.join(missing)}")
        return False

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
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self._accept("joint_trajectory", dict(zip(names, positions.tolist())), stamp)

    def _on_commands(self, msg: Float64MultiArray) -> None:
        data = np.asarray(msg.data, dtype=np.float64)
        if data.size != len(JOINT_NAMES):
            return self._drop("commands", f"{data.size} values, expected {len(JOINT_NAMES)} "
                                          f"({', '.join(JOINT_NAMES)})")
        if not np.all(np.isfinite(data)):
            return self._drop("commands", "NaN or infinite value")
        self._accept("commands", dict(zip(JOINT_NAMES, data.tolist())))

    def _accept(self, kind: str, targets: dict[str, float], stamp: float | None = None) -> None:
        if self.task is not None:
            return self._task_command(kind, targets, stamp)
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
        if self._wait_for:
            if not self._subscribers_ready():
                return
            self._wait_for = 0
            self.get_logger().info("every topic has its subscribers: starting")
            if self.task is not None:
                self._publish_instruction()
        if self._expert:
            return self._expert_tick()
        if self.task is not None:
            return self._task_tick()
        targets, self._pending_targets = self._pending_targets, None
        # Like a diff-drive controller: the last velocity holds until it times out, then the base stops.
        fresh = time.monotonic() - self._twist_time <= self._cmd_vel_timeout_s
        fired = self.scene.step(1.0 / self._rate_hz, position_targets=targets,
                                base_velocity=self._twist if fresh else None)
        for event in fired:
            self.counters["events"] += 1
            self.get_logger().info(f"step {event.step}: {event.kind} {event.detail}")
        stamp = self.get_clock().now().to_msg()
        self._publish_frames(tuple(self.scene.render_view(view) for view in self._cameras), stamp)
        names, positions, velocities = self.scene.joint_state()
        state = JointState(name=names, position=positions.tolist(), velocity=velocities.tolist())
        state.header.stamp = stamp
        self._joint_pub.publish(state)
        self.counters["steps"] += 1

    # ------------------------------------------------------------------ task mode
    def _begin_task(self) -> None:
        """The stream's current task becomes the running one (same scene: the arm stays where it is)."""
        self.task = self.stream.task
        self.episode = self.stream.index
        self.scene = self.task.scene
        _, q, _ = self.scene.joint_state()
        self._task_targets = np.asarray(q, dtype=np.float64)  # joints a partial command leaves as they are
        self._between_episodes = False
        self._obs_stamp = -math.inf
        self._obs = None

    def _publish_instruction(self) -> None:
        """Each task's instruction, the same text too: for the policy a message is the next task."""
        self._instruction_pub.publish(String(data=self.task.instruction))

    def _publish_observation(self, fresh: bool) -> None:
        """Publish the current task step's frame and joint state; ``fresh``: a new step (new stamp floor)."""
        if fresh or self._obs is None:
            # A re-sent observation keeps its stamp (it is the same observation): a new stamp means a new step.
            self._obs = self.task.observe()
            now = self.get_clock().now()
            self._obs_stamp_msg = now.to_msg()
            self._obs_stamp = now.nanoseconds * 1e-9
            self._obs_stamp_ns = now.nanoseconds
        stamp = self._obs_stamp_msg
        self._publish_frames(self._obs.image, stamp)
        q = np.asarray(self._obs.joint_state, dtype=np.float64)
        state = JointState(name=list(JOINT_NAMES), position=q.tolist(), velocity=[0.0] * len(q))
        state.header.stamp = stamp
        self._joint_pub.publish(state)
        self.counters["steps" if fresh else "republished"] += 1

    def _task_tick(self) -> None:
        if not self._between_episodes:
            # The policy is still thinking about this step: keep its inputs fresh (the same frame).
            return self._publish_observation(fresh=self._obs is None)
        # Between episodes: first quiet for task_pause_s, so the policy's frame goes stale and it holds
        # (its steps on the old episode's last frame happen before the reset, in the old memory);
        # then the reset; the next episode starts once it is acknowledged.
        now = time.monotonic()
        if now - self._pause_start < self._task_pause_s:
            return
        if self._reset_client is not None and self._reset_future is None:
            if self._reset_client.service_is_ready():
                self._reset_future = self._reset_client.call_async(Trigger.Request())
                self._reset_sent = now
                return
            self.get_logger().warn(f"reset service {self._reset_client.srv_name} not available; "
                                   f"the policy keeps its memory into the next episode")
        elif self._reset_future is not None and not self._reset_future.done():
            if now - self._reset_sent <= RESET_TIMEOUT_S:
                return
            self.get_logger().warn(f"no answer from the reset service after {RESET_TIMEOUT_S:g} s; next episode anyway")
        self._begin_task()
        self._publish_instruction()
        self._publish_observation(fresh=True)

    def _expert_tick(self) -> None:
        """One teleoperated step: the observation, then the expert's command on it, applied."""
        self._publish_observation(fresh=True)
        action = np.asarray(self.task.expert_action(), dtype=np.float64)
        now = self.get_clock().now().nanoseconds
        stamp_ns = max(now, self._obs_stamp_ns + 1)  # after the observation it answers
        msg = JointTrajectory(joint_names=list(JOINT_NAMES), points=[JointTrajectoryPoint(
            positions=[float(v) for v in action], time_from_start=Duration(seconds=1.0 / self._rate_hz).to_msg())])
        msg.header.stamp = Time(nanoseconds=stamp_ns).to_msg()
        self._expert_pub.publish(msg)
        self.counters["expert_commands"] += 1
        task = self.task
        self._task_targets = action.copy()
        self.stream.apply(action)
        if task.done:
            self._end_episode(task)

    def _task_command(self, kind: str, targets: dict[str, float], stamp: float | None) -> None:
        if self._between_episodes or self._obs is None:
            self.counters["commands_between_episodes"] += 1
            return
        if stamp is not None and stamp < self._obs_stamp:
            # Computed before this step's observation was out: a hold, or a step on an older frame.
            self.counters["commands_older_than_observation"] += 1
            return
        self.counters[f"accepted_{kind}"] += 1
        for name, value in targets.items():
            self._task_targets[JOINT_NAMES.index(name)] = value
        task = self.task
        self.stream.apply(self._task_targets.copy())
        if task.done:
            return self._end_episode(task)
        self._publish_observation(fresh=True)

    def _end_episode(self, t) -> None:
        result = {"task": t.name, "episode": self.episode, "seed": int(t.seed),
                  "success": bool(t.success), "steps": int(t.step_index), "distractors": int(t.distractor_steps),
                  "cue_step": int(t.cue_step), "recall_start_step": int(t.recall_start_step),
                  "n_choices": int(t.n_choices), "reset": self._reset_client is not None}
        self.task_results.append(result)
        self.counters["episodes"] += 1
        self.counters["successes"] += int(bool(t.success))
        self._result_pub.publish(String(data=json.dumps(result)))
        self.get_logger().info(f"task {self.episode} ({t.name}, seed {result['seed']}): "
                               f"{'success' if t.success else 'failure'} after {t.step_index} steps")
        if self._reset_client is None:
            # The endless run: the next task starts on the same scene with its instruction; its
            # first frame goes out on the next tick, after the instruction.
            self._begin_task()
            self._publish_instruction()
            return
        self._between_episodes = True
        self._pause_start = time.monotonic()
        self._reset_future = None

    def _publish_diagnostics(self) -> None:
        dropped = sum(v for k, v in self.counters.items() if k.startswith("dropped_"))
        # WARN while drops keep happening (since the last report), OK again once they stop.
        recent, self._dropped_reported = dropped - self._dropped_reported, dropped
        x, y, yaw = self.scene.base_pose
        values = {**{k: str(v) for k, v in sorted(self.counters.items())}, "dropped_total": str(dropped),
                  "last_drop": self.last_drop, "base_pose": f"{x:.3f} {y:.3f} {yaw:.3f}",
                  "held_object": self.scene.held_object or "", "objects": str(len(self.scene.objects))}
        if self.task is not None:
            values.update({"task": self._task_name, "episode": str(self.episode),
                           "task_step": str(self.task.step_index), "task_total_steps": str(self.task.total_steps)})
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
    stop_on_first_signal()
    rclpy.init(args=args)
    node = None
    try:
        node = SimSourceNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ParameterException as exc:  # a value out of range or of the wrong type on the command line
        raise SystemExit(f"aura_sim: bad parameter: {exc}") from None
    except Exception:
        # A signal shuts the context down while a timer callback publishes (the expert ticks up to
        # hundreds of times a second): that publish fails on the dead context and spin() raises it.
        # The node is going down as asked; anything else is a real fault.
        if rclpy.ok():
            raise
    finally:
        ignore_further_signals()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
