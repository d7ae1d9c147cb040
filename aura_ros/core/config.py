"""PolicyConfig: what every backend needs to know about the robot and the memory."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aura_ros.core import arm
from aura_ros.core.actions import ActionSpace
from aura_ros.memory.gate import GateConfig
from aura_ros.memory.scorers import UtilityWeights

DEFAULT_SYSTEM_PROMPT = "You are a robot policy. Follow the instruction. Output one action per step."


@dataclass(frozen=True)
class PolicyConfig:
    joint_names: tuple[str, ...] = arm.JOINT_NAMES
    low: tuple[float, ...] = arm.LOW
    high: tuple[float, ...] = arm.HIGH
    discrete_joints: tuple[str, ...] = arm.DISCRETE_JOINTS
    n_bins: int = 256
    chunk: int = 1
    # Frames per observation (one per camera, each with its own image tokens in the step's segment).
    # A policy works with the cameras it was trained on; one camera costs nothing extra.
    n_cameras: int = 1
    budget_bytes: int = 8 * 1024 * 1024
    recent_steps: int = 8
    eviction: str = "action_gate"  # or sliding_window, streaming_llm, h2o, unbounded (the baselines)
    unbounded_max_tokens: int | None = None  # the stated cap of the unbounded reference
    # When full, free at least this fraction of the capacity at once: compaction and re-rotation
    # then run once every ~block/step_tokens steps instead of every step (docs/benchmarks.md §7).
    block_fraction: float = 0.05
    # The most steps the policy reads at once, whatever the budget (0: the budget alone decides).
    # A policy works inside the context shapes it was trained on: the shipped default's contexts
    # hold a recent stretch of 1-24 steps beside the long-term ones (backends/transformers/train.py).
    # Measured (docs/benchmarks.md section 8): with a cap of 32, budgets of 1 and 2 MiB filled the
    # view with ~26 recent steps and the default fell to chance at D = 50; 24 keeps every budget
    # inside what it was trained on.
    max_context_steps: int = 24
    gate: GateConfig = field(default_factory=GateConfig)
    utility: UtilityWeights = field(default_factory=UtilityWeights)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    clear_memory_on_instruction: bool = False
    state_decimals: int = 2

    def action_space(self) -> ActionSpace:
        return ActionSpace(tuple(self.joint_names), np.array(self.low), np.array(self.high),
                           self.n_bins, self.chunk)

    def discrete_mask(self) -> np.ndarray:
        return np.array([n in self.discrete_joints for n in self.joint_names])

    def state_text(self, state: np.ndarray) -> str:
        """The joint state as every backend's model reads it: "shoulder 0.30 elbow 0.90 ..." (the
        trained layout; a state of another length is numbered instead of named)."""
        names = self.joint_names if len(state) == len(self.joint_names) else range(len(state))
        return " ".join(f"{n} {v:.{self.state_decimals}f}" for n, v in zip(names, state))

    def observation_text(self, state: np.ndarray, image_marker: str = "") -> str:
        """One step's observation segment: "<obs>{image marker}<state>{joint state}<act>"."""
        return f"<obs>{image_marker}<state>{self.state_text(state)}<act>"
