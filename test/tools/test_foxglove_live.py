"""The Foxglove live server, seen by a real websocket client, and its MCAP recording."""
from __future__ import annotations

import asyncio
import json
import struct

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from aura_ros.core import topics
from aura_ros.core.memory_map import render_memory_map
from aura_ros.memory.stats import StepStats
from aura_ros.tools.foxglove_live import LEGACY_SUBPROTOCOL, SUBPROTOCOL, LiveView
from aura_ros.tools.msgdefs import msg_fields

STATS = StepStats(budget_bytes=1 << 20, allocated_bytes=1 << 20, used_bytes=123456, capacity_tokens=2048,
                  used_tokens=241, pinned_tokens=26, segments_kept=9, steps_kept=5, long_term_steps_kept=2,
                  oldest_kept_step=1, max_position=240, evictions_total=7, step=11, gate_value=0.75, written=True,
                  writes_total=3, write_rate=0.2, action_delta=0.5, step_latency_ms=12.5)
FRAME = np.arange(24 * 32 * 3, dtype=np.uint8).reshape(24, 32, 3)
MAP = render_memory_map([(1, 1.0, True, 40), (11, 0.75, True, 40)], 26, 11, 8, width=128, height=80,
                        capacity_tokens=2048)


async def _client(view: LiveView, wanted: set[str]) -> dict[str, bytes]:
    """Connect, subscribe to ``wanted`` topics, log steps until each has sent one message."""
    got: dict[str, bytes] = {}
    async with connect(view.url, subprotocols=[SUBPROTOCOL], open_timeout=10) as ws:
        assert ws.subprotocol == SUBPROTOCOL
        channels: dict[int, dict] = {}
        while not wanted <= {c["topic"] for c in channels.values()}:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if msg.get("op") == "advertise":
                channels.update({c["id"]: c for c in msg["channels"]})
        subs = {i: c for i, c in enumerate(c for c in channels.values() if c["topic"] in wanted)}
        await ws.send(json.dumps({"op": "subscribe",
                                  "subscriptions": [{"id": i, "channelId": c["id"]} for i, c in subs.items()]}))
        for _ in range(200):
            view.log_step(FRAME, STATS, memory_map_image=MAP, diagnostics={"step": "11"})
            try:
                data = await asyncio.wait_for(ws.recv(), 0.1)
            except asyncio.TimeoutError:
                continue
            if isinstance(data, bytes) and data[0] == 0x01:
                sub_id, _log_time = struct.unpack_from("<IQ", data, 1)
                got.setdefault(subs[sub_id]["topic"], data[13:])
                got.setdefault("_schema:" + subs[sub_id]["topic"], subs[sub_id]["schemaName"].encode())
            if wanted <= set(got):
                break
    return got


def test_websocket_client_receives_memory_fields_and_an_image():
    with LiveView(port=0) as view:
        assert view.url.startswith("ws://127.0.0.1:") and view.port > 0
        got = asyncio.run(_client(view, {topics.MEMORY, topics.GATE_STATS, topics.IMAGE, topics.MEMORY_MAP,
                                         topics.DIAGNOSTICS}))
    memory = json.loads(got[topics.MEMORY])
    assert memory["used_bytes"] == 123456 and memory["budget_bytes"] == 1 << 20
    assert set(memory) == {"header"} | {f for _, f in msg_fields("MemoryBudget")}
    gate = json.loads(got[topics.GATE_STATS])
    assert gate["gate_value"] == 0.75 and gate["written"] is True and gate["step_latency_ms"] == 12.5
    assert got["_schema:" + topics.IMAGE] == b"foxglove.RawImage"
    # The RawImage payload (protobuf) carries the frame's pixels as one bytes field.
    assert FRAME.tobytes() in got[topics.IMAGE] and MAP.tobytes() in got[topics.MEMORY_MAP]
    diag = json.loads(got[topics.DIAGNOSTICS])
    assert diag["status"][0]["values"] == [{"key": "step", "value": "11"}]
    assert got["_schema:" + topics.DIAGNOSTICS] == b"diagnostic_msgs/msg/DiagnosticArray"


def test_mcap_recording_has_every_channel(tmp_path):
    from mcap.reader import make_reader

    path = tmp_path / "run" / "live.mcap"
    with LiveView(port=None, mcap_path=path) as view:
        assert view.url is None
        for i in range(3):
            view.log_step(FRAME, STATS, memory_map_image=MAP if i == 0 else None,
                          diagnostics=(b"\x01", "warn", {"a": "b"}),
                          t_ns=10**18 + i)
    with path.open("rb") as f:
        msgs = [(ch.topic, schema.name, m.log_time, m.data) for schema, ch, m in make_reader(f).iter_messages()]
    counts = {t: sum(1 for m in msgs if m[0] == t) for t in {m[0] for m in msgs}}
    assert counts == {topics.IMAGE: 3, topics.MEMORY: 3, topics.GATE_STATS: 3, topics.DIAGNOSTICS: 3,
                      topics.MEMORY_MAP: 1}
    memory = [json.loads(m[3]) for m in msgs if m[0] == topics.MEMORY]
    assert memory[0]["used_bytes"] == 123456 and memory[0]["header"]["stamp"]["sec"] == 10**9
    assert sorted(m[2] for m in msgs if m[0] == topics.MEMORY) == [10**18, 10**18 + 1, 10**18 + 2]
    assert {m[1] for m in msgs if m[0] == topics.MEMORY} == {"aura_ros/msg/MemoryBudget"}
    diag = json.loads(next(m[3] for m in msgs if m[0] == topics.DIAGNOSTICS))  # Health.report()'s byte level
    assert diag["status"][0]["level"] == 1 and diag["status"][0]["message"] == "warn"


def test_ros_messages_from_the_node_builders_are_forwarded(tmp_path):
    """The demo's DDS listener forwards what the node publishes: the same fields come out."""
    from mcap.reader import make_reader
    from std_msgs.msg import Header

    from aura_ros.ros.diagnostics import Health, diagnostics_msg
    from aura_ros.ros.image_conversion import rgb_to_compressed_msg, rgb_to_image_msg
    from aura_ros.ros.messages import gate_msg, memory_msg

    header = Header()
    header.stamp.sec, header.stamp.nanosec = 42, 7
    health = Health()
    health.lifecycle = "active"
    health.step_done(STATS, 0.1, 0.0, 0)
    path = tmp_path / "fwd.mcap"
    with LiveView(port=None, mcap_path=path) as view:
        view.log_message(topics.MEMORY, memory_msg(STATS, header), t_ns=1)
        view.log_message(topics.GATE_STATS, gate_msg(STATS, header), t_ns=2)
        view.log_message(topics.IMAGE, rgb_to_image_msg(FRAME, "bgr8", stamp=header.stamp), t_ns=3)
        view.log_message(topics.MEMORY_MAP, rgb_to_image_msg(MAP, "rgb8", stamp=header.stamp), t_ns=4)
        view.log_message(topics.IMAGE_COMPRESSED, rgb_to_compressed_msg(FRAME, "png", stamp=header.stamp), t_ns=5)
        view.log_message(topics.DIAGNOSTICS, diagnostics_msg("aura_policy", health, header.stamp, True), t_ns=6)
        with pytest.raises(ValueError, match="LiveView has no channel for topic '/elsewhere'"):
            view.log_message("/elsewhere", None)
    with path.open("rb") as f:
        msgs = {ch.topic: (schema.name, m.data) for schema, ch, m in make_reader(f).iter_messages()}
    memory = json.loads(msgs[topics.MEMORY][1])
    assert memory["used_bytes"] == 123456 and memory["header"]["stamp"] == {"sec": 42, "nanosec": 7}
    assert abs(memory["used_fraction"] - 241 / 2048) < 1e-6
    assert json.loads(msgs[topics.GATE_STATS][1])["writes_total"] == 3
    assert msgs[topics.IMAGE][0] == "foxglove.RawImage" and FRAME[:, :, ::-1].tobytes() in msgs[topics.IMAGE][1]
    assert msgs[topics.IMAGE_COMPRESSED][0] == "foxglove.CompressedImage"
    diag = json.loads(msgs[topics.DIAGNOSTICS][1])
    assert diag["status"][0]["level"] == 0 and diag["status"][0]["name"] == "aura_ros: aura_policy"
    assert any(kv["key"] == "step" and kv["value"] == "11" for kv in diag["status"][0]["values"])


def test_aura_ros_foxglove_runs_the_sim_and_records(tmp_path, capsys):
    from mcap.reader import make_reader

    from aura_ros.tools.cli import main

    path = tmp_path / "live.mcap"
    assert main(["foxglove", "--steps", "3", "--port", "0", "--rate-hz", "50", "--budget-mb", "0.25",
                 "--mcap", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Foxglove: open ws://127.0.0.1:" in out and "3 steps served" in out
    with path.open("rb") as f:
        seen = [ch.topic for _, ch, _ in make_reader(f).iter_messages()]
    assert seen.count(topics.IMAGE) == seen.count(topics.MEMORY) == seen.count(topics.GATE_STATS) == 3
    assert seen.count(topics.MEMORY_MAP) >= 1 and seen.count(topics.DIAGNOSTICS) >= 1


def test_a_client_offering_only_the_legacy_subprotocol_is_refused():
    """What the README tells users of older Foxglove and Lichtblick: foxglove-sdk answers HTTP 400."""
    async def legacy(url):
        async with connect(url, subprotocols=[LEGACY_SUBPROTOCOL], open_timeout=10):
            pass

    with LiveView(port=0) as view:
        with pytest.raises(InvalidStatus) as refused:
            asyncio.run(legacy(view.url))
    assert refused.value.response.status_code == 400


async def _advertised(ws, until: set[str], view: LiveView, log, timeout_s: float = 10.0) -> set[str]:
    """Topics advertised to ``ws`` while ``log()`` runs, until ``until`` are all there."""
    seen: set[str] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not until <= seen and loop.time() < deadline:
        log()
        try:
            msg = await asyncio.wait_for(ws.recv(), 0.1)
        except asyncio.TimeoutError:
            continue
        if isinstance(msg, str) and json.loads(msg).get("op") == "advertise":
            seen |= {c["topic"] for c in json.loads(msg)["channels"]}
    return seen


def test_the_live_sim_advertises_only_what_it_publishes():
    """The sim's steps (LiveView.log_step) carry raw frames: /image/compressed is advertised only
    once a compressed frame is forwarded, and then it carries that frame."""
    from aura_ros.ros.image_conversion import rgb_to_compressed_msg

    compressed = rgb_to_compressed_msg(FRAME, "png")

    async def client(view: LiveView) -> bytes:
        async with connect(view.url, subprotocols=[SUBPROTOCOL], open_timeout=10) as ws:
            sim = {topics.IMAGE, topics.MEMORY, topics.GATE_STATS, topics.MEMORY_MAP, topics.DIAGNOSTICS}
            before = await _advertised(ws, sim, view, lambda: view.log_step(FRAME, STATS, MAP, {"step": "1"}))
            for _ in range(5):  # more sim steps: still nothing new
                view.log_step(FRAME, STATS, MAP, {"step": "1"})
            before |= await _advertised(ws, {topics.IMAGE_COMPRESSED}, view, lambda: None, timeout_s=0.5)
            assert topics.IMAGE in before and topics.IMAGE_COMPRESSED not in before
            later = await _advertised(ws, {topics.IMAGE_COMPRESSED}, view,
                                      lambda: view.log_message(topics.IMAGE_COMPRESSED, compressed))
            assert topics.IMAGE_COMPRESSED in later
            channel = view.image_compressed.id()
            await ws.send(json.dumps({"op": "subscribe", "subscriptions": [{"id": 7, "channelId": channel}]}))
            for _ in range(100):
                view.log_message(topics.IMAGE_COMPRESSED, compressed)
                try:
                    data = await asyncio.wait_for(ws.recv(), 0.1)
                except asyncio.TimeoutError:
                    continue
                if isinstance(data, bytes) and data[0] == 0x01 and struct.unpack_from("<I", data, 1)[0] == 7:
                    return data[13:]
        raise AssertionError("no compressed frame arrived")

    with LiveView(port=0) as view:
        payload = asyncio.run(client(view))
    assert bytes(compressed.data) in payload
