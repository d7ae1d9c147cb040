"""What every backend's short `aura-ros bench scaling` must show (behaviour only, no timing)."""
from __future__ import annotations

import csv

from aura_ros.tools.cli import main

POLICIES = ("physical_limit", "action_gate")
BUDGETS = ("0.0625", "0.125")


def run_and_check(out, bytes_per_token: int, *extra: str) -> list[dict]:
    """Run the bench at two small budgets; check files, one allocation per run, evictions at
    capacity, and a physical-limit reference that never evicts. Returns the rows."""
    assert main(["bench", "scaling", "--budgets-mb", ",".join(BUDGETS), "--policies", ",".join(POLICIES),
                 "--min-steps", "12", "--max-steps", "12", "--block-fraction", "0.1", "--out", str(out),
                 *extra]) == 0
    rows = list(csv.DictReader(open(out / "scaling.csv")))
    assert {(r["policy"], r["budget_mb"]) for r in rows} == {(p, b) for p in POLICIES for b in BUDGETS}
    for r in rows:
        assert r["allocated_bytes_first"] == r["allocated_bytes_last"]  # allocated once, before timing
        assert float(r["mean_ms"]) > 0 and int(r["steps"]) == 12
        assert int(r["capacity_tokens"]) == float(r["budget_mb"]) * 2**20 // bytes_per_token
        if r["policy"] == "physical_limit":  # a full cache with room for the step: it never evicts
            assert int(r["evictions"]) == 0 and r["period_steps"] == "inf"
        else:  # the budget is hard: full, it evicts, at most once a step
            assert int(r["allocated_bytes_last"]) <= float(r["budget_mb"]) * 2**20
            assert int(r["evictions"]) > 0 and float(r["period_steps"]) >= 1.0
    assert float(next(r for r in rows if r["policy"] == "physical_limit")["overhead"]) == 0.0
    assert (out / "scaling.png").stat().st_size > 0 and "physical limit" in (out / "scaling_table.md").read_text()
    return rows
