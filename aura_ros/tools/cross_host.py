"""Two "hosts" on this machine for the cross-host test and bench: the robot (the sim) and the
GPU host (the policy node) in two network namespaces joined by a veth pair, talking ROS 2 with the
discovery a user configures between real hosts (docs/cross_host.md).

Each namespace holds its loopback and its end of the veth pair (a /30 of 10.231.0.0/16) and no
default route: a packet sent in one, multicast included, can only reach the other namespace; no
interface of the machine is in either. Needs root and iproute2's ``ip netns``.

A watcher process per side writes what it sees as JSON lines (one event a line, ``t`` =
CLOCK_MONOTONIC, which the namespaces share; latencies from header stamps against the system
clock, which they share too):

    python -m aura_ros.tools.cross_host watch gpu OUT.jsonl --frames raw,jpeg   # the policy's steps,
                                                # diagnostics and commands; frames over the link
    python -m aura_ros.tools.cross_host watch robot OUT.jsonl   # commands as they reach the robot
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

NETNS_DIR = Path("/run/netns")
PREFIX = "aura-xh-"  # namespace names: aura-xh-<pid>-<random>-<robot|gpu>
LINK_UP_TIMEOUT_S = 10.0


def netns_unavailable() -> str | None:
    """Why two namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (ip netns add, veth pairs)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"{PREFIX}probe-{os.getpid()}-{secrets.token_hex(2)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` fails: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def _ip(*args: str) -> str:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def reap_stale_namespaces() -> list[str]:
    """Delete namespaces of earlier runs whose process is gone (a run killed before its teardown)."""
    try:
        names = _ip("netns", "list").split()
    except RuntimeError:
        return []
    gone = []
    for name in {n for n in names if n.startswith(PREFIX)}:
        pid = name[len(PREFIX):].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
            gone.append(name)
    return gone


def _operstate(host: Host) -> str:
    """The interface's operational state as the namespace sees it ("up" once it is running)."""
    out = subprocess.run(host.argv(["cat", f"/sys/class/net/{host.ifname}/operstate"]), capture_output=True,
                         text=True)
    return out.stdout.strip()


@dataclass
class Host:
    netns: str
    ifname: str
    address: str  # without the prefix length

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host's namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.netns, *argv]


@dataclass
class HostPair:
    """Two namespaces ``robot`` and ``gpu`` joined by a veth pair; ``with HostPair() as pair:``
    deletes them (and so the veth pair) on the way out, whatever happened inside."""

    subnet_octet: int = 0  # addresses 10.231.<octet>.1 (robot) and .2 (gpu), a /30
    tag: str = field(default_factory=lambda: f"{os.getpid()}-{secrets.token_hex(2)}")
    robot: Host = field(init=False)
    gpu: Host = field(init=False)
    created: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        short = self.tag.replace("-", "")[-8:]  # interface names: at most 15 characters
        self.robot = Host(f"{PREFIX}{self.tag}-robot", f"xr{short}", f"10.231.{self.subnet_octet}.1")
        self.gpu = Host(f"{PREFIX}{self.tag}-gpu", f"xg{short}", f"10.231.{self.subnet_octet}.2")

    def create(self) -> HostPair:
        reap_stale_namespaces()
        for host in (self.robot, self.gpu):
            _ip("netns", "add", host.netns)
            self.created.append(host.netns)
        # Both ends are made inside their namespaces: the pair never exists in the root namespace.
        _ip("link", "add", self.robot.ifname, "netns", self.robot.netns, "type", "veth",
            "peer", "name", self.gpu.ifname, "netns", self.gpu.netns)
        for host in (self.robot, self.gpu):
            _ip("-n", host.netns, "addr", "add", f"{host.address}/30", "dev", host.ifname)
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("-n", host.netns, "link", "set", host.ifname, "up")
        self.wait_running()
        return self

    def wait_running(self, timeout: float = LINK_UP_TIMEOUT_S) -> float:
        """Wait until both ends are operational (IFF_RUNNING); returns the monotonic time they were.

        Why: the kernel sets an interface running a moment after it is set up (up to ~1 s: link
        events are rate-limited machine-wide), and Fast DDS takes the addresses of the running
        interfaces once, when a participant starts. A node started in between announces only
        127.0.0.1 and never reaches the other host (seen here: every time a node started within
        ~1 s of the pair's creation). A real host has the same trap: docs/cross_host.md."""
        end = time.monotonic() + timeout
        pending = [self.robot, self.gpu]
        while pending:
            pending = [h for h in pending if _operstate(h) != "up"]
            if pending and time.monotonic() > end:
                raise RuntimeError(f"{[h.ifname for h in pending]} not running after {timeout:g} s")
            if pending:
                time.sleep(0.02)
        return time.monotonic()

    def delete(self) -> None:
        """Delete the namespaces (the veth pair goes with them). Safe to call twice."""
        while self.created:
            subprocess.run(["ip", "netns", "delete", self.created.pop()], capture_output=True)

    def __enter__(self) -> HostPair:
        try:
            return self.create()
        except BaseException:
            self.delete()
            raise

    def __exit__(self, *exc) -> None:
        self.delete()

    # ---------------------------------------------------------------- the link
    def cut(self) -> float:
        """Take the link down (the robot's end: the GPU end loses its carrier); returns the monotonic time."""
        _ip("-n", self.robot.netns, "link", "set", self.robot.ifname, "down")
        return time.monotonic()

    def restore(self) -> float:
        """Bring the link back; returns the monotonic time it was set up (packets pass from then
        on), after waiting until both ends are running again."""
        _ip("-n", self.robot.netns, "link", "set", self.robot.ifname, "up")
        up = time.monotonic()
        self.wait_running()
        return up

    def link_bytes(self, host: Host) -> tuple[int, int]:
        """(rx, tx) bytes of the host's end of the veth pair."""
        info = json.loads(_ip("-n", host.netns, "-j", "-s", "link", "show", "dev", host.ifname))[0]
        stats = info.get("stats64") or info["stats"]
        return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])

    def isolation_problems(self) -> list[str]:
        """What would let a packet out of the pair: another interface, or any route but the /30's."""
        problems = []
        for host in (self.robot, self.gpu):
            links = {entry["ifname"] for entry in json.loads(_ip("-n", host.netns, "-j", "link", "show"))}
            if links != {"lo", host.ifname}:
                problems.append(f"{host.netns}: interfaces {sorted(links)}")
            for route in json.loads(_ip("-n", host.netns, "-j", "-4", "route", "show", "table", "all")):
                dst = route.get("dst", "")
                if route.get("type", "unicast") == "unicast" and dst not in (f"10.231.{self.subnet_octet}.0/30",):
                    problems.append(f"{host.netns}: route {route}")
        return problems


# ------------------------------------------------------------------------ processes

DISCOVERY_PORT = 11811  # Fast DDS's default discovery server port


def discovery_server_argv(address: str, port: int = DISCOVERY_PORT, server_id: int = 0) -> list[str] | None:
    """A Fast DDS discovery server listening on ``address:port`` (what ``fastdds discovery -i 0 -l
    ADDRESS -p PORT`` runs), or None where this install has none. The ROS wheels ship the binary
    beside the interpreter; their ``fastdds`` wrapper script needs the system python3, so the
    binary is called directly (it needs the venv's LD_LIBRARY_PATH, which a Python process of
    the venv has in its environment)."""
    for candidate in (Path(sys.executable).parent / "fast-discovery-server", shutil.which("fast-discovery-server")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return [str(candidate), "-i", str(server_id), "-l", address, "-p", str(port)]
    return None


def spawn(host: Host, argv: list[str], env: dict, log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``argv`` in ``host``'s namespace in a session of its own, output to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(host.argv(argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


FRAME_KINDS = ("raw", "jpeg")  # sensor_msgs/Image on image, CompressedImage on image/compressed


def watch_argv(side: str, out: Path, frames: tuple[str, ...] = FRAME_KINDS) -> list[str]:
    """The watcher of one side; on the GPU side, ``frames`` are the frame topics it also reads
    (each reader gets its own copy over the link: read only what the node reads)."""
    return [sys.executable, "-m", "aura_ros.tools.cross_host", "watch", side, str(out),
            *(["--frames", ",".join(frames)] if frames else [])]


class EventLog:
    """Reads a watcher's JSON lines as they are written; ``poll()`` returns the new events."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.events: list[dict] = []
        self._offset = 0
        self._partial = ""

    def poll(self) -> list[dict]:
        try:
            with open(self.path) as f:
                f.seek(self._offset)
                chunk = f.read()
                self._offset = f.tell()
        except FileNotFoundError:
            return []
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()
        new = [json.loads(line) for line in lines if line.strip()]
        self.events += new
        return new

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["k"] == kind]


def _stamp_s(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def _watch(side: str, out_path: str, frames: tuple[str, ...]) -> None:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from sensor_msgs.msg import CompressedImage, Image
    from trajectory_msgs.msg import JointTrajectory

    from aura_ros.core import topics
    from aura_ros.msg import GateStats
    from aura_ros.ros import qos

    rclpy.init()
    node = Node(f"aura_xhost_watch_{side}")
    out = open(out_path, "a", buffering=1)

    def emit(kind: str, **values) -> None:
        out.write(json.dumps({"t": round(time.monotonic(), 4), "k": kind, **values}) + "\n")

    def on_cmd(msg: JointTrajectory) -> None:
        emit("cmd", stamp=round(_stamp_s(msg.header), 4), lat_ms=round((time.time() - _stamp_s(msg.header)) * 1e3, 2))

    node.create_subscription(JointTrajectory, topics.REL_COMMANDS["joint_trajectory"], on_cmd, qos.COMMANDS)
    if side == "gpu":
        def on_gate(msg) -> None:
            emit("gate", step=int(msg.step), oldest=int(msg.oldest_kept_step), ms=round(float(msg.step_latency_ms), 2),
                 stamp=round(_stamp_s(msg.header), 4))

        def on_diag(msg: DiagnosticArray) -> None:
            for s in msg.status:
                if s.name.startswith("aura_ros"):
                    values = {kv.key: kv.value for kv in s.values}
                    level = s.level[0] if isinstance(s.level, bytes) else int(s.level)  # a byte field in rclpy
                    emit("diag", level=level, msg=s.message,
                         **{k: int(values.get(k, 0)) for k in ("held_ticks", "hold_commands", "frames", "steps")})

        def on_frame(msg, kind: str) -> None:
            emit(kind, bytes=len(msg.data), lat_ms=round((time.time() - _stamp_s(msg.header)) * 1e3, 2))

        node.create_subscription(GateStats, topics.resolve(topics.REL_GATE_STATS), on_gate, qos.STATS)
        node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, on_diag, qos.DIAGNOSTICS)
        if "raw" in frames:
            node.create_subscription(Image, topics.REL_IMAGE, lambda m: on_frame(m, "frame"), qos.SENSOR)
        if "jpeg" in frames:
            node.create_subscription(CompressedImage, topics.REL_IMAGE_COMPRESSED,
                                     lambda m: on_frame(m, "frame_jpeg"), qos.SENSOR)
    emit("ready", side=side)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, Exception):  # SIGINT / SIGTERM from the harness: just stop
        pass
    finally:
        out.close()
        node.destroy_node()
        rclpy.try_shutdown()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m aura_ros.tools.cross_host")
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("watch", help="write what one side sees as JSON lines")
    w.add_argument("side", choices=("gpu", "robot"))
    w.add_argument("out")
    w.add_argument("--frames", default="", help="gpu side: also the frames arriving over the link, "
                                                "comma-separated from " + ",".join(FRAME_KINDS))
    args = parser.parse_args(argv)
    _watch(args.side, args.out, tuple(f for f in args.frames.split(",") if f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
