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
    "mlx": "aura_ros.backends.mlx.policy:MLXPolicy.from_pretrained",
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


def unsupported(model: str | None, policies, options: dict | None = None, backend: str = "auto") -> dict[str, str]:
    """The memory policies the chosen backend cannot run with these loading options, with the reason."""
    # A backend that cannot run some policies says so by a ``refuses(policy, options)`` in its
    # package (importing the package costs nothing: its __init__ imports no library).
    name = backend_for(model, backend)
    package = BACKENDS[name].partition(":")[0].rpartition(".")[0]
    refuses = getattr(importlib.import_module(package), "refuses", None)
    if refuses is None:
        return {}
    return {p: why for p in policies if (why := refuses(p, options))}


def backend_options(model: str | None, mmproj: str | None = None, kv_type: str | None = None,
                    threads: int | None = None, backend: str = "auto") -> dict:
    """The loading options of a tool's command line (--mmproj, --kv-type, --threads) that the chosen
    backend takes, as ``make_policy`` keywords. llama.cpp's options given for a transformers model
    are an error, not silently dropped."""
    if backend_for(model, backend) != "llama_cpp":
        given = [name for name, v in (("--mmproj", mmproj), ("--kv-type", kv_type)) if v]
        if given:
            raise ValueError(f"{', '.join(given)} apply to GGUF models (the llama.cpp backend) only")
        return {}
    out: dict = {}
    if mmproj:
        out["mmproj"] = mmproj
    if kv_type:
        out["kv_type"] = kv_type
    if threads and threads > 0:
        out["n_threads"] = int(threads)
    return out
