"""Faults an adversarial tester found against a running node (issue #24): real node processes,
real DDS on localhost, each test asserting what the node does and reports afterwards.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticStatus
from helpers.policy_process import Operator
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from rcl_interfaces.srv import GetParameters
from std_msgs.msg import String
from std_srvs.srv import Trigger

from aura_ros.ros.image_conversion import rgb_to_compressed_msg, rgb_to_image_msg

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
    jpeg = rgb_to_compressed_msg(op.frame, "jpeg")
    for _ in range(6):
        for transition in CYCLE:
            op.compressed.publish(jpeg)  # decoded on the loop's own thread, which a cleanup stops
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


def test_budget_checks_count_the_widest_step(started, operator):
    """A start-up budget that holds the instruction but not a step with the widest joint text is
    refused (code 2, one line naming the smallest budget); that exact budget then runs every step,
    also those whose joint text has the most digits; a live set below it is refused too."""
    instruction = "pick up the red block and put it in the bin"
    node = started({"memory.vram_budget_mb": 0.02, "instruction": instruction}, name="small")
    assert node.wait(60) == 2, node.output()
    out = node.output()
    found = re.search(r"raise memory\.vram_budget_mb to at least ([0-9.]+)", out)
    assert found and "Traceback" not in out, out
    assert len([line for line in out.splitlines() if "raise memory.vram_budget_mb" in line]) == 1, out
    smallest = float(found.group(1))

    node = started({"memory.vram_budget_mb": smallest, "instruction": instruction, "control.rate_hz": 20.0})
    op = operator
    assert op.spin_until(lambda: len(op.mems) >= 5, 60), node.output()
    widest = (-3.14, -2.5, -3.14, 1.0)
    n = len(op.mems)
    assert op.spin_until(lambda: len(op.mems) > n + 10, 30, joints=widest), node.output()
    assert op.spin_until(lambda: op.counter("steps") > 0, 10)
    assert op.counter("model_errors") == 0 and "policy step failed" not in node.output(), node.output()
    refused = op.set_param("memory.vram_budget_mb", round(smallest - 0.002, 4))
    assert not refused.successful and "raise memory.vram_budget_mb to at least" in refused.reason, refused.reason
    # A whole number for a double parameter, as `ros2 param set ... memory.vram_budget_mb 2` sends it.
    assert op.set_param("memory.vram_budget_mb", 2).successful
    assert op.spin_until(lambda: op.mems[-1].budget_bytes == 2 * 2**20, 20), node.output()


def test_out_of_range_start_value_exits_with_code_2(started):
    node = started({"memory.vram_budget_mb": 0.0001})
    assert node.wait(60) == 2, node.output()
    out = node.output()
    assert "memory.vram_budget_mb" in out and "Traceback" not in out, out


def _level(op: Operator):
    return op.diag[-1][1] if op.diag else None


def test_failed_snapshots_are_counted_reported_and_logged_throttled(started, operator, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the snapshot folder should be")
    node = started({"control.rate_hz": 20.0, "memory.snapshot_path": str(blocker / "mem"),
                    "memory.snapshot_period_s": 0.1})
    op = operator
    assert op.spin_until(lambda: len(op.gates) >= 3, 60), node.output()
    op.spin_until(lambda: False, 4.0)
    assert op.counter("snapshots_failed") >= 10, node.output()
    status = _level(op)
    assert status.level == DiagnosticStatus.WARN and "snapshot not written" in status.message, status
    assert node.output().count("periodic snapshot not written") <= 2, node.output()
    before = op.counter("snapshots_failed")
    answer = op.call(Trigger, "/aura_policy/save_memory", Trigger.Request())
    assert not answer.success and "blocker" in answer.message, answer.message
    assert op.spin_until(lambda: "~/save_memory: snapshot not written" in node.output(), 5), node.output()
    assert op.spin_until(lambda: op.counter("snapshots_failed") > before, 5)
    os.killpg(node.proc.pid, signal.SIGINT)
    assert node.wait(30) == 0, node.output()
    assert "final snapshot not written" in node.output() and "Traceback" not in node.output(), node.output()


def test_snapshot_too_large_for_the_budget_is_kept_and_names_the_budget(started, operator, tmp_path):
    path = tmp_path / "mem"
    # max_context_steps 0: the budget alone bounds the memory, so 2 MiB holds more than 0.5 MiB can
    # (with the default view cap every budget from 0.5 MiB on holds the same steps).
    params = {"control.rate_hz": 20.0, "memory.snapshot_path": str(path), "memory.max_context_steps": 0}
    node = started({**params, "memory.vram_budget_mb": 2.0}, name="large")
    op = operator
    assert op.spin_until(lambda: len(op.mems) >= 40, 60), node.output()
    os.killpg(node.proc.pid, signal.SIGINT)
    assert node.wait(30) == 0, node.output()
    meta = tmp_path / "mem.json"
    saved = meta.read_bytes()

    node = started({**params, "memory.vram_budget_mb": 0.5}, name="small")
    assert op.spin_until(lambda: "snapshot refused" in node.output(), 60), node.output()
    found = re.search(r"raise memory\.vram_budget_mb to at least ([0-9.]+) to load it", node.output())
    assert found, node.output()
    assert op.spin_until(lambda: _level(op) is not None and "refused at start" in _level(op).message, 10)
    os.killpg(node.proc.pid, signal.SIGINT)
    assert node.wait(30) == 0, node.output()
    assert meta.read_bytes() == saved, "the refused snapshot was overwritten at shutdown"

    node = started({**params, "memory.vram_budget_mb": float(found.group(1))}, name="resumed")
    assert op.spin_until(lambda: "memory resumed from" in node.output(), 60), node.output()


def _instruction_param(op: Operator) -> str:
    answer = op.call(GetParameters, "/aura_policy/get_parameters", GetParameters.Request(names=["instruction"]))
    return answer.values[0].string_value


def test_the_instruction_parameter_says_what_is_pinned(started, operator):
    node = started({"control.rate_hz": 20.0, "instruction": "pick up the red block"})
    op = operator
    assert op.spin_until(lambda: len(op.gates) >= 3, 60), node.output()
    # The topic's instruction: `ros2 param get` follows it.
    op.instruction.publish(String(data="stack the blue cube"))
    assert op.spin_until(lambda: _instruction_param(op) == "stack the blue cube", 10), node.output()

    # Topic A, parameter B, topic A again within a second: the operator's last command is A.
    op.instruction.publish(String(data="put the green cube left"))
    op.spin_until(lambda: False, 0.2)
    assert op.set_param("instruction", "wave").successful
    op.spin_until(lambda: False, 0.2)
    op.instruction.publish(String(data="put the green cube left"))
    assert op.spin_until(lambda: _instruction_param(op) == "put the green cube left", 10), node.output()
    assert op.spin_until(lambda: "task 4 begins" in node.output(), 10), node.output()

    # Nothing visible: dropped and counted on the topic, refused as the parameter.
    invisible = "\u200b\u200b\u2060\ufeff"
    op.instruction.publish(String(data=invisible))
    assert op.spin_until(lambda: op.counter("dropped_instruction") >= 1, 10), node.output()
    refused = op.set_param("instruction", invisible)
    assert not refused.successful and "invisible" in refused.reason, refused.reason

    # A text that cannot fit beside one step is refused, not accepted while the old one stays pinned.
    pinned = op.memory_map().pinned_tokens
    refused = op.set_param("instruction", "stack every cube " * 150)
    assert not refused.successful and "tokens refused" in refused.reason, refused.reason
    assert _instruction_param(op) == "put the green cube left"
    assert op.memory_map().pinned_tokens == pinned
    assert "\u200b" not in node.output()


def test_joint_state_clock_reset_recovers_without_a_service_call(started, operator):
    node = started({"control.rate_hz": 20.0})
    op = operator
    assert op.spin_until(lambda: len(op.gates) >= 3, 60), node.output()
    # From now on the publisher's clock is three hours behind (its clock was reset).
    behind = 3 * 3600.0
    rclpy.spin_once(op.node, timeout_sec=0.1)
    end, n = time.monotonic() + 20, len(op.gates)
    recovered = False
    while time.monotonic() < end and not recovered:
        op.image.publish(rgb_to_image_msg(op.frame))
        op.joints.publish(op.joint_msg(stamp=op.node.get_clock().now().nanoseconds * 1e-9 - behind))
        rclpy.spin_once(op.node, timeout_sec=0.05)
        recovered = op.counter("joint_state_clock_resets") == 1 and len(op.gates) > n + 5
    assert recovered, node.output()
    assert op.counter("dropped_joint_state") >= 1
    assert "order restarts" in node.output()


@pytest.mark.parametrize("mode", [[], ["-p", "task:=cue_recall", "-p", "task_expert:=true", "-p", "rate_hz:=400.0",
                                   "-p", "cameras:=[top, wrist]"]], ids=["source", "expert_at_400_hz"])
def test_sim_node_exits_cleanly_on_a_terminal_ctrl_c(ros_env, tmp_path, mode):
    """Ctrl-C under `ros2 launch`: SIGINT to the whole process group, and again during cleanup; in
    expert mode too, where a timer publishes hundreds of times a second while the context goes."""
    for pause in (0.0, 0.05, 0.3, "storm"):
        log = tmp_path / f"sim-{pause}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "aura_ros.ros.sim_node", "--ros-args", "-r",
                                     f"__node:=aura_sim_ctrl_c_{os.getpid()}", "-p", "rate_hz:=50.0", *mode],
                                    env=ros_env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while "sim source:" not in log.read_text(errors="replace"):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.05)
            time.sleep(0.3)
            os.killpg(proc.pid, signal.SIGINT)
            if pause == "storm":  # one every 2 ms until it has exited: one lands in each cleanup step
                while proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGINT)
                    time.sleep(0.002)
            else:
                time.sleep(pause)
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGINT)
            code = proc.wait(30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        text = log.read_text(errors="replace")
        assert code == 0 and "Traceback" not in text and "KeyboardInterrupt" not in text, (pause, code, text)
