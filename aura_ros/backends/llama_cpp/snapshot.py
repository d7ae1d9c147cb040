"""Snapshots of a llama.cpp episode: this backend's payload in the shared format.

The files (``<base>.json`` + ``<base>.<sha[:16]>.kvstate``), the metadata, the atomic write and
every refusal are ``aura_ros.memory.snapshot``'s, as for the transformers backend, so the node's
resume at start finds either backend's snapshot the same way. This module supplies only the
payload: the token ids of the cached tokens (int64, little-endian; -1 for an image embedding)
followed by the sequence state (``llama_state_seq_get_data``: the cells' positions, keys and
values), plus the model's fingerprint and the layout (KV type and head shapes).

Loading: everything is validated (the shared checks, the payload's digest, positions equal to
slots, token ids of this vocabulary, the policy's state) before the policy is touched; if
llama.cpp still refuses the cells, the old memory is put back.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from aura_ros.memory import snapshot as fmt
from aura_ros.memory.snapshot import SnapshotError, SnapshotMissing, _fail

SUFFIX = ".kvstate"
TOKEN_BYTES = 8

__all__ = ["SnapshotError", "SnapshotMissing", "save", "load", "read", "max_file_bytes"]


def _layout(policy) -> dict:
    layout = policy.store.layout
    return {"kv_type": layout.kv_type, "kv_heads": list(layout.kv_heads), "k_head_dim": list(layout.k_head_dim),
            "v_head_dim": list(layout.v_head_dim)}


def max_file_bytes(policy) -> int:
    """The largest payload a snapshot of ``policy``'s context can have: a token id per cell and the
    sequence state (the cells' keys and values with llama.cpp's per-cell bookkeeping; twice the KV
    bytes is ample)."""
    store = policy.store
    return TOKEN_BYTES * store.capacity + 2 * store.layout.bytes_for(store.capacity) + 2**20


def save(policy, path) -> Path:
    """Write the episode's memory at ``path`` atomically; returns the metadata path."""
    store = policy.store
    payload = store.tokens.astype("<i8").tobytes() + store.get_state()
    return fmt.save(store, path, policy.model.fingerprint(), _layout(policy), payload, max_file_bytes(policy),
                    suffix=SUFFIX, extra=fmt.policy_extra(policy))


def read(policy, path: str | os.PathLike) -> tuple[fmt.Snapshot, fmt.PolicyState, np.ndarray, bytes]:
    """Read and validate the snapshot at ``path`` for ``policy``; nothing is changed.
    (snapshot, policy state, token ids, sequence state)."""
    snap = fmt.read(policy.store, path, policy.model.fingerprint(), _layout(policy), max_file_bytes(policy),
                    suffix=SUFFIX)
    where = str(snap.path)
    for seg in snap.segments:  # llama.cpp positions are the slots here (1-D RoPE, packed from 0)
        if seg.pos_span != seg.length:
            raise _fail(where, f"segment at slot {seg.start} spans {seg.pos_span} positions for {seg.length} "
                               "tokens; this backend's positions equal its slots")
    n = snap.used_tokens
    if len(snap.payload) < TOKEN_BYTES * n:
        raise _fail(where, f"the payload holds fewer than the {n} token ids the segments cover")
    tokens = np.frombuffer(snap.payload[: TOKEN_BYTES * n], dtype="<i8").astype(np.int64)
    if tokens.size and (tokens.min() < -1 or tokens.max() >= policy.model.n_vocab):
        raise _fail(where, "token ids are not ids of this vocabulary")
    return snap, fmt.policy_state(snap, policy.gate), tokens, snap.payload[TOKEN_BYTES * n:]


def load(policy, path) -> dict:
    """Resume ``policy`` from ``path``; returns the snapshot's ``extra``. SnapshotError: memory unchanged."""
    snap, state, tokens, cells = read(policy, path)
    try:
        policy.store.set_state(cells, snap.segments, tokens)
    except RuntimeError as exc:
        raise _fail(str(snap.path), str(exc)) from None
    snap.restore_table(policy.store)
    policy.step_index, policy.writes_total, policy.write_rate = state.step_index, state.writes_total, state.write_rate
    policy.instruction = state.instruction
    policy.gate.load_state(state.gate)
    return dict(snap.extra)
