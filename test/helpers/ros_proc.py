"""Run Python code in separate processes with the local-only ROS environment.

Cross-process tests (real DDS on localhost) need a second process that talks ROS. These
helpers start it with the test session's environment (localhost discovery, the session's
domain id, logs in the build tree), bound every wait, and always reap the process: a test that
fails half-way must not leave a publisher running into the next test.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# A process asked to stop gets this long to shut down cleanly before it is killed.
STOP_GRACE_S = 5.0


class ProcessFailed(AssertionError):
    """A helper process exited badly or overran its time; the message carries its output."""


@dataclass
class SpawnedProcess:
    """A running helper process whose stdout+stderr go to ``log_path`` (no pipe to fill up)."""

    proc: subprocess.Popen
    log_path: Path
    name: str

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        """Wait for a normal exit; on overrun kill it and raise with its output."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise ProcessFailed(f"{self.name} did not exit within {timeout:.0f} s; output:\n{self.output()}") from None

    def interrupt(self, timeout: float = STOP_GRACE_S) -> int:
        """Send SIGINT (what Ctrl-C does: rclpy shuts down cleanly) and wait for the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
        return self.wait(timeout)

    def stop(self) -> None:
        """Terminate, then kill after a grace period. Safe to call on an exited process."""
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_GRACE_S)

    def assert_ok(self, returncode: int) -> None:
        if returncode != 0:
            raise ProcessFailed(f"{self.name} exited with {returncode}; output:\n{self.output()}")


@dataclass
class PythonRunner:
    """Runs Python snippets in fresh interpreters with a fixed environment and working dir.

    ``code`` is dedented, so a test can write it as an indented triple-quoted string. Extra
    ``args`` arrive in the child's ``sys.argv[1:]`` (``sys.argv[0]`` is ``-c``).
    """

    env: Mapping[str, str]
    cwd: Path
    python: str = sys.executable
    _count: int = field(default=0, repr=False)

    def _argv(self, code: str, args: Sequence[str]) -> list[str]:
        return [self.python, "-c", textwrap.dedent(code), *map(str, args)]

    def run(self, code: str, *args: str, timeout: float = 60.0,
            env: Mapping[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run to completion and return the result (text stdout/stderr).

        With ``check`` a non-zero exit or a timeout raises ProcessFailed with both streams.
        """
        try:
            result = subprocess.run(self._argv(code, args), env=dict(env or self.env), cwd=self.cwd,
                                    capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:  # subprocess.run has already killed the child
            raise ProcessFailed(f"python snippet overran {timeout:.0f} s;\nstdout:\n{exc.stdout}\n"
                                f"stderr:\n{exc.stderr}") from None
        if check and result.returncode != 0:
            raise ProcessFailed(f"python snippet exited with {result.returncode};\nstdout:\n{result.stdout}\n"
                                f"stderr:\n{result.stderr}")
        return result

    @contextmanager
    def spawn(self, code: str, *args: str, name: str = "helper",
              env: Mapping[str, str] | None = None) -> Iterator[SpawnedProcess]:
        """Start the snippet in the background; it is stopped (then killed) when the block exits."""
        self._count += 1
        log_path = Path(self.cwd) / f"{name}-{os.getpid()}-{self._count}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(self._argv(code, args), env=dict(env or self.env), cwd=self.cwd,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        handle = SpawnedProcess(proc, log_path, name)
        try:
            yield handle
        finally:
            handle.stop()
