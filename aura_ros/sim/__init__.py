"""A simulated robot (pure numpy + OpenCV, no ROS): camera frames and joint states that follow
the commands, for closed-loop runs, the demo and tests without hardware."""
from aura_ros.sim.scene import JOINT_NAMES, SceneObject, ScriptedEvent, SimScene

__all__ = ["JOINT_NAMES", "SceneObject", "ScriptedEvent", "SimScene"]
