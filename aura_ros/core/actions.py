"""Action tokenization as in OpenVLA: N bins per action dimension on reserved token ids.

Each dimension's [low, high] is cut into ``n_bins`` equal bins; bin b decodes to the bin's centre.
Decoding is constrained to the action tokens by a logits mask (argmax over those ids only), so
the model can never emit anything but a valid action.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ActionSpace:
    joint_names: tuple[str, ...]
    low: np.ndarray
    high: np.ndarray
    n_bins: int = 256
    chunk: int = 1  # actions predicted per step (an action chunk): row i is for i control ticks later

    def __post_init__(self) -> None:
        low = np.asarray(self.low, dtype=np.float64)
        high = np.asarray(self.high, dtype=np.float64)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        if not (len(self.joint_names) == low.size == high.size) or low.size == 0:
            raise ValueError(f"joint_names ({len(self.joint_names)}), low ({low.size}) and high "
                             f"({high.size}) must have the same, non-zero length")
        if np.any(~np.isfinite(low)) or np.any(~np.isfinite(high)) or np.any(high <= low):
            raise ValueError("action limits must be finite with low < high for every joint")
        if self.n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {self.n_bins}")
        if self.chunk < 1:
            raise ValueError(f"action chunk must be >= 1, got {self.chunk}")

    @property
    def dim(self) -> int:
        return len(self.joint_names)

    @property
    def tokens_per_step(self) -> int:
        return self.dim * self.chunk

    def to_bins(self, values: np.ndarray) -> np.ndarray:
        v = np.clip(np.asarray(values, dtype=np.float64), self.low, self.high)
        b = np.floor((v - self.low) / (self.high - self.low) * self.n_bins).astype(np.int64)
        return np.clip(b, 0, self.n_bins - 1)

    def from_bins(self, bins: np.ndarray) -> np.ndarray:
        b = np.asarray(bins, dtype=np.float64)
        values = self.low + (b + 0.5) * (self.high - self.low) / self.n_bins
        return np.clip(values, self.low, self.high)
