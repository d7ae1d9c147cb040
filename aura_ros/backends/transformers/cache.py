"""GatedKVCache: a transformers Cache of fixed size whose contents an eviction policy decides.

Contract with transformers (5.x): the attention layers call ``update(k, v, layer_idx)`` with
keys already RoPE-rotated; masks come from ``get_seq_length`` / ``get_mask_sizes``. Storage is
one pair of tensors per layer, [1, kv_heads, capacity, head_dim], allocated once at the budget and
reused: new tokens are written into the next free slots, eviction compacts the kept tokens down
by index (no torch.cat growth), and the kept keys are re-rotated so positions stay contiguous.
For standard RoPE the position of every cached token equals its slot, so ``generate()`` and a
plain ``model(...)`` call compute correct positions from ``get_seq_length()`` on their own.

The episode API on top is the shared memory store's (``aura_ros.memory.store``): this module
supplies only its storage surface (the fixed-slot layers and the attention accumulator).
    start = cache.reserve(n)    # make room for n new tokens (evicts by the policy if needed)
    model(..., past_key_values=cache, position_ids=...)
    cache.commit(kind, step)    # the tokens written since the last commit form a segment
    cache.set_gate(step, gate, written)

What no library does: transformers v5 has no SinkCache and no eviction at all; kvpress prunes
a prefill once, it does not run an endless stream; so the cache, the segment table and the
re-rotation are written here.
"""
from __future__ import annotations

import threading

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from aura_ros.backends.transformers.rope import RopeRotator
from aura_ros.memory.budget import KVLayout
from aura_ros.memory.planner import MovePlan
from aura_ros.memory.scorers import EvictionPolicy
from aura_ros.memory.segments import Segment
from aura_ros.memory.store import MemoryStore

# The cache whose layer was updated last in this thread: the attention hook (attention.py)
# reads it to add the layer's attention weights to that cache's accumulator. update() runs right
# before attention inside every attention layer, so this is always the right cache.
_current = threading.local()


def current_cache() -> GatedKVCache | None:
    return getattr(_current, "cache", None)


class CacheFullError(RuntimeError):
    """More tokens were written than reserved."""


class FixedSlotLayer(CacheLayerMixin):
    """One layer's keys and values in storage of fixed capacity, filled from slot 0 upwards."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, capacity: int, kv_heads: int, k_dim: int, v_dim: int, dtype, device):
        super().__init__()
        self.dtype, self.device = dtype, torch.device(device)
        self.kv_heads, self.k_dim, self.v_dim = kv_heads, k_dim, v_dim
        self.length = 0
        self.allocate(capacity)
        self.is_initialized = True

    def allocate(self, capacity: int) -> None:
        """(Re)allocate at ``capacity`` slots, keeping the first ``length`` tokens."""
        keys = torch.zeros((1, self.kv_heads, capacity, self.k_dim), dtype=self.dtype, device=self.device)
        values = torch.zeros((1, self.kv_heads, capacity, self.v_dim), dtype=self.dtype, device=self.device)
        if self.keys is not None and self.length:
            keys[:, :, : self.length] = self.keys[:, :, : self.length]
            values[:, :, : self.length] = self.values[:, :, : self.length]
        self.keys, self.values, self.capacity = keys, values, capacity

    def move(self, src: np.ndarray | torch.Tensor, delta: torch.Tensor | None, first_slot: int, rotator,
             layer_idx: int, memo: dict | None = None) -> None:
        """Gather the tokens at slots ``src`` to ``first_slot..``; keys re-rotated by ``delta`` positions
        (memo: shared by the layers of one move, see RopeRotator.rotate_)."""
        index = (torch.from_numpy(src) if isinstance(src, np.ndarray) else src).to(self.keys.device)
        n = index.numel()
        moved_k = self.keys.index_select(2, index)
        if delta is not None:
            if rotator is None:
                raise RuntimeError("positions changed but the cache has no RopeRotator")
            rotator.rotate_(moved_k, delta, layer_idx, memo)
        self.keys[:, :, first_slot: first_slot + n] = moved_k
        self.values[:, :, first_slot: first_slot + n] = self.values.index_select(2, index)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The used keys and values (copies on the CPU)."""
        return {"keys": self.keys[:, :, : self.length].contiguous().cpu(),
                "values": self.values[:, :, : self.length].contiguous().cpu()}

    def load(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Replace the contents by ``keys``/``values`` [1, kv_heads, n, dim] (n <= capacity)."""
        n = keys.shape[-2]
        if n > self.capacity or keys.shape[1] != self.kv_heads or keys.shape[-1] != self.k_dim \
                or values.shape != (1, self.kv_heads, n, self.v_dim):
            raise ValueError(f"tensors of shape {tuple(keys.shape)}/{tuple(values.shape)} do not fit this layer "
                             f"(capacity {self.capacity}, {self.kv_heads} heads, dims {self.k_dim}/{self.v_dim})")
        self.keys[:, :, :n] = keys.to(self.device, self.dtype)
        self.values[:, :, :n] = values.to(self.device, self.dtype)
        self.length = n

    def lazy_initialization(self, key_states, value_states) -> None:  # allocated eagerly
        return None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = key_states.shape[-2]
        if key_states.shape[0] != 1:
            raise ValueError("GatedKVCache holds one episode: batch size must be 1")
        if self.length + n > self.capacity:
            raise CacheFullError(
                f"{n} new tokens do not fit ({self.length}/{self.capacity} slots used): call "
                "GatedKVCache.reserve(n) before the forward pass")
        self.keys[:, :, self.length: self.length + n] = key_states
        self.values[:, :, self.length: self.length + n] = value_states
        self.length += n
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]

    def get_mask_sizes(self, query_length) -> tuple[int, int]:
        # transformers 5.17 passes cache_position (a tensor), 5.23 the query length (an int).
        q = query_length.shape[0] if isinstance(query_length, torch.Tensor) else int(query_length)
        return self.length + q, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def reset(self) -> None:
        self.length = 0

    @property
    def allocated_bytes(self) -> int:
        return self.keys.untyped_storage().nbytes() + self.values.untyped_storage().nbytes()


class GatedKVCache(MemoryStore, Cache):
    """A fixed-budget KV cache for one endless episode (batch size 1): the shared memory store
    (``memory.store``) over fixed-slot layers, and a transformers ``Cache`` for the model."""

    def __init__(self, config, budget_bytes: int, rotator: RopeRotator | None = None,
                 policy: EvictionPolicy | None = None, recent_steps: int = 8,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 min_step_tokens: int = 1, block_fraction: float = 0.0, max_context_steps: int = 0):
        MemoryStore.__init__(self, KVLayout.from_config(config, dtype), budget_bytes, policy=policy,
                             recent_steps=recent_steps, min_step_tokens=min_step_tokens,
                             block_fraction=block_fraction, max_context_steps=max_context_steps)
        self.rotator = rotator
        capacity = self.layout.capacity(budget_bytes)
        layers = [FixedSlotLayer(capacity, self.layout.kv_heads[i], self.layout.k_head_dim[i],
                                 self.layout.v_head_dim[i], dtype, device)
                  for i in range(self.layout.num_layers)]
        Cache.__init__(self, layers=layers)
        # H2O-style accumulated attention per slot; filled by the attention hook when enabled.
        self.attention = torch.zeros(capacity, dtype=torch.float32, device=device)

    # ----------------------------------------------------------------- transformers contract
    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        _current.cache = self
        return self.layers[layer_idx].update(key_states, value_states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].length

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.capacity

    def reset(self) -> None:
        """Empty the cache completely (transformers' meaning of reset); see clear_memory()."""
        self._compact([])

    # ----------------------------------------------------------------- the storage surface
    @property
    def capacity(self) -> int:
        return self.layers[0].capacity

    @property
    def allocated_bytes(self) -> int:
        return sum(layer.allocated_bytes for layer in self.layers)

    def _storage_tokens(self) -> int:
        return self.layers[0].length

    def _storage_truncate(self, n: int) -> None:
        old = self.layers[0].length
        for layer in self.layers:
            layer.length = n
        self.attention[n:old] = 0

    def _storage_fill(self, n: int, rng: np.random.Generator) -> None:
        # Random keys and values written straight into the layers (a benchmark's filler).
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        for layer in self.layers:
            shape = (1, layer.kv_heads, n)
            layer.update(torch.randn(*shape, layer.k_dim, generator=gen).to(layer.device, layer.dtype),
                         torch.randn(*shape, layer.v_dim, generator=gen).to(layer.device, layer.dtype))

    def _storage_compact(self, keep: list[Segment], moves: MovePlan) -> None:
        old_used = self.layers[0].length
        if moves.moves:
            src = torch.from_numpy(moves.src)
            delta = torch.from_numpy(moves.delta) if moves.rotates else None
            memo: dict = {}
            for li in range(len(self.layers)):
                self.layers[li].move(src, delta, moves.first_slot, self.rotator, li, memo)
            index = src.to(self.attention.device)
            first, n = moves.first_slot, moves.src.size
            self.attention[first: first + n] = self.attention.index_select(0, index)
        for layer in self.layers:
            layer.length = moves.used_tokens
        self.attention[moves.used_tokens:old_used] = 0

    def _storage_resize(self, capacity: int) -> int:
        for layer in self.layers:
            layer.allocate(capacity)
        attention = torch.zeros(capacity, dtype=torch.float32, device=self.attention.device)
        n = self.used_tokens
        attention[:n] = self.attention[:n]
        self.attention = attention
        return self.capacity

    def _attention_scores(self) -> np.ndarray:
        return self.attention[: self.used_tokens].cpu().numpy()

    def observe_attention(self, weights: torch.Tensor) -> None:
        """Add one layer's attention weights [B, H, q, kv] to the per-slot accumulator."""
        kv = weights.shape[-1]
        self.attention[:kv] += weights.detach().float().sum(dim=(0, 1, 2))
