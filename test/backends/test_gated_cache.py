"""The action-gated KV cache against real transformers models (tiny, built from configs)."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from cache_models import BUILDERS, positions
from transformers import DynamicCache

from aura_ros.backends.transformers.attention import register as register_attention
from aura_ros.backends.transformers.cache import GatedKVCache
from aura_ros.backends.transformers.rope import RopeRotator
from aura_ros.memory import ActionGate, BudgetError, GateConfig, Kind, KVLayout, h2o, sliding_window, streaming_llm

ARCHS = list(BUILDERS)


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    return BUILDERS[request.param]()


def make_cache(model, tokens: int, **kw) -> GatedKVCache:
    layout = KVLayout.from_config(model.config)
    return GatedKVCache(model.config, layout.bytes_for(tokens), RopeRotator.from_model(model), **kw)


def run_chunk(model, cache, ids, kind, step, mrope_offsets=False, reserve=True):
    n = ids.shape[1]
    start = cache.reserve(n) if reserve else cache.next_position
    pos = positions(model, start, n, mrope_offsets)
    with torch.no_grad():
        logits = model(input_ids=ids, past_key_values=cache, position_ids=pos).logits
    span = int(pos.max()) + 1 - cache.table.next_position
    cache.commit(kind, step, pos_span=span)
    return logits, pos


def test_no_eviction_equals_dynamic_cache(model):
    torch.manual_seed(0)
    cache = make_cache(model, 400)
    dyn = DynamicCache(config=model.config)
    worst = 0.0
    for step in range(6):
        ids = torch.randint(0, 100, (1, 9))
        pos = positions(model, cache.next_position, 9, mrope_offsets=True)
        cache.reserve(9)
        with torch.no_grad():
            ours = model(input_ids=ids, past_key_values=cache, position_ids=pos).logits
            ref = model(input_ids=ids, past_key_values=dyn, position_ids=pos).logits
        cache.commit(Kind.PINNED if step == 0 else Kind.OBSERVATION, step,
                     pos_span=int(pos.max()) + 1 - cache.table.next_position)
        worst = max(worst, (ours - ref).abs().max().item())
    assert worst <= 1e-5
    assert cache.evictions_total == 0


def test_generate_matches_dynamic_cache():
    model = BUILDERS["llama"]()
    ids = torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(3))
    cache = make_cache(model, 64)
    cache.reserve(12 + 8)
    ours = model.generate(ids, past_key_values=cache, max_new_tokens=8, do_sample=False)
    ref = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(ours, ref)
    assert cache.used_tokens == 12 + 8 - 1  # the last generated token is not fed back


def _modeling(model):
    return importlib.import_module(type(model).__module__)


def _rope_reference_keys(model, keys, old_pos, new_pos, layer_idx):
    """Re-place keys from old to new positions with the model's OWN rotary code (not ours)."""
    mod = _modeling(model)
    text = model.model.language_model if hasattr(model.model, "language_model") else model.model
    rotary = text.rotary_emb
    x = keys.float()
    if "gemma3" in model.config.model_type:
        layer_type = model.config.layer_types[layer_idx]
        cos_o, sin_o = rotary(x, old_pos, layer_type)
        cos_n, sin_n = rotary(x, new_pos, layer_type)
    else:
        cos_o, sin_o = rotary(x, old_pos)
        cos_n, sin_n = rotary(x, new_pos)
    # Undo R(old): a rotation by -old is cos(old), -sin(old).
    raw, _ = mod.apply_rotary_pos_emb(x, x, cos_o, -sin_o)
    ref, _ = mod.apply_rotary_pos_emb(raw, raw, cos_n, sin_n)
    return ref


def test_rerotation_matches_fresh_placement(model):
    """After evictions, next-step logits equal those of a DynamicCache holding the kept tokens'
    original keys placed at contiguous positions by the model's own RoPE code."""
    torch.manual_seed(1)
    cache = make_cache(model, 60, policy=sliding_window(), recent_steps=0)
    chunks = []  # (step, pos) per committed segment, in order
    for step in range(6):  # 6 x 10 = 60 tokens: full, no eviction yet
        _, pos = run_chunk(model, cache, torch.randint(0, 100, (1, 10)), Kind.OBSERVATION, step, mrope_offsets=True)
        chunks.append((step, pos))
    assert cache.evictions_total == 0
    snap_k = [layer.keys[:, :, :60].clone() for layer in cache.layers]
    snap_v = [layer.values[:, :, :60].clone() for layer in cache.layers]
    cache.reserve(25)  # evicts the 3 oldest steps (sliding window)
    assert cache.evictions_total == 3 and cache.used_tokens == 30
    kept = chunks[3:]
    old = torch.cat([p for _, p in kept], dim=-1)
    shift = kept[0][1].min()  # every kept segment moves down by the same amount here
    new = old - shift
    dyn = DynamicCache(config=model.config)
    for li in range(len(cache.layers)):
        ref_k = _rope_reference_keys(model, snap_k[li][:, :, 30:60], old, new, li)
        dyn.update(ref_k.to(snap_k[li].dtype), snap_v[li][:, :, 30:60], li)
        assert torch.allclose(cache.layers[li].keys[:, :, :30], ref_k, atol=1e-5)
    ids = torch.randint(0, 100, (1, 25))
    pos = positions(model, cache.next_position, 25, mrope_offsets=True)
    assert int(pos.min()) == int(new.max()) + 1 - (0 if "qwen2_vl" not in model.config.model_type else 0)
    with torch.no_grad():
        ours = model(input_ids=ids, past_key_values=cache, position_ids=pos).logits
        ref = model(input_ids=ids, past_key_values=dyn, position_ids=pos).logits
    assert (ours - ref).abs().max().item() <= 1e-4


def test_rerotation_of_a_middle_gap():
    """Evicting a segment in the middle moves only what follows it, by the gap's span."""
    model = BUILDERS["llama"]()
    cache = make_cache(model, 50, recent_steps=1)
    run_chunk(model, cache, torch.randint(0, 100, (1, 5)), Kind.PINNED, -1)
    for step in range(5):
        run_chunk(model, cache, torch.randint(0, 100, (1, 9)), Kind.OBSERVATION, step)
        gate = 0.9 if step != 1 else 0.1
        cache.set_gate(step, gate, gate >= 0.5)
    before = [layer.keys[:, :, :50].clone() for layer in cache.layers]
    cache.reserve(9)  # step 1 is the only transient step: it goes
    assert cache.table.kept_steps() == [0, 2, 3, 4]
    k0 = cache.layers[0].keys
    assert torch.equal(k0[:, :, :14], before[0][:, :, :14])  # pinned + step 0 untouched
    ref = _rope_reference_keys(model, before[0][:, :, 23:50], torch.arange(23, 50)[None], torch.arange(14, 41)[None], 0)
    assert torch.allclose(k0[:, :, 14:41], ref, atol=1e-5)
    assert [s.pos_start for s in cache.table.segments] == [0, 5, 14, 23, 32]


def test_long_run_flat_memory_and_pinned_instruction():
    """5,000 steps far beyond capacity: allocation never changes, bytes stay under budget,
    positions stay bounded and the pinned instruction's keys are intact at the end."""
    model = BUILDERS["llama"]()
    layout = KVLayout.from_config(model.config)
    budget = layout.bytes_for(120) + 100  # not a multiple of a token: capacity rounds down
    cache = GatedKVCache(model.config, budget, RopeRotator.from_model(model), recent_steps=4)
    gate = ActionGate(low=np.zeros(2), high=np.ones(2))
    rng = np.random.default_rng(0)
    run_chunk(model, cache, torch.arange(1, 9)[None], Kind.PINNED, -1)
    pinned_k = cache.layers[1].keys[:, :, :8].clone()
    allocated = cache.allocated_bytes
    action = np.array([0.2, 0.2])
    for step in range(5000):
        ids = torch.randint(0, 100, (1, 4))
        run_chunk(model, cache, ids, Kind.OBSERVATION, step)
        if step % 97 == 0:
            action = rng.uniform(0, 1, 2)
        d = gate.update(action)
        cache.set_gate(step, d.value, d.written)
        st = cache.stats()
        assert cache.allocated_bytes == allocated <= budget
        assert st.used_bytes <= allocated
        assert st.max_position < st.capacity_tokens + 4
    assert cache.table.segments[0].kind is Kind.PINNED
    assert torch.equal(cache.layers[1].keys[:, :, :8], pinned_k)
    assert cache.evictions_total > 4000
    kept = cache.table.step_summary()
    # long-term steps (written on an action change) outlive the transient ones around them
    assert any(w for _, _, w, _ in kept) and kept[0][0] < 4000


def test_budget_shrink_grow_and_refusal():
    model = BUILDERS["qwen2_vl"]()
    layout = KVLayout.from_config(model.config)
    cache = make_cache(model, 100)
    run_chunk(model, cache, torch.arange(1, 11)[None], Kind.PINNED, -1)
    for step in range(12):
        run_chunk(model, cache, torch.randint(0, 100, (1, 8)), Kind.OBSERVATION, step, mrope_offsets=True)
    assert cache.used_tokens <= 100
    cache.set_budget(layout.bytes_for(40))
    assert cache.capacity == 40 and cache.used_tokens <= 40 and cache.allocated_bytes == layout.bytes_for(40)
    assert cache.table.segments[0].kind is Kind.PINNED
    run_chunk(model, cache, torch.randint(0, 100, (1, 8)), Kind.OBSERVATION, 12, mrope_offsets=True)
    cache.set_budget(layout.bytes_for(300))
    assert cache.capacity == 300 and cache.allocated_bytes == layout.bytes_for(300)
    for step in range(13, 20):
        run_chunk(model, cache, torch.randint(0, 100, (1, 8)), Kind.OBSERVATION, step, mrope_offsets=True)
    assert cache.evictions_total > 0 and cache.used_tokens == 10 + 8 * len(cache.table.kept_steps())
    with pytest.raises(BudgetError, match="pinned"):
        cache.set_budget(layout.bytes_for(10 + 8) - 1)
    assert cache.capacity == 300  # a refused budget changes nothing


def test_gate_writes_on_action_changes_not_on_steady_actions():
    gate = ActionGate(low=np.array([-1.0, -1.0, 0.0]), high=np.array([1.0, 1.0, 1.0]),
                      discrete=np.array([False, False, True]), config=GateConfig(threshold=0.5))
    steady = np.array([0.1, -0.3, 0.0])
    script = ([steady] * 20 + [steady + [0.0, 0.0, 1.0]]  # the gripper closes: a grasp
              + [steady + [0.0, 0.0, 1.0]] * 20
              + [np.array([0.8, -0.3, 1.0])]  # a turn
              + [np.array([0.8, -0.3, 1.0])] * 20)
    written = [gate.update(a).written for a in script]
    assert written[0]  # the first step of an episode
    assert not any(written[1:20]) and not any(written[22:41]) and not any(written[43:])
    assert written[20] and written[41]
    # slow drift: small per-step change never opens the gate
    gate.reset()
    drift = [gate.update(np.array([0.001 * i, 0.0, 0.0])).written for i in range(50)]
    assert sum(drift) == 1


def test_baselines_differ_in_what_they_keep():
    model = BUILDERS["llama"]()
    register_attention()
    model.set_attn_implementation("aura_eager")
    try:
        results = {}
        for name, policy in {"sliding_window": sliding_window(), "streaming_llm": streaming_llm(4),
                             "h2o": h2o()}.items():
            torch.manual_seed(5)
            cache = make_cache(model, 80, policy=policy, recent_steps=2)
            run_chunk(model, cache, torch.arange(1, 11)[None], Kind.PINNED, -1)
            for step in range(30):
                run_chunk(model, cache, torch.randint(0, 100, (1, 6)), Kind.OBSERVATION, step)
            results[name] = cache
        sw, sl, hh = results["sliding_window"], results["streaming_llm"], results["h2o"]
        assert all(s.kind is not Kind.PINNED for s in sw.table.segments)  # the window forgets it
        assert sl.table.segments[0].kind is Kind.SINK and sl.table.segments[0].length == 4
        assert hh.attention[: hh.used_tokens].sum() > 0  # the hook fed the accumulator
        assert sw.table.kept_steps() == list(range(30 - len(sw.table.kept_steps()), 30))
        assert hh.table.kept_steps() != sw.table.kept_steps()  # heavy hitters are not a window
    finally:
        model.set_attn_implementation("sdpa")


def test_too_small_budget_refused_at_construction():
    model = BUILDERS["llama"]()
    with pytest.raises(BudgetError):
        GatedKVCache(model.config, 10, RopeRotator.from_model(model))
