"""The tiny VLMs of real architectures: built from configs, saved, reloaded, run on an image.

Every arch goes through the real path the policy uses: the saved folder -> load_model ->
the arch's own processor on a camera frame + the observation prompt -> the model's forward.
No timing is asserted (CI machines vary); `python -m aura_ros.backends.transformers.tiny_models` prints them.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import DynamicCache

from aura_ros.backends.transformers.loading import load_model
from aura_ros.backends.transformers.tiny_models import (
    ARCHS,
    DEFAULT_IMAGE_TOKENS,
    GEMMA3_SLIDING_WINDOW,
    build_tiny_vlm,
    model_inputs,
    observation_prompt,
    position_inputs,
    read_info,
    train_tokenizer,
)
from aura_ros.backends.transformers.vocab import MARKER_TOKENS, action_token_ids
from aura_ros.bench.step_time import measure_step

# PaliGemma is a prefix-LM: with no suffix its whole prompt attends bidirectionally, so a chunk
# appended to a cache cannot equal the same tokens run in one pass (by design, not a cache bug).
CACHE_EQUIVALENT = tuple(a for a in ARCHS if a != "paligemma")


@pytest.fixture(autouse=True, scope="module")
def _offline():
    """Offline for the whole module, set before the module-scoped builds below run."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """Every arch built once for this module (about 0.05 s each after the first)."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny_vlm(arch, root / arch) for arch in ARCHS}


def frame(h: int = 48, w: int = 64, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def image_token_id(model) -> int:
    return getattr(model.config, "image_token_id", None) or model.config.image_token_index


@pytest.mark.parametrize("arch", ARCHS)
def test_saved_folder_is_safetensors_with_build_info(built, arch):
    path = built[arch]
    assert (path / "model.safetensors").is_file()
    assert not list(path.glob("*.bin")), "no pickle weights"
    info = read_info(path)
    assert info.arch == arch and info.n_action_bins == 256
    assert info.image_tokens_per_frame == DEFAULT_IMAGE_TOKENS
    # "hidden ~64, 2 layers, ~150-300k params": the size the embedded default is sized for
    assert 100_000 < info.n_params < 300_000, info.n_params
    config = json.loads((path / "config.json").read_text())
    text = config.get("text_config", config)
    assert text["hidden_size"] == 64 and text["num_hidden_layers"] == 2


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_with_image_through_the_real_processor(built, arch):
    loaded = load_model(built[arch])
    assert loaded.is_vlm and loaded.arch == arch and not loaded.model.training
    x = model_inputs(loaded, frame(64, 64), observation_prompt(loaded))
    ids = x["input_ids"]
    # A square frame costs exactly the advertised number of image tokens.
    assert int((ids == image_token_id(loaded.model)).sum()) == read_info(built[arch]).image_tokens_per_frame
    for marker in ("<obs>", "<state>", "<act>"):
        assert loaded.tokenizer.convert_tokens_to_ids(marker) in ids[0].tolist()
    with torch.inference_mode():
        logits = loaded.model(**x, **position_inputs(loaded, ids, 0, x.get("image_grid_thw"))).logits
    assert logits.shape == (1, ids.shape[1], loaded.model.get_input_embeddings().weight.shape[0])
    assert torch.isfinite(logits).all()
    # The pixels reach the logits: another frame changes them (a model that ignored the image,
    # e.g. a dropped pixel_values key, would not).
    y = model_inputs(loaded, frame(64, 64, seed=1), observation_prompt(loaded))
    with torch.inference_mode():
        other = loaded.model(**y, **position_inputs(loaded, y["input_ids"], 0, y.get("image_grid_thw"))).logits
    assert not torch.allclose(logits[0, -1], other[0, -1])


@pytest.mark.parametrize("arch", CACHE_EQUIVALENT)
def test_image_chunk_appended_to_a_cache_equals_one_pass(built, arch):
    """prefix, then (frame + state) through a DynamicCache == the whole sequence in one forward.

    This is what the policy does every step; it checks the processor output, the cache and (for
    Qwen2-VL) the explicit mrope positions, and for Gemma 3 the absolute-position token types.
    """
    loaded = load_model(built[arch])
    model = loaded.model
    prefix = loaded.tokenizer("Instruction: pick up the red block\n", add_special_tokens=False,
                              return_tensors="pt")["input_ids"]
    n = prefix.shape[1]
    chunk = model_inputs(loaded, frame(), observation_prompt(loaded), past_tokens=n)
    whole = dict(chunk, input_ids=torch.cat([prefix, chunk["input_ids"]], 1))
    with torch.inference_mode():
        one_pass = model(**whole, **position_inputs(loaded, whole["input_ids"], 0, chunk.get("image_grid_thw"))).logits
        cache = DynamicCache(config=model.config)
        model(input_ids=prefix, past_key_values=cache, use_cache=True, **position_inputs(loaded, prefix, 0))
        stepped = model(**chunk, past_key_values=cache, use_cache=True,
                        **position_inputs(loaded, chunk["input_ids"], n, chunk.get("image_grid_thw"))).logits
    torch.testing.assert_close(stepped[0], one_pass[0, n:], atol=1e-5, rtol=1e-4)


def test_gemma3_token_types_must_cover_the_cached_past(built):
    """Why model_inputs pads Gemma 3's token types: chunk-only ids misplace the image block."""
    loaded = load_model(built["gemma3"])
    prefix = loaded.tokenizer("Instruction: go to the door\n", add_special_tokens=False,
                              return_tensors="pt")["input_ids"]
    n = prefix.shape[1]
    good = model_inputs(loaded, frame(), observation_prompt(loaded), past_tokens=n)
    bad = model_inputs(loaded, frame(), observation_prompt(loaded))
    outs = []
    with torch.inference_mode():
        for x in (good, bad):
            cache = DynamicCache(config=loaded.model.config)
            loaded.model(input_ids=prefix, past_key_values=cache, use_cache=True)
            outs.append(loaded.model(**x, past_key_values=cache, use_cache=True).logits)
    assert (outs[0] - outs[1]).abs().max() > 1e-3


def test_gemma3_mixes_sliding_and_full_layers(built):
    cfg = load_model(built["gemma3"]).model.config.get_text_config()
    assert cfg.sliding_window == GEMMA3_SLIDING_WINDOW
    assert set(cfg.layer_types) == {"sliding_attention", "full_attention"}


@pytest.mark.parametrize("arch", ("idefics3", "smolvlm"))
def test_idefics3_family_does_not_split_images(built, arch):
    loaded = load_model(built[arch])
    assert loaded.processor.image_processor.do_image_splitting is False
    # A wide frame would be split into tiles (many times the tokens) if splitting were on.
    x = model_inputs(loaded, frame(48, 256), observation_prompt(loaded))
    assert int((x["input_ids"] == image_token_id(loaded.model)).sum()) == DEFAULT_IMAGE_TOKENS


def test_qwen2_vl_is_mrope_and_frame_cost_depends_only_on_resolution(built):
    loaded = load_model(built["qwen2_vl"])
    assert loaded.is_mrope
    counts = {int((model_inputs(loaded, frame(480, 640, seed=s), observation_prompt(loaded))["input_ids"]
                   == image_token_id(loaded.model)).sum()) for s in range(3)}
    assert len(counts) == 1 and 0 < counts.pop() <= DEFAULT_IMAGE_TOKENS


@pytest.mark.parametrize("arch", ARCHS)
def test_action_tokens_and_markers_are_single_contiguous_ids(built, arch):
    tok = load_model(built[arch]).tokenizer
    ids = action_token_ids(tok, 256)
    assert ids == list(range(ids[0], ids[0] + 256))
    for i in (0, 17, 255):
        assert tok(f"<act_{i}>", add_special_tokens=False)["input_ids"] == [ids[i]]
        assert tok.decode([ids[i]]) == f"<act_{i}>"
    for m in MARKER_TOKENS:
        assert len(tok(m, add_special_tokens=False)["input_ids"]) == 1
    # Ordinary text never produces an action id: bins come only from the decoder's choice.
    text = tok("shoulder 0.12 elbow -1.30 act_5 <act 5> gripper 1.00", add_special_tokens=False)["input_ids"]
    assert not set(text) & set(ids)


def test_tokenizer_size_and_byte_level_round_trip():
    tok = train_tokenizer("llava")
    assert 700 <= len(tok) <= 1300  # "vocab ~1k including the action tokens"
    text = "Instruction: wipe the plate, then open the drawer! ÄÖ 3.14 -2.50 🤖"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # byte-level: nothing is unknown


def test_build_is_deterministic_per_seed(tmp_path):
    a = build_tiny_vlm("llava", tmp_path / "a", seed=3)
    b = build_tiny_vlm("llava", tmp_path / "b", seed=3)
    c = build_tiny_vlm("llava", tmp_path / "c", seed=4)

    def digest(p, name):
        return hashlib.sha256((p / name).read_bytes()).hexdigest()

    assert digest(a, "model.safetensors") == digest(b, "model.safetensors") != digest(c, "model.safetensors")
    assert digest(a, "tokenizer.json") == digest(c, "tokenizer.json")


def test_image_size_sets_the_tokens_per_frame(tmp_path):
    path = build_tiny_vlm("llava", tmp_path / "big", image_size=64)
    assert read_info(path).image_tokens_per_frame == 64
    loaded = load_model(path)
    x = model_inputs(loaded, frame(480, 640), observation_prompt(loaded))
    assert int((x["input_ids"] == image_token_id(loaded.model)).sum()) == 64
    with pytest.raises(ValueError, match="multiple of patch_size"):
        build_tiny_vlm("llava", tmp_path / "odd", image_size=36)
    with pytest.raises(ValueError, match="unknown tiny arch"):
        build_tiny_vlm("gpt2", tmp_path / "x")


def test_measure_step_reports_a_step(built):
    r = measure_step(built["llava"], past_tokens=200, repeats=2, threads=None)
    assert r["image_tokens"] == DEFAULT_IMAGE_TOKENS and r["past_tokens"] == 200
    assert r["step_ms"] >= r["obs_forward_ms"] > 0 and r["action_token_ms"] > 0
