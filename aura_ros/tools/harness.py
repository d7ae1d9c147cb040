"""One process harness for the tools that run the nodes as separate processes (demo, soak):
a private localhost domain held for the run, nodes in sessions of their own, and a stop that
behaves like a terminal's Ctrl-C (SIGINT to the process group), then kills after a grace period.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STOP_GRACE_S = 10.0


def ros_args(params: dict) -> list[str]:
    out = ["--ros-args"]
    for k, v in params.items():
        out += ["-p", f"{k}:={v}"]
    return out


def start_process(module: str, params: dict, env: dict, log: Path) -> subprocess.Popen:
    """Run ``python -m module --ros-args -p k:=v ...`` in its own session, output to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", module, *ros_args(params)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def stop_process(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> int:
    """SIGINT to the process group (what Ctrl-C does), then SIGKILL after ``grace_s``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@contextmanager
def private_domain() -> Iterator[dict[str, str]]:
    """The local ROS environment on a domain with no other participant on this host, held (and
    applied to this process) for the duration: a demo or soak never talks to a live robot."""
    from aura_ros.ros.env import apply_local_ros_env, claim_free_domain

    saved = dict(os.environ)
    try:
        with claim_free_domain() as claim:
            yield apply_local_ros_env(domain_id=claim.domain_id)
    finally:
        # Only for the duration: a later rclpy.init in this process (a test's own node, a second
        # run) must not land in the domain that was released.
        os.environ.clear()
        os.environ.update(saved)
