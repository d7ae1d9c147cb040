"""Snapshots of an MLX episode: one file, written atomically, validated before anything changes.

Interim: the shared snapshot format is moving to ``aura_ros.memory``; until it lands, this file
holds the MLX store's memory on the llama.cpp backend's pattern. Layout: ``MAGIC`` | 8-byte
little-endian length of the JSON header | the header | the used keys and values of every layer
(float32, layer by layer, K then V, each [1, kv_heads, n, dim]). The header holds the model's
fingerprint, the KV layout, the segment table, the store's counters, the policy's state (gate,
step counters, instruction) and the tensors' length and SHA-256.

Writing: a temporary file in the same folder, fsync, ``os.replace``. Loading: the whole file is
checked (magic, fields, fingerprint, layout, sizes, checksum, finite values, a segment table that
tiles the tokens with contiguous positions, a gate state the gate can score with) before the
store is touched.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from aura_ros.core.snapshots import SnapshotError, SnapshotMissing
from aura_ros.memory.segments import Kind, Segment

MAGIC = b"AURA-MLX-SNAPSHOT\x00v1\n"
MAX_HEADER = 64 * 1024 * 1024

__all__ = ["SnapshotError", "SnapshotMissing", "save", "load"]


def _layout(store) -> dict:
    lay = store.layout
    return {"kv_heads": list(lay.kv_heads), "k_head_dim": list(lay.k_head_dim), "v_head_dim": list(lay.v_head_dim),
            "dtype_bytes": lay.dtype_bytes}


def save(policy, path) -> Path:
    """Write the episode's memory to ``path`` atomically; returns the path."""
    path = Path(path)
    if path.is_dir():
        raise SnapshotError(f"{path} is a folder; give a file path")
    store = policy.store
    if store.used_tokens != store.table.used_tokens:
        raise SnapshotError("save_memory() between steps only (uncommitted tokens present)")
    n = store.used_tokens
    parts = []
    for k, v in zip(store.keys, store.values):
        parts += [np.asarray(k[:, :, :n], dtype=np.float32).tobytes(),
                  np.asarray(v[:, :, :n], dtype=np.float32).tobytes()]
    tensors = b"".join(parts)
    header = {
        "format": 1, "backend": "mlx", "model": policy.fingerprint, "layout": _layout(store), "tokens": n,
        "segments": [[s.kind.value, s.step, s.start, s.length, s.pos_start, s.pos_span, s.gate, s.written, s.task]
                     for s in store.table.segments],
        "store": {"current_step": store.current_step, "evictions_total": store.evictions_total,
                  "evicted_written_total": store.evicted_written_total, "current_task": store.table.current_task},
        "extra": {"step_index": policy.step_index, "writes_total": policy.writes_total,
                  "write_rate": policy.write_rate, "instruction": policy.instruction, "gate": policy.gate.state()},
        "tensor_bytes": len(tensors), "tensor_sha256": hashlib.sha256(tensors).hexdigest(),
    }
    blob = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(blob)) + blob + tensors)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _fail(path, why: str):
    raise SnapshotError(f"snapshot {path} refused: {why}")


def _read(policy, path) -> tuple[dict, list[Segment], list[tuple[np.ndarray, np.ndarray]]]:
    store = policy.store
    path = Path(path)
    if not os.path.lexists(path):
        raise SnapshotMissing(f"no snapshot at {path}")
    if not path.is_file():
        _fail(path, "not a regular file")
    limit = len(MAGIC) + 8 + MAX_HEADER + store.layout.bytes_for(store.capacity)
    if path.stat().st_size > limit:
        _fail(path, f"{path.stat().st_size} bytes, more than any snapshot of this store can be ({limit})")
    data = path.read_bytes()
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        _fail(path, "not an MLX backend snapshot (bad magic)")
    (size,) = struct.unpack_from("<Q", data, len(MAGIC))
    start = len(MAGIC) + 8
    if size > MAX_HEADER or start + size > len(data):
        _fail(path, f"header length {size} does not fit the file of {len(data)} bytes")
    try:
        header = json.loads(data[start: start + size])
    except ValueError as exc:
        _fail(path, f"header is not JSON ({exc})")
    tensors = data[start + size:]
    needed = {"format", "backend", "model", "layout", "tokens", "segments", "store", "extra", "tensor_bytes",
              "tensor_sha256"}
    if not isinstance(header, dict) or (missing := needed - set(header)):
        _fail(path, f"header lacks {sorted(missing) if isinstance(header, dict) else 'everything'}")
    if header["format"] != 1 or header["backend"] != "mlx":
        _fail(path, f"format {header['format']!r} of backend {header['backend']!r}; expected 1 of mlx")
    if header["model"] != policy.fingerprint:
        _fail(path, f"saved with model {header['model']!r}, this policy runs {policy.fingerprint!r}")
    if header["layout"] != _layout(store):
        _fail(path, f"KV layout {header['layout']} is not this store's {_layout(store)}")
    if header["tensor_bytes"] != len(tensors) or hashlib.sha256(tensors).hexdigest() != header["tensor_sha256"]:
        _fail(path, "the tensors are truncated or corrupt (length or SHA-256 mismatch)")
    n = header["tokens"]
    if not isinstance(n, int) or not 0 <= n <= store.capacity:
        _fail(path, f"{n!r} tokens do not fit this store of {store.capacity}")
    lay = store.layout
    if len(tensors) != 4 * n * sum(lay.kv_heads[i] * (lay.k_head_dim[i] + lay.v_head_dim[i])
                                   for i in range(lay.num_layers)):
        _fail(path, f"{len(tensors)} tensor bytes do not hold {n} tokens of this layout")
    kv, offset = [], 0
    for i in range(lay.num_layers):
        pair = []
        for dim in (lay.k_head_dim[i], lay.v_head_dim[i]):
            count = lay.kv_heads[i] * n * dim
            arr = np.frombuffer(tensors, dtype=np.float32, count=count, offset=offset)
            arr = arr.reshape(1, lay.kv_heads[i], n, dim)
            offset += 4 * count
            pair.append(arr)
        kv.append(tuple(pair))
    if not all(np.isfinite(a).all() for pair in kv for a in pair):
        _fail(path, "keys or values are not finite")
    segments, slot, pos = [], 0, 0
    try:
        for row in header["segments"]:
            kind, step, s_start, length, pos_start, span, gate, written, task = row
            seg = Segment(Kind(kind), int(step), int(s_start), int(length), int(pos_start), int(span),
                          float(gate), bool(written), int(task))
            if seg.start != slot or seg.pos_start != pos or seg.length <= 0 or seg.pos_span != seg.length \
                    or not np.isfinite(seg.gate):
                raise ValueError(f"segment {row} does not continue the table at slot {slot}, position {pos}")
            slot, pos = seg.end, seg.pos_start + seg.pos_span
            segments.append(seg)
    except (TypeError, ValueError) as exc:
        _fail(path, f"bad segment table ({exc})")
    if slot != n:
        _fail(path, f"the segments cover {slot} tokens, the snapshot has {n}")
    extra, counters = header["extra"], header["store"]
    try:
        step_index = int(extra["step_index"])
        writes = int(extra["writes_total"])
        rate = float(extra["write_rate"])
        max_step = max([s.step for s in segments if s.is_step], default=-1)
        if step_index <= max_step or not 0 <= writes <= step_index or not 0.0 <= rate <= 1.0 \
                or not isinstance(extra["instruction"], str):
            raise ValueError("step counters or instruction out of range")
        if not all(isinstance(counters[k], int) and counters[k] >= 0 for k in
                   ("evictions_total", "evicted_written_total", "current_task")) or \
                not isinstance(counters["current_step"], int):
            raise ValueError("store counters out of range")
        trial = copy.deepcopy(policy.gate)  # the gate state must load and score one step
        trial.load_state(copy.deepcopy(extra["gate"]))
        trial.update(np.clip(np.zeros(len(trial.low)), trial.low, trial.high))
    except Exception as exc:  # noqa: BLE001 (whatever a crafted state makes the gate raise)
        _fail(path, f"bad policy state ({type(exc).__name__}: {exc})")
    return header, segments, kv


def load(policy, path) -> dict:
    """Resume ``policy`` from ``path``; returns the snapshot's ``extra``. SnapshotError: memory unchanged."""
    import mlx.core as mx

    header, segments, kv = _read(policy, path)
    store, n = policy.store, header["tokens"]
    for i, (k, v) in enumerate(kv):
        store.keys[i][:, :, :n] = mx.array(k).astype(store.dtype)
        store.values[i][:, :, :n] = mx.array(v).astype(store.dtype)
    mx.eval(store.arrays())
    store.lengths = [n] * len(store.lengths)
    counters = header["store"]
    store.restore_counters(segments, counters["current_step"])
    store.table.current_task = counters["current_task"]
    store.evictions_total, store.evicted_written_total = counters["evictions_total"], counters["evicted_written_total"]
    extra = header["extra"]
    policy.step_index, policy.writes_total = int(extra["step_index"]), int(extra["writes_total"])
    policy.write_rate, policy.instruction = float(extra["write_rate"]), extra["instruction"]
    policy.gate.load_state(extra["gate"])
    return dict(extra)
