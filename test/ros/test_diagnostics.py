"""The node's health report, without DDS."""
from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticStatus

from aura_ros.memory.stats import StepStats
from aura_ros.ros.diagnostics import Health


def stats(ms: float) -> StepStats:
    return StepStats(budget_bytes=1, allocated_bytes=1, used_bytes=1, capacity_tokens=1, used_tokens=1,
                     pinned_tokens=1, segments_kept=1, steps_kept=1, long_term_steps_kept=0, oldest_kept_step=0,
                     max_position=0, evictions_total=0, step_latency_ms=ms)


def test_lifecycle_state_other_than_active_is_a_warning():
    h = Health()
    level, message, values = h.report()
    assert level == DiagnosticStatus.WARN and "unconfigured" in message and values["lifecycle"] == "unconfigured"
    h.lifecycle = "active"
    assert h.report()[0] == DiagnosticStatus.OK


def test_a_budget_too_large_for_the_rate_is_a_warning_with_the_numbers():
    h = Health()
    h.lifecycle = "active"
    for _ in range(5):
        h.step_done(stats(95.0), period_s=0.1, since_tick_s=0.05, evicted_written_total=0)
    level, message, values = h.report()
    assert level == DiagnosticStatus.WARN and "budget too large for the rate" in message and "95 ms" in message
    for _ in range(5):
        h.step_done(stats(20.0), period_s=0.1, since_tick_s=0.02, evicted_written_total=0)
    level, message, values = h.report()
    assert level == DiagnosticStatus.OK and values["step_ms_median"] == "20.0"


def test_floating_point_dust_shows_as_zero_in_gate_stats():
    from std_msgs.msg import Header

    from aura_ros.ros.messages import gate_msg

    st = stats(5.0)
    st.gate_value, st.write_rate, st.action_delta = 2.8e-16, 1e-10, 0.25
    msg = gate_msg(st, Header())
    assert msg.gate_value == 0.0 and msg.write_rate == 0.0 and msg.action_delta == 0.25
