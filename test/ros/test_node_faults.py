"""Faults an adversarial tester found against a running node (issue #24): real node processes,
real DDS on localhost, each test asserting what the node does and reports afterwards.
"""
from __future__ import annotations

import os
import signal

from helpers.policy_process import Operator
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState

CYCLE = (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP, Transition.TRANSITION_CONFIGURE,
         Transition.TRANSITION_ACTIVATE)


def change_state(op: Operator, transition: int, feed: bool = True) -> bool:
    """One lifecycle transition while frames and joint states keep arriving."""
    client = op.node.create_client(ChangeState, "/aura_policy/change_state")
    assert client.wait_for_service(timeout_sec=20)
    future = client.call_async(ChangeState.Request(transition=Transition(id=transition)))
    op.spin_until(future.done, 60, feed_image=feed, joints=(0.0, 0.1, 0.2, 0.0) if feed else None)
    op.node.destroy_client(client)
    assert future.done(), f"transition {transition} did not answer"
    return future.result().success


def test_lifecycle_cycles_while_inputs_flow(started, operator):
    node = started({"control.rate_hz": 50.0})
    op = operator
    assert op.spin_until(lambda: len(op.gates) >= 3, 60), node.output()
    for _ in range(6):
        for transition in CYCLE:
            assert change_state(op, transition), node.output()
            assert node.proc.poll() is None, node.output()
        n = len(op.gates)
        assert op.spin_until(lambda n=n: len(op.gates) > n + 2, 30), node.output()
    os.killpg(node.proc.pid, signal.SIGINT)
    code = node.wait(30)
    out = node.output()
    assert code == 0 and "Traceback" not in out and "InvalidHandle" not in out, out
