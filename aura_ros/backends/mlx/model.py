"""The Llava policy model in MLX: a SigLIP vision tower and the multimodal projector written here,
mlx-lm's Llama (``mlx_lm.models.llama``) for the decoder, all read from the same safetensors the
transformers backend loads.

What this backend runs is what a bounded, re-rotated store can hold: a Llava folder with a SigLIP
tower and a Llama decoder with plain 1-D RoPE (the shipped default and the transformers backend's
tiny "llava" builds). Anything else (Qwen2-VL's 3-D mrope, another architecture, scaled RoPE) is
refused with the reason, before any weights are read.

The image features are the tower's hidden state after layer ``vision_feature_layer`` (-1: the last
encoder layer, before ``post_layernorm``: transformers' Llava reads ``hidden_states[layer]`` of the
tower, not its pooled or normalised output); strategy "default" drops the first (CLS) token, "full"
keeps every patch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models import llama


class UnsupportedModelError(RuntimeError):
    """A model this backend cannot run on its fixed-slot, re-rotated store; the message says why."""


_ACTIVATIONS = {"gelu": nn.gelu, "gelu_pytorch_tanh": nn.gelu_approx, "gelu_new": nn.gelu_approx}


def activation(name: str):
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise UnsupportedModelError(f"activation {name!r} is not implemented in the MLX backend "
                                    f"(known: {sorted(_ACTIVATIONS)})") from None


# ---------------------------------------------------------------------- the SigLIP vision tower
@dataclass(frozen=True)
class VisionConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"

    @classmethod
    def from_dict(cls, d: dict) -> VisionConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class SiglipAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.scale = (d // self.heads) ** -0.5
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)

    def __call__(self, x: mx.array) -> mx.array:
        b, n, d = x.shape

        def heads(t):
            return t.reshape(b, n, self.heads, -1).transpose(0, 2, 1, 3)

        out = mx.fast.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)),
                                                   heads(self.v_proj(x)), scale=self.scale)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, n, d))


class SiglipMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.act = activation(cfg.hidden_act)
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(self.act(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = SiglipMLP(cfg)

    def __call__(self, x: mx.array) -> mx.array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        # MLX convolutions are channels-last: weight [out, kh, kw, in], input NHWC.
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Embedding((cfg.image_size // cfg.patch_size) ** 2, cfg.hidden_size)

    def __call__(self, pixels_nhwc: mx.array) -> mx.array:
        x = self.patch_embedding(pixels_nhwc)  # [B, h, w, D], patches row-major like torch's flatten(2)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        return x + self.position_embedding.weight[None, : x.shape[1]]


class SiglipEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = [SiglipEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)]


class SiglipVisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embeddings = SiglipEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)

    def hidden_state(self, pixels_nhwc: mx.array, layer: int) -> mx.array:
        """hidden_states[layer] as transformers counts them: 0 the embeddings, i after layer i."""
        n = len(self.encoder.layers)
        index = layer % (n + 1)
        x = self.embeddings(pixels_nhwc)
        for block in self.encoder.layers[:index]:
            x = block(x)
        return x


class LlavaProjector(nn.Module):
    def __init__(self, vision: int, text: int, act: str, bias: bool):
        super().__init__()
        self.linear_1 = nn.Linear(vision, text, bias=bias)
        self.act = activation(act)
        self.linear_2 = nn.Linear(text, text, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_2(self.act(self.linear_1(x)))


# ---------------------------------------------------------------------- the whole model
class LlavaModel(nn.Module):
    """SigLIP tower + projector + mlx-lm Llama; one chunk of one episode at a time (batch 1)."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        vision = VisionConfig.from_dict(config["vision_config"])
        self.text_args = text_args(config["text_config"])
        self.vision_feature_layer = int(config.get("vision_feature_layer", -2))
        self.drop_cls = config.get("vision_feature_select_strategy", "default") == "default"
        self.image_token_id = int(config.get("image_token_index", config.get("image_token_id", -1)))
        self.vision_tower = SiglipVisionTower(vision)
        self.multi_modal_projector = LlavaProjector(vision.hidden_size, self.text_args.hidden_size,
                                                    config.get("projector_hidden_act", "gelu"),
                                                    bool(config.get("multimodal_projector_bias", True)))
        self.language_model = llama.Model(self.text_args)

    @property
    def layers(self):
        return self.language_model.model.layers

    def image_features(self, pixel_values: np.ndarray) -> mx.array:
        """[n_images, tokens, text hidden] from pixel values [n_images, C, H, W] (the processor's NCHW)."""
        pixels = mx.array(np.ascontiguousarray(np.asarray(pixel_values, dtype=np.float32).transpose(0, 2, 3, 1)))
        h = self.vision_tower.hidden_state(pixels, self.vision_feature_layer)
        if self.drop_cls:
            h = h[:, 1:]
        return self.multi_modal_projector(h)

    def embed(self, input_ids: np.ndarray, pixel_values: np.ndarray | None) -> tuple[mx.array, mx.array | None]:
        """The decoder's input [1, n, hidden] (image features at the image tokens, in order) and the
        image features [m, hidden] placed there (None without an image)."""
        ids = np.asarray(input_ids).reshape(1, -1)
        embeds = self.language_model.model.embed_tokens(mx.array(ids))
        if pixel_values is None:
            return embeds, None
        feats = self.image_features(pixel_values)
        feats = feats.reshape(-1, feats.shape[-1])
        where = np.nonzero(ids[0] == self.image_token_id)[0]
        if where.size != feats.shape[0]:
            raise ValueError(f"{where.size} image tokens in the prompt but {feats.shape[0]} image features")
        embeds[0, mx.array(where)] = feats.astype(embeds.dtype)
        return embeds, feats

    def last_logits(self, embeds: mx.array, cache: list) -> mx.array:
        """Run the decoder over ``embeds`` through ``cache`` (one object per layer, mlx-lm's cache
        contract); the logits of the last token [vocab]."""
        lm = self.language_model
        h = lm.model(None, cache=cache, input_embeddings=embeds)[:, -1]
        out = lm.model.embed_tokens.as_linear(h) if self.text_args.tie_word_embeddings else lm.lm_head(h)
        return out[0]


def text_args(text: dict) -> llama.ModelArgs:
    """mlx-lm's Llama arguments from a transformers Llama text config; refuses what the store's
    re-rotation does not cover."""
    if text.get("model_type", "llama") != "llama":
        raise UnsupportedModelError(f"text model {text.get('model_type')!r}: the MLX backend runs Llama decoders only")
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default" or "mrope_section" in rope:
        raise UnsupportedModelError(
            f"RoPE type {rope_type!r}{' (mrope)' if 'mrope_section' in rope else ''}: the MLX store re-rotates "
            "kept keys by plain 1-D RoPE only")
    args = dict(text)
    args["rope_theta"] = float(rope.get("rope_theta", text.get("rope_theta", 10000.0)))
    args["rope_scaling"] = None
    args["rope_traditional"] = False  # transformers' Llama pairs dims i and i + D/2 (rotate-half)
    args.setdefault("tie_word_embeddings", False)
    return llama.ModelArgs.from_dict(args)


# ---------------------------------------------------------------------- loading
def check_supported(config: dict) -> None:
    """Refuse, before any weights are read, what this backend cannot run."""
    mt = config.get("model_type")
    if mt != "llava":
        why = {"qwen2_vl": "Qwen2-VL's 3-D mrope positions", "qwen2_5_vl": "Qwen2.5-VL's 3-D mrope positions",
               "qwen3_vl": "Qwen3-VL's interleaved mrope positions"}.get(mt, "an architecture it does not implement")
        raise UnsupportedModelError(f"model_type {mt!r} ({why}): the MLX backend runs Llava (SigLIP + Llama) only")
    vmt = config.get("vision_config", {}).get("model_type")
    if vmt != "siglip_vision_model":
        raise UnsupportedModelError(f"vision tower {vmt!r}: the MLX backend implements SigLIP only")
    if not isinstance(config.get("vision_feature_layer", -2), int):
        raise UnsupportedModelError("a list of vision_feature_layer (concatenated features) is not implemented")
    text_args(config.get("text_config", {}))


def _text_key(key: str) -> str | None:
    """A safetensors key -> this model's parameter name (both transformers layouts: the older
    ``language_model.model.*`` and 5.x's ``model.language_model.*``); None for unused weights."""
    for old, new in (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                     ("model.vision_tower.", "vision_tower."),
                     ("model.multi_modal_projector.", "multi_modal_projector.")):
        if key.startswith(old):
            key = new + key[len(old):]
            break
    if key.startswith("vision_tower.") and (".head." in key or ".post_layernorm." in key):
        return None  # the pooling head and the final norm: Llava reads a hidden state before them
    if "rotary_emb.inv_freq" in key:
        return None
    return key


def load_llava(path: str | Path, dtype=mx.float32) -> LlavaModel:
    """A Llava folder (config.json + *.safetensors) as an MLX model, weights checked by name and shape."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    check_supported(config)
    model = LlavaModel(config)
    weights: dict[str, mx.array] = {}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    for f in files:
        for k, v in mx.load(str(f)).items():
            name = _text_key(k)
            if name is not None:
                weights[name] = v
    if model.text_args.tie_word_embeddings:
        weights.pop("language_model.lm_head.weight", None)
    w = weights.get("vision_tower.embeddings.patch_embedding.weight")
    if w is not None:  # torch [out, in, kh, kw] -> MLX [out, kh, kw, in]
        weights["vision_tower.embeddings.patch_embedding.weight"] = w.transpose(0, 2, 3, 1)
    # Layers past the selected feature layer are never run: not loaded either.
    n_layers = len(model.vision_tower.encoder.layers)
    keep = model.vision_feature_layer % (n_layers + 1)
    model.vision_tower.encoder.layers = model.vision_tower.encoder.layers[:keep]
    weights = {k: v for k, v in weights.items()
               if not (k.startswith("vision_tower.encoder.layers.") and int(k.split(".")[3]) >= keep)}
    model.load_weights([(k, v.astype(dtype)) for k, v in weights.items()], strict=True)
    model.eval()
    mx.eval(model.parameters())
    return model
