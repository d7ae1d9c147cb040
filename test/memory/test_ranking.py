"""What stays under pressure: the eviction order among long-term steps (scorers + planner).

The gate's values are graded, so when a budget holds only k long-term steps the k strongest
events of the stream stay, not the k most recent writes; runs of consecutive writes are thinned
from the inside first. Driven through the planner alone (every backend executes its plan) and
once through the transformers GatedKVCache with a tiny model.
"""
from __future__ import annotations

import numpy as np
import torch
from cache_models import BUILDERS

from aura_ros.backends.transformers.cache import GatedKVCache
from aura_ros.backends.transformers.rope import RopeRotator
from aura_ros.memory import ActionGate, Kind, KVLayout, Segment, SegmentTable, action_gated
from aura_ros.memory.planner import group_view, plan_eviction, plan_moves
from aura_ros.memory.scorers import RunEnds, UtilityWeights

LOW, HIGH = np.array([0.0, -1.0, 0.0]), np.array([1.0, 1.0, 1.0])
PINNED, STEP, RECENT = 10, 4, 4
K = 3  # long-term steps the budget holds beside the pinned tokens, the recent window and the new step
# Momentary turns of different sizes (turn rate, on [-1, 1]), the strongest early: a recency
# order would keep the weak late ones.
EVENTS = {20: -0.8, 40: 0.25, 60: 0.6, 80: -0.3, 100: 0.45, 120: 0.25, 140: -0.3, 160: 0.2}
STEPS = 190
CAPACITY = PINNED + STEP * (RECENT + 1 + K)
# The window kept whole, so that these budgets hold exactly K long-term steps (the default share
# lets the window give way to long-term steps: see the tests at the end).
WHOLE_WINDOW = UtilityWeights(recent_share=1.0)


def scripted_stream(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for t in range(STEPS):
        a = np.array([0.5 + rng.uniform(-0.05, 0.05), 0.0, 0.0])
        if t in EVENTS:
            a[1] = EVENTS[t]
        out.append(a)
    return out


def gate_stream():
    gate = ActionGate(LOW, HIGH, discrete=np.array([False, False, True]))
    return [gate.update(a) for a in scripted_stream()]


def strongest(decisions, k: int) -> list[int]:
    written = [t for t, d in enumerate(decisions) if d.written]
    return sorted(sorted(written, key=lambda t: -decisions[t].value)[:k])


def test_gate_ranks_the_scripted_events_by_size():
    decisions = gate_stream()
    written = [t for t, d in enumerate(decisions) if d.written]
    assert written == [0] + sorted(EVENTS)  # each momentary turn once, its return joined
    assert strongest(decisions, K) == [20, 60, 100]


def run_planner(decisions, capacity: int) -> SegmentTable:
    policy = action_gated(WHOLE_WINDOW)
    table = SegmentTable()
    table.append(Segment(Kind.PINNED, -1, 0, PINNED, 0, PINNED, 1.0, True))
    for t, d in enumerate(decisions):
        plan = plan_eviction(table, policy, capacity=capacity, incoming=STEP, current_step=t - 1,
                             recent_steps=RECENT)
        if plan is not None:
            plan_moves(plan.keep).apply_to(plan.keep)
            table.segments = plan.keep
        table.append(Segment(Kind.OBSERVATION, t, table.used_tokens, STEP, table.next_position, STEP))
        table.set_gate(t, d.value, d.written)
    return table


def long_term(table: SegmentTable) -> list[int]:
    return [s for s, _, written, _ in table.step_summary() if written]


def test_planner_keeps_the_k_strongest_events_not_the_k_latest():
    decisions = gate_stream()
    table = run_planner(decisions, CAPACITY)
    kept = long_term(table)
    latest = [t for t, d in enumerate(decisions) if d.written][-K:]
    assert kept == strongest(decisions, K) == [20, 60, 100]
    assert kept != latest


def test_gated_cache_keeps_the_k_strongest_events():
    model = BUILDERS["llama"]()
    layout = KVLayout.from_config(model.config)
    cache = GatedKVCache(model.config, layout.bytes_for(CAPACITY), RopeRotator.from_model(model),
                         policy=action_gated(WHOLE_WINDOW), recent_steps=RECENT)
    torch.manual_seed(0)

    def chunk(ids, kind, step):
        start = cache.reserve(ids.shape[1])
        with torch.no_grad():
            model(input_ids=ids, past_key_values=cache, position_ids=torch.arange(start, start + ids.shape[1])[None])
        cache.commit(kind, step)

    chunk(torch.arange(1, PINNED + 1)[None], Kind.PINNED, -1)
    decisions = gate_stream()
    for t, d in enumerate(decisions):
        chunk(torch.randint(0, 100, (1, STEP)), Kind.OBSERVATION, t)
        cache.set_gate(t, d.value, d.written)
    assert long_term(cache.table) == strongest(decisions, K) == [20, 60, 100]
    assert cache.evicted_written_total == sum(d.written for d in decisions) - K


def test_runs_of_writes_are_thinned_from_the_inside():
    # Long-term steps 10..14 in a row (one manoeuvre written step by step), and 30 and 50 alone,
    # all equally strong; a budget for four of them keeps 10, 14, 30, 50.
    table = SegmentTable()
    table.append(Segment(Kind.PINNED, -1, 0, PINNED, 0, PINNED, 1.0, True))
    for t in [*range(10, 15), 30, 50, 60, 61]:
        table.append(Segment(Kind.OBSERVATION, t, table.used_tokens, STEP, table.next_position, STEP,
                             0.8, t < 60))
    members, view = group_view(table, 61)
    ends = RunEnds().score(view)
    assert [int(s) for s, e in zip(view.step, ends) if e == 1.0] == [10, 14, 30, 50]
    plan = plan_eviction(table, action_gated(WHOLE_WINDOW), capacity=PINNED + STEP * 6, incoming=0,
                         current_step=61, recent_steps=2)
    kept = [s.step for s in plan.keep if s.kind is Kind.OBSERVATION]
    assert kept == [10, 14, 30, 50, 60, 61]


def test_a_much_stronger_step_inside_a_run_outranks_a_weak_lone_write():
    table = SegmentTable()
    table.append(Segment(Kind.PINNED, -1, 0, PINNED, 0, PINNED, 1.0, True))
    for t, g in [(10, 0.8), (11, 0.95), (12, 0.8), (30, 0.5), (60, 0.1), (61, 0.1)]:
        table.append(Segment(Kind.OBSERVATION, t, table.used_tokens, STEP, table.next_position, STEP, g, t < 60))
    plan = plan_eviction(table, action_gated(WHOLE_WINDOW), capacity=PINNED + STEP * 5, incoming=0,
                         current_step=61, recent_steps=2)
    assert [s.step for s in plan.keep if s.kind is Kind.OBSERVATION] == [10, 11, 12, 60, 61]


def test_under_a_tight_budget_the_recent_window_yields_to_long_term_steps():
    # Room for six steps beside the instruction, a window of eight: without a limit the window
    # would take everything and the two written events would go.
    table = SegmentTable()
    table.append(Segment(Kind.PINNED, -1, 0, PINNED, 0, PINNED, 1.0, True))
    for t in range(20):
        written = t in (3, 7)
        table.append(Segment(Kind.OBSERVATION, t, table.used_tokens, STEP, table.next_position, STEP,
                             0.8 if written else 0.1, written))
    capacity = PINNED + STEP * 6
    plan = plan_eviction(table, action_gated(), capacity=capacity, incoming=0, current_step=19, recent_steps=8)
    kept = [s.step for s in plan.keep if s.kind is Kind.OBSERVATION]
    assert kept == [3, 7, 16, 17, 18, 19]  # the events, and the newest of the window in the room left
    whole = action_gated(UtilityWeights(recent_share=1.0))
    plan = plan_eviction(table, whole, capacity=capacity, incoming=0, current_step=19, recent_steps=8)
    assert [s.step for s in plan.keep if s.kind is Kind.OBSERVATION] == list(range(14, 20))


def _steps(table: SegmentTable, steps, written=()) -> None:
    for t in steps:
        w = t in written
        table.append(Segment(Kind.OBSERVATION, t, table.used_tokens, STEP, table.next_position, STEP,
                             0.8 if w else 0.1, w))


def test_the_window_stays_whole_while_transient_steps_can_go():
    # A share of 0.1 does not thin the window when there are transient steps to evict.
    table = SegmentTable()
    table.append(Segment(Kind.PINNED, -1, 0, PINNED, 0, PINNED, 1.0, True))
    _steps(table, range(12), written=(2,))
    plan = plan_eviction(table, action_gated(UtilityWeights(recent_share=0.1)), capacity=PINNED + STEP * 10,
                         incoming=STEP, current_step=11, recent_steps=8)
    assert [s.step for s in plan.keep if s.kind is Kind.OBSERVATION] == [2, *range(4, 12)]


def test_the_window_gives_way_oldest_first_before_an_event_and_the_newest_step_has_no_free_pass():
    # Long-term steps fill what the window leaves: a new step's room comes from the window's
    # oldest unwritten steps (the newest step is complete once a new one is reserved), not from
    # the events.
    table = SegmentTable()
    table.append(Segment(Kind.PINNED, -1, 0, PINNED, 0, PINNED, 1.0, True))
    _steps(table, (1, 3, 5, 6, 7), written=(1, 3, 5))
    policy = action_gated(UtilityWeights(recent_share=0.0))
    plan = plan_eviction(table, policy, capacity=PINNED + STEP * 5, incoming=STEP, current_step=7, recent_steps=8)
    assert [s.step for s in plan.keep if s.kind is Kind.OBSERVATION] == [1, 3, 5, 7]
    plan = plan_eviction(table, policy, capacity=PINNED + STEP * 4, incoming=STEP, current_step=7, recent_steps=8)
    assert [s.step for s in plan.keep if s.kind is Kind.OBSERVATION] == [1, 3, 5]
    assert plan.dropped_written_steps == 0


def test_a_block_is_never_rounded_up_with_long_term_steps():
    table = SegmentTable()
    table.append(Segment(Kind.PINNED, -1, 0, PINNED, 0, PINNED, 1.0, True))
    _steps(table, range(10), written=(0, 1, 2, 3))
    plan = plan_eviction(table, action_gated(), capacity=PINNED + STEP * 10, incoming=STEP, current_step=9,
                         recent_steps=4, block_tokens=STEP * 8)
    # Room for one step was needed; the block takes every transient step outside the window
    # (4 and 5) and stops there: no event is lost to batch an eviction.
    assert [s.step for s in plan.keep if s.kind is Kind.OBSERVATION] == [0, 1, 2, 3, 6, 7, 8, 9]
    assert plan.dropped_written_steps == 0
