"""What crosses the policy seam: one Observation in, one Action out, per control step."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aura_ros.memory.gate import GateDecision
from aura_ros.memory.stats import StepStats


@dataclass
class Observation:
    """The newest inputs of one control step.

    image: HxWx3 uint8 RGB; with several cameras a tuple of frames, one per camera, in the order the
        policy was trained on (None for a backend that runs on text observations alone).
    joint_state: one value per joint, in the policy's joint order.
    instruction: a new instruction, or None to keep the pinned one.
    event: an external event (a new sub-task) that the gate treats as a discrete change.
    new_task: this step begins a new task (with ``instruction``, or the pinned one again): a task
        boundary the memory records, so that facts of finished tasks leave first (memory.planner)
        and the gate writes the step.
    executed: chunk execution only: [n, dim] the actions the robot was sent since the previous
        step's chunk arrived (n may be 0). Given, the gate scores the previous step by them (the
        actions its chunk actually produced) instead of scoring each step by its own first action;
        see PolicyBase.step.
    """

    image: np.ndarray | tuple[np.ndarray, ...] | None
    joint_state: np.ndarray
    instruction: str | None = None
    event: bool = False
    new_task: bool = False
    executed: np.ndarray | None = None


def frames(image) -> tuple[np.ndarray, ...]:
    """The frames of one observation, one per camera: a single frame or a tuple of them."""
    if image is None:
        return ()
    if isinstance(image, np.ndarray):
        return (image,)
    return tuple(image)


@dataclass
class Action:
    step: int
    joint_names: tuple[str, ...]
    positions: np.ndarray  # [chunk, dim], inside [low, high]
    bins: np.ndarray  # [chunk, dim]
    gate: GateDecision
    stats: StepStats
    logits: np.ndarray  # [n_bins]: the first action token's logits over the action tokens

    @property
    def first(self) -> np.ndarray:
        """The action executed now (the first of the chunk)."""
        return self.positions[0]
