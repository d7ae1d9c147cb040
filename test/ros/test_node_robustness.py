"""What a ROS user at a terminal and an adversarial tester do to a running node: real processes,
real DDS on localhost, real signals to a real process group. Each test asserts the state after.
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticStatus
from std_msgs.msg import String

from aura_ros.ros import qos
from aura_ros.ros.image_conversion import rgb_to_compressed_msg, rgb_to_image_msg
from aura_ros.srv import GetMemoryMap


def test_terminal_session_inputs_services_and_two_sigints(started, operator, tmp_path):
    snap = tmp_path / "arm.left"
    node = started({"control.rate_hz": 20.0, "memory.vram_budget_mb": 1.0, "memory.snapshot_path": str(snap),
                    "instruction": "stack the red cubes"})
    op = operator
    # No joint state yet: the node holds, but it has nothing safe to command, so no hold counts.
    assert op.spin_until(lambda: op.counter("held_ticks") >= 3, 60, joints=None), node.output()
    assert op.counter("hold_commands") == 0 and not op.cmds
    assert op.spin_until(lambda: len(op.gates) >= 5, 30), node.output()

    # A joint state stamped far in the future is dropped and does not lock out the next ones.
    op.joints.publish(op.joint_msg(stamp=2e9))  # 2033
    n = len(op.gates)
    assert op.spin_until(lambda: op.counter("dropped_joint_state") >= 1 and len(op.gates) > n + 5, 20)

    # Absurd but finite joint values are clipped: a step stays a normal size.
    sizes = [t for t in op.memory_map().tokens]
    n = len(op.gates)
    assert op.spin_until(lambda: len(op.gates) > n + 5, 20, joints=(1e6, -1e308, 3.0, 0.5))
    assert op.counter("joint_state_clipped") >= 1 or op.spin_until(lambda: op.counter("joint_state_clipped") >= 1, 5)
    assert max(op.memory_map().tokens) <= max(sizes) + 8
    cmd = np.array(op.cmds[-1].points[0].positions)
    assert np.all(cmd >= [-3.14, -2.5, -3.14, 0.0]) and np.all(cmd <= [3.14, 2.5, 3.14, 1.0])

    # `ros2 topic pub` (volatile) reaches the instruction subscription; the pinned prompt changes.
    pinned = op.memory_map().pinned_tokens
    op.instruction.publish(String(data="now put every blue cube into the left bin, one at a time, slowly"))
    assert op.spin_until(lambda: op.memory_map().pinned_tokens > pinned, 20), node.output()
    # The live `instruction` parameter is applied too.
    pinned = op.memory_map().pinned_tokens
    assert op.set_param("instruction", "stop").successful
    assert op.spin_until(lambda: op.memory_map().pinned_tokens < pinned, 20), node.output()

    # ~/memory_map: a picture of the cache about once a second, and on demand.
    assert op.spin_until(lambda: len(op.maps) >= 2, 10), node.output()
    m = op.maps[-1]
    assert (m.encoding, m.width, m.height) == ("rgb8", 640, 160) and len(m.data) == 640 * 160 * 3
    n = len(op.maps)
    op.memory_map()
    assert op.spin_until(lambda: len(op.maps) > n, 0.9)

    # A large PNG is decoded off the executor thread, its time reported; steps go on meanwhile.
    big = np.random.default_rng(1).integers(0, 255, (1500, 2000, 3), dtype=np.uint8)
    png = rgb_to_compressed_msg(big, "png")
    op.compressed.publish(png)
    n = len(op.gates)
    assert op.spin_until(lambda: op.value("decode_ms") is not None and len(op.gates) > n + 5, 30), node.output()

    # A live setting reaches the input callbacks at once: a frame over the new pixel limit is dropped.
    assert op.set_param("image.max_pixels", 100).successful
    before = op.counter("dropped_image")
    op.image.publish(rgb_to_image_msg(op.frame))
    assert op.spin_until(lambda: op.counter("dropped_image") > before, 10, feed_image=False)
    assert op.set_param("image.max_pixels", 7680 * 4320).successful

    # The live snapshot period is applied: a periodic snapshot appears before any shutdown.
    assert op.set_param("memory.snapshot_period_s", 0.3).successful
    assert op.spin_until(lambda: any(p.name == "arm.left.json" for p in tmp_path.iterdir()), 10), node.output()

    # A budget larger than the machine's free memory is refused with the reason.
    huge = op.set_param("memory.vram_budget_mb", 1_000_000.0)
    assert not huge.successful and "free" in huge.reason

    # A burst of 30 simultaneous calls is answered (rclpy's default request queue holds 10). One
    # client with a deep response queue: new clients can lose a response to their own discovery.
    client = op.node.create_client(GetMemoryMap, "/aura_policy/get_memory_map", qos_profile=qos.SERVICES)
    assert client.wait_for_service(10)
    op.spin_until(lambda: False, 1.0)
    futures = [client.call_async(GetMemoryMap.Request()) for _ in range(30)]
    end = time.monotonic() + 30
    while time.monotonic() < end and not all(f.done() for f in futures):
        rclpy.spin_once(op.node, timeout_sec=0.05)
    assert all(f.done() and f.result().pinned_tokens > 0 for f in futures)

    # The live diagnostics period is applied.
    assert op.set_param("diagnostics.period_s", 0.2).successful
    op.diag.clear()
    op.spin_until(lambda: False, 2.0)
    assert len(op.diag) >= 6, len(op.diag)

    # Ctrl-C in a terminal: SIGINT to the whole process group, and a second one during cleanup.
    # (launch forwards one more). The later ones land in the middle of teardown.
    for pause in (0.05, 0.25, 0.0):
        os.killpg(node.proc.pid, signal.SIGINT)
        time.sleep(pause)
        if node.proc.poll() is not None:
            break
    code = node.wait(30)
    out = node.output()
    assert code == 0, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert "memory snapshot written" in out, out
    assert "control step failed" not in out and "context is invalid" not in out, out  # nothing half-published
    assert "FutureWarning" not in out and "\x1b[" not in out and "incompatible QoS" not in out, out
    # A path with a dot keeps its whole name (arm.left is not arm.json).
    assert any(p.name.startswith("arm.left") for p in tmp_path.iterdir()), list(tmp_path.iterdir())


def test_unwritable_snapshot_path_still_exits_cleanly(started, operator, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    node = started({"control.rate_hz": 20.0, "memory.snapshot_path": str(blocker / "memory")})
    assert operator.spin_until(lambda: len(operator.gates) >= 3, 60), node.output()
    node.proc.send_signal(signal.SIGTERM)
    code = node.wait(30)
    out = node.output()
    assert code == 0, out
    assert "final snapshot not written" in out and "Traceback" not in out, out


@pytest.mark.parametrize("params, needle", [
    ({"memory.vram_budget_mb": 0.002, "instruction": "pick up the red block and put it in the bin"}, "budget"),
    ({"memory.eviction": "lru"}, "memory.eviction"),
    ({"memory.vram_budget_mb": -1.0}, "memory.vram_budget_mb"),
])
def test_bad_start_up_values_give_one_line_and_an_exit(started, params, needle):
    node = started(params)
    code = node.wait(60)
    out = node.output()
    assert code != 0 and needle in out, out
    assert "Traceback" not in out, out


def test_inactive_node_says_so_on_diagnostics(started, operator):
    node = started({"autostart": False})
    op = operator

    def seen():
        return any(s.level == DiagnosticStatus.WARN and "unconfigured" in s.message for _, s in op.diag)
    assert op.spin_until(seen, 60, feed_image=False, joints=None), node.output()
    assert not op.gates
