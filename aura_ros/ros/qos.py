"""The QoS profiles of aura_ros's topics, named in one place (publisher and subscriber share them).

Compatibility rule behind the choices: a best-effort reader matches a reliable or best-effort
writer, a reliable reader only a reliable writer; a transient-local reader only a
transient-local writer. So readers of other people's data (cameras, joint states) ask for the
least, and writers of our own data offer the most that their readers need.
"""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

# Camera frames and joint states: best effort, keep last 5, volatile (rclpy's sensor-data
# profile). A late frame is worth less than the next one, so nothing is resent; and a
# best-effort subscriber also matches drivers that publish reliably.
SENSOR: QoSProfile = qos_profile_sensor_data

# Camera frames and joint states of a demonstration being recorded (the sim's scripted expert):
# reliable, keep last 100 (5 s at 20 Hz), so that a recorder that subscribes reliably (aura-ros
# record, like rosbag2, takes the publishers' reliability) gets every step even when it stalls for a
# moment. A best-effort reader (the policy node) still matches, and gets them best effort.
DEMONSTRATION = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.VOLATILE)

# Commands to the robot (JointTrajectory, Float64MultiArray, TwistStamped): reliable, so a
# command is not silently lost on a lossy link (ros2_control controllers subscribe reliably
# too), keep last 10 so that a short stall of the reader does not block the writer. Volatile:
# a command from before a controller started must not be executed when it appears.
COMMANDS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)

# The task instruction: reliable + transient local, depth 1 ("latched"): a node that starts
# after the instruction was published still receives the current one, and only the newest counts.
INSTRUCTION = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)

# The same topic, volatile: `ros2 topic pub` publishes volatile by default, and a transient-local
# reader never matches a volatile writer (the publisher would wait forever). A volatile reader
# matches both, so the node reads the instruction through both profiles (the latched one for an
# instruction published before it started) and ignores a repeat of the text it already holds.
INSTRUCTION_VOLATILE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                  durability=DurabilityPolicy.VOLATILE)

# Services: a deeper request queue than rclpy's default of 10, so a burst of simultaneous
# calls (a monitoring script, several operators) is answered rather than dropped.
SERVICES = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)

# Per-step MemoryBudget / GateStats: reliable keep last 10, so that plots and the soak monitor
# see every step (each message carries its step number and a gap would read as a lost step).
STATS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                   durability=DurabilityPolicy.VOLATILE)

# /diagnostics: reliable and volatile like diagnostic_updater's publisher (so rqt_robot_monitor
# and diagnostic_aggregator match it); depth 10 lets a subscriber that shares this profile absorb
# bursts from several nodes publishing on the one topic.
DIAGNOSTICS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)

__all__ = ["COMMANDS", "DEMONSTRATION", "DIAGNOSTICS", "INSTRUCTION", "INSTRUCTION_VOLATILE", "SENSOR", "SERVICES",
           "STATS"]
