"""The benchmarks end to end in their short forms: files written, invariants hold.

Timings are never asserted here (CI machines vary); the long runs are in docs/benchmarks.md.
"""
from __future__ import annotations

import csv
import json

import pytest

from aura_ros.bench.recall import run_recall
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
    assert main(["bench", "recall", "--episodes", "1", "--steps", "60", "--budgets", "0.25", "--threads", "1",
                 "--policies", "full,sliding_window,streaming_llm,h2o,action_gate,perfect_gate",
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "recall_summary.csv")))
    kept = {(r["policy"], r["kind"]): float(r["fact_kept"]) for r in rows}
    # the behaviour the gate promises, at 25% of the episode's tokens:
    assert kept[("action_gate", "instruction")] == 1.0  # the instruction is pinned
    assert kept[("sliding_window", "instruction")] == 0.0  # a window forgets it
    assert kept[("action_gate", "event")] >= kept[("sliding_window", "event")]
    assert (out / "recall_table.md").read_text().count("|") > 20
    # the perfect gate writes exactly the event steps; the oracle came along with the gate
    runs = {r["policy"]: r for r in json.loads((out / "recall_runs.json").read_text())}
    assert runs["perfect_gate"]["write_rate"] == runs["perfect_gate"]["event_rate"] > 0
    assert runs["perfect_gate"]["events_written"] == 1.0 and "oracle" in runs
    with pytest.raises(ValueError, match="perfect_gate"):
        run_recall(None, None, policies=("action_gate", "perfect_gates"))


def test_recall_kept_only_makes_the_model_runs_choices(capsys):
    """--kept-only claims the cache keeps the same steps without the model: checked against the
    model run on the same episode, for the gate, a perfect gate and a window, at two budgets."""
    import torch
    from transformers import AutoTokenizer

    from aura_ros.backends.transformers.smollm import ensure_smollm2_decoder, load_smollm2_decoder
    from aura_ros.bench.episodes import make_episode
    from aura_ros.bench.recall import Reader

    torch.set_num_threads(1)
    model, tok = load_smollm2_decoder()
    full, bare = Reader(model, tok), Reader(None, AutoTokenizer.from_pretrained(ensure_smollm2_decoder()))
    ep = make_episode(3, steps=60, events=4, controls=2, variant="momentary")
    for frac in (0.1, 0.25):
        budget = max(int(full.episode_tokens(ep) * frac), 48)
        assert bare.episode_tokens(ep) == full.episode_tokens(ep)
        for policy in ("action_gate", "perfect_gate", "sliding_window"):
            a, wa = full.run(ep, policy, budget, 0)
            b, wb = bare.run(ep, policy, budget, 0)
            assert wa == wb and [k for *_, k in a] == [k for *_, k in b], (frac, policy)
    assert main(["bench", "recall", "--kept-only", "--variants", "momentary", "--episodes", "2", "--steps", "60",
                 "--events", "4", "--budgets", "0.1,0.25"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| momentary")]
    assert len(rows) == 2
    for r in rows:
        cols = r.split("|")
        gate, perfect, oracle = (float(x) for x in cols[4:7])
        bound_reading, bound_oracle = float(cols[8]), float(cols[9])
        assert 0.0 <= gate <= 1.0 and perfect <= oracle  # the oracle holds no steady step at all
        # no cache that reads the stream keeps more than fits beside the step it reads
        assert gate <= bound_reading and perfect <= bound_reading and oracle <= bound_oracle


def test_reading_bound_counts_the_steps_being_read():
    """The bound on what any reading cache can keep, on a hand-made episode: two event lines, then a
    long steady line. With room for the instruction, both events and that line, both can be kept
    (and the perfect gate keeps both); one token less and the long line, read after both, forces
    one out, while the oracle (which never reads a steady line) still holds both."""
    import numpy as np
    from transformers import AutoTokenizer

    from aura_ros.backends.transformers.smollm import ensure_smollm2_decoder
    from aura_ros.bench.episodes import Episode, Question
    from aura_ros.bench.recall import Reader, reading_bound

    reader = Reader(None, AutoTokenizer.from_pretrained(ensure_smollm2_decoder()))
    lines = ["step 0: move on.", "step 1: pinch the red cup.", "step 2: move on.", "step 3: stop at the blue box.",
             "step 4: move on, pass the green book on the left side of the long corridor.", "step 5: move on."]
    actions = np.array([[0.5, 0, 0], [0.5, 0, 1], [0.5, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 1]], dtype=float)
    questions = [Question("event", "step 1: pinch the", (" red cup", " blue box"), 0, 1),
                 Question("event", "step 3: stop at the", (" red cup", " blue box"), 1, 3)]
    ep = Episode("Instruction: tidy up.", lines, actions, questions, event_steps=[1, 3])
    n = lambda text: reader.ids(text).shape[1]  # noqa: E731
    enough = n(ep.instruction) + n("\n" + lines[1]) + n("\n" + lines[3]) + n("\n" + lines[4])
    assert reading_bound(reader, ep, enough) == (1.0, 1.0)
    assert reading_bound(reader, ep, enough - 1) == (0.5, 1.0)

    def kept(policy: str, budget: int) -> list[bool]:
        return [k for q, *_, k in reader.run(ep, policy, budget, 0)[0] if q.kind == "event"]

    assert kept("perfect_gate", enough) == [True, True]  # the bound is reached when it can be
    assert sum(kept("perfect_gate", enough - 1)) == 1 and kept("oracle", enough - 1) == [True, True]
