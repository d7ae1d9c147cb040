"""The test process as an observer of nodes in other processes (like rqt): their command-line
parameters, spinning until something arrives, calling their services."""
from __future__ import annotations

import time

import rclpy
from rclpy.node import Node
from std_srvs.srv import Trigger

# Runs ``python -c RUN_MODULE <module> [args]``: the module as __main__ in a fresh interpreter.
RUN_MODULE = "import runpy, sys; sys.argv = ['x'] + sys.argv[1:]; runpy.run_module(sys.argv[1], run_name='__main__')"


def ros_args(params: dict) -> list[str]:
    out = ["--ros-args"]
    for k, v in params.items():
        out += ["-p", f"{k}:={v}"]
    return out


def spin_until(node: Node, predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
        if predicate():
            return True
    return False


def call(node: Node, srv_type, name: str, request, timeout: float = 20.0):
    client = node.create_client(srv_type, name)
    assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
    future = client.call_async(request)
    assert spin_until(node, future.done, timeout), f"no answer from {name}"
    return future.result()


def trigger(node: Node, name: str, timeout: float = 30.0) -> Trigger.Response:
    return call(node, Trigger, name, Trigger.Request(), timeout)
