"""The aura_ros policy node: camera + joint states in, commands and memory statistics out.

A managed (lifecycle) node that comes up active on its own (``autostart``):
configure loads the model and builds the gated cache, activate starts the control timer,
deactivate stops it, cleanup frees the model.

Threads: rclpy callbacks only store the newest valid inputs. A control timer at
``control.rate_hz`` hands a snapshot to one inference worker and skips (and counts) ticks that
find it busy, so the executor never blocks on the model. Parameter changes that touch the cache
(the budget, the recent window, the gate) are validated in the parameter callback and applied by
the worker between steps, so the cache is only ever touched from one thread.
"""
from __future__ import annotations

import gc
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import psutil
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import ExternalShutdownException
from rclpy.signals import SignalHandlerOptions
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rcl_interfaces.msg import SetParametersResult
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from aura_ros.core.types import Observation
from aura_ros.memory import MIB, BudgetError, GateConfig
from aura_ros.ros import qos
from aura_ros.ros.diagnostics import Health, diagnostics_msg
from aura_ros.ros.image_conversion import ImageConversionError, compressed_to_rgb, image_to_rgb
from aura_ros.ros.messages import COMMAND_TOPICS, command_msg, command_type, gate_msg, memory_msg
from aura_ros.ros.params import (Settings, check_action_limits, choice_error, declare_all, param_value,
                                 read_settings)
from aura_ros.srv import GetMemoryMap

# Frames are downscaled to this longest side before they reach the processor: every VLM
# processor resizes to a few hundred pixels anyway, and an 8K frame would cost 100 MB of copies.
MAX_MODEL_SIDE = 512
# On out of memory the KV budget shrinks by this factor, then the step is retried once.
OOM_SHRINK = 0.75


@dataclass
class Inputs:
    """The newest valid inputs, written by callbacks, read by the control tick."""

    image: np.ndarray | None = None
    image_time: float = -math.inf  # monotonic receive time
    state: np.ndarray | None = None
    state_names: tuple[str, ...] = ()
    state_time: float = -math.inf
    state_stamp: float = -math.inf  # header stamp, to refuse stamps that go backwards
    instruction: str | None = None  # pending instruction for the worker


class PolicyNode(LifecycleNode):
    def __init__(self, node_name: str = "aura_policy", **kwargs):
        super().__init__(node_name, **kwargs)
        declare_all(self)
        self.settings: Settings = read_settings(self)
        self.health = Health()
        self.policy = None
        self._inputs = Inputs()
        self._lock = threading.Lock()  # guards _inputs and _pending
        self._pending: dict[str, object] = {}
        self._busy = False
        self._worker: ThreadPoolExecutor | None = None
        self._control_timer = None
        self._entities: list = []
        self._process = psutil.Process()
        self._warned: dict[str, float] = {}
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", qos.DIAGNOSTICS)
        self._diag_timer = self.create_timer(self.settings.diagnostics_period_s, self._publish_diagnostics)
        if self.settings.autostart:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        s = self.settings = read_settings(self)
        reason = check_action_limits(s.joint_names, s.low, s.high)
        if reason:
            self.get_logger().error(reason)
            self.health.model_error(reason)
            return TransitionCallbackReturn.FAILURE
        try:
            self.policy = self._load_policy(s)
        except Exception as exc:  # a missing model, a bad folder: report, do not crash
            self.get_logger().error(f"could not load the policy model: {exc}")
            self.health.model_error(f"load failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aura_inference")
        self._cmd_pub = self.create_lifecycle_publisher(command_type(s.action_type), COMMAND_TOPICS[s.action_type],
                                                        qos.COMMANDS)
        self._memory_pub = self.create_lifecycle_publisher(self._msg("MemoryBudget"), "~/memory", qos.STATS)
        self._gate_pub = self.create_lifecycle_publisher(self._msg("GateStats"), "~/gate_stats", qos.STATS)
        self._entities = [
            self.create_subscription(Image, "image", self._on_image, qos.SENSOR),
            self.create_subscription(CompressedImage, "image/compressed", self._on_compressed, qos.SENSOR),
            self.create_subscription(JointState, "joint_states", self._on_joint_state, qos.SENSOR),
            self.create_subscription(String, "instruction", self._on_instruction, qos.INSTRUCTION),
            self.create_service(Trigger, "~/reset_memory", self._srv_reset_memory),
            self.create_service(GetMemoryMap, "~/get_memory_map", self._srv_memory_map),
            self.create_service(Trigger, "~/save_memory", self._srv_save_memory),
            self.create_service(Trigger, "~/load_memory", self._srv_load_memory),
        ]
        self._snapshot_timer = None
        if s.snapshot_path and s.load_on_start and Path(s.snapshot_path).with_suffix(".json").exists():
            try:
                self._load_snapshot()
            except Exception:
                pass  # logged and counted; the node starts with a fresh memory
        if s.snapshot_path and s.snapshot_period_s > 0:
            self._snapshot_timer = self.create_timer(s.snapshot_period_s, self._periodic_snapshot)
        self.get_logger().info(
            f"policy ready: {s.model_path or 'embedded default model'}, budget {s.budget_mb:.3f} MiB "
            f"({self.policy.stats().capacity_tokens} tokens), action {s.action_type} {list(s.joint_names)}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._control_timer = self.create_timer(1.0 / self.settings.rate_hz, self._on_tick)
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._control_timer is not None:
            self.destroy_timer(self._control_timer)
            self._control_timer = None
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release(snapshot=True)
        return TransitionCallbackReturn.SUCCESS

    def _release(self, snapshot: bool = False) -> None:
        if self._control_timer is not None:
            self.destroy_timer(self._control_timer)
            self._control_timer = None
        if getattr(self, "_snapshot_timer", None) is not None:
            self.destroy_timer(self._snapshot_timer)
            self._snapshot_timer = None
        if self._worker is not None:
            self._worker.shutdown(wait=True)  # the step in flight finishes: no half-written state
            self._worker = None
        if snapshot and self.policy is not None and self.settings.snapshot_path and self.settings.snapshot_on_shutdown:
            self._save_snapshot()
        for entity in self._entities:
            if hasattr(entity, "srv_type"):
                self.destroy_service(entity)
            else:
                self.destroy_subscription(entity)
        for name in ("_cmd_pub", "_memory_pub", "_gate_pub"):
            pub = getattr(self, name, None)
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
                setattr(self, name, None)
        self._entities = []
        self.policy = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass

    @staticmethod
    def _msg(name: str):
        from aura_ros import msg

        return getattr(msg, name)

    def _load_policy(self, s: Settings):
        import torch

        from aura_ros.core.config import PolicyConfig
        from aura_ros.core.registry import make_policy

        if s.torch_threads > 0:
            # Measured: with 2 threads on a 2-core machine that also runs DDS and the sim, one busy
            # neighbour made a 6 ms step take 600 ms; with 1 thread it stayed at 6 ms.
            torch.set_num_threads(s.torch_threads)
        config = PolicyConfig(
            joint_names=tuple(s.joint_names), low=tuple(s.low), high=tuple(s.high),
            discrete_joints=tuple(s.discrete_joints), n_bins=s.n_bins, chunk=s.chunk,
            budget_bytes=int(s.budget_mb * MIB), recent_steps=s.recent_steps, eviction=s.eviction,
            gate=self._gate_config(s), clear_memory_on_instruction=s.clear_on_instruction)
        return make_policy(s.model_path or None, config, instruction=s.instruction[: s.instruction_max_chars],
                                         dtype=s.dtype, device=s.device, trust_remote_code=s.trust_remote_code)

    @staticmethod
    def _gate_config(s: Settings) -> GateConfig:
        return GateConfig(threshold=s.gate_threshold, w_delta=s.gate_w_delta, w_discrete=s.gate_w_discrete,
                          w_surprise=s.gate_w_surprise, delta_scale=s.gate_delta_scale,
                          surprise_scale=s.gate_surprise_scale)

    # ------------------------------------------------------------------ parameters
    def _validate_parameters(self, params) -> SetParametersResult:
        for p in params:
            value = param_value(p)
            reason = choice_error(p.name, value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            if p.name == "memory.vram_budget_mb" and self.policy is not None:
                reason = self.policy.budget_error(int(value * MIB))
                if reason:
                    return SetParametersResult(successful=False, reason=f"memory.vram_budget_mb={value}: {reason}")
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        with self._lock:
            for p in params:
                self._pending[p.name] = param_value(p)
        names = {p.name for p in params}
        if "control.rate_hz" in names and self._control_timer is not None:
            self.destroy_timer(self._control_timer)
            self._control_timer = self.create_timer(1.0 / float(param_value(
                next(p for p in params if p.name == "control.rate_hz"))), self._on_tick)

    def _apply_pending(self) -> None:
        """Worker thread: apply parameter changes between steps."""
        with self._lock:
            pending, self._pending = self._pending, {}
            instruction, self._inputs.instruction = self._inputs.instruction, None
        if pending.pop("__reset__", False):
            self.policy.reset()
            self.get_logger().info("episode memory cleared (instruction kept)")
        if pending:
            old = self.settings
            self.settings = read_settings(self, pending)
            s = self.settings
            if "memory.vram_budget_mb" in pending:
                try:
                    self.policy.set_budget(int(s.budget_mb * MIB))
                    self.get_logger().info(f"KV budget now {s.budget_mb:.3f} MiB ({self.policy.stats().capacity_tokens} tokens)")
                except BudgetError as exc:  # the pinned instruction grew since validation
                    self.get_logger().error(str(exc))
                    self.settings = replace(self.settings, budget_mb=old.budget_mb)
            self.policy.set_options(
                recent_steps=s.recent_steps if "memory.recent_steps" in pending else None,
                gate=self._gate_config(s) if any(n.startswith("gate.") for n in pending) else None,
                clear_memory_on_instruction=s.clear_on_instruction if "memory.clear_on_instruction" in pending else None)
        if instruction is not None:
            try:
                self.policy.set_instruction(instruction)
                self.get_logger().info(f"new instruction ({len(instruction)} chars) pinned")
            except BudgetError as exc:
                self.health.count("instruction_refused")
                self.get_logger().error(f"instruction refused: {exc}")

    # ------------------------------------------------------------------ input callbacks
    def _throttled_warn(self, key: str, text: str, period: float = 5.0) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -math.inf) >= period:
            self._warned[key] = now
            self.get_logger().warning(text)

    def _drop(self, reason: str, detail: str) -> None:
        self.health.count(f"dropped_{reason}")
        self._throttled_warn(reason, f"dropped {reason.replace('_', ' ')}: {detail} "
                                     f"({self.health.counters[f'dropped_{reason}']} so far)")

    def _store_frame(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        if max(h, w) > MAX_MODEL_SIDE:
            scale = MAX_MODEL_SIDE / max(h, w)
            rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        with self._lock:
            self._inputs.image = rgb
            self._inputs.image_time = time.monotonic()
        self.health.count("frames")

    def _on_image(self, msg: Image) -> None:
        try:
            self._store_frame(image_to_rgb(msg, max_pixels=self.settings.max_pixels))
        except ImageConversionError as exc:
            self._drop("image", str(exc))

    def _on_compressed(self, msg: CompressedImage) -> None:
        try:
            self._store_frame(compressed_to_rgb(msg, max_pixels=self.settings.max_pixels))
        except ImageConversionError as exc:
            self._drop("compressed_image", str(exc))

    def _on_joint_state(self, msg: JointState) -> None:
        names, positions = list(msg.name), np.asarray(msg.position, dtype=np.float64)
        if len(names) != positions.size:
            return self._drop("joint_state", f"{len(names)} names but {positions.size} positions")
        if not np.all(np.isfinite(positions)):
            return self._drop("joint_state", "NaN or infinite position")
        if len(set(names)) != len(names):
            return self._drop("joint_state", "duplicate joint names")
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        wanted = self._state_joint_names(names)
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in wanted if n not in index]
        if missing:
            return self._drop("joint_state", f"missing joints {missing}")
        with self._lock:
            last = self._inputs.state_stamp
            backwards = 0 < stamp < last
            if not backwards:
                self._inputs.state = positions[[index[n] for n in wanted]]
                self._inputs.state_names = tuple(wanted)
                self._inputs.state_time = time.monotonic()
                self._inputs.state_stamp = max(stamp, last)
        if backwards:
            return self._drop("joint_state", f"stamp went backwards ({stamp:.3f} s < {last:.3f} s)")
        unknown = set(names) - set(wanted)
        if unknown and self.settings.action_type != "twist":
            self._throttled_warn("unknown_joints", f"ignoring joints the policy does not use: {sorted(unknown)}", 60.0)

    def _state_joint_names(self, received: list[str]) -> list[str]:
        configured = [n for n in self.settings.state_joint_names if n]
        if configured:
            return configured
        if self.settings.action_type == "twist":
            return received
        return list(self.settings.joint_names)

    def _on_instruction(self, msg: String) -> None:
        text = msg.data.strip()
        if not text:
            return self._drop("instruction", "empty instruction")
        limit = self.settings.instruction_max_chars
        if len(text) > limit:
            self.health.count("instruction_truncated")
            self._throttled_warn("instruction_long", f"instruction of {len(text)} chars truncated to {limit}")
            text = text[:limit]
        with self._lock:
            self._inputs.instruction = text

    # ------------------------------------------------------------------ control
    def _on_tick(self) -> None:
        if self._busy:
            self.health.count("skipped_ticks")
            return
        if self._worker is None:
            return
        self._busy = True
        with self._lock:
            snapshot = replace(self._inputs)
        self._worker.submit(self._work, snapshot, time.monotonic())

    def _work(self, snap: Inputs, tick_time: float) -> None:
        try:
            self._apply_pending()
            now = time.monotonic()
            s = self.settings
            stale = []
            if now - snap.image_time > s.image_timeout_s:
                stale.append("image")
            if snap.state is None or now - snap.state_time > s.joint_state_timeout_s:
                stale.append("joint_states")
            self.health.stale = stale
            if stale:
                self.health.count("held_ticks")
                self._throttled_warn("stale", f"holding: no fresh {' / '.join(stale)}")
                self._hold(snap)
                return
            try:
                action = self._step_with_oom_retry(snap)
            except Exception as exc:  # keep serving: hold, report ERROR, try again next tick
                self.health.model_error(f"{type(exc).__name__}: {exc}")
                self.get_logger().error(f"policy step failed: {type(exc).__name__}: {exc}")
                self._hold(snap)
                return
            self.health.model_ok()
            stats = action.stats
            stats.process_rss_bytes = self._process.memory_info().rss
            header = Header(stamp=self.get_clock().now().to_msg(), frame_id="")
            if not s.dry_run:
                self._cmd_pub.publish(command_msg(s.action_type, action.joint_names, action.positions, header,
                                                  s.time_from_start_s))
            self._memory_pub.publish(memory_msg(stats, header))
            self._gate_pub.publish(gate_msg(stats, header))
            self.health.step_done(stats, period_s=1.0 / s.rate_hz, since_tick_s=time.monotonic() - tick_time,
                                  evicted_written_total=action.stats.evicted_written_total)
        except Exception as exc:  # nothing may kill the worker thread silently
            self.health.model_error(f"{type(exc).__name__}: {exc}")
            self.get_logger().error(f"control step failed: {type(exc).__name__}: {exc}")
        finally:
            self._busy = False

    def _step_with_oom_retry(self, snap: Inputs):
        """Out of memory: shrink the KV budget by OOM_SHRINK and retry the step once."""
        import torch

        oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
        try:
            return self.policy.step(Observation(snap.image, snap.state))
        except oom as exc:
            self.health.count("out_of_memory")
            old_mb = self.settings.budget_mb
            new_mb = old_mb * OOM_SHRINK
            self.get_logger().error(f"out of memory ({exc}); shrinking the KV budget {old_mb:.3f} -> "
                                    f"{new_mb:.3f} MiB and retrying once")
            self.policy.set_budget(int(new_mb * MIB))  # BudgetError here: too small to shrink, reported
            self.settings = replace(self.settings, budget_mb=new_mb)
            # Keep the parameter truthful; the post-set callback queues the same budget (a no-op).
            self.set_parameters([Parameter("memory.vram_budget_mb", value=new_mb)])
            return self.policy.step(Observation(snap.image, snap.state))

    def _hold(self, snap: Inputs) -> None:
        """Stop safely: zero velocity for a base, the current positions for an arm."""
        s = self.settings
        if s.dry_run or self._cmd_pub is None:
            return
        header = Header(stamp=self.get_clock().now().to_msg())
        if s.action_type == "twist":
            self._cmd_pub.publish(command_msg("twist", s.joint_names, np.zeros((1, len(s.joint_names))), header))
        elif snap.state is not None and tuple(snap.state_names) == tuple(s.joint_names):
            self._cmd_pub.publish(command_msg(s.action_type, s.joint_names, snap.state[None], header,
                                              s.time_from_start_s))
        self.health.count("hold_commands")

    # ------------------------------------------------------------------ services
    def _srv_reset_memory(self, request, response):
        if self.policy is None:
            response.success, response.message = False, "policy not configured"
            return response
        with self._lock:
            self._pending["__reset__"] = True
        response.success, response.message = True, "episode memory will be cleared before the next step"
        return response

    # Snapshots touch the cache, so they run on the inference worker, between steps.
    def _save_snapshot(self) -> str:
        path = self.policy.save_memory(self.settings.snapshot_path)
        self.health.count("snapshots_saved")
        self.get_logger().info(f"memory snapshot written: {path}")
        return path

    def _load_snapshot(self) -> str:
        from aura_ros.backends.transformers.snapshot import SnapshotError

        try:
            self.policy.load_memory(self.settings.snapshot_path)
        except SnapshotError as exc:
            self.health.count("snapshots_refused")
            self.get_logger().error(f"snapshot refused, starting fresh: {exc}")
            raise
        self.health.count("snapshots_loaded")
        msg = (f"memory resumed from {self.settings.snapshot_path} at step {self.policy.step_index} "
               f"({self.policy.stats().used_tokens} tokens, {self.policy.stats().steps_kept} steps)")
        self.get_logger().info(msg)
        return msg

    def _on_worker(self, fn, timeout: float = 30.0):
        if self._worker is None:
            raise RuntimeError("policy not configured")
        return self._worker.submit(fn).result(timeout=timeout)

    def _srv_snapshot(self, response, fn, verb: str):
        if self.policy is None or not self.settings.snapshot_path:
            response.success = False
            response.message = "memory.snapshot_path is not set" if self.policy else "policy not configured"
            return response
        try:
            response.message = str(self._on_worker(fn))
            response.success = True
        except Exception as exc:
            response.success, response.message = False, f"{verb} failed: {exc}"
        return response

    def _srv_save_memory(self, request, response):
        return self._srv_snapshot(response, self._save_snapshot, "save")

    def _srv_load_memory(self, request, response):
        return self._srv_snapshot(response, self._load_snapshot, "load")

    def _periodic_snapshot(self) -> None:
        if self._worker is not None:
            self._worker.submit(self._guarded, self._save_snapshot)

    def _guarded(self, fn) -> None:
        try:
            fn()
        except Exception as exc:
            self.get_logger().error(f"{fn.__name__} failed: {exc}")

    def _srv_memory_map(self, request, response):
        if self.policy is None:
            return response
        summary = self.policy.memory_map()
        response.step = self.policy.step_index
        response.kept_steps = [int(s) for s, *_ in summary]
        response.gate_values = [float(g) for _, g, _, _ in summary]
        response.long_term = [bool(w) for _, _, w, _ in summary]
        response.tokens = [int(t) for *_, t in summary]
        response.pinned_tokens = int(self.policy.stats().pinned_tokens)
        return response

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        self._diag_pub.publish(diagnostics_msg(self.get_fully_qualified_name(), self.health,
                                               self.get_clock().now().to_msg(), self.policy is not None))


def main(args=None) -> None:
    # rclpy turns SIGINT and SIGTERM into a context shutdown (ExternalShutdownException from spin).
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.ALL)
    node = None
    try:
        node = PolicyNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # A signal can shut the context down while spin() builds its wait set; that surfaces as an
        # RCLError instead of ExternalShutdownException. During shutdown it is a clean exit.
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            node._release(snapshot=True)
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
