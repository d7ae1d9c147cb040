"""`aura-ros demo` in a short form: sim (task mode, tasks back to back with no reset) + policy node
over real DDS, then the in-process comparison and the unbounded stretch. Behaviour only: files,
columns, constant allocation, every task reported, no reset; no success figure of the trained
policy and no timing is asserted.
"""
from __future__ import annotations

import csv
import json
import os

from aura_ros.tools.cli import main


def test_demo_short_run(tmp_path, monkeypatch):
    # The demo picks a private ROS domain of its own (in os.environ): give this test's environment back afterwards.
    for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOG_DIR", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        if key in os.environ:
            monkeypatch.setenv(key, os.environ[key])
        else:
            monkeypatch.delenv(key, raising=False)
    out = tmp_path / "demo"
    assert main(["demo", "--tasks", "3", "--distractors", "4", "--unbounded-steps", "20", "--rate-hz", "10",
                 "--cross-task", "0.5", "--foxglove-port", "0", "--out", str(out)]) == 0
    for name in ("demo.png", "demo.csv", "demo_episodes.csv", "demo_summary.json", "demo_summary.txt"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["task"] == "cue_recall" and summary["episodes"] == 3
    # The sim ran the tasks back to back and nobody reset the memory between them.
    assert summary["memory_reset_between_tasks"] == [False, False, False]
    assert summary["tasks_dds"][0] == "cue_recall" and len(summary["tasks_dds"]) == 3
    assert all(len(v) == 3 for v in summary["success_by_task"].values())
    assert len(summary["gated_allocated_bytes"]) == 1  # allocated once, at the budget, at every step over DDS
    assert summary["gated_allocated_bytes"][0] <= int(summary["budget_mb"] * 2**20)
    assert set(summary["success"]) == {"action gate, over DDS", "action gate, in process", "sliding window, in process"}
    assert all(v["episodes"] == 3 for v in summary["success"].values())
    assert summary["unbounded_allocated_bytes"][1] > summary["unbounded_allocated_bytes"][0]  # it grows
    episodes = list(csv.DictReader(open(out / "demo_episodes.csv")))
    assert {r["run"] for r in episodes} == {"action_gate_dds", "action_gate_in_process", "sliding_window_in_process"}
    assert [r["seed"] for r in episodes if r["run"] == "action_gate_dds"] == ["0", "1", "2"]
    # The in-process stream is the same stream: the same tasks in the same order.
    for run in ("action_gate_in_process", "sliding_window_in_process"):
        assert [r["task"] for r in episodes if r["run"] == run] == summary["tasks_dds"]
    assert summary["task_steps_over_dds"] > 3 * 4  # every task ran through its distractors over DDS
    # the run over DDS is in an MCAP that Foxglove opens: the node's topics, the memory map among them
    from mcap.reader import make_reader

    with open(out / "demo.mcap", "rb") as f:
        counts: dict[str, int] = {}
        for _, channel, _ in make_reader(f).iter_messages():
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
    topics = {"/aura_policy/memory", "/aura_policy/gate_stats", "/aura_policy/memory_map", "/image"}
    assert topics <= set(counts), counts
    text = (out / "demo_summary.txt").read_text()
    assert "sliding window" in text and "chance 0.33" in text
