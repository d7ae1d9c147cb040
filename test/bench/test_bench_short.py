"""The benchmarks end to end in their short forms: files written, invariants hold.

Timings are never asserted here (CI machines vary); the long runs are in docs/benchmarks.md.
"""
from __future__ import annotations

import csv
import json

from aura_ros.tools.cli import main


def test_bench_memory_short(tmp_path):
    out = tmp_path / "mem"
    assert main(["bench", "memory", "--steps", "300", "--unbounded-cap", "100", "--budget-mb", "0.5",
                 "--out", str(out)]) == 0
    for name in ("memory_checkpoints.csv", "memory_table.md", "memory.png", "memory_summary.json"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(out / "memory_checkpoints.csv")))
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["policy"], []).append(r)
    assert set(by) == {"unbounded", "sliding_window", "streaming_llm", "h2o", "action_gate"}
    budget = int(0.5 * 2**20)
    for pol, rs in by.items():
        alloc = {int(r["allocated_bytes"]) for r in rs}
        if pol == "unbounded":
            assert int(rs[-1]["allocated_bytes"]) > int(rs[0]["allocated_bytes"])  # it grows
            assert int(rs[-1]["step"]) == 100  # stopped at its stated cap
        else:
            assert len(alloc) == 1 and alloc.pop() <= budget  # allocated once, at the budget
            assert int(rs[-1]["step"]) == 300 and int(rs[-1]["evictions_total"]) > 0
            assert all(int(r["max_position"]) < int(r["used_tokens"]) + 64 for r in rs)
    ratios = json.loads((out / "memory_summary.json").read_text())["ratios"]
    assert ratios["action_gate.allocated_constant"] is True


def test_bench_recall_short(tmp_path):
    out = tmp_path / "recall"
    assert main(["bench", "recall", "--episodes", "1", "--steps", "60", "--budgets", "0.25",
                 "--threads", "1", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "recall_summary.csv")))
    kept = {(r["policy"], r["kind"]): float(r["fact_kept"]) for r in rows}
    # the behaviour the gate promises, at 25% of the episode's tokens:
    assert kept[("action_gate", "instruction")] == 1.0  # the instruction is pinned
    assert kept[("sliding_window", "instruction")] == 0.0  # a window forgets it
    assert kept[("action_gate", "event")] >= kept[("sliding_window", "event")]
    assert (out / "recall_table.md").read_text().count("|") > 20
