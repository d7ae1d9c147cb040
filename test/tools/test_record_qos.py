"""config/record_qos.yaml (rosbag2 QoS overrides) names the shared topics with the node's QoS."""
from __future__ import annotations

from pathlib import Path

import yaml
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

from aura_ros.core import topics
from aura_ros.ros import qos

OVERRIDES = Path(__file__).resolve().parents[2] / "config" / "record_qos.yaml"
PROFILE_OF = {topics.IMAGE: qos.SENSOR, topics.IMAGE_COMPRESSED: qos.SENSOR, topics.JOINT_STATES: qos.SENSOR,
              topics.COMMANDS["joint_trajectory"]: qos.COMMANDS, topics.MEMORY: qos.STATS,
              topics.GATE_STATS: qos.STATS, topics.MEMORY_MAP: qos.STATS, topics.DIAGNOSTICS: qos.DIAGNOSTICS}
KEYS = {"history", "depth", "reliability", "durability", "deadline", "lifespan", "liveliness",
        "liveliness_lease_duration", "avoid_ros_namespace_conventions"}


def test_overrides_match_the_node_qos():
    overrides = yaml.safe_load(OVERRIDES.read_text())
    assert set(overrides) == set(PROFILE_OF)
    for topic, profile in overrides.items():
        assert set(profile) <= KEYS, topic
        expected = PROFILE_OF[topic]
        reliability = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}
        assert reliability[profile["reliability"]] == expected.reliability, topic
        assert profile["durability"] == "volatile" and expected.durability == DurabilityPolicy.VOLATILE, topic
        assert profile["history"] == "keep_last" and profile["depth"] == expected.depth, topic


def test_camera_best_effort_and_stats_reliable():
    overrides = yaml.safe_load(OVERRIDES.read_text())
    assert overrides[topics.IMAGE]["reliability"] == "best_effort"
    assert overrides[topics.MEMORY]["reliability"] == overrides[topics.GATE_STATS]["reliability"] == "reliable"
