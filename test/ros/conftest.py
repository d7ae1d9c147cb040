"""Fixtures for tests that drive a running policy node: ``started`` spawns node processes (killed
afterwards), ``operator`` is the test's own ROS side (see helpers.policy_process)."""
from __future__ import annotations

import pytest
import rclpy
from helpers.policy_process import NodeProcess, Operator


@pytest.fixture
def started(ros_env, tmp_path):
    procs: list[NodeProcess] = []

    def start(params: dict, name: str = "policy") -> NodeProcess:
        env = dict(ros_env)
        env["PYTHONWARNINGS"] = "default"  # a FutureWarning from transformers would show in the log
        procs.append(NodeProcess(params, env, tmp_path, name))
        return procs[-1]
    yield start
    for p in procs:
        p.kill()


@pytest.fixture
def operator():
    rclpy.init()
    op = Operator()
    yield op
    op.node.destroy_node()
    rclpy.try_shutdown()
