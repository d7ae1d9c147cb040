"""The parameter table: declared with its descriptors, read into Settings, documented in the README."""
from __future__ import annotations

from pathlib import Path

import pytest
import rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter

from aura_ros.ros.params import POLICY_PARAMS, Settings

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def node():
    rclpy.init(args=["--ros-args", "-p", "memory.vram_budget_mb:=2", "-p", "memory.recent_steps:=3"])
    n = Node("params_probe", automatically_declare_parameters_from_overrides=False)
    yield n
    n.destroy_node()
    rclpy.shutdown()


def test_declare_read_and_integer_given_for_a_double(node):
    POLICY_PARAMS.declare(node)
    s = POLICY_PARAMS.read(node)
    assert isinstance(s, Settings)
    assert s.budget_mb == 2.0 and isinstance(s.budget_mb, float) and s.recent_steps == 3
    assert s.joint_names == ("shoulder", "elbow", "wrist", "gripper")
    changed = POLICY_PARAMS.apply(s, {"memory.vram_budget_mb": 0.5, "gate.threshold": 0.7})
    assert changed.budget_mb == 0.5 and changed.gate_threshold == 0.7 and s.budget_mb == 2.0


def test_descriptors_carry_ranges_read_only_and_refuse_out_of_range(node):
    POLICY_PARAMS.declare(node)
    desc = node.describe_parameter("memory.vram_budget_mb")
    assert not desc.read_only and desc.floating_point_range[0].from_value == pytest.approx(0.001)
    assert node.describe_parameter("model.path").read_only
    assert not node.set_parameters([Parameter("memory.vram_budget_mb", value=-1.0)])[0].successful
    assert not node.set_parameters([Parameter("model.path", value="/x")])[0].successful
    assert POLICY_PARAMS.check("memory.eviction", "lru") and not POLICY_PARAMS.check("memory.eviction", "h2o")


def test_the_readme_table_is_the_table():
    table = POLICY_PARAMS.markdown()
    assert table in README.read_text(), "README's parameter table is out of date: paste POLICY_PARAMS.markdown()"
    for spec in POLICY_PARAMS.specs:
        assert f"`{spec.name}`" in table


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# What the shipped params file sets on purpose (the launch file's example task); everything else
# in it must be the table's default, so the two cannot drift apart.
YAML_SETS = {"instruction"}


def test_policy_yaml_names_only_declared_parameters_at_their_defaults():
    import yaml

    config = Path(__file__).resolve().parents[2] / "config" / "policy.yaml"
    values = _flatten(yaml.safe_load(config.read_text())["/**"]["ros__parameters"])
    # The README says the shipped file comments each parameter: every one is there.
    missing = [spec.name for spec in POLICY_PARAMS.specs if spec.name not in values]
    assert not missing, f"policy.yaml lacks {missing}"
    for name, value in values.items():
        assert name in POLICY_PARAMS.by_name, f"policy.yaml sets {name}, which the node does not declare"
        if name in YAML_SETS:
            continue
        default = POLICY_PARAMS.by_name[name].default
        if isinstance(default, float):
            assert float(value) == pytest.approx(default), name
        elif isinstance(default, list):
            assert list(value) == default, name
        else:
            assert value == default, name
