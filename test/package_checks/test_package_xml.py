"""package.xml and setup.cfg declare every third-party module the shipped code imports.

A robot installs aura_ros's dependencies with rosdep from package.xml; a laptop with pip from
setup.cfg. An import that neither declares works on the developer's machine and fails on the
robot. This test reads every shipped Python file with ``ast`` (the package, the launch files,
the ``ros2 run`` scripts in nodes/), so a new import anywhere is checked without editing the
test, except for one line: an import name the table below does not know fails the test until
its rosdep key and pip name are added here.

Rules:
- Everything imported outside aura_ros/bench is a runtime dependency: a <depend> or
  <exec_depend> in package.xml, and, if pip can install it, a setup.cfg ``install_requires``.
- The benchmarks (aura_ros/bench) and the demo (aura_ros/tools/demo.py) run only from the laptop
  route (``make bench-*``, ``make demo``), never on the robot: a module imported only there may
  instead be a pip extra in setup.cfg ``extras_require`` (e.g. ``bench``: matplotlib, gguf,
  accelerate), so a robot's rosdep install does not pull plotting and GGUF tooling.
- Every import counts, also inside functions or ``try``: an optional import is still one that
  some code path needs. ``importlib.import_module("x")`` with a literal name counts too.
"""
from __future__ import annotations

import ast
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from setuptools.config.setupcfg import read_configuration

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "aura_ros"
# Modules that run only on the laptop route (see the rules above), relative to the repo root.
# tools/export_gguf.py (moved there from backends/llama_cpp/) writes GGUF files on a laptop with
# the gguf package of the `llama` and `bench` extras.
LAPTOP_ONLY = (Path(PACKAGE) / "bench", Path(PACKAGE) / "tools" / "demo.py", Path(PACKAGE) / "tools" / "export_gguf.py")

# Top-level import name -> (package.xml key, pip distribution or None where pip has none).
# ROS packages come from rosdep / the ros-jazzy-* wheels, so they have no install_requires entry.
DEPENDENCIES: dict[str, tuple[str, str | None]] = {
    # ROS 2 client library, launch and the ament index
    "rclpy": ("rclpy", None),
    "launch": ("launch", None),
    "launch_ros": ("launch_ros", None),
    "ament_index_python": ("ament_index_python", None),
    # ROS 2 interfaces
    "builtin_interfaces": ("builtin_interfaces", None),
    "std_msgs": ("std_msgs", None),
    "std_srvs": ("std_srvs", None),
    "sensor_msgs": ("sensor_msgs", None),
    "geometry_msgs": ("geometry_msgs", None),
    "trajectory_msgs": ("trajectory_msgs", None),
    "diagnostic_msgs": ("diagnostic_msgs", None),
    "rcl_interfaces": ("rcl_interfaces", None),
    "lifecycle_msgs": ("lifecycle_msgs", None),
    "rosgraph_msgs": ("rosgraph_msgs", None),
    # Python packages (rosdep keys python3-*)
    "numpy": ("python3-numpy", "numpy"),
    "cv2": ("python3-opencv", "opencv-python-headless"),
    "yaml": ("python3-yaml", "pyyaml"),
    "psutil": ("python3-psutil", "psutil"),
    "PIL": ("python3-pil", "pillow"),
    "torch": ("python3-torch", "torch"),
    "transformers": ("python3-transformers", "transformers"),
    "safetensors": ("python3-safetensors", "safetensors"),
    "tokenizers": ("python3-tokenizers", "tokenizers"),
    "huggingface_hub": ("python3-huggingface-hub", "huggingface-hub"),
    "matplotlib": ("python3-matplotlib", "matplotlib"),
    "tqdm": ("python3-tqdm", "tqdm"),
    # No rosdep keys exist for these two yet (install with pip): bag replay and Foxglove live.
    "rosbags": ("python3-rosbags", "rosbags"),
    "foxglove": ("python3-foxglove-sdk", "foxglove-sdk"),
    "mcap": ("python3-mcap", "mcap"),
    # LeRobotDataset v3 folders: parquet and mp4 (python3-pyarrow has no rosdep key yet: pip).
    "pyarrow": ("python3-pyarrow", "pyarrow"),
    "av": ("python3-av", "av"),
    # No rosdep keys exist for these two: only laptop-only code may use them, as pip extras.
    "gguf": ("python3-gguf", "gguf"),
    "accelerate": ("python3-accelerate", "accelerate"),
    # The opt-in llama.cpp backend (compiles llama.cpp on install): no rosdep key; the pip extra `llama`.
    "llama_cpp": ("python3-llama-cpp-python", "llama-cpp-python"),
    # The opt-in MLX backend: no rosdep keys; the pip extra `mlx` (`make mlx`).
    "mlx": ("python3-mlx", "mlx"),
    "mlx_lm": ("python3-mlx-lm", "mlx-lm"),
}
# Opt-in backends: an import only inside such a folder may come from the named pip extra instead of
# install_requires (the backend is loaded lazily, only when chosen; `make llama` installs it).
OPTIONAL_BACKENDS = {Path(PACKAGE) / "backends" / "llama_cpp": "llama", Path(PACKAGE) / "backends" / "mlx": "mlx"}


def shipped_files() -> list[Path]:
    """Python files that colcon installs: the package, launch/, and the scripts in nodes/."""
    files = sorted((ROOT / PACKAGE).rglob("*.py")) + sorted((ROOT / "launch").rglob("*.py"))
    nodes = ROOT / "nodes"
    if nodes.is_dir():
        for script in sorted(nodes.iterdir()):
            if script.is_file() and script.suffix in ("", ".py"):
                first = script.read_text(errors="replace").split("\n", 1)[0]
                if script.suffix == ".py" or (first.startswith("#!") and "python" in first):
                    files.append(script)
    return [f for f in files if "__pycache__" not in f.parts]


def imported_names(source: str, filename: str = "<source>") -> dict[str, int]:
    """Top-level module names ``source`` imports (absolute imports only) -> first line number."""
    found: dict[str, int] = {}

    def add(module: str, line: int) -> None:
        found.setdefault(module.split(".")[0], line)

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            add(node.module, node.lineno)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and _is_dynamic_import(node.func)):
            add(node.args[0].value, node.lineno)
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    return ((isinstance(func, ast.Attribute) and func.attr == "import_module")
            or (isinstance(func, ast.Name) and func.id in ("import_module", "__import__")))


def third_party(names: dict[str, int]) -> dict[str, int]:
    return {n: line for n, line in names.items() if n not in sys.stdlib_module_names and n != PACKAGE}


@pytest.fixture(scope="module")
def imports() -> dict[str, list[str]]:
    """Third-party import name -> where it is imported ("path:line", relative to the repo)."""
    where: dict[str, list[str]] = defaultdict(list)
    for path in shipped_files():
        for name, line in third_party(imported_names(path.read_text(), str(path))).items():
            where[name].append(f"{path.relative_to(ROOT)}:{line}")
    return dict(where)


@pytest.fixture(scope="module")
def package_xml_runtime() -> set[str]:
    root = ET.parse(ROOT / "package.xml").getroot()
    return {el.text.strip() for tag in ("depend", "exec_depend") for el in root.iter(tag) if el.text}


@pytest.fixture(scope="module")
def setup_cfg() -> tuple[set[str], dict[str, set[str]]]:
    """(install_requires, extras_require) as canonical distribution names, parsed by setuptools."""
    options = read_configuration(ROOT / "setup.cfg")["options"]
    names = lambda reqs: {canonicalize_name(Requirement(r).name) for r in reqs}  # noqa: E731
    return (names(options.get("install_requires", [])),
            {extra: names(reqs) for extra, reqs in options.get("extras_require", {}).items()})


def is_laptop_only(sites: list[str]) -> bool:
    return all(any(Path(site.rsplit(":", 1)[0]).is_relative_to(p) for p in LAPTOP_ONLY) for site in sites)


def optional_extras(extras: dict[str, set[str]]) -> set[str]:
    """Distributions of the pip extras that laptop-only code may use (the test extra is not one)."""
    return set().union(*(names for extra, names in extras.items() if extra != "test"))


def test_scanner_finds_every_kind_of_import():
    source = (
        "from __future__ import annotations\n"
        "import os, numpy as np\n"
        "import torch.nn.functional\n"
        "from PIL import Image\n"
        "from . import sibling\n"
        "from .memory import cache\n"
        "from aura_ros.msg import GateStats\n"
        "def f():\n"
        "    try:\n"
        "        import cv2\n"
        "    except ImportError:\n"
        "        pass\n"
        "    return importlib.import_module('yaml'), __import__('psutil')\n"
    )
    assert third_party(imported_names(source)) == {"numpy": 2, "torch": 3, "PIL": 4, "cv2": 10, "yaml": 13,
                                                   "psutil": 13}


def test_scan_covers_the_shipped_code(imports):
    # The memory layer's core imports must be seen, or the scan is looking at the wrong files.
    assert {"torch", "transformers"} <= set(imports), sorted(imports)
    files = shipped_files()
    assert ROOT / PACKAGE / "__init__.py" in files and ROOT / PACKAGE / "ros" / "env.py" in files


def test_every_import_has_a_known_dependency(imports):
    unknown = {name: sites for name, sites in imports.items() if name not in DEPENDENCIES}
    assert not unknown, (
        "new third-party import(s) with no dependency mapping: "
        + "; ".join(f"{name!r} at {', '.join(sites)}" for name, sites in sorted(unknown.items()))
        + ". Add each to DEPENDENCIES in test/package_checks/test_package_xml.py as (rosdep key, pip name or None), "
          "then declare it in package.xml (<exec_depend>) and, for pip packages, setup.cfg install_requires "
          "(or an extras_require group for imports only in LAPTOP_ONLY modules) and PY_DEPS in scripts/setup.sh.")


def test_runtime_imports_are_declared_in_package_xml(imports, package_xml_runtime, setup_cfg):
    _, extras = setup_cfg
    missing = []
    for name, sites in sorted(imports.items()):
        if name not in DEPENDENCIES:
            continue  # reported by test_every_import_has_a_known_dependency
        key, pip = DEPENDENCIES[name]
        if key in package_xml_runtime:
            continue
        if is_laptop_only(sites) and pip is not None and canonicalize_name(pip) in optional_extras(extras):
            continue  # a pip extra of the laptop-only demo/benchmarks
        missing.append(f"<exec_depend>{key}</exec_depend> (import {name!r} at {', '.join(sites)})")
    assert not missing, "package.xml lacks: " + "; ".join(missing)


def optional_site(site: str, pip: str, extras: dict[str, set[str]]) -> bool:
    """An import inside an opt-in backend's folder with its extra, or in laptop-only code (a
    benchmark that also times that backend) with any optional extra."""
    path = Path(site.rsplit(":", 1)[0])
    return (is_laptop_only([site]) and pip in optional_extras(extras)) or any(
        path.is_relative_to(folder) and pip in extras.get(extra, set()) for folder, extra in OPTIONAL_BACKENDS.items())


def test_python_imports_are_in_setup_cfg(imports, setup_cfg):
    install_requires, extras = setup_cfg
    missing = []
    for name, sites in sorted(imports.items()):
        if name not in DEPENDENCIES or DEPENDENCIES[name][1] is None:
            continue
        pip = canonicalize_name(DEPENDENCIES[name][1])
        if pip in install_requires:
            continue
        if is_laptop_only(sites) and pip in optional_extras(extras):
            continue
        if any(Path(site.rsplit(":", 1)[0]).is_relative_to(folder) for site in sites
               for folder in OPTIONAL_BACKENDS) and all(optional_site(site, pip, extras) for site in sites):
            continue
        where = "an extras_require group (or install_requires)" if is_laptop_only(sites) else "install_requires"
        missing.append(f"{pip} in {where} (import {name!r} at {', '.join(sites)})")
    assert not missing, "setup.cfg lacks: " + "; ".join(missing)
