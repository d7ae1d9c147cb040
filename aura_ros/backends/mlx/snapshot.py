"""Snapshots of the MLX store: this backend's payload in the shared format.

The files (``<base>.json`` + ``<base>.<sha[:16]>.safetensors``), the metadata, the atomic write and
every refusal are ``aura_ros.memory.snapshot``'s, as for the other backends, so the node's resume
at start finds an MLX snapshot the same way. This module supplies only what is this backend's: the
payload (the used keys and values of every layer, float32, converted to NumPy and written as
safetensors), the model's fingerprint and the store's layout. Every tensor is validated (names,
dtype, shape, finite values, the format's magnitude bound) before the store is touched.
"""
from __future__ import annotations

import os
from pathlib import Path

import mlx.core as mx
import numpy as np
from safetensors.numpy import load as tensors_from_bytes
from safetensors.numpy import save as tensors_to_bytes

from aura_ros.memory import snapshot as fmt
from aura_ros.memory.snapshot import MAGNITUDE_FACTOR, MAGNITUDE_FLOOR, SnapshotError, SnapshotMissing, _fail

__all__ = ["SnapshotError", "SnapshotMissing", "save", "load", "read"]


def _layout(store) -> dict:
    lay = store.layout
    return {"kv_heads": list(lay.kv_heads), "k_head_dim": list(lay.k_head_dim), "v_head_dim": list(lay.v_head_dim),
            "dtype": "mlx.float32"}


def _tensors(store) -> dict[str, np.ndarray]:
    n = store.used_tokens
    out = {}
    for i, (k, v) in enumerate(zip(store.keys, store.values)):
        out[f"keys.{i}"] = np.array(k[:, :, :n].astype(mx.float32))
        out[f"values.{i}"] = np.array(v[:, :, :n].astype(mx.float32))
    return out


def _max_payload_bytes(store) -> int:
    """A full store's tensors plus a generous safetensors header."""
    return store.layout.bytes_for(store.capacity) + 64 * 1024 + 256 * 2 * store.layout.num_layers


def _magnitude_bound(store) -> float:
    """The largest key or value magnitude a snapshot for ``store`` may hold (see MAGNITUDE_FACTOR)."""
    n = store.used_tokens
    largest = max([float(mx.abs(a[:, :, :n]).max()) for a in store.arrays()] if n else [0.0])
    return max(MAGNITUDE_FLOOR, MAGNITUDE_FACTOR * largest)


def _validate(tensors: dict, store, n: int, where: str, bound: float | None = None) -> None:
    lay = store.layout
    expected = {f"{kind}.{i}" for i in range(lay.num_layers) for kind in ("keys", "values")}
    if set(tensors) != expected:
        raise _fail(where, f"tensor names {sorted(set(tensors) ^ expected)[:6]} missing or unexpected")
    for i in range(lay.num_layers):
        for kind, dim in (("keys", lay.k_head_dim[i]), ("values", lay.v_head_dim[i])):
            t = tensors[f"{kind}.{i}"]
            shape = (1, lay.kv_heads[i], n, dim)
            if t.dtype != np.float32 or t.shape != shape:
                raise _fail(where, f"{kind}.{i} is {t.dtype} {t.shape}, expected float32 {shape}")
            if not np.isfinite(t).all():
                raise _fail(where, f"{kind}.{i} holds NaN or infinite values")
            if bound is not None and t.size and float(np.abs(t).max()) > bound:
                raise _fail(where, f"{kind}.{i} holds values up to {float(np.abs(t).max()):.3g}, more than "
                                   f"{bound:.3g} (this model's own are at most 1/{MAGNITUDE_FACTOR:g} of that)")


def save(policy, path) -> Path:
    """Write the episode's memory at ``path`` atomically; returns the metadata path."""
    store = policy.store
    if store.uncommitted_tokens:  # before the tensors are read (the format says it again)
        raise RuntimeError("snapshot between steps only (uncommitted tokens present)")
    tensors = _tensors(store)
    _validate(tensors, store, store.used_tokens, f"state to save at {fmt.meta_path(path)}")
    return fmt.save(store, path, policy.fingerprint, _layout(store), tensors_to_bytes(tensors),
                    _max_payload_bytes(store), extra=fmt.policy_extra(policy))


def read(policy, path: str | os.PathLike) -> tuple[fmt.Snapshot, fmt.PolicyState, dict[str, np.ndarray]]:
    """Read and validate the snapshot at ``path`` for ``policy``; nothing is changed."""
    store = policy.store
    snap = fmt.read(store, path, policy.fingerprint, _layout(store), _max_payload_bytes(store))
    where = str(snap.path)
    for seg in snap.segments:  # positions are the slots here (1-D RoPE, packed from 0)
        if seg.pos_span != seg.length:
            raise _fail(where, f"segment at slot {seg.start} spans {seg.pos_span} positions for {seg.length} "
                               "tokens; this backend's positions equal its slots")
    try:
        tensors = tensors_from_bytes(snap.payload)
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise _fail(where, f"corrupt tensors: {str(exc):.200}") from None
    _validate(tensors, store, snap.used_tokens, where, bound=_magnitude_bound(store))
    return snap, fmt.policy_state(snap, policy.gate), tensors


def load(policy, path) -> dict:
    """Resume ``policy`` from ``path``; returns the snapshot's ``extra``. SnapshotError: memory unchanged."""
    snap, state, tensors = read(policy, path)
    store, n = policy.store, snap.used_tokens
    for i in range(store.layout.num_layers):
        store.keys[i][:, :, :n] = mx.array(tensors[f"keys.{i}"]).astype(store.dtype)
        store.values[i][:, :, :n] = mx.array(tensors[f"values.{i}"]).astype(store.dtype)
    mx.eval(store.arrays())
    store.lengths = [n] * len(store.lengths)
    snap.restore_table(store)
    policy.step_index, policy.writes_total, policy.write_rate = state.step_index, state.writes_total, state.write_rate
    policy.instruction = state.instruction
    policy.gate.load_state(state.gate)
    return dict(snap.extra)
