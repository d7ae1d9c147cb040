"""The soak command in its short form: node + sim over DDS, invariants checked on every message."""
from __future__ import annotations

import json

from aura_ros.tools.cli import main


def test_soak_short(tmp_path):
    out = tmp_path / "soak"
    assert main(["soak", "--steps", "300", "--budget-mb", "0.25", "--rate-hz", "30.0", "--out", str(out)]) == 0
    rep = json.loads((out / "soak.json").read_text())
    assert rep["violations"] == [] and rep["steps"] >= 300
    assert rep["evictions_total"] > 0  # the budget was hit, and held
    assert 0 < rep["max_used_bytes"] <= rep["allocated_bytes"] <= rep["budget_bytes"] == int(0.25 * 2**20)
    assert 0 < rep["max_position"] <= rep["capacity_tokens"]
    assert rep["diagnostic_keys_max"] < 40  # the counters' storage stays bounded
    last = max(rep["checkpoints"], key=int)  # latency and RSS recorded at the end of the run
    assert int(last) >= 299 and rep["checkpoints"][last]["p50_ms"] > 0
