"""The node's input guards, without DDS."""
from __future__ import annotations

import numpy as np

from aura_ros.ros import guards

JOINTS = ["shoulder", "elbow", "wrist", "gripper"]
LOW = np.array([-3.14, -2.5, -3.14, 0.0])
HIGH = np.array([3.14, 2.5, 3.14, 1.0])


def check(names=JOINTS, positions=(0.1, 0.2, 0.3, 0.0), stamp=10.0, wanted=JOINTS):
    return guards.check_joint_state(names, positions, stamp, wanted, LOW, HIGH, 100.0)


def test_good_state_in_the_policy_order_extra_joints_ignored():
    r = check(names=["wheel", "gripper", "wrist", "elbow", "shoulder"], positions=(9.0, 0.5, 0.3, 0.2, 0.1))
    assert isinstance(r, guards.JointState)
    assert r.names == tuple(JOINTS) and np.allclose(r.positions, [0.1, 0.2, 0.3, 0.5]) and r.clipped == 0


def test_bad_states_are_drops_with_reasons():
    cases = {
        "2 positions": check(positions=(0.0, 0.0)),
        "duplicate": check(names=["shoulder", "shoulder", "wrist", "gripper"]),
        "missing": check(names=JOINTS[:3], positions=(0, 0, 0)),
        "NaN": check(positions=(np.nan, 0, 0, 0)),
        "stamp": check(stamp=-1.0),
    }
    for needle, result in cases.items():
        assert isinstance(result, guards.Drop), needle
        assert needle.lower() in result.reason.lower() or needle == "2 positions" and "positions" in result.reason


def test_absurd_but_finite_values_are_clipped_to_the_limits():
    r = check(positions=(1e6, -1e308, 3.0, 7.0))
    assert isinstance(r, guards.JointState) and r.clipped == 3
    assert np.allclose(r.positions, [3.14, -2.5, 3.0, 1.0])
    # joints outside the action (twist state) are bounded by the state limit
    r = guards.check_joint_state(["a", "b"], [1e300, -5.0], 0.0, ["a", "b"], None, None, 100.0)
    assert np.allclose(r.positions, [100.0, -5.0]) and r.clipped == 1


def test_a_drop_reason_for_a_huge_message_stays_short():
    names = [f"joint_{i}" for i in range(100_000)]
    r = guards.check_joint_state(names, np.zeros(100_000), 1.0, names[:3] + ["nope"], None, None, 1.0)
    assert isinstance(r, guards.Drop) and len(r.reason) < 300 and "nope" in r.reason


def test_stamp_order_future_stamp_does_not_lock_out_later_ones():
    order = guards.StampOrder(tolerance=0.5)
    assert order.check(100.0, now=100.0) is None
    future = order.check(1e9, now=100.1)
    assert isinstance(future, guards.Drop) and "ahead" in future.reason
    assert order.check(100.2, now=100.2) is None  # the next correct message is still accepted


def test_stamp_order_tolerates_two_publishers_and_refuses_real_reordering():
    order = guards.StampOrder(tolerance=0.5)
    assert order.check(200.0, now=200.0) is None
    assert order.check(199.8, now=200.0) is None  # a second publisher, slightly behind
    assert isinstance(order.check(150.0, now=200.0), guards.Drop)
    assert order.check(0.0, now=200.0) is None  # unstamped: ordered by arrival
    order.reset()
    assert order.check(150.0, now=200.0) is None  # after ~/reset_memory the order starts again


def test_stamp_order_restarts_after_a_publisher_clock_reset():
    order = guards.StampOrder(tolerance=0.5, restart_after=2.0)
    now = 10_000.0
    assert order.check(now, now) is None
    # The publisher's clock jumps back by hours and runs on from there.
    t = now + 0.1
    results = []
    while t < now + 2.5:
        results.append(order.check(t - 7200.0, t))
        t += 0.1
    assert isinstance(results[0], guards.Drop)
    restarted = [i for i, r in enumerate(results) if isinstance(r, guards.Restarted)]
    assert len(restarted) == 1 and order.restarts == 1 and "reset" in results[restarted[0]].reason
    assert all(r is None for r in results[restarted[0] + 1:])


def test_stamp_order_is_not_restarted_by_an_old_publisher_beside_a_good_one():
    order = guards.StampOrder(tolerance=0.5, restart_after=2.0)
    t = 10_000.0
    for _ in range(50):
        assert order.check(t, t) is None
        assert isinstance(order.check(t - 7200.0, t), guards.Drop)
        t += 0.1
    assert order.restarts == 0


def test_stale_inputs_by_receive_time():
    assert guards.stale_inputs(10.0, 9.5, 9.5, 1.0, 1.0, True) == []
    assert guards.stale_inputs(10.0, 8.0, 9.5, 1.0, 1.0, True) == ["image"]
    assert guards.stale_inputs(10.0, 9.9, 9.9, 1.0, 1.0, False) == ["joint_states"]


def test_instruction_cleaning_and_repeats():
    assert isinstance(guards.clean_instruction("   ", 10), guards.Drop)
    assert guards.clean_instruction(" pick it ", 100) == ("pick it", False)
    assert guards.clean_instruction("x" * 20, 5) == ("xxxxx", True)
    rf = guards.RepeatFilter(window=1.0)
    assert not rf.repeat("a", 0.0) and rf.repeat("a", 0.5) and not rf.repeat("b", 0.6)
    assert not rf.repeat("b", 5.0)


def test_hold_positions_clipped_and_only_for_the_policy_joints():
    held = guards.hold_positions(np.array([5.0, 0.0, 0.0, 2.0]), JOINTS, JOINTS, LOW, HIGH)
    assert np.allclose(held, [3.14, 0.0, 0.0, 1.0])
    assert guards.hold_positions(None, (), JOINTS, LOW, HIGH) is None
    assert guards.hold_positions(np.zeros(2), ["a", "b"], JOINTS, LOW, HIGH) is None


def test_widest_states_include_the_longest_joint_text():
    states = guards.widest_states([-3.14, 0.0, -100.0], [3.14, 1.0, 5.0], decimals=2, samples=4)
    texts = [" ".join(f"{v:.2f}" for v in s) for s in states]
    assert max(len(t) for t in texts) == len("-3.14 1.00 -100.00")
    assert all(np.all(s >= [-3.14, 0.0, -100.0]) and np.all(s <= [3.14, 1.0, 5.0]) for s in states)


def test_an_instruction_of_invisible_characters_only_is_dropped():
    for text in ("\u200b\u200c\u200d", "\ufeff \u2060", "\x00\x07"):
        assert isinstance(guards.clean_instruction(text, 100), guards.Drop), repr(text)
    assert guards.clean_instruction("\u200bstack\u200b", 100) == ("\u200bstack\u200b", False)


def test_a_forgotten_repeat_is_a_new_message():
    f = guards.RepeatFilter(window=1.0)
    assert not f.repeat("a", 0.0) and f.repeat("a", 0.5)
    f.forget()
    assert not f.repeat("a", 0.6)
