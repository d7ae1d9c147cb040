"""An attention function that also reports its weights to the gated cache (H2O-style scores).

SDPA and flash attention never materialise the attention weights, so scoring segments by the
attention they still receive needs an eager path. It is registered under the name
``aura_eager`` with transformers' AttentionInterface (and the eager mask), and is selected only
when the eviction policy uses attention: the default action gate does not, and pays nothing.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

from aura_ros.backends.transformers.cache import current_cache

ATTENTION_NAME = "aura_eager"


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)


def aura_eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, scaling: float | None = None,
                         dropout: float = 0.0, softcap: float | None = None, **kwargs):
    """Eager attention (as transformers' eager_attention_forward) + a report of the weights.

    query [B, Hq, q, D], key/value [B, Hkv, kv, D]; returns ([B, q, Hq, D], weights [B, Hq, q, kv]).
    """
    groups = query.shape[1] // key.shape[1]
    k = _repeat_kv(key, groups)
    v = _repeat_kv(value, groups)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : k.shape[-2]]
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, v).transpose(1, 2).contiguous()
    cache = current_cache()
    # Only a text layer that just wrote to the cache attends over its slots; a vision tower's
    # attention (same function when the whole model is switched) must not be added.
    if cache is not None and cache.track_attention and weights.shape[-1] == cache.used_tokens:
        cache.observe_attention(weights)
    return out, weights


def register() -> str:
    """Register the function (idempotent) and return its name for attn_implementation."""
    AttentionInterface.register(ATTENTION_NAME, aura_eager_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, eager_mask)
    return ATTENTION_NAME
