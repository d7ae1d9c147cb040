"""MLX snapshots: a saved episode resumes with the same next action; a corrupt or foreign file is
refused with the reason and changes nothing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.mlx_backend import require_mlx

require_mlx()

from aura_ros.core.config import PolicyConfig  # noqa: E402
from aura_ros.core.registry import make_policy  # noqa: E402
from aura_ros.core.snapshots import SnapshotError, SnapshotMissing  # noqa: E402
from aura_ros.core.types import Observation  # noqa: E402
from aura_ros.memory.snapshot import exists  # noqa: E402


def obs(i: int) -> Observation:
    image = np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    return Observation(image, np.array([np.sin(i / 3), 0.1 * (i % 7), -0.2, float(i % 10 < 5)]))


def test_resume_gives_the_same_next_action(tmp_path):
    config = PolicyConfig(budget_bytes=64 * 1024, recent_steps=2)
    a = make_policy(None, config, backend="mlx", instruction="stack the cubes")
    for t in range(12):
        a.step(obs(t))
    path = a.save_memory(tmp_path / "mem")
    b = make_policy(None, config, backend="mlx", instruction="something else")
    extra = b.load_memory(path)
    assert extra["instruction"] == b.instruction == "stack the cubes"
    assert b.stats() == a.stats() and b.memory_map() == a.memory_map()
    for t in range(12, 20):  # through more evictions
        x, y = a.step(obs(t)), b.step(obs(t))
        np.testing.assert_array_equal(x.bins, y.bins)
        np.testing.assert_allclose(x.logits, y.logits, atol=1e-5)


def test_refusals_change_nothing(tmp_path):
    p = make_policy(None, PolicyConfig(budget_bytes=64 * 1024), backend="mlx", instruction="stack the cubes")
    for t in range(3):
        p.step(obs(t))
    meta = Path(p.save_memory(tmp_path / "mem"))
    assert exists(tmp_path / "mem")
    before = p.stats()
    with pytest.raises(SnapshotMissing):
        p.load_memory(tmp_path / "absent")
    payload = next(tmp_path.glob("mem.*.safetensors"))
    good = payload.read_bytes()
    payload.write_bytes(good[:-5] + bytes(b ^ 0xFF for b in good[-5:]))
    with pytest.raises(SnapshotError, match="corrupt|does not match"):
        p.load_memory(tmp_path / "mem")
    payload.write_bytes(good)
    text = meta.read_text()
    meta.write_text("{not json")
    with pytest.raises(SnapshotError, match="corrupt"):
        p.load_memory(tmp_path / "mem")
    meta.write_text(text)
    q = make_policy(None, PolicyConfig(budget_bytes=64 * 1024), backend="mlx", instruction="stack the cubes")
    q.fingerprint = "mlx:another model"
    with pytest.raises(SnapshotError, match="another model"):
        q.load_memory(tmp_path / "mem")
    assert p.stats() == before
    p.load_memory(tmp_path / "mem")  # the restored files load again
