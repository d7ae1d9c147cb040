"""Stand-in for ``aura_ros.memory.store.MemoryStore`` (the shared bookkeeping every backend's store
subclasses) until that module lands on main: the same constructor and the same storage surface
(``capacity``, ``allocated_bytes``, ``_storage_tokens``, ``_storage_truncate``, ``_storage_compact``,
``_storage_resize``, ``_attention_scores``), the bookkeeping as the transformers cache does it.
Deleted once the MLX store subclasses the shared one."""
from __future__ import annotations

from aura_ros.memory.budget import BudgetError, KVLayout, budget_error, view_capacity
from aura_ros.memory.planner import plan_eviction, plan_moves
from aura_ros.memory.scorers import EvictionPolicy, action_gated
from aura_ros.memory.segments import Kind, Segment, SegmentTable
from aura_ros.memory.stats import MemoryStats


class MemoryStore:
    """The episode API over a backend's fixed-slot storage (batch size 1)."""

    def __init__(self, layout: KVLayout, budget_bytes: int, policy: EvictionPolicy | None = None,
                 recent_steps: int = 8, min_step_tokens: int = 1, block_fraction: float = 0.0,
                 max_context_steps: int = 0):
        if not 0.0 <= block_fraction < 1.0:
            raise ValueError(f"block_fraction must be in [0, 1), got {block_fraction}")
        if recent_steps < 0:
            raise ValueError(f"recent_steps must be >= 0, got {recent_steps}")
        self.layout = layout
        self.policy = policy or action_gated()
        self.recent_steps = int(recent_steps)
        self.block_fraction = float(block_fraction)
        self.max_context_steps = int(max_context_steps)
        self.min_step_tokens = int(min_step_tokens)
        self.table = SegmentTable()
        self.evictions_total = 0
        self.evicted_written_total = 0
        self.current_step = 0
        self._last_step, self.last_step_tokens = -1, 0
        capacity = layout.capacity(budget_bytes)
        if capacity < self.min_step_tokens or capacity <= 0:
            raise BudgetError(f"budget of {budget_bytes} bytes holds {capacity} tokens "
                              f"({layout.bytes_per_token} bytes each); one step needs {self.min_step_tokens}")
        self.budget_bytes = int(budget_bytes)
        self._storage_resize(capacity)

    # ----------------------------------------------------------------- the storage surface
    @property
    def capacity(self) -> int:
        raise NotImplementedError

    @property
    def allocated_bytes(self) -> int:
        raise NotImplementedError

    def _storage_tokens(self) -> int:
        raise NotImplementedError

    def _storage_truncate(self, n: int) -> None:
        raise NotImplementedError

    def _storage_compact(self, keep, moves) -> None:
        raise NotImplementedError

    def _storage_resize(self, capacity: int) -> int:
        raise NotImplementedError

    def _attention_scores(self):
        return None

    # ----------------------------------------------------------------- sizes
    @property
    def used_tokens(self) -> int:
        return self._storage_tokens()

    @property
    def used_bytes(self) -> int:
        return self.layout.bytes_for(self.used_tokens)

    @property
    def pinned_tokens(self) -> int:
        return self.table.pinned_tokens

    @property
    def next_position(self) -> int:
        return self.table.next_position + (self.used_tokens - self.table.used_tokens)

    # ----------------------------------------------------------------- episode API
    def reserve(self, n_tokens: int) -> int:
        if self.used_tokens != self.table.used_tokens:
            raise RuntimeError("commit() the tokens of the previous forward pass before reserve()")
        if n_tokens > self.capacity - self.table.protected_tokens(self.policy.protect_pinned):
            raise BudgetError(f"{n_tokens} tokens do not fit in a cache of {self.capacity} tokens with "
                              f"{self.table.pinned_tokens} pinned; raise the budget")
        view = self.capacity if self.max_context_steps <= 0 else view_capacity(
            self.capacity, self.table.pinned_tokens, max(self.step_tokens, n_tokens), self.max_context_steps)
        self._evict_until(view, n_tokens, block=True)
        return self.next_position

    def commit(self, kind, step: int, pos_span: int | None = None, gate: float = 1.0,
               written: bool | None = None) -> Segment | None:
        kind = Kind(kind)
        start = self.table.used_tokens
        length = self.used_tokens - start
        if length <= 0:
            return None
        span = length if pos_span is None else int(pos_span)
        if kind in (Kind.PINNED, Kind.SINK):
            step, written = -1, True
        seg = Segment(kind, int(step), start, length, self.table.next_position, span, float(gate),
                      bool(written) if written is not None else False)
        self.table.append(seg)
        if seg.is_step:
            if seg.step != self._last_step:
                self._last_step, self.last_step_tokens = seg.step, 0
            self.last_step_tokens += seg.length
            self.current_step = max(self.current_step, seg.step)
        sinks = self.policy.sink_tokens
        if sinks and seg.start < sinks and seg.kind is not Kind.SINK:
            self.table.split(len(self.table) - 1, sinks - seg.start, Kind.SINK)
        return seg

    def set_gate(self, step: int, gate: float, written: bool) -> None:
        self.table.set_gate(step, gate, written)

    def rollback(self) -> int:
        n = self.used_tokens - self.table.used_tokens
        self._storage_truncate(self.table.used_tokens)
        return n

    @property
    def step_tokens(self) -> int:
        sizes = [tokens for *_, tokens in self.table.step_summary()]
        return max([self.min_step_tokens, self.last_step_tokens, *sizes])

    def budget_error(self, budget_bytes: int) -> str | None:
        return budget_error(self.layout, budget_bytes, self.table.pinned_tokens, self.step_tokens)

    def set_budget(self, budget_bytes: int) -> None:
        reason = self.budget_error(budget_bytes)
        if reason:
            raise BudgetError(reason)
        if self.used_tokens != self.table.used_tokens:
            raise RuntimeError("set_budget() between steps only (uncommitted tokens present)")
        capacity = self.layout.capacity(budget_bytes)
        if capacity != self.capacity:
            self._evict_until(capacity, 0)
            self._storage_resize(capacity)
        self.budget_bytes = int(budget_bytes)

    def clear_memory(self, keep_pinned: bool = True) -> None:
        self._compact([s for s in self.table.segments if keep_pinned and s.kind in (Kind.PINNED, Kind.SINK)])

    def drop_pinned(self) -> None:
        self._compact([s for s in self.table.segments if s.kind not in (Kind.PINNED, Kind.SINK)])

    def stats(self) -> MemoryStats:
        summary = self.table.step_summary()
        steps = [s for s, *_ in summary]
        return MemoryStats(
            budget_bytes=self.budget_bytes, allocated_bytes=self.allocated_bytes, used_bytes=self.used_bytes,
            capacity_tokens=self.capacity, used_tokens=self.used_tokens, pinned_tokens=self.pinned_tokens,
            segments_kept=len(self.table), steps_kept=len(steps),
            long_term_steps_kept=sum(1 for _, _, w, _ in summary if w),
            oldest_kept_step=steps[0] if steps else -1,
            max_position=max(self.next_position - 1, 0), evictions_total=self.evictions_total,
            evicted_written_total=self.evicted_written_total, kept_steps=steps)

    # ----------------------------------------------------------------- eviction
    def _evict_until(self, capacity: int, incoming: int, block: bool = False) -> int:
        block = int(self.block_fraction * capacity) if block else 0
        plan = plan_eviction(self.table, self.policy, capacity=capacity, incoming=incoming,
                             current_step=self.current_step, recent_steps=self.recent_steps,
                             attention=self._attention_scores(), block_tokens=block)
        if plan is None:
            return 0
        self.evicted_written_total += plan.dropped_written_steps
        self._compact(plan.keep)
        self.evictions_total += plan.dropped_segments
        return plan.dropped_segments

    def _compact(self, keep: list[Segment]) -> None:
        if self.used_tokens != self.table.used_tokens:
            raise RuntimeError("cannot compact with uncommitted tokens in the cache")
        moves = plan_moves(keep)
        self._storage_compact(keep, moves)
        moves.apply_to(keep)
        self.table.segments = keep
