"""The memory plan, backend-neutral: what leaves, in which order, and where the rest moves."""
from __future__ import annotations

import numpy as np
import pytest

from aura_ros.memory import BudgetError, Kind, Segment, SegmentTable, action_gated, sliding_window
from aura_ros.memory.planner import plan_eviction, plan_moves


def table(steps: int, tokens: int = 10, pinned: int = 5, written=()) -> SegmentTable:
    t = SegmentTable()
    t.append(Segment(Kind.PINNED, -1, 0, pinned, 0, pinned))
    for s in range(steps):
        start = t.used_tokens
        t.append(Segment(Kind.OBSERVATION, s, start, tokens - 2, start, tokens - 2, 0.9 if s in written else 0.1,
                         s in written))
        t.append(Segment(Kind.ACTION, s, start + tokens - 2, 2, start + tokens - 2, 2, 0.9 if s in written else 0.1,
                         s in written))
    return t


def kept_steps(plan) -> list[int]:
    return sorted({s.step for s in plan.keep if s.is_step})


def test_nothing_to_do_when_it_fits():
    assert plan_eviction(table(3), action_gated(), capacity=100, incoming=10, current_step=2, recent_steps=2) is None


def test_action_gate_drops_transient_steps_first_and_keeps_the_instruction():
    t = table(10, written={2, 5})
    plan = plan_eviction(t, action_gated(), capacity=105, incoming=20, current_step=9, recent_steps=3)
    assert plan.freed_tokens >= 20 and plan.dropped_written_steps == 0
    assert {2, 5, 7, 8, 9} <= set(kept_steps(plan))
    assert plan.keep[0].kind is Kind.PINNED


def test_a_block_frees_more_at_once_from_outside_the_recent_window_only():
    t = table(20)
    one = plan_eviction(t, sliding_window(), capacity=205, incoming=10, current_step=19, recent_steps=4)
    block = plan_eviction(table(20), sliding_window(), capacity=205, incoming=10, current_step=19, recent_steps=4,
                          block_tokens=60)
    # the sliding window does not protect the instruction: it is the oldest and goes first
    assert one.freed_tokens == 15 and kept_steps(one) == list(range(1, 20))
    assert block.freed_tokens == 65 and kept_steps(block) == list(range(6, 20))  # six steps went together
    # The block never reaches into the recent window: only what must fit may come from there.
    tight = plan_eviction(table(6), sliding_window(), capacity=65, incoming=10, current_step=5, recent_steps=4,
                          block_tokens=1000)
    assert set(kept_steps(tight)) == {2, 3, 4, 5} and tight.freed_tokens == 25


def test_impossible_requests_raise_with_the_numbers():
    with pytest.raises(BudgetError, match="cannot free"):
        plan_eviction(table(1), action_gated(), capacity=16, incoming=20, current_step=0, recent_steps=0)


def test_moves_pack_slots_and_positions_and_only_move_what_follows_a_gap():
    t = table(5)
    keep = [s for s in t.segments if s.step not in (1,)]
    moves = plan_moves(keep)
    assert moves.first_slot == 15 and moves.used_tokens == 45
    assert moves.src[0] == 25 and moves.src.size == 30 and np.all(moves.delta == -10)
    moves.apply_to(keep)
    assert [s.start for s in keep] == [0, 5, 13, 15, 23, 25, 33, 35, 43]
    assert all(s.pos_start == s.start for s in keep)
    none = plan_moves(table(3).segments)
    assert not none.moves and not none.rotates
