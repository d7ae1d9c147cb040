"""`aura-ros bench scaling` in a short form: files, columns, one allocation per run, evictions
happen at capacity, and the physical-limit reference never evicts. Behaviour only; no timing is
asserted. (The MLX backend's run: test/backends/on_mlx.)"""
from __future__ import annotations

from helpers.scaling_checks import run_and_check


def test_scaling_short(tmp_path):
    run_and_check(tmp_path / "scaling", 512)  # the embedded model: 512 B/token
