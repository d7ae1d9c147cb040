"""The test session's ROS environment: a domain no running system uses, logs without colour codes.

Real processes: a foreign ROS node publishing in domain X (localhost discovery) must make the
chooser take another domain; a node writing to a pseudo-terminal (what ``ros2 launch`` gives its
nodes with emulate_tty) must write no ANSI escape codes once the environment says so.
"""
from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aura_ros.ros import env as ros_env_module
from aura_ros.ros.env import NoFreeDomain, claim_free_domain, local_ros_env, probe_domains

FOREIGN = """
import sys, time, rclpy
from std_msgs.msg import String
rclpy.init()
node = rclpy.create_node("foreign_live_node")
pub = node.create_publisher(String, "/live_system_topic", 10)
print("ready", flush=True)
while True:
    pub.publish(String(data="live"))
    time.sleep(0.1)
"""


def _fresh_pair(salt: int = 0) -> tuple[int, int]:
    mine = int(os.environ["ROS_DOMAIN_ID"])
    pool = [d for d in range(20, 102) if d != mine]
    rng = __import__("random").Random(os.getpid() + 7919 * salt + time.monotonic_ns())
    rng.shuffle(pool)
    seen = probe_domains(pool[:6])
    free = [d for d in pool[:6] if not seen[d]]
    assert len(free) >= 2, seen
    return free[0], free[1]


def _with_fresh_pairs(body, attempts: int = 3) -> None:
    """Run ``body(pair)``; where another test run on this host took one of the pair's domains in
    the meantime (NoFreeDomain, and a probe confirms a participant there), again with a new pair."""
    for attempt in range(attempts):
        pair = _fresh_pair(attempt)
        try:
            return body(pair)
        except NoFreeDomain:
            seen = probe_domains(pair)
            if attempt == attempts - 1 or not any(seen.values()):
                raise


@pytest.fixture
def free_pair() -> tuple[int, int]:
    """Two domains other than this session's (the probe below checks they are empty)."""
    mine = int(os.environ["ROS_DOMAIN_ID"])
    pool = [d for d in range(20, 102) if d != mine]
    rng = __import__("random").Random(os.getpid() + time.monotonic_ns())
    rng.shuffle(pool)
    seen = probe_domains(pool[:6])
    free = [d for d in pool[:6] if not seen[d]]
    assert len(free) >= 2, seen
    return free[0], free[1]


def _wait_ready(proc) -> None:
    end = time.monotonic() + 30
    while time.monotonic() < end and "ready" not in proc.output():
        assert proc.alive(), proc.output()
        time.sleep(0.05)
    assert "ready" in proc.output(), proc.output()


def test_the_chooser_never_takes_a_domain_with_a_foreign_participant(run_python, ros_env, free_pair):
    busy, free = free_pair
    with run_python.spawn(FOREIGN, name="foreign", env={**ros_env, "ROS_DOMAIN_ID": str(busy)}) as foreign:
        _wait_ready(foreign)
        seen = probe_domains([busy])
        assert seen[busy], seen  # a participant (its node name may not have arrived yet)
        # Another test run on this host may take a domain at any moment (it claims one, its own
        # tests start nodes): so the chooser gets several candidates that were free a moment ago,
        # and where it finds none free, each of them must really have had a participant by then.
        others = [d for d in range(20, 102) if d not in (busy, int(os.environ["ROS_DOMAIN_ID"]))]
        __import__("random").Random(os.getpid() + 1).shuffle(others)
        candidates = [free] + [d for d, names in probe_domains(others[:6]).items() if not names][:3]
        for seed in range(2):  # whichever order the candidates are tried in (seeds 0, 1: both orders)
            try:
                with claim_free_domain(candidates=[busy, *candidates], seed=seed) as claim:
                    assert claim.domain_id in candidates
            except NoFreeDomain:
                now = probe_domains(candidates)
                assert all(now[d] for d in candidates), f"no domain taken though some were free: {now}"
        with pytest.raises(NoFreeDomain, match="other participants"):
            claim_free_domain(candidates=[busy])
        assert foreign.alive()  # the probe only listened


def test_a_claimed_domain_is_taken_for_a_second_run_and_free_after_release():
    def body(pair):
        first_choice, other = pair
        claim = claim_free_domain(candidates=[first_choice], seed=0)
        try:
            assert claim.domain_id == first_choice
            with claim_free_domain(candidates=[first_choice, other], seed=0) as second:
                assert second.domain_id == other  # a second test run does not share the first one's domain
        finally:
            claim.release()
        assert claim.proc.poll() is not None
        with claim_free_domain(candidates=[first_choice]) as again:  # released: free again
            assert again.domain_id == first_choice

    _with_fresh_pairs(body)


def test_excluded_domains_are_never_candidates(monkeypatch):
    def body(pair):
        a, b = pair
        with claim_free_domain(candidates=[a, b], exclude=[a], seed=0) as claim:
            assert claim.domain_id == b

    _with_fresh_pairs(body)
    a = _fresh_pair(5)[0]
    with pytest.raises(NoFreeDomain):
        claim_free_domain(candidates=[a], exclude=[a])
    # The shell's domain (on a robot: the live system's, even while it is down) and 0 never.
    monkeypatch.setenv("ROS_DOMAIN_ID", str(a))
    with pytest.raises(NoFreeDomain):
        claim_free_domain(candidates=[a, 0])


def test_this_session_holds_its_domain_localhost_only():
    domain = int(os.environ["ROS_DOMAIN_ID"])
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST" and "ROS_LOCALHOST_ONLY" not in os.environ
    # The session's claim node holds it: a probe (another test run) finds the domain taken.
    assert probe_domains([domain])[domain]


# ------------------------------------------------------------------ colour codes in logs

NODE_LOGS = """
import rclpy
rclpy.init()
node = rclpy.create_node("colour_check")
node.get_logger().info("an info line")
node.get_logger().warning("a warning line")
node.get_logger().error("an error line")
node.destroy_node()
rclpy.shutdown()
"""


def _run_on_a_terminal(env: dict, cwd: Path) -> bytes:
    """Run the node with a pseudo-terminal as stdout/stderr (as ros2 launch's emulate_tty does)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", NODE_LOGS], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    end = time.monotonic() + 60
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=30) == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return out


def _not_a_terminal(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys, "stderr", io.StringIO())


def test_output_to_files_gets_no_colour_setting_for_terminals(monkeypatch):
    monkeypatch.delenv("RCUTILS_COLORIZED_OUTPUT", raising=False)
    _not_a_terminal(monkeypatch)
    assert local_ros_env(7)["RCUTILS_COLORIZED_OUTPUT"] == "0"
    assert local_ros_env(7, base={**os.environ, "RCUTILS_COLORIZED_OUTPUT": "1"})["RCUTILS_COLORIZED_OUTPUT"] == "1"
    monkeypatch.setattr(ros_env_module, "output_is_terminal", lambda: True)
    assert "RCUTILS_COLORIZED_OUTPUT" not in local_ros_env(7)  # a person at a terminal keeps colours


def test_a_node_log_has_no_escape_codes(monkeypatch, tmp_path):
    monkeypatch.delenv("RCUTILS_COLORIZED_OUTPUT", raising=False)
    _not_a_terminal(monkeypatch)
    domain = int(os.environ["ROS_DOMAIN_ID"])
    env = local_ros_env(domain, log_dir=tmp_path / "plain")
    plain = _run_on_a_terminal(env, tmp_path)
    assert b"an error line" in plain and b"\x1b" not in plain, plain
    files = list((tmp_path / "plain").rglob("*.log"))
    assert files and all(b"\x1b" not in f.read_bytes() for f in files)
    assert any(b"an error line" in f.read_bytes() for f in files)
    # Control: the same node, told to colour, writes escape codes to the terminal (the check can fail).
    coloured = _run_on_a_terminal({**local_ros_env(domain, log_dir=tmp_path / "colour"),
                                   "RCUTILS_COLORIZED_OUTPUT": "1"}, tmp_path)
    assert b"\x1b[" in coloured, coloured
