"""MemoryStore: the bookkeeping every backend's KV store shares, over a small storage surface.

The segment table, the budget checks, the view cap, eviction by the planner and the execution of
its move plan are the same whatever holds the keys and values; a backend subclass implements only
its storage, the way ``CacheLayerMixin`` is the whole contract of a transformers cache layer:

    capacity                        token slots the budget bought (attribute or property)
    allocated_bytes                 bytes the storage holds (property)
    _storage_tokens() -> int        tokens held now, committed plus uncommitted
    _storage_truncate(n)            forget every token past the first n (rollback)
    _storage_compact(keep, moves)   keep only ``keep``, each moved to its slot in ``moves``
                                    (``memory.planner.plan_moves(keep)``), keys re-rotated by
                                    ``moves.delta`` where ``moves.rotates``; called before
                                    ``moves.apply_to(keep)``: the segments still carry their old
                                    start / pos_start
    _storage_resize(capacity) -> int  reallocate at ``capacity`` keeping the used tokens; returns
                                    the capacity actually allocated
    _attention_scores() -> ndarray | None  optional: accumulated attention per used slot (H2O)
    _storage_fill(n, rng)           optional, benchmarks only: write n tokens of filler at the next
                                    slots without running the model (``bench scaling`` fills a
                                    256 MiB store in seconds this way, then times real steps)

The subclass calls ``MemoryStore.__init__`` (which validates the settings and checks that the
budget holds one step), then allocates its storage at ``self.layout.capacity(budget_bytes)``.

The episode API on top (what a policy runtime calls each step):
    start = store.reserve(n)    # make room for n new tokens (evicts by the policy if needed)
    ... the backend writes n tokens at positions start.. ...
    store.commit(kind, step)    # the tokens written since the last commit form a segment
    store.set_gate(step, gate, written, event)
"""
from __future__ import annotations

import numpy as np

from aura_ros.memory.budget import BudgetError, KVLayout, budget_error, view_capacity
from aura_ros.memory.planner import MovePlan, plan_eviction, plan_moves
from aura_ros.memory.scorers import EvictionPolicy, action_gated
from aura_ros.memory.segments import Kind, Segment, SegmentTable
from aura_ros.memory.stats import MemoryStats


class MemoryStore:
    """One endless episode's memory at a fixed budget (batch size 1); storage is the subclass's."""

    capacity: int

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
        # When full, free at least this fraction of the capacity at once (see planner.plan_eviction).
        self.block_fraction = float(block_fraction)
        # What the policy reads is bounded by the trained context as well as by the budget (0: the
        # budget only); see memory.budget.view_capacity.
        self.max_context_steps = int(max_context_steps)
        self.min_step_tokens = int(min_step_tokens)
        self.table = SegmentTable()
        self.evictions_total = 0
        self.evicted_written_total = 0  # long-term steps evicted: a sign of budget pressure
        self.current_step = 0
        self._last_step, self.last_step_tokens = -1, 0  # the newest step's size (budget checks)
        capacity = layout.capacity(budget_bytes)
        if capacity < self.min_step_tokens or capacity <= 0:
            raise BudgetError(f"budget of {budget_bytes} bytes holds {capacity} tokens "
                              f"({self._token_cost()}); one step needs {self.min_step_tokens}")
        self.budget_bytes = int(budget_bytes)

    def _token_cost(self) -> str:
        """What one token costs, for the budget's refusal (a backend adds its own units)."""
        return f"{self.layout.bytes_per_token} bytes each"

    # ----------------------------------------------------------------- the storage surface
    @property
    def allocated_bytes(self) -> int:
        raise NotImplementedError

    def _storage_tokens(self) -> int:
        raise NotImplementedError

    def _storage_truncate(self, n: int) -> None:
        raise NotImplementedError

    def _storage_compact(self, keep: list[Segment], moves: MovePlan) -> None:
        raise NotImplementedError

    def _storage_resize(self, capacity: int) -> int:
        raise NotImplementedError

    def _attention_scores(self) -> np.ndarray | None:
        return None

    def _storage_fill(self, n: int, rng: np.random.Generator) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be filled without its model (benchmarks only)")

    # ----------------------------------------------------------------- sizes
    @property
    def used_tokens(self) -> int:
        return self._storage_tokens()

    @property
    def uncommitted_tokens(self) -> int:
        return self._storage_tokens() - self.table.used_tokens

    @property
    def free_tokens(self) -> int:
        return self.capacity - self.used_tokens

    @property
    def used_bytes(self) -> int:
        return self.layout.bytes_for(self.used_tokens)

    @property
    def pinned_tokens(self) -> int:
        return self.table.pinned_tokens

    @property
    def next_position(self) -> int:
        """Position id of the next token (uncommitted tokens count one position each)."""
        return self.table.next_position + self.uncommitted_tokens

    @property
    def track_attention(self) -> bool:
        return self.policy.uses_attention

    # ----------------------------------------------------------------- episode API
    def reserve(self, n_tokens: int) -> int:
        """Make room for ``n_tokens`` new tokens (evicting by the policy if needed).

        Returns the position id of the first new token. Eviction re-places the kept tokens, so
        position ids for the next forward pass must be computed after this call.
        """
        if self.uncommitted_tokens:
            raise RuntimeError("commit() the tokens of the previous forward pass before reserve()")
        if n_tokens > self.capacity - self.table.protected_tokens(self.policy.protect_pinned):
            raise BudgetError(
                f"{n_tokens} tokens do not fit in a cache of {self.capacity} tokens with "
                f"{self.table.pinned_tokens} pinned; raise the budget")
        view = self.capacity if self.max_context_steps <= 0 else view_capacity(
            self.capacity, self.table.pinned_tokens, max(self.step_tokens, n_tokens), self.max_context_steps)
        self._evict_until(view, n_tokens, block=True)
        return self.next_position

    def commit(self, kind: Kind | str, step: int, pos_span: int | None = None,
               gate: float = 1.0, written: bool | None = None) -> Segment | None:
        """The tokens written since the last commit become one segment.

        pos_span: how far the running position advances across the segment (default: its
        length; for mrope image chunks the caller passes max position + 1 - start).
        """
        kind = Kind(kind)
        start = self.table.used_tokens
        length = self._storage_tokens() - start
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

    def set_gate(self, step: int, gate: float, written: bool, event: str = "") -> None:
        """The gate's decision on ``step``: its value, whether it is long-term memory, and the kind
        of event it was (segments.EVENT_KINDS)."""
        self.table.set_gate(step, gate, written, event)

    def rollback(self) -> int:
        """Forget the tokens written since the last commit (a failed step, a scored question);
        returns how many."""
        n = self.uncommitted_tokens
        if n:
            self._storage_truncate(self.table.used_tokens)
        return n

    @property
    def step_tokens(self) -> int:
        """Tokens one step needs: the largest kept step (observation + action segments only, so
        a long instruction or an old outlier does not inflate it), at least ``min_step_tokens``."""
        sizes = [tokens for *_, tokens in self.table.step_summary()]
        return max([self.min_step_tokens, self.last_step_tokens, *sizes])

    def budget_error(self, budget_bytes: int) -> str | None:
        """Why ``budget_bytes`` cannot hold the pinned tokens plus one step now, or None."""
        return budget_error(self.layout, budget_bytes, self.table.pinned_tokens, self.step_tokens)

    def set_budget(self, budget_bytes: int) -> None:
        """Change the hard budget at run time: evict down to it, then the storage reallocates."""
        reason = self.budget_error(budget_bytes)
        if reason:
            raise BudgetError(reason)
        if self.uncommitted_tokens:
            raise RuntimeError("set_budget() between steps only (uncommitted tokens present)")
        capacity = self.layout.capacity(budget_bytes)
        if capacity == self.capacity:  # same storage: nothing to evict or reallocate
            self.budget_bytes = int(budget_bytes)
            return
        self._evict_until(capacity, 0)
        allocated = self._storage_resize(capacity)
        if self.capacity != allocated:  # a storage that keeps capacity as a plain attribute
            self.capacity = allocated
        self.budget_bytes = int(budget_bytes)

    def clear_memory(self, keep_pinned: bool = True) -> None:
        """Forget the episode; the pinned instruction stays unless keep_pinned is False."""
        keep = [s for s in self.table.segments if keep_pinned and s.kind in (Kind.PINNED, Kind.SINK)]
        self._compact(keep)

    def drop_pinned(self) -> None:
        """Remove the pinned segments (before a new instruction is committed)."""
        self._compact([s for s in self.table.segments if s.kind not in (Kind.PINNED, Kind.SINK)])

    def restore_counters(self, segments: list[Segment], current_step: int | None = None) -> None:
        """Take ``segments`` as the table (a snapshot's, its tokens already in storage) and set the
        step counters as the commits that made it would have."""
        self.table.segments = list(segments)
        steps = [s.step for s in segments if s.is_step]
        last = max(steps, default=-1)
        self.current_step = (max(steps) if steps else 0) if current_step is None else int(current_step)
        self._last_step = last
        self.last_step_tokens = sum(s.length for s in segments if s.is_step and s.step == last)

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
        """Evict by the planner until ``incoming`` tokens fit in ``capacity``; returns segments evicted.
        block: free at least ``block_fraction`` of ``capacity`` at once (a step's reserve)."""
        attention = self._attention_scores() if self.track_attention else None
        block = int(self.block_fraction * capacity) if block else 0
        plan = plan_eviction(self.table, self.policy, capacity=capacity, incoming=incoming,
                             current_step=self.current_step, recent_steps=self.recent_steps,
                             attention=attention, block_tokens=block)
        if plan is None:
            return 0
        self.evicted_written_total += plan.dropped_written_steps
        self._compact(plan.keep)
        self.evictions_total += plan.dropped_segments
        return plan.dropped_segments

    def _compact(self, keep: list[Segment]) -> None:
        """Execute the move plan: kept segments to contiguous slots and positions (keys re-rotated)."""
        if self.uncommitted_tokens:
            raise RuntimeError("cannot compact with uncommitted tokens in the cache")
        moves = plan_moves(keep)
        self._storage_compact(keep, moves)
        moves.apply_to(keep)
        self.table.segments = keep
