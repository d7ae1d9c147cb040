"""ROS environment settings that keep every packet of aura_ros on this machine.

Default Jazzy discovery multicasts off the machine; every script, test and CI run of this
project uses ``local_ros_env()``: localhost-only discovery, its own domain id, logs inside
the build tree, and the shipped Fast DDS profile (a shared-memory segment that holds a
full camera frame).
"""
from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parents[1]


def fastdds_profile() -> Path | None:
    """The shipped Fast DDS profile: the source tree's config/ or the colcon share dir."""
    for candidate in (_PKG.parent / "config" / "fastdds.xml",):
        if candidate.is_file():
            return candidate
    try:
        from ament_index_python.packages import get_package_share_directory

        shared = Path(get_package_share_directory("aura_ros")) / "config" / "fastdds.xml"
        return shared if shared.is_file() else None
    except Exception:  # no ament index (laptop route without a share dir): no profile
        return None


def local_ros_env(domain_id: int | None = None, log_dir: str | os.PathLike | None = None,
                  base: dict | None = None) -> dict[str, str]:
    """Return a copy of ``base`` (default os.environ) with the local-only ROS settings."""
    env = dict(os.environ if base is None else base)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated in Jazzy; conflicts with the above
    if domain_id is None:
        domain_id = int(env.get("ROS_DOMAIN_ID", "") or (os.getpid() % 100) + 1)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    log_dir = log_dir or env.get("ROS_LOG_DIR") or str(_PKG.parent / "build" / "ros_log")
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    env["ROS_LOG_DIR"] = str(log_dir)
    env.setdefault("HOME", str(Path.home()))
    profile = fastdds_profile()
    if profile is not None:
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(profile)
    else:
        env.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)  # unset, never empty
    return env


def apply_local_ros_env(domain_id: int | None = None) -> dict[str, str]:
    """Set the local-only settings in this process (before ``rclpy.init``)."""
    env = local_ros_env(domain_id)
    for key in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "RMW_IMPLEMENTATION", "ROS_LOG_DIR", "HOME"):
        os.environ[key] = env[key]
    os.environ.pop("ROS_LOCALHOST_ONLY", None)
    if "FASTRTPS_DEFAULT_PROFILES_FILE" in env:
        os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = env["FASTRTPS_DEFAULT_PROFILES_FILE"]
    else:
        os.environ.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)
    return env
