"""The topic names that the policy node uses (node name ``aura_policy``, no namespace), as the
replay bags, the Foxglove live server, the demo MCAP and the shipped Foxglove layout spell them.

Foxglove's plots, image panels and diagnostics panel find data by topic name and field path, so
these names must match what the node publishes on a robot (where foxglove_bridge serves them):
``~/memory`` of a node named ``aura_policy`` is ``/aura_policy/memory``.
"""
from __future__ import annotations

NODE_NAME = "aura_policy"

MEMORY = f"/{NODE_NAME}/memory"  # aura_ros/msg/MemoryBudget
GATE_STATS = f"/{NODE_NAME}/gate_stats"  # aura_ros/msg/GateStats
MEMORY_MAP = f"/{NODE_NAME}/memory_map"  # sensor_msgs/msg/Image (rgb8), ~1 Hz and on demand
DIAGNOSTICS = "/diagnostics"  # diagnostic_msgs/msg/DiagnosticArray
IMAGE = "/image"  # sensor_msgs/msg/Image: the camera input (the node's relative "image")
IMAGE_COMPRESSED = "/image/compressed"  # sensor_msgs/msg/CompressedImage
JOINT_STATES = "/joint_states"  # sensor_msgs/msg/JointState
INSTRUCTION = "/instruction"  # std_msgs/msg/String
# Commands, by the node's action.type (the node's COMMAND_TOPICS, resolved without a namespace).
COMMANDS = {"joint_trajectory": "/joint_trajectory", "float64_multi_array": "/commands", "twist": "/cmd_vel"}
