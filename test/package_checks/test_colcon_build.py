"""The robot route: `colcon build` of this package in a workspace, then use of its install space.

A robot clones the repository into a workspace's src/ and runs colcon against its ROS prefix.
Here the venv is that prefix (the ros-jazzy-* wheels' underlay). The test builds a copy of the
package in a scratch workspace and then, in a fresh process that sources install/setup.bash,
proves that ``aura_ros``, ``aura_ros.msg`` and ``aura_ros.srv`` (Python files and the generated
C libraries) come from the install space, not from the laptop route's copies in the venv and
the editable source tree, and that the ament index finds the package's shared files there.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PREFIX = Path(sys.prefix)  # the venv: the underlay ROS prefix
BUILD_TIMEOUT_S = 300  # ~11-16 s measured on 2 cores; generous for a loaded CI machine

# Not part of the package: VCS data, the venv, build outputs and caches of the laptop route.
_TOP_LEVEL_SKIP = {".git", ".venv", "build", "install", "log", ".hypothesis", ".pytest_cache", "out",
                   ".cache"}

# Runs in the fresh process after `source install/setup.bash`: reports where everything came from.
PROBE = r"""
import json, sys
import aura_ros
from aura_ros.msg import GateStats, MemoryBudget
from aura_ros.srv import GetMemoryMap
import aura_ros.ros.env
from rclpy.serialization import deserialize_message, serialize_message

# Serialising loads the generated type-support libraries (C), which import alone does not.
msg = GateStats(step=7, written=True)
assert deserialize_message(serialize_message(msg), GateStats) == msg
budget = MemoryBudget(used_tokens=3)
assert deserialize_message(serialize_message(budget), MemoryBudget) == budget
request = GetMemoryMap.Request()
assert deserialize_message(serialize_message(request), GetMemoryMap.Request) == request

from ament_index_python.packages import get_package_share_directory

try:  # the laptop route sets no AMENT_PREFIX_PATH: no index to ask
    share = get_package_share_directory("aura_ros")
except (OSError, LookupError):
    share = None

names = ["aura_ros", "aura_ros.msg", "aura_ros.srv", "aura_ros.ros.env", GateStats.__module__,
         MemoryBudget.__module__, GetMemoryMap.__module__]
with open("/proc/self/maps") as maps:
    libraries = sorted({line.split()[-1] for line in maps if "aura_ros" in line and ".so" in line})
print(json.dumps({
    "modules": {name: getattr(sys.modules[name], "__file__", None) for name in names},
    "package_path": list(aura_ros.__path__),
    "libraries": libraries,
    "share": share,
    "fastdds_profile": str(aura_ros.ros.env.fastdds_profile()),
}))
"""


def _copy_package(dest: Path) -> None:
    """Copy the package as a clone would have it (plus uncommitted work), without build outputs."""
    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        if Path(directory) == ROOT:
            skip |= _TOP_LEVEL_SKIP & set(names)
        return skip

    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)


def _probe(env: dict[str, str], cwd: Path, setup_bash: Path | None) -> dict:
    # cwd is outside the source tree: `python -c` puts the cwd first on sys.path, where the
    # source tree's aura_ros/ would shadow everything else.
    source = f"source {setup_bash} && " if setup_bash else ""
    result = subprocess.run(["bash", "-c", f'{source}exec "$0" -c "$1"', sys.executable, PROBE],
                            env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"probe failed:\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_colcon_build_and_import_from_install_space(tmp_path, ros_env):
    colcon = PREFIX / "bin" / "colcon"
    assert colcon.is_file(), f"{colcon} missing: run scripts/setup.sh (installs colcon-common-extensions)"

    ws = tmp_path / "ws"
    _copy_package(ws / "src" / "aura_ros")

    env = dict(ros_env)
    # The venv is the only underlay: nothing a developer sourced may leak into the build.
    for key in ("PYTHONPATH", "COLCON_PREFIX_PATH", "COLCON_CURRENT_PREFIX"):
        env.pop(key, None)
    env["AMENT_PREFIX_PATH"] = str(PREFIX)
    env["CMAKE_PREFIX_PATH"] = str(PREFIX)
    env["PATH"] = f"{PREFIX / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["COLCON_HOME"] = str(tmp_path / "colcon_home")  # no user defaults.yaml or mixins

    build = subprocess.run(
        [str(colcon), "build", "--base-paths", "src", "--build-base", "build", "--install-base", "install",
         "--event-handlers", "console_cohesion+", "desktop_notification-", "status-",
         "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"],
        cwd=ws, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert build.returncode == 0, f"colcon build failed:\n{build.stdout[-6000:]}\n{build.stderr[-4000:]}"

    install = ws / "install" / "aura_ros"
    share = install / "share" / "aura_ros"
    site = install / Path(sysconfig.get_path("purelib", vars={"base": ".", "platbase": "."})).relative_to(".")
    assert (share / "package.xml").is_file()
    assert (share / "config" / "fastdds.xml").is_file()
    # Everything in config/ and launch/ is shipped, and every Python source of the package.
    for folder in ("config", "launch"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                assert (share / path.relative_to(ROOT)).is_file(), f"{path.relative_to(ROOT)} not installed"
    sources = {p.relative_to(ROOT) for p in (ROOT / "aura_ros").rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(p) for p in sources if not (site / p).is_file())
    assert not missing, f"Python sources missing from {site}: {missing}"
    # `ros2 run aura_ros <name>` looks in lib/aura_ros.
    if (ROOT / "nodes").is_dir():
        for script in (ROOT / "nodes").iterdir():
            if script.is_file():
                installed = install / "lib" / "aura_ros" / script.name
                assert installed.is_file() and os.access(installed, os.X_OK), f"{installed} not an executable"

    # The fresh process inherits this process's environment, in which the ros-wheels
    # bootstrapper has already run: its guard variable stops it from re-executing the child
    # and re-ordering LD_LIBRARY_PATH (it passes the path through a set, so the order would be
    # random and the venv's lib/ could shadow the overlay's). setup.bash then prepends the
    # overlay, as a ROS underlay/overlay should be.
    probe_env = dict(env)
    laptop = _probe(probe_env, tmp_path, setup_bash=None)
    robot = _probe(probe_env, tmp_path, setup_bash=ws / "install" / "setup.bash")

    # Control: without the overlay the same probe resolves to the laptop route (the venv and
    # the source tree), so the checks below can tell the two apart.
    assert not any(Path(f).is_relative_to(install) for f in laptop["modules"].values() if f), laptop
    assert not any(Path(f).is_relative_to(install) for f in laptop["libraries"]), laptop

    assert Path(robot["package_path"][0]) == site / "aura_ros", robot["package_path"]
    for name, file in robot["modules"].items():
        assert Path(file).is_relative_to(site / "aura_ros"), f"{name} imported from {file}, not the install space"
    assert robot["libraries"], "no aura_ros type-support library was loaded"
    for library in robot["libraries"]:
        assert Path(library).is_relative_to(install), f"{library} loaded from outside the install space"
    assert Path(robot["share"]) == share
    assert Path(robot["fastdds_profile"]) == share / "config" / "fastdds.xml"


def test_laptop_route_imports_outside_the_repo(tmp_path, ros_env):
    """The set-up's venv route, from a directory that is not the repository root.

    ``aura_ros`` must be the source package (its ``__init__`` runs, so ``__version__`` exists and
    its ``extend_path`` joins the generated messages), and the messages come from the venv. The
    set-up once left the generated namespace portion to win here, with no ``__init__`` run.
    """
    env = dict(ros_env)
    env.pop("PYTHONPATH", None)
    laptop = _probe(env, tmp_path, setup_bash=None)
    modules = {name: Path(file).resolve() for name, file in laptop["modules"].items() if file}
    assert set(modules) == set(laptop["modules"]), f"namespace-only modules: {laptop['modules']}"
    assert modules["aura_ros"] == ROOT / "aura_ros" / "__init__.py"
    assert modules["aura_ros.ros.env"] == ROOT / "aura_ros" / "ros" / "env.py"
    venv_site = Path(sysconfig.get_path("purelib")).resolve()
    for name in ("aura_ros.msg", "aura_ros.srv", "aura_ros.msg._gate_stats", "aura_ros.msg._memory_budget",
                 "aura_ros.srv._get_memory_map"):
        assert modules[name].is_relative_to(venv_site / "aura_ros"), f"{name} from {modules[name]}"
    assert laptop["libraries"] and all(Path(lib).resolve().is_relative_to(PREFIX.resolve())
                                       for lib in laptop["libraries"]), laptop["libraries"]
    assert Path(laptop["fastdds_profile"]).resolve() == ROOT / "config" / "fastdds.xml"
    version = subprocess.run([str(PREFIX / "bin" / "aura-ros"), "version"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip(), version.stderr
