"""Model and processor loading for the policy, and the embedded default model.

    loaded = load_model(None)                   # the embedded default: the trained tiny policy (copied once into the cache)
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

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

ACTION_TOKEN_FORMAT = "<act_{}>"
MARKER_TOKENS = ("<obs>", "<state>", "<act>", "</act>")
CACHE_ENV = "AURA_ROS_CACHE"
# The embedded default: the tiny arch with the fastest control step on a 2-core CPU among the
# real VLMs (measured, see test/test_tiny_models.py and the report in docs): LLaVA's Llama decoder
# with a SigLIP tower, 16 image tokens a frame, plain 1-D RoPE.
DEFAULT_ARCH = "llava"
# The trained default policy, committed with the package (about 1 MB): the default architecture
# behaviour-cloned on the sim's memory tasks (aura_ros.sim.tasks) by `aura-ros train`; its
# aura_ros_train.json holds the recipe. Random-weight builds of every arch stay for the tests.
TRAINED_DEFAULT_DIR = Path(__file__).resolve().parents[2] / "models" / "default_policy"
TRAINED_DEFAULT_COMMAND = "aura-ros train --out aura_ros/models/default_policy"
# A build directory left by a crashed process is removed after this long (a live build takes seconds).
_STALE_BUILD_S = 3600.0

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


@contextmanager
def quiet_progress() -> Iterator[None]:
    """No transformers progress bars inside (loading/saving a tiny model would print two per call
    into a node's log); the previous setting is restored afterwards."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------- action tokens
def action_token_names(n_bins: int = 256) -> list[str]:
    """"<act_0>".."<act_{n_bins-1}>": the special token of each action bin."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return [ACTION_TOKEN_FORMAT.format(i) for i in range(n_bins)]


def action_token_ids(tokenizer, n_bins: int = 256) -> list[int]:
    """The ids of "<act_0>".."<act_{n_bins-1}>" in ``tokenizer``, bin order.

    Raises ValueError if any is missing or is not exactly one token (then bins could not be
    decoded one id at a time): use ``ensure_action_tokens`` to add them to a model.
    """
    names = action_token_names(n_bins)
    vocab = tokenizer.get_vocab()
    missing = [n for n in names if n not in vocab]
    if missing:
        raise ValueError(
            f"the tokenizer ({type(tokenizer).__name__}, {len(tokenizer)} tokens) lacks {len(missing)} of the "
            f"{n_bins} action tokens (first missing: {missing[0]!r}). Models built by aura_ros have them; for "
            "another model call aura_ros.backends.transformers.loading.ensure_action_tokens(model, tokenizer, n_bins) and "
            "save the result (the new embedding rows are untrained until the policy is fine-tuned).")
    ids = [vocab[n] for n in names]
    # One encode of all names: each must come out as its own single id (not split into bytes).
    encoded = tokenizer("".join(names), add_special_tokens=False)["input_ids"]
    if list(encoded) != ids:
        raise ValueError("the action tokens are in the vocabulary but do not encode to one id each; they must be "
                         "added as special tokens (ensure_action_tokens does that)")
    if len(set(ids)) != n_bins:
        raise ValueError("two action bins share one token id")
    return ids


def ensure_action_tokens(model, tokenizer, n_bins: int = 256) -> list[int]:
    """Add the action tokens and markers to ``tokenizer`` (special, one id each) and grow ``model``'s
    embeddings to match. Returns the action ids. A no-op for a model that has them already.

    The new rows start at the mean of the existing embeddings (transformers' mean resizing): the
    model then emits them no more often than an average token until it is fine-tuned.
    """
    vocab = tokenizer.get_vocab()
    new = [t for t in list(MARKER_TOKENS) + action_token_names(n_bins) if t not in vocab]
    if new:
        tokenizer.add_special_tokens({"extra_special_tokens": new}, replace_extra_special_tokens=False)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return action_token_ids(tokenizer, n_bins)


# --------------------------------------------------------------------------- cache folder
def default_model_dir() -> Path:
    """Where built models live: $AURA_ROS_CACHE, else ~/.cache/aura_ros."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "aura_ros"


def build_atomically(target: Path, build: Callable[[Path], Any]) -> Path:
    """Run ``build(tmp_dir)`` and move the result to ``target`` in one rename.

    A reader therefore sees either no folder or a complete one, never a half-written model, even
    if the build crashes or two processes build at once (the second rename loses and its copy is
    discarded). Returns ``target``.
    """
    target = Path(target)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            log.info("%s was built by another process meanwhile; using that one", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_stale_builds(target: Path) -> None:
    now = time.time()
    for d in target.parent.glob(f".{target.name}.build-*"):
        try:
            if now - d.stat().st_mtime > _STALE_BUILD_S:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass  # removed by another process meanwhile


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
    from aura_ros.backends.transformers import tiny_models

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


def load_model(model: str | Path | None = None, dtype: str | torch.dtype = "float32", device: str = "cpu",
               trust_remote_code: bool = False, local_files_only: bool | None = None,
               attn_implementation: str = "sdpa") -> LoadedModel:
    """Load a VLM (or a text-only causal LM) with its processor, ready for inference.

    ``model``: None (the embedded tiny default), a local folder, or a hub id (see ``resolve_model``).
    Weights must be safetensors; ``trust_remote_code`` stays off unless asked for.
    ``attn_implementation``: "sdpa" (default) or "eager" (or any transformers registered name).
    """
    from transformers import (MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING, AutoConfig, AutoModelForCausalLM,
                              AutoModelForImageTextToText, AutoTokenizer)
    from transformers.utils.hub import cached_file

    from aura_ros.backends.transformers.processors import load_processor

    source, local_only = resolve_model(model, local_files_only)
    common = dict(trust_remote_code=trust_remote_code, local_files_only=local_only)
    config = AutoConfig.from_pretrained(source, **common)
    is_vlm = type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING
    auto = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
    with quiet_progress():
        net = auto.from_pretrained(source, config=config, dtype=_torch_dtype(dtype), use_safetensors=True,
                                   attn_implementation=attn_implementation, **common)
    net = net.to(device).eval()
    if is_vlm:
        processor = load_processor(source, **common)
        tokenizer = processor.tokenizer
    else:
        tokenizer = processor = AutoTokenizer.from_pretrained(source, **common)
    # The folder the files came from (a hub id resolves into its snapshot in the HF cache).
    path = Path(source) if Path(source).is_dir() else Path(cached_file(source, "config.json",
                                                                       local_files_only=True)).parent
    rows = net.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        # Ids past the embedding table fail deep inside the forward pass; say so here instead.
        raise ValueError(f"{source}: the tokenizer has {len(tokenizer)} tokens but the model only {rows} embedding "
                         "rows (tokens were added without resizing the model)")
    return LoadedModel(model=net, processor=processor, tokenizer=tokenizer, config=net.config,
                       arch=str(net.config.model_type), is_mrope=config_is_mrope(net.config), path=path,
                       is_vlm=is_vlm)
