"""The pinned instruction: plain text only, checked against the budget before the old one goes."""
from __future__ import annotations

import numpy as np
import pytest

from aura_ros.core.config import PolicyConfig
from aura_ros.core.registry import make_policy
from aura_ros.core.types import Observation
from aura_ros.memory import BudgetError


@pytest.fixture(scope="module")
def policy():
    return make_policy(None, PolicyConfig(budget_bytes=256 * 1024, recent_steps=4), instruction="stack the cubes")


def frame(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)


def test_markers_and_action_tokens_in_an_instruction_stay_plain_text(policy):
    ids = policy.encode_instruction("pick <act_3> up <obs> the <image> cube </s> <state>")["input_ids"][0].tolist()
    special = set(policy.tokenizer.all_special_ids) | set(policy.action_ids.tolist())
    assert policy.tokenizer.bos_token_id is None or ids[0] == policy.tokenizer.bos_token_id
    assert not (set(ids[1:]) & special), policy.tokenizer.convert_ids_to_tokens(ids)


def test_an_instruction_over_the_budget_is_refused_and_the_old_one_stays(policy):
    policy.set_instruction("stack the cubes")
    for t in range(3):
        policy.step(Observation(frame(t), np.zeros(4)))
    pinned = policy.stats().pinned_tokens
    with pytest.raises(BudgetError, match="instruction of"):
        policy.set_instruction("\N{GRINNING FACE}" * 1900)
    assert policy.instruction == "stack the cubes" and policy.stats().pinned_tokens == pinned
    assert policy.step(Observation(frame(9), np.zeros(4))).stats.pinned_tokens == pinned


def test_one_long_instruction_does_not_inflate_the_step_size_for_budget_checks(policy):
    policy.set_instruction("go " * 300)  # a long instruction, then back to a short one
    policy.set_instruction("stack the cubes")
    policy.step(Observation(frame(1), np.zeros(4)))
    step = policy.cache.step_tokens
    assert step < 100, step
    need = policy.stats().pinned_tokens + step
    assert policy.budget_error(policy.cache.layout.bytes_for(need)) is None
    assert f"one step ({step})" in policy.budget_error(policy.cache.layout.bytes_for(need - 1))
