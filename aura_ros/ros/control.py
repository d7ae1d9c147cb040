"""The control loop: newest inputs in, one policy step per tick on one worker thread, outputs out.

Callbacks only store inputs (``InputStore``); the control timer hands the worker a copy and skips
(and counts) ticks that find it busy, so the executor never blocks on the model. Everything
that touches the policy (steps, parameter changes, snapshots, resets) runs on that one worker,
between steps, so the KV cache is only ever touched from one thread. Heavy decoding (a large
PNG or JPEG) happens on the worker too, with its time counted, not on the executor thread.

With ``action.chunk`` > 1 the loop executes chunks instead (``ChunkQueue``, aura_ros.ros.chunks):
every tick checks the inputs' age, sends the queued action meant for it (or holds, when inputs are
stale, dropping the queue), and hands the worker the next observation once the queue has fallen
to ``action.refill_below`` of a chunk; the worker's chunk is merged into the queue when it comes
back. One policy step, so one memory step, per inference.

No rclpy here: the node passes an ``Outputs`` (publishers and a logger) and its Health.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from aura_ros.core.types import Action, Observation
from aura_ros.memory import MIB, BudgetError, GateConfig
from aura_ros.ros import guards
from aura_ros.ros.chunks import ChunkQueue
from aura_ros.ros.diagnostics import Health

# On out of memory the KV budget shrinks by this factor, then the step is retried once.
OOM_SHRINK = 0.75


@dataclass
class Inputs:
    """The newest valid inputs (monotonic receive times).

    image: the frame of the one camera, or a tuple of frames (one per camera) once every camera
    has sent one; image_time: the oldest camera's newest frame (a step is as fresh as its stalest
    camera)."""

    image: np.ndarray | tuple[np.ndarray, ...] | None = None
    image_time: float = -float("inf")
    state: np.ndarray | None = None
    state_names: tuple[str, ...] = ()
    state_time: float = -float("inf")


class InputStore:
    """Thread-safe newest inputs and pending changes, written by callbacks, read by the worker."""

    def __init__(self, n_cameras: int = 1) -> None:
        self._lock = threading.Lock()
        self._inputs = Inputs()
        self._frames: list[np.ndarray | None] = [None] * n_cameras
        self._frame_times = [-float("inf")] * n_cameras
        self._instruction: str | None = None
        self._pending: dict[str, object] = {}
        self.stamps = guards.StampOrder()

    def put_frame(self, rgb: np.ndarray, receive_time: float, camera: int = 0) -> None:
        with self._lock:
            if receive_time < self._frame_times[camera]:
                return
            self._frames[camera], self._frame_times[camera] = rgb, receive_time
            if any(f is None for f in self._frames):
                return  # a camera that has sent nothing yet: no observation, the step holds (stale)
            self._inputs.image = self._frames[0] if len(self._frames) == 1 else tuple(self._frames)
            self._inputs.image_time = min(self._frame_times)

    def put_state(self, state: guards.JointState, receive_time: float) -> None:
        with self._lock:
            self._inputs.state, self._inputs.state_names = state.positions, state.names
            self._inputs.state_time = receive_time

    def put_instruction(self, text: str) -> None:
        with self._lock:
            self._instruction = text

    def put_change(self, name: str, value) -> None:
        with self._lock:
            self._pending[name] = value

    def snapshot(self) -> Inputs:
        with self._lock:
            return replace(self._inputs)

    def take_pending(self) -> tuple[dict[str, object], str | None]:
        with self._lock:
            pending, self._pending = self._pending, {}
            instruction, self._instruction = self._instruction, None
        return pending, instruction


class Outputs(Protocol):
    """What the loop publishes; the node implements it over its lifecycle publishers."""

    def command(self, joint_names, positions: np.ndarray) -> None: ...
    def stats(self, action: Action) -> None: ...
    def info(self, text: str) -> None: ...
    def warn(self, key: str, text: str) -> None: ...  # throttled per key
    def error(self, text: str) -> None: ...
    def step_error(self, text: str) -> None: ...  # a failing step repeats every tick: throttled


@dataclass
class ControlLoop:
    policy: object  # core.protocol.Policy
    settings: object  # the node's Settings; read fields: see below
    health: Health
    out: Outputs
    replace_settings: Callable[[object, dict], object]
    on_budget_changed: Callable[[float], None] = lambda mb: None
    # Called with the instruction pinned after each one the loop applied (or refused), so that the
    # node's parameter says what the policy follows, whichever way the instruction came.
    on_instruction: Callable[[str], None] = lambda text: None
    # False once a signal has shut the ROS context down: from then on nothing is published and
    # a failed publish is not a model error (the node is going down, stop() follows).
    alive: Callable[[], bool] = lambda: True
    store: InputStore = field(default_factory=InputStore)
    _busy: bool = False
    _worker: ThreadPoolExecutor | None = None
    stopping: bool = False

    _decoder: ThreadPoolExecutor | None = None
    _decode_lock: threading.Lock = field(default_factory=threading.Lock)
    _decode_next: dict = field(default_factory=dict)  # camera -> the newest frame waiting for the decoder
    _decoding: bool = False
    # Chunk execution (action.chunk > 1): the queue and the control tick count it is keyed by.
    queue: ChunkQueue | None = None
    _tick_index: int = -1
    _plan: int = 0  # bumped when the queue is dropped: a chunk requested before that is not queued

    def __post_init__(self) -> None:
        s = self.settings
        if s.chunk > 1:
            self.queue = ChunkQueue(len(s.joint_names), np.array([n in s.discrete_joints for n in s.joint_names]))
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aura_inference")
        # Compressed frames are decoded on a thread of their own: a large PNG takes a second to
        # decode, which must block neither the executor (callbacks, services) nor a step.
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aura_decode")

    def decode_later(self, decode: Callable[[], np.ndarray], receive_time: float, camera: int = 0) -> None:
        """Decode a compressed frame off the executor thread; while one decodes, only the newest
        waiting frame of each camera is kept (older waiting ones are counted as skipped_frames)."""
        with self._decode_lock:
            if self.stopping:  # a callback still running while a cleanup stops the loop
                return
            if camera in self._decode_next:
                self.health.count("skipped_frames")
            self._decode_next[camera] = (decode, receive_time)
            if self._decoding or self._decoder is None:
                return
            self._decoding = True
        self._decoder.submit(self._decode_loop)

    def _decode_loop(self) -> None:
        while True:
            with self._decode_lock:
                if not self._decode_next or self.stopping:
                    self._decoding = False
                    return
                camera = next(iter(self._decode_next))
                decode, receive_time = self._decode_next.pop(camera)
            t0 = time.perf_counter()
            try:
                rgb = decode()
            except ValueError as exc:  # ImageConversionError
                self.health.count("dropped_compressed_image")
                self.out.warn("compressed_image", f"dropped compressed image: {exc} "
                                                  f"({self.health.counters['dropped_compressed_image']} so far)")
                continue
            finally:
                self.health.set_value("decode_ms", f"{(time.perf_counter() - t0) * 1e3:.1f}")
            self.store.put_frame(rgb, receive_time, camera)
            self.health.count("frames")

    @property
    def going_down(self) -> bool:
        return self.stopping or not self.alive()

    # ------------------------------------------------------------------ scheduling
    def tick(self) -> None:
        """Timer callback: hand the newest inputs to the worker, or count a skipped tick (with
        chunks: send the queued action of this tick, see chunk_tick)."""
        if self.queue is not None:
            return self.chunk_tick()
        if self._busy:
            self.health.count("skipped_ticks")
            return
        if self._worker is None or self.stopping:
            return
        self._busy = True
        self._worker.submit(self._work, self.store.snapshot(), time.monotonic())

    def refill_ticks(self) -> int:
        """Chunk execution: the queue length at or below which the next inference is requested."""
        s = self.settings
        return int(math.floor(s.refill_below * s.chunk))

    def chunk_tick(self) -> None:
        """One control tick of chunk execution (executor thread): the stale and hold rules as in
        a step, then this tick's queued action, then the next inference if the queue is low.

        Stale inputs drop what is queued (those actions were planned from inputs that stopped)
        and hold, as a step would; when inputs resume, the queue is empty and the next chunk is
        inferred at once. A tick whose queue is empty while a chunk is being inferred sends
        nothing and is counted (``queue_empty_ticks``): the inference took longer than the queue
        lasted."""
        if self._worker is None or self.stopping:
            return
        self._tick_index += 1
        tick = self._tick_index
        s = self.settings
        snap = self.store.snapshot()
        stale = guards.stale_inputs(time.monotonic(), snap.image_time, snap.state_time, s.image_timeout_s,
                                    s.joint_state_timeout_s, snap.state is not None)
        self.health.stale = stale
        if stale:
            self.drop_queue()
            self.queue.pop(tick)  # the tick passes with nothing executed
            self.health.count("held_ticks")
            self.out.warn("stale", f"holding: no fresh {' / '.join(stale)}")
            self.hold(snap)
            if not self._busy:  # parameter changes and instructions still apply while holding, as in a step
                self.submit(self.apply_pending)
            return
        action = self.queue.pop(tick)
        if action is None:
            if self._busy:
                self.health.count("queue_empty_ticks")
        elif not s.dry_run and not self.going_down:
            self.out.command(s.joint_names, action[None])
        if not self._busy and len(self.queue) <= self.refill_ticks():
            self._busy = True
            self._worker.submit(self._work_chunk, snap, tick, self.queue.take_executed(), time.monotonic(),
                                self._plan)

    def drop_queue(self) -> None:
        """Chunk execution: forget the queued actions (counted as chunk_actions_cleared), and the
        chunk being inferred (counted as chunks_discarded when it comes back): both were planned
        before whatever made the queue go (stale inputs, a failed step, a pause)."""
        if self.queue is not None:
            self._plan += 1
            cleared = self.queue.clear()
            if cleared:
                self.health.count("chunk_actions_cleared", cleared)

    def run(self, fn: Callable[[], object], timeout: float = 30.0):
        """Run ``fn`` on the worker between steps and wait for its result."""
        if self._worker is None:
            raise RuntimeError("policy not configured")
        future: Future = self._worker.submit(fn)
        return future.result(timeout=timeout)

    def submit(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the worker between steps; errors are logged, not raised."""
        worker = self._worker
        if worker is None or self.stopping:
            return
        try:
            worker.submit(self._guarded, fn)
        except RuntimeError:  # shut down meanwhile by stop() (a cleanup): nothing to run it on
            pass

    def stop(self) -> None:
        """Let the step in flight finish (no half-written state), then end the worker."""
        with self._decode_lock:  # no decode is handed to the decoder after this
            self.stopping = True
        if self._decoder is not None:
            self._decoder.shutdown(wait=True)
            self._decoder = None
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None

    def _guarded(self, fn) -> None:
        try:
            fn()
        except Exception as exc:
            self.out.error(f"{getattr(fn, '__name__', 'task')} failed: {exc}")

    # ------------------------------------------------------------------ one step
    def _work(self, snap: Inputs, tick_time: float) -> None:
        try:
            self.apply_pending()
            s = self.settings
            stale = guards.stale_inputs(time.monotonic(), snap.image_time, snap.state_time, s.image_timeout_s,
                                        s.joint_state_timeout_s, snap.state is not None)
            self.health.stale = stale
            if stale:
                self.health.count("held_ticks")
                self.out.warn("stale", f"holding: no fresh {' / '.join(stale)}")
                self.hold(snap)
                return
            try:
                action = self._step_with_oom_retry(snap)
            except Exception as exc:  # keep serving: hold, report ERROR, try again next tick
                if self.going_down:
                    return
                self.health.model_error(f"{type(exc).__name__}: {exc}")
                self.out.step_error(f"policy step failed: {type(exc).__name__}: {exc}")
                self.hold(snap)
                return
            self.health.model_ok()
            if self.going_down:
                return  # shutting down: the step is in memory; publishers may be gone
            if not s.dry_run:
                self.out.command(action.joint_names, action.positions)
            self.out.stats(action)
            self.health.step_done(action.stats, period_s=1.0 / s.rate_hz, since_tick_s=time.monotonic() - tick_time,
                                  evicted_written_total=action.stats.evicted_written_total)
        except Exception as exc:  # nothing may kill the worker thread silently
            if not self.going_down:
                self.health.model_error(f"{type(exc).__name__}: {exc}")
                self.out.step_error(f"control step failed: {type(exc).__name__}: {exc}")
        finally:
            self._busy = False

    def _work_chunk(self, snap: Inputs, obs_tick: int, executed: np.ndarray, tick_time: float, plan: int) -> None:
        """Worker: infer the chunk for the observation of tick ``obs_tick`` and merge it into the
        queue; the gate scores the previous chunk's step by ``executed`` (what it sent)."""
        try:
            self.apply_pending()
            if self.going_down:
                return
            try:
                action = self._step_with_oom_retry(snap, executed)
            except Exception as exc:  # hold, report ERROR; the next tick asks again (the queue is empty)
                if self.going_down:
                    return
                self.health.model_error(f"{type(exc).__name__}: {exc}")
                self.out.step_error(f"policy step failed: {type(exc).__name__}: {exc}")
                self.drop_queue()
                self.hold(snap)
                return
            self.health.model_ok()
            if self.going_down:
                return
            self.health.count("chunks")
            if plan != self._plan:  # the queue was dropped while this chunk was inferred
                self.health.count("chunks_discarded")
            else:
                pushed = self.queue.push(action.positions, obs_tick)
                if pushed.dropped:
                    self.health.count("chunk_actions_late", pushed.dropped)
                if pushed.blended:
                    self.health.count("chunk_actions_blended", pushed.blended)
            self.out.stats(action)
            s = self.settings
            # The deadline of an inference is the time the queue lasts once it is requested.
            self.health.step_done(action.stats, period_s=max(1, self.refill_ticks()) / s.rate_hz,
                                  since_tick_s=time.monotonic() - tick_time,
                                  evicted_written_total=action.stats.evicted_written_total)
        except Exception as exc:  # nothing may kill the worker thread silently
            if not self.going_down:
                self.health.model_error(f"{type(exc).__name__}: {exc}")
                self.out.step_error(f"control step failed: {type(exc).__name__}: {exc}")
        finally:
            self._busy = False

    def _step_with_oom_retry(self, snap: Inputs, executed: np.ndarray | None = None) -> Action:
        """Out of memory (as the policy's backend tells it): shrink the KV budget by OOM_SHRINK
        and retry the step once. ``model.min_step_s`` (tests and benchmarks) pads the step to
        at least that long, on this worker, as a slower model would take it."""
        t0 = time.monotonic()
        action = self._step_once(Observation(snap.image, snap.state, executed=executed))
        rest = self.settings.min_step_s - (time.monotonic() - t0)
        if rest > 0:
            time.sleep(rest)
        return action

    def _step_once(self, obs: Observation) -> Action:
        try:
            return self.policy.step(obs)
        except Exception as exc:
            if not self.policy.is_out_of_memory(exc):
                raise
            self.health.count("out_of_memory")
            old_mb = self.settings.budget_mb
            new_mb = old_mb * OOM_SHRINK
            self.out.error(f"out of memory ({exc}); shrinking the KV budget {old_mb:.3f} -> {new_mb:.3f} MiB "
                           "and retrying once")
            self.policy.set_budget(int(new_mb * MIB))  # BudgetError here: too small to shrink, reported
            self.settings = self.replace_settings(self.settings, {"memory.vram_budget_mb": new_mb})
            self.on_budget_changed(new_mb)
            return self.policy.step(obs)

    def hold(self, snap: Inputs) -> None:
        """Stop safely: zero velocity for a base, the current positions (clipped) for an arm."""
        s = self.settings
        if s.dry_run or self.going_down:
            return
        if s.action_type == "twist":
            self.out.command(s.joint_names, np.zeros((1, len(s.joint_names))))
        else:
            held = guards.hold_positions(snap.state, snap.state_names, s.joint_names, s.low, s.high)
            if held is None:
                return  # no joint state yet: nothing safe to command, and nothing counted
            self.out.command(s.joint_names, held[None])
        self.health.count("hold_commands")

    # ------------------------------------------------------------------ changes between steps
    def reset_memory(self) -> None:
        """Worker: forget the episode (the instruction stays) and restart the stamp order. Run through
        run(), so a ~/load_memory called right after it finds the reset done, not still pending."""
        self.policy.reset()
        self.store.stamps.reset()
        self.out.info("episode memory cleared (instruction kept)")

    def apply_pending(self) -> None:
        pending, instruction = self.store.take_pending()
        if pending:
            old = self.settings
            self.settings = s = self.replace_settings(old, pending)
            if "memory.vram_budget_mb" in pending:
                try:
                    self.policy.set_budget(int(s.budget_mb * MIB))
                    self.out.info(f"KV budget now {s.budget_mb:.3f} MiB ({self.policy.stats().capacity_tokens} tokens)")
                except (BudgetError, MemoryError, RuntimeError) as exc:
                    # Refused after validation (the instruction grew, or the allocation failed):
                    # the old budget stays and the parameter is set back to it.
                    self.out.error(f"KV budget of {s.budget_mb:.3f} MiB refused: {exc}")
                    self.settings = self.replace_settings(self.settings, {"memory.vram_budget_mb": old.budget_mb})
                    self.on_budget_changed(old.budget_mb)
            self.policy.set_options(
                recent_steps=s.recent_steps if "memory.recent_steps" in pending else None,
                gate=gate_config(s) if any(n.startswith("gate.") for n in pending) else None,
                clear_memory_on_instruction=(s.clear_on_instruction if "memory.clear_on_instruction" in pending
                                             else None))
        if instruction is not None:
            try:
                # Every instruction received is the next task, the same text too (the robot is asked
                # again): the memory records the boundary and the previous tasks' facts turn stale.
                new_text = instruction != self.policy.instruction
                task = self.policy.begin_task(instruction)
                self.out.info(f"task {task} begins" + (f" (new instruction, {len(instruction)} chars, pinned)"
                                                       if new_text else ""))
            except BudgetError as exc:
                self.health.count("instruction_refused")
                self.out.error(f"instruction refused, the previous one stays: {exc}")
            self.on_instruction(self.policy.instruction)


def gate_config(s) -> GateConfig:
    """GateConfig from the node's gate.* settings (each gate.X parameter is GateConfig.X)."""
    from aura_ros.ros.params import POLICY_PARAMS

    return GateConfig(**{spec.name[len("gate."):]: getattr(s, spec.field) for spec in POLICY_PARAMS.specs
                         if spec.name.startswith("gate.")})
