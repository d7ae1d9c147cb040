"""Conversions between the policy's plain data and ROS messages (no node state)."""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import TwistStamped
from std_msgs.msg import Float64MultiArray, Header, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from aura_ros.memory.stats import StepStats
from aura_ros.msg import GateStats, MemoryBudget


def memory_msg(stats: StepStats, header: Header) -> MemoryBudget:
    return MemoryBudget(
        header=header, step=stats.step, budget_bytes=stats.budget_bytes, allocated_bytes=stats.allocated_bytes,
        used_bytes=stats.used_bytes, capacity_tokens=stats.capacity_tokens, used_tokens=stats.used_tokens,
        pinned_tokens=stats.pinned_tokens, used_fraction=float(stats.used_fraction),
        device_allocated_bytes=stats.device_allocated_bytes, device_reserved_bytes=stats.device_reserved_bytes,
        process_rss_bytes=stats.process_rss_bytes)


def _quiet(x: float) -> float:
    """Floating-point dust (a gate value of 2.8e-16) shows as 0 in plots and echo."""
    return round(float(x), 9)


def gate_msg(stats: StepStats, header: Header) -> GateStats:
    return GateStats(
        header=header, step=stats.step, gate_value=_quiet(stats.gate_value), written=bool(stats.written),
        writes_total=stats.writes_total, evictions_total=stats.evictions_total, segments_kept=stats.segments_kept,
        steps_kept=stats.steps_kept, long_term_steps_kept=stats.long_term_steps_kept,
        oldest_kept_step=stats.oldest_kept_step, max_position=stats.max_position,
        write_rate=_quiet(stats.write_rate), action_delta=_quiet(stats.action_delta),
        step_latency_ms=float(stats.step_latency_ms))


def _duration(seconds: float) -> Duration:
    sec = int(seconds)
    return Duration(sec=sec, nanosec=int(round((seconds - sec) * 1e9)))


def command_msg(action_type: str, names: tuple[str, ...], positions: np.ndarray, header: Header,
                time_from_start_s: float = 0.1):
    """positions: [chunk, dim]. A chunk becomes a multi-point trajectory; the others take the first."""
    positions = np.atleast_2d(np.asarray(positions, dtype=np.float64))
    if action_type == "joint_trajectory":
        points = [JointTrajectoryPoint(positions=[float(v) for v in row],
                                       time_from_start=_duration(time_from_start_s * (i + 1)))
                  for i, row in enumerate(positions)]
        return JointTrajectory(header=header, joint_names=list(names), points=points)
    if action_type == "float64_multi_array":
        first = positions[0]
        layout_dim = [MultiArrayDimension(label="joints", size=first.size, stride=first.size)]
        msg = Float64MultiArray(data=[float(v) for v in first])
        msg.layout.dim = layout_dim
        return msg
    if action_type == "twist":
        values = dict(zip(names, positions[0]))
        msg = TwistStamped(header=header)
        msg.twist.linear.x = float(values.get("linear_x", 0.0))
        msg.twist.linear.y = float(values.get("linear_y", 0.0))
        msg.twist.angular.z = float(values.get("angular_z", 0.0))
        return msg
    raise ValueError(f"unknown action type {action_type!r}")


def command_type(action_type: str):
    return {"joint_trajectory": JointTrajectory, "float64_multi_array": Float64MultiArray,
            "twist": TwistStamped}[action_type]
