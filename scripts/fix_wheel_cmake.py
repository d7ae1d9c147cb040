"""Rewrite the Python/numpy include directories baked into the ros-jazzy-* wheels' CMake files.

The wheels were built under /opt/python/cp3XX-cp3XX/..., and their exported share/**/*.cmake
files name that interpreter's include directories. rosidl's generators then fail to configure
against this venv. We point those paths at this interpreter's include dir and numpy's.
Idempotent: a second run finds nothing to change.
"""
from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

import numpy

# An include directory of the wheel builder's interpreter, or of its numpy.
_BAKED = re.compile(r"/opt/python/cp3\d+-cp3\d+[^;\"\s)]*")


def _replacement(path: str) -> str:
    return numpy.get_include() if "numpy" in path else sysconfig.get_paths()["include"]


def fix(prefix: Path) -> int:
    changed = 0
    for cmake_file in (prefix / "share").rglob("*.cmake"):
        text = cmake_file.read_text(errors="surrogateescape")
        new = _BAKED.sub(lambda m: _replacement(m.group(0)), text)
        if new != text:
            cmake_file.write_text(new, errors="surrogateescape")
            changed += 1
    return changed


if __name__ == "__main__":
    prefix = Path(sys.argv[1] if len(sys.argv) > 1 else sys.prefix)
    print(f"[setup] rewrote include paths in {fix(prefix)} CMake files", file=sys.stderr)
