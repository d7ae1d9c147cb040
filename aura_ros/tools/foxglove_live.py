"""Foxglove without ROS: a live WebSocket server on localhost and an MCAP recorder (foxglove-sdk).

The laptop route has no foxglove_bridge; this serves the same topic names and field paths as the
node does on a robot (``aura_ros.core.topics``), so config/foxglove_layout.json works for both,
and for the replay and demo MCAPs:

- ``/image`` and ``/aura_policy/memory_map``: foxglove.RawImage (rgb8); ``/image/compressed``:
  foxglove.CompressedImage, advertised only once a compressed frame is forwarded (the sim renders
  raw frames, so a client never sees a camera topic that stays silent),
- ``/aura_policy/memory`` and ``/aura_policy/gate_stats``: JSON with the fields of
  msg/MemoryBudget.msg and msg/GateStats.msg (same names, so ``/aura_policy/memory.used_bytes``
  plots in both places),
- ``/diagnostics``: JSON shaped as diagnostic_msgs/DiagnosticArray (schema named so), which
  Foxglove's diagnostics panels read.

Use per control step::

    view = LiveView(port=0, mcap_path="out/demo/run.mcap")   # port 0: a free port
    print(f"Foxglove: open {view.url}")
    view.log_step(frame, action.stats, memory_map_image=img, diagnostics=health.report())
    ...
    view.close()

The server listens on 127.0.0.1 only: nothing leaves the machine. It speaks only the websocket
subprotocol ``foxglove.sdk.v1`` (foxglove-sdk has no option for another): clients that offer only
``foxglove.websocket.v1`` (older Foxglove releases, Lichtblick before its late-2025 release) get
HTTP 400 and should open the MCAP recording instead.
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

import foxglove
import numpy as np
from foxglove.channels import CompressedImageChannel, RawImageChannel
from foxglove.messages import CompressedImage, RawImage, Timestamp

from aura_ros.core import topics
from aura_ros.tools.msgdefs import json_schema, stats_fields

SUBPROTOCOL = "foxglove.sdk.v1"
LEGACY_SUBPROTOCOL = "foxglove.websocket.v1"  # refused by the server (HTTP 400)
DIAGNOSTIC_LEVELS = {"OK": 0, "WARN": 1, "ERROR": 2, "STALE": 3}

_DIAGNOSTICS_SCHEMA = {
    "title": "diagnostic_msgs/msg/DiagnosticArray",
    "type": "object",
    "properties": {
        "header": {"type": "object"},
        "status": {"type": "array", "items": {"type": "object", "properties": {
            "level": {"type": "integer"}, "name": {"type": "string"}, "message": {"type": "string"},
            "hardware_id": {"type": "string"},
            "values": {"type": "array", "items": {"type": "object", "properties": {
                "key": {"type": "string"}, "value": {"type": "string"}}}}}}},
    },
}


def _schema(name: str, schema: dict) -> foxglove.Schema:
    return foxglove.Schema(name=name, encoding="jsonschema", data=json.dumps(schema).encode())


def _header(t_ns: int, frame_id: str = "") -> dict:
    return {"stamp": {"sec": t_ns // 1_000_000_000, "nanosec": t_ns % 1_000_000_000}, "frame_id": frame_id}


def _level(level) -> int:
    """diagnostic_msgs' levels are byte constants in rclpy (b"\\x00"), ints in rosbags."""
    return level[0] if isinstance(level, (bytes, bytearray)) else int(level)


def _msg_header(msg) -> dict:
    stamp = msg.header.stamp
    return {"stamp": {"sec": int(stamp.sec), "nanosec": int(stamp.nanosec)}, "frame_id": str(msg.header.frame_id)}


def _raw_image(rgb: np.ndarray, t_ns: int, frame_id: str) -> RawImage:
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    return RawImage(timestamp=Timestamp(t_ns // 1_000_000_000, t_ns % 1_000_000_000), frame_id=frame_id,
                    width=w, height=h, encoding="rgb8", step=w * 3, data=rgb.tobytes())


def diagnostics_json(diagnostics, t_ns: int, name: str = f"aura_ros: {topics.NODE_NAME}") -> dict:
    """A DiagnosticArray as JSON from ``Health.report()``'s (level, message, values) or a plain
    {key: value} dict (level OK)."""
    if isinstance(diagnostics, Mapping):
        level, message, values = 0, "running", diagnostics
    else:
        level, message, values = diagnostics
    return {"header": _header(t_ns), "status": [{
        "level": _level(level), "name": name, "message": str(message), "hardware_id": "aura_ros",
        "values": [{"key": str(k), "value": str(v)} for k, v in values.items()]}]}


class LiveView:
    """The camera, memory map, MemoryBudget, GateStats and diagnostics, served and/or recorded.

    port: the WebSocket port on ``host`` (0: a free one; None: no server, e.g. MCAP only).
    mcap_path: also record everything to this MCAP file (its folder is created; overwritten).
    """

    def __init__(self, port: int | None = 0, mcap_path: str | Path | None = None, host: str = "127.0.0.1",
                 name: str = "aura_ros"):
        self.context = foxglove.Context()  # its own context: only these channels, only these sinks
        self.server = None
        self.mcap = None
        self.mcap_path = Path(mcap_path) if mcap_path else None
        if port is not None:
            self.server = foxglove.start_server(name=name, host=host, port=port, context=self.context)
        if self.mcap_path is not None:
            self.mcap_path.parent.mkdir(parents=True, exist_ok=True)
            self.mcap = foxglove.open_mcap(str(self.mcap_path), allow_overwrite=True, context=self.context)
        self.host = host
        self.image = RawImageChannel(topics.IMAGE, context=self.context)
        self.image_compressed: CompressedImageChannel | None = None  # created by the first compressed frame
        self.memory_map = RawImageChannel(topics.MEMORY_MAP, context=self.context)
        self.memory = foxglove.Channel(topics.MEMORY, schema=_schema("aura_ros/msg/MemoryBudget",
                                                                     json_schema("MemoryBudget")),
                                       message_encoding="json", context=self.context)
        self.gate = foxglove.Channel(topics.GATE_STATS, schema=_schema("aura_ros/msg/GateStats",
                                                                      json_schema("GateStats")),
                                     message_encoding="json", context=self.context)
        self.diagnostics = foxglove.Channel(topics.DIAGNOSTICS,
                                            schema=_schema("diagnostic_msgs/msg/DiagnosticArray", _DIAGNOSTICS_SCHEMA),
                                            message_encoding="json", context=self.context)

    @property
    def port(self) -> int | None:
        return self.server.port if self.server is not None else None

    @property
    def url(self) -> str | None:
        """The ws:// address to open in Foxglove (Open connection -> Foxglove WebSocket)."""
        return f"ws://{self.host}:{self.port}" if self.server is not None else None

    def log_step(self, frame: np.ndarray | None, stats, memory_map_image: np.ndarray | None = None,
                 diagnostics=None, t_ns: int | None = None) -> None:
        """One control step: ``frame`` (HxWx3 RGB or None), ``stats`` (Action.stats, a StepStats),
        optionally the memory-map image and diagnostics (``Health.report()`` or a dict)."""
        t = time.time_ns() if t_ns is None else int(t_ns)
        if frame is not None:
            self.image.log(_raw_image(frame, t, "camera"), log_time=t)
        if stats is not None:
            header = _header(t)
            self.memory.log({"header": header, **stats_fields("MemoryBudget", stats)}, log_time=t)
            self.gate.log({"header": header, **stats_fields("GateStats", stats)}, log_time=t)
        if memory_map_image is not None:
            self.memory_map.log(_raw_image(memory_map_image, t, "memory_map"), log_time=t)
        if diagnostics is not None:
            self.diagnostics.log(diagnostics_json(diagnostics, t), log_time=t)

    def log_message(self, topic: str, msg, t_ns: int | None = None) -> None:
        """A ROS message received on one of the shared topics (rclpy or rosbags objects: the demo's
        DDS listener passes what it receives): MemoryBudget, GateStats, Image (any encoding that
        Foxglove reads: passed through), CompressedImage, DiagnosticArray."""
        t = time.time_ns() if t_ns is None else int(t_ns)
        if topic in (topics.MEMORY, topics.GATE_STATS):
            name, channel = ("MemoryBudget", self.memory) if topic == topics.MEMORY else ("GateStats", self.gate)
            channel.log({"header": _msg_header(msg), **stats_fields(name, msg)}, log_time=t)
        elif topic in (topics.IMAGE, topics.MEMORY_MAP):
            channel = self.image if topic == topics.IMAGE else self.memory_map
            stamp = msg.header.stamp
            channel.log(RawImage(timestamp=Timestamp(int(stamp.sec), int(stamp.nanosec)), frame_id=msg.header.frame_id,
                                 width=int(msg.width), height=int(msg.height), encoding=msg.encoding,
                                 step=int(msg.step), data=bytes(msg.data)), log_time=t)
        elif topic == topics.IMAGE_COMPRESSED:
            stamp = msg.header.stamp
            fmt = "png" if "png" in msg.format.lower() else "jpeg"
            if self.image_compressed is None:
                self.image_compressed = CompressedImageChannel(topics.IMAGE_COMPRESSED, context=self.context)
            self.image_compressed.log(CompressedImage(timestamp=Timestamp(int(stamp.sec), int(stamp.nanosec)),
                                                      frame_id=msg.header.frame_id, data=bytes(msg.data), format=fmt),
                                      log_time=t)
        elif topic == topics.DIAGNOSTICS:
            self.diagnostics.log({"header": _msg_header(msg), "status": [{
                "level": _level(s.level), "name": s.name, "message": s.message, "hardware_id": s.hardware_id,
                "values": [{"key": kv.key, "value": kv.value} for kv in s.values]} for s in msg.status]}, log_time=t)
        else:
            raise ValueError(f"LiveView has no channel for topic {topic!r}")

    def close(self) -> None:
        """Stop the server and finish the MCAP (safe to call twice)."""
        if self.mcap is not None:
            self.mcap.close()
            self.mcap = None
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_sim_live(steps: int = 0, budget_mb: float = 0.5, rate_hz: float = 10.0, port: int = 8765,
                 mcap_path: Path | None = None, map_period_s: float = 1.0,
                 instruction: str = "pick up the red block and put it in the bin") -> int:
    """`aura-ros foxglove`: the policy on the sim (no ROS), served live until Ctrl-C or ``steps``."""
    from aura_ros.core.config import PolicyConfig
    from aura_ros.core.memory_map import policy_memory_map
    from aura_ros.core.registry import make_policy
    from aura_ros.core.types import Observation
    from aura_ros.ros.diagnostics import Health
    from aura_ros.sim.scene import SimScene

    policy = make_policy(None, PolicyConfig(budget_bytes=int(budget_mb * 2**20)), instruction=instruction)
    scene = SimScene(seed=0)
    health = Health()
    health.lifecycle = "active"
    dt = 1.0 / rate_hz
    view = LiveView(port=port, mcap_path=mcap_path)
    print(f"Foxglove: open {view.url} (Open connection -> Foxglove WebSocket), then import "
          f"config/foxglove_layout.json" + (f"; recording {mcap_path}" if mcap_path else "") + ". Ctrl-C stops. "
          f"(Clients that speak only {LEGACY_SUBPROTOCOL}, such as older Foxglove or Lichtblick releases, are "
          f"refused: open the MCAP instead.)", flush=True)
    next_map = 0.0
    i = 0
    try:
        while steps <= 0 or i < steps:
            t0 = time.monotonic()
            frame = scene.render()
            _, pos, _ = scene.joint_state()
            action = policy.step(Observation(frame, pos))
            scene.apply_position_command(action.first, dt)
            health.step_done(action.stats, dt, time.monotonic() - t0, action.stats.evicted_written_total)
            img = diag = None
            if t0 >= next_map:
                img, diag, next_map = policy_memory_map(policy), health.report(), t0 + map_period_s
            view.log_step(frame, action.stats, img, diag)
            i += 1
            time.sleep(max(0.0, dt - (time.monotonic() - t0)))
    except KeyboardInterrupt:
        pass
    finally:
        view.close()
    print(f"\n{i} steps served" + (f"; wrote {mcap_path}" if mcap_path else ""))
    return 0
