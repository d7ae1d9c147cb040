"""The chunk queue without ROS: alignment by tick, late actions dropped, the cross-fade, what the
gate is handed."""
from __future__ import annotations

import numpy as np
import pytest

from aura_ros.ros.chunks import ChunkQueue, blend_overlap


def ramp(start: float, n: int, dim: int = 2) -> np.ndarray:
    """[n, dim]: row i is start + i in every joint (so a value names the row it came from)."""
    return np.repeat((start + np.arange(n, dtype=float))[:, None], dim, axis=1)


def test_actions_are_sent_in_order_one_per_tick_then_the_queue_is_empty():
    q = ChunkQueue(2)
    assert q.pop(0) is None  # nothing queued yet
    q.push(ramp(100, 5), obs_tick=0)  # inferred from tick 0's observation: rows for ticks 0..4
    sent = [q.pop(t) for t in range(1, 6)]
    assert [a[0] for a in sent[:4]] == [101, 102, 103, 104]  # row 0 (tick 0) had passed
    assert sent[4] is None and len(q) == 0


def test_a_late_chunk_drops_the_actions_whose_tick_has_passed():
    q = ChunkQueue(2)
    for t in range(6):
        q.pop(t)  # the inference took 6 ticks
    r = q.push(ramp(0, 10), obs_tick=0)
    assert (r.dropped, r.blended, r.queued) == (6, 0, 4)
    assert q.pop(6)[0] == 6  # the row meant for tick 6, not the chunk's first
    # A chunk that arrives after all of its ticks leaves the queue as it was.
    r = q.push(ramp(50, 3), obs_tick=1)
    assert (r.dropped, r.queued) == (3, 3) and q.pop(7)[0] == 7


def test_the_overlap_is_cross_faded_linearly_and_the_rest_is_the_new_chunk():
    q = ChunkQueue(2)
    q.pop(0)
    q.push(ramp(0.0, 8) * 0.0, obs_tick=0)  # old plan: all zeros for ticks 0..7
    for t in range(1, 5):
        q.pop(t)  # ticks 1..4 sent; 5, 6, 7 remain
    r = q.push(np.full((6, 2), 4.0), obs_tick=4)  # new plan: 4.0 for ticks 4..9
    assert (r.dropped, r.blended, r.queued) == (1, 3, 5)
    got = [q.pop(t)[0] for t in range(5, 10)]
    # Overlap of n = 3 ticks (5, 6, 7): weights 1/4, 2/4, 3/4 of the new chunk; then only the new one.
    assert got == pytest.approx([1.0, 2.0, 3.0, 4.0, 4.0])
    assert q.pop(10) is None


def test_discrete_joints_switch_at_the_middle_of_the_overlap_instead_of_averaging():
    old = np.array([[0.0, 0.0]] * 4)
    new = np.array([[1.0, 1.0]] * 4)
    out = blend_overlap(old, new, np.array([False, True]))  # weights 0.2, 0.4, 0.6, 0.8
    assert out[:, 0] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert list(out[:, 1]) == [0.0, 0.0, 1.0, 1.0]


def test_executed_holds_what_was_sent_since_the_newest_chunk_arrived():
    q = ChunkQueue(2)
    q.pop(0)
    q.push(ramp(0, 6), obs_tick=0)
    for t in range(1, 4):
        q.pop(t)
    assert q.take_executed()[:, 0].tolist() == [1, 2, 3]
    q.push(ramp(10, 6), obs_tick=3)  # a new chunk: the record starts again
    assert q.take_executed().shape == (0, 2)
    q.pop(4)
    assert q.take_executed().shape == (1, 2)


def test_clear_drops_the_queue_and_the_clock_goes_on():
    q = ChunkQueue(2)
    q.pop(0)
    q.push(ramp(0, 6), obs_tick=0)
    assert q.clear() == 5 and len(q) == 0
    q.pop(1)
    assert q.pop(2) is None  # nothing from before the clear comes back
    q.push(ramp(0, 6), obs_tick=2)
    assert q.pop(3)[0] == 1


def test_bad_input_is_refused_with_the_reason():
    q = ChunkQueue(2)
    with pytest.raises(ValueError, match="must be"):
        q.push(np.zeros((3, 3)), obs_tick=0)
    with pytest.raises(ValueError, match="NaN"):
        q.push(np.array([[np.nan, 0.0]]), obs_tick=0)
    with pytest.raises(ValueError, match="ahead"):
        q.push(np.zeros((3, 2)), obs_tick=5)
    q.pop(0)
    with pytest.raises(ValueError, match="not after"):
        q.pop(0)
