"""Snapshots: save, restore into a fresh cache, and continue exactly; bad snapshots refused."""
from __future__ import annotations

import json

import pytest
import torch
from cache_models import BUILDERS

from aura_ros.backends.transformers.cache import GatedKVCache
from aura_ros.backends.transformers.rope import RopeRotator
from aura_ros.backends.transformers.snapshot import SnapshotError, load, model_fingerprint, save
from aura_ros.memory import Kind, KVLayout


def fresh(model, tokens=60):
    return GatedKVCache(model.config, KVLayout.from_config(model.config).bytes_for(tokens),
                        RopeRotator.from_model(model), recent_steps=2)


def feed(model, cache, ids, kind, step):
    start = cache.reserve(ids.shape[1])
    pos = torch.arange(start, start + ids.shape[1])[None]
    with torch.no_grad():
        logits = model(input_ids=ids, past_key_values=cache, position_ids=pos).logits
    cache.commit(kind, step)
    return logits


def test_round_trip_continues_identically(tmp_path):
    model = BUILDERS["llama"]()
    g = torch.Generator().manual_seed(0)
    cache = fresh(model)
    feed(model, cache, torch.arange(1, 9)[None], Kind.PINNED, -1)
    for step in range(20):  # far past capacity: evictions and re-rotations happened
        feed(model, cache, torch.randint(0, 100, (1, 7), generator=g), Kind.OBSERVATION, step)
        cache.set_gate(step, 0.9 if step % 5 == 0 else 0.1, step % 5 == 0)
    fp = model_fingerprint(model)
    save(cache, tmp_path / "mem", fp, {"note": "x"})
    restored = fresh(model)
    assert load(restored, tmp_path / "mem", fp) == {"note": "x"}
    assert [vars(s) for s in restored.table.segments] == [vars(s) for s in cache.table.segments]
    nxt = torch.randint(0, 100, (1, 7), generator=g)
    a = feed(model, cache, nxt, Kind.OBSERVATION, 20)
    b = feed(model, restored, nxt, Kind.OBSERVATION, 20)
    assert torch.equal(a, b)


def test_corrupt_and_foreign_snapshots_are_refused(tmp_path):
    model = BUILDERS["llama"]()
    cache = fresh(model)
    feed(model, cache, torch.arange(1, 9)[None], Kind.PINNED, -1)
    fp = model_fingerprint(model)
    save(cache, tmp_path / "mem", fp)
    target = fresh(model)
    with pytest.raises(SnapshotError, match="another model"):
        load(target, tmp_path / "mem", "0" * 32)
    other = BUILDERS["gemma3"]()
    with pytest.raises(SnapshotError):
        load(fresh(other), tmp_path / "mem", model_fingerprint(other))
    sha = json.loads((tmp_path / "mem.json").read_text())["tensors"]["sha256"]
    tensors = tmp_path / f"mem.{sha[:16]}.safetensors"
    blob = bytearray(tensors.read_bytes())
    blob[-5] ^= 0xFF
    tensors.write_bytes(bytes(blob))
    with pytest.raises(SnapshotError, match="corrupt|does not match"):
        load(target, tmp_path / "mem", fp)
    (tmp_path / "mem.json").write_text("{ not json")
    with pytest.raises(SnapshotError, match="corrupt"):
        load(target, tmp_path / "mem", fp)
    assert target.used_tokens == 0 and len(target.table) == 0  # nothing was half-loaded
    meta = tmp_path / "none.json"
    with pytest.raises(SnapshotError, match="no snapshot"):
        load(target, meta, fp)


def test_save_leaves_no_temporary_files(tmp_path):
    model = BUILDERS["llama"]()
    cache = fresh(model)
    feed(model, cache, torch.arange(1, 9)[None], Kind.PINNED, -1)
    save(cache, tmp_path / "mem", model_fingerprint(model))
    meta = json.loads((tmp_path / "mem.json").read_text())
    assert meta["format"].startswith("aura_ros")
    first = f"mem.{meta['tensors']['sha256'][:16]}.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mem.json", first])
    feed(model, cache, torch.arange(1, 6)[None], Kind.OBSERVATION, 0)
    save(cache, tmp_path / "mem", model_fingerprint(model))  # the previous generation is removed
    meta = json.loads((tmp_path / "mem.json").read_text())
    second = f"mem.{meta['tensors']['sha256'][:16]}.safetensors"
    assert second != first and sorted(p.name for p in tmp_path.iterdir()) == sorted(["mem.json", second])


def _stream_cache(model, g):
    """Three tasks back to back; a long-term step in each, steady steps between."""
    cache = fresh(model, tokens=120)
    feed(model, cache, torch.arange(1, 9)[None], Kind.PINNED, -1)
    step = 0
    for task in range(3):
        if task:
            cache.table.begin_task()
        for _ in range(4):
            feed(model, cache, torch.randint(0, 100, (1, 7), generator=g), Kind.OBSERVATION, step)
            cache.set_gate(step, 0.9 if step % 4 == 0 else 0.1, step % 4 == 0,
                           event="action" if step % 8 == 0 else "task" if step % 4 == 0 and task else "")
            step += 1
    return cache, step


def test_task_boundaries_survive_a_restart(tmp_path):
    # The stale rule (memory.planner) needs to know which kept steps belong to finished tasks: a
    # node that resumes from a snapshot must not take every remembered cue for the current task's.
    model = BUILDERS["llama"]()
    g = torch.Generator().manual_seed(1)
    cache, step = _stream_cache(model, g)
    assert {s.task for s in cache.table.segments if s.is_step} == {0, 1, 2}
    fp = model_fingerprint(model)
    save(cache, tmp_path / "mem", fp)
    restored = fresh(model, tokens=120)
    load(restored, tmp_path / "mem", fp)
    assert restored.table.current_task == 2
    assert [s.task for s in restored.table.segments] == [s.task for s in cache.table.segments]
    # And which long-term steps were action events (what a later task's own event supersedes).
    assert [s.event for s in restored.table.segments] == [s.event for s in cache.table.segments]
    assert {s.event for s in restored.table.segments} == {"", "action", "task"}
    # Under pressure both evict the same steps: the oldest task's long-term step goes first.
    for c in (cache, restored):
        c.set_budget(KVLayout.from_config(model.config).bytes_for(60))
    assert [vars(s) for s in restored.table.segments] == [vars(s) for s in cache.table.segments]
    kept_long_term = {s.task for s in restored.table.segments if s.is_step and s.written}
    assert 0 not in kept_long_term and 2 in kept_long_term


def test_snapshots_without_task_tags_load_as_one_task(tmp_path):
    # Written before tasks were recorded: accepted, every step in task 0.
    model = BUILDERS["llama"]()
    g = torch.Generator().manual_seed(2)
    cache, _ = _stream_cache(model, g)
    fp = model_fingerprint(model)
    meta_file = save(cache, tmp_path / "mem", fp)
    meta = json.loads(meta_file.read_text())
    del meta["current_task"]
    for seg in meta["segments"]:
        del seg["task"], seg["event"]
    meta_file.write_text(json.dumps(meta))
    restored = fresh(model, tokens=120)
    load(restored, tmp_path / "mem", fp)
    assert restored.table.current_task == 0 and {s.task for s in restored.table.segments} == {0}
    assert not any(s.event for s in restored.table.segments)  # nothing superseded


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(current_task=-1), "current_task = -1 is outside"),
    (lambda m: m["segments"][-1].update(task=9), "task = 9 is outside"),
    (lambda m: m["segments"][1].update(task=2), "tasks out of order"),
    (lambda m: m["segments"][1].update(task="1"), "task must be an integer"),
])
def test_bad_task_tags_are_refused(tmp_path, edit, message):
    model = BUILDERS["llama"]()
    cache, _ = _stream_cache(model, torch.Generator().manual_seed(3))
    fp = model_fingerprint(model)
    meta_file = save(cache, tmp_path / "mem", fp)
    meta = json.loads(meta_file.read_text())
    edit(meta)
    meta_file.write_text(json.dumps(meta))
    target = fresh(model, tokens=120)
    with pytest.raises(SnapshotError, match=message):
        load(target, tmp_path / "mem", fp)
    assert target.table.segments == []
