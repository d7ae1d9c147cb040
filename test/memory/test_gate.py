"""The action gate on scripted action streams: noise, momentary actions, drift, grippers, novelty.

Streams are generated with fixed seeds; every assertion is about which steps the gate writes.
"""
from __future__ import annotations

import numpy as np
import pytest

from aura_ros.memory import ActionGate, GateConfig

# [forward speed, turn rate, gripper]: a base with a gripper, the shape of the recall benchmark's
# episodes; [0, 1] is the range the issue measured 41% writes on.
LOW, HIGH = np.array([0.0, -1.0, 0.0]), np.array([1.0, 1.0, 1.0])
GRIPPER = np.array([False, False, True])
WARMUP = 10  # steps after which the gate's noise estimate is trusted in these streams


def gate(**cfg) -> ActionGate:
    return ActionGate(LOW, HIGH, discrete=GRIPPER, config=GateConfig(**cfg))


def jittery(n: int, rng: np.random.Generator, base=(0.5, 0.0, 0.0), width=0.05) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        a = np.array(base, dtype=float)
        a[0] += rng.uniform(-width, width)
        a[1] += rng.uniform(-width, width) * 0.5
        out.append(a)
    return out


def writes(g: ActionGate, stream, **kw) -> list[int]:
    return [t for t, a in enumerate(stream) if g.update(a, **kw).written]


@pytest.mark.parametrize("width", [0.02, 0.05, 0.1])
def test_jitter_below_the_noise_floor_writes_nothing_after_warmup(width):
    rng = np.random.default_rng(1)
    w = writes(gate(), jittery(400, rng, width=width))
    assert w[0] == 0 and [t for t in w if t >= WARMUP] == []


@pytest.mark.parametrize("width", [0.0, 0.05])
def test_a_step_change_writes_once(width):
    rng = np.random.default_rng(2)
    stream = jittery(60, rng, width=width) + jittery(60, rng, base=(0.1, 0.0, 0.0), width=width)
    assert [t for t in writes(gate(), stream) if t >= WARMUP] == [60]


@pytest.mark.parametrize("departure", [(0.5, -0.8, 0.0), (0.0, 0.0, 0.0), (0.5, 0.0, 1.0)],
                         ids=["turn", "stop", "pinch"])
@pytest.mark.parametrize("length, window", [(1, 1), (2, 2), (3, 3)])
def test_a_momentary_action_writes_once(departure, length, window):
    rng = np.random.default_rng(3)
    stream = jittery(40, rng) + [np.array(departure)] * length + jittery(40, rng)
    g = gate(return_window=window)
    decisions = [g.update(a) for a in stream]
    assert [t for t, d in enumerate(decisions) if d.written and t >= WARMUP] == [40]
    assert decisions[40 + length].returned  # the return joined the event


def test_staying_away_past_the_return_window_is_a_second_event():
    rng = np.random.default_rng(4)
    stream = jittery(40, rng) + jittery(10, rng, base=(0.0, 0.0, 0.0), width=0.0) + jittery(40, rng)
    assert [t for t in writes(gate(return_window=3), stream) if t >= WARMUP] == [40, 50]


def test_a_grasp_then_a_drop_two_steps_later_are_two_events_by_default():
    # The momentary rule does not swallow a real sequence: with the default window (one step) a
    # gripper that closes and opens again two steps later is written twice.
    stream = [np.array([0.5, 0.0, 0.0])] * 30 + [np.array([0.5, 0.0, 1.0])] * 2 + [np.array([0.5, 0.0, 0.0])] * 10
    assert writes(gate(), stream) == [0, 30, 32]


def test_a_slow_drift_eventually_writes():
    # 0.3% of range a step: never one unit from one step to the next, 60% of range in total.
    stream = [np.array([0.2 + 0.003 * t, 0.0, 0.0]) for t in range(200)]
    g = gate()
    decisions = [g.update(a) for a in stream]
    assert all(d.action_delta < 0.01 for d in decisions[1:])
    late = [t for t, d in enumerate(decisions) if d.written and t >= WARMUP]
    assert late and len(late) <= 6  # it writes, a few times over the whole drift, not every step


def test_a_gripper_flip_always_writes():
    rng = np.random.default_rng(5)
    stream, flips, grip = [], [], 0.0
    for _ in range(8):
        stream += jittery(int(rng.integers(6, 30)), rng, base=(0.5, 0.0, grip), width=0.1)
        grip = 1.0 - grip
        flips.append(len(stream))
    stream += jittery(10, rng, base=(0.5, 0.0, grip), width=0.1)
    g = gate()
    decisions = [g.update(a) for a in stream]
    assert all(decisions[t].written and decisions[t].discrete for t in flips)
    assert [t for t, d in enumerate(decisions) if d.written and t >= 1] == flips


def test_an_external_event_always_writes():
    g = gate()
    stream = [np.array([0.5, 0.0, 0.0])] * 30
    assert [t for t, a in enumerate(stream) if g.update(a, event=t == 20).written] == [0, 20]


def test_gate_values_are_graded_by_how_surprising_the_change_was():
    values = []
    for size in (0.3, 0.6, 1.2):  # turn rate on [-1, 1]: 15%, 30%, 60% of range
        g = gate()
        stream = [np.array([0.5, 0.0, 0.0])] * 30 + [np.array([0.5, size, 0.0])]
        values.append([g.update(a) for a in stream][-1].value)
    assert 0.5 <= values[0] < values[1] < values[2] < 1.0  # written, ordered, never saturated


def test_novelty_writes_a_novel_observation_only_when_weighted():
    rng = np.random.default_rng(6)
    dim = 16
    center = rng.normal(size=dim)
    obs = [center + 0.05 * rng.normal(size=dim) for _ in range(60)]
    obs[45] = center + 2.0 * rng.normal(size=dim)  # the camera sees something new; the action does not change
    actions = [np.array([0.5, 0.0, 0.0])] * 60
    on, off = gate(w_novelty=1.0), gate(w_novelty=0.0)
    d_on = [on.update(a, observation=o) for a, o in zip(actions, obs)]
    d_off = [off.update(a, observation=o) for a, o in zip(actions, obs)]
    assert [t for t, d in enumerate(d_on) if d.written] == [0, 45]
    assert d_on[45].novelty > 1.0 and max(d.novelty for d in d_on[WARMUP:45]) < 1.0
    assert d_on[46].returned  # a glimpse: the view back to the usual one joins the event
    assert [t for t, d in enumerate(d_off) if d.written] == [0]
    with pytest.raises(ValueError):
        on.update(actions[0], observation=np.zeros(dim + 1))


def test_only_what_the_robot_did_is_an_action_event():
    """``acted`` marks the writes a later task's own action event supersedes (planner): a
    departure and a gripper flip are; the first step, a marked event (a task start) and a sight
    are not, and nothing unwritten is. A sight the robot reacted to is an action event."""
    rng = np.random.default_rng(7)
    dim = 16
    center = rng.normal(size=dim)
    obs = [center + 0.05 * rng.normal(size=dim) for _ in range(80)]
    obs[30] = center + 2.0 * rng.normal(size=dim)
    actions = [np.array([0.5, 0.0, 0.0])] * 80
    actions[50] = np.array([0.5, 0.8, 0.0])  # a momentary turn, at a novel sight: the robot reacted
    obs[50] = center + 2.0 * rng.normal(size=dim)
    actions[70:] = [np.array([0.5, 0.0, 1.0])] * 10  # the gripper closes
    g = gate(w_novelty=1.0)
    d = [g.update(a, observation=o, event=t == 60) for t, (a, o) in enumerate(zip(actions, obs))]
    assert [t for t, x in enumerate(d) if x.written] == [0, 30, 50, 60, 70]
    assert [t for t, x in enumerate(d) if x.acted] == [50, 70]


def test_state_round_trip_gives_identical_decisions():
    rng = np.random.default_rng(7)
    stream = jittery(30, rng) + [np.array([0.5, 0.8, 0.0])] + jittery(30, rng)
    obs = [rng.normal(size=8) for _ in stream]
    for cut in (5, 30, 31, 45):  # warm-up, just before an event, inside its return window, later
        a, b = gate(w_novelty=0.5), gate(w_novelty=0.5)
        for x, o in zip(stream[:cut], obs[:cut]):
            a.update(x, observation=o)
        import json
        b.load_state(json.loads(json.dumps(a.state())))  # what a snapshot stores: JSON
        for x, o in zip(stream[cut:], obs[cut:]):
            assert a.update(x, observation=o) == b.update(x, observation=o)


def test_reset_forgets_the_stream():
    g, fresh = gate(), gate()
    rng = np.random.default_rng(8)
    for a in jittery(50, rng):
        g.update(a)
    g.reset()
    stream = jittery(20, rng)
    assert [g.update(a) for a in stream] == [fresh.update(a) for a in stream]


def test_config_is_validated():
    for bad in (dict(noise_z=0.0), dict(return_window=-1), dict(w_novelty=-1.0), dict(noise_window=0)):
        with pytest.raises(ValueError):
            gate(**bad)
