"""Session-wide test set-up: every ROS participant of a test run stays on this machine.

The local ROS environment is applied here, at conftest import, which pytest does before it
imports any test module: so before any test imports rclpy, and before any ``rclpy.init()``
(rcl reads ROS_DOMAIN_ID and the discovery range at init). The domain id comes from the pid:
two test runs at the same time (two terminals, CI next to a developer) then rarely share a
domain, and cross-process tests also use unique topic names, so a clash cannot mix their data.
"""
from __future__ import annotations

import os

import pytest

from aura_ros.ros.env import apply_local_ros_env, local_ros_env
from helpers.ros_proc import PythonRunner

# 1..101: domain 0 is everyone's default, and ids above 101 can map DDS ports into the Linux
# ephemeral range (32768+), see the ROS 2 "domain id" concept page.
TEST_DOMAIN_ID = 1 + os.getpid() % 101
apply_local_ros_env(TEST_DOMAIN_ID)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than ~10 s (e.g. a colcon build); "
                                       "deselect with -m 'not slow'")


def pytest_report_header(config: pytest.Config) -> str:
    return (f"ROS: ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']} "
            f"ROS_AUTOMATIC_DISCOVERY_RANGE={os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE']} "
            f"FASTRTPS_DEFAULT_PROFILES_FILE={os.environ.get('FASTRTPS_DEFAULT_PROFILES_FILE', '(unset)')}")


@pytest.fixture
def ros_env() -> dict[str, str]:
    """Environment for a ROS subprocess: this session's domain, localhost-only, logs in build/.

    A fresh copy per test, so a test may add to it freely.
    """
    return local_ros_env(TEST_DOMAIN_ID)


@pytest.fixture
def run_python(ros_env: dict[str, str], tmp_path) -> PythonRunner:
    """Runs Python code in a fresh interpreter (this venv) with ``ros_env``, cwd ``tmp_path``.

    ``run_python.run(code, *args, timeout=...)`` waits for it; ``with run_python.spawn(code,
    *args, name=...) as proc:`` runs it in the background and always stops it afterwards.
    """
    return PythonRunner(env=ros_env, cwd=tmp_path)
