"""Snapshots of the gated cache: the transformers backend's payload in the shared format.

The files, the metadata, the atomic write and every refusal are ``aura_ros.memory.snapshot``'s;
this module supplies only what is this backend's: the payload (the used keys/values of every
layer and the attention sums, as safetensors), the model's fingerprint and the cache layout.
Every tensor is validated (names, dtype, shape, finite values, a magnitude bound) before the
cache is touched; ``Snapshot.apply()`` then swaps the contents in and cannot fail half-way.
"""
from __future__ import annotations

import hashlib
import json  # noqa: F401 (tests reach the module's json to craft metadata)
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as tensors_from_bytes
from safetensors.torch import save as tensors_to_bytes

from aura_ros.backends.transformers.cache import GatedKVCache
from aura_ros.memory import snapshot as fmt
from aura_ros.memory.snapshot import (  # noqa: F401 (the format's API, reached through this module too)
    _META_KEYS,
    FORMAT,
    MAGNITUDE_FACTOR,
    MAGNITUDE_FLOOR,
    PolicyState,
    SnapshotError,
    SnapshotMissing,
    _fail,
    _max_meta_bytes,
    exists,
    files,
    meta_path,
    policy_state,
    tensor_path,
)


def model_fingerprint(model) -> str:
    """Config + a checksum of the input embeddings: tells models apart, even same-config ones."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    emb = model.get_input_embeddings().weight
    sample = emb.detach().flatten()[:: max(1, emb.numel() // 4096)].float().cpu()
    h.update(sample.numpy().tobytes())
    return h.hexdigest()[:32]


def _layout(cache: GatedKVCache) -> dict:
    layout = cache.layout
    return {"kv_heads": list(layout.kv_heads), "k_head_dim": list(layout.k_head_dim),
            "v_head_dim": list(layout.v_head_dim), "dtype": str(cache.layers[0].dtype)}


def _tensors(cache: GatedKVCache) -> dict[str, torch.Tensor]:
    """The payload: the used keys/values of every layer and the attention sums, on the CPU."""
    tensors = {"attention": cache.attention[: cache.used_tokens].contiguous().cpu()}
    for i, layer in enumerate(cache.layers):
        state = layer.state_dict()
        tensors[f"keys.{i}"], tensors[f"values.{i}"] = state["keys"], state["values"]
    return tensors


def save(cache: GatedKVCache, base: str | os.PathLike, fingerprint: str, extra: dict | None = None) -> Path:
    """Write a snapshot of ``cache`` (between steps); returns the metadata path (see
    ``memory.snapshot.save``: the state is validated as a load would, the old snapshot stays
    loadable on any refusal or I/O error)."""
    if cache.uncommitted_tokens:
        raise RuntimeError("snapshot between steps only (uncommitted tokens present)")
    tensors = _tensors(cache)
    _validate_tensors(tensors, cache, cache.used_tokens, f"state to save at {meta_path(base)}")
    return fmt.save(cache, base, fingerprint, _layout(cache), tensors_to_bytes(tensors), _max_tensor_bytes(cache),
                    extra=extra)


@dataclass
class Snapshot(fmt.Snapshot):
    """A fully validated snapshot, not yet applied to any cache."""

    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer, on the cache's device and dtype
    attention: torch.Tensor | None = None

    def apply(self, cache: GatedKVCache) -> None:
        """Swap the snapshot's contents into ``cache`` (validated for it by read())."""
        n = self.used_tokens
        for layer, (keys, values) in zip(cache.layers, self.kv):
            layer.load(keys, values)
        cache.attention.zero_()
        cache.attention[:n] = self.attention
        self.restore_table(cache)


def _max_tensor_bytes(cache: GatedKVCache) -> int:
    """A full cache's tensors plus a generous safetensors header."""
    per_token = cache.layout.bytes_per_token + 4  # + the float32 attention sum
    return cache.capacity * per_token + 64 * 1024 + 256 * (2 * len(cache.layers) + 1)


def _magnitude_bound(cache: GatedKVCache) -> float:
    """The largest key or value magnitude a snapshot for ``cache`` may hold (see MAGNITUDE_FACTOR)."""
    largest = 0.0
    for layer in cache.layers:
        if layer.length:
            state = layer.state_dict()
            largest = max(largest, float(state["keys"].abs().max()), float(state["values"].abs().max()))
    return max(MAGNITUDE_FLOOR, MAGNITUDE_FACTOR * largest)


def _validate_tensors(tensors: dict, cache: GatedKVCache, n: int, where: str, bound: float | None = None) -> None:
    expected = {"attention"} | {f"{kind}.{i}" for i in range(len(cache.layers)) for kind in ("keys", "values")}
    if set(tensors) != expected:
        raise _fail(where, f"tensor names {sorted(set(tensors) ^ expected)[:6]} missing or unexpected")
    att = tensors["attention"]
    if att.dtype != torch.float32 or tuple(att.shape) != (n,):
        raise _fail(where, f"attention is {att.dtype} {tuple(att.shape)}, expected float32 ({n},)")
    if not bool(torch.isfinite(att).all()) or bool((att < 0).any()):
        raise _fail(where, "attention sums must be finite and non-negative")
    for i, layer in enumerate(cache.layers):
        for kind, dim in (("keys", layer.k_dim), ("values", layer.v_dim)):
            t = tensors[f"{kind}.{i}"]
            shape = (1, layer.kv_heads, n, dim)
            if t.dtype != layer.dtype or tuple(t.shape) != shape:
                raise _fail(where, f"{kind}.{i} is {t.dtype} {tuple(t.shape)}, expected {layer.dtype} {shape}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise _fail(where, f"{kind}.{i} holds NaN or infinite values")
            if bound is not None and t.numel() and float(t.abs().max()) > bound:
                raise _fail(where, f"{kind}.{i} holds values up to {float(t.abs().max()):.3g}, more than "
                                   f"{bound:.3g} (this model's own are at most 1/{MAGNITUDE_FACTOR:g} of that)")


def read(cache: GatedKVCache, base: str | os.PathLike, fingerprint: str) -> Snapshot:
    """Read and validate the snapshot at ``base`` for ``cache``; nothing is changed anywhere.

    Raises SnapshotError with the reason for anything that does not fit this cache exactly.
    """
    snap = fmt.read(cache, base, fingerprint, _layout(cache), _max_tensor_bytes(cache))
    where = str(snap.path)
    try:
        tensors = tensors_from_bytes(snap.payload)
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise SnapshotError(f"corrupt snapshot tensors {tensor_path(base, hashlib.sha256(snap.payload).hexdigest())}: "
                            f"{str(exc):.200}") from None
    _validate_tensors(tensors, cache, snap.used_tokens, where, bound=_magnitude_bound(cache))
    kv = []
    for i, layer in enumerate(cache.layers):
        # Moved to the cache's device here, so apply() only copies (no allocation can fail there).
        kv.append((tensors[f"keys.{i}"].to(layer.device, layer.dtype),
                   tensors[f"values.{i}"].to(layer.device, layer.dtype)))
    attention = tensors["attention"].to(cache.attention.device)
    return Snapshot(snap.path, snap.segments, snap.current_step, snap.evictions_total, snap.evicted_written_total,
                    snap.extra, b"", snap.current_task, kv=kv, attention=attention)


def load(cache: GatedKVCache, base: str | os.PathLike, fingerprint: str) -> dict:
    """Restore a snapshot into ``cache``; returns the ``extra`` dict saved with it.

    Raises SnapshotError (and leaves the cache untouched) when the snapshot is corrupt, crafted,
    was written for another model, layout or eviction policy, or does not fit the cache's budget.
    """
    snap = read(cache, base, fingerprint)
    snap.apply(cache)
    return snap.extra
