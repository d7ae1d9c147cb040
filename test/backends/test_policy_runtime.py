"""The step loop on real (tiny, random-weight) VLMs through the real processor -> model path."""
from __future__ import annotations

import numpy as np
import pytest

from aura_ros.backends.transformers.loading import load_model
from aura_ros.backends.transformers.policy import PolicyConfig, VLMPolicy
from aura_ros.backends.transformers.tiny_models import build_tiny_vlm
from aura_ros.backends.transformers.vocab import action_token_ids
from aura_ros.core.types import Observation
from aura_ros.memory import Kind

LOW = (-3.14, -2.5, -3.14, 0.0)
HIGH = (3.14, 2.5, 3.14, 1.0)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlms")
    return {arch: build_tiny_vlm(arch, root / arch) for arch in ("llava", "idefics3", "smolvlm", "qwen2_vl", "gemma3")}


def make_policy(path, **cfg) -> VLMPolicy:
    loaded = load_model(path)
    config = PolicyConfig(low=LOW, high=HIGH, **cfg)
    return VLMPolicy(loaded.model, loaded.processor, config, action_token_ids(loaded.tokenizer, config.n_bins),
                     instruction="pick up the red block")


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8)


@pytest.mark.parametrize("arch", ["llava", "idefics3", "smolvlm", "qwen2_vl", "gemma3"])
def test_one_step_gives_a_valid_action(built, arch):
    policy = make_policy(built[arch], chunk=2)
    action = policy.step(Observation(frame(0), np.array([0.1, -0.2, 0.3, 0.0])))
    assert action.positions.shape == (2, 4) and action.bins.shape == (2, 4)
    assert np.all(action.positions >= LOW) and np.all(action.positions <= HIGH)
    kinds = [s.kind for s in policy.cache.table.segments]
    assert kinds == [Kind.PINNED, Kind.OBSERVATION, Kind.ACTION]
    assert policy.cache.table.segments[-1].length == 8  # 4 joints x a chunk of 2, one token each
    if arch == "qwen2_vl":  # mrope: the image advances the position less than its token count
        obs = policy.cache.table.segments[1]
        assert obs.pos_span < obs.length


def test_thousand_step_episode_is_flat(built):
    policy = make_policy(built["llava"], budget_bytes=256 * 1024, recent_steps=4)
    cache = policy.cache
    shapes: list[tuple] = []

    def record(module, args, kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape) + tuple(kwargs["position_ids"].shape))

    hook = policy.model.register_forward_pre_hook(record, with_kwargs=True)
    storage = [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers]
    allocated = cache.allocated_bytes
    sizes_at_200 = None
    rng = np.random.default_rng(0)
    try:
        for t in range(1000):
            state = rng.uniform(LOW, HIGH)
            a = policy.step(Observation(frame(t % 7), state))
            assert np.all(a.positions >= LOW) and np.all(a.positions <= HIGH)
            assert cache.allocated_bytes == allocated and a.stats.used_bytes <= allocated <= 256 * 1024
            assert a.stats.max_position < cache.capacity
            if t == 200:
                sizes_at_200 = (len(shapes), len(cache.table), len(vars(policy)))
    finally:
        hook.remove()
    # storage never moved or grew: the same tensors from the first step to the last
    assert storage == [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers]
    # each forward pass is given one step's tokens and their positions only (no token history,
    # no growing position tensor): bounded by one observation, however long the episode
    assert all(s[-1] == s[1] for s in shapes)  # positions exactly for the new tokens
    late, early = max(s[1] for s in shapes[sizes_at_200[0]:]), max(s[1] for s in shapes[:sizes_at_200[0]])
    assert late <= early + 4  # the joint-state text varies by a few tokens with the values, nothing grows
    assert len(cache.table) <= cache.capacity and len(vars(policy)) == sizes_at_200[2]
    assert cache.evictions_total > 900 and cache.table.segments[0].kind is Kind.PINNED


def test_new_instruction_replaces_the_pinned_segment(built):
    policy = make_policy(built["qwen2_vl"])
    for t in range(5):
        policy.step(Observation(frame(t), np.zeros(4)))
    old = [s for s in policy.cache.table.segments if s.kind is Kind.PINNED]
    steps_before = policy.cache.table.kept_steps()
    policy.step(Observation(frame(9), np.zeros(4), instruction="open the drawer instead"))
    pinned = [s for s in policy.cache.table.segments if s.kind is Kind.PINNED]
    assert len(pinned) == 1 and pinned[0] is not old[0] and policy.instruction == "open the drawer instead"
    assert set(steps_before) <= set(policy.cache.table.kept_steps())  # memory kept by default
    policy.config = policy.config.__class__(**{**vars(policy.config), "clear_memory_on_instruction": True})
    policy.set_instruction("go home")
    assert policy.cache.table.kept_steps() == [] and policy.cache.table.segments[0].kind is Kind.PINNED


def test_failed_step_rolls_back(built):
    policy = make_policy(built["llava"])
    policy.step(Observation(frame(0), np.zeros(4)))
    before = (policy.cache.used_tokens, len(policy.cache.table), policy.step_index)
    with pytest.raises(ValueError, match="NaN"):
        policy.step(Observation(frame(1), np.array([np.nan, 0, 0, 0])))
    real_forward = policy.model.forward
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # fail on the first action token, after the observation went in
            raise RuntimeError("boom")
        return real_forward(*args, **kwargs)

    policy.model.forward = flaky
    with pytest.raises(RuntimeError, match="boom"):
        policy.step(Observation(frame(1), np.zeros(4)))
    policy.model.forward = real_forward
    cache = policy.cache
    assert all(layer.length == cache.table.used_tokens for layer in cache.layers)
    assert policy.step_index == before[2]
    a = policy.step(Observation(frame(2), np.zeros(4)))
    assert a.step == before[2]


def test_dynamic_cache_reference_grows(built):
    policy = make_policy(built["llava"], eviction="unbounded")
    sizes = [policy.step(Observation(frame(t), np.zeros(4))).stats.allocated_bytes for t in range(5)]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]


def test_default_model_runs_from_none(monkeypatch, tmp_path):
    monkeypatch.setenv("AURA_ROS_CACHE", str(tmp_path))
    policy = VLMPolicy.from_pretrained(None, PolicyConfig(), instruction="wave")
    a = policy.step(Observation(frame(0), np.zeros(4)))
    assert a.positions.shape == (1, 4)
    assert policy.cache.used_tokens > 0
