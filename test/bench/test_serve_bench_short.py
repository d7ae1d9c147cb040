"""`aura-ros bench serve` in a short form (N = 1, 2; a few steps): the files are written, the
shared run loads the model once for both robots and the separate run once per process, each
robot's KV allocation stays as it was. Behaviour only; no timing is asserted."""
from __future__ import annotations

import csv
import json

import pytest

from aura_ros.bench import serve
from aura_ros.tools.cli import main as cli


@pytest.mark.slow
def test_serve_bench_short(tmp_path):
    out = tmp_path / "serve"
    assert cli(["bench", "serve", "--robots", "1,2", "--steps", "4", "--out", str(out)]) == 0
    summary = json.loads((out / "serve.json").read_text())
    rows = {(r["robots"], r["mode"]): r for r in summary["rows"]}
    assert set(rows) == {(n, m) for n in (1, 2) for m in serve.MODES}
    assert rows[(2, "shared")]["processes"] == 1 and rows[(2, "shared")]["model_loads"] == 1
    assert rows[(2, "separate")]["processes"] == 2 and rows[(2, "separate")]["model_loads"] == 2
    for r in rows.values():
        assert len(r["p50_ms"]) == len(r["p99_ms"]) == len(r["kv_first"]) == r["robots"]
        assert r["aggregate_steps_per_s"] > 0 and r["rss_mib"] > 0
        assert r["kv_first"] == r["kv_last"] and set(r["kv_changes"]) == {0}
        assert 0 < r["kv_first"][0] <= 0.5 * 2**20  # the default budget
    lines = list(csv.DictReader(open(out / "serve.csv")))
    assert len(lines) == 1 + 1 + 2 + 2  # one line a robot a run
    assert "| 2 | shared | 1 | 1 |" in (out / "serve_table.md").read_text()


def test_bad_robot_counts_are_refused(capsys):
    assert cli(["bench", "serve", "--robots", "0,2"]) == 2
    assert cli(["bench", "serve", "--modes", "shared,batched"]) == 2
    assert "--robots is a list of counts" in capsys.readouterr().out
