"""Snapshots of a llama.cpp episode: one file, written atomically, validated before anything changes.

Layout: ``MAGIC`` | 8-byte little-endian length of the JSON header | the header (UTF-8 JSON) |
the sequence state (``llama_state_seq_get_data``: the cells' positions, keys and values).
The header holds the model's fingerprint, the KV type, the context size, the segment table, the
token ids, the gate's state and the step counters, plus the state's length and SHA-256.

Writing: a temporary file in the same folder, fsync, ``os.replace`` (a reader sees the old file
or the new one, never half of one). Loading: the whole file is read and checked (magic, header
fields, fingerprint, KV type, sizes, checksum, a segment table that tiles the tokens with
contiguous positions, a gate state the gate can score with) before the policy is touched; if
llama.cpp still refuses the cells, the old memory is put back.
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

MAGIC = b"AURA-LLAMA-CPP-SNAPSHOT\x00v1\n"
MAX_HEADER = 64 * 1024 * 1024

__all__ = ["SnapshotError", "SnapshotMissing", "save", "load", "read"]


def _header(policy) -> dict:
    store = policy.store
    return {
        "format": 1, "backend": "llama_cpp", "model": policy.model.fingerprint(), "kv_type": policy.kv_type,
        "capacity": store.capacity,
        "segments": [[s.kind.value, s.step, s.start, s.length, s.pos_start, s.pos_span, s.gate, s.written]
                     for s in store.table.segments],
        "tokens": store.tokens.tolist(),
        "extra": {"step_index": policy.step_index, "writes_total": policy.writes_total,
                  "write_rate": policy.write_rate, "instruction": policy.instruction, "gate": policy.gate.state()},
    }


def save(policy, path) -> Path:
    """Write the episode's memory to ``path`` atomically; returns the path."""
    path = Path(path)
    if path.is_dir():
        raise SnapshotError(f"{path} is a folder; give a file path")
    state = policy.store.get_state()
    header = _header(policy)
    header["state_bytes"] = len(state)
    header["state_sha256"] = hashlib.sha256(state).hexdigest()
    blob = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(blob)) + blob + state)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a power cut once the folder is synced
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def max_file_bytes(policy) -> int:
    """The largest file a snapshot of ``policy``'s context can be: the header (a token id and a
    segment row per cell, the gate state and instruction) and the sequence state (the cells' keys
    and values with llama.cpp's per-cell bookkeeping; twice the KV bytes is ample)."""
    capacity = policy.store.capacity
    header = 4 * 2**20 + 128 * capacity
    state = 2 * policy.store.layout.bytes_for(capacity) + 2**20
    return len(MAGIC) + 8 + min(header, MAX_HEADER) + state


def _fail(path, why: str):
    raise SnapshotError(f"snapshot {path} refused: {why}")


def read(policy, path) -> tuple[dict, list[Segment], np.ndarray, bytes]:
    """Read and validate ``path`` for ``policy``; nothing is changed. (header, segments, tokens, state)."""
    path = Path(path)
    if not os.path.lexists(path):
        raise SnapshotMissing(f"no snapshot at {path}")
    if not path.is_file():
        _fail(path, "not a regular file")
    size, limit = path.stat().st_size, max_file_bytes(policy)
    if size > limit:  # refused from its size, unread: reading 60 MB held the control loop for seconds
        _fail(path, f"{size} bytes, more than any snapshot of this context can be ({limit})")
    data = path.read_bytes()
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        _fail(path, "not a llama.cpp backend snapshot (bad magic)")
    (n,) = struct.unpack_from("<Q", data, len(MAGIC))
    start = len(MAGIC) + 8
    if n > MAX_HEADER or start + n > len(data):
        _fail(path, f"header length {n} does not fit the file of {len(data)} bytes")
    try:
        header = json.loads(data[start: start + n])
    except ValueError as exc:
        _fail(path, f"header is not JSON ({exc})")
    state = data[start + n:]
    if not isinstance(header, dict):
        _fail(path, "header is not an object")
    needed = {"format", "backend", "model", "kv_type", "capacity", "segments", "tokens", "extra", "state_bytes",
              "state_sha256"}
    if missing := needed - set(header):
        _fail(path, f"header lacks {sorted(missing)}")
    if header["format"] != 1 or header["backend"] != "llama_cpp":
        _fail(path, f"format {header['format']!r} of backend {header['backend']!r}; expected 1 of llama_cpp")
    if header["model"] != policy.model.fingerprint():
        _fail(path, f"saved with model {header['model']!r}, this policy runs {policy.model.fingerprint()!r}")
    if header["kv_type"] != policy.kv_type:
        _fail(path, f"saved with kv_type {header['kv_type']!r}, this policy uses {policy.kv_type!r}")
    if header["state_bytes"] != len(state) or hashlib.sha256(state).hexdigest() != header["state_sha256"]:
        _fail(path, "the KV state is truncated or corrupt (length or SHA-256 mismatch)")
    tokens = header["tokens"]
    if not isinstance(tokens, list) or not all(isinstance(t, int) and -1 <= t < policy.model.n_vocab
                                               for t in tokens):
        _fail(path, "token ids are not ids of this vocabulary")
    if len(tokens) > policy.store.capacity:
        _fail(path, f"{len(tokens)} tokens do not fit this context of {policy.store.capacity}")
    segments = []
    slot = pos = 0
    try:
        for row in header["segments"]:
            kind, step, s_start, length, pos_start, span, gate, written = row
            seg = Segment(Kind(kind), int(step), int(s_start), int(length), int(pos_start), int(span),
                          float(gate), bool(written))
            if seg.start != slot or seg.pos_start != pos or seg.length <= 0 or seg.pos_span != seg.length \
                    or not np.isfinite(seg.gate):
                raise ValueError(f"segment {row} does not continue the table at slot {slot}, position {pos}")
            slot, pos = seg.end, seg.pos_start + seg.pos_span
            segments.append(seg)
    except (TypeError, ValueError) as exc:
        _fail(path, f"bad segment table ({exc})")
    if slot != len(tokens):
        _fail(path, f"the segments cover {slot} tokens, the snapshot has {len(tokens)}")
    extra = header["extra"]
    try:
        step_index = int(extra["step_index"])
        writes = int(extra["writes_total"])
        rate = float(extra["write_rate"])
        instruction = extra["instruction"]
        max_step = max([s.step for s in segments if s.is_step], default=-1)
        if step_index <= max_step or not 0 <= writes <= step_index or not 0.0 <= rate <= 1.0 \
                or not isinstance(instruction, str):
            raise ValueError("step counters or instruction out of range")
        trial = copy.deepcopy(policy.gate)  # the gate state must load and score one step
        trial.load_state(extra["gate"])
        trial.update(np.clip(np.zeros(len(trial.low)), trial.low, trial.high))
    except Exception as exc:  # noqa: BLE001 (whatever a crafted state makes the gate raise)
        _fail(path, f"bad policy state ({type(exc).__name__}: {exc})")
    return header, segments, np.asarray(tokens, dtype=np.int64), state


def load(policy, path) -> dict:
    """Resume ``policy`` from ``path``; returns the snapshot's ``extra``. SnapshotError: memory unchanged."""
    header, segments, tokens, state = read(policy, path)
    try:
        policy.store.set_state(state, segments, tokens)
    except RuntimeError as exc:
        _fail(path, str(exc))
    extra = header["extra"]
    policy.step_index, policy.writes_total = int(extra["step_index"]), int(extra["writes_total"])
    policy.write_rate, policy.instruction = float(extra["write_rate"]), extra["instruction"]
    policy.gate.load_state(extra["gate"])
    return dict(extra)
