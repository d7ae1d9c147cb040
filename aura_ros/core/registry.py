"""Backends by name: a new backend is a folder and one line here (imported lazily, so a user
without llama.cpp or torch only pays for what they use).

What else a tool or the node needs to know about a backend is said by its package
(``aura_ros.backends.<name>/__init__.py``, which imports nothing heavy), each optional:

- ``OPTIONS``: the loading options it takes, as {option name: ``make_policy`` keyword}; option
  names are the tools' and the node's (``mmproj``, ``kv_type``, ``threads``, ``dtype``, ``device``,
  ``trust_remote_code``); none when absent.
- ``refuses(policy, options) -> str | None`` or ``REFUSES`` ({memory policy: why}): the memory
  policies it cannot run with these options; none when absent.
- ``MODEL_SUFFIXES``: model file endings that select it under ``backend: auto`` (``.gguf``).
- ``REQUIRES``: modules of an opt-in runtime it needs beyond the base install (tests skip without).
- ``SERVING``: what serving several robots from one process does with its model (one copy
  shared, or one per robot); ``share_models()`` turns the sharing on, ``shared_models()`` lists
  what is shared ({"path", "loads", "users"} each).
- ``SMALL_BUDGET_BYTES``: a budget at which its embedded default holds a few steps, so every
  memory policy evicts (the conformance test); ``SMALL_BUDGET_BYTES`` below when absent.
"""
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
# The backend of a model that no backend's MODEL_SUFFIXES claims.
DEFAULT_BACKEND = "transformers"
# 128 tokens of the transformers embedded default.
SMALL_BUDGET_BYTES = 64 * 1024


def backend_package(name: str):
    """The package of backend ``name`` (its ``__init__`` only: the facts above, nothing heavy)."""
    module = BACKENDS[name].partition(":")[0]
    return importlib.import_module(module.rsplit(".", 1)[0])


def backend_fact(name: str, attr: str, default=None):
    """One of the optional facts a backend's package states (see the module docstring)."""
    return getattr(backend_package(name), attr, default)


def backend_for(model: str | None, backend: str = "auto") -> str:
    """The backend a model path selects: an explicit name wins; else the backend whose model
    suffixes the path ends with (a .gguf file: llama.cpp); else the default."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)} or 'auto'")
        return backend
    if model:
        for name in BACKENDS:
            if any(str(model).endswith(suffix) for suffix in backend_fact(name, "MODEL_SUFFIXES", ())):
                return name
    return DEFAULT_BACKEND


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
    """The memory policies the chosen backend cannot run with these loading options, with the reason.
    A ``backend`` among the options (``backend_options`` puts the tools' --backend there) chooses it."""
    if backend == "auto" and options:
        backend = options.get("backend", "auto")
    package = backend_package(backend_for(model, backend))
    refuses = getattr(package, "refuses", None)
    if refuses is None:
        table = getattr(package, "REFUSES", {})
        return {p: table[p] for p in policies if p in table}
    return {p: why for p in policies if (why := refuses(p, options))}


def backend_options(model: str | None, mmproj: str | None = None, kv_type: str | None = None,
                    threads: int | None = None, backend: str = "auto", strict: bool = True, **more) -> dict:
    """The loading options given (a tool's --mmproj, --kv-type, --threads; the node's parameters
    in ``more``) that the chosen backend takes, as ``make_policy`` keywords. Empty values and
    threads <= 0 mean "not given". strict: an option the backend does not take is an error, not
    silently dropped (a tool's command line); the node passes every backend's parameters and
    leaves strict off. Threads are never an error: every tool has --threads. An explicit backend is
    among the options (``make_policy`` and ``unsupported`` read it from there)."""
    name = backend_for(model, backend)
    accepted = backend_fact(name, "OPTIONS", {})
    given = {"mmproj": mmproj, "kv_type": kv_type, "threads": threads if threads and threads > 0 else None, **more}
    out: dict = {}
    refused = []
    for option, value in given.items():
        if value is None or value == "":
            continue
        if option in accepted:
            out[accepted[option]] = value
        elif strict and option != "threads":
            refused.append("--" + option.replace("_", "-"))
    if refused:
        takers = sorted(n for n in BACKENDS if set(backend_fact(n, "OPTIONS", {})) >= {r[2:].replace("-", "_")
                                                                                     for r in refused})
        raise ValueError(f"{', '.join(refused)} do not apply to the {name} backend"
                         + (f" (they are {', '.join(takers)} options)" if takers else ""))
    if backend != "auto":
        out["backend"] = name
    return out


def share_loaded_models() -> dict[str, str]:
    """For the rest of this process, every backend that can shares one loaded model between the
    policies that ask for the same one (``aura-ros serve``). Returns {backend: what it does}."""
    out = {}
    for name in BACKENDS:
        share = backend_fact(name, "share_models")
        if share is not None:
            share()
        out[name] = backend_fact(name, "SERVING", "each robot loads its own model")
    return out


def shared_models() -> dict[str, list[dict]]:
    """{backend: the models it shares now, {"path", "loads", "users"} each}; backends without sharing
    or that loaded nothing are left out."""
    out = {}
    for name in BACKENDS:
        listed = backend_fact(name, "shared_models")
        models = listed() if listed is not None else []
        if models:
            out[name] = models
    return out
