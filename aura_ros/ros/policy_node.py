"""The aura_ros policy node: camera + joint states in, commands and memory statistics out.

A managed (lifecycle) node that comes up active on its own (``autostart``): configure loads the
policy and creates the topics and services, activate starts the control timer, deactivate stops
it, cleanup destroys what configure created, in mirror order. The node translates messages,
schedules the control loop (aura_ros.ros.control) and reports; input checks are pure functions
(aura_ros.ros.guards), parameters come from one table (aura_ros.ros.params).
"""
from __future__ import annotations

import gc
import math
import sys
import threading
import time

import numpy as np
import psutil
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import InvalidHandle, ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from aura_ros.core import topics
from aura_ros.core.snapshots import SnapshotError, SnapshotMissing
from aura_ros.memory import MIB, UtilityWeights
from aura_ros.ros import guards, qos
from aura_ros.ros.control import ControlLoop, InputStore, gate_config
from aura_ros.ros.diagnostics import Health, diagnostics_msg
from aura_ros.ros.image_conversion import (
    ImageConversionError,
    compressed_to_rgb,
    image_to_rgb,
    prepare_for_model,
    rgb_to_image_msg,
)
from aura_ros.ros.messages import command_msg, command_type, gate_msg, memory_msg
from aura_ros.ros.params import POLICY_PARAMS, check_action_limits, check_camera_topics, param_value
from aura_ros.ros.signals import ignore_further_signals, stop_on_first_signal

# ~/memory_map (a picture of what the cache holds) is published this often, and on each
# ~/get_memory_map call.
MEMORY_MAP_PERIOD_S = 1.0
# The largest frame side the model is handed (prepare_for_model's default max_side): budget checks
# count a step with a square frame of this side.
MAX_FRAME_SIDE = 512
# A fault that repeats every tick or period (a failing step, an unwritable snapshot path) is logged
# at most once in this many seconds; counters and /diagnostics carry every occurrence.
LOG_THROTTLE_S = 5.0


class SnapshotKept(RuntimeError):
    """An automatic snapshot was not written over a snapshot that was refused at start."""


class StartupError(RuntimeError):
    """Autostart could not configure the node (the reason was logged): the process exits."""


class PolicyNode(LifecycleNode):
    def __init__(self, node_name: str = "aura_policy", **kwargs):
        super().__init__(node_name, **kwargs)
        POLICY_PARAMS.declare(self)
        self.settings = POLICY_PARAMS.read(self)
        self.health = Health()
        self._process = psutil.Process()
        self._warned: dict[str, float] = {}
        self._instruction_repeats = guards.RepeatFilter()
        self._loop_setting = threading.local()  # set while the control loop itself sets a parameter
        # Created in on_configure, destroyed in on_cleanup / on_shutdown (mirror order).
        self.policy = None
        self.loop: ControlLoop | None = None
        self._cmd_pub = None
        self._memory_pub = None
        self._gate_pub = None
        self._map_pub = None
        self._map_timer = None
        self._own_subscriptions: list = []
        self._own_services: list = []
        self._snapshot_timer = None
        self._kept_snapshot = ""  # why the snapshot at the path was refused at start; "" = none kept
        # Created in on_activate, destroyed in on_deactivate.
        self._control_timer = None
        # For the node's whole life: diagnostics (also while unconfigured or inactive).
        self._services_group = MutuallyExclusiveCallbackGroup()
        self._diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, qos.DIAGNOSTICS)
        self._diag_timer = self.create_timer(self.settings.diagnostics_period_s, self._publish_diagnostics)
        self.add_pre_set_parameters_callback(POLICY_PARAMS.whole_numbers_as_doubles)
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        if self.settings.autostart:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise StartupError(self.health.last_error or "configure failed (see the log above)")
            self.trigger_activate()

    # ------------------------------------------------------------------ lifecycle
    def _transition(self, state: str) -> None:
        self.health.lifecycle = state
        self._log().info(f"lifecycle: {state}")

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        s = self.settings = POLICY_PARAMS.read(self)
        reason = check_action_limits(s.joint_names, s.low, s.high) or check_camera_topics(s.camera_topics) or next(
            filter(None, (POLICY_PARAMS.check(spec.name, getattr(s, spec.field)) for spec in POLICY_PARAMS.specs)),
            None)
        if reason:
            return self._fail_configure(reason)
        try:
            self.policy = self._load_policy(s)
            self._reserve_widest_step(s)
        except Exception as exc:  # a missing model, a bad folder, a budget too small: report, do not crash
            self.policy = None
            return self._fail_configure(f"could not load the policy: {exc}")
        reason = self._budget_refusal(s.budget_mb)
        if reason:
            self.policy = None
            return self._fail_configure(reason)
        self._cmd_pub = self.create_lifecycle_publisher(command_type(s.action_type), topics.REL_COMMANDS[s.action_type],
                                                        qos.COMMANDS)
        self._memory_pub = self.create_lifecycle_publisher(self._msg("MemoryBudget"), topics.REL_MEMORY, qos.STATS)
        self._gate_pub = self.create_lifecycle_publisher(self._msg("GateStats"), topics.REL_GATE_STATS, qos.STATS)
        self._map_pub = self.create_lifecycle_publisher(Image, topics.REL_MEMORY_MAP, qos.STATS)
        self.loop = ControlLoop(self.policy, s, self.health, self, POLICY_PARAMS.apply,
                                on_budget_changed=self._budget_changed, on_instruction=self._instruction_pinned,
                                alive=self.context.ok, store=InputStore(len(s.camera_topics)))
        cameras = []
        for k, topic in enumerate(s.camera_topics):
            # Each subscription reaches its publishers wherever they are: one that is not wanted
            # (raw frames of a camera on another host) would pull every frame over the link.
            if s.image_transport in ("both", "raw"):
                cameras.append(self.create_subscription(Image, topic, lambda msg, k=k: self._on_image(msg, k),
                                                        qos.SENSOR))
            if s.image_transport in ("both", "compressed"):
                cameras.append(self.create_subscription(CompressedImage, topic + topics.COMPRESSED_SUFFIX,
                                                        lambda msg, k=k: self._on_compressed(msg, k), qos.SENSOR))
        self._own_subscriptions = cameras + [
            self.create_subscription(JointState, topics.REL_JOINT_STATES, self._on_joint_state, qos.SENSOR),
            # A volatile publisher (`ros2 topic pub`) is incompatible with the latched reader by
            # design and reaches the volatile one: no warning for that expected mismatch.
            self.create_subscription(String, topics.REL_INSTRUCTION, self._on_instruction, qos.INSTRUCTION,
                                     event_callbacks=SubscriptionEventCallbacks(incompatible_qos=lambda event: None)),
            self.create_subscription(String, topics.REL_INSTRUCTION, self._on_instruction, qos.INSTRUCTION_VOLATILE),
        ]
        g = self._services_group
        self._own_services = [
            self.create_service(Trigger, "~/reset_memory", self._srv_reset_memory, qos_profile=qos.SERVICES,
                                callback_group=g),
            self.create_service(self._srv("GetMemoryMap"), "~/get_memory_map", self._srv_memory_map,
                                qos_profile=qos.SERVICES, callback_group=g),
            self.create_service(Trigger, "~/save_memory", self._srv_save_memory, qos_profile=qos.SERVICES,
                                callback_group=g),
            self.create_service(Trigger, "~/load_memory", self._srv_load_memory, qos_profile=qos.SERVICES,
                                callback_group=g),
        ]
        self._kept_snapshot = self.health.snapshot_problem = ""
        if s.snapshot_path and s.load_on_start:
            self.loop.run(self._load_snapshot_at_start)
        self._restart_snapshot_timer()
        self._map_timer = self.create_timer(MEMORY_MAP_PERIOD_S, lambda: self.loop.submit(self._publish_memory_map))
        self._transition("inactive")
        self._log().info(
            f"policy ready: {s.model_path or 'embedded default model'}, budget {s.budget_mb:.3f} MiB "
            f"({self.policy.stats().capacity_tokens} tokens), action {s.action_type} {list(s.joint_names)}")
        return TransitionCallbackReturn.SUCCESS

    def _fail_configure(self, reason: str) -> TransitionCallbackReturn:
        self._log().error(reason)
        self.health.model_error(reason)
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.loop.drop_queue()  # a chunk that came back during the pause
        self._control_timer = self.create_timer(1.0 / self.settings.rate_hz, self.loop.tick)
        self._transition("active")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_control_timer()
        if self.loop is not None:
            self.loop.drop_queue()  # a plan from before the pause must not run after it
        self._transition("inactive")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release(snapshot=False)
        self._transition("unconfigured")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release(snapshot=True)
        self._transition("finalized")
        return TransitionCallbackReturn.SUCCESS

    def _destroy_control_timer(self) -> None:
        if self._control_timer is not None:
            self.destroy_timer(self._control_timer)
            self._control_timer = None

    def _release(self, snapshot: bool) -> None:
        """Undo on_configure (and on_activate) in mirror order; safe to call twice."""
        self._destroy_control_timer()
        if self._map_timer is not None:
            self.destroy_timer(self._map_timer)
            self._map_timer = None
        if self._snapshot_timer is not None:
            self.destroy_timer(self._snapshot_timer)
            self._snapshot_timer = None
        for srv in self._own_services:
            self.destroy_service(srv)
        self._own_services = []
        for sub in self._own_subscriptions:
            self.destroy_subscription(sub)
        self._own_subscriptions = []
        if self.loop is not None:
            self.loop.stop()  # the step in flight finishes: no half-written state
            if snapshot and self.settings.snapshot_path and self.settings.snapshot_on_shutdown:
                try:  # here on the calling thread: the worker has ended
                    self._save_snapshot(automatic=True)
                except Exception as exc:  # an unwritable path must not skip the rest of the teardown
                    self._log().error(f"final snapshot not written: {exc}")
            self.loop = None
        for pub in (self._map_pub, self._gate_pub, self._memory_pub, self._cmd_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._cmd_pub = self._memory_pub = self._gate_pub = self._map_pub = None
        self.policy = None
        gc.collect()

    @staticmethod
    def _msg(name: str):
        from aura_ros import msg

        return getattr(msg, name)

    @staticmethod
    def _srv(name: str):
        from aura_ros import srv

        return getattr(srv, name)

    def _load_policy(self, s):
        from aura_ros.core.config import PolicyConfig
        from aura_ros.core.registry import backend_options, make_policy

        config = PolicyConfig(
            joint_names=tuple(s.joint_names), low=tuple(s.low), high=tuple(s.high),
            discrete_joints=tuple(s.discrete_joints), n_bins=s.n_bins, chunk=s.chunk, n_cameras=len(s.camera_topics),
            budget_bytes=int(s.budget_mb * MIB), recent_steps=s.recent_steps, eviction=s.eviction,
            block_fraction=s.block_fraction, gate=gate_config(s), clear_memory_on_instruction=s.clear_on_instruction,
            max_context_steps=s.max_context_steps,
            utility=UtilityWeights(recent_share=s.recent_share, task_horizon=s.task_horizon,
                                   supersede=s.supersede))
        instruction = s.instruction[: s.instruction_max_chars]
        # Every backend's loading parameters; the chosen backend takes the ones it knows
        # (its package's OPTIONS), so the node names no backend.
        options = backend_options(s.model_path or None, backend=s.backend, strict=False, kv_type=s.kv_type,
                                  mmproj=s.mmproj or None, threads=s.torch_threads, dtype=s.dtype, device=s.device,
                                  trust_remote_code=s.trust_remote_code,
                                  torch_threads=s.torch_threads if s.torch_threads > 0 else None)
        # An explicit backend is among the options already (backend_options carries it).
        return make_policy(s.model_path or None, config, instruction=instruction, **options)

    def _reserve_widest_step(self, s) -> None:
        """Make every budget check count the largest step the inputs can produce: the joint states
        with the widest text (values are clipped to these limits, see _on_joint_state) beside the
        largest frame prepare_for_model hands over. A check that counted only the steps seen so
        far accepted budgets in which the first step, or a later one with more digits, failed
        every tick."""
        names = [n for n in s.state_joint_names if n] or list(s.joint_names)
        if tuple(names) == tuple(s.joint_names):
            low, high = list(s.low), list(s.high)
        else:
            low, high = [-s.state_limit] * len(names), [s.state_limit] * len(names)
        frame = np.zeros((MAX_FRAME_SIDE, MAX_FRAME_SIDE, 3), dtype=np.uint8)
        if len(s.camera_topics) > 1:
            frame = (frame,) * len(s.camera_topics)
        for state in guards.widest_states(low, high, decimals=self.policy.config.state_decimals):
            self.policy.reserve_step(frame, state)

    def _budget_refusal(self, budget_mb: float) -> str | None:
        """Why the loaded policy cannot run at ``budget_mb``, with the smallest budget that it can."""
        reason = self.policy.budget_error(int(budget_mb * MIB))
        if not reason:
            return None
        return (f"memory.vram_budget_mb={budget_mb:g}: {reason}; raise memory.vram_budget_mb to at least "
                f"{_smallest_budget_mb(self.policy):.4f}")

    # ------------------------------------------------------------------ Outputs (for the control loop)
    def command(self, joint_names, positions) -> None:
        if self._cmd_pub is not None:
            s = self.settings
            self._cmd_pub.publish(command_msg(s.action_type, tuple(joint_names), positions, self._header(),
                                              s.time_from_start_s))

    def stats(self, action) -> None:
        action.stats.process_rss_bytes = self._process.memory_info().rss
        header = self._header()
        if self._memory_pub is not None:
            self._memory_pub.publish(memory_msg(action.stats, header))
        if self._gate_pub is not None:
            self._gate_pub.publish(gate_msg(action.stats, header))

    def info(self, text: str) -> None:
        self._log().info(text)

    def error(self, text: str) -> None:
        self._log().error(text)

    def step_error(self, text: str) -> None:
        self._log().error(text, throttle_duration_sec=LOG_THROTTLE_S)

    def warn(self, key: str, text: str, period: float = 5.0) -> None:
        # Throttled per key (rclpy's throttle_duration_sec throttles per call site, and one call
        # site here reports many different drops).
        now = time.monotonic()
        if now - self._warned.get(key, -float("inf")) >= period:
            self._warned[key] = now
            self._log().warning(text)

    def _log(self):
        # After a signal has shut the context down, the node's logger can no longer publish to
        # /rosout (rcl then prints "publisher's context is invalid" for every line): the teardown's
        # lines (the final snapshot) go to a logger of no node, to the console and log file only.
        return self.get_logger() if self.context.ok() else rclpy.logging.get_logger("aura_ros.shutdown")

    def _header(self) -> Header:
        return Header(stamp=self.get_clock().now().to_msg(), frame_id="")

    # ------------------------------------------------------------------ parameters
    def _validate_parameters(self, params) -> SetParametersResult:
        if getattr(self._loop_setting, "active", False):
            return SetParametersResult(successful=True)  # the loop reports what it applied
        for p in params:
            value = param_value(p)
            reason = POLICY_PARAMS.check(p.name, value)
            if not reason and p.name == "memory.vram_budget_mb" and self.policy is not None:
                reason = self._budget_refusal(value) or _allocation_error(value, self.policy.free_memory_bytes(),
                                                                       self.settings.device)
            if not reason and p.name == "instruction" and self.policy is not None:
                reason = self._instruction_refusal(str(value))
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        names = {p.name: param_value(p) for p in params}
        # The input callbacks see new settings at once; the worker applies what touches the policy.
        self.settings = POLICY_PARAMS.read(self)
        if self.loop is not None:
            for name, value in names.items():
                if self._setting_echo(name):
                    continue
                if name == "instruction":
                    self.loop.store.put_instruction(str(value).strip()[: self.settings.instruction_max_chars])
                    # The topic's next message is the operator's next command, even if its text
                    # is the one the topic sent before the parameter.
                    self._instruction_repeats.forget()
                else:
                    self.loop.store.put_change(name, value)
            self.loop.store.stamps.tolerance = self.settings.stamp_tolerance_s
        if "control.rate_hz" in names and self._control_timer is not None:
            self._destroy_control_timer()
            self._control_timer = self.create_timer(1.0 / self.settings.rate_hz, self.loop.tick)
        if "memory.snapshot_period_s" in names:
            self._restart_snapshot_timer()
        if "diagnostics.period_s" in names:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(self.settings.diagnostics_period_s, self._publish_diagnostics)

    def _setting_echo(self, name: str) -> bool:
        """A value the loop itself set (a budget shrunk on out of memory or put back after a refusal,
        the instruction it pinned) reports what it applied: it is not a new change.

        Told by who sets it, not by comparing values: a user's 0.1 then 2.0 in quick succession
        has 2.0 equal to the loop's budget before the 0.1 is applied, and that 2.0 is a change."""
        return getattr(self._loop_setting, "active", False)

    def _loop_sets(self, name: str, value) -> None:
        self._loop_setting.active = True  # set_parameters runs the callbacks in this thread
        try:
            self.set_parameters([Parameter(name, value=value)])
        finally:
            self._loop_setting.active = False

    def _budget_changed(self, budget_mb: float) -> None:
        """Keep the parameter truthful when the loop changes or restores the budget itself."""
        self._loop_sets("memory.vram_budget_mb", float(budget_mb))

    def _instruction_pinned(self, text: str) -> None:
        """The `instruction` parameter follows the pinned instruction (the topic's, or the one kept
        when a new one was refused), so `ros2 param get` and `param dump` say what the policy does."""
        if self.get_parameter("instruction").value != text:
            self._loop_sets("instruction", text)

    def _instruction_refusal(self, text: str) -> str | None:
        """Why the `instruction` parameter cannot take ``text``: nothing visible in it, or too long to
        fit the budget beside one step (the policy would refuse it and keep the old one pinned)."""
        cleaned = guards.clean_instruction(text, self.settings.instruction_max_chars)
        if isinstance(cleaned, guards.Drop):
            return f"instruction refused: {cleaned.reason}"
        return self.policy.instruction_error(cleaned[0])

    def _restart_snapshot_timer(self) -> None:
        if self._snapshot_timer is not None:
            self.destroy_timer(self._snapshot_timer)
            self._snapshot_timer = None
        s = self.settings
        if self.loop is not None and s.snapshot_path and s.snapshot_period_s > 0:
            self._snapshot_timer = self.create_timer(s.snapshot_period_s,
                                                     lambda: self.loop.submit(self._save_snapshot_periodic))

    # ------------------------------------------------------------------ input callbacks
    def _drop(self, reason: str, detail: str) -> None:
        self.health.count(f"dropped_{reason}")
        self.warn(reason, f"dropped {reason.replace('_', ' ')}: {detail} "
                          f"({self.health.counters[f'dropped_{reason}']} so far)")

    # The input callbacks read self.loop once: a cleanup on the other executor thread may set it
    # to None meanwhile.
    def _on_image(self, msg: Image, camera: int = 0) -> None:
        loop = self.loop
        if loop is None:
            return
        try:
            rgb = prepare_for_model(image_to_rgb(msg, max_pixels=self.settings.max_pixels))
        except ImageConversionError as exc:
            return self._drop("image", str(exc))
        loop.store.put_frame(rgb, time.monotonic(), camera)
        self.health.count("frames")

    def _on_compressed(self, msg: CompressedImage, camera: int = 0) -> None:
        loop = self.loop
        if loop is None:
            return
        max_pixels = self.settings.max_pixels
        loop.decode_later(lambda: prepare_for_model(compressed_to_rgb(msg, max_pixels=max_pixels)),
                          time.monotonic(), camera)

    def _on_joint_state(self, msg: JointState) -> None:
        loop = self.loop
        if loop is None:
            return
        s = self.settings
        wanted = self._state_joint_names(msg.name)
        limits = (np.asarray(s.low), np.asarray(s.high)) if tuple(wanted) == tuple(s.joint_names) else (None, None)
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        result = guards.check_joint_state(msg.name, msg.position, stamp, wanted, *limits, s.state_limit)
        if isinstance(result, guards.Drop):
            return self._drop("joint_state", result.reason)
        now = self.get_clock().now().nanoseconds * 1e-9
        order = loop.store.stamps.check(result.stamp, now)
        if isinstance(order, guards.Drop):
            return self._drop("joint_state", order.reason)
        if isinstance(order, guards.Restarted):
            self.health.count("joint_state_clock_resets")
            self._log().warning(order.reason)
        if result.clipped:
            self.health.count("joint_state_clipped", result.clipped)
            self.warn("joint_state_clipped", f"{result.clipped} joint value(s) outside the limits clipped")
        loop.store.put_state(result, time.monotonic())
        unknown = len(msg.name) - len(wanted)
        if unknown > 0 and s.action_type != "twist":
            extra = [n for n in msg.name if n not in set(wanted)]
            self.warn("unknown_joints", f"ignoring joints the policy does not use: {guards.name_list(extra)}", 60.0)

    def _state_joint_names(self, received) -> list[str]:
        configured = [n for n in self.settings.state_joint_names if n]
        if configured:
            return configured
        if self.settings.action_type == "twist":
            return list(received)
        return list(self.settings.joint_names)

    def _on_instruction(self, msg: String) -> None:
        if self.loop is None or self._instruction_repeats.repeat(msg.data, time.monotonic()):
            return
        result = guards.clean_instruction(msg.data, self.settings.instruction_max_chars)
        if isinstance(result, guards.Drop):
            return self._drop("instruction", result.reason)
        text, truncated = result
        if truncated:
            self.health.count("instruction_truncated")
            self.warn("instruction_long", f"instruction of {len(msg.data.strip())} chars truncated to {len(text)}")
        self.loop.store.put_instruction(text)

    # ------------------------------------------------------------------ services
    def _srv_reset_memory(self, request, response):
        if self.loop is None:
            response.success, response.message = False, "policy not configured"
            return response
        try:
            self.loop.run(self.loop.reset_memory)
        except Exception as exc:
            response.success, response.message = False, f"reset failed: {exc}"
            return response
        response.success, response.message = True, "episode memory cleared (instruction kept)"
        return response

    # Snapshots touch the cache, so they run on the inference worker, between steps.
    def _save_snapshot(self, automatic: bool = False) -> str:
        """Write the snapshot; a failure is counted (snapshots_failed), stays on /diagnostics until a
        save succeeds, and is raised for the caller to log. The periodic and the final snapshot
        (``automatic``) do not overwrite a snapshot that was refused at start: the memory running
        now could not take it in, and overwriting it would lose it (~/save_memory does replace it)."""
        path = self.settings.snapshot_path
        if automatic and self._kept_snapshot:
            raise SnapshotKept(f"the snapshot at {path} was refused at start and is kept ({self._kept_snapshot}); "
                               "~/save_memory replaces it, ~/load_memory retries it")
        try:
            written = self.policy.save_memory(path)
        except Exception as exc:
            self.health.count("snapshots_failed")
            self.health.snapshot_problem = f"snapshot not written: {exc}"
            raise
        self.health.count("snapshots_saved")
        self.health.snapshot_problem = ""
        self._kept_snapshot = ""
        self._log().info(f"memory snapshot written: {written}")
        return written

    def _save_snapshot_periodic(self) -> None:
        try:
            self._save_snapshot(automatic=True)
        except SnapshotKept as exc:
            self._log().warning(f"periodic snapshot skipped: {exc}", throttle_duration_sec=LOG_THROTTLE_S)
        except Exception as exc:  # counted and on /diagnostics; the log would repeat it every period
            self._log().error(f"periodic snapshot not written: {exc}", throttle_duration_sec=LOG_THROTTLE_S)

    def _save_snapshot_service(self) -> str:
        try:
            return self._save_snapshot()
        except Exception as exc:
            self._log().error(f"~/save_memory: snapshot not written: {exc}")
            raise

    def _load_snapshot(self) -> str:
        configured = self.policy.instruction
        try:
            self.policy.load_memory(self.settings.snapshot_path)
        except SnapshotMissing:
            raise  # no refusal: the caller says what it means (a fresh start, a failed ~/load_memory)
        except (SnapshotError, OSError) as exc:
            self.health.count("snapshots_refused")
            self._log().error(f"snapshot refused: {exc}")
            raise
        self.health.count("snapshots_loaded")
        if self._kept_snapshot:
            self._kept_snapshot = self.health.snapshot_problem = ""
        if configured and self.policy.instruction != configured:
            # The configured instruction wins over the one the snapshot was saved with.
            self.policy.set_instruction(configured)
            self._log().info("snapshot's instruction replaced by the configured one")
        self._instruction_pinned(self.policy.instruction)
        stats = self.policy.stats()
        msg = (f"memory resumed from {self.settings.snapshot_path} at step {self.policy.step_index} "
               f"({stats.used_tokens} tokens, {stats.steps_kept} steps)")
        self._log().info(msg)
        return msg

    def _load_snapshot_at_start(self) -> None:
        """Resume from the snapshot if there is one. Which files make a snapshot is the backend's
        business (transformers: ``<path>.json`` + tensors; llama.cpp: ``<path>`` itself): the node
        asks the policy to load and tells a missing snapshot (SnapshotMissing) from a refused one."""
        try:
            self._load_snapshot()
        except SnapshotMissing:
            self._log().info(f"no snapshot at {self.settings.snapshot_path}: starting with a fresh memory")
        except Exception as exc:
            self._kept_snapshot = str(exc)
            self.health.snapshot_problem = (f"snapshot at {self.settings.snapshot_path} refused at start, kept "
                                            "(not overwritten)")
            self._log().warning("starting with a fresh memory; the refused snapshot is kept (periodic and final "
                                "snapshots do not overwrite it; ~/save_memory does)")

    def _srv_snapshot(self, response, fn, verb: str):
        if self.loop is None or not self.settings.snapshot_path:
            response.success = False
            response.message = "memory.snapshot_path is not set" if self.loop else "policy not configured"
            return response
        try:
            response.message = str(self.loop.run(fn))
            response.success = True
        except Exception as exc:
            response.success, response.message = False, f"{verb} failed: {exc}"
        return response

    def _srv_save_memory(self, request, response):
        return self._srv_snapshot(response, self._save_snapshot_service, "save")

    def _srv_load_memory(self, request, response):
        return self._srv_snapshot(response, self._load_snapshot, "load")

    def _publish_memory_map(self) -> None:
        """Worker thread: render what the cache holds now and publish it on ~/memory_map."""
        if self._map_pub is None or self.policy is None or self.loop is None or self.loop.going_down:
            return
        from aura_ros.core.memory_map import policy_memory_map

        msg = rgb_to_image_msg(policy_memory_map(self.policy), "rgb8", frame_id="memory_map",
                               stamp=self.get_clock().now().to_msg())
        try:
            self._map_pub.publish(msg)
        except Exception:
            if self.context.ok():  # a signal may shut the context down meanwhile: the node is going down
                raise

    def _srv_memory_map(self, request, response):
        if self.loop is None or self.policy is None:
            return response
        loop, policy = self.loop, self.policy
        try:
            loop.submit(self._publish_memory_map)  # the picture too, on demand
            summary, pinned, step = loop.run(lambda: (policy.memory_map(), policy.stats().pinned_tokens,
                                                      policy.step_index))
        except RuntimeError:  # a cleanup on the other executor thread stopped the loop meanwhile
            return response
        response.step = step
        response.kept_steps = [int(s) for s, *_ in summary]
        response.gate_values = [float(g) for _, g, _, _ in summary]
        response.long_term = [bool(w) for _, _, w, _ in summary]
        response.tokens = [int(t) for *_, t in summary]
        response.pinned_tokens = int(pinned)
        return response

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        # A signal can shut the context down while this timer callback runs; a publish on the
        # dead context then raises inside the executor's task (printed later as "exception never
        # retrieved"). Nothing is lost: the node is going down.
        if not self.context.ok():
            return
        try:
            self._diag_pub.publish(diagnostics_msg(self.get_fully_qualified_name(), self.health,
                                                   self.get_clock().now().to_msg(), self.policy is not None))
        except Exception:
            if self.context.ok():
                raise


def _smallest_budget_mb(policy) -> float:
    """The smallest budget, in steps of 0.0001 MiB (what a refusal prints), that ``policy`` accepts
    now: that exact value, set as the parameter, is then accepted."""
    high = MIB // 1024
    while policy.budget_error(high):
        high *= 2
    low = 0  # refused (or nothing)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if policy.budget_error(mid) is None else (mid, high)
    mb = math.ceil(high / MIB * 1e4) / 1e4
    while policy.budget_error(int(mb * MIB)):  # float rounding of the printed value
        mb += 1e-4
    return mb


def _allocation_error(budget_mb: float, free: int, device: str) -> str | None:
    """A budget larger than the memory the device has free (``free`` bytes, as the policy
    reports it) cannot be allocated: refuse it now, not in the worker after the parameter
    already says it."""
    need = budget_mb * MIB
    if need > free * 0.9:
        return f"needs {need / MIB:.1f} MiB but only {free / MIB:.1f} MiB of {device} memory is free"
    return None


GIL_SWITCH_INTERVAL_S = 0.0001


def main(args=None) -> None:
    # rclpy turns the first SIGINT/SIGTERM into a context shutdown (ExternalShutdownException).
    # A terminal's Ctrl-C under `ros2 launch` delivers a second SIGINT (to the process group and
    # forwarded by launch) while the node is cleaning up: from the first signal on, further ones
    # are ignored, so teardown and the final snapshot always complete.
    stop_on_first_signal()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.ALL)
    # The executor's threads take the GIL hundreds of times a second (rclpy's wait loop is
    # Python), and the inference thread gives it up around every torch op; at the default 5 ms
    # switch interval each hand-back can wait 5 ms, so with fast sensors a 14 ms step took
    # 250-275 ms (measured: sim and control at 60-200 Hz). A short interval bounds that wait.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    node = None
    code = 0
    executor = MultiThreadedExecutor(num_threads=2)
    try:
        node = PolicyNode()
        executor.add_node(node)
        _spin(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except StartupError:  # the node has logged the reason (console, log file, /rosout): one line
        code = 2
    except ParameterException as exc:  # a start-up value rclpy refused at declaration: one line
        print(f"aura_policy: not started: {exc}", file=sys.stderr)
        code = 2
    except Exception as exc:
        # A signal can shut the context down while spin() builds its wait set; that surfaces as an
        # RCLError instead of ExternalShutdownException. During shutdown it is a clean exit.
        if rclpy.ok():
            print(f"aura_policy: {type(exc).__name__}: {exc}", file=sys.stderr)
            code = 1
    finally:
        ignore_further_signals()
        if node is not None:
            node._release(snapshot=True)
            node.destroy_node()
        executor.shutdown(timeout_sec=1.0)
        rclpy.try_shutdown()
    if code:
        sys.exit(code)


def _spin(executor) -> None:
    """executor.spin(), surviving rclpy's race between its wait loop and a lifecycle transition.

    The transition (a service callback on one executor thread) destroys the subscriptions and
    timers that configure created, while the spinning thread may be reading the handles of the
    wait set it just built: rclpy then raises InvalidHandle ("destruction was requested") out of
    spin(), and the process died after a few deactivate/cleanup/configure/activate cycles. The
    entity is gone from the node's lists by the next pass, so waiting again is correct.
    """
    while rclpy.ok():
        try:
            executor.spin_once()
        except InvalidHandle:
            continue




if __name__ == "__main__":
    main()
