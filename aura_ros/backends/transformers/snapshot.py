"""Snapshots of the gated cache: the memory survives a restart.

A snapshot is two files written atomically (temporary file, fsync, rename, then fsync of the
folder): ``<name>.safetensors`` with the used part of every layer's keys and values and the
attention accumulator, and ``<name>.json`` with the segments, positions, gate state, counters and
a fingerprint of the model and cache layout it belongs to. The JSON is written last and names the
tensor file's SHA-256, so a crash between the two renames leaves no snapshot that loads: it is
either the old pair or the new pair. A corrupt file, or one from another model, is refused with
a clear error and nothing in the cache is changed.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from aura_ros.backends.transformers.cache import GatedKVCache
from aura_ros.memory.segments import Kind, Segment

FORMAT = "aura_ros.kv_snapshot/1"


class SnapshotError(ValueError):
    """A snapshot that cannot be loaded into this cache (corrupt, or for another model)."""


def model_fingerprint(model) -> str:
    """Config + a checksum of the input embeddings: tells models apart, even same-config ones."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    emb = model.get_input_embeddings().weight
    sample = emb.detach().flatten()[:: max(1, emb.numel() // 4096)].float().cpu()
    h.update(sample.numpy().tobytes())
    return h.hexdigest()[:32]


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def paths(base: str | os.PathLike) -> tuple[Path, Path]:
    base = Path(base)
    stem = base.with_suffix("") if base.suffix in (".json", ".safetensors") else base
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save(cache: GatedKVCache, base: str | os.PathLike, fingerprint: str, extra: dict | None = None) -> Path:
    """Write a snapshot of ``cache`` (between steps); returns the JSON path."""
    if cache.used_tokens != cache.table.used_tokens:
        raise RuntimeError("snapshot between steps only (uncommitted tokens present)")
    tensor_path, meta_path = paths(base)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    n = cache.used_tokens
    tensors = {"attention": cache.attention[:n].contiguous().cpu()}
    for i, layer in enumerate(cache.layers):
        tensors[f"keys.{i}"] = layer.keys[:, :, :n].contiguous().cpu()
        tensors[f"values.{i}"] = layer.values[:, :, :n].contiguous().cpu()
    with tempfile.TemporaryDirectory(dir=tensor_path.parent) as tmp:
        scratch = Path(tmp) / "kv.safetensors"
        save_file(tensors, str(scratch))
        blob = scratch.read_bytes()
    _atomic_write(tensor_path, blob)
    meta = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "tensor_sha256": hashlib.sha256(blob).hexdigest(),
        "layout": {"kv_heads": cache.layout.kv_heads, "k_head_dim": cache.layout.k_head_dim,
                   "v_head_dim": cache.layout.v_head_dim, "dtype": str(cache.layers[0].dtype)},
        "policy": cache.policy.name,
        "budget_bytes": cache.budget_bytes,
        "recent_steps": cache.recent_steps,
        "min_step_tokens": cache.min_step_tokens,
        "current_step": cache.current_step,
        "evictions_total": cache.evictions_total,
        "evicted_written_total": cache.evicted_written_total,
        "segments": [{"kind": s.kind.value, "step": s.step, "start": s.start, "length": s.length,
                      "pos_start": s.pos_start, "pos_span": s.pos_span, "gate": s.gate, "written": s.written}
                     for s in cache.table.segments],
        "extra": extra or {},
    }
    _atomic_write(meta_path, json.dumps(meta, indent=1).encode())
    return meta_path


def load(cache: GatedKVCache, base: str | os.PathLike, fingerprint: str) -> dict:
    """Restore a snapshot into ``cache``; returns the ``extra`` dict saved with it.

    Raises SnapshotError (and leaves the cache untouched) when the snapshot is corrupt, was
    written for another model or layout, or does not fit the cache's budget.
    """
    tensor_path, meta_path = paths(base)
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise SnapshotError(f"no snapshot at {meta_path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"corrupt snapshot metadata {meta_path}: {exc}") from None
    if meta.get("format") != FORMAT:
        raise SnapshotError(f"{meta_path} is not an aura_ros snapshot (format {meta.get('format')!r})")
    if meta.get("fingerprint") != fingerprint:
        raise SnapshotError(f"{meta_path} belongs to another model (fingerprint {meta.get('fingerprint')}, "
                            f"this model {fingerprint})")
    layout = cache.layout
    expected = {"kv_heads": list(layout.kv_heads), "k_head_dim": list(layout.k_head_dim),
                "v_head_dim": list(layout.v_head_dim), "dtype": str(cache.layers[0].dtype)}
    got = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in meta.get("layout", {}).items()}
    if got != expected:
        raise SnapshotError(f"{meta_path} was written for another cache layout: {got} != {expected}")
    try:
        blob = tensor_path.read_bytes()
    except FileNotFoundError:
        raise SnapshotError(f"snapshot tensors missing: {tensor_path}") from None
    if hashlib.sha256(blob).hexdigest() != meta.get("tensor_sha256"):
        raise SnapshotError(f"{tensor_path} does not match its metadata (corrupt or half-written)")
    try:
        tensors = load_file(str(tensor_path))
        segments = [Segment(Kind(s["kind"]), int(s["step"]), int(s["start"]), int(s["length"]), int(s["pos_start"]),
                            int(s["pos_span"]), float(s["gate"]), bool(s["written"])) for s in meta["segments"]]
    except Exception as exc:
        raise SnapshotError(f"corrupt snapshot {base}: {exc}") from None
    n = segments[-1].end if segments else 0
    slot = 0
    for s in segments:
        if s.start != slot or s.length <= 0:
            raise SnapshotError(f"corrupt snapshot {base}: segments do not tile the cache")
        slot = s.end
    if n > cache.capacity:
        raise SnapshotError(f"snapshot holds {n} tokens, the cache's budget only {cache.capacity}; raise the budget")
    for i, layer in enumerate(cache.layers):
        k, v = tensors.get(f"keys.{i}"), tensors.get(f"values.{i}")
        if k is None or v is None or k.shape[2] != n or v.shape[2] != n:
            raise SnapshotError(f"corrupt snapshot {base}: layer {i} tensors missing or of the wrong length")
    for i, layer in enumerate(cache.layers):
        layer.keys[:, :, :n] = tensors[f"keys.{i}"].to(layer.keys.device, layer.keys.dtype)
        layer.values[:, :, :n] = tensors[f"values.{i}"].to(layer.values.device, layer.values.dtype)
        layer.length = n
    cache.attention.zero_()
    cache.attention[:n] = tensors["attention"].to(cache.attention.device)
    cache.table.segments = segments
    cache.recent_steps = int(meta["recent_steps"])
    cache.min_step_tokens = int(meta["min_step_tokens"])
    cache.current_step = int(meta["current_step"])
    cache.evictions_total = int(meta["evictions_total"])
    cache.evicted_written_total = int(meta.get("evicted_written_total", 0))
    return meta.get("extra", {})
