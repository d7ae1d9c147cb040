"""Several policies on one loaded model (aura-ros serve): one nn.Module, each policy its own
processor and cache, and each policy's novelty embedding is its own frame's even while the other
policy forwards through the same decoder on another thread."""
from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
import torch

from aura_ros.backends.transformers import loading
from aura_ros.backends.transformers.loading import load_model, share_loaded_models, shared_models
from aura_ros.backends.transformers.policy import PolicyConfig, VLMPolicy
from aura_ros.backends.transformers.vocab import action_token_ids
from aura_ros.core import registry
from aura_ros.core.types import Observation

LOW = (-3.14, -2.5, -3.14, 0.0)
HIGH = (3.14, 2.5, 3.14, 1.0)


@pytest.fixture
def sharing():
    share_loaded_models()
    yield
    share_loaded_models(False)


def policy_on(loaded, **cfg) -> VLMPolicy:
    config = PolicyConfig(low=LOW, high=HIGH, budget_bytes=256 * 1024, **cfg)
    return VLMPolicy(loaded.model, loaded.processor, config, action_token_ids(loaded.tokenizer, config.n_bins),
                     instruction="pick up the red block")


def observation(seed: int) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8), rng.uniform(-1, 1, 4))


def test_the_same_model_is_loaded_once_and_each_caller_gets_its_own_processor(sharing):
    reads = loading._weight_reads[loading.resolve_model(None)[0]]  # other tests of this process count too
    a, b = load_model(None), load_model(None)
    assert a.model is b.model
    assert a.processor is not b.processor and a.tokenizer is not b.tokenizer
    assert [(m.loads, m.users) for m in shared_models()] == [(reads + 1, 2)]
    assert registry.shared_models() == {"transformers": [{"path": a.path, "loads": reads + 1, "users": 2}]}
    assert loading.is_shared(a.model)
    del b  # a holder that goes (a robot's cleanup) no longer counts
    gc.collect()
    assert [m.users for m in shared_models()] == [1]
    share_loaded_models(False)
    assert load_model(None).model is not a.model and shared_models() == []


def test_attention_scoring_eviction_is_refused_on_a_shared_model(sharing):
    loaded = load_model(None)
    with pytest.raises(ValueError, match="shared by the robots of this process"):
        policy_on(loaded, eviction="h2o")
    assert loaded.model.config._attn_implementation == "sdpa"  # the shared model was left as it was


def reference(seeds: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(novelty embedding, action bins) of each step of one policy stepping alone (nothing else forwards)."""
    policy = policy_on(load_model(None))
    out = []
    for seed in seeds:
        action = policy.step(observation(seed))
        out.append((policy.last_observation_embedding.copy(), action.bins.copy()))
    return out


def test_a_policy_keeps_its_own_embedding_while_another_forwards_on_the_shared_decoder(sharing):
    """Forces the interleaving that mixed them up: robot a's observation forward has ended but a
    has not yet read its captured embedding when robot b's observation forward runs the decoder
    (and so every policy's pre-hook on it)."""
    expected_a, expected_b = reference([1]), reference([2])
    a, b = policy_on(load_model(None)), policy_on(load_model(None))
    assert a.model is b.model
    decoder = a.model.get_decoder()
    a_forwarded, b_forwarding = threading.Event(), threading.Event()

    def observation_chunk(kwargs) -> bool:
        embeds = kwargs.get("inputs_embeds")
        return isinstance(embeds, torch.Tensor) and embeds.shape[1] > 1

    def hold_a(module, args, kwargs, output):  # after a's decoder forward, before a reads its capture
        if threading.current_thread().name == "robot-a" and observation_chunk(kwargs) and not a_forwarded.is_set():
            a_forwarded.set()
            assert b_forwarding.wait(60)

    def mark_b(module, args, kwargs):  # registered after the policies' hooks: they have run
        if threading.current_thread().name == "robot-b" and observation_chunk(kwargs):
            b_forwarding.set()

    hooks = [decoder.register_forward_hook(hold_a, with_kwargs=True),
             decoder.register_forward_pre_hook(mark_b, with_kwargs=True)]
    got: dict[str, tuple] = {}

    def run(name, policy, seed):
        action = policy.step(observation(seed))
        got[name] = (policy.last_observation_embedding.copy(), action.bins.copy())

    try:
        ta = threading.Thread(target=run, args=("a", a, 1), name="robot-a")
        ta.start()
        assert a_forwarded.wait(60)
        tb = threading.Thread(target=run, args=("b", b, 2), name="robot-b")
        tb.start()
        ta.join(60)
        tb.join(60)
    finally:
        for h in hooks:
            h.remove()
    assert b_forwarding.is_set()  # the interleaving did happen
    np.testing.assert_allclose(got["a"][0], expected_a[0][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["b"][0], expected_b[0][0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(got["a"][0], got["b"][0])  # the two frames do tell apart


def test_two_policies_stepping_at_once_on_one_model_match_each_stepping_alone(sharing):
    seeds = {"a": list(range(10, 30)), "b": list(range(50, 70))}
    expected = {name: reference(s) for name, s in seeds.items()}
    policies = {name: policy_on(load_model(None)) for name in seeds}
    got: dict[str, list] = {name: [] for name in seeds}
    start = threading.Barrier(2)

    def run(name):
        start.wait()
        for seed in seeds[name]:
            action = policies[name].step(observation(seed))
            got[name].append((policies[name].last_observation_embedding.copy(), action.bins.copy()))

    threads = [threading.Thread(target=run, args=(name,)) for name in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for name in seeds:
        assert len(got[name]) == len(seeds[name])
        for (emb, bins), (want_emb, want_bins) in zip(got[name], expected[name]):
            np.testing.assert_allclose(emb, want_emb, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(bins, want_bins)
    assert policies["a"].stats().steps_kept > 0 and policies["a"].cache is not policies["b"].cache
