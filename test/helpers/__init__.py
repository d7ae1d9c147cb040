"""Test helpers shared by the cross-process ROS tests."""
from helpers.ros_proc import ProcessFailed, PythonRunner, SpawnedProcess

__all__ = ["ProcessFailed", "PythonRunner", "SpawnedProcess"]
