"""`aura-ros export-gguf`: the project's own LLaVA policies as a GGUF pair for the llama.cpp backend.

    aura-ros export-gguf --out out/gguf            # the embedded default policy (trained weights)
    aura-ros policy --model out/gguf/model.gguf --mmproj out/gguf/mmproj.gguf ...

Writes ``model.gguf`` (the llama text model with its byte-level BPE vocabulary, the action tokens
"<act_k>" and the prompt markers as control tokens) and ``mmproj.gguf`` (the vision tower and the
MLP projector, libmtmd's "mlp" projector type), both through the ``gguf`` package's writer.

Why not llama.cpp's converter script: it is not shipped with llama-cpp-python, and the models this
package trains are LLaVA with a SigLIP tower whose features are taken after the last encoder layer
(``vision_feature_layer=-1``), which the converter maps to llama.cpp's default of the second-to-last
layer. Here the layer is written explicitly (``clip.vision.feature_layer``) and the tower's
post-layernorm, which LLaVA does not apply to the features, is left out. Scope: LLaVA with a llama
text model and a SigLIP/CLIP-style tower without class embedding (every model ``tiny_models`` and
``aura-ros train`` build); anything else is refused by name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_FILE = "model.gguf"
MMPROJ_FILE = "mmproj.gguf"
# gguf token types (llama.cpp's llama_token_type): a control token is parsed from text only when
# the caller asks for special tokens, so an instruction cannot inject "<act_3>" or "<obs>".
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3


@dataclass
class ExportedGGUF:
    model: Path
    mmproj: Path | None
    n_params: int


def _np(t) -> np.ndarray:
    return t.detach().to("cpu").float().numpy().copy()


def _rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF llama stores q/k rows for rotate-half RoPE (first half, second half of each head);
    llama.cpp's LLAMA rope (type 0) rotates adjacent pairs: interleave each head's two halves."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _check_supported(model) -> None:
    cfg = model.config
    text = cfg.get_text_config()
    if cfg.model_type != "llava" or text.model_type != "llama":
        raise ValueError(f"export-gguf writes LLaVA models with a llama text model (what this package builds); "
                         f"got {cfg.model_type} with {text.model_type}")
    rope = getattr(text, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"export-gguf writes plain RoPE only; the model uses {rope.get('rope_type')!r}")
    if cfg.vision_feature_select_strategy != "full":
        raise ValueError("export-gguf needs vision_feature_select_strategy 'full' (no class token to drop)")
    if getattr(model.model.vision_tower.embeddings, "class_embedding", None) is not None:
        raise ValueError("export-gguf writes towers without a class embedding (SigLIP style)")


def _vocab(tokenizer) -> tuple[list[str], list[int], list[str]]:
    """Tokens by id (byte-level strings, as the BPE stores them), their types, and the merges."""
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model = data["model"]
    if model["type"] != "BPE" or (data.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
        raise ValueError("export-gguf writes byte-level BPE vocabularies (GPT-2 style) only")
    n = len(tokenizer)
    tokens = [""] * n
    types = [TOKEN_NORMAL] * n
    for tok, i in model["vocab"].items():
        tokens[i] = tok
    for added in data["added_tokens"]:
        tokens[added["id"]] = added["content"]
        if added["special"]:
            types[added["id"]] = TOKEN_CONTROL
    missing = [i for i, t in enumerate(tokens) if not t]
    if missing:
        raise ValueError(f"the vocabulary has no token for ids {missing[:5]}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def _write_text(model, tokenizer, path: Path) -> int:
    import gguf

    text = model.config.get_text_config()
    lm = model.model.language_model
    n_head, n_kv = text.num_attention_heads, text.num_key_value_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_head
    rope = getattr(text, "rope_parameters", None) or {}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("aura_ros policy")
    w.add_context_length(text.max_position_embeddings)
    w.add_embedding_length(text.hidden_size)
    w.add_block_count(text.num_hidden_layers)
    w.add_feed_forward_length(text.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(text, "rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(text.rms_norm_eps)
    w.add_vocab_size(text.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    tokens, types, merges = _vocab(tokenizer)
    if len(tokens) != text.vocab_size:
        raise ValueError(f"tokenizer has {len(tokens)} tokens, the model's vocabulary {text.vocab_size}")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for name, adder in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                        ("pad_token_id", w.add_pad_token_id)):
        token = getattr(tokenizer, name, None)
        if token is not None:
            adder(int(token))
    # The transformers backend's tokenizer puts BOS in front of the system prompt; so must llama.cpp.
    w.add_add_bos_token(tokenizer("x", add_special_tokens=True)["input_ids"][0] == tokenizer.bos_token_id)
    w.add_add_eos_token(False)

    tensors = {"token_embd.weight": _np(lm.embed_tokens.weight), "output_norm.weight": _np(lm.norm.weight),
               "output.weight": _np(model.lm_head.weight)}
    for i, layer in enumerate(lm.layers):
        a, m = layer.self_attn, layer.mlp
        tensors |= {f"blk.{i}.attn_norm.weight": _np(layer.input_layernorm.weight),
                    f"blk.{i}.attn_q.weight": _rope_permute(_np(a.q_proj.weight), n_head),
                    f"blk.{i}.attn_k.weight": _rope_permute(_np(a.k_proj.weight), n_kv),
                    f"blk.{i}.attn_v.weight": _np(a.v_proj.weight),
                    f"blk.{i}.attn_output.weight": _np(a.o_proj.weight),
                    f"blk.{i}.ffn_norm.weight": _np(layer.post_attention_layernorm.weight),
                    f"blk.{i}.ffn_gate.weight": _np(m.gate_proj.weight),
                    f"blk.{i}.ffn_up.weight": _np(m.up_proj.weight),
                    f"blk.{i}.ffn_down.weight": _np(m.down_proj.weight)}
    return _write(w, tensors)


def _write_mmproj(model, processor, path: Path) -> int:
    import gguf

    vc = model.config.vision_config
    tower = model.model.vision_tower
    vision = getattr(tower, "vision_model", tower)
    proj = model.model.multi_modal_projector
    act = getattr(vc, "hidden_act", "gelu")
    if act not in ("gelu", "gelu_pytorch_tanh", "gelu_new"):
        raise ValueError(f"export-gguf writes GELU towers; the model's uses {act!r}")
    if model.config.projector_hidden_act != "gelu":
        raise ValueError(f"export-gguf writes a GELU projector; the model's uses {model.config.projector_hidden_act!r}")
    feature_layer = model.config.vision_feature_layer
    if not isinstance(feature_layer, int):
        raise ValueError("export-gguf writes a single vision feature layer")
    n_layer = vc.num_hidden_layers
    # HF counts hidden states from the embeddings (index 0); so does clip.vision.feature_layer.
    layer = feature_layer if feature_layer >= 0 else n_layer + 1 + feature_layer
    ip = getattr(processor, "image_processor", processor)
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name("aura_ros policy projector")
    w.add_clip_has_vision_encoder(True)
    w.add_clip_projector_type("mlp")
    w.add_bool("clip.has_llava_projector", True)
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.image_size", vc.image_size)
    w.add_uint32("clip.vision.patch_size", vc.patch_size)
    w.add_uint32("clip.vision.embedding_length", vc.hidden_size)
    w.add_uint32("clip.vision.feed_forward_length", vc.intermediate_size)
    w.add_uint32("clip.vision.projection_dim", model.config.get_text_config().hidden_size)
    # Only the layers up to the feature layer are written: llama.cpp runs every layer it is given.
    w.add_uint32("clip.vision.block_count", layer)
    w.add_uint32("clip.vision.attention.head_count", vc.num_attention_heads)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", vc.layer_norm_eps)
    w.add_array("clip.vision.image_mean", [float(x) for x in ip.image_mean])
    w.add_array("clip.vision.image_std", [float(x) for x in ip.image_std])
    w.add_array("clip.vision.feature_layer", [int(layer)])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    emb = vision.embeddings
    tensors = {"v.patch_embd.weight": _np(emb.patch_embedding.weight),
               "v.patch_embd.bias": _np(emb.patch_embedding.bias),
               "v.position_embd.weight": _np(emb.position_embedding.weight),
               "mm.0.weight": _np(proj.linear_1.weight), "mm.0.bias": _np(proj.linear_1.bias),
               "mm.2.weight": _np(proj.linear_2.weight), "mm.2.bias": _np(proj.linear_2.bias)}
    for i, blk in enumerate(vision.encoder.layers[:layer]):
        a, m = blk.self_attn, blk.mlp
        for ours, theirs in (("attn_q", a.q_proj), ("attn_k", a.k_proj), ("attn_v", a.v_proj),
                             ("attn_out", a.out_proj), ("ffn_up", m.fc1), ("ffn_down", m.fc2),
                             ("ln1", blk.layer_norm1), ("ln2", blk.layer_norm2)):
            tensors[f"v.blk.{i}.{ours}.weight"] = _np(theirs.weight)
            tensors[f"v.blk.{i}.{ours}.bias"] = _np(theirs.bias)
    return _write(w, tensors)


def _write(w, tensors: dict[str, np.ndarray]) -> int:
    for name, t in tensors.items():
        w.add_tensor(name, np.ascontiguousarray(t, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sum(t.size for t in tensors.values())


def export_gguf(model: str | None, out: str | Path, vision: bool = True) -> ExportedGGUF:
    """Write ``model`` (a folder this package built; None: the embedded default) as a GGUF pair."""
    from aura_ros.backends.transformers.loading import load_model

    loaded = load_model(model)
    _check_supported(loaded.model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = _write_text(loaded.model, loaded.tokenizer, out / MODEL_FILE)
    mmproj = None
    if vision:
        mmproj = out / MMPROJ_FILE
        n += _write_mmproj(loaded.model, loaded.processor, mmproj)
    return ExportedGGUF(out / MODEL_FILE, mmproj, n)
