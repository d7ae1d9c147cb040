"""`aura-ros bench scaling --backend mlx`: the store fills itself (``_storage_fill``) and cuts the
timed step off again (``_storage_truncate``), with the same invariants as the other backends."""
from __future__ import annotations

from helpers.mlx_backend import require_mlx
from helpers.scaling_checks import run_and_check

require_mlx()


def test_scaling_short_on_mlx(tmp_path):
    run_and_check(tmp_path / "scaling", 512, "--backend", "mlx")  # float32 keys and values, as transformers
