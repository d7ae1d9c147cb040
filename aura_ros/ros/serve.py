"""One process, many robots: ``aura-ros serve --robots a,b,c [--ros-args ...]``.

One policy node (aura_ros.ros.policy_node.PolicyNode) per robot, each in the robot's namespace
(``/a/aura_policy``...): its own topics (``/a/image``, ``/a/joint_states``, ``/a/joint_trajectory``),
parameters, gated KV cache and budget, ``~/memory``, ``~/gate_stats`` and services. The backend
loads the model once for all of them where it can (transformers: one nn.Module; see each
backend's SERVING) and each robot steps on its own inference worker, one forward at a time per
robot. A params file addresses one robot with ``/a/aura_policy:`` and all of them with ``/**:``.

The process reports on /diagnostics (status "aura_ros: serve") and in its log how many times each
model was loaded and how many robots it serves.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from aura_ros.core import topics
from aura_ros.core.registry import share_loaded_models, shared_models
from aura_ros.ros import qos
from aura_ros.ros.policy_node import GIL_SWITCH_INTERVAL_S, PolicyNode, StartupError, _spin
from aura_ros.ros.signals import ignore_further_signals, stop_on_first_signal

SERVE_NODE_NAME = "aura_serve"
REPORT_PERIOD_S = 1.0
# A namespace token: what rcl accepts as one segment of a namespace.
_ROBOT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ServeRefused(RuntimeError):
    """The robots' settings cannot run together in one process (the reason is the message)."""


def shared_snapshot_paths(paths: dict[str, str]) -> str | None:
    """Why these robots' snapshot paths ({robot: memory.snapshot_path}) cannot be served together:
    two robots writing one snapshot would overwrite each other's memory (a ``/**:`` entry in the
    params file gives every robot the same path). None when each robot has its own or none."""
    by_path: dict[str, list[str]] = {}
    for robot, path in paths.items():
        if path:
            by_path.setdefault(os.path.abspath(os.path.expanduser(path)), []).append(robot)
    clashes = [f"{', '.join(robots)} -> {path}" for path, robots in by_path.items() if len(robots) > 1]
    if clashes:
        return ("robots share a memory.snapshot_path (" + "; ".join(clashes) + "): give each robot its own, under "
                "/<robot>/aura_policy: in the params file")
    return None


def parse_robots(text: str) -> list[str]:
    """``"a,b,c"`` -> ["a", "b", "c"]; a name that is not one namespace segment, or twice, is refused."""
    names = [n.strip() for n in text.split(",")]
    bad = [n for n in names if not _ROBOT_NAME.match(n)]
    if bad or not names:
        raise ValueError(f"--robots: {bad or text!r} is not a list of namespace names (letters, digits, _; "
                         "not starting with a digit), e.g. --robots arm_left,arm_right")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"--robots names {', '.join(twice)} more than once")
    return names


class ServeReport(Node):
    """Says on /diagnostics and in the log what the robots of this process share."""

    def __init__(self, robots: list[str], serving: dict[str, str]):
        super().__init__(SERVE_NODE_NAME)
        self.robots = robots
        self.serving = serving
        self._pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, qos.DIAGNOSTICS)
        self._timer = self.create_timer(REPORT_PERIOD_S, self._publish)

    def summary(self) -> tuple[str, list[KeyValue]]:
        values = [KeyValue(key="robots", value=",".join(self.robots))]
        lines = []
        for backend, models in shared_models().items():
            for k, m in enumerate(models):
                values += [KeyValue(key=f"{backend} model {k}", value=str(m["path"])),
                           KeyValue(key=f"{backend} model {k} loads", value=str(m["loads"])),
                           KeyValue(key=f"{backend} model {k} robots", value=str(m["users"]))]
                lines.append(f"model {m['path']} loaded {m['loads']} time(s), shared by {m['users']} robots")
        if not lines:  # a backend that does not share (see its SERVING): each robot loaded its own
            lines = ["no model shared: each robot loaded its own"]
        return "; ".join(lines), values

    def log_summary(self) -> None:
        message, _ = self.summary()
        self.get_logger().info(f"serving {len(self.robots)} robots ({', '.join(self.robots)}): {message}")

    def _publish(self) -> None:
        if not self.context.ok():  # a signal may end the context while this timer runs
            return
        message, values = self.summary()
        status = DiagnosticStatus(level=DiagnosticStatus.OK, name=f"aura_ros: {SERVE_NODE_NAME}",
                                  hardware_id=SERVE_NODE_NAME, message=message, values=values)
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        try:
            self._pub.publish(msg)
        except Exception:
            if self.context.ok():
                raise


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(our arguments, the ROS arguments from --ros-args on)."""
    if "--ros-args" in argv:
        i = argv.index("--ros-args")
        return argv[:i], argv[i:]
    return argv, []


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aura-ros serve", description="one process, one model, many robots: a policy node per robot namespace",
        epilog="ROS arguments follow --ros-args: --params-file F (address /a/aura_policy: or /**:), -p name:=value "
               "(every robot)")
    p.add_argument("--robots", required=True, help="robot namespaces, comma-separated: --robots a,b,c")
    p.add_argument("--executor-threads", type=int, default=0,
                   help="threads of the one executor (0: two a robot)")
    return p


def main(argv: list[str] | None = None) -> int:
    ours, ros = _split(sys.argv[1:] if argv is None else list(argv))
    args = _parser().parse_args(ours)
    try:
        robots = parse_robots(args.robots)
    except ValueError as exc:
        print(f"aura-ros serve: {exc}", file=sys.stderr)
        return 2
    # The node's signal handling (see aura_ros.ros.signals and policy_node.main), for N nodes.
    stop_on_first_signal()
    rclpy.init(args=["aura-ros-serve", *ros], signal_handler_options=SignalHandlerOptions.ALL)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # why: policy_node.main
    serving = share_loaded_models()  # before the first robot loads its policy
    nodes: list[Node] = []
    code = 0
    final_snapshots = True
    executor = MultiThreadedExecutor(num_threads=args.executor_threads or 2 * len(robots))
    robot = None
    try:
        report = ServeReport(robots, serving)
        nodes.append(report)
        executor.add_node(report)
        for robot in robots:
            node = PolicyNode(namespace="/" + robot)
            nodes.append(node)
            executor.add_node(node)
        robot = None
        clash = shared_snapshot_paths({n.get_namespace().strip("/"): n.settings.snapshot_path
                                       for n in nodes if isinstance(n, PolicyNode)})
        if clash:
            raise ServeRefused(clash)
        report.log_summary()
        _spin(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ServeRefused as exc:
        print(f"aura-ros serve: not started: {exc}", file=sys.stderr)
        code = 2
        final_snapshots = False  # they would overwrite one another
    except StartupError:  # the robot's node logged the reason
        print(f"aura-ros serve: robot {robot!r} not started (see its log line above); no robot is served",
              file=sys.stderr)
        code = 2
    except ParameterException as exc:
        print(f"aura-ros serve: robot {robot!r} not started: {exc}", file=sys.stderr)
        code = 2
    except Exception as exc:
        if rclpy.ok():  # during shutdown an RCLError out of spin() is a clean exit (see policy_node.main)
            print(f"aura-ros serve: {type(exc).__name__}: {exc}", file=sys.stderr)
            code = 1
    finally:
        ignore_further_signals()
        for node in reversed(nodes):
            if isinstance(node, PolicyNode):
                node._release(snapshot=final_snapshots)  # each robot's final snapshot, where it has a path
            node.destroy_node()
        executor.shutdown(timeout_sec=1.0)
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
