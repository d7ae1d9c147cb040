"""Model and processor loading for the policy, and the embedded default model.

    loaded = load_model(None)                   # the embedded default: the trained tiny policy (cached once)
    loaded = load_model("/models/my-vla")       # a local folder (safetensors)
    loaded = load_model("org/name")             # a hub id: from the HF cache, downloaded only when online
    ids = action_token_ids(loaded.tokenizer, 256)

Actions are decoded OpenVLA-style: ``n_bins`` bins per action dimension, each bin a reserved
special token "<act_0>".."<act_{n-1}>" (one id each), plus the prompt markers "<obs>", "<state>",
"<act>", "</act>". Every model this package builds has them; ``ensure_action_tokens`` adds them
to a user's model (new embedding rows) so it can be fine-tuned or run as a policy.

The embedded default is a tiny LLaVA (SigLIP tower + Llama decoder, ~210k parameters) trained by
behaviour cloning on the sim's memory tasks (``aura-ros train``; the recipe is in its
aura_ros_train.json). ``ensure_default_model(arch, trained=False)`` builds random-weight tiny
models of every architecture for tests.

Safe defaults: safetensors only (no pickle), ``trust_remote_code`` off, eval mode, and no network
when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set or the model is already cached.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aura_ros.backends.transformers import tiny_models
from aura_ros.backends.transformers.store import build_atomically, default_model_dir, quiet_progress

log = logging.getLogger(__name__)

# The embedded default: the tiny arch with the fastest control step on a 2-core CPU among the
# real VLMs (measured, see test/test_tiny_models.py and the report in docs): LLaVA's Llama decoder
# with a SigLIP tower, 16 image tokens a frame, plain 1-D RoPE.
DEFAULT_ARCH = "llava"
# The trained default policy, committed with the package (about 1 MB): the default architecture
# behaviour-cloned on the sim's memory tasks (aura_ros.sim.tasks) by `aura-ros train`; its
# aura_ros_train.json holds the recipe. Random-weight builds of every arch stay for the tests.
TRAINED_DEFAULT_DIR = Path(__file__).resolve().parents[2] / "models" / "default_policy"
TRAINED_DEFAULT_COMMAND = "aura-ros train --out aura_ros/models/default_policy"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def trained_default_available() -> bool:
    return (TRAINED_DEFAULT_DIR / "model.safetensors").is_file()


def ensure_default_model(arch: str = DEFAULT_ARCH, seed: int = 0, n_action_bins: int = 256,
                         cache_dir: str | Path | None = None, trained: bool = True) -> Path:
    """The embedded default VLM's folder: built once (a few seconds), reused afterwards.

    The default (``arch`` = DEFAULT_ARCH, seed 0, 256 bins, ``trained``) is the trained policy
    shipped with the package, copied once into the cache folder (named after its weights' digest,
    so a new release is not shadowed by an old copy). Anything else, or ``trained=False``, is a
    tiny model of that arch with random weights, built from its config; its folder name carries
    the arch, seed, bins and builder version, so a change of any of them builds a new model.
    """

    root = Path(cache_dir) if cache_dir is not None else default_model_dir()
    if trained and arch == DEFAULT_ARCH and seed == 0 and n_action_bins == 256 and trained_default_available():
        import hashlib

        digest = hashlib.sha256((TRAINED_DEFAULT_DIR / "model.safetensors").read_bytes()).hexdigest()[:12]
        target = root / f"policy-{arch}-{digest}"
        if target.is_dir():
            return target
        log.info("installing the trained default policy into %s", target)
        return build_atomically(target, lambda tmp: shutil.copytree(TRAINED_DEFAULT_DIR, tmp, dirs_exist_ok=True))
    target = root / f"tiny-{arch}-s{seed}-b{n_action_bins}-v{tiny_models.BUILDER_VERSION}"
    if target.is_dir():
        return target
    log.info("building the embedded default model (%s) into %s", arch, target)
    return build_atomically(target, lambda tmp: tiny_models.build_tiny_vlm(arch, tmp, seed=seed,
                                                                           n_action_bins=n_action_bins))


# --------------------------------------------------------------------------- loading
@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: Any  # a multimodal processor; for a text-only model the tokenizer itself
    tokenizer: Any
    config: Any
    arch: str  # config.model_type, e.g. "llava", "qwen2_vl", "llama"
    is_mrope: bool  # Qwen2-VL family: 3-D positions, advanced per image by its grid, not its tokens
    path: Path  # the local folder the weights came from
    is_vlm: bool  # False for a text-only causal LM (e.g. the SmolLM2 decoder)


def is_offline() -> bool:
    """HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set to a true value (read at call time)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def resolve_model(model: str | Path | None, local_files_only: bool | None = None) -> tuple[str, bool]:
    """(what to pass to from_pretrained, local_files_only) for ``model``.

    None: the embedded default (built on first use). A folder: itself. A hub id: the cached copy
    when there is one; a download only when not offline; otherwise a FileNotFoundError that says
    no download is possible.
    """
    if model is None or str(model) == "":
        return str(ensure_default_model()), True
    p = Path(model).expanduser()
    if p.is_dir():
        return str(p), True
    name = str(model)
    if p.exists():
        raise FileNotFoundError(f"{name!r} is a file; a model is a folder (config.json, *.safetensors, processor)")
    if isinstance(model, Path) or _looks_like_path(name):
        raise FileNotFoundError(f"model folder {name!r} does not exist")
    from transformers.utils.hub import cached_file

    cached = cached_file(name, "config.json", local_files_only=True, _raise_exceptions_for_missing_entries=False,
                         _raise_exceptions_for_connection_errors=False)
    if cached is not None:
        return name, True if local_files_only is None else local_files_only
    if is_offline() or local_files_only:
        why = "HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set" if is_offline() else "local_files_only=True"
        raise FileNotFoundError(
            f"model {name!r} is neither a local folder nor in the Hugging Face cache, and {why}: no download is "
            "possible. Pass a local folder (model.path), or pre-download it on a connected machine.")
    return name, False


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or 'auto'") from None


def config_is_mrope(config) -> bool:
    """True for the Qwen2-VL family's 3-D multimodal RoPE."""
    text = config.get_text_config()
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    return "mrope_section" in rope or config.model_type in ("qwen2_vl", "qwen2_5_vl")


# ------------------------------------------------------------------ one model, many robots
@dataclass
class SharedModel:
    """One model loaded while sharing is on, and how often it was asked for."""

    path: Path
    loads: int  # times this process read these weights from disk, shared or not (1: read once)
    users: int  # holders now: processors handed out with this module that are still alive


_sharing = threading.Lock()
# key -> (the loaded model, weak references to the processors handed out with it: a policy keeps
# its processor for its life, so the live ones are the model's holders).
_shared: dict[tuple, tuple[LoadedModel, list]] | None = None  # None: every call loads
_weight_reads: Counter[str] = Counter()  # model folder -> times _load_model read its weights


def share_loaded_models(on: bool = True) -> None:
    """From now on, in this process, ``load_model`` with the same arguments returns the same
    nn.Module (one copy of the weights for every robot of ``aura-ros serve``). Each call still
    gets a processor of its own: a fast tokenizer is not safe to call from two threads at once
    (tokenizers' "Already borrowed"), and each robot steps on its own worker thread.
    ``on=False`` forgets the shared models (their holders keep them) and loads anew each call."""
    global _shared
    with _sharing:
        if not on:
            _shared = None
        elif _shared is None:
            _shared = {}


def shared_models() -> list[SharedModel]:
    """The models loaded while sharing is on (empty when it is off)."""
    with _sharing:
        return [SharedModel(loaded.path, _weight_reads[str(loaded.path)], sum(ref() is not None for ref in holders))
                for loaded, holders in (_shared or {}).values()]


def is_shared(module: torch.nn.Module) -> bool:
    """Whether ``module`` was handed out by the sharing ``load_model`` (others may hold it too)."""
    with _sharing:
        return any(loaded.model is module for loaded, _ in (_shared or {}).values())


def load_model(model: str | Path | None = None, dtype: str | torch.dtype = "float32", device: str = "cpu",
               trust_remote_code: bool = False, local_files_only: bool | None = None,
               attn_implementation: str = "sdpa") -> LoadedModel:
    """Load a VLM (or a text-only causal LM) with its processor, ready for inference.

    ``model``: None (the embedded tiny default), a local folder, or a hub id (see ``resolve_model``).
    Weights must be safetensors; ``trust_remote_code`` stays off unless asked for.
    ``attn_implementation``: "sdpa" (default) or "eager" (or any transformers registered name).
    After ``share_loaded_models()``, the same arguments give the same module (see there).
    """
    if _shared is None:
        return _load_model(model, dtype, device, trust_remote_code, local_files_only, attn_implementation)
    source, local_only = resolve_model(model, local_files_only)
    key = (source, str(_torch_dtype(dtype)), str(torch.device(device)), bool(trust_remote_code), local_only,
           attn_implementation)
    with _sharing:  # held while loading: two robots configuring at once still load once
        if key not in _shared:
            loaded = _load_model(source, dtype, device, trust_remote_code, local_only, attn_implementation)
            _shared[key] = loaded, []
        loaded, holders = _shared[key]
        processor, tokenizer = _load_processor(source, loaded.is_vlm, trust_remote_code, local_only)
        holders[:] = [ref for ref in holders if ref() is not None] + [weakref.ref(processor)]
        return dataclasses.replace(loaded, processor=processor, tokenizer=tokenizer)


def _load_processor(source: str, is_vlm: bool, trust_remote_code: bool, local_only: bool):
    """(processor, tokenizer); for a text-only model both are the tokenizer."""
    from transformers import AutoTokenizer

    from aura_ros.backends.transformers.processors import load_processor

    common = dict(trust_remote_code=trust_remote_code, local_files_only=local_only)
    if is_vlm:
        processor = load_processor(source, **common)
        return processor, processor.tokenizer
    tokenizer = AutoTokenizer.from_pretrained(source, **common)
    return tokenizer, tokenizer


def _load_model(model, dtype, device, trust_remote_code, local_files_only, attn_implementation) -> LoadedModel:
    from transformers import (
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING,
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
    )
    from transformers.utils.hub import cached_file

    source, local_only = resolve_model(model, local_files_only)
    common = dict(trust_remote_code=trust_remote_code, local_files_only=local_only)
    config = AutoConfig.from_pretrained(source, **common)
    is_vlm = type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING
    auto = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
    with quiet_progress():
        net = auto.from_pretrained(source, config=config, dtype=_torch_dtype(dtype), use_safetensors=True,
                                   attn_implementation=attn_implementation, **common)
    net = net.to(device).eval()
    processor, tokenizer = _load_processor(source, is_vlm, trust_remote_code, local_only)
    # The folder the files came from (a hub id resolves into its snapshot in the HF cache).
    path = Path(source) if Path(source).is_dir() else Path(cached_file(source, "config.json",
                                                                       local_files_only=True)).parent
    _weight_reads[str(path)] += 1
    rows = net.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        # Ids past the embedding table fail deep inside the forward pass; say so here instead.
        raise ValueError(f"{source}: the tokenizer has {len(tokenizer)} tokens but the model only {rows} embedding "
                         "rows (tokens were added without resizing the model)")
    return LoadedModel(model=net, processor=processor, tokenizer=tokenizer, config=net.config,
                       arch=str(net.config.model_type), is_mrope=config_is_mrope(net.config), path=path,
                       is_vlm=is_vlm)
