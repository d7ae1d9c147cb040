"""aura-ros record without DDS: the QoS it takes from the publishers (rosbag2's rule), the offered
QoS it writes, and bad arguments (one line, exit 2). The recording itself over DDS:
test/ros/test_record_sim_bag.py."""
from __future__ import annotations

import pytest
from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy
from rosbags.interfaces import QosDurability, QosReliability

from aura_ros.ros import qos
from aura_ros.tools import record


@pytest.mark.parametrize("offered, reliability, durability", [
    ([qos.DEMONSTRATION, qos.COMMANDS], ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE),
    ([qos.DEMONSTRATION, qos.SENSOR], ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.VOLATILE),
    ([qos.INSTRUCTION], ReliabilityPolicy.RELIABLE, DurabilityPolicy.TRANSIENT_LOCAL),
    ([qos.INSTRUCTION, qos.INSTRUCTION_VOLATILE], ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE),
    ([], ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.VOLATILE),
], ids=["all reliable", "one best effort", "latched", "latched and volatile", "none"])
def test_subscription_qos_matches_every_publisher(offered, reliability, durability):
    profile = record.subscription_qos(offered)
    assert (profile.reliability, profile.durability) == (reliability, durability)
    assert profile.history == HistoryPolicy.KEEP_LAST and profile.depth == record.RECORD_DEPTH


def test_offered_qos_in_rosbag2_terms():
    got = record._offered(qos.INSTRUCTION)
    assert got.reliability == QosReliability.RELIABLE and got.durability == QosDurability.TRANSIENT_LOCAL
    assert tuple(got.deadline) == (2147483647, 4294967295)  # infinite, as rosbag2 writes it
    assert tuple(record._qos_time(Duration(seconds=1.5))) == (1, 500_000_000)


@pytest.mark.parametrize("argv, says", [
    (["--topics", "/image"], "exists"),
    (["--topics", "bad name"], "not a topic name"),
])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys, argv, says):
    out = tmp_path / "bag"
    if says == "exists":
        out.mkdir()
    assert record.main(["--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aura-ros record: error:") and says in err and "\n" not in err


def test_the_cli_runs_it(tmp_path, capsys):
    from aura_ros.tools.cli import main

    (tmp_path / "bag").mkdir()
    assert main(["record", "--out", str(tmp_path / "bag"), "--topics", "/image"]) == 2
    assert "exists" in capsys.readouterr().err
