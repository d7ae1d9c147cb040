"""The policy node on the MLX backend (model.backend mlx, the embedded default), over real DDS.

The node and the sim run in their own processes; this process observes ~/memory and ~/gate_stats
and calls the snapshot services: the KV bytes stay those of the budget, positions below the
capacity, and a snapshot written by the node is read back by it.
"""
from __future__ import annotations

from helpers.mlx_backend import require_mlx
from helpers.observer import RUN_MODULE, ros_args, spin_until, trigger

require_mlx()

from aura_ros.memory import snapshot as snapshot_format  # noqa: E402
from aura_ros.msg import GateStats, MemoryBudget  # noqa: E402
from aura_ros.ros import qos  # noqa: E402

NODE = "aura_ros.ros.policy_node"
SIM = "aura_ros.ros.sim_node"
TOKENS = 256
BYTES_PER_TOKEN = 2 * 2 * 2 * 16 * 4  # layers x (K, V) x KV heads x head dim x float32


def test_node_runs_the_default_on_mlx_and_round_trips_a_snapshot(run_python, observer, tmp_path):
    snap = tmp_path / "mlx.snap"
    params = {"model.backend": "mlx", "memory.vram_budget_mb": TOKENS * BYTES_PER_TOKEN / 2**20,
              "control.rate_hz": 10.0, "memory.snapshot_path": str(snap), "memory.snapshot_on_shutdown": False,
              "memory.load_on_start": False, "instruction": "pick up the red block and put it in the bin"}
    mems: list[MemoryBudget] = []
    gates: list[GateStats] = []
    observer.create_subscription(MemoryBudget, "/aura_policy/memory", mems.append, qos.STATS)
    observer.create_subscription(GateStats, "/aura_policy/gate_stats", gates.append, qos.STATS)
    with run_python.spawn(RUN_MODULE, SIM, *ros_args({"rate_hz": 10.0}), name="sim"), \
            run_python.spawn(RUN_MODULE, NODE, *ros_args(params), name="policy") as policy:
        # ~40 tokens a step: past the 256-token budget after ~5 steps.
        ok = spin_until(observer, lambda: len(gates) >= 15 and gates[-1].evictions_total > 0 and mems, 120)
        assert ok, f"{len(gates)} gate stats; node output:\n{policy.output()}"
        assert all(g.max_position < TOKENS for g in gates)
        assert {m.allocated_bytes for m in mems} == {TOKENS * BYTES_PER_TOKEN}
        assert all(m.capacity_tokens == TOKENS and m.used_tokens <= TOKENS and m.pinned_tokens > 0 for m in mems)
        saved = trigger(observer, "/aura_policy/save_memory")
        assert saved.success, saved.message
        assert snapshot_format.exists(snap)
        loaded = trigger(observer, "/aura_policy/load_memory")
        assert loaded.success, f"{loaded.message}\n{policy.output()}"
        n = len(mems)
        assert spin_until(observer, lambda: len(mems) > n + 3, 30), policy.output()
        assert mems[-1].allocated_bytes == TOKENS * BYTES_PER_TOKEN
