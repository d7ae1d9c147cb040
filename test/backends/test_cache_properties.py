"""Property test: random steps, budget changes, resets and instruction changes never break the
cache's invariants. The cache is driven through its transformers contract (update per layer)
with random key/value states, so thousands of operations run in seconds."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig

from aura_ros.backends.transformers.cache import GatedKVCache
from aura_ros.backends.transformers.rope import RopeRotator
from aura_ros.memory import ActionGate, BudgetError, Kind, KVLayout, action_gated, h2o, sliding_window, streaming_llm

CONFIG = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)
LAYOUT = KVLayout.from_config(CONFIG)
ROTATOR = RopeRotator([1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))] * 2)
POLICIES = {"action_gate": action_gated, "sliding_window": sliding_window,
            "streaming_llm": streaming_llm, "h2o": h2o}


def write(cache: GatedKVCache, n: int, kind, step: int) -> None:
    cache.reserve(n)
    for li in range(LAYOUT.num_layers):
        cache.update(torch.randn(1, 2, n, 8), torch.randn(1, 2, n, 8), li)
    cache.commit(kind, step)


def check(cache: GatedKVCache, step_tokens: int, pinned_ids: set[int]) -> None:
    st_ = cache.stats()
    assert cache.allocated_bytes == LAYOUT.bytes_for(cache.capacity) <= cache.budget_bytes
    assert st_.used_bytes <= cache.allocated_bytes
    # segments tile the used slots in order, with contiguous positions
    slot = pos = 0
    for seg in cache.table.segments:
        assert seg.start == slot and seg.pos_start == pos and seg.length > 0
        slot, pos = seg.end, pos + seg.pos_span
    assert slot == cache.used_tokens
    assert st_.max_position < cache.capacity + step_tokens
    if cache.policy.protect_pinned:
        assert {id(s) for s in cache.table.segments if s.kind is Kind.PINNED} == pinned_ids
    assert len(cache.table) <= cache.capacity
    assert cache.attention.numel() == cache.capacity


op = st.one_of(
    st.tuples(st.just("step"), st.integers(1, 12), st.floats(0, 1)),
    st.tuples(st.just("budget"), st.integers(0, 300), st.just(0.0)),
    st.tuples(st.just("reset"), st.just(0), st.just(0.0)),
    st.tuples(st.just("instruction"), st.integers(1, 20), st.just(0.0)),
)


@settings(max_examples=100, deadline=None)
@given(policy=st.sampled_from(sorted(POLICIES)), ops=st.lists(op, min_size=1, max_size=60),
       capacity=st.integers(30, 200), recent=st.integers(0, 6))
def test_random_operations_keep_invariants(policy, ops, capacity, recent):
    cache = GatedKVCache(CONFIG, LAYOUT.bytes_for(capacity), ROTATOR, policy=POLICIES[policy](),
                         recent_steps=recent)
    gate = ActionGate(low=np.zeros(1), high=np.ones(1))
    write(cache, 8, Kind.PINNED, -1)
    pinned = {id(s) for s in cache.table.segments if s.kind is Kind.PINNED}
    step, max_step_tokens = 0, 8
    for name, n, value in ops:
        if name == "step":
            room = cache.capacity - cache.table.protected_tokens(cache.policy.protect_pinned)
            if n > room:
                # A step larger than any seen can exceed what a budget accepted for the steps seen so
                # far (the step size is measured, not guessed): refused with the numbers, nothing written.
                before = (cache.used_tokens, len(cache.table))
                with pytest.raises(BudgetError, match="raise the budget"):
                    cache.reserve(n)
                assert (cache.used_tokens, len(cache.table)) == before
                continue
            max_step_tokens = max(max_step_tokens, n)
            write(cache, n, Kind.OBSERVATION, step)
            d = gate.update(np.array([value]))
            cache.set_gate(step, d.value, d.written)
            step += 1
        elif name == "budget":
            budget = LAYOUT.bytes_for(n) + 7
            try:
                cache.set_budget(budget)
            except BudgetError:
                assert n < cache.pinned_tokens + cache.step_tokens  # the rule for every policy
            else:
                assert cache.budget_bytes == budget and cache.capacity == n
        elif name == "reset":
            cache.clear_memory(keep_pinned=True)
            assert cache.table.kept_steps() == []
        elif name == "instruction":
            cache.drop_pinned()
            try:
                write(cache, n, Kind.PINNED, -1)
            except BudgetError:
                write(cache, 1, Kind.PINNED, -1)
            pinned = {id(s) for s in cache.table.segments if s.kind is Kind.PINNED}
        check(cache, max_step_tokens, pinned)
