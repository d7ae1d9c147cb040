"""The registry carries a tool's --backend through the loading options: what a bench builds and
what it reports as refused are the chosen backend's, not the one the model path would pick."""
from __future__ import annotations

import argparse

import pytest

from aura_ros.core.registry import BACKENDS, backend_options, unsupported
from aura_ros.tools import cli


def test_an_explicit_backend_travels_with_the_options():
    assert backend_options(None, backend="mlx") == {"backend": "mlx"}
    assert backend_options(None) == {}  # auto: the model path decides, nothing to carry
    assert backend_options("/models/policy.gguf", backend="transformers") == {"backend": "transformers"}


def test_refusals_follow_the_backend_among_the_options():
    # The embedded default under auto is transformers, which runs every memory policy; the same
    # model on MLX refuses H2O (no attention weights) and the unbounded reference.
    assert unsupported(None, ["h2o", "action_gate"]) == {}
    refused = unsupported(None, ["h2o", "action_gate", "unbounded"], backend_options(None, backend="mlx"))
    assert set(refused) == {"h2o", "unbounded"} and "attention" in refused["h2o"]


def test_an_option_the_backend_does_not_take_is_an_error():
    with pytest.raises(ValueError, match="--kv-type do not apply to the mlx backend"):
        backend_options(None, kv_type="q8_0", backend="mlx")


def test_every_bench_takes_backend():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli._gguf_arguments(sub.add_parser("x"))
    for name in BACKENDS:
        args = parser.parse_args(["x", "--backend", name])
        args.model, args.threads = None, 0
        assert cli._model_options(args) == {"backend": name}
    with pytest.raises(SystemExit):
        parser.parse_args(["x", "--backend", "tensorflow"])
