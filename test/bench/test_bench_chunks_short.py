"""`aura-ros bench chunks`, short: node + sim over DDS with a slowed step, chunked and one inference per
tick; the report's counts, not its timings."""
from __future__ import annotations

import json

from aura_ros.tools.cli import main


def test_bench_chunks_short(tmp_path):
    out = tmp_path / "chunks"
    assert main(["bench", "chunks", "--chunks", "16,1", "--rate-hz", "20", "--min-step-s", "0.25", "--seconds", "6",
                 "--warmup-s", "1", "--out", str(out)]) == 0
    chunked, single = json.loads((out / "chunks.json").read_text())
    assert (chunked["chunk"], single["chunk"]) == (16, 1)
    for r in (chunked, single):
        assert r["exit_codes"] == {"policy_node": 0, "sim_node": 0}
        assert r["steps"] >= 2 and r["commands"] >= r["steps"]
    # One inference per tick sends one command per step; the queue sends several per step.
    assert single["commands"] <= single["steps"] + 1
    assert chunked["commands"] >= 2 * chunked["steps"]
    assert chunked["counters"]["chunks"] >= 2 and single["counters"]["chunks"] == 0
    assert (out / "chunks.md").read_text().count("\n") == 4
    assert main(["bench", "chunks", "--chunks", "0", "--out", str(out)]) == 2
