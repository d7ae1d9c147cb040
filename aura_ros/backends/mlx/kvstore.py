"""MLXKVStore: the shared memory bookkeeping on fixed-slot MLX storage.

Storage is one pair of MLX arrays per layer, [1, kv_heads, capacity, head_dim], allocated once at
the budget: new tokens are written into the next slots, an eviction gathers the kept tokens down
by index and re-rotates their keys by the change of their position, so positions stay contiguous
from 0 and an endless episode never walks past the trained context. The position of every cached
token equals its slot, so mlx-lm's attention (which rotates new queries and keys by
``cache.offset``) needs nothing else: each layer's view below is the object mlx-lm calls.

Re-rotation: mlx-lm's Llama applies RoPE with ``traditional=False``, pairing dims i and i + D/2
(transformers' rotate-half). A key at position p moves to p + d by one more rotation by d:
R(p + d) k = R(d) R(p) k, so the kept keys are rotated by their delta with the same pairing.

This module implements only the storage surface of the shared store (``memory.store.MemoryStore``:
capacity, allocated_bytes, _storage_tokens/_truncate/_compact/_resize); the episode API, the
planner calls and the budget rules are the shared ones.
"""
from __future__ import annotations

import mlx.core as mx
import numpy as np

from aura_ros.memory.budget import KVLayout
from aura_ros.memory.planner import MovePlan
from aura_ros.memory.scorers import EvictionPolicy
from aura_ros.memory.segments import Segment
from aura_ros.memory.store import MemoryStore


class CacheFullError(RuntimeError):
    """More tokens were written than reserved."""


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """[head_dim / 2] float32 inverse frequencies of plain RoPE (mlx-lm's nn.RoPE, base ``theta``)."""
    return (1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)).astype(np.float32)


def rotation(delta: np.ndarray, inv_freq: np.ndarray) -> tuple[mx.array, mx.array]:
    """cos and sin [N, D] of a rotation by ``delta`` [N] positions, computed once per distinct shift
    (after an eviction most kept tokens move by the same few amounts) and gathered on MLX; shared
    by every layer of one compaction, as all layers use the same frequencies."""
    shifts, which = np.unique(np.asarray(delta, dtype=np.int64), return_inverse=True)
    angles = shifts.astype(np.float64)[:, None] * inv_freq.astype(np.float64)[None, :]
    angles = np.concatenate([angles, angles], axis=-1)  # [U, D]
    index = mx.array(which.reshape(-1).astype(np.int32))
    return (mx.take(mx.array(np.cos(angles).astype(np.float32)), index, axis=0),
            mx.take(mx.array(np.sin(angles).astype(np.float32)), index, axis=0))


def rotate(keys: mx.array, delta: np.ndarray | None, inv_freq: np.ndarray | None = None,
           cos_sin: tuple[mx.array, mx.array] | None = None) -> mx.array:
    """``keys`` [B, H, N, D] rotated by ``delta`` [N] positions (rotate-half pairing, as mlx-lm's
    ``traditional=False``); ``cos_sin``: a ``rotation()`` computed already."""
    cos, sin = cos_sin if cos_sin is not None else rotation(delta, inv_freq)
    half = keys.shape[-1] // 2
    k = keys.astype(mx.float32)
    rotated_half = mx.concatenate([-k[..., half:], k[..., :half]], axis=-1)
    return (k * cos + rotated_half * sin).astype(keys.dtype)


class LayerView:
    """One decoder layer's slice of the store, as mlx-lm's attention uses a cache object:
    ``offset`` (the position of the next token = its slot), ``update_and_fetch`` and ``make_mask``."""

    def __init__(self, store: MLXKVStore, index: int):
        self.store, self.index = store, index

    @property
    def offset(self) -> int:
        return self.store.lengths[self.index]

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        return self.store.write(self.index, keys, values)

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None):
        # Every cached token precedes the chunk: only the chunk itself needs the causal part
        # (mx.fast's "causal" aligns the query block with the end of the keys).
        if window_size is not None:
            raise ValueError("sliding-window layers are not supported by the MLX store")
        if return_array:
            off = self.offset
            return mx.arange(off, off + n)[:, None] >= mx.arange(off + n)[None]
        return None if n == 1 else "causal"


class MLXKVStore(MemoryStore):
    """One episode's KV cache in fixed MLX arrays (batch size 1)."""

    def __init__(self, layout: KVLayout, budget_bytes: int, inv_freq: np.ndarray, dtype=mx.float32,
                 policy: EvictionPolicy | None = None, recent_steps: int = 8, min_step_tokens: int = 1,
                 block_fraction: float = 0.0, max_context_steps: int = 0):
        super().__init__(layout, budget_bytes, policy=policy, recent_steps=recent_steps,
                         min_step_tokens=min_step_tokens, block_fraction=block_fraction,
                         max_context_steps=max_context_steps)
        self.dtype = dtype
        self.inv_freq = np.asarray(inv_freq, dtype=np.float32)
        self.keys: list[mx.array] = []
        self.values: list[mx.array] = []
        self.lengths = [0] * layout.num_layers
        self.layers = [LayerView(self, i) for i in range(layout.num_layers)]
        self._storage_resize(layout.capacity(budget_bytes))

    # ----------------------------------------------------------------- mlx-lm's side
    def write(self, i: int, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Append ``keys``/``values`` [1, kv_heads, n, dim] (already rotated to their positions) to
        layer ``i``; returns the layer's used keys and values."""
        n = keys.shape[2]
        if keys.shape[0] != 1:
            raise ValueError("MLXKVStore holds one episode: batch size must be 1")
        start = self.lengths[i]
        if start + n > self.capacity:
            raise CacheFullError(f"{n} new tokens do not fit ({start}/{self.capacity} slots used): call "
                                 "reserve(n) before the forward pass")
        self.keys[i][:, :, start: start + n] = keys.astype(self.dtype)
        self.values[i][:, :, start: start + n] = values.astype(self.dtype)
        self.lengths[i] = start + n
        return self.keys[i][:, :, : start + n], self.values[i][:, :, : start + n]

    def arrays(self) -> list[mx.array]:
        """Every storage array (to evaluate with a step's logits, so no lazy graph outlives the step)."""
        return [*self.keys, *self.values]

    # ----------------------------------------------------------------- the storage surface
    @property
    def capacity(self) -> int:
        return int(self.keys[0].shape[2]) if self.keys else 0

    @property
    def allocated_bytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays())

    def _storage_tokens(self) -> int:
        return self.lengths[0]

    def _storage_truncate(self, n: int) -> None:
        # Slots past n are simply overwritten by the next writes.
        self.lengths = [min(length, int(n)) for length in self.lengths]

    def _storage_fill(self, n: int, rng: np.random.Generator) -> None:
        # Random keys and values written straight into the layers (a benchmark's filler).
        key = mx.random.key(int(rng.integers(2**31)))
        lay = self.layout
        for i in range(lay.num_layers):
            key, k1, k2 = mx.random.split(key, 3)
            self.write(i, mx.random.normal((1, lay.kv_heads[i], n, lay.k_head_dim[i]), key=k1),
                       mx.random.normal((1, lay.kv_heads[i], n, lay.v_head_dim[i]), key=k2))
        mx.eval(self.arrays())

    def _storage_compact(self, keep: list[Segment], moves: MovePlan) -> None:
        if moves.moves:
            src = mx.array(moves.src.astype(np.int32))
            first, m = moves.first_slot, int(moves.src.size)
            cos_sin = rotation(moves.delta, self.inv_freq) if moves.rotates else None
            for i in range(len(self.keys)):
                k = mx.take(self.keys[i], src, axis=2)
                if cos_sin is not None:
                    k = rotate(k, None, cos_sin=cos_sin)
                v = mx.take(self.values[i], src, axis=2)
                self.keys[i][:, :, first: first + m] = k
                self.values[i][:, :, first: first + m] = v
            mx.eval(self.arrays())
        self.lengths = [int(moves.used_tokens)] * len(self.lengths)

    def _storage_resize(self, capacity: int) -> int:
        layout, n = self.layout, self.lengths[0]
        keys, values = [], []
        for i in range(layout.num_layers):
            k = mx.zeros((1, layout.kv_heads[i], capacity, layout.k_head_dim[i]), dtype=self.dtype)
            v = mx.zeros((1, layout.kv_heads[i], capacity, layout.v_head_dim[i]), dtype=self.dtype)
            if self.keys and n:
                k[:, :, :n] = self.keys[i][:, :, :n]
                v[:, :, :n] = self.values[i][:, :, :n]
            keys.append(k)
            values.append(v)
        self.keys, self.values = keys, values
        mx.eval(self.arrays())
        return int(capacity)
