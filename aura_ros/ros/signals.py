"""What every aura_ros process does once a signal has started its shutdown.

A terminal's Ctrl-C under `ros2 launch` sends SIGINT to the launch process and its children (one
process group), and launch forwards one more: each node gets two or three. rclpy turns the first
into a context shutdown; a later one raised KeyboardInterrupt wherever cleanup was (destroying
entities, joining a worker, writing a snapshot), or killed the process with the signal's code.
From the first signal on, further ones are ignored, so teardown completes and the exit is clean.
"""
from __future__ import annotations

import signal

from rclpy.signals import uninstall_signal_handlers


def ignore_further_signals() -> None:
    """Call first thing in the teardown that follows spin()."""
    uninstall_signal_handlers()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
