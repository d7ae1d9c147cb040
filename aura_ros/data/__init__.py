"""Demonstrations from a user's robot, read into what the trainer takes.

Two sources (``bags``: rosbag2 recordings through ``rosbags``; ``lerobot``: LeRobotDataset v3
folders) both yield ``Demonstrations``: the episodes as ``EpisodeRecord``s (one frame per step, or
a tuple of frames, one per camera) and the action space the data implies (joint names, limits,
discrete joints, cameras). No ROS runtime and no torch here: a reader is file parsing.

Bad data raises ``DataError`` with one line that says what is wrong and where; the command line
prints it and exits with 2 (never a traceback).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aura_ros.sim.tasks import EpisodeRecord

# The fewest steps an episode needs: a memory policy learns from a step that must be recalled
# later, so an episode needs at least a cue, something in between and the recall.
MIN_EPISODE_STEPS = 3
# A joint whose recorded actions take at most this many distinct values is discrete (a gripper that
# is open or closed): the action gate counts any change of it as a discrete change (a write).
DISCRETE_MAX_VALUES = 2
# Limits derived from data are widened by this share of their range on each side, so the recorded
# extremes are not clipped onto the outermost bins' edges.
LIMIT_MARGIN = 0.05


class DataError(ValueError):
    """A demonstration set that cannot be trained on; the message is one line for the user."""


@dataclass
class Demonstrations:
    """Episodes plus the robot description the trained policy will run with."""

    episodes: list[EpisodeRecord]
    joint_names: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    discrete_joints: tuple[str, ...] = ()
    cameras: tuple[str, ...] = ("image",)  # a topic or a feature key per camera, in frame order
    fps: float = 0.0  # recorded steps per second (0: unknown)
    source: str = ""

    @property
    def n_steps(self) -> int:
        return sum(len(e.actions) for e in self.episodes)


def derived_limits(values: np.ndarray, margin: float = LIMIT_MARGIN) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """[low], [high] per column of ``values`` [T, dim]: the recorded range widened by ``margin``;
    a joint that never moved gets a range of +-0.5 around its value (a valid, non-empty range)."""
    lo, hi = values.min(0).astype(np.float64), values.max(0).astype(np.float64)
    span = hi - lo
    pad = np.where(span > 1e-9, span * margin, 0.5)
    return tuple(float(x) for x in lo - pad), tuple(float(x) for x in hi + pad)


def discrete_joint_names(names: tuple[str, ...], actions: np.ndarray,
                         max_values: int = DISCRETE_MAX_VALUES) -> tuple[str, ...]:
    """The joints whose recorded actions take at most ``max_values`` distinct values."""
    return tuple(n for j, n in enumerate(names) if len(np.unique(np.round(actions[:, j], 6))) <= max_values)


def check_episode(where: str, n_steps: int, min_steps: int = MIN_EPISODE_STEPS) -> None:
    if n_steps < min_steps:
        raise DataError(f"{where}: episode too short ({n_steps} steps; at least {min_steps} are needed)")
