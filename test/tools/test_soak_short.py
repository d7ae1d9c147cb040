"""The soak command in its short form: node + sim over DDS, invariants checked on every message."""
from __future__ import annotations

import json

from aura_ros.tools.cli import main


def test_soak_short(tmp_path):
    out = tmp_path / "soak"
    assert main(["soak", "--steps", "300", "--budget-mb", "0.25", "--rate-hz", "30.0", "--trace-steps", "100",
                 "--out", str(out)]) == 0
    rep = json.loads((out / "soak.json").read_text())
    assert rep["violations"] == [] and rep["steps"] >= 300
    assert rep["evictions_total"] > 0  # the budget was hit, and held
    assert rep["exit_codes"] == {"policy_node": 0, "sim_node": 0} and not rep["interrupted"]
    assert 0 < rep["max_used_bytes"] <= rep["allocated_bytes"] <= rep["budget_bytes"] == int(0.25 * 2**20)
    assert 0 < rep["max_position"] <= rep["capacity_tokens"]
    assert rep["diagnostic_keys_max"] < 40  # the counters' storage stays bounded
    last = max(rep["checkpoints"], key=int)  # latency and RSS recorded at the end of the run
    assert int(last) >= 299 and rep["checkpoints"][last]["p50_ms"] > 0
    trace = rep["latency_trace"]  # [last step, p50, p99] of every 100 steps
    assert len(trace) >= 2 and all(0 < p50 <= p99 for _, p50, p99 in trace) and trace[0][0] < trace[1][0]


def test_soak_stopped_by_ctrl_c_still_reports(run_python, tmp_path):
    """An hours-long soak stopped by hand (SIGINT, as a terminal's Ctrl-C) writes the report of the
    steps it ran, marked interrupted, stops its nodes and exits 130."""
    import re
    import time

    out = tmp_path / "soak"
    code = "import sys; from aura_ros.tools.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**run_python.env, "PYTHONUNBUFFERED": "1"}
    with run_python.spawn(code, "soak", "--hours", "1", "--budget-mb", "0.25", "--rate-hz", "30.0", "--out", str(out),
                          name="soak", env=env) as soak:
        end = time.monotonic() + 120
        while time.monotonic() < end and soak.alive():
            counts = [int(n) for n in re.findall(r"soak: (\d+) steps", soak.output())]
            if counts and counts[-1] >= 30:
                break
            time.sleep(0.5)
        assert soak.alive(), soak.output()
        assert soak.interrupt(timeout=40) == 130, soak.output()
    rep = json.loads((out / "soak.json").read_text())
    assert rep["interrupted"] and rep["steps"] >= 30 and rep["violations"] == []
    assert rep["allocated_bytes"] == int(0.25 * 2**20) or 0 < rep["allocated_bytes"] <= rep["budget_bytes"]
    assert "interrupted" in soak.output()
    assert rep["exit_codes"] == {"policy_node": 0, "sim_node": 0}  # both nodes stopped cleanly, not orphaned
