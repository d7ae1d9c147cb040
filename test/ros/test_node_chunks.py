"""Chunk execution in a running node (action.chunk > 1): real node processes, real DDS on localhost.

The inference is slowed with ``model.min_step_s`` (the worker pads each step to at least that long,
as a larger model would take it), so that a chunk's inference spans several control ticks. Assertions
are on counts and order, not on timings.
"""
from __future__ import annotations

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus

HELD = (0.0, 0.1, 0.2, 0.0)  # the joint state the operator publishes: what a hold commands

CHUNKED = {"control.rate_hz": 20.0, "action.chunk": 32, "action.refill_below": 0.75, "model.min_step_s": 0.25}


def test_commands_leave_from_the_queue_while_the_slow_inference_runs(started, operator):
    node = started(CHUNKED)
    op = operator
    assert op.spin_until(lambda: len(op.gates) >= 2, 90, joints=HELD), node.output()
    c0, g0 = len(op.cmds), len(op.gates)
    assert op.spin_until(lambda: len(op.gates) >= g0 + 6, 60, joints=HELD), node.output()
    cmds, steps = op.cmds[c0:], op.gates[g0:]
    # One command a tick from the queue, one point each (not one multi-point trajectory a step).
    assert all(len(c.points) == 1 for c in cmds)
    # A step takes at least 0.25 s, 5 ticks at 20 Hz: a loop that sent one command per step
    # would send about one command per step; the queue sends one every tick meanwhile.
    assert len(cmds) >= 3 * len(steps), (len(cmds), len(steps))
    # The next chunk was asked for while the queue still held actions: chunks arrived with actions
    # still queued, and were cross-faded into them (a chunk requested on an empty queue has nothing
    # to blend with).
    assert op.spin_until(lambda: op.counter("chunks") >= 4, 20, joints=HELD)
    assert op.counter("chunk_actions_blended") > 0, node.output()
    # The rows of a chunk whose ticks passed while it was inferred were dropped, not sent late.
    assert op.counter("chunk_actions_late") >= 5 * op.counter("chunks") // 2
    # Commands came out while steps were running: between the stamps of two consecutive steps'
    # stats, commands were published in the last 0.2 s before the later one (a step takes >= 0.25 s).
    stamps = np.array([c.header.stamp.sec + c.header.stamp.nanosec * 1e-9 for c in cmds])
    ends = [g.header.stamp.sec + g.header.stamp.nanosec * 1e-9 for g in steps[1:]]
    during = [int(np.sum((stamps > t - 0.2) & (stamps < t))) for t in ends]
    assert sum(1 for n in during if n > 0) > len(during) // 2, during


def test_one_memory_step_per_inference(started, operator):
    node = started(CHUNKED)
    op = operator
    assert op.spin_until(lambda: len(op.gates) >= 5, 90, joints=HELD), node.output()
    m = op.memory_map()
    kept = list(m.kept_steps)
    # Steps are inferences: consecutive indices, far fewer than the commands sent.
    assert kept == list(range(kept[0], kept[0] + len(kept)))
    assert m.step <= len(op.cmds) // 3 + 2, (m.step, len(op.cmds))
    assert [g.step for g in op.gates] == sorted({g.step for g in op.gates})


def test_stale_input_mid_chunk_holds_and_drops_the_queue_then_resumes(started, operator):
    node = started(dict(CHUNKED, **{"timeouts.image_s": 0.5}))
    op = operator
    assert op.spin_until(lambda: len(op.gates) >= 3, 90, joints=HELD), node.output()
    # The camera stops mid-chunk (a chunk of 32 refilled at 24 always has actions queued).
    steps_before = op.gates[-1].step
    c0 = len(op.cmds)

    def warned():
        return any(s.level == DiagnosticStatus.WARN and "stale" in s.message and "image" in s.message
                   for _, s in op.diag)
    assert op.spin_until(lambda: warned() and op.counter("hold_commands") >= 5, 30, feed_image=False,
                         joints=HELD), node.output()
    assert op.counter("chunk_actions_cleared") > 0
    held = [c for c in op.cmds[c0:] if np.allclose(c.points[0].positions, HELD)]
    assert len(held) >= 5
    # While stale, no new chunk is inferred: at most the one in flight when the camera stopped ends.
    at_warning = op.gates[-1].step
    op.spin_until(lambda: False, 2.0, feed_image=False, joints=HELD)
    frozen = op.gates[-1].step
    assert frozen <= at_warning + 1 and at_warning <= steps_before + 2
    # The camera comes back: new chunks, and commands that are not holds.
    assert op.spin_until(lambda: op.gates[-1].step > frozen + 2, 60, joints=HELD), node.output()
    c1 = len(op.cmds)
    assert op.spin_until(lambda: len(op.cmds) > c1 + 10, 30, joints=HELD)
    assert any(not np.allclose(c.points[0].positions, HELD) for c in op.cmds[c1:])


def test_a_pause_drops_the_plan_and_activation_starts_a_new_one(started, operator):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    node = started(CHUNKED)
    op = operator
    assert op.spin_until(lambda: op.counter("chunks") >= 2, 90, joints=HELD), node.output()

    def change(transition: int) -> None:
        client = op.node.create_client(ChangeState, "/aura_policy/change_state")
        assert client.wait_for_service(timeout_sec=20)
        future = client.call_async(ChangeState.Request(transition=Transition(id=transition)))
        assert op.spin_until(future.done, 60, joints=HELD) and future.result().success, node.output()
        op.node.destroy_client(client)

    cleared = op.counter("chunk_actions_cleared")
    change(Transition.TRANSITION_DEACTIVATE)  # a chunk of 32 refilled at 24 always has actions queued
    op.spin_until(lambda: False, 1.0, joints=HELD)
    c0 = len(op.cmds)
    op.spin_until(lambda: False, 1.0, joints=HELD)
    assert len(op.cmds) == c0  # inactive: nothing is sent
    change(Transition.TRANSITION_ACTIVATE)
    chunks = op.counter("chunks")
    assert op.spin_until(lambda: op.counter("chunks") > chunks + 1 and len(op.cmds) > c0 + 10, 60, joints=HELD)
    assert op.counter("chunk_actions_cleared") > cleared, node.output()
