"""The errors of the seam's save_memory / load_memory, for the node and the tools (which import no
backend); the snapshot format itself, and these errors, live in ``aura_ros.memory.snapshot``."""
from __future__ import annotations

from aura_ros.memory.snapshot import SnapshotError, SnapshotMissing

__all__ = ["SnapshotError", "SnapshotMissing"]
