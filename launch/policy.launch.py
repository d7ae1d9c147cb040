"""Start the aura_ros policy node (and, with use_sim:=true, the simulated robot).

    ros2 launch aura_ros policy.launch.py
    ros2 launch aura_ros policy.launch.py use_sim:=true vram_budget_mb:=4.0
    ros2 launch aura_ros policy.launch.py params_file:=my.yaml namespace:=arm model:=/models/smolvlm
    ros2 launch aura_ros policy.launch.py fastdds_profile:=   # keep the environment's Fast DDS profile
    ros2 launch aura_ros policy.launch.py snapshot_path:=~/aura/arm   # resume from / save the memory there
    ros2 launch aura_ros policy.launch.py backend:=mlx                # the default policy on MLX (make mlx)

A policy node that cannot start (a budget too small, a bad value) logs one ERROR line with the
reason and exits with code 2; launch adds its own line that the process died (exit code 2). Launch
reports a node's failure in its log, not in its own exit code: it exits 0 once no process is left
(with use_sim:=true the sim runs on until Ctrl-C).

Written against the ROS 2 Jazzy launch API (launch 3.4, launch_ros 0.26).
"""
from __future__ import annotations

import math
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from aura_ros.ros.params import POLICY_PARAMS
from launch import LaunchContext, LaunchDescription

POLICY_NODE_NAME = "aura_policy"
# emulate_tty makes the nodes colour their output, and launch writes that output to its log files
# as is: no colour codes, so the logs stay readable in an editor and greppable.
NO_COLOUR = {"RCUTILS_COLORIZED_OUTPUT": "0"}
SIM_NODE_NAME = "aura_sim"


def _existing_file(argument: str, path: str) -> str:
    # launch_ros only warns about a params file that does not exist and starts the node without
    # it: a typo in params_file:= would silently run the defaults. Refuse instead.
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise RuntimeError(f"{argument}:={path!r}: no such file")
    return os.path.abspath(path)


def _fastdds_profile(context: LaunchContext) -> list:
    # The shipped profile has a shared-memory segment that holds a full camera frame (Fast DDS's
    # default 512 KB segment loses most 640x480 frames). A robot with its own profile passes
    # fastdds_profile:= (empty) to keep the environment's. Returned before the nodes, so both
    # processes start with it.
    profile = LaunchConfiguration("fastdds_profile").perform(context)
    if not profile:
        return []
    return [SetEnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE", _existing_file("fastdds_profile", profile))]


def _policy_node(context: LaunchContext) -> list:
    # Overrides come after the params file on the command line, so they win; arguments left
    # empty do not override the params file.
    overrides: dict[str, str | float] = {}
    model = LaunchConfiguration("model").perform(context)
    if model:
        overrides["model.path"] = model
    backend = LaunchConfiguration("backend").perform(context)
    if backend:
        choices = POLICY_PARAMS.by_name["model.backend"].choices
        if backend not in choices:
            raise RuntimeError(f"backend:={backend!r}: expected one of {', '.join(choices)}")
        overrides["model.backend"] = backend
    mmproj = LaunchConfiguration("mmproj").perform(context)
    if mmproj:
        overrides["model.mmproj"] = _existing_file("mmproj", mmproj)
    budget = LaunchConfiguration("vram_budget_mb").perform(context)
    if budget:
        try:
            value = float(budget)
        except ValueError:
            value = math.nan
        lo, hi = POLICY_PARAMS.by_name["memory.vram_budget_mb"].range
        if not (math.isfinite(value) and lo <= value <= hi):
            raise RuntimeError(f"vram_budget_mb:={budget!r}: expected a number of MiB in [{lo:g}, {hi:g}]")
        overrides["memory.vram_budget_mb"] = value
    snapshot = LaunchConfiguration("snapshot_path").perform(context)
    if snapshot:
        # Absolute: the node's working directory is launch's, not the shell's.
        overrides["memory.snapshot_path"] = os.path.abspath(os.path.expanduser(snapshot))
    params: list = [_existing_file("params_file", LaunchConfiguration("params_file").perform(context))]
    if overrides:
        params.append(overrides)
    return [Node(package="aura_ros", executable="policy_node", name=POLICY_NODE_NAME,
                 namespace=LaunchConfiguration("namespace"), parameters=params, output="screen",
                 emulate_tty=True, additional_env=NO_COLOUR)]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("aura_ros")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "policy.yaml"),
                              description="Parameter file of the policy node"),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of both nodes"),
        DeclareLaunchArgument("model", default_value="",
                              description="Model folder, hub id or .gguf file (empty: as in the params file)"),
        DeclareLaunchArgument("backend", default_value="",
                              description="model.backend: auto, transformers, llama_cpp or mlx (empty: as in the "
                                          "params file)"),
        DeclareLaunchArgument("mmproj", default_value="",
                              description="GGUF models: the projector GGUF that lets frames in (empty: as in the "
                                          "params file)"),
        DeclareLaunchArgument("vram_budget_mb", default_value="",
                              description="KV-cache budget in MiB (empty: as in the params file)"),
        DeclareLaunchArgument("snapshot_path", default_value="",
                              description="Memory snapshot path (memory.snapshot_path): resumed from at start, "
                                          "written at shutdown (empty: as in the params file)"),
        DeclareLaunchArgument("use_sim", default_value="false",
                              description="Also start the simulated camera + arm (sim_node)"),
        DeclareLaunchArgument("fastdds_profile", default_value=os.path.join(share, "config", "fastdds.xml"),
                              description="FASTRTPS_DEFAULT_PROFILES_FILE for the nodes "
                                          "(empty: keep the environment's)"),
        OpaqueFunction(function=_fastdds_profile),
        OpaqueFunction(function=_policy_node),
        Node(package="aura_ros", executable="sim_node", name=SIM_NODE_NAME,
             namespace=LaunchConfiguration("namespace"), output="screen", additional_env=NO_COLOUR,
             condition=IfCondition(LaunchConfiguration("use_sim"))),
    ])
