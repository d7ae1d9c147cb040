"""Every backend x every eviction policy honours the Policy seam (kvpress's registry-driven tests
are the model: a new backend or policy is a registry line, and it is tested here at once)."""
from __future__ import annotations

import numpy as np
import pytest

from aura_ros.core.config import PolicyConfig
from aura_ros.core.protocol import Policy
from aura_ros.core.registry import BACKENDS, SMALL_BUDGET_BYTES, backend_fact, make_policy, unsupported
from aura_ros.core.types import Action, Observation
from aura_ros.memory import POLICIES, BudgetError
from aura_ros.memory.snapshot import exists

PROTECTS_INSTRUCTION = {"action_gate"}


def frame(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)


def state(i: int) -> np.ndarray:
    return np.array([np.sin(i / 3), 0.1, -0.2, float(i % 10 < 5)])


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("eviction", sorted(POLICIES))
def test_policy_seam(backend, eviction, tmp_path):
    # A budget of a few steps of the backend's embedded default, so every policy evicts.
    budget = backend_fact(backend, "SMALL_BUDGET_BYTES", SMALL_BUDGET_BYTES)
    config = PolicyConfig(budget_bytes=budget, recent_steps=2, eviction=eviction)
    for module in backend_fact(backend, "REQUIRES", ()):  # an opt-in backend's runtime: skip without it
        if module == "llama_cpp":
            from helpers.llama_backend import require_llama_cpp

            require_llama_cpp()  # a failure, not a skip, where CI built it
        elif module in ("mlx", "mlx_lm"):
            from helpers.mlx_backend import require_mlx

            require_mlx()  # a failure, not a skip, where CI installed it
        else:
            pytest.importorskip(module)
    refused = unsupported(None, [eviction], {}, backend=backend).get(eviction)
    if refused and eviction == "h2o":  # no attention weights (llama.cpp, MLX): refused by name, not faked
        with pytest.raises(ValueError, match="attention"):
            make_policy(None, config, backend=backend, instruction="stack the cubes")
        return
    policy = make_policy(None, config, backend=backend, instruction="stack the cubes")
    assert isinstance(policy, Policy)
    first = None
    for t in range(30):
        a = policy.step(Observation(frame(t), state(t)))
        assert isinstance(a, Action) and a.step == t and a.first.shape == (4,)
        st = a.stats
        first = first or st.allocated_bytes
        assert st.allocated_bytes == first <= st.budget_bytes == budget
        assert st.used_bytes <= st.allocated_bytes
        assert st.max_position < st.capacity_tokens + 64
    assert st.evictions_total > 0  # the budget was exceeded many times over
    mm = policy.memory_map()
    assert [s for s, *_ in mm] == policy.stats().kept_steps and mm[-1][0] == 29
    if eviction in PROTECTS_INSTRUCTION:
        assert policy.stats().pinned_tokens > 0
    # live changes between steps
    policy.set_options(recent_steps=1)
    assert policy.budget_error(1024) and "one step" in policy.budget_error(1024)
    with pytest.raises(BudgetError):
        policy.set_budget(1024)
    policy.set_budget(2 * budget)
    assert policy.step(Observation(frame(30), state(30))).stats.allocated_bytes > first
    # snapshots round-trip
    path = policy.save_memory(tmp_path / "mem")
    # One naming for every backend: what the node's resume at start asks is the same question.
    assert path and exists(tmp_path / "mem") and not exists(tmp_path / "other")
    before = (policy.stats().kept_steps, policy.step_index)
    policy.reset()
    assert policy.stats().kept_steps == []
    policy.load_memory(tmp_path / "mem")
    assert (policy.stats().kept_steps, policy.step_index) == before
