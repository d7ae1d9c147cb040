"""The memory plan: which segments stay, and where the kept ones move.

The planner only decides; each backend's KV store executes the plan on its own storage (the
transformers cache moves tensor slots and re-rotates keys, llama.cpp removes and shifts
positions). Both answers are pure functions of the segment table and the policy, so every
backend evicts the same steps in the same order.

    plan = plan_eviction(table, policy, capacity=..., incoming=..., current_step=..., recent_steps=...)
    if plan is not None:
        moves = plan_moves(plan.keep)    # slots and position shifts, for the backend
        store.execute(moves)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aura_ros.memory.budget import BudgetError
from aura_ros.memory.scorers import EvictionPolicy
from aura_ros.memory.segments import GroupView, Kind, Segment, SegmentTable


@dataclass(frozen=True)
class EvictionPlan:
    """The segments that stay (in cache order) and what leaves."""

    keep: list[Segment]
    dropped_segments: int
    dropped_written_steps: int  # long-term steps that had to go: a sign of budget pressure
    freed_tokens: int


@dataclass(frozen=True)
class MovePlan:
    """Where the kept segments go: contiguous slots from 0 and contiguous positions from 0.

    Arrays of the tokens that move (every token from the first moved segment on):
    ``src`` [M] their current slots, ``delta`` [M] the change of their position id;
    the kept tokens land at slots ``first_slot .. first_slot + M``. Per kept segment:
    ``new_starts`` [S] and ``new_pos`` [S].
    """

    first_slot: int
    src: np.ndarray  # int64 [M]
    delta: np.ndarray  # int64 [M]
    new_starts: np.ndarray  # int64 [S]
    new_pos: np.ndarray  # int64 [S]
    used_tokens: int

    @property
    def moves(self) -> bool:
        return self.src.size > 0

    @property
    def rotates(self) -> bool:
        return bool(np.any(self.delta != 0))

    def apply_to(self, keep: list[Segment]) -> None:
        """Write the new slots and positions into the kept segments."""
        for seg, start, pos in zip(keep, self.new_starts.tolist(), self.new_pos.tolist()):
            seg.start, seg.pos_start = start, pos


def group_view(table: SegmentTable, current_step: int,
               attention: np.ndarray | None = None) -> tuple[list[list[int]], GroupView]:
    """One row per eviction group (a step's segments together; each pinned/sink segment alone).

    attention: per-slot accumulated attention [capacity] (H2O); None when the policy does not use it.
    Returns the member segment indices of each group and the GroupView the scorers read.
    """
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(table.group_keys()):
        groups.setdefault(key, []).append(i)
    members = list(groups.values())
    segs = table.segments
    latest = table.latest_event_tasks()
    rows = []
    for idx in members:
        first = segs[idx[0]]
        tokens = sum(segs[i].length for i in idx)
        att = (sum(float(attention[segs[i].start: segs[i].end].sum()) for i in idx) / tokens
               if attention is not None else 0.0)
        rows.append((first.step, max(current_step - first.step, 0) if first.is_step else 0,
                     tokens, first.gate, first.written, att, first.kind is Kind.PINNED, first.kind is Kind.SINK,
                     max(table.current_task - first.task, 0) if first.is_step else 0,
                     first.is_step and first.written and first.task < latest.get(first.event, -1)))
    cols = list(zip(*rows)) if rows else [()] * 10
    view = GroupView(
        step=np.asarray(cols[0], dtype=np.int64), age=np.asarray(cols[1], dtype=np.int64),
        tokens=np.asarray(cols[2], dtype=np.int64), gate=np.asarray(cols[3], dtype=np.float64),
        written=np.asarray(cols[4], dtype=bool), attention=np.asarray(cols[5], dtype=np.float64),
        pinned=np.asarray(cols[6], dtype=bool), sink=np.asarray(cols[7], dtype=bool),
        task_age=np.asarray(cols[8], dtype=np.int64), superseded=np.asarray(cols[9], dtype=bool))
    return members, view


def plan_eviction(table: SegmentTable, policy: EvictionPolicy, *, capacity: int, incoming: int,
                  current_step: int, recent_steps: int, attention: np.ndarray | None = None,
                  block_tokens: int = 0) -> EvictionPlan | None:
    """Evict groups until ``incoming`` more tokens fit in ``capacity``; None when they already fit.

    block_tokens: when an eviction is needed anyway, free at least this many tokens (from the
    groups outside the recent window only), so that the cost of moving and re-rotating the kept
    keys is paid once per block rather than once per step.
    """
    excess = table.used_tokens + incoming - capacity
    if excess <= 0:
        return None
    members, view = group_view(table, current_step, attention if policy.uses_attention else None)
    never = view.sink | (view.pinned & policy.protect_pinned)
    window = (~view.pinned & ~view.sink) & (view.step > current_step - recent_steps) & policy.protect_recent
    beyond = np.zeros(len(view), dtype=bool)  # the window's oldest steps past its share
    if policy.protect_recent and policy.recent_share < 1.0:
        # Under a tight budget the window would crowd out all long-term memory: when long-term
        # steps would have to go, it keeps only this share of what the protected tokens leave,
        # newest first and contiguous. Every reserve() opens a new step, so even the newest kept
        # step is complete and may go.
        allowed = policy.recent_share * (capacity - int(view.tokens[never].sum()))
        used = 0
        for g in np.argsort(-view.step, kind="stable"):
            if window[g]:
                used += int(view.tokens[g])
                beyond[g] = used > allowed
    scores = policy.scorer.score(view)
    # The policy's order among the groups outside the window (ties: oldest first). With
    # keep_written, the written ones wait until the transient ones and the window past its share
    # have gone; last, the window itself gives way, oldest first (the budget is hard; the window
    # is a preference).
    ranked = [int(g) for g in np.lexsort((view.step, scores)) if not never[g]]
    outside = [g for g in ranked if not window[g]]
    oldest_first = [int(g) for g in np.argsort(view.step, kind="stable")]
    if policy.keep_written:
        # Stale first: the steps of tasks more than ``task_horizon`` tasks back, and (with
        # ``supersede``) a finished task's events once a later task has had its own of the same
        # kind (older tasks first), before even the current task's transient steps, so facts of
        # finished tasks never crowd out the new ones, nor sit beside them for the policy to
        # read instead. A written step past the window's share is long-term memory already: it
        # waits with the other written steps, in the policy's order.
        horizon = policy.task_horizon
        old = (np.zeros(len(view), dtype=bool) if horizon is None else view.task_age > horizon)
        if policy.supersede:
            old = old | view.superseded
        stale = old & ~view.pinned & ~view.sink & ~window
        by_task = [int(g) for g in np.lexsort((view.step, -view.task_age)) if stale[g]]
        passes = (by_task,
                  [g for g in outside if not view.written[g] and not stale[g]],
                  [g for g in oldest_first if beyond[g] and not view.written[g]],
                  [g for g in ranked if view.written[g] and (beyond[g] or not window[g]) and not stale[g]],
                  [g for g in oldest_first if window[g] and not beyond[g]])
    else:
        passes = (outside, [g for g in oldest_first if window[g]])
    evict: list[int] = []
    freed = 0
    block = int(block_tokens)
    first_passes = 2 if policy.keep_written else 1
    for i, groups in enumerate(passes):
        # A block is rounded up from the first passes only: stale and transient steps (or,
        # without keep_written, whatever the policy ranks first), never the window or the
        # long-term memory of current tasks.
        target = max(excess, block) if i < first_passes else excess
        for g in groups:
            if freed >= target:
                break
            evict.append(g)
            freed += int(view.tokens[g])
    if freed < excess:
        raise BudgetError(
            f"cannot free {excess} tokens: {table.pinned_tokens} pinned tokens and the "
            f"current step fill the cache of {capacity} tokens; raise the budget")
    dropped = {i for g in evict for i in members[g]}
    written = sum(1 for g in evict if view.written[g] and not view.pinned[g] and not view.sink[g])
    keep = [s for i, s in enumerate(table.segments) if i not in dropped]
    return EvictionPlan(keep, len(dropped), written, freed)


def plan_moves(keep: list[Segment]) -> MovePlan:
    """Slots and position shifts that pack ``keep`` to contiguous slots and positions from 0."""
    n_keep = len(keep)
    starts = np.fromiter((s.start for s in keep), dtype=np.int64, count=n_keep)
    lengths = np.fromiter((s.length for s in keep), dtype=np.int64, count=n_keep)
    pos_starts = np.fromiter((s.pos_start for s in keep), dtype=np.int64, count=n_keep)
    spans = np.fromiter((s.pos_span for s in keep), dtype=np.int64, count=n_keep)
    new_starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64) if n_keep else starts
    new_pos = np.concatenate(([0], np.cumsum(spans)[:-1])).astype(np.int64) if n_keep else pos_starts
    moved = np.nonzero((new_starts != starts) | (new_pos != pos_starts))[0]
    empty = np.zeros(0, dtype=np.int64)
    if not moved.size:
        return MovePlan(int(lengths.sum()), empty, empty, new_starts, new_pos, int(lengths.sum()))
    first = int(moved[0])
    # Source slots of every token from the first moved segment on, and each token's position
    # change: built with numpy in one go, not an array per segment.
    seg_len = lengths[first:]
    offsets = np.arange(int(seg_len.sum())) - np.repeat(np.cumsum(seg_len) - seg_len, seg_len)
    src = np.repeat(starts[first:], seg_len) + offsets
    delta = np.repeat(new_pos[first:] - pos_starts[first:], seg_len)
    return MovePlan(int(new_starts[first]), src, delta, new_starts, new_pos, int(lengths.sum()))
