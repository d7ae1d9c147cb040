"""The llama.cpp backend's tests need llama-cpp-python, an opt-in build (``make llama``).

On a laptop without it they skip with that reason; CI (``.ci/run``) sets AURA_REQUIRE_LLAMA_CPP=1
after ``make llama``, and then a missing build is a failure, never a skip.
"""
from __future__ import annotations

import importlib.util
import os

import pytest

REASON = "llama-cpp-python is not installed: run `make llama` (compiles llama.cpp once) to test this backend"


def require_llama_cpp():
    """The llama_cpp module, or a skip (a failure where AURA_REQUIRE_LLAMA_CPP=1)."""
    if os.environ.get("AURA_REQUIRE_LLAMA_CPP") == "1" and importlib.util.find_spec("llama_cpp") is None:
        pytest.fail("AURA_REQUIRE_LLAMA_CPP=1 but llama_cpp does not import: " + REASON)
    return pytest.importorskip("llama_cpp", reason=REASON)
