"""config/foxglove_layout.json references only topics and fields that exist.

Checked against msg/*.msg (the fields MemoryBudget and GateStats carry), the topic names the node,
replay, the demo MCAP and the live server share (aura_ros.core.topics), and against what the live
server really advertises.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aura_ros.core import topics
from aura_ros.tools.msgdefs import msg_fields

LAYOUT = Path(__file__).resolve().parents[2] / "config" / "foxglove_layout.json"
MESSAGE_OF = {topics.MEMORY: "MemoryBudget", topics.GATE_STATS: "GateStats"}
IMAGE_TOPICS = {topics.IMAGE, topics.IMAGE_COMPRESSED, topics.MEMORY_MAP}


@pytest.fixture(scope="module")
def layout() -> dict:
    return json.loads(LAYOUT.read_text())


def panel_ids(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    return panel_ids(node["first"]) + panel_ids(node["second"])


def plot_paths(layout) -> list[str]:
    return [p["value"] for pid, cfg in layout["configById"].items() if pid.startswith("Plot!") for p in cfg["paths"]]


def test_every_panel_in_the_tree_is_configured(layout):
    ids = panel_ids(layout["layout"])
    assert sorted(ids) == sorted(layout["configById"]) and len(ids) == len(set(ids))


def test_plot_paths_are_fields_of_the_messages(layout):
    paths = plot_paths(layout)
    assert paths
    for path in paths:
        topic, _, field = path.partition(".")
        assert topic in MESSAGE_OF, f"{path}: unknown topic {topic}"
        fields = {f for _, f in msg_fields(MESSAGE_OF[topic])}
        assert field in fields, f"{path}: {MESSAGE_OF[topic]}.msg has no field {field!r} ({sorted(fields)})"


def test_the_issue_asks_for_these_plots(layout):
    paths = set(plot_paths(layout))
    for needed in ("/aura_policy/memory.used_bytes", "/aura_policy/memory.allocated_bytes",
                   "/aura_policy/memory.budget_bytes", "/aura_policy/gate_stats.gate_value",
                   "/aura_policy/gate_stats.write_rate", "/aura_policy/gate_stats.step_latency_ms",
                   "/aura_policy/gate_stats.max_position"):
        assert needed in paths


def image_panel_topics(layout) -> set[str]:
    return {cfg["imageMode"]["imageTopic"] for pid, cfg in layout["configById"].items() if pid.startswith("Image!")}


def test_image_and_diagnostics_panels_use_existing_topics(layout):
    assert image_panel_topics(layout) == IMAGE_TOPICS
    diags = [cfg["topicToRender"] for pid, cfg in layout["configById"].items() if pid.startswith("Diagnostic")]
    assert diags == [topics.DIAGNOSTICS]


@pytest.mark.parametrize("camera", ["raw", "compressed"])
def test_a_replay_output_shows_its_camera_in_the_layout(layout, tmp_path, camera):
    """Replay writes the camera as the node sees it (/image or /image/compressed): either shows."""
    from bag_helpers import make_recording, write_bag

    from aura_ros.core.config import PolicyConfig
    from aura_ros.tools.replay import read_topics, replay

    bag = write_bag(tmp_path / "in", make_recording(n_frames=2), camera=camera, commands=False)
    result = replay(bag, tmp_path / "out", PolicyConfig(budget_bytes=128 * 1024), progress=False)
    cameras = set(read_topics(result.out)) & {topics.IMAGE, topics.IMAGE_COMPRESSED}
    assert len(cameras) == 1 and cameras <= image_panel_topics(layout)


def test_the_live_server_serves_every_topic_of_the_layout(layout):
    from aura_ros.ros.image_conversion import rgb_to_compressed_msg
    from aura_ros.tools.foxglove_live import LiveView

    view = LiveView(port=None)
    try:
        view.log_message(topics.IMAGE_COMPRESSED, rgb_to_compressed_msg(np.zeros((4, 4, 3), np.uint8), "png"))
        served = {ch.topic() for ch in (view.image, view.image_compressed, view.memory_map, view.memory, view.gate,
                                        view.diagnostics)}
    finally:
        view.close()
    used = {p.partition(".")[0] for p in plot_paths(layout)} | image_panel_topics(layout) | {topics.DIAGNOSTICS}
    assert used <= served
