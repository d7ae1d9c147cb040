"""Budget arithmetic: a byte budget becomes a token capacity, from the model's config.

One cached token costs, in every attention layer, a key and a value:
``kv_heads x (k_head_dim + v_head_dim) x dtype size`` bytes. The layout is read from the text
config of any transformers VLM (``config.get_text_config()``), so LLaVA, Idefics3/SmolVLM,
Qwen2-VL and Gemma 3 are all covered by the same code.
"""
from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


class BudgetError(ValueError):
    """A budget the cache cannot honour (too small for the pinned tokens plus one step)."""


@dataclass(frozen=True)
class KVLayout:
    """Per-layer shape of one cached token."""

    kv_heads: tuple[int, ...]  # per layer
    k_head_dim: tuple[int, ...]  # per layer
    v_head_dim: tuple[int, ...]  # per layer
    dtype_bytes: int  # bytes of one K or V element (2 for f16/bf16, 4 for f32)

    @property
    def num_layers(self) -> int:
        return len(self.kv_heads)

    def layer_bytes_per_token(self, layer_idx: int) -> int:
        return self.kv_heads[layer_idx] * (self.k_head_dim[layer_idx] + self.v_head_dim[layer_idx]) * self.dtype_bytes

    @property
    def bytes_per_token(self) -> int:
        return sum(self.layer_bytes_per_token(i) for i in range(self.num_layers))

    def capacity(self, budget_bytes: int) -> int:
        """Tokens that fit in ``budget_bytes`` (rounded down, so allocation never exceeds it)."""
        return int(budget_bytes) // self.bytes_per_token

    def bytes_for(self, tokens: int) -> int:
        return int(tokens) * self.bytes_per_token

    @classmethod
    def from_config(cls, config, dtype=4) -> KVLayout:
        """``dtype``: a torch dtype (its itemsize is read) or a size in bytes."""
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        n_layers = int(text.num_hidden_layers)
        n_heads = int(text.num_attention_heads)
        kv_heads = int(getattr(text, "num_key_value_heads", None) or n_heads)
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_heads
        return cls(
            kv_heads=(kv_heads,) * n_layers,
            k_head_dim=(int(head_dim),) * n_layers,
            v_head_dim=(int(head_dim),) * n_layers,
            dtype_bytes=int(getattr(dtype, "itemsize", dtype)),
        )


def budget_error(layout: KVLayout, budget_bytes: int, pinned_tokens: int, step_tokens: int) -> str | None:
    """Why a budget cannot hold the pinned tokens plus one step, or None when it can.

    The one statement of the rule: the cache, the policy and the node's parameter check call it.
    """
    capacity = layout.capacity(budget_bytes)
    need = int(pinned_tokens) + int(step_tokens)
    if capacity >= need:
        return None
    return (f"a budget of {int(budget_bytes)} bytes ({budget_bytes / MIB:.4f} MiB) holds {capacity} tokens at "
            f"{layout.bytes_per_token} bytes each; the pinned instruction ({pinned_tokens}) plus one step "
            f"({step_tokens}) need {need} tokens = {layout.bytes_for(need)} bytes "
            f"({layout.bytes_for(need) / MIB:.4f} MiB)")


def view_capacity(capacity: int, pinned_tokens: int, step_tokens: int, max_context_steps: int) -> int:
    """The tokens the policy may read: the budget's capacity, or fewer where ``max_context_steps``
    (> 0) steps beside the pinned tokens need less.

    The budget is a ceiling on bytes; a trained policy has a ceiling of its own, the context
    lengths it was trained on. A cache that filled a large budget with old transient steps showed
    the policy contexts it never saw, and a larger budget made the robot worse. Both stores evict
    down to the smaller of the two, so any budget above the trained context behaves as it does.
    """
    if max_context_steps <= 0:
        return int(capacity)
    return min(int(capacity), int(pinned_tokens) + int(max_context_steps) * max(1, int(step_tokens)))
