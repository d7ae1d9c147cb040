"""What the memory does with stale facts over an endless run, without a model: task boundaries are
recorded, a finished task's long-term steps rank below the current task's, the steps of tasks past
the horizon leave first, and what the policy reads is bounded by its trained context."""
from __future__ import annotations

import numpy as np
import pytest

from aura_ros.memory import Kind, Segment, SegmentTable, action_gated
from aura_ros.memory.budget import view_capacity
from aura_ros.memory.planner import group_view, plan_eviction
from aura_ros.memory.scorers import UtilityWeights


def add_step(t: SegmentTable, step: int, tokens: int = 10, written: bool = False, gate: float | None = None,
             event: str = "") -> None:
    g = (0.9 if written else 0.1) if gate is None else gate
    start = t.used_tokens
    t.append(Segment(Kind.OBSERVATION, step, start, tokens - 2, start, tokens - 2, g, written))
    t.append(Segment(Kind.ACTION, step, start + tokens - 2, 2, start + tokens - 2, 2, g, written))
    t.set_gate(step, g, written, event)


def stream_table(tasks: list[list[tuple]], pinned: int = 5) -> SegmentTable:
    """Tasks of (step, written[, event kind]) back to back, a boundary before each task after the first."""
    t = SegmentTable()
    t.append(Segment(Kind.PINNED, -1, 0, pinned, 0, pinned))
    for i, steps in enumerate(tasks):
        if i:
            t.begin_task()
        for s, w, *a in steps:
            add_step(t, s, written=w, event=a[0] if a else "")
    return t


def kept(plan) -> set[int]:
    return {s.step for s in plan.keep if s.is_step}


def test_a_task_boundary_is_recorded_on_the_steps_after_it():
    t = stream_table([[(0, True), (1, False)], [(2, True)], [(3, False)]])
    assert t.current_task == 2
    assert [(s.step, s.task) for s in t.segments if s.kind is Kind.OBSERVATION] == [(0, 0), (1, 0), (2, 1), (3, 2)]
    pinned = t.segments[0]
    assert pinned.task == 0  # the instruction belongs to no task: it is never stale
    _, view = group_view(t, current_step=3)
    assert view.task_age.tolist() == [0, 2, 2, 1, 0]  # pinned first, then steps 0..3


def test_an_older_event_leaves_before_a_newer_one_of_the_same_kind_under_pressure():
    # Two tasks, each with one event of equal strength: the previous task's goes first.
    t = stream_table([[(0, True), (1, False)], [(2, True), (3, False)]])
    plan = plan_eviction(t, action_gated(), capacity=25, incoming=10, current_step=3, recent_steps=0)
    assert kept(plan) == {2} and plan.dropped_written_steps == 1
    # The older event even outranks a weaker newer one only within its own task: across tasks the
    # task order decides.
    t = stream_table([[(0, True)], [(1, False), (2, False)]])
    for s in t.segments:
        if s.step == 0:
            s.gate = 0.99
    t.segments[-1].gate = t.segments[-2].gate = 0.51
    t.segments[-1].written = t.segments[-2].written = True
    plan = plan_eviction(t, action_gated(), capacity=25, incoming=10, current_step=3, recent_steps=0)
    assert kept(plan) == {2}


def test_without_a_boundary_the_stronger_event_stays_as_before():
    t = stream_table([[(0, True), (1, False), (2, True)]])
    t.segments[1].gate = t.segments[2].gate = 0.99  # step 0 is the strong one
    plan = plan_eviction(t, action_gated(), capacity=25, incoming=10, current_step=3, recent_steps=0)
    assert kept(plan) == {0}


def test_steps_of_tasks_past_the_horizon_leave_before_the_current_tasks_transient_ones():
    t = stream_table([[(0, True), (1, True)], [(2, True)], [(3, True)], [(4, False), (5, False), (6, False)]])
    # horizon 1: tasks 0 and 1 are stale in task 3; task 2 (the previous one) is not.
    plan = plan_eviction(t, action_gated(), capacity=65, incoming=10, current_step=6, recent_steps=1)
    # The two oldest long-term steps (task 0) went; the current task's transient steps stayed.
    assert kept(plan) == {2, 3, 4, 5, 6} and plan.dropped_written_steps == 2
    # The oldest task goes first: with room for one more step, task 1's event stays.
    t = stream_table([[(0, True)], [(1, True)], [(2, True)], [(3, False), (4, False)]])
    plan = plan_eviction(t, action_gated(), capacity=55, incoming=10, current_step=4, recent_steps=1)
    assert kept(plan) == {1, 2, 3, 4}
    # A wider horizon keeps them, and the current task's transient step goes instead.
    wide = action_gated(UtilityWeights(task_horizon=5))
    t = stream_table([[(0, True)], [(1, True)], [(2, True)], [(3, False), (4, False)]])
    plan = plan_eviction(t, wide, capacity=55, incoming=10, current_step=4, recent_steps=1)
    assert kept(plan) == {0, 1, 2, 4}


def test_the_view_is_bounded_by_the_trained_context_not_only_by_the_budget():
    assert view_capacity(1000, 50, 40, 0) == 1000  # 0: the budget alone
    assert view_capacity(1000, 50, 40, 10) == 450
    assert view_capacity(300, 50, 40, 10) == 300  # a tight budget binds first
    # Two budgets above the view cap plan the same evictions.
    plans = []
    for capacity in (2000, 4000):
        t = stream_table([[(s, s % 7 == 0) for s in range(60)]])
        view = view_capacity(capacity, t.pinned_tokens, 10, 20)
        plans.append(kept(plan_eviction(t, action_gated(), capacity=view, incoming=10, current_step=59,
                                        recent_steps=8)))
    assert plans[0] == plans[1] and len(plans[0]) < 20
    assert np.all(np.diff(sorted(plans[0])) > 0)


# The endless run's cue tasks: a task start (written), the cue (an action event), transient steps,
# the recall (an action event); then the next task.
A, T, S, Q = (True, "action"), (True, "task"), (True, ""), (False, "")  # S: a sight; Q: transient


def steps(start: int, kinds) -> list[tuple]:
    return [(start + i, *k) for i, k in enumerate(kinds)]


def test_a_later_tasks_own_event_supersedes_the_finished_tasks_event_of_the_same_kind():
    # Task 0: start, cue, transient, recall. Task 1: start, transient, its own cue, transient x3.
    t = stream_table([steps(0, [T, A, Q, A]), steps(4, [T, Q, A, Q, Q, Q])])
    _, view = group_view(t, current_step=9)
    # Groups: the pinned instruction, then steps 0..9.
    assert view.superseded.tolist() == [False, True, True, False, True] + [False] * 6
    # Under pressure the finished task's events go first, before the current task's transient
    # steps, the action events as well as its start (which shows where the task before it left
    # the arm).
    plan = plan_eviction(t, action_gated(), capacity=85, incoming=10, current_step=9, recent_steps=2)
    assert kept(plan) == {2, 4, 5, 6, 7, 8, 9} and plan.dropped_written_steps == 3
    plan = plan_eviction(t, action_gated(), capacity=75, incoming=10, current_step=9, recent_steps=2)
    assert kept(plan) == {4, 5, 6, 7, 8, 9} and plan.dropped_written_steps == 3
    # Without the rule the transient steps go first, and the finished task's cue stays beside
    # the new one (two answers for the policy to choose between).
    old = action_gated(UtilityWeights(supersede=False))
    plan = plan_eviction(t, old, capacity=85, incoming=10, current_step=9, recent_steps=2)
    assert {1, 3, 6} <= kept(plan) and 5 not in kept(plan)


def test_a_task_that_has_reacted_to_nothing_yet_keeps_the_previous_tasks_action_events():
    # Task 1 asks for task 0's fact: until it reacts to something, task 0's cue and recall are
    # memory, not stale; only task 0's start is replaced by task 1's.
    t = stream_table([steps(0, [T, A, Q, A]), steps(4, [T, Q, Q, Q, Q])])
    _, view = group_view(t, current_step=8)
    assert view.superseded.tolist() == [False, True] + [False] * 8
    plan = plan_eviction(t, action_gated(), capacity=75, incoming=10, current_step=8, recent_steps=2)
    assert {1, 3} <= kept(plan) and 0 not in kept(plan)
    # A sight (written, no action event) in the new task supersedes no action event.
    t = stream_table([steps(0, [T, A, Q, A]), steps(4, [T, Q, S, Q, Q])])
    _, view = group_view(t, current_step=8)
    assert view.superseded.tolist() == [False, True] + [False] * 8


def test_sights_are_never_superseded_and_the_window_is_never_touched():
    # Task 0's sight is kept by the horizon rule alone: a distractor is a sight too, and one
    # cannot be told from the other.
    t = stream_table([steps(0, [T, S, A]), steps(3, [T, A, S, Q])])
    _, view = group_view(t, current_step=6)
    assert view.superseded.tolist() == [False, True, False, True] + [False] * 4
    # A superseded step inside the protected recent window stays while anything else can go:
    # step 1 (task 0's event, superseded by step 2) is in the window, step 0 (transient) is not.
    t = stream_table([steps(0, [Q, A]), steps(2, [A, Q])])
    whole_window = action_gated(UtilityWeights(recent_share=1.0))
    plan = plan_eviction(t, whole_window, capacity=45, incoming=10, current_step=3, recent_steps=3)
    assert kept(plan) == {1, 2, 3}


def test_event_kinds_are_checked():
    t = stream_table([steps(0, [Q])])
    with pytest.raises(ValueError):
        t.set_gate(0, 0.9, True, "sight")
    t.set_gate(0, 0.1, False, "action")  # not written: no event
    assert t.segments[-1].event == ""
