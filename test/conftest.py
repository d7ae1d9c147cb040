"""Session-wide test set-up: every ROS participant of a test run stays on this machine, in a
ROS domain that no running system on this host uses.

The local ROS environment is applied here, at conftest import, which pytest does before it
imports any test module: so before any test imports rclpy, and before any ``rclpy.init()``
(rcl reads ROS_DOMAIN_ID and the discovery range at init).

The domain id is not derived from the pid nor taken from the shell: on a robot the shell's
ROS_DOMAIN_ID is the live system's, and a pid-derived id can equal it. ``claim_free_domain``
joins a few candidate domains with a short-lived participant each (localhost discovery), takes
one in which it met nobody, and keeps one idle node there for the whole session, so that a second
test run (another terminal, CI next to a developer) sees it taken (see aura_ros/ros/env.py).
The shell's domain id and 0 (everyone's default) are never candidates. Discovery stays
localhost-only (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST): nothing leaves the machine.
"""
from __future__ import annotations

import os

import pytest
from helpers.ros_proc import PythonRunner

from aura_ros.ros.env import apply_local_ros_env, claim_free_domain, local_ros_env


def _claim_test_domain():
    inherited = os.environ.get("ROS_DOMAIN_ID", "")
    exclude = {0} | ({int(inherited)} if inherited.isdigit() else set())
    try:
        claim = claim_free_domain(exclude=exclude)
    except Exception as exc:  # noqa: BLE001 (no working rclpy: ROS tests fail on their own; say why here)
        # Still never the shell's domain; the header shows that this one was not probed.
        fallback = next(d for d in (1 + (os.getpid() + i) % 101 for i in range(102)) if d not in exclude)
        return None, fallback, f"NOT PROBED ({exc}); fallback {fallback}"
    return claim, claim.domain_id, f"probed on this host, no other participant (excluded {sorted(exclude)})"


_DOMAIN_CLAIM, TEST_DOMAIN_ID, _DOMAIN_CHOICE = _claim_test_domain()
apply_local_ros_env(TEST_DOMAIN_ID)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _DOMAIN_CLAIM is not None:
        _DOMAIN_CLAIM.release()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than ~10 s (e.g. a colcon build); "
                                       "deselect with -m 'not slow'")


def pytest_report_header(config: pytest.Config) -> str:
    return (f"ROS: ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']} ({_DOMAIN_CHOICE}) "
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


@pytest.fixture
def observer():
    """A node of this process in the session's domain, to watch and poke nodes in other processes."""
    import time

    import rclpy
    from rclpy.node import Node

    rclpy.init()
    node = Node(f"observer_{time.monotonic_ns()}")
    yield node
    node.destroy_node()
    rclpy.try_shutdown()

