"""What every aura_ros process does with SIGINT and SIGTERM.

A terminal's Ctrl-C under `ros2 launch` sends SIGINT to the launch process and its children (one
process group), and launch forwards one more: each node gets two or three, at any moment. rclpy's
handler chains to Python's, so each SIGINT raises KeyboardInterrupt wherever the main thread is:
the first one ends spin(), as it should; a later one landed in the cleanup after it (destroying
entities, joining a worker, writing a snapshot), even inside rclpy's own uninstall of its handlers.
Ignoring signals from the top of that cleanup still left the bytecodes between the first signal and
the ignore, and rclpy's uninstall puts the handler it chained to back for a moment.

So the handler rclpy chains to is ours, installed before rclpy.init(): the first signal (SIGINT or
SIGTERM) marks the process as stopping and, for SIGINT, raises KeyboardInterrupt as Python would;
every later one does nothing. rclpy still turns each into a context shutdown, and whatever handler
rclpy's uninstall restores is this one, so no window is left for a second signal to land in. Once
rclpy's handlers are gone, the signals are ignored outright until the process has exited.
"""
from __future__ import annotations

import signal

from rclpy.signals import uninstall_signal_handlers

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_stopping = False


def _on_signal(signum: int, frame) -> None:
    global _stopping
    if _stopping:
        return
    _stopping = True
    if signum == signal.SIGINT:
        raise KeyboardInterrupt


def stop_on_first_signal() -> None:
    """Call before rclpy.init(); the process must be the main thread's (signal handlers are)."""
    global _stopping
    _stopping = False
    for sig in _SIGNALS:
        signal.signal(sig, _on_signal)


def ignore_further_signals() -> None:
    """Call first thing in the teardown that follows spin(), whatever ended it."""
    global _stopping
    _stopping = True
    for sig in _SIGNALS:
        # Our handler first, in place of rclpy's, in one sigaction: rclpy's uninstall then puts
        # back, for a moment, the handler it chained to, which is this one.
        signal.signal(sig, _on_signal)
    uninstall_signal_handlers()
    for sig in _SIGNALS:
        # Then ignored at the kernel: Python's finalization resets a Python-level handler to the
        # default action, and a signal after that would kill the process mid-exit.
        signal.signal(sig, signal.SIG_IGN)
