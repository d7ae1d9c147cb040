"""Snapshots under attack and under faults: crafted metadata, failed and killed saves, FIFOs, names.

Every test checks the state afterwards: a refused snapshot leaves the target cache exactly as it
was (segments, tensors, counters), and a save that fails or is killed at any step leaves a
snapshot that loads (the old one or the new one).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as tensors_from_bytes
from safetensors.torch import save as tensors_to_bytes

from aura_ros.backends.transformers import snapshot
from aura_ros.backends.transformers.cache import GatedKVCache
from aura_ros.backends.transformers.rope import RopeRotator
from aura_ros.backends.transformers.snapshot import SnapshotError, SnapshotMissing, load, meta_path, save
from aura_ros.memory import Kind, KVLayout

FP = "f" * 32
TEST_DIR = Path(__file__).resolve().parents[1]


def config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)


def fresh(tokens: int = 80, policy=None) -> GatedKVCache:
    cfg = config()
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))  # head_dim 16
    return GatedKVCache(cfg, KVLayout.from_config(cfg).bytes_for(tokens), RopeRotator([inv_freq] * 2),
                        recent_steps=2, policy=policy)


def fill(cache: GatedKVCache, steps: int, per_step: int = 5, seed: int = 0, pinned: int = 6) -> GatedKVCache:
    """Random keys/values written through the cache's own update/commit API (no model needed)."""
    g = torch.Generator().manual_seed(seed)

    def write(n):
        cache.reserve(n)
        for i, layer in enumerate(cache.layers):
            cache.update(torch.randn(1, layer.kv_heads, n, layer.k_dim, generator=g),
                         torch.randn(1, layer.kv_heads, n, layer.v_dim, generator=g), i)

    if pinned:
        write(pinned)
        cache.commit(Kind.PINNED, -1)
    for step in range(steps):
        write(per_step)
        cache.commit(Kind.OBSERVATION, step)
        cache.set_gate(step, 0.9 if step % 3 == 0 else 0.1, step % 3 == 0)
    n = cache.used_tokens
    cache.attention[:n] = torch.rand(n, generator=g)
    return cache


def state(cache: GatedKVCache):
    return ([vars(s).copy() for s in cache.table.segments],
            [{k: v.clone() for k, v in layer.state_dict().items()} for layer in cache.layers],
            cache.attention.clone(), cache.current_step, cache.evictions_total, cache.evicted_written_total)


def assert_same(a, b) -> None:
    assert a[0] == b[0]
    for la, lb in zip(a[1], b[1]):
        assert torch.equal(la["keys"], lb["keys"]) and torch.equal(la["values"], lb["values"])
    assert torch.equal(a[2], b[2]) and a[3:] == b[3:]


def loaded(base) -> tuple:
    target = fresh()
    load(target, base, FP)
    return state(target)


# ------------------------------------------------------------------ crafted or damaged metadata


def _seg(i):
    return lambda m: m["segments"][i]


def _set(getter, key, value):
    def mutate(meta):
        getter(meta)[key] = value
    return mutate


def _delete(getter, key):
    def mutate(meta):
        del getter(meta)[key]
    return mutate


top = lambda m: m  # noqa: E731
CRAFTED = {
    **{f"missing {k}": _delete(top, k) for k in sorted(snapshot._META_KEYS - {"format"})},
    "unknown key": _set(top, "surprise", 1),
    "wrong format": _set(top, "format", "aura_ros.kv_snapshot/1"),
    "metadata a list": lambda m: m.clear() or m.update({"format": snapshot.FORMAT, "x": []}),
    "current_step a string": _set(top, "current_step", "7"),
    "current_step a float": _set(top, "current_step", 7.0),
    "current_step a bool": _set(top, "current_step", True),
    "current_step negative": _set(top, "current_step", -1),
    "current_step huge": _set(top, "current_step", 10**30),
    "evictions negative": _set(top, "evictions_total", -5),
    "evicted_written above evictions": _set(top, "evicted_written_total", 10**6),
    "budget zero": _set(top, "budget_bytes", 0),
    "recent_steps negative": _set(top, "recent_steps", -2),
    "min_step_tokens zero": _set(top, "min_step_tokens", 0),
    "other eviction policy": _set(top, "policy", "sliding_window"),
    "other dtype": _set(lambda m: m["layout"], "dtype", "torch.float16"),
    "other head count": _set(lambda m: m["layout"], "kv_heads", [4, 4]),
    "layout missing": _set(top, "layout", {}),
    "sha not hex": _set(lambda m: m["tensors"], "sha256", "../../etc/passwd"),
    "tensor bytes huge": _set(lambda m: m["tensors"], "bytes", 10**15),
    "tensor bytes missing": _delete(lambda m: m["tensors"], "bytes"),
    "extra a list": _set(top, "extra", [1, 2]),
    "segments a dict": _set(top, "segments", {"0": 1}),
    "segment unknown kind": _set(_seg(1), "kind", "bogus"),
    "segment kind a number": _set(_seg(1), "kind", 3),
    "segment missing key": _delete(_seg(1), "pos_span"),
    "segment extra key": _set(_seg(1), "colour", "red"),
    "segment gap": _set(_seg(1), "start", 7),
    "segment overlap": _set(_seg(2), "start", 8),
    "segment length zero": _set(_seg(1), "length", 0),
    "segment length negative": _set(_seg(1), "length", -5),
    "segment past the budget": _set(_seg(-1), "length", 10**6),
    "positions not compact": _set(_seg(2), "pos_start", 100),
    "position span zero": _set(_seg(1), "pos_span", 0),
    "position span above length": _set(_seg(1), "pos_span", 50),
    "gate NaN": _set(_seg(1), "gate", float("nan")),
    "gate above one": _set(_seg(1), "gate", 2.0),
    "gate a string": _set(_seg(1), "gate", "high"),
    "written a string": _set(_seg(1), "written", "yes"),
    "written an int": _set(_seg(1), "written", 1),
    "pinned with a step": _set(_seg(0), "step", 3),
    "step beyond current_step": _set(_seg(-1), "step", 10**6),
    "step negative": _set(_seg(1), "step", -1),
    "steps out of order": _set(_seg(1), "step", 5),
    "more segments than slots": lambda m: m["segments"].extend([m["segments"][-1]] * 200),
    "no segments but tensors": _set(top, "segments", []),
    "a segment dropped": lambda m: m["segments"].pop(1),
}


@pytest.fixture
def saved(tmp_path):
    """A snapshot on disk and a target cache holding another episode (to prove nothing changes)."""
    source = fill(fresh(), steps=6, seed=1)
    save(source, tmp_path / "mem", FP, {"note": "x"})
    target = fill(fresh(), steps=4, seed=2, pinned=3)
    target.evictions_total, target.evicted_written_total = 3, 1
    return tmp_path / "mem", target


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_metadata_is_refused_and_the_cache_is_unchanged(saved, name):
    base, target = saved
    meta_file = meta_path(base)
    meta = json.loads(meta_file.read_text())
    CRAFTED[name](meta)
    meta_file.write_text(json.dumps(meta))
    before = state(target)
    with pytest.raises(SnapshotError):
        load(target, base, FP)
    assert_same(state(target), before)


@pytest.mark.parametrize("text", [
    "{ not json", "", "null", "[1, 2]", '"a string"', "\xff\xfe", "[" * 100_000 + "]" * 100_000,
    '{"format": "aura_ros.kv_snapshot/2", "current_step": ' + "9" * 5000 + "}",
])
def test_unparsable_metadata_is_refused(saved, text):
    base, target = saved
    meta_path(base).write_bytes(text.encode("utf-8", "surrogateescape") if text != "\xff\xfe" else b"\xff\xfe")
    before = state(target)
    with pytest.raises(SnapshotError):
        load(target, base, FP)
    assert_same(state(target), before)


def _rewrite_tensors(base, mutate) -> None:
    """Replace the snapshot's tensors by mutated ones and re-sign them (a crafted, consistent pair)."""
    meta_file = meta_path(base)
    meta = json.loads(meta_file.read_text())
    old = snapshot.tensor_path(base, meta["tensors"]["sha256"])
    tensors = dict(tensors_from_bytes(old.read_bytes()))
    mutate(tensors)
    blob = tensors_to_bytes(tensors)
    sha = hashlib.sha256(blob).hexdigest()
    snapshot.tensor_path(base, sha).write_bytes(blob)
    meta["tensors"] = {"sha256": sha, "bytes": len(blob)}
    meta_file.write_text(json.dumps(meta))


def _nan(t):
    t["keys.1"][0, 0, 3, 0] = float("nan")


TENSOR_CRAFTS = {
    "NaN in keys": _nan,
    "inf in values": lambda t: t["values.0"].__setitem__((0, 1, 2, 2), float("inf")),
    "a layer missing": lambda t: t.pop("values.1"),
    "an extra tensor": lambda t: t.__setitem__("keys.7", torch.zeros(1)),
    "keys too short": lambda t: t.__setitem__("keys.0", t["keys.0"][:, :, :-1].contiguous()),
    "keys of another dtype": lambda t: t.__setitem__("keys.0", t["keys.0"].half()),
    "attention negative": lambda t: t["attention"].__setitem__(0, -1.0),
    "attention of another shape": lambda t: t.__setitem__("attention", torch.zeros(3)),
    # Finite but absurd: a step on such keys saturates every action at a joint limit.
    "keys finite but absurd": lambda t: t["keys.0"].__setitem__((0, 0, 1, 1), 3e38),
    "values finite but absurd": lambda t: t["values.1"].mul_(1e6),
}


@pytest.mark.parametrize("name", sorted(TENSOR_CRAFTS))
def test_crafted_tensors_are_refused_and_the_cache_is_unchanged(saved, name):
    base, target = saved
    _rewrite_tensors(base, TENSOR_CRAFTS[name])
    before = state(target)
    with pytest.raises(SnapshotError):
        load(target, base, FP)
    assert_same(state(target), before)


def test_damaged_or_missing_tensor_file_is_refused(saved):
    base, target = saved
    meta = json.loads(meta_path(base).read_text())
    tensors = snapshot.tensor_path(base, meta["tensors"]["sha256"])
    before = state(target)
    tensors.write_bytes(tensors.read_bytes()[:-10])  # truncated
    with pytest.raises(SnapshotError, match="does not match|corrupt"):
        load(target, base, FP)
    tensors.unlink()
    with pytest.raises(SnapshotError, match="no snapshot tensors"):
        load(target, base, FP)
    assert_same(state(target), before)


def test_metadata_larger_than_any_snapshot_for_this_cache_is_refused_unread(saved, monkeypatch):
    """60 MB of JSON held the control loop for 2.6 s before its refusal: a size no snapshot for this
    cache can have is refused from stat alone, before any byte is read or parsed."""
    base, target = saved
    meta = json.loads(meta_path(base).read_text())
    meta["extra"]["padding"] = "x" * 60_000_000
    meta_path(base).write_text(json.dumps(meta))
    assert snapshot._max_meta_bytes(target) < 8 * 2**20
    monkeypatch.setattr(snapshot.json, "loads", lambda *a, **k: pytest.fail("parsed"))
    with pytest.raises(SnapshotError, match="allowed"):
        load(target, base, FP)


def test_a_snapshot_larger_than_the_budget_is_refused_with_the_reason(saved):
    base, _ = saved
    small = fill(fresh(tokens=20), steps=1, seed=3)
    before = state(small)
    with pytest.raises(SnapshotError, match="raise memory.vram_budget_mb to at least"):
        load(small, base, FP)
    assert_same(state(small), before)


def test_save_refuses_a_state_that_could_not_be_loaded_and_keeps_the_old_snapshot(tmp_path):
    cache = fill(fresh(), steps=3)
    save(cache, tmp_path / "mem", FP)
    good = loaded(tmp_path / "mem")
    cache.layers[0].keys[0, 0, 2, 0] = float("nan")  # a poisoned memory must not replace a good one
    with pytest.raises(SnapshotError, match="NaN"):
        save(cache, tmp_path / "mem", FP)
    assert_same(loaded(tmp_path / "mem"), good)


def test_a_valid_snapshot_still_round_trips(saved):
    base, target = saved
    src = loaded(base)
    assert load(target, base, FP) == {"note": "x"}
    assert_same(state(target), src)


# ------------------------------------------------------------------ failed and killed saves


class _Fault:
    """Makes the n-th call of any filesystem operation a save uses raise OSError(EIO)."""

    OPS = ("open", "write", "fsync", "replace", "unlink", "close", "read")

    def __init__(self, monkeypatch, n: int):
        self.n, self.calls, self.fired = n, 0, None
        for name in self.OPS:
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._wrap(name, real))

    def _wrap(self, name, real):
        def op(*args, **kwargs):
            self.calls += 1
            if self.calls == self.n:
                self.fired = name
                raise OSError(5, f"injected failure in os.{name}")
            return real(*args, **kwargs)
        return op


def test_a_save_failing_at_any_step_leaves_the_old_or_the_new_snapshot(tmp_path, monkeypatch):
    base = tmp_path / "mem"
    old_cache, new_cache = fill(fresh(), steps=3, seed=1), fill(fresh(), steps=7, seed=2)
    save(old_cache, base, FP)
    old, new = state(old_cache), state(new_cache)
    fired = []
    for n in range(1, 200):
        save(old_cache, base, FP)  # start every round from the old snapshot
        with monkeypatch.context() as m:
            fault = _Fault(m, n)
            try:
                save(new_cache, base, FP)
            except (SnapshotError, OSError):
                pass
        if fault.fired is None:
            break  # the save needed fewer than n operations: every step has been failed once
        fired.append(fault.fired)
        got = loaded(base)
        try:
            assert_same(got, new)
        except AssertionError:
            assert_same(got, old)
    else:
        pytest.fail("the save never completed")
    assert {"write", "fsync", "replace"} <= set(fired), fired
    assert fired.count("replace") >= 2  # both renames were failed
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers  # a failed save removes its temporary file


def test_failing_the_second_rename_keeps_the_old_pair(tmp_path, monkeypatch):
    base = tmp_path / "mem"
    old_cache = fill(fresh(), steps=3, seed=1)
    save(old_cache, base, FP)
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(5, "killed between the renames")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(SnapshotError, match="previous one is kept"):
        save(fill(fresh(), steps=8, seed=9), base, FP)
    monkeypatch.undo()
    assert Path(calls[1]).name == "mem.json"  # the metadata (the commit point) is renamed last
    assert_same(loaded(base), state(old_cache))


KILL_LOOP = r"""
import sys, torch
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from backends.test_snapshot_robustness import fill, fresh, FP
from aura_ros.backends.transformers.snapshot import save
cache = fill(fresh(tokens=6000), steps=0, pinned=4000, seed=0)
i = 0
while True:
    cache.attention[0] = float(i)
    save(cache, Path(sys.argv[1]), FP, {"i": i})
    print(i, flush=True)
    i += 1
"""


@pytest.mark.slow
def test_sigkill_during_a_save_loop_leaves_a_loadable_snapshot(tmp_path):
    """A real process saving as fast as it can, killed with SIGKILL at several moments."""
    base = tmp_path / "mem"
    rng = np.random.default_rng(0)
    mid_save = 0
    for round_ in range(3):
        out = tmp_path / f"out{round_}.txt"
        with open(out, "wb") as f:
            proc = subprocess.Popen([sys.executable, "-c", KILL_LOOP, str(base), str(TEST_DIR)], stdout=f,
                                    stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            end = time.monotonic() + 60
            while time.monotonic() < end and len(out.read_text().split()) < 3:
                assert proc.poll() is None, out.read_text()
                time.sleep(0.02)
            if round_ < 2:  # the moment a temporary file of the tensors (0) or the metadata (1) appears
                pattern = ".mem.json." if round_ == 1 else ".mem."
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not any(
                        n.startswith(pattern) and n.endswith(".tmp") and (round_ == 1 or ".json." not in n)
                        for n in os.listdir(tmp_path)):
                    time.sleep(0.0005)
            else:  # or at a random moment of the loop
                time.sleep(float(rng.uniform(0.0, 0.3)))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        mid_save += any(p.name.startswith(".mem") for p in tmp_path.iterdir())  # killed inside a save
        announced = [int(x) for x in out.read_text().split() if x.isdigit()]
        assert announced, out.read_text()
        target = fresh(tokens=6000)
        extra = load(target, base, FP)  # never neither: the old or the new pair loads
        # Everything announced was complete on disk: the snapshot is at least the last announced one.
        assert extra["i"] >= announced[-1] and target.attention[0].item() == extra["i"]
    assert mid_save >= 1  # at least one kill landed in the middle of a save (a save is most of the loop)
    # A later successful save tidies what killed saves left (temporaries, older generations).
    save(fresh(tokens=6000), base, FP)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("mem") or p.name.startswith(".mem"))
    assert len(names) == 2 and names[0].startswith("mem.") and names[1] == "mem.json", names


# ------------------------------------------------------------------ paths that are not regular files


def _within(seconds: float, fn):
    """Run fn in a daemon thread; fail (instead of hanging the run) if it blocks."""
    result = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 (reported to the test below)
            result["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"blocked for more than {seconds} s"
    return result


def test_a_fifo_or_directory_is_refused_quickly_and_never_opened(tmp_path):
    cache = fill(fresh(), steps=2)
    fifo = tmp_path / "mem.json"
    os.mkfifo(fifo)
    for action in (lambda: load(fresh(), tmp_path / "mem", FP), lambda: save(cache, tmp_path / "mem", FP)):
        result = _within(5, action)
        assert isinstance(result.get("error"), SnapshotError), result
        assert "FIFO" in str(result["error"]) and "not a regular file" in str(result["error"])
    assert fifo.exists() and not fifo.is_file()  # a save did not replace what someone put there
    folder = tmp_path / "dir.json"
    folder.mkdir()
    for action in (lambda: load(fresh(), tmp_path / "dir", FP), lambda: save(cache, tmp_path / "dir", FP)):
        result = _within(5, action)
        assert isinstance(result.get("error"), SnapshotError) and "directory" in str(result["error"]), result


def test_a_fifo_in_place_of_the_tensor_file_is_refused_quickly(tmp_path):
    cache = fill(fresh(), steps=2)
    save(cache, tmp_path / "mem", FP)
    sha = json.loads(meta_path(tmp_path / "mem").read_text())["tensors"]["sha256"]
    tensors = snapshot.tensor_path(tmp_path / "mem", sha)
    tensors.unlink()
    os.mkfifo(tensors)
    target = fill(fresh(), steps=1, seed=5)
    before = state(target)
    result = _within(5, lambda: load(target, tmp_path / "mem", FP))
    assert isinstance(result.get("error"), SnapshotError) and "FIFO" in str(result["error"]), result
    assert_same(state(target), before)


def test_paths_that_differ_after_a_dot_are_different_snapshots(tmp_path):
    left, right = fill(fresh(), steps=2, seed=1), fill(fresh(), steps=5, seed=2)
    save(left, tmp_path / "arm.left", FP, {"arm": "left"})
    save(right, tmp_path / "arm.right", FP, {"arm": "right"})
    assert meta_path(tmp_path / "arm.left").name == "arm.left.json"
    assert meta_path(tmp_path / "arm.left.json") == meta_path(tmp_path / "arm.left")
    assert load(fresh(), tmp_path / "arm.left", FP) == {"arm": "left"}
    assert load(fresh(), tmp_path / "arm.right", FP) == {"arm": "right"}
    assert_same(loaded(tmp_path / "arm.left"), state(left))
    assert_same(loaded(tmp_path / "arm.right"), state(right))
    save(left, tmp_path / "arm", FP)  # a third snapshot whose name is a prefix of both: removes nothing of theirs
    assert load(fresh(), tmp_path / "arm.left", FP) == {"arm": "left"}
    assert load(fresh(), tmp_path / "arm.right", FP) == {"arm": "right"}
    assert snapshot.exists(tmp_path / "arm.left") and not snapshot.exists(tmp_path / "arm.middle")
    meta_file, tensors = snapshot.files(tmp_path / "arm.right")
    assert meta_file.name == "arm.right.json" and tensors.name.startswith("arm.right.") and tensors.is_file()


# ------------------------------------------------------------------ the policy's part of a snapshot


@pytest.fixture(scope="module")
def policy_and_snapshot(tmp_path_factory):
    from aura_ros.backends.transformers.policy import VLMPolicy
    from aura_ros.core.config import PolicyConfig
    from aura_ros.core.types import Observation

    pol = VLMPolicy.from_pretrained(None, PolicyConfig(budget_bytes=256 * 1024, recent_steps=4),
                                    instruction="stack the cubes")
    rng = np.random.default_rng(1)
    for i in range(6):
        pol.step(Observation(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), np.full(4, 0.05 * i)))
    path = tmp_path_factory.mktemp("policy") / "pol"
    pol.save_memory(path)
    return pol, path


def _policy_state(pol):
    return (pol.step_index, pol.writes_total, pol.write_rate, pol.instruction, json.dumps(pol.gate.state()),
            state(pol.cache))


POLICY_CRAFTS = {
    "step_index negative": _set(lambda m: m["extra"], "step_index", -1),
    "step_index behind the kept steps": _set(lambda m: m["extra"], "step_index", 2),
    "step_index a float": _set(lambda m: m["extra"], "step_index", 6.0),
    "writes above steps": _set(lambda m: m["extra"], "writes_total", 10**6),
    "write_rate above one": _set(lambda m: m["extra"], "write_rate", 5.0),
    "write_rate NaN": _set(lambda m: m["extra"], "write_rate", float("nan")),
    "instruction not a string": _set(lambda m: m["extra"], "instruction", ["pick"]),
    "instruction huge": _set(lambda m: m["extra"], "instruction", "x" * 200_000),
    "extra key missing": _delete(lambda m: m["extra"], "writes_total"),
    "gate missing": _delete(lambda m: m["extra"], "gate"),
    "gate a list": _set(lambda m: m["extra"], "gate", [1, 2]),
    "gate prev of another action dimension": _set(lambda m: m["extra"]["gate"], "prev", [0.0] * 7),
    "gate prev NaN": _set(lambda m: m["extra"]["gate"], "prev", [float("nan")] * 4),
    "gate prev huge": _set(lambda m: m["extra"]["gate"], "prev", [1e308] * 4),
    "gate prev strings": _set(lambda m: m["extra"]["gate"], "prev", ["0"] * 4),
    "gate null": _set(lambda m: m["extra"], "gate", None),
    "gate field added": lambda m: m["extra"]["gate"].update(surprise=[1.0]),
    "gate field dropped": lambda m: m["extra"]["gate"].pop(sorted(m["extra"]["gate"])[0]),
    "gate nested array of another shape": lambda m: _nested(m["extra"]["gate"], list, lambda v: v + [0.5] * 3),
    "gate nested value NaN": lambda m: _nested(m["extra"]["gate"], list, lambda v: [float("nan")] * len(v)),
    "gate counter negative": lambda m: _nested(m["extra"]["gate"], int, lambda v: -3),
    "gate counter a string": lambda m: _nested(m["extra"]["gate"], int, lambda v: "3"),
}


def _nested(state: dict, kind: type, change) -> None:
    """Change the first value of type ``kind`` inside a nested dict of the gate state (not ``prev``)."""
    for value in state.values():
        if isinstance(value, dict):
            for k, v in value.items():
                if type(v) is kind:
                    value[k] = change(v)
                    return
    raise AssertionError(f"the gate state has no nested {kind.__name__}: {state}")


@pytest.mark.parametrize("name", sorted(POLICY_CRAFTS))
def test_crafted_policy_state_is_refused_and_the_policy_is_unchanged(policy_and_snapshot, tmp_path, name):
    pol, path = policy_and_snapshot
    base = tmp_path / "crafted"
    meta = json.loads(meta_path(path).read_text())
    sha = meta["tensors"]["sha256"]
    snapshot.tensor_path(base, sha).write_bytes(snapshot.tensor_path(path, sha).read_bytes())
    POLICY_CRAFTS[name](meta)
    meta_path(base).write_text(json.dumps(meta))
    pol.reset()  # another state than the snapshot's, so a half-load would show
    before = _policy_state(pol)
    with pytest.raises(SnapshotError):
        pol.load_memory(base)
    after = _policy_state(pol)
    assert after[:5] == before[:5]
    assert_same(after[5], before[5])


def test_the_snapshot_instruction_is_reported_not_imposed(policy_and_snapshot):
    """The pinned tokens of a snapshot hold its instruction: load_memory says which, the caller decides."""
    from aura_ros.backends.transformers.policy import VLMPolicy

    pol, path = policy_and_snapshot
    other = VLMPolicy.from_pretrained(None, pol.config, instruction="sort the fruit")
    extra = other.load_memory(path)
    assert extra["instruction"] == "stack the cubes" and other.instruction == "stack the cubes"
    assert other.step_index == 6
    other.set_instruction("sort the fruit")  # what the node does when its configured one differs
    assert other.instruction == "sort the fruit" and other.stats().steps_kept > 0  # memory kept


def test_random_damage_to_the_metadata_is_refused_or_leaves_a_working_cache(saved):
    """Any one byte changed: SnapshotError with the cache unchanged, or a load after which the
    cache still steps, evicts and changes budget (never a crash later on)."""
    base, target = saved
    text = meta_path(base).read_bytes()
    rng = np.random.default_rng(7)
    outcomes = {"refused": 0, "loaded": 0}
    for _ in range(150):
        damaged = bytearray(text)
        i = int(rng.integers(0, len(damaged)))
        damaged[i] = int(rng.choice(list(b'0123456789-.,:[]{}"eE \x00\xff')))
        meta_path(base).write_bytes(bytes(damaged))
        cache = fill(fresh(), steps=2, seed=4)
        before = state(cache)
        try:
            load(cache, base, FP)
        except SnapshotError:
            assert_same(state(cache), before)
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        step = cache.current_step + 1
        for k in range(12):  # steps past the capacity: evictions and compaction on the loaded table
            g = torch.Generator().manual_seed(k)
            cache.reserve(5)
            for li, layer in enumerate(cache.layers):
                cache.update(torch.randn(1, layer.kv_heads, 5, layer.k_dim, generator=g),
                             torch.randn(1, layer.kv_heads, 5, layer.v_dim, generator=g), li)
            cache.commit(Kind.OBSERVATION, step + k)
        cache.set_budget(KVLayout.from_config(config()).bytes_for(60))
        assert cache.used_tokens == cache.table.used_tokens <= cache.capacity
    assert outcomes["refused"] > 50, outcomes


def test_an_unusable_snapshot_folder_is_a_snapshot_error(tmp_path):
    cache = fill(fresh(), steps=2)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SnapshotError, match="cannot create the snapshot folder"):
        save(cache, tmp_path / "file" / "mem", FP)
    with pytest.raises(SnapshotError, match="names no file"):
        save(cache, "", FP)
    # Nothing can be at a path under a file: that is no snapshot (a node starts fresh and may
    # save there), not a refused one that it must keep.
    with pytest.raises(SnapshotMissing, match="no snapshot at"):
        load(fresh(), tmp_path / "file" / "mem", FP)
