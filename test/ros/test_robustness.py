"""Bad input, faults, restarts: the node survives, counts, and loses nothing.

Every bad message goes over real topics to a running node (a separate process); after each batch
the next good frame still produces an action and the memory invariants hold.
"""
from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from test_policy_node import NODE, RUN_MODULE, call, ros_args, spin_until

from aura_ros.backends.transformers import snapshot
from aura_ros.msg import GateStats, MemoryBudget
from aura_ros.ros import qos
from aura_ros.ros.image_conversion import rgb_to_compressed_msg, rgb_to_image_msg
from aura_ros.srv import GetMemoryMap

JOINTS = ["shoulder", "elbow", "wrist", "gripper"]


class Driver:
    """The test's ROS side: publishes inputs, collects what the node reports."""

    def __init__(self, node: Node):
        self.node = node
        self.image = node.create_publisher(Image, "image", qos.SENSOR)
        self.compressed = node.create_publisher(CompressedImage, "image/compressed", qos.SENSOR)
        self.joints = node.create_publisher(JointState, "joint_states", qos.SENSOR)
        self.instruction = node.create_publisher(String, "instruction", qos.INSTRUCTION)
        self.gates: list[GateStats] = []
        self.mems: list[MemoryBudget] = []
        self.diag: list[DiagnosticStatus] = []
        node.create_subscription(GateStats, "/aura_policy/gate_stats", self.gates.append, qos.STATS)
        node.create_subscription(MemoryBudget, "/aura_policy/memory", self.mems.append, qos.STATS)
        node.create_subscription(DiagnosticArray, "/diagnostics",
                                 lambda m: self.diag.extend(s for s in m.status if s.name.startswith("aura_ros")),
                                 qos.DIAGNOSTICS)
        self.frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        self.stamp = 1.0

    def joint_msg(self, positions=(0.0, 0.1, 0.2, 0.0), names=JOINTS, stamp=None) -> JointState:
        m = JointState(name=list(names), position=[float(p) for p in positions])
        # An explicit stamp is one odd message; the driver's own clock goes on forward, as a
        # driver's does.
        if stamp is None:
            self.stamp += 0.05
        t = self.stamp if stamp is None else stamp
        m.header.stamp.sec = int(t)
        m.header.stamp.nanosec = int((t % 1) * 1e9)
        return m

    def send(self, publisher, msg) -> None:
        """Sensor-data QoS keeps only the last few messages: space bad ones out, as a camera would."""
        publisher.publish(msg)
        end = time.monotonic() + 0.1
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.02)

    def good(self) -> None:
        self.image.publish(rgb_to_image_msg(self.frame))
        self.joints.publish(self.joint_msg())

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.good()
            rclpy.spin_once(self.node, timeout_sec=0.05)

    def steps_continue(self, timeout: float = 20.0) -> bool:
        start = self.gates[-1].step if self.gates else -1
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.good()
            rclpy.spin_once(self.node, timeout_sec=0.05)
            if self.gates and self.gates[-1].step >= start + 3:
                return True
        return False

    def counter(self, key: str) -> int:
        for s in reversed(self.diag):
            for kv in s.values:
                if kv.key == key:
                    return int(kv.value)
        return 0

    def wait_counter(self, key: str, at_least: int, timeout: float = 10.0) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.counter(key) < at_least:
            self.good()
            rclpy.spin_once(self.node, timeout_sec=0.05)
        return self.counter(key)


@pytest.fixture
def driver():
    rclpy.init()
    node = Node(f"robustness_{time.monotonic_ns()}")
    yield Driver(node)
    node.destroy_node()
    rclpy.try_shutdown()


def _raw(width, height, encoding, step, data, big=False) -> Image:
    return Image(width=width, height=height, encoding=encoding, step=step, data=bytes(data), is_bigendian=big)


def bad_images() -> list[Image]:
    return [
        _raw(8, 4, "rgb8", 24, b"\x00" * 50),  # shorter than height x step
        _raw(8, 4, "rgb8", 24, b"\x00" * 200),  # longer
        _raw(8, 4, "rgb8", 10, b"\x00" * 40),  # step smaller than width x channels
        _raw(0, 4, "rgb8", 0, b""),  # zero width
        _raw(8, 0, "rgb8", 24, b""),  # zero height
        _raw(8, 4, "yuv422_yuy2_weird", 16, b"\x00" * 64),  # unsupported encoding
        _raw(8000, 4400, "mono8", 8000, b"\x00" * 16),  # over 8K: refused before reading data
    ]


def test_bad_input_is_dropped_counted_and_survived(run_python, driver):
    with run_python.spawn(RUN_MODULE, NODE, *ros_args({"control.rate_hz": 20.0, "instruction_max_chars": 500}),
                          name="policy") as policy:
        assert spin_until(driver.node, lambda: (driver.good(), len(driver.gates) >= 1)[1], 60), policy.output()
        assert driver.steps_continue(), policy.output()
        # images
        for msg in bad_images():
            driver.send(driver.image, msg)
        assert driver.wait_counter("dropped_image", len(bad_images()), 15) == len(bad_images()), \
            [(kv.key, kv.value) for kv in driver.diag[-1].values]
        # a valid big-endian 16-bit frame is not bad input: it is converted, not dropped
        be = np.arange(48 * 64, dtype=">u2").reshape(48, 64)
        driver.image.publish(_raw(64, 48, "mono16", 128, be.tobytes(), big=True))
        # compressed
        jpeg = rgb_to_compressed_msg(driver.frame, "jpeg")
        bad_compressed = [CompressedImage(format="jpeg", data=b"\xff\xd8garbage" * 10),
                          CompressedImage(format="jpeg", data=bytes(jpeg.data[: len(jpeg.data) // 2])),
                          CompressedImage(format="tiff", data=bytes(jpeg.data))]
        for msg in bad_compressed:
            driver.send(driver.compressed, msg)
        assert driver.wait_counter("dropped_compressed_image", 3, 15) == 3
        # joint states
        bad_joints = [driver.joint_msg((np.nan, 0, 0, 0)), driver.joint_msg((np.inf, 0, 0, 0)),
                      JointState(name=JOINTS, position=[0.0, 0.0]),  # lengths differ
                      driver.joint_msg((0, 0, 0), names=JOINTS[:3]),  # a joint missing
                      driver.joint_msg(stamp=0.5)]  # stamp went backwards
        for msg in bad_joints:
            driver.send(driver.joints, msg)
        assert driver.wait_counter("dropped_joint_state", len(bad_joints), 15) >= len(bad_joints)
        # unknown extra joints are fine: the policy's joints are all there
        driver.joints.publish(driver.joint_msg((0, 0, 0, 0, 1.0), names=JOINTS + ["wheel"]))
        # instructions
        driver.instruction.publish(String(data="   "))
        assert driver.wait_counter("dropped_instruction", 1, 10) == 1
        driver.instruction.publish(String(data="x" * 100_000))
        assert driver.wait_counter("instruction_truncated", 1, 10) == 1
        # still acting, memory intact
        assert driver.steps_continue(), policy.output()
        mem = driver.mems[-1]
        assert mem.used_bytes <= mem.allocated_bytes <= mem.budget_bytes and mem.pinned_tokens > 0
        assert policy.alive()


FAULTY_NODE = """
import sys, pathlib, torch
from aura_ros.backends.transformers import policy as runtime
flag = pathlib.Path(sys.argv[1])
real_step = runtime.VLMPolicy.step
def step(self, *a, **k):
    mode = flag.read_text() if flag.exists() else ""
    if mode == "raise":
        raise RuntimeError("injected model fault")
    if mode == "oom-once":
        flag.write_text("")
        raise torch.OutOfMemoryError("injected CUDA out of memory")
    return real_step(self, *a, **k)
runtime.VLMPolicy.step = step
from aura_ros.ros.policy_node import main
main(sys.argv[2:])
"""


def test_model_fault_holds_reports_error_and_recovers(run_python, driver, tmp_path):
    flag = tmp_path / "fault"
    with run_python.spawn(FAULTY_NODE, str(flag), *ros_args({"control.rate_hz": 20.0,
                                                            "memory.vram_budget_mb": 2.0}), name="policy") as policy:
        assert spin_until(driver.node, lambda: (driver.good(), len(driver.gates) >= 3)[1], 60), policy.output()
        flag.write_text("raise")

        def error_seen():
            driver.good()
            return any(s.level == DiagnosticStatus.ERROR and "injected model fault" in s.message for s in driver.diag)
        assert spin_until(driver.node, error_seen, 15), policy.output()
        # Failing every tick at 20 Hz for 3 s: every failure counted, the log line throttled.
        spin_until(driver.node, lambda: (driver.good(), False)[1], 3.0)
        assert driver.counter("model_errors") >= 20 and driver.counter("hold_commands") >= 1
        assert policy.output().count("policy step failed") <= 2, policy.output()
        before = driver.gates[-1].step
        flag.write_text("")
        assert driver.steps_continue(), policy.output()
        assert driver.gates[-1].step > before and policy.alive()
        # out of memory: the budget shrinks by the stated factor and the step is retried once
        flag.write_text("oom-once")
        shrunk = int(2.0 * 0.75 * 2**20)
        assert spin_until(driver.node, lambda: (driver.good(), driver.mems[-1].budget_bytes == shrunk)[1], 15), \
            policy.output()
        assert driver.counter("out_of_memory") >= 0  # counted (reported at the next diagnostics tick)
        assert driver.steps_continue()


def _memory_map(node: Node) -> GetMemoryMap.Response:
    return call(node, GetMemoryMap, "/aura_policy/get_memory_map", GetMemoryMap.Request())


def test_snapshot_survives_restart_and_corrupt_one_is_refused(run_python, driver, tmp_path):
    snap = tmp_path / "memory"
    params = {"control.rate_hz": 20.0, "memory.snapshot_path": str(snap), "memory.vram_budget_mb": 0.25}
    with run_python.spawn(RUN_MODULE, NODE, *ros_args(params), name="first") as first:
        assert spin_until(driver.node, lambda: (driver.good(), len(driver.gates) >= 30)[1], 60), first.output()
        saved = call(driver.node, Trigger, "/aura_policy/save_memory", Trigger.Request())
        assert saved.success, saved.message
        first.proc.send_signal(signal.SIGTERM)  # clean shutdown writes the final snapshot
        assert first.wait(20) == 0, first.output()
    meta = json.loads(snap.with_suffix(".json").read_text())
    kept_before = sorted({s["step"] for s in meta["segments"] if s["kind"] in ("observation", "action")})
    last_step = meta["extra"]["step_index"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left
    driver.gates.clear()
    with run_python.spawn(RUN_MODULE, NODE, *ros_args({**params, "control.rate_hz": 0.2}), name="second") as second:
        # at 0.2 Hz the memory map can be read before the first new step lands
        mm = None
        end = time.monotonic() + 60
        while time.monotonic() < end and mm is None:
            try:
                mm = _memory_map(driver.node)
            except AssertionError:
                pass
        assert mm is not None, second.output()
        assert list(mm.kept_steps) == kept_before and mm.step == last_step, second.output()
        assert "memory resumed" in second.output()
    # a corrupt snapshot is refused with a clear error, and the node starts fresh
    _, tensors = snapshot.files(snap)
    blob = bytearray(tensors.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    tensors.write_bytes(bytes(blob))
    with run_python.spawn(RUN_MODULE, NODE, *ros_args({**params, "memory.snapshot_on_shutdown": False}),
                          name="third") as third:
        assert spin_until(driver.node, lambda: (driver.good(), len(driver.gates) >= 3)[1], 60), third.output()
        assert "snapshot refused" in third.output() and driver.gates[-1].step < 10


def test_policy_restart_gives_identical_next_step(tmp_path):
    """Layer 2: save, restart in a new process, load: identical kept segments and next-step logits."""
    import subprocess
    import sys

    script = """
import sys, numpy as np, torch
torch.manual_seed(0)
from aura_ros.backends.transformers.policy import PolicyConfig, VLMPolicy
from aura_ros.core.types import Observation
cfg = PolicyConfig(budget_bytes=256 * 1024, recent_steps=4)
pol = VLMPolicy.from_pretrained(None, cfg, instruction="stack the cubes")
rng = np.random.default_rng(1)
frames = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(41)]
mode, path = sys.argv[1], sys.argv[2]
if mode == "save":
    for i in range(40):
        pol.step(Observation(frames[i], np.full(4, 0.01 * i)))
    pol.save_memory(path)
else:
    pol.load_memory(path)
a = pol.step(Observation(frames[40], np.full(4, 0.4)))
segs = [(s.kind.value, s.step, s.start, s.length, s.pos_start) for s in pol.cache.table.segments]
np.save(sys.argv[3], a.logits)
print(repr((a.step, a.bins.tolist(), segs)))
"""
    (tmp_path / "s.py").write_text(script)
    runs = []
    for mode in ("save", "load"):
        out = subprocess.run([sys.executable, str(tmp_path / "s.py"), mode, str(tmp_path / "mem"),
                              str(tmp_path / f"{mode}.npy")], capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        runs.append(out.stdout.strip().splitlines()[-1])
    assert runs[0] == runs[1]
    assert np.array_equal(np.load(tmp_path / "save.npy"), np.load(tmp_path / "load.npy"))
