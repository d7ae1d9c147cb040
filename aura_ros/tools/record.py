"""`aura-ros record`: record topics to a rosbag2 bag (MCAP) where rosbag2 is not installed.

    aura-ros record --out demos/run1 --topics /image /wrist/image /joint_states /joint_trajectory /instruction
    python -m aura_ros.tools.record ...     # the same, without loading the other commands (starts in < 1 s)

On a robot with ROS 2 use ``ros2 bag record`` (see config/record_qos.yaml); this is the same job
for a machine with the ROS wheels only (rosbag2 is not among them), so that the path from a
teleoperated robot to training (``aura_ros.data.bags``) can run and be tested here. The bag reads
back with ``rosbags`` and with ROS 2's own tools.

What it does, as rosbag2 does:
- one raw subscription per topic (the CDR bytes as received, not re-encoded), created once the
  topic's first publisher is seen: its type comes from the graph; its QoS from the publishers:
  reliable if every publisher is, transient local if every publisher is (a latched instruction
  published before the recorder started is in the bag), a deep queue (RECORD_DEPTH) so that a
  moment's stall loses nothing;
- each message stamped with its receive time (the middleware's reception timestamp, taken as the
  message arrives), and written in that order: messages wait HOLD_NS before they are written,
  because the executor takes them topic by topic, not in the order they arrived;
- rosbag2 MCAP (storage version 9), with the message definitions and the publishers' offered QoS.

It stops on SIGINT/SIGTERM (Ctrl-C), after ``duration_s`` or after ``until_results`` messages on
``results_topic``; either way the bag is closed and whole. A stop by count or duration keeps
spinning ``DRAIN_S`` more to take what is already on its way, and writes only messages received
up to the stop (the N-th result's receive time, or the end of the duration): with
``until_results`` the bag ends with the last result, so a task that began after it (its
instruction goes out right after the result) is not in the bag half-done.
"""
from __future__ import annotations

import argparse
import heapq
import importlib
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

RECORD_DEPTH = 1000
DRAIN_S = 0.5
HOLD_NS = 300_000_000  # a received message is written once it is this old (receive order; see flush)
DISCOVERY_PERIOD_S = 0.1
DEFAULT_RESULTS_TOPIC = "/task/result"
_INFINITE = (2147483647, 4294967295)  # how rosbag2 writes an infinite QoS duration


class RecordError(Exception):
    """A recording that cannot start (the output exists, a topic name is malformed); one line."""


@dataclass
class RecordResult:
    out: Path
    counts: dict[str, int]
    types: dict[str, str]
    seconds: float
    never_seen: list[str] = field(default_factory=list)  # topics that never had a publisher
    skipped: dict[str, str] = field(default_factory=dict)  # topic -> why it was not recorded
    stopped_by: str = "signal"  # "signal", "duration", "results"


def _topic(name: str) -> str:
    name = name.strip()
    if not name or " " in name:
        raise RecordError(f"not a topic name: {name!r}")
    return name if name.startswith("/") else "/" + name


def _qos_time(duration) -> object:
    from rosbags.interfaces import QosTime

    ns = int(duration.nanoseconds)
    sec, nsec = divmod(ns, 10**9)
    return QosTime(*_INFINITE) if ns <= 0 or sec > _INFINITE[0] else QosTime(sec, nsec)


def _offered(profile) -> object:
    """An rclpy QoSProfile as rosbags' Qos (the same enumeration values as rmw's)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability

    return Qos(QosHistory(int(profile.history)), int(profile.depth), QosReliability(int(profile.reliability)),
               QosDurability(int(profile.durability)), _qos_time(profile.deadline), _qos_time(profile.lifespan),
               QosLiveliness(int(profile.liveliness)), _qos_time(profile.liveliness_lease_duration),
               bool(profile.avoid_ros_namespace_conventions))


def subscription_qos(offered: list):
    """rosbag2's adaptive QoS: reliable / transient local only where every publisher offers it."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliable = bool(offered) and all(p.reliability == ReliabilityPolicy.RELIABLE for p in offered)
    latched = bool(offered) and all(p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in offered)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=RECORD_DEPTH,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


def _message_class(msgtype: str):
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def _say(line: str) -> None:
    print(line, flush=True)  # a recorder's lines are read from a log file while it runs


def make_recorder(out: Path, topic_names: list[str], log: Callable[[str], None] = _say,
                  until_results: int | None = None, results_topic: str = DEFAULT_RESULTS_TOPIC):
    """A Node that records ``topic_names`` to the new bag ``out``: call ``flush(upto_ns)`` as it
    spins, ``close()`` when done (see ``record`` for the loop)."""
    from rclpy.node import Node
    from rosbags.rosbag2 import StoragePlugin, Writer

    from aura_ros.tools.replay import make_typestore

    class Recorder(Node):
        def __init__(self) -> None:
            super().__init__(f"aura_record_{time.monotonic_ns() % 10**9}")
            self.out = out
            self.pending = list(dict.fromkeys(topic_names))
            self.typestore = make_typestore()
            self.writer = Writer(out, version=9, storage_plugin=StoragePlugin.MCAP)
            self.writer.open()
            self.counts: Counter[str] = Counter()
            self.types: dict[str, str] = {}
            self.skipped: dict[str, str] = {}
            self.cut_ns: int | None = None  # set: messages received after it are not written
            self.results_seen = 0
            # Received messages wait here, ordered by receive time, until flush() writes them: the
            # executor takes them topic by topic, not in the order they arrived, and a stop at the
            # N-th result must cut by receive time.
            self._held: list[tuple[int, int, str, object, bytes]] = []
            self._seq = 0
            self._subs = []
            self.create_timer(DISCOVERY_PERIOD_S, self._discover)
            self._discover()

        def _discover(self) -> None:
            for topic in list(self.pending):
                infos = self.get_publishers_info_by_topic(topic)
                if not infos:
                    continue
                self.pending.remove(topic)
                types = sorted({i.topic_type for i in infos})
                msgtype = types[0]
                if len(types) > 1:
                    log(f"record: {topic} has publishers of several types {types}; recording {msgtype}")
                    infos = [i for i in infos if i.topic_type == msgtype]
                try:
                    cls = _message_class(msgtype)
                    self.typestore.get_msgdef(msgtype)
                except (ImportError, AttributeError, KeyError, ValueError) as exc:
                    self.skipped[topic] = f"type {msgtype} unknown here ({type(exc).__name__})"
                    log(f"record: not recording {topic}: {self.skipped[topic]}")
                    continue
                offered = [i.qos_profile for i in infos]
                qos = subscription_qos(offered)
                conn = self.writer.add_connection(topic, msgtype, typestore=self.typestore,
                                                  offered_qos_profiles=[_offered(p) for p in offered])
                self.types[topic] = msgtype
                self._subs.append(self.create_subscription(cls, topic, self._holder_for(topic, conn), qos, raw=True))
                log(f"record: {topic} ({msgtype}, {qos.reliability.name.lower()}, {qos.durability.name.lower()})")

        def _holder_for(self, topic: str, conn) -> Callable:
            def hold(raw: bytes, info) -> None:  # two arguments: rclpy passes the message info too
                # The middleware's reception time (system clock), taken as the message arrived.
                t_ns = int(info.get("received_timestamp", 0)) if isinstance(info, dict) else 0
                self._seq += 1
                heapq.heappush(self._held, (t_ns or time.time_ns(), self._seq, topic, conn, raw))
            return hold

        def flush(self, upto_ns: int | None = None) -> None:
            """Write the held messages received up to ``upto_ns`` (None: all), in receive order."""
            while self._held and (upto_ns is None or self._held[0][0] <= upto_ns):
                t_ns, _, topic, conn, raw = heapq.heappop(self._held)
                if self.cut_ns is not None and t_ns > self.cut_ns:
                    continue
                self.writer.write(conn, t_ns, raw)
                self.counts[topic] += 1
                if until_results and topic == results_topic and self.cut_ns is None:
                    self.results_seen += 1
                    if self.results_seen >= until_results:
                        self.cut_ns = t_ns

        def close(self) -> None:
            for sub in self._subs:
                self.destroy_subscription(sub)
            self._subs.clear()
            self.writer.close()

    return Recorder()


def record(out: Path, topic_names: list[str], duration_s: float | None = None, until_results: int | None = None,
           results_topic: str = DEFAULT_RESULTS_TOPIC, log: Callable[[str], None] = _say,
           args: list[str] | None = None) -> RecordResult:
    """Record until a signal, ``duration_s`` or ``until_results`` (see the module docstring)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from aura_ros.ros.signals import ignore_further_signals, stop_on_first_signal

    out = Path(out)
    if out.exists():
        raise RecordError(f"{out} exists: choose another --out (a bag is never overwritten)")
    names = [_topic(t) for t in topic_names]
    if not names:
        raise RecordError("no topics to record")
    results_topic = _topic(results_topic)
    if until_results and results_topic not in names:
        names.append(results_topic)
    out.parent.mkdir(parents=True, exist_ok=True)
    stop_on_first_signal()
    rclpy.init(args=args)
    node = None
    stopped_by = "signal"
    start = time.monotonic()
    try:
        node = make_recorder(out, names, log, until_results, results_topic)
        log(f"record: recording {', '.join(names)} to {out}"
            + (f" for {duration_s:g} s" if duration_s else "")
            + (f" until {until_results} message(s) on {results_topic}" if until_results else "")
            + "; Ctrl-C stops")
        end_ns = time.time_ns() + int(duration_s * 1e9) if duration_s else None
        stop_at: float | None = None
        while rclpy.ok():
            rclpy.spin_once(node, timeout_sec=0.05)
            now_ns = time.time_ns()
            node.flush(now_ns - HOLD_NS)
            if stop_at is None and end_ns is not None and now_ns >= end_ns and node.cut_ns is None:
                node.cut_ns, stopped_by = end_ns, "duration"
            if stop_at is None and node.cut_ns is not None:
                stopped_by = "results" if stopped_by != "duration" else stopped_by
                stop_at = time.monotonic() + DRAIN_S  # what is already on its way, received before the cut
            if stop_at is not None and time.monotonic() >= stop_at:
                break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        ignore_further_signals()
        if node is not None:
            node.flush()
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    result = RecordResult(out, dict(node.counts), dict(node.types), time.monotonic() - start,
                          never_seen=list(node.pending), skipped=dict(node.skipped), stopped_by=stopped_by)
    log(f"record: wrote {out} ({sum(result.counts.values())} messages in {result.seconds:.1f} s; "
        + ", ".join(f"{t} {result.counts.get(t, 0)}" for t in names if t in result.types) + ")"
        + (f"; never published: {', '.join(result.never_seen)}" if result.never_seen else ""))
    return result


# ----------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="the bag folder to create (must not exist)")
    parser.add_argument("--topics", nargs="+", required=True,
                        help="topics to record (e.g. /image /wrist/image /joint_states /joint_trajectory /instruction)")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (None: until Ctrl-C)")
    parser.add_argument("--until-results", type=int, default=None,
                        help="stop after this many messages on --results-topic (the sim's task outcomes)")
    parser.add_argument("--results-topic", default=DEFAULT_RESULTS_TOPIC, help="the topic --until-results counts")


DESCRIPTION = "record topics to a rosbag2 bag (MCAP), for a machine without rosbag2 (on a robot: ros2 bag record)"
EPILOG = ("Types and QoS come from each topic's publishers (reliable / transient local where every publisher is); "
          "messages are stamped with their receive time. Ctrl-C stops and closes the bag. Read it for training with "
          "aura_ros.data.bags.read_bags.")


def run_from_args(args: argparse.Namespace) -> int:
    """0: recorded; 1: nothing was recorded (no topic ever published); 2: a bad argument (one line)."""
    try:
        result = record(Path(args.out), args.topics, duration_s=args.duration, until_results=args.until_results,
                        results_topic=args.results_topic)
    except RecordError as exc:
        print(f"aura-ros record: error: {exc}", file=sys.stderr)
        return 2
    return 0 if result.counts else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aura-ros record", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
