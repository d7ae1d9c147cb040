"""Action-chunk execution between inferences: a queue of actions, one per control tick.

A policy with ``action.chunk`` H > 1 predicts H actions per inference; the control loop sends one
per tick from this queue and asks for the next chunk when the queue falls to its refill
threshold, so the robot keeps moving while the model runs (LeRobot's async inference does the
same between its policy server and robot client).

Alignment: every action has the control tick it is meant for. A chunk inferred from the
observation taken at tick k holds the actions for ticks k, k+1, ..., k+H-1 (the expert's chunk
labels are "this step's action and the next ones"). When it arrives, ticks up to the last one
already executed have passed: those actions are dropped (counted), never sent late.

Blending: where the queue still holds actions for ticks the new chunk also covers (the overlap,
n ticks), the two are cross-faded linearly: at the j-th overlapping tick (j = 1..n) the action is
(1 - w) * old + w * new with w = j / (n + 1), so the command moves from the old plan to the new
one without a jump; after the overlap only the new chunk is left. Discrete joints (a gripper) are
not averaged: they take the old chunk's value while w < 0.5 and the new one's from then on.

The queue also records what it sent since the newest chunk arrived (``take_executed``): the
action gate scores that chunk's memory step by the actions the robot was actually sent.

No ROS here; thread-safe (the control timer pops, the inference worker pushes).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PushResult:
    dropped: int  # actions whose tick had passed when the chunk arrived
    blended: int  # actions cross-faded with the queue's remaining ones
    queued: int  # actions in the queue after the push


def blend_overlap(old: np.ndarray, new: np.ndarray, discrete: np.ndarray) -> np.ndarray:
    """The linear cross-fade of ``old`` into ``new`` over their n overlapping ticks.

    old, new: [n, dim] actions for the same n ticks; discrete: [dim] bool. Returns [n, dim]:
    row j (0-based) is (1 - w) * old + w * new with w = (j + 1) / (n + 1); discrete joints take
    old while w < 0.5, new from w = 0.5 on.
    """
    old = np.asarray(old, dtype=np.float64)
    new = np.asarray(new, dtype=np.float64)
    if old.shape != new.shape or old.ndim != 2:
        raise ValueError(f"overlap shapes differ: {old.shape} and {new.shape}")
    n = old.shape[0]
    w = (np.arange(1, n + 1, dtype=np.float64) / (n + 1))[:, None]
    out = (1.0 - w) * old + w * new
    mask = np.asarray(discrete, dtype=bool)
    if mask.any():
        out[:, mask] = np.where(w >= 0.5, new, old)[:, mask]
    return out


class ChunkQueue:
    """Actions keyed by the control tick they are meant for; see the module docstring."""

    def __init__(self, dim: int, discrete: np.ndarray | None = None):
        self.dim = int(dim)
        self.discrete = np.zeros(dim, dtype=bool) if discrete is None else np.asarray(discrete, dtype=bool)
        if self.discrete.shape != (self.dim,):
            raise ValueError(f"discrete mask has shape {self.discrete.shape}, expected ({self.dim},)")
        self._lock = threading.Lock()
        self._start = 0  # the tick of _actions[0]
        self._actions = np.empty((0, self.dim))
        self._last_tick = -1  # the last tick popped (executed or held)
        self._executed: list[np.ndarray] = []

    def __len__(self) -> int:
        with self._lock:
            return self._remaining()

    def _remaining(self) -> int:
        return max(0, self._start + len(self._actions) - (self._last_tick + 1))

    def push(self, chunk: np.ndarray, obs_tick: int) -> PushResult:
        """Queue a chunk inferred from the observation of tick ``obs_tick`` (its row i is for tick
        obs_tick + i): past ticks dropped, the overlap with what is queued cross-faded."""
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[1] != self.dim or chunk.shape[0] == 0:
            raise ValueError(f"a chunk must be [H >= 1, {self.dim}], got {chunk.shape}")
        if not np.all(np.isfinite(chunk)):
            raise ValueError("a chunk holds NaN or infinite actions")
        with self._lock:
            first = self._last_tick + 1  # the next tick to execute
            if obs_tick > first:
                raise ValueError(f"a chunk for tick {obs_tick} is ahead of the next tick to execute ({first})")
            dropped = min(first - obs_tick, len(chunk))
            new = chunk[dropped:]
            if len(new) == 0:  # all of it came too late: the queue goes on as it was
                return PushResult(dropped, 0, self._remaining())
            keep = self._actions[max(0, first - self._start):]  # still queued, from the next tick on
            n = min(len(keep), len(new))
            parts = [blend_overlap(keep[:n], new[:n], self.discrete), new[n:], keep[len(new):]]
            self._actions = np.concatenate(parts, axis=0)
            self._start = first
            self._executed = []
            return PushResult(dropped, n, self._remaining())

    def pop(self, tick: int) -> np.ndarray | None:
        """The action for control tick ``tick`` (ticks count up by one per call), or None when the
        queue holds nothing for it; either way the tick has passed."""
        with self._lock:
            if tick <= self._last_tick:
                raise ValueError(f"tick {tick} is not after the last one ({self._last_tick})")
            self._last_tick = tick
            i = tick - self._start
            if 0 <= i < len(self._actions):
                action = self._actions[i].copy()
                # Executed ticks leave the queue.
                self._actions, self._start = self._actions[i + 1:], tick + 1
                self._executed.append(action)
                return action
            if i >= len(self._actions):
                self._actions, self._start = np.empty((0, self.dim)), tick + 1
            return None

    def take_executed(self) -> np.ndarray:
        """[n, dim]: the actions sent since the newest chunk arrived (n may be 0)."""
        with self._lock:
            return np.array(self._executed).reshape(-1, self.dim)

    def clear(self) -> int:
        """Drop every queued action (inputs went stale, a step failed); returns how many."""
        with self._lock:
            n = self._remaining()
            self._actions, self._start = np.empty((0, self.dim)), self._last_tick + 1
            self._executed = []
            return n
