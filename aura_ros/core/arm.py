"""The default arm: its joints, limits and discrete joints (one home for these facts).

The sim builds this arm, the policy's default action space is this arm, and the node's
action.* parameters default to it.
"""
from __future__ import annotations

JOINT_NAMES: tuple[str, ...] = ("shoulder", "elbow", "wrist", "gripper")
LOW: tuple[float, ...] = (-3.14, -2.5, -3.14, 0.0)
HIGH: tuple[float, ...] = (3.14, 2.5, 3.14, 1.0)
DISCRETE_JOINTS: tuple[str, ...] = ("gripper",)  # a change of state here is always a gate event
