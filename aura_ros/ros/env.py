"""ROS environment settings that keep every packet of aura_ros on this machine.

Default Jazzy discovery multicasts off the machine; every script, test and CI run of this
project uses ``local_ros_env()``: localhost-only discovery, its own domain id, logs inside
the build tree, and the shipped Fast DDS profile (a shared-memory segment that holds a
full camera frame).
"""
from __future__ import annotations

import os
import random
import select
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_PKG = Path(__file__).resolve().parents[1]


def fastdds_profile(name: str = "fastdds.xml") -> Path | None:
    """A shipped Fast DDS profile (``fastdds.xml``: one host; ``fastdds_network.xml``: peers on
    other hosts): the source tree's config/ or the colcon share dir."""
    for candidate in (_PKG.parent / "config" / name,):
        if candidate.is_file():
            return candidate
    try:
        from ament_index_python.packages import get_package_share_directory

        shared = Path(get_package_share_directory("aura_ros")) / "config" / name
        return shared if shared.is_file() else None
    except Exception:  # no ament index (laptop route without a share dir): no profile
        return None


def local_ros_env(domain_id: int | None = None, log_dir: str | os.PathLike | None = None,
                  base: dict | None = None) -> dict[str, str]:
    """Return a copy of ``base`` (default os.environ) with the local-only ROS settings."""
    env = dict(os.environ if base is None else base)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated in Jazzy; conflicts with the above
    if domain_id is None:
        domain_id = int(env.get("ROS_DOMAIN_ID", "") or (os.getpid() % 100) + 1)
    return _process_env(env, domain_id, log_dir, fastdds_profile())


def _process_env(env: dict[str, str], domain_id: int, log_dir, profile: Path | None) -> dict[str, str]:
    """What every ROS process of this project is given, whatever its discovery: the domain, the
    middleware, the log folder, a HOME, uncoloured logs off a terminal and the Fast DDS profile."""
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    log_dir = log_dir or env.get("ROS_LOG_DIR") or str(_PKG.parent / "build" / "ros_log")
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    env["ROS_LOG_DIR"] = str(log_dir)
    env.setdefault("HOME", str(Path.home()))
    if "RCUTILS_COLORIZED_OUTPUT" not in env and not output_is_terminal():
        # rcutils colours console lines when it thinks it writes to a terminal; a process whose
        # output goes to a file or a pipe (tests, tools, CI) must not write escape codes into logs.
        env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    if profile is not None:
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(profile)
    else:
        env.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)  # unset, never empty
    return env


def cross_host_env(static_peers: Iterable[str] = (), domain_id: int | None = None,
                   log_dir: str | os.PathLike | None = None, base: dict | None = None,
                   discovery_server: str | None = None, profile: str = "fastdds_network.xml") -> dict[str, str]:
    """The environment of a process whose peers are on other hosts (docs/cross_host.md): what a
    user exports on the policy's GPU host and on the robot.

    Discovery by multicast on the subnet (``ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET``) plus
    ``ROS_STATIC_PEERS`` (the other hosts' addresses, ';'-separated): the peers are found by
    unicast even where multicast does not pass (Wi-Fi, routed networks). With
    ``discovery_server`` ("ip:port", ROS_DISCOVERY_SERVER's format) the process is a client of a
    Fast DDS discovery server instead and no peers are listed. ``profile``: the Fast DDS profile
    from config/ (``fastdds_network.xml``: UDP only; ``fastdds.xml`` on a robot host that also
    moves raw frames between its own processes). The domain id must be the same on every host.
    """
    env = dict(os.environ if base is None else base)
    env.pop("ROS_LOCALHOST_ONLY", None)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SUBNET"
    if discovery_server:
        env["ROS_DISCOVERY_SERVER"] = discovery_server
        env.pop("ROS_STATIC_PEERS", None)
    else:
        env.pop("ROS_DISCOVERY_SERVER", None)
        peers = ";".join(p.strip() for p in static_peers if p.strip())
        if peers:
            env["ROS_STATIC_PEERS"] = peers
        else:
            env.pop("ROS_STATIC_PEERS", None)
    if domain_id is None:
        domain_id = int(env.get("ROS_DOMAIN_ID", "") or 0)
    return _process_env(env, domain_id, log_dir, fastdds_profile(profile))


def apply_local_ros_env(domain_id: int | None = None) -> dict[str, str]:
    """Set the local-only settings in this process (before ``rclpy.init``)."""
    env = local_ros_env(domain_id)
    for key in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "RMW_IMPLEMENTATION", "ROS_LOG_DIR", "HOME",
                "RCUTILS_COLORIZED_OUTPUT"):
        if key in env:
            os.environ[key] = env[key]
    os.environ.pop("ROS_LOCALHOST_ONLY", None)
    if "FASTRTPS_DEFAULT_PROFILES_FILE" in env:
        os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = env["FASTRTPS_DEFAULT_PROFILES_FILE"]
    else:
        os.environ.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)
    return env


def output_is_terminal() -> bool:
    """Whether this process's stdout and stderr are both terminals (then colours are wanted)."""
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


# ---------------------------------------------------------------------------- test domain choice
#
# Why probe: a test run on a robot shares the host with the live system. A domain id derived from
# the pid (or inherited from the shell, which on a robot is the live system's) can be the live
# system's domain, and then the tests' publishers feed the live nodes. So the test session joins
# a few candidate domains with a short-lived participant each (localhost discovery, as every
# participant of this project), waits for discovery, and takes a domain in which it met nobody;
# it stays in that domain (one idle node) until the session ends, so a second test run probing
# later sees the domain taken. Two runs probing at the same moment see each other's probes and
# both move on to other candidates.

# 1..101: domain 0 is everyone's default, and ids above 101 can map DDS ports into the Linux
# ephemeral range (32768+), see the ROS 2 "domain id" concept page.
TEST_DOMAINS = range(1, 102)
# Measured here (localhost, the shipped profile on the probe's side, a foreign node without it):
# the foreign node's endpoints were seen 0-1.8 s after joining, most within 0.3 s.
PROBE_WAIT_S = float(os.environ.get("AURA_TEST_DOMAIN_PROBE_S", "3.5"))


@dataclass
class DomainClaim:
    """A domain id held by a helper process (one idle node in it) until release()."""

    domain_id: int
    proc: subprocess.Popen

    def release(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # the helper exits when its stdin closes
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self) -> DomainClaim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class NoFreeDomain(RuntimeError):
    """Every candidate domain had other participants in it (or the probe could not run)."""


def claim_free_domain(candidates: Iterable[int] | None = None, exclude: Iterable[int] = (),
                      wait_s: float = PROBE_WAIT_S, batch: int = 8, rounds: int = 4,
                      seed: int | None = None) -> DomainClaim:
    """Find a ROS domain on this host with no other participant and hold it; see the note above.

    ``candidates`` (default 1..101) are tried in a random order (seeded by ``seed``, default the
    pid), ``batch`` at a time; ``exclude`` are never taken, nor 0 (everyone's default) nor this
    process's ROS_DOMAIN_ID (on a robot, the shell's is the live system's). Each round costs
    about ``wait_s`` seconds. Raises NoFreeDomain when no candidate was free.
    """
    inherited = os.environ.get("ROS_DOMAIN_ID", "").strip()
    excluded = {0, *(int(d) for d in exclude), *([int(inherited)] if inherited.isdigit() else [])}
    pool = [d for d in (TEST_DOMAINS if candidates is None else candidates) if d not in excluded]
    random.Random(os.getpid() if seed is None else seed).shuffle(pool)
    env = local_ros_env(domain_id=0)  # localhost discovery, log dir, profile; the probe sets its own ids
    for _ in range(rounds):
        if not pool:
            break
        chunk, pool = pool[:batch], pool[batch:]
        proc = subprocess.Popen([sys.executable, "-m", "aura_ros.ros.env", "--claim", str(wait_s),
                                 *map(str, chunk)], env=env, cwd=_PKG.parent, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        line = _read_line(proc, timeout=wait_s + 60)
        if line.startswith("claimed "):
            return DomainClaim(int(line.split()[1]), proc)
        proc.kill()
        proc.wait(timeout=10)
        if not line.startswith("busy"):
            raise NoFreeDomain(f"the domain probe failed: {line or 'no answer'}")
    raise NoFreeDomain(f"every candidate domain had other participants in it (excluded: {sorted(excluded)})")


def probe_domains(domain_ids: Iterable[int], wait_s: float = PROBE_WAIT_S) -> dict[int, list[str]]:
    """The nodes other than the probe's own seen in each domain (a subprocess, localhost discovery)."""
    ids = list(domain_ids)
    out = subprocess.run([sys.executable, "-m", "aura_ros.ros.env", "--probe", str(wait_s), *map(str, ids)],
                         env=local_ros_env(domain_id=0), cwd=_PKG.parent, capture_output=True, text=True,
                         timeout=wait_s + 60)
    if out.returncode != 0:
        raise RuntimeError(f"domain probe failed: {out.stderr[-2000:]}")
    seen: dict[int, list[str]] = {}
    for line in out.stdout.splitlines():
        domain, _, names = line.partition(":")
        seen[int(domain)] = names.split() if names.strip() else []
    return seen


# The helper runs as ``python -m aura_ros.ros.env`` from the folder above this package, so it
# is this very module (not another installed copy of aura_ros).


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            return proc.stdout.readline().strip()
        if proc.poll() is not None:
            return proc.stdout.readline().strip()
    return ""


def _join(domain_ids: list[int]):
    """One context and idle node per domain (no rosout, no parameter services)."""
    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    joined = {}
    for d in domain_ids:
        ctx = Context()
        rclpy.init(args=[], context=ctx, domain_id=d, signal_handler_options=SignalHandlerOptions.NO)
        node = rclpy.create_node(f"aura_domain_probe_{os.getpid()}_{d}", context=ctx, enable_rosout=False,
                                 start_parameter_services=False)
        joined[d] = (ctx, node)
    return joined


def _others(node) -> list[str]:
    """Other participants' nodes: from the node graph, and from the endpoints on every topic.

    Endpoints are discovered well before the node graph (which comes from a separate discovery
    topic, ~2 s on localhost); an endpoint whose node is not known yet counts as foreign too.
    """
    me = node.get_name()
    seen = {f"{ns.rstrip('/')}/{name}" for name, ns in node.get_node_names_and_namespaces() if name != me}
    for topic, _ in node.get_topic_names_and_types():
        for info in [*node.get_publishers_info_by_topic(topic), *node.get_subscriptions_info_by_topic(topic)]:
            if info.node_name != me:
                seen.add(f"{info.node_namespace.rstrip('/')}/{info.node_name}")
    return sorted(seen)


def _leave(joined: dict) -> None:
    for ctx, node in joined.values():
        node.destroy_node()
        ctx.try_shutdown()


def _main(argv: list[str]) -> int:
    mode, wait_s, ids = argv[0], float(argv[1]), [int(a) for a in argv[2:]]
    joined = _join(ids)
    seen: dict[int, list[str]] = {d: [] for d in ids}
    end = time.monotonic() + wait_s
    while True:  # a domain where anyone was seen at any moment of the wait is busy
        for d, (_ctx, node) in joined.items():
            seen[d] = sorted(set(seen[d]) | set(_others(node)))
        if time.monotonic() >= end or all(seen.values()):
            break
        time.sleep(0.1)
    if mode == "--probe":
        for d in ids:
            print(f"{d}: {' '.join(seen[d])}")
        _leave(joined)
        return 0
    free = [d for d in ids if not seen[d]]
    if not free:
        print("busy " + " ".join(f"{d}={','.join(seen[d])}" for d in ids), flush=True)
        _leave(joined)
        return 0
    keep = free[0]
    _leave({d: v for d, v in joined.items() if d != keep})
    print(f"claimed {keep}", flush=True)
    sys.stdin.read()  # hold the domain until the test session closes our stdin (or dies)
    _leave({keep: joined[keep]})
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
