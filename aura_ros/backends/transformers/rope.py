"""Re-rotation of cached keys, so that positions stay contiguous after an eviction.

Attention layers hand the cache keys that are already RoPE-rotated (transformers passes no
cos/sin to the cache). When segments leave the middle of the cache, the kept keys after the gap
are moved down in storage and must also move down in position, or an endless episode walks past
the model's trained context. RoPE is a rotation per frequency plane, so a key at position p
becomes a key at p + d by one more rotation by d: R(p + d) k = R(d) R(p) k. This is
StreamingLLM's scheme; transformers removed SinkCache in v5, so it is written here.

Qwen2-VL's 3-D mrope gives each frequency band one of three position components (t, h, w).
A whole segment is shifted by the same d in all three components, so every band rotates by
d x inv_freq, which is exactly the 1-D rotation above: one code path serves both.

The rotation is computed in float32 and written back in the cache's dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The rotate-half pairing used by Llama, Gemma, Qwen2 and Qwen2-VL (dims i and i + D/2)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass
class RopeRotator:
    """Rotates cached keys by a per-token position delta, layer by layer.

    inv_freqs: one float32 tensor of shape [rot_dim // 2] per layer (layers can differ: Gemma 3
    uses another base for its sliding-window layers).
    """

    inv_freqs: list[torch.Tensor]

    def __post_init__(self) -> None:
        # Layers that share their frequencies share cos/sin within one eviction (see rotate_).
        self._group = []
        for i, f in enumerate(self.inv_freqs):
            self._group.append(next(j for j in range(i + 1) if self.inv_freqs[j].shape == f.shape
                                    and torch.equal(self.inv_freqs[j], f)))

    def rotate_(self, keys: torch.Tensor, delta: torch.Tensor, layer_idx: int, memo: dict | None = None) -> None:
        """Rotate ``keys`` [B, H, N, D] in place by ``delta`` [N] positions (may be negative).

        memo: a dict kept across the layers of one eviction (same ``delta``): cos/sin are then
        computed once per distinct frequency set instead of once per layer; with a small model the
        fixed cost of these ops is most of what an eviction costs.
        """
        key = (self._group[layer_idx], keys.device)
        if memo is not None and key in memo:
            cos, sin = memo[key]
        else:
            inv_freq = self.inv_freqs[layer_idx].to(keys.device)
            # After an eviction most moved tokens shift by the same few amounts: compute cos/sin
            # once per distinct shift and gather, instead of once per token.
            shifts, which = torch.unique(delta.to(keys.device), return_inverse=True)
            angles = shifts.to(torch.float32)[:, None] * inv_freq[None, :]  # [U, rot/2]
            angles = torch.cat((angles, angles), dim=-1)  # [U, rot]
            cos, sin = angles.cos()[which], angles.sin()[which]  # [N, rot]
            if memo is not None:
                memo[key] = (cos, sin)
        rot = cos.shape[-1]
        part = keys[..., :rot].float()
        keys[..., :rot] = (part * cos + rotate_half(part) * sin).to(keys.dtype)

    @classmethod
    def from_model(cls, model: nn.Module) -> RopeRotator:
        """Find the text model's rotary embedding and read its inverse frequencies per layer."""
        config = model.config.get_text_config(decoder=True)
        n_layers = int(config.num_hidden_layers)
        layer_types = list(getattr(config, "layer_types", None) or ["full_attention"] * n_layers)
        rotary = None
        for name, module in model.named_modules():
            cls_name = type(module).__name__
            if cls_name.endswith("RotaryEmbedding") and "vision" not in (cls_name + name).lower():
                rotary = module
                break
        if rotary is None:
            raise ValueError(
                f"{type(model).__name__}: no rotary embedding found in the text model; the gated cache "
                "re-rotates keys and supports RoPE models only")
        inv_freqs = []
        for layer_type in layer_types:
            freq = getattr(rotary, f"{layer_type}_inv_freq", None)
            if freq is None:
                freq = getattr(rotary, "inv_freq", None)
            if freq is None:
                raise ValueError(f"{type(rotary).__name__} has no inv_freq for layer type {layer_type!r}")
            inv_freqs.append(freq.detach().float().cpu().clone())
        return cls(inv_freqs=inv_freqs)
