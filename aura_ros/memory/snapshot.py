"""The snapshot format every backend shares: the memory survives a restart.

Files, for a snapshot path ``<base>`` (suffixes are appended, never substituted, so ``arm.left``
and ``arm.right`` are two snapshots):

    <base>.json                 the metadata; written last, it is the commit point
    <base>.<sha[:16]><suffix>   the backend's payload (its keys/values), named by its SHA-256

A save writes the new payload under its own name (temporary file, fsync, rename, fsync of the
folder), then replaces the metadata the same way, and only then deletes the previous generation's
payload. A kill between any two of these steps leaves either the old metadata with its
(untouched) old payload or the new metadata with its complete new payload: one loadable snapshot,
never neither. ``exists(base)`` is the same question for every backend.

Loading trusts nothing in the files. ``read()`` checks that both paths are regular files (a FIFO
or a folder is refused without being opened), bounds every size (a file too large is refused
from its size, unread), checks the SHA, and validates every field of the metadata (types, ranges,
the segment table tiling the used slots with compact positions, counters, the layout and eviction
policy of this store) before anything is touched; the backend then validates its payload (its
tensors' names, shapes, values: see MAGNITUDE_FACTOR) and swaps it in. ``policy_state()``
validates the policy's part (counters, instruction, the gate's state). Every refusal is a
SnapshotError with the reason; nothing at the path is SnapshotMissing.

What is backend-specific is only the payload (get/set of its tensors), the model fingerprint and
the layout it writes into the metadata.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aura_ros.memory.segments import EVENT_KINDS, Kind, Segment
from aura_ros.memory.store import MemoryStore

__all__ = ["SnapshotError", "SnapshotMissing", "Snapshot", "PolicyState", "save", "read", "exists", "files",
           "meta_path", "tensor_path", "policy_state"]



class SnapshotError(ValueError):
    """A snapshot that cannot be written or loaded here (corrupt, crafted, for another model,
    or a path that is not a regular file); the message says why. Memory is never changed."""


class SnapshotMissing(SnapshotError):
    """Nothing at all at the snapshot's path (every backend raises it from load_memory), told apart
    from a snapshot that is there and refused: a node resumes only from the one, keeps the other."""


FORMAT = "aura_ros.kv_snapshot/2"
META_SUFFIX = ".json"
TENSOR_SUFFIX = ".safetensors"
# The payload file endings (the transformers backend's safetensors, llama.cpp's sequence state):
# a path given with one of them names the same snapshot as without it.
PAYLOAD_SUFFIXES = (TENSOR_SUFFIX, ".kvstate")
# Largest integer a snapshot may hold anywhere (exact in JSON readers that use doubles).
MAX_INT = 2**53 - 1
# Metadata bigger than this is refused unread (a segment entry is ~150 bytes; extra is small). A
# snapshot for a given store is refused unread above _max_meta_bytes(store), far less: reading and
# parsing 60 MB of JSON held the control loop for 2.6 s before the refusal.
MAX_META_BYTES = 64 * 2**20
# Keys and values of a snapshot may be at most this many times larger in magnitude than the largest
# the model has put into the cache now (its pinned prompt at least), and never need be refused below
# MAGNITUDE_FLOOR: finite but absurd values (3e38) pass a finiteness check and then saturate every
# action at a joint limit.
MAGNITUDE_FACTOR = 100.0
MAGNITUDE_FLOOR = 1e4
MAX_EXTRA_BYTES = 2**20
MAX_INSTRUCTION_CHARS = 100_000
_HEX64 = re.compile(r"[0-9a-f]{64}")
_META_KEYS = {"format", "fingerprint", "tensors", "layout", "policy", "budget_bytes", "recent_steps",
              "min_step_tokens", "current_step", "evictions_total", "evicted_written_total", "segments", "extra"}
_SEGMENT_KEYS = {"kind", "step", "start", "length", "pos_start", "pos_span", "gate", "written"}
# Optional: the task boundaries of the endless run (the stale rule needs to know which kept steps
# belong to finished tasks). A snapshot written before tasks were recorded loads as one task; one
# written before event kinds were recorded loads with none (nothing superseded).
_META_OPTIONAL = {"current_task"}
_SEGMENT_OPTIONAL = {"task", "event"}
_POLICY_EXTRA_KEYS = {"step_index", "writes_total", "write_rate", "instruction", "gate"}


# ---------------------------------------------------------------------------------- paths
def _stem(base: str | os.PathLike) -> Path:
    text = os.fspath(base)
    if not text or text.endswith(os.sep):
        raise SnapshotError(f"snapshot path {text!r} names no file")
    base = Path(text)
    for suffix in (META_SUFFIX, *PAYLOAD_SUFFIXES):
        if base.name.endswith(suffix) and len(base.name) > len(suffix):
            return base.with_name(base.name[: -len(suffix)])
    return base


def meta_path(base: str | os.PathLike) -> Path:
    """The metadata file of the snapshot at ``base`` (``<base>.json``; the suffix is appended)."""
    stem = _stem(base)
    return stem.with_name(stem.name + META_SUFFIX)


def tensor_path(base: str | os.PathLike, sha256: str, suffix: str = TENSOR_SUFFIX) -> Path:
    """The payload file of one generation (``<base>.<sha[:16]><suffix>``)."""
    stem = _stem(base)
    return stem.with_name(f"{stem.name}.{sha256[:16]}{suffix}")


def exists(base: str | os.PathLike) -> bool:
    """Whether something is at the snapshot's metadata path (load() says whether it is usable)."""
    try:
        return os.path.lexists(meta_path(base))
    except SnapshotError:
        return False


def files(base: str | os.PathLike) -> tuple[Path, Path]:
    """The metadata file and the tensor file it names now (for tools and tests; not validated
    beyond the digest's form). SnapshotError when there is no readable metadata."""
    meta_file = meta_path(base)
    try:
        sha = json.loads(_read_regular(meta_file, MAX_META_BYTES, "metadata"))["tensors"]["sha256"]
    except (ValueError, RecursionError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise SnapshotError(f"corrupt snapshot metadata {meta_file}: {str(exc):.200}") from None
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
        raise SnapshotError(f"corrupt snapshot metadata {meta_file}: no tensor digest")
    candidates = [tensor_path(base, sha, suffix) for suffix in PAYLOAD_SUFFIXES]
    return meta_file, next((p for p in candidates if os.path.lexists(p)), candidates[0])


_PAYLOAD = "(?:" + "|".join(re.escape(s) for s in PAYLOAD_SUFFIXES) + ")"


def _generation_pattern(stem: Path) -> re.Pattern:
    return re.compile(re.escape(stem.name) + r"\.[0-9a-f]{16}" + _PAYLOAD)


def _temp_pattern(stem: Path) -> re.Pattern:
    return re.compile(r"\." + re.escape(stem.name) + r"(\.[0-9a-f]{16}" + _PAYLOAD + "|"
                      + re.escape(META_SUFFIX) + r")\.[^/]*\.tmp")


def _regular_or_absent(path: Path) -> bool:
    """True if ``path`` is a regular file, False if absent; SnapshotError for anything else.

    Uses stat only: a FIFO is never opened (opening one blocks until a writer appears)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # a file where a folder of the path should be: nothing here
        return False
    except OSError as exc:
        raise SnapshotError(f"snapshot path {path} is not usable: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SnapshotError(f"snapshot path {path} is not a regular file ({_file_kind(st.st_mode)}); refused")
    return True


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _read_regular(path: Path, limit: int, what: str) -> bytes:
    """Read a regular file of at most ``limit`` bytes; never blocks on a FIFO or device."""
    if not _regular_or_absent(path):
        raise SnapshotError(f"no snapshot {what} at {path}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SnapshotError(f"cannot open snapshot {what} {path}: {exc}") from None
    try:
        st = os.fstat(fd)  # what was opened, not what stat saw a moment ago
        if not stat.S_ISREG(st.st_mode):
            raise SnapshotError(f"snapshot path {path} is not a regular file ({_file_kind(st.st_mode)}); refused")
        if st.st_size > limit:
            raise SnapshotError(f"snapshot {what} {path} is {st.st_size} bytes, more than the {limit} allowed")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise SnapshotError(f"snapshot {what} {path} is larger than the {limit} bytes allowed")
        return b"".join(chunks)
    except OSError as exc:
        raise SnapshotError(f"cannot read snapshot {what} {path}: {exc}") from None
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------- writing
def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Temporary file in the same folder, fsync, rename over ``path``, fsync the folder."""
    _regular_or_absent(path)  # never replace a FIFO, folder or device someone put there
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _remove_stale(stem: Path, keep: Path) -> None:
    """Delete older generations' tensor files and temporaries left by killed saves (best effort)."""
    generation, temporary = _generation_pattern(stem), _temp_pattern(stem)
    try:
        names = os.listdir(stem.parent)
    except OSError:
        return
    removed = False
    for name in names:
        if name != keep.name and (generation.fullmatch(name) or temporary.fullmatch(name)):
            try:
                os.unlink(stem.parent / name)
                removed = True
            except OSError:
                pass
    if removed:
        try:
            _fsync_dir(stem.parent)
        except OSError:
            pass


# ---------------------------------------------------------------------------------- the format
def save(store: MemoryStore, base: str | os.PathLike, fingerprint: str, layout: dict, payload: bytes,
         max_payload_bytes: int, suffix: str = TENSOR_SUFFIX, extra: dict | None = None) -> Path:
    """Write a snapshot of ``store`` (between steps) with the backend's ``payload`` (its tensors,
    already validated by it); returns the metadata path.

    The store's current state is validated with the same rules as a load first, so a state that
    could not be loaded is never written over a good snapshot. SnapshotError: refused (bad path,
    invalid state) or not written (I/O error); the previous snapshot is then still loadable.
    """
    if store.uncommitted_tokens:
        raise RuntimeError("snapshot between steps only (uncommitted tokens present)")
    stem = _stem(base)
    meta_file = meta_path(stem)
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SnapshotError(f"cannot create the snapshot folder {stem.parent}: {exc}") from None
    _regular_or_absent(meta_file)
    sha = hashlib.sha256(payload).hexdigest()
    meta = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "tensors": {"sha256": sha, "bytes": len(payload)},
        "layout": layout,
        "policy": store.policy.name,
        "budget_bytes": store.budget_bytes,
        "recent_steps": store.recent_steps,
        "min_step_tokens": store.min_step_tokens,
        "current_step": store.current_step,
        "current_task": store.table.current_task,
        "evictions_total": store.evictions_total,
        "evicted_written_total": store.evicted_written_total,
        "segments": [{"kind": s.kind.value, "step": s.step, "start": s.start, "length": s.length,
                      "pos_start": s.pos_start, "pos_span": s.pos_span, "gate": float(s.gate),
                      "written": bool(s.written), "task": s.task, "event": s.event}
                     for s in store.table.segments],
        "extra": extra or {},
    }
    try:
        text = json.dumps(meta, indent=1, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"snapshot not written: the state is not serialisable ({exc})") from None
    _validate(meta, store, fingerprint, layout, max_payload_bytes, f"state to save at {meta_file}")
    payload_file = tensor_path(stem, sha, suffix)
    try:
        _atomic_write(payload_file, payload)  # 1: the new generation's payload, under its own name
        _atomic_write(meta_file, text)  # 2: the commit point
    except OSError as exc:
        raise SnapshotError(f"snapshot not written to {meta_file}: {exc}; the previous one is kept") from None
    _remove_stale(stem, keep=payload_file)  # 3: the previous generation (after the commit only)
    return meta_file


@dataclass
class Snapshot:
    """A snapshot's validated metadata and its payload (checked against its digest), not yet
    applied to any store; the backend decodes and validates the payload."""

    path: Path
    segments: list[Segment]
    current_step: int
    evictions_total: int
    evicted_written_total: int
    extra: dict = field(default_factory=dict)
    payload: bytes = b""
    current_task: int = 0

    @property
    def used_tokens(self) -> int:
        return self.segments[-1].end if self.segments else 0

    @property
    def max_step(self) -> int:
        return max((s.step for s in self.segments if s.is_step), default=-1)

    def restore_table(self, store: MemoryStore) -> None:
        """The segment table and the counters into ``store`` (its storage already holds the tokens)."""
        store.restore_counters([Segment(**vars(s)) for s in self.segments], self.current_step)
        store.table.current_task = self.current_task
        store.evictions_total = self.evictions_total
        store.evicted_written_total = self.evicted_written_total


def read(store: MemoryStore, base: str | os.PathLike, fingerprint: str, layout: dict, max_payload_bytes: int,
         suffix: str = TENSOR_SUFFIX) -> Snapshot:
    """Read and validate the snapshot at ``base`` for ``store``; nothing is changed anywhere.

    SnapshotMissing when nothing is at the metadata path; SnapshotError with the reason for
    anything that does not fit this store exactly.
    """
    stem = _stem(base)
    meta_file = meta_path(stem)
    where = str(meta_file)
    if not _regular_or_absent(meta_file):
        raise SnapshotMissing(f"no snapshot at {meta_file}")
    raw = _read_regular(meta_file, _max_meta_bytes(store), "metadata")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise SnapshotError(f"corrupt snapshot metadata {meta_file}: {str(exc):.200}") from None
    segments = _validate(meta, store, fingerprint, layout, max_payload_bytes, where)
    info = meta["tensors"]
    payload_file = tensor_path(stem, info["sha256"], suffix)
    blob = _read_regular(payload_file, info["bytes"], "tensors")
    if len(blob) != info["bytes"] or hashlib.sha256(blob).hexdigest() != info["sha256"]:
        raise SnapshotError(f"{payload_file} does not match its metadata (corrupt or half-written)")
    return Snapshot(meta_file, segments, meta["current_step"], meta["evictions_total"],
                    meta["evicted_written_total"], meta["extra"], blob, meta.get("current_task", 0))


# ---------------------------------------------------------------------------------- validation
def _fail(where: str, why: str) -> SnapshotError:
    return SnapshotError(f"snapshot {where} refused: {why}")


def _int(value, name: str, where: str, low: int = 0, high: int = MAX_INT) -> int:
    if type(value) is not int:  # bool is an int subclass: refused too
        raise _fail(where, f"{name} must be an integer, got {type(value).__name__} {value!r:.60}")
    if not low <= value <= high:
        raise _fail(where, f"{name} = {value} is outside [{low}, {high}]")
    return value


def _float(value, name: str, where: str, low: float, high: float) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or not low <= value <= high:
        raise _fail(where, f"{name} must be a finite number in [{low}, {high}], got {value!r:.60}")
    return float(value)


def _keys(obj, expected: set, name: str, where: str, optional: set = frozenset()) -> dict:
    if not isinstance(obj, dict):
        raise _fail(where, f"{name} must be an object, got {type(obj).__name__}")
    missing, unknown = expected - obj.keys(), obj.keys() - expected - optional
    if missing or unknown:
        raise _fail(where, f"{name} has missing keys {sorted(missing)} / unknown keys {sorted(unknown)[:5]}")
    return obj


def _segments(raw, store: MemoryStore, current_step: int, where: str, current_task: int = 0) -> list[Segment]:
    if not isinstance(raw, list):
        raise _fail(where, "segments must be a list")
    if len(raw) > store.capacity:
        raise _fail(where, f"{len(raw)} segments cannot fit in {store.capacity} slots")
    out: list[Segment] = []
    slot = position = 0
    last_step = last_task = -1
    for i, s in enumerate(raw):
        name = f"segment {i}"
        _keys(s, _SEGMENT_KEYS, name, where, _SEGMENT_OPTIONAL)
        try:
            kind = Kind(s["kind"]) if isinstance(s["kind"], str) else None
        except ValueError:
            kind = None
        if kind is None:
            raise _fail(where, f"{name} has unknown kind {s['kind']!r:.40}")
        start = _int(s["start"], f"{name}.start", where, 0, store.capacity)
        length = _int(s["length"], f"{name}.length", where, 1, store.capacity)
        if start != slot:
            raise _fail(where, f"segments do not tile the used slots ({name} starts at {start}, expected {slot})")
        slot = start + length
        if slot > store.capacity:
            raise _fail(where, f"the snapshot holds at least {slot} tokens, this cache's budget only "
                               f"{store.capacity}; raise the budget")
        pos_start = _int(s["pos_start"], f"{name}.pos_start", where, 0)
        pos_span = _int(s["pos_span"], f"{name}.pos_span", where, 1, length)
        if pos_start != position:
            raise _fail(where, f"positions are not compact ({name} at position {pos_start}, expected {position})")
        position += pos_span
        if kind in (Kind.PINNED, Kind.SINK):
            step = _int(s["step"], f"{name}.step", where, -1, -1)
        else:
            step = _int(s["step"], f"{name}.step", where, 0, current_step)
            if step < last_step:
                raise _fail(where, f"{name} (step {step}) comes after step {last_step}: steps out of order")
            last_step = step
        gate = _float(s["gate"], f"{name}.gate", where, 0.0, 1.0)
        if type(s["written"]) is not bool:
            raise _fail(where, f"{name}.written must be true or false, got {s['written']!r:.40}")
        task = _int(s.get("task", 0), f"{name}.task", where, 0, current_task)
        if kind not in (Kind.PINNED, Kind.SINK):
            # A step's task never precedes an earlier step's (the pinned instruction of a new task
            # sits after the finished tasks' steps, so only the steps are ordered).
            if task < last_task:
                raise _fail(where, f"{name} (task {task}) comes after task {last_task}: tasks out of order")
            last_task = task
        event = s.get("event", "")
        if event not in EVENT_KINDS or not isinstance(event, str):
            raise _fail(where, f"{name}.event must be one of {EVENT_KINDS}, got {event!r:.40}")
        out.append(Segment(kind, step, start, length, pos_start, pos_span, gate, s["written"], task,
                           event if s["written"] else ""))
    return out


def _validate(meta, store: MemoryStore, fingerprint: str, layout: dict, max_payload_bytes: int,
              where: str) -> list[Segment]:
    """Every field of the metadata, against this store; returns the segment table."""
    if not isinstance(meta, dict):
        raise _fail(where, "metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise SnapshotError(f"{where} is not an aura_ros snapshot of this version "
                            f"(format {meta.get('format')!r:.60}, expected {FORMAT!r})")
    _keys(meta, _META_KEYS, "metadata", where, _META_OPTIONAL)
    if meta["fingerprint"] != fingerprint:
        raise SnapshotError(f"{where} belongs to another model (fingerprint {meta['fingerprint']!r:.40}, "
                            f"this model {fingerprint})")
    tensors = _keys(meta["tensors"], {"sha256", "bytes"}, "tensors", where)
    if not isinstance(tensors["sha256"], str) or not _HEX64.fullmatch(tensors["sha256"]):
        raise _fail(where, "tensors.sha256 is not a SHA-256 hex digest")
    if meta["layout"] != layout:
        raise SnapshotError(f"{where} was written for another cache layout: {str(meta['layout']):.200} "
                            f"!= {layout}")
    if meta["policy"] != store.policy.name:
        raise _fail(where, f"written under eviction policy {meta['policy']!r:.40}, this cache uses "
                           f"{store.policy.name!r}")
    _int(meta["budget_bytes"], "budget_bytes", where, 1)
    _int(meta["recent_steps"], "recent_steps", where, 0)
    _int(meta["min_step_tokens"], "min_step_tokens", where, 1)
    current = _int(meta["current_step"], "current_step", where, 0)
    evictions = _int(meta["evictions_total"], "evictions_total", where, 0)
    _int(meta["evicted_written_total"], "evicted_written_total", where, 0, evictions)
    if not isinstance(meta["extra"], dict):
        raise _fail(where, "extra must be an object")
    try:
        extra_bytes = len(json.dumps(meta["extra"], allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        raise _fail(where, "extra is not plain JSON") from None
    if extra_bytes > MAX_EXTRA_BYTES:
        raise _fail(where, f"extra is larger than {MAX_EXTRA_BYTES} bytes")
    _fits(meta, store, where)
    current_task = _int(meta.get("current_task", 0), "current_task", where, 0)
    segments = _segments(meta["segments"], store, current, where, current_task)
    # After the segments: a snapshot too large for this budget is refused with the budget it needs
    # (above), not with its byte count.
    _int(tensors["bytes"], "tensors.bytes", where, 1, max_payload_bytes)
    return segments


def _fits(meta: dict, store: MemoryStore, where: str) -> None:
    """A snapshot of more tokens than this store holds: refused with the budget that holds them."""
    raw = meta["segments"]
    if not isinstance(raw, list) or not all(isinstance(s, dict) and type(s.get("length")) is int for s in raw):
        return  # _segments says what is wrong
    tokens = sum(s["length"] for s in raw)
    if tokens > store.capacity:
        need = store.layout.bytes_for(tokens) / 2**20
        raise _fail(where, f"it holds {tokens} tokens (saved at a budget of {meta['budget_bytes'] / 2**20:.4f} "
                           f"MiB), this cache only {store.capacity} ({store.budget_bytes / 2**20:.4f} MiB); raise "
                           f"memory.vram_budget_mb to at least {math.ceil(need * 1e4) / 1e4:.4f} to load it")


def _max_meta_bytes(store: MemoryStore) -> int:
    """The largest metadata a snapshot for ``store`` can have: a segment per slot (~200 bytes each
    as written, indented), the extra (an indented file spends up to ~4 bytes per compact byte), and
    the fixed fields."""
    return min(MAX_META_BYTES, 256 * 1024 + 4 * MAX_EXTRA_BYTES + 400 * store.capacity)


# ---------------------------------------------------------------------------------- policy state
@dataclass(frozen=True)
class PolicyState:
    """The policy's part of a snapshot (VLMPolicy.save_memory's ``extra``), validated."""

    step_index: int
    writes_total: int
    write_rate: float
    instruction: str
    gate: dict


def policy_extra(policy) -> dict:
    """The policy's part of a snapshot, as every backend saves it (read back by ``policy_state``)."""
    return {"step_index": policy.step_index, "writes_total": policy.writes_total, "write_rate": policy.write_rate,
            "instruction": policy.instruction, "gate": policy.gate.state()}


def policy_state(snap: Snapshot, gate) -> PolicyState:
    """Validate the policy fields of ``snap.extra`` for this policy's ActionGate ``gate``.

    The gate's state is checked against the structure the gate itself produces for this action
    space (same keys, arrays of the same length, finite numbers, non-negative counters), then
    loaded into a throw-away copy that must score one step: a state of another shape, or values
    the gate cannot use, are refused here, not at a later step.
    """
    where = str(snap.path)
    extra = _keys(snap.extra, _POLICY_EXTRA_KEYS, "extra", where)
    step_index = _int(extra["step_index"], "extra.step_index", where, snap.max_step + 1)
    writes = _int(extra["writes_total"], "extra.writes_total", where, 0, step_index)
    rate = _float(extra["write_rate"], "extra.write_rate", where, 0.0, 1.0)
    instruction = extra["instruction"]
    if not isinstance(instruction, str) or len(instruction) > MAX_INSTRUCTION_CHARS:
        raise _fail(where, f"extra.instruction must be a string of at most {MAX_INSTRUCTION_CHARS} characters")
    return PolicyState(step_index, writes, rate, instruction, _gate_state(extra["gate"], gate, where))


def _gate_state(state, gate, where: str) -> dict:
    low, high = np.asarray(gate.low, dtype=np.float64), np.asarray(gate.high, dtype=np.float64)
    middle = (low + high) / 2
    reference = copy.deepcopy(gate)
    reference.reset()
    for _ in range(3):  # enough steps for every field the gate keeps to hold a value
        reference.update(middle)
    _like(state, reference.state(), "extra.gate", where, depth=0)
    prev = state.get("prev") if isinstance(state, dict) else None
    if prev is not None:  # an executed action: inside the joint limits
        arr = np.asarray(prev, dtype=np.float64)
        tol = 1e-6 * (high - low)
        if arr.shape != low.shape or np.any(arr < low - tol) or np.any(arr > high + tol):
            raise _fail(where, "extra.gate.prev is outside the action limits")
    trial = copy.deepcopy(gate)
    try:
        trial.load_state(copy.deepcopy(state))
        value = trial.update(middle).value
    except Exception as exc:  # the gate's own refusal (shapes, types) is the reason
        raise _fail(where, f"extra.gate cannot be used by this gate: {str(exc):.200}") from None
    if not math.isfinite(value):
        raise _fail(where, "extra.gate scores steps as NaN")
    return state


def _like(value, reference, name: str, where: str, depth: int) -> None:
    """``value`` has the structure of ``reference`` (a state the gate made): keys, lengths, types."""
    if depth > 8:
        raise _fail(where, f"{name} is nested too deeply")
    if value is None:
        return  # every field of a gate is empty at the start of an episode
    if isinstance(reference, dict):
        _keys(value, set(reference), name, where)
        for key in reference:
            _like(value[key], reference[key], f"{name}.{key}", where, depth + 1)
    elif isinstance(reference, list):
        if not isinstance(value, list) or len(value) != len(reference):
            raise _fail(where, f"{name} must be a list of {len(reference)} values (the action dimension)")
        for i, (v, r) in enumerate(zip(value, reference)):
            _like(v, r, f"{name}[{i}]", where, depth + 1)
    elif isinstance(reference, bool):
        if type(value) is not bool:
            raise _fail(where, f"{name} must be true or false")
    elif isinstance(reference, int):
        _int(value, name, where, 0)
    elif isinstance(reference, float):
        _float(value, name, where, -1e12, 1e12)
    elif reference is None:
        _plain(value, name, where, depth)  # a field the reference run left empty: bounded JSON
    elif type(value) is not type(reference):
        raise _fail(where, f"{name} must be a {type(reference).__name__}")


def _plain(value, name: str, where: str, depth: int) -> None:
    if depth > 8:
        raise _fail(where, f"{name} is nested too deeply")
    if isinstance(value, dict):
        for k, v in value.items():
            _plain(v, f"{name}.{k}", where, depth + 1)
    elif isinstance(value, list):
        if len(value) > 65536:
            raise _fail(where, f"{name} is too long")
        for i, v in enumerate(value):
            _plain(v, f"{name}[{i}]", where, depth + 1)
    elif type(value) is int:
        _int(value, name, where, -MAX_INT)
    elif type(value) is float:
        _float(value, name, where, -1e12, 1e12)
    elif value is not None and not isinstance(value, (bool, str)):
        raise _fail(where, f"{name} has a value of type {type(value).__name__}")
