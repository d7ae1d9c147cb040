"""Topic names, one home: what the policy node subscribes and publishes (relative to its
namespace, ``~/`` = the node's own), and the same names resolved for the node ``aura_policy`` in
no namespace, as the replay bags, the Foxglove live server, the demo MCAP and the shipped Foxglove
layout spell them.

Foxglove's plots, image panels and diagnostics panel find data by topic name and field path, so
the resolved names must match what the node publishes on a robot (where foxglove_bridge serves
them): ``~/memory`` of a node named ``aura_policy`` is ``/aura_policy/memory``.
"""
from __future__ import annotations

NODE_NAME = "aura_policy"

# As the node creates them (namespace-relative, or private with ~/).
REL_IMAGE = "image"  # sensor_msgs/msg/Image: the camera input
REL_IMAGE_COMPRESSED = "image/compressed"  # sensor_msgs/msg/CompressedImage
# Several cameras: the policy's ``camera_topics`` parameter lists one Image topic per camera (the
# first is REL_IMAGE by default); each also listens on "<topic>/compressed", image_transport's name.
COMPRESSED_SUFFIX = "/compressed"
# The sim's cameras (sim.scene.CAMERA_VIEWS) and the topics it publishes them on.
SIM_CAMERA_TOPICS = {"top": REL_IMAGE, "wrist": "wrist/image"}
REL_JOINT_STATES = "joint_states"  # sensor_msgs/msg/JointState
REL_INSTRUCTION = "instruction"  # std_msgs/msg/String
REL_MEMORY = "~/memory"  # aura_ros/msg/MemoryBudget, every step
REL_GATE_STATS = "~/gate_stats"  # aura_ros/msg/GateStats, every step
REL_MEMORY_MAP = "~/memory_map"  # sensor_msgs/msg/Image (rgb8), ~1 Hz and on demand
REL_COMMANDS = {"joint_trajectory": "joint_trajectory", "float64_multi_array": "commands", "twist": "cmd_vel"}
DIAGNOSTICS = "/diagnostics"  # diagnostic_msgs/msg/DiagnosticArray


def resolve(name: str, node: str = NODE_NAME, namespace: str = "") -> str:
    """The absolute topic name of ``name`` as the node ``node`` in ``namespace`` resolves it."""
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    if name.startswith("/"):
        return name
    if name.startswith("~/"):
        return f"{ns}/{node}/{name[2:]}"
    return f"{ns}/{name}"


MEMORY = resolve(REL_MEMORY)
GATE_STATS = resolve(REL_GATE_STATS)
MEMORY_MAP = resolve(REL_MEMORY_MAP)
IMAGE = resolve(REL_IMAGE)
IMAGE_COMPRESSED = resolve(REL_IMAGE_COMPRESSED)
JOINT_STATES = resolve(REL_JOINT_STATES)
INSTRUCTION = resolve(REL_INSTRUCTION)
COMMANDS = {kind: resolve(name) for kind, name in REL_COMMANDS.items()}
