"""Backends by name: a new backend is a module and one line here (imported lazily, so a user
without llama.cpp or torch only pays for what they use)."""
from __future__ import annotations

import importlib

from aura_ros.core.config import PolicyConfig
from aura_ros.core.protocol import Policy

# name -> "module:callable(model, config, instruction=..., **kwargs) -> Policy"
BACKENDS: dict[str, str] = {
    "transformers": "aura_ros.backends.transformers.policy:VLMPolicy.from_pretrained",
    "llama_cpp": "aura_ros.backends.llama_cpp.policy:LlamaCppPolicy.from_pretrained",
}


def backend_for(model: str | None, backend: str = "auto") -> str:
    """The backend a model path selects: an explicit name wins; a .gguf file means llama.cpp."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)} or 'auto'")
        return backend
    if model and str(model).endswith(".gguf") and "llama_cpp" in BACKENDS:
        return "llama_cpp"
    return "transformers"


def make_policy(model: str | None, config: PolicyConfig | None = None, *, backend: str = "auto",
                instruction: str = "", **kwargs) -> Policy:
    """Build the policy for ``model`` (None: the embedded default) on the chosen backend."""
    name = backend_for(model, backend)
    module, _, attr = BACKENDS[name].partition(":")
    factory = importlib.import_module(module)
    for part in attr.split("."):
        factory = getattr(factory, part)
    return factory(model, config or PolicyConfig(), instruction=instruction, **kwargs)
