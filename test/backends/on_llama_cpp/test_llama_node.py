"""The policy node on the SmolLM2 GGUF (llama.cpp backend, chosen by the .gguf path), over real DDS.

The node and the sim run in their own processes; this process observes ~/memory and ~/gate_stats
and calls the snapshot services: the KV bytes stay those of the context, and a snapshot written
by the node is read back by it.
"""
from __future__ import annotations

from helpers.llama_backend import require_llama_cpp
from helpers.observer import RUN_MODULE, ros_args, spin_until, trigger

require_llama_cpp()

from aura_ros.backends.llama_cpp.policy import default_gguf  # noqa: E402
from aura_ros.memory import snapshot as snapshot_format  # noqa: E402
from aura_ros.msg import GateStats, MemoryBudget  # noqa: E402
from aura_ros.ros import qos  # noqa: E402

NODE = "aura_ros.ros.policy_node"
SIM = "aura_ros.ros.sim_node"
TOKENS = 512
BYTES_PER_TOKEN = 23040  # SmolLM2-135M: 30 layers x 3 KV heads x (64 + 64) x 2 bytes (f16)


def test_node_runs_the_gguf_model_and_round_trips_a_snapshot(run_python, observer, tmp_path):
    snap = tmp_path / "llama.snap"
    params = {"model.path": str(default_gguf()), "memory.vram_budget_mb": TOKENS * BYTES_PER_TOKEN / 2**20,
              "control.rate_hz": 10.0, "memory.snapshot_path": str(snap), "memory.snapshot_on_shutdown": False,
              "memory.load_on_start": False, "instruction": "stack the red cube on the blue one"}
    mems: list[MemoryBudget] = []
    gates: list[GateStats] = []
    observer.create_subscription(MemoryBudget, "/aura_policy/memory", mems.append, qos.STATS)
    observer.create_subscription(GateStats, "/aura_policy/gate_stats", gates.append, qos.STATS)
    with run_python.spawn(RUN_MODULE, SIM, *ros_args({"rate_hz": 10.0}), name="sim"), \
            run_python.spawn(RUN_MODULE, NODE, *ros_args(params), name="policy") as policy:
        # ~35 tokens a step: past the 512-token context after ~15 steps.
        ok = spin_until(observer, lambda: len(gates) >= 25 and gates[-1].evictions_total > 0 and mems, 120)
        assert ok, f"{len(gates)} gate stats; node output:\n{policy.output()}"
        assert all(g.max_position < TOKENS for g in gates)
        assert {m.allocated_bytes for m in mems} == {TOKENS * BYTES_PER_TOKEN}
        assert all(m.capacity_tokens == TOKENS and m.used_tokens <= TOKENS and m.pinned_tokens > 0 for m in mems)
        saved = trigger(observer, "/aura_policy/save_memory")
        assert saved.success, saved.message
        assert snapshot_format.exists(snap) and snapshot_format.meta_path(snap).is_file()
        loaded = trigger(observer, "/aura_policy/load_memory")
        assert loaded.success, f"{loaded.message}\n{policy.output()}"
        n = len(mems)
        assert spin_until(observer, lambda: len(mems) > n + 3, 30), policy.output()
        assert mems[-1].allocated_bytes == TOKENS * BYTES_PER_TOKEN


def test_node_runs_the_exported_policy_with_frames_through_libmtmd(run_python, observer, tmp_path):
    """`aura-ros export-gguf`'s pair in the node: model.path selects llama.cpp, model.mmproj the frames."""
    from aura_ros.tools.cli import main

    assert main(["export-gguf", "--out", str(tmp_path)]) == 0
    tokens, bytes_per_token = 256, 2 * 2 * 2 * 16 * 2  # layers x (K, V) x KV heads x head dim x f16
    params = {"model.path": str(tmp_path / "model.gguf"), "model.mmproj": str(tmp_path / "mmproj.gguf"),
              "memory.vram_budget_mb": tokens * bytes_per_token / 2**20, "control.rate_hz": 10.0,
              "memory.snapshot_on_shutdown": False, "memory.load_on_start": False,
              "instruction": "pick up the red block and put it in the bin"}
    mems: dict[int, MemoryBudget] = {}
    gates: list[GateStats] = []
    observer.create_subscription(MemoryBudget, "/aura_policy/memory", lambda m: mems.__setitem__(m.step, m),
                                 qos.STATS)
    observer.create_subscription(GateStats, "/aura_policy/gate_stats", gates.append, qos.STATS)
    with run_python.spawn(RUN_MODULE, SIM, *ros_args({"rate_hz": 10.0}), name="sim"), \
            run_python.spawn(RUN_MODULE, NODE, *ros_args(params), name="policy") as policy:
        ok = spin_until(observer, lambda: len(gates) >= 15 and gates[-1].evictions_total > 0, 120)
        assert ok, f"{len(gates)} gate stats; node output:\n{policy.output()}"
    assert all(g.max_position < tokens for g in gates)
    assert {m.allocated_bytes for m in mems.values()} == {tokens * bytes_per_token}
    # A step is its joint-state text and action (~23 tokens) plus the frame's 16 image tokens: with
    # the frame dropped it would be ~23.
    per_step = [(mems[g.step].used_tokens - mems[g.step].pinned_tokens) / g.steps_kept
                for g in gates if g.step in mems and g.steps_kept]
    assert per_step and min(per_step) > 35, per_step


def test_node_resumes_at_start_from_its_final_snapshot(run_python, observer, tmp_path):
    """The node resumes a llama.cpp policy at start from its final snapshot: the backend writes the
    shared format (<path>.json and its payload), the one ``memory.snapshot.exists`` finds."""
    snap = tmp_path / "llama.snap"
    params = {"model.path": str(default_gguf()), "memory.vram_budget_mb": TOKENS * BYTES_PER_TOKEN / 2**20,
              "control.rate_hz": 10.0, "memory.snapshot_path": str(snap), "instruction": "stack the red cube"}
    gates: list[GateStats] = []
    observer.create_subscription(GateStats, "/aura_policy/gate_stats", gates.append, qos.STATS)
    with run_python.spawn(RUN_MODULE, SIM, *ros_args({"rate_hz": 10.0}), name="sim"):
        with run_python.spawn(RUN_MODULE, NODE, *ros_args(params), name="first") as first:
            assert spin_until(observer, lambda: len(gates) >= 5, 120), first.output()
            assert "no snapshot at" in first.output(), first.output()
            first.assert_ok(first.interrupt(timeout=60))
        assert snapshot_format.exists(snap) and (tmp_path / "llama.snap.json").is_file()
        with run_python.spawn(RUN_MODULE, NODE, *ros_args(params), name="second") as second:
            assert spin_until(observer, lambda: "memory resumed from" in second.output(), 120), second.output()
