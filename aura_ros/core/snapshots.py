"""The errors of the seam's save_memory / load_memory, shared by every backend and the node (which
imports no backend): what a snapshot is on disk is each backend's own business."""
from __future__ import annotations


class SnapshotError(ValueError):
    """A snapshot that cannot be written or loaded here (corrupt, crafted, for another model,
    or a path that is not a regular file); the message says why. Memory is never changed."""


class SnapshotMissing(SnapshotError):
    """Nothing at all at the snapshot's path (every backend raises it from load_memory), told apart
    from a snapshot that is there and refused: a node resumes only from the one, keeps the other."""
