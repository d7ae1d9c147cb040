"""Health of the policy node, reported on /diagnostics about once a second.

diagnostic_updater is not among the Jazzy wheels, so the DiagnosticArray is built here: one
status for the node, OK / WARN / ERROR with the reason, and every counter as a key-value pair
(rqt_runtime_monitor and Foxglove's diagnostics panel show them as is).
"""
from __future__ import annotations

import threading
import time
from collections import Counter

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from aura_ros.memory.stats import StepStats

# The budget is too large for the control rate when the median step of the last report period
# takes more than this share of the period (what is left is the margin for the executor, DDS and
# the rest of the robot's software on the same cores).
LOAD_WARN_FRACTION = 0.8

# A model error older than this no longer holds the status at ERROR once steps succeed again.
ERROR_HOLD_S = 5.0


class Health:
    """Counters and flags, updated from callbacks and the worker, read by the diagnostics timer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.stale: list[str] = []
        self.last_error: str = ""
        self.error_time = -float("inf")
        self.error_active = False
        self.last_stats: StepStats | None = None
        self._window: Counter[str] = Counter()  # counts since the last report
        self._evicted_written_seen = 0
        self._latencies: list[float] = []  # step latencies since the last report
        self._period_s = 0.0
        self.values: dict[str, str] = {}  # extra key-values (e.g. the last decode time)
        self.lifecycle = "unconfigured"
        self.snapshot_problem: str = ""  # a snapshot not written (until one is), or one kept unloaded

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n
            self._window[key] += n

    def set_value(self, key: str, value: str) -> None:
        with self._lock:
            self.values[key] = value

    def model_error(self, text: str) -> None:
        with self._lock:
            self.counters["model_errors"] += 1
            self.last_error, self.error_time, self.error_active = text, time.monotonic(), True

    def model_ok(self) -> None:
        self.error_active = False

    def step_done(self, stats: StepStats, period_s: float, since_tick_s: float, evicted_written_total: int) -> None:
        with self._lock:
            self.last_stats = stats
            self.counters["steps"] += 1
            self._latencies.append(stats.step_latency_ms)
            self._period_s = period_s
            if since_tick_s > period_s:
                self.counters["missed_deadlines"] += 1
                self._window["missed_deadlines"] += 1
            new = evicted_written_total - self._evicted_written_seen
            if new > 0:
                self._window["long_term_evictions"] += new
                self.counters["long_term_evictions"] += new
            self._evicted_written_seen = evicted_written_total

    def report(self) -> tuple[int, str, dict[str, str]]:
        """(level, message, values) for the period since the last report."""
        with self._lock:
            window, self._window = self._window, Counter()
            latencies, self._latencies = self._latencies, []
            values = {k: str(v) for k, v in sorted(self.counters.items())}
            values.update(self.values)
            values["lifecycle"] = self.lifecycle
            st = self.last_stats
            if st is not None:
                values.update(step=str(st.step), kv_used_mib=f"{st.used_bytes / 2**20:.3f}",
                              kv_budget_mib=f"{st.budget_bytes / 2**20:.3f}",
                              step_latency_ms=f"{st.step_latency_ms:.1f}", write_rate=f"{st.write_rate:.3f}")
            if self.last_error:
                values["last_error"] = self.last_error
            if self.lifecycle != "active":
                return DiagnosticStatus.WARN, f"{self.lifecycle}: not stepping, no commands", values
            recent_error = self.error_active or time.monotonic() - self.error_time < ERROR_HOLD_S
            if recent_error:
                return DiagnosticStatus.ERROR, f"model error: {self.last_error}", values
            warnings = []
            if self.snapshot_problem:
                warnings.append(self.snapshot_problem)
            if self.stale:
                warnings.append(f"stale input: {', '.join(self.stale)} (holding)")
            if window["long_term_evictions"]:
                warnings.append(f"budget pressure: {window['long_term_evictions']} long-term steps evicted")
            if latencies and self._period_s > 0:
                median = sorted(latencies)[len(latencies) // 2]
                values["step_ms_median"] = f"{median:.1f}"
                if median > LOAD_WARN_FRACTION * self._period_s * 1e3:
                    warnings.append(f"budget too large for the rate: a step takes {median:.0f} ms of a "
                                    f"{self._period_s * 1e3:.0f} ms period; lower memory.vram_budget_mb or "
                                    "control.rate_hz")
            if window["missed_deadlines"] or window["skipped_ticks"]:
                warnings.append(f"missed control deadlines: {window['missed_deadlines']} late steps, "
                                f"{window['skipped_ticks']} skipped ticks")
            dropped = sum(v for k, v in window.items() if k.startswith("dropped_"))
            if dropped:
                warnings.append(f"{dropped} bad input messages dropped")
            if warnings:
                return DiagnosticStatus.WARN, "; ".join(warnings), values
            return DiagnosticStatus.OK, "running", values


def diagnostics_msg(name: str, health: Health, stamp, configured: bool) -> DiagnosticArray:
    level, message, values = health.report()
    if not configured and level == DiagnosticStatus.OK:
        level, message = DiagnosticStatus.WARN, "not configured (no model loaded)"
    status = DiagnosticStatus(level=level, name=f"aura_ros: {name}", message=message, hardware_id="aura_ros",
                              values=[KeyValue(key=k, value=v) for k, v in values.items()])
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array
