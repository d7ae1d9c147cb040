"""`aura-ros bench tasks` in its short form, on the real memory tasks: files, columns, invariants.

Behaviour only: no timing and no success threshold of the trained policy is asserted (those are
measured and reported in docs/benchmarks.md).
"""
from __future__ import annotations

import csv
import json

import pytest

from aura_ros.bench.tasks import EXPERT, wilson
from aura_ros.tools.cli import main

EPISODE_COLUMNS = {"task", "policy", "distractors", "episode", "seed", "success", "n_choices", "steps", "cue_step",
                   "recall_start_step", "cue_kept", "writes", "write_rate", "allocated_bytes_min",
                   "allocated_bytes_max", "used_bytes_max", "kept_steps_at_recall", "seconds"}
SUMMARY_COLUMNS = {"task", "policy", "distractors", "n", "successes", "success", "ci_low", "ci_high", "chance",
                   "write_rate", "allocated_bytes", "allocated_constant", "cue_kept", "note"}


def _longest(d: int, episodes: int = 2) -> int:
    from aura_ros.sim.tasks import make_task

    return max(make_task("cue_recall", seed, d).total_steps for seed in range(episodes))


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_tasks")
    cap = _longest(2)  # the unbounded cache runs the D = 2 episodes and not the D = 12 ones
    assert cap < _longest(12)
    assert main(["bench", "tasks", "--tasks", "cue_recall", "--policies", "sliding_window,action_gate,unbounded",
                 "--distractors", "2,12", "--episodes", "2", "--budget-tokens", "400", "--unbounded-cap", str(cap),
                 "--no-progress", "--out", str(out)]) == 0
    return out


def test_outputs_and_columns(short_run):
    for name in ("tasks_episodes.csv", "tasks_success.csv", "tasks_table.md", "tasks_success.png",
                 "tasks_summary.json"):
        assert (short_run / name).stat().st_size > 0, name
    episodes = list(csv.DictReader(open(short_run / "tasks_episodes.csv")))
    assert set(episodes[0]) == EPISODE_COLUMNS
    summary = list(csv.DictReader(open(short_run / "tasks_success.csv")))
    assert set(summary[0]) == SUMMARY_COLUMNS
    ran = {(r["policy"], int(r["distractors"])) for r in episodes}
    assert ran == {(p, d) for p in (EXPERT, "sliding_window", "action_gate") for d in (2, 12)} | {("unbounded", 2)}
    # the unbounded reference stops at its stated cap: the long episodes are a skipped row with the reason
    skipped = [r for r in summary if r["policy"] == "unbounded" and r["distractors"] == "12"]
    assert skipped and skipped[0]["n"] == "0" and "cap" in skipped[0]["note"]
    table = (short_run / "tasks_table.md").read_text()
    assert table.index("expert") < table.index("| task |")  # the reference block comes first
    assert "chance 0.33" in table
    meta = json.loads((short_run / "tasks_summary.json").read_text())["meta"]
    assert meta["budget_tokens"] == 400 and meta["budget_bytes"] == 400 * meta["bytes_per_token"]


def test_expert_succeeds_and_budget_is_allocated_once(short_run):
    episodes = list(csv.DictReader(open(short_run / "tasks_episodes.csv")))
    assert all(r["success"] == "True" for r in episodes if r["policy"] == EXPERT)
    budget = json.loads((short_run / "tasks_summary.json").read_text())["meta"]["budget_bytes"]
    for pol in ("sliding_window", "action_gate"):
        alloc = {int(r[k]) for r in episodes if r["policy"] == pol
                 for k in ("allocated_bytes_min", "allocated_bytes_max")}
        assert len(alloc) == 1 and alloc.pop() <= budget, pol  # one allocation, at the budget, for every episode
    summary = list(csv.DictReader(open(short_run / "tasks_success.csv")))
    for r in summary:
        if r["policy"] in ("sliding_window", "action_gate"):
            assert r["allocated_constant"] == "True"
        if int(r["n"]):
            assert float(r["ci_low"]) <= float(r["success"]) <= float(r["ci_high"])
            assert abs(float(r["chance"]) - 1 / 3) < 1e-9


def test_cue_kept_is_measured_from_the_cache(short_run):
    episodes = list(csv.DictReader(open(short_run / "tasks_episodes.csv")))
    for r in episodes:
        if r["policy"] == EXPERT:
            assert r["cue_kept"] == "-1"
        else:
            assert r["cue_kept"] in ("0", "1") and int(r["kept_steps_at_recall"]) > 0
    # with 2 distractor steps every policy (and the unbounded cache always) still holds the cue step
    assert all(r["cue_kept"] == "1" for r in episodes if r["policy"] == "unbounded")
    assert all(r["cue_kept"] == "1" for r in episodes if r["policy"] != EXPERT and r["distractors"] == "2")


def test_wilson_interval():
    lo, hi = wilson(0, 20)
    assert lo == 0.0 and 0.15 < hi < 0.17
    lo, hi = wilson(20, 20)
    assert 0.83 < lo < 0.85 and hi == 1.0
    lo, hi = wilson(10, 20)
    assert lo < 0.5 < hi and abs((0.5 - lo) - (hi - 0.5)) < 1e-9


def test_unknown_policy_and_bad_episode_counts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown memory policy"):
        main(["bench", "tasks", "--policies", "lru", "--episodes", "1", "--distractors", "2", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="one per distractor length"):
        main(["bench", "tasks", "--episodes", "1,2", "--distractors", "2,4,8", "--out", str(tmp_path)])


def test_runs_made_in_parallel_merge_into_one_set_of_outputs(short_run, tmp_path):
    other = tmp_path / "latent"
    assert main(["bench", "tasks", "--tasks", "latent_fact", "--policies", "sliding_window", "--distractors", "2",
                 "--episodes", "1", "--budget-tokens", "400", "--unbounded-cap", str(_longest(2)), "--no-progress",
                 "--out", str(other)]) == 0
    merged = tmp_path / "merged"
    assert main(["bench", "tasks", "--merge", f"{short_run},{other}", "--out", str(merged)]) == 0
    rows = list(csv.DictReader(open(merged / "tasks_success.csv")))
    assert {r["task"] for r in rows} == {"cue_recall", "latent_fact"}
    assert any(r["policy"] == "unbounded" and r["n"] == "0" and "cap" in r["note"] for r in rows)  # skipped kept
    episodes = list(csv.DictReader(open(merged / "tasks_episodes.csv")))
    assert len(episodes) == len(list(csv.DictReader(open(short_run / "tasks_episodes.csv")))) + 2
    assert (merged / "tasks_success.png").stat().st_size > 0

