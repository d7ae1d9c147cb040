"""Chunk execution at the seam (PolicyBase, the embedded default on transformers): one memory step per
inference, and the gate scoring a chunk's step by the actions the robot was sent from it."""
from __future__ import annotations

import numpy as np
import pytest

from aura_ros.core import arm
from aura_ros.core.config import PolicyConfig
from aura_ros.core.registry import make_policy
from aura_ros.core.types import Observation

H = 4


@pytest.fixture(scope="module")
def policy():
    return make_policy(None, PolicyConfig(chunk=H, budget_bytes=1 << 20), instruction="put the block in the bin",
                       n_threads=1)


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)


def kept(policy) -> dict[int, tuple[float, bool]]:
    return {s: (g, w) for s, g, w, _ in policy.memory_map()}


def steady(n: int) -> np.ndarray:
    mid = (np.asarray(arm.LOW) + np.asarray(arm.HIGH)) / 2
    return np.repeat(mid[None], n, axis=0)


def test_each_inference_is_one_memory_step_scored_later_by_its_executed_actions(policy):
    policy.reset()
    state = np.array([0.0, 0.1, 0.2, 0.0])
    first = policy.step(Observation(frame(0), state, executed=np.empty((0, 4))))
    assert first.positions.shape == (H, 4)  # the whole chunk comes back
    step0 = first.step
    # Nothing was sent from it yet: the step waits in memory, unscored.
    assert kept(policy)[step0] == (1.0, False)
    assert (first.gate.value, first.gate.written) == (0.0, False)

    a1 = policy.step(Observation(frame(1), state, executed=steady(3)))
    assert a1.step == step0 + 1
    # The first step the gate ever scores is an event: step 0 is written now, reported with step 1.
    assert kept(policy)[step0][1] and a1.gate.written
    a2 = policy.step(Observation(frame(2), state, executed=steady(3)))
    assert not kept(policy)[a1.step][1] and not a2.gate.written  # steady actions: transient
    # The arm was sent a turn while step 2's chunk ran: step 2 is written (its observation is kept).
    turned = steady(3)
    turned[1:, 0] = arm.HIGH[0]
    a3 = policy.step(Observation(frame(3), state, executed=turned))
    assert kept(policy)[a2.step][1] and a3.gate.written
    # One memory step per inference: four steps, four entries, whatever was executed between them.
    assert sorted(s for s in kept(policy) if s >= step0) == [step0, step0 + 1, step0 + 2, step0 + 3]


def test_a_step_whose_chunk_sent_nothing_is_scored_by_its_first_action(policy):
    policy.reset()
    state = np.array([0.0, 0.1, 0.2, 0.0])
    a0 = policy.step(Observation(frame(4), state, executed=np.empty((0, 4))))
    a1 = policy.step(Observation(frame(5), state, executed=np.empty((0, 4))))
    # The gate ran on step 0 (its first decision is always a write) although nothing was executed.
    assert a1.gate.written and kept(policy)[a0.step][1]


def test_without_executed_every_step_is_scored_at_once_as_before(policy):
    policy.reset()
    a = policy.step(Observation(frame(6), np.array([0.0, 0.1, 0.2, 0.0])))
    assert kept(policy)[a.step] == (a.gate.value, a.gate.written)
