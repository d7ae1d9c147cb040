"""What every backend's policy shares around its own KV store: the live options, the stats and
the memory map read the store through one attribute (``kv_store``), so a backend writes only
what is specific to it (its forward pass, its store, its snapshots)."""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import psutil

from aura_ros.core.types import Action, Observation, frames
from aura_ros.memory.budget import budget_error
from aura_ros.memory.gate import GateConfig, GateDecision
from aura_ros.memory.segments import ACTION_EVENT, TASK_START
from aura_ros.memory.stats import MemoryStats


class PolicyBase:
    """Mixin for ``Policy`` implementations; the subclass sets ``config``, ``space``, ``gate``,
    ``kv_store`` (a ``memory.store.MemoryStore``), ``last_observation_embedding`` and the counters
    (``step_index``, ``writes_total``, ``write_rate``), and implements ``_step(image, state, event,
    t0)`` (ending in ``_finish_step``) and ``_stats(step, decision, latency_ms)``."""

    _task_event = False  # begin_task() was called: the next step is a gate event
    _task_start = False  # the step being taken is the first of a task (begin_task() before it)
    # Chunk execution (Observation.executed given): the newest step waits for its executed actions
    # (step, observation embedding, event, its chunk's first action, whether it began a task), and
    # the decision the gate made on the step before, reported with this step.
    _pending_gate: tuple | None = None
    _scored: GateDecision | None = None
    _defer_gate = False

    @property
    def kv_store(self):
        """The policy's ``memory.store.MemoryStore`` (a backend keeping it elsewhere overrides this)."""
        return self.store

    def set_budget(self, budget_bytes: int) -> None:
        self.kv_store.set_budget(budget_bytes)
        self.config = replace(self.config, budget_bytes=int(budget_bytes))

    def budget_error(self, budget_bytes: int) -> str | None:
        return self.kv_store.budget_error(budget_bytes)

    def _start_episode(self, instruction: str) -> None:
        """The gate and the counters of a fresh episode, then the instruction pinned (the end of
        every backend's constructor, once its store exists)."""
        from aura_ros.memory.gate import ActionGate

        self.gate = ActionGate(self.space.low, self.space.high, self.config.discrete_mask(), self.config.gate)
        self.step_index = 0
        self.writes_total = 0
        self.write_rate = 0.0
        self.last_observation_embedding = None
        self.instruction = ""
        self.set_instruction(instruction)

    def _eviction_policy(self, without_attention: str = ""):
        """The configured memory policy (``memory.scorers``). ``without_attention``: the runtime's
        name where attention weights are not exposed, so a policy that scores by them is refused."""
        from aura_ros.memory.scorers import action_gated, make_policy

        cfg = self.config
        policy = action_gated(cfg.utility) if cfg.eviction == "action_gate" else make_policy(cfg.eviction)
        if policy.uses_attention and without_attention:
            raise ValueError(f"eviction {cfg.eviction!r} scores by attention weights, which {without_attention} "
                             "does not expose; choose action_gate, sliding_window or streaming_llm")
        return policy

    def step(self, obs: Observation) -> Action:
        """One control step: observe, decode an action chunk, gate the step.

        With ``obs.executed`` (chunk execution) the gate does not score this step now: a chunk's
        step is scored at the next step, by the actions the robot was actually sent from it
        (blended, late ones dropped), so a step whose chunk turned the arm is the one written,
        with its observation. The returned Action then carries the decision on the step before.
        """
        t0 = time.perf_counter()
        self._defer_gate = obs.executed is not None
        if self._defer_gate:
            self._score_executed(np.asarray(obs.executed, dtype=np.float64).reshape(-1, self.space.dim))
        if obs.new_task:
            self.begin_task(obs.instruction)
        elif obs.instruction is not None and obs.instruction != self.instruction:
            self.set_instruction(obs.instruction)
        event = obs.event or self._task_event
        # The episode's first step is its first task's start as much as a boundary's next step is.
        self._task_start, self._task_event = self._task_event or self.step_index == 0, False
        state = np.asarray(obs.joint_state, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(state)):
            raise ValueError("joint state contains NaN or infinite values")
        image = obs.image
        if image is not None and not isinstance(image, np.ndarray):
            n = len(frames(image))
            if n != self.config.n_cameras:
                raise ValueError(f"observation has {n} camera frames; the policy takes {self.config.n_cameras}")
            image = image[0] if n == 1 else tuple(image)
        elif image is not None and self.config.n_cameras != 1:
            raise ValueError(f"observation has 1 camera frame; the policy takes {self.config.n_cameras}")
        try:
            return self._step(image, state, event, t0)
        except BaseException:
            # A step that failed half-way (an exception inside a layer, out of memory) must not
            # leave tokens behind: back to the last commit.
            self.kv_store.rollback()
            raise

    def _finish_step(self, step: int, bins: np.ndarray, first_logits: np.ndarray, event: bool, t0: float) -> Action:
        """After the step's action tokens are committed: the action from its bins, the gate's
        decision on the step (written to long-term memory or not), the counters, the stats."""
        bins = bins.reshape(self.space.chunk, self.space.dim)
        positions = np.stack([self.space.from_bins(b) for b in bins])
        if self._defer_gate:
            self._pending_gate = (step, self.last_observation_embedding, event, positions[0], self._task_start)
            decision = self._scored or GateDecision(value=0.0, written=False, action_delta=0.0, discrete=False,
                                                    surprise=0.0)
        else:
            decision = self.gate.update(positions[0], event=event, observation=self.last_observation_embedding)
            self._record_gate(step, decision, self._task_start)
        self.step_index += 1
        stats = self._stats(step, decision, (time.perf_counter() - t0) * 1000.0)
        return Action(step, self.space.joint_names, positions, bins, decision, stats, first_logits)

    def _record_gate(self, step: int, decision: GateDecision, task_start: bool) -> None:
        kind = TASK_START if task_start else ACTION_EVENT if decision.acted else ""
        self.kv_store.set_gate(step, decision.value, decision.written, kind)
        self.writes_total += int(decision.written)
        self.write_rate += 0.05 * (float(decision.written) - self.write_rate)

    def _score_executed(self, executed: np.ndarray) -> None:
        """Score the step waiting for its executed actions: the gate reads each action sent (one
        update per control tick, as when every tick is a step, so its windows keep their meaning
        in ticks), with the step's observation and event on the first; the step's decision is the
        strongest of them, written if any wrote. A step whose chunk sent nothing (inputs went stale,
        a newer chunk came first) is scored by its chunk's first action. A step no longer in the
        memory (a reset, a loaded snapshot) is not scored."""
        pending, self._pending_gate, self._scored = self._pending_gate, None, None
        if pending is None:
            return
        step, embedding, event, first, task_start = pending
        if step not in {s for s, *_ in self.kv_store.table.step_summary()}:
            return
        actions = executed if len(executed) else first[None]
        decisions = [self.gate.update(a, event=event and i == 0, observation=embedding if i == 0 else None)
                     for i, a in enumerate(actions)]
        best = max(decisions, key=lambda d: d.value)
        self._scored = replace(best, written=any(d.written for d in decisions),
                               acted=any(d.acted for d in decisions))
        self._record_gate(step, self._scored, task_start)

    def set_options(self, *, recent_steps: int | None = None, gate: GateConfig | None = None,
                    clear_memory_on_instruction: bool | None = None) -> None:
        if recent_steps is not None:
            if recent_steps < 0:
                raise ValueError(f"recent_steps must be >= 0, got {recent_steps}")
            self.kv_store.recent_steps = int(recent_steps)
            self.config = replace(self.config, recent_steps=int(recent_steps))
        if gate is not None:
            gate.validate()
            self.gate.config = gate
            self.config = replace(self.config, gate=gate)
        if clear_memory_on_instruction is not None:
            self.config = replace(self.config, clear_memory_on_instruction=bool(clear_memory_on_instruction))

    def begin_task(self, instruction: str | None = None) -> int:
        """A task boundary: the next steps belong to a new task. Returns the new task's index.

        The memory keeps what it holds and ranks the finished tasks' steps below the new one's
        (stale ones leave first). The instruction (``instruction``, or the pinned one again) is
        pinned anew after everything the cache holds, so the pinned segment itself marks the
        boundary in what the model reads: older tasks' steps before it, the new task's after it.
        (Through the causal mask a token knows whether the instruction precedes it: the trained
        policy tells the current task's facts from stale ones by that, not by distance alone.)
        The next step is a gate event (written): the task's first step is where it began.
        Raises BudgetError, with no boundary recorded, when the instruction cannot fit.
        """
        self.set_instruction(self.instruction if instruction is None else instruction)
        self._task_event = True
        return self.kv_store.table.begin_task()

    def reserve_step(self, image, state) -> int:
        """Count a step with this observation (observation + action tokens; nothing is written) in
        every budget check from now on: a budget or an instruction that leaves no room for it is
        refused, where a check that knew only the steps seen so far let a first step, or one
        whose joint text has more digits, fail every tick. Returns the step's tokens."""
        n = int(self._step_tokens(image, np.asarray(state, dtype=np.float64).reshape(-1)))
        store = self.kv_store
        store.min_step_tokens = max(int(store.min_step_tokens), n)
        return n

    def instruction_error(self, instruction: str) -> str | None:
        """Why ``instruction`` would be refused by set_instruction now (it cannot fit beside one
        step), or None; nothing changes. A node checks a parameter with it before accepting it."""
        store = self.kv_store
        n = int(self._instruction_tokens(instruction))
        reason = budget_error(store.layout, store.budget_bytes, n, store.step_tokens)
        return reason and f"instruction of {n} tokens refused: {reason}"

    def stats(self) -> MemoryStats:
        return self.kv_store.stats()

    def is_out_of_memory(self, exc: BaseException) -> bool:
        """Whether ``exc`` from step() means the device ran out of memory (the node then shrinks
        the budget and retries); a backend whose runtime has such an error says so."""
        return False

    def free_memory_bytes(self) -> int:
        """Memory free where this policy allocates its KV store (host memory unless a backend
        says otherwise): a budget above it cannot be allocated."""
        return int(psutil.virtual_memory().available)

    def memory_map(self) -> list[tuple[int, float, bool, int]]:
        return self.kv_store.table.step_summary()
