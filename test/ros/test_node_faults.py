"""Faults an adversarial tester found against a running node (issue #24): real node processes,
real DDS on localhost, each test asserting what the node does and reports afterwards.
"""
from __future__ import annotations

import os
import signal

from helpers.policy_process import Operator
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from std_srvs.srv import Trigger

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


def test_two_quick_budget_changes_end_at_the_last(started, operator):
    # A slow control rate leaves both changes pending for the same worker pass.
    node = started({"control.rate_hz": 2.0, "memory.vram_budget_mb": 2.0})
    op = operator
    assert op.spin_until(lambda: len(op.mems) >= 2, 60), node.output()
    assert op.set_param("memory.vram_budget_mb", 0.1).successful
    assert op.set_param("memory.vram_budget_mb", 2.0).successful
    n = len(op.mems)
    assert op.spin_until(lambda: len(op.mems) > n + 3, 30), node.output()
    assert op.mems[-1].budget_bytes == 2 * 2**20, (op.mems[-1].budget_bytes, node.output())


def test_reset_then_load_keeps_the_loaded_memory(started, operator, tmp_path):
    node = started({"control.rate_hz": 20.0, "memory.snapshot_path": str(tmp_path / "mem")})
    op = operator
    assert op.spin_until(lambda: len(op.gates) >= 12, 60), node.output()
    # A slow rate from here: no tick runs between the calls below (one would apply a reset that
    # was only queued, and hide the fault).
    assert op.set_param("control.rate_hz", 0.5).successful
    op.spin_until(lambda: False, 1.0, feed_image=False, joints=None)
    assert op.call(Trigger, "/aura_policy/save_memory", Trigger.Request()).success
    saved = list(op.memory_map().kept_steps)
    assert len(saved) >= 10
    # Back to back, as a script calls them: clients ready first.
    clients = [op.node.create_client(Trigger, f"/aura_policy/{name}") for name in ("reset_memory", "load_memory")]
    assert all(c.wait_for_service(timeout_sec=10) for c in clients)
    answers = []
    for client in clients:
        future = client.call_async(Trigger.Request())
        assert op.spin_until(future.done, 20, feed_image=False, joints=None)
        answers.append(future.result())
    assert all(a.success for a in answers), [a.message for a in answers]
    assert op.set_param("control.rate_hz", 20.0).successful
    n = len(op.gates)
    assert op.spin_until(lambda: len(op.gates) > n + 3, 30), node.output()
    kept = list(op.memory_map().kept_steps)
    assert set(saved) <= set(kept), (saved, kept)
