"""The MLX backend's tests need mlx and mlx-lm, an opt-in install (``make mlx``).

On a laptop without them they skip with that reason; CI (``.ci/run``) sets AURA_REQUIRE_MLX=1
after ``make mlx``, and then a missing install is a failure, never a skip.
"""
from __future__ import annotations

import importlib.util
import os

import pytest

REASON = "mlx / mlx-lm are not installed: run `make mlx` to test this backend"


def require_mlx():
    """The mlx.core module, or a skip (a failure where AURA_REQUIRE_MLX=1)."""
    missing = [m for m in ("mlx", "mlx_lm") if importlib.util.find_spec(m) is None]
    if missing:
        if os.environ.get("AURA_REQUIRE_MLX") == "1":
            pytest.fail(f"AURA_REQUIRE_MLX=1 but {', '.join(missing)} does not import: " + REASON)
        pytest.skip(REASON, allow_module_level=True)
    return pytest.importorskip("mlx.core", reason=REASON)
