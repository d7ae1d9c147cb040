"""Every backend tells a missing snapshot (SnapshotMissing: the node starts fresh and may write
there) from one that is there and refused (SnapshotError: the node keeps it), whatever files make
its snapshot; the node's resume at start relies on nothing else."""
from __future__ import annotations

import pytest

from aura_ros.core.config import PolicyConfig
from aura_ros.core.registry import make_policy
from aura_ros.core.snapshots import SnapshotError, SnapshotMissing


@pytest.fixture(scope="module")
def policy():
    return make_policy(None, PolicyConfig(budget_bytes=256 * 1024), backend="transformers", instruction="stack")


def test_missing_and_refused_snapshots_are_told_apart(policy, tmp_path):
    with pytest.raises(SnapshotMissing):
        policy.load_memory(tmp_path / "none")
    with pytest.raises(SnapshotMissing):
        policy.load_memory(tmp_path / "a_file" / "below_it")  # nothing can be under a file
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SnapshotMissing):
        policy.load_memory(tmp_path / "a_file" / "below_it")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SnapshotError) as refused:
        policy.load_memory(tmp_path / "bad")
    assert not isinstance(refused.value, SnapshotMissing)
