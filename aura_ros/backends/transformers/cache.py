"""GatedKVCache: a transformers Cache of fixed size whose contents an eviction policy decides.

Contract with transformers (5.x): the attention layers call ``update(k, v, layer_idx)`` with
keys already RoPE-rotated; masks come from ``get_seq_length`` / ``get_mask_sizes``. Storage is
one pair of tensors per layer, [1, kv_heads, capacity, head_dim], allocated once at the budget and
reused: new tokens are written into the next free slots, eviction compacts the kept tokens down
by index (no torch.cat growth), and the kept keys are re-rotated so positions stay contiguous.
For standard RoPE the position of every cached token equals its slot, so ``generate()`` and a
plain ``model(...)`` call compute correct positions from ``get_seq_length()`` on their own.

The episode API on top (what the policy runtime calls each step):
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
from aura_ros.memory.budget import BudgetError, KVLayout, budget_error, view_capacity
from aura_ros.memory.planner import plan_eviction, plan_moves
from aura_ros.memory.scorers import EvictionPolicy, action_gated
from aura_ros.memory.segments import Kind, Segment, SegmentTable
from aura_ros.memory.stats import MemoryStats

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


class GatedKVCache(Cache):
    """A fixed-budget KV cache for one endless episode (batch size 1)."""

    def __init__(self, config, budget_bytes: int, rotator: RopeRotator | None = None,
                 policy: EvictionPolicy | None = None, recent_steps: int = 8,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 min_step_tokens: int = 1, block_fraction: float = 0.0, max_context_steps: int = 0):
        if not 0.0 <= block_fraction < 1.0:
            raise ValueError(f"block_fraction must be in [0, 1), got {block_fraction}")
        # When full, free at least this fraction of the capacity at once (see planner.plan_eviction).
        self.block_fraction = float(block_fraction)
        self.layout = KVLayout.from_config(config, dtype)
        self.policy = policy or action_gated()
        self.rotator = rotator
        if recent_steps < 0:
            raise ValueError(f"recent_steps must be >= 0, got {recent_steps}")
        self.recent_steps = int(recent_steps)
        # What the policy reads is bounded by the trained context as well as by the budget (0: the
        # budget only); see memory.budget.view_capacity.
        self.max_context_steps = int(max_context_steps)
        self.min_step_tokens = int(min_step_tokens)
        self.table = SegmentTable()
        self.evictions_total = 0
        self.evicted_written_total = 0  # long-term steps evicted: a sign of budget pressure
        self.current_step = 0
        self._last_step, self.last_step_tokens = -1, 0  # the newest step's size (budget checks)
        capacity = self.layout.capacity(budget_bytes)
        if capacity < self.min_step_tokens:
            raise BudgetError(
                f"budget of {budget_bytes} bytes holds {capacity} tokens "
                f"({self.layout.bytes_per_token} bytes each); one step needs {self.min_step_tokens}")
        self.budget_bytes = int(budget_bytes)
        layers = [FixedSlotLayer(capacity, self.layout.kv_heads[i], self.layout.k_head_dim[i],
                                 self.layout.v_head_dim[i], dtype, device)
                  for i in range(self.layout.num_layers)]
        super().__init__(layers=layers)
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

    # ----------------------------------------------------------------- sizes
    @property
    def capacity(self) -> int:
        return self.layers[0].capacity

    @property
    def used_tokens(self) -> int:
        return self.layers[0].length

    @property
    def free_tokens(self) -> int:
        return self.capacity - self.used_tokens

    @property
    def allocated_bytes(self) -> int:
        return sum(layer.allocated_bytes for layer in self.layers)

    @property
    def used_bytes(self) -> int:
        return self.layout.bytes_for(self.used_tokens)

    @property
    def pinned_tokens(self) -> int:
        return self.table.pinned_tokens

    @property
    def next_position(self) -> int:
        """Position id of the next token (uncommitted tokens count one position each)."""
        return self.table.next_position + (self.used_tokens - self.table.used_tokens)

    @property
    def track_attention(self) -> bool:
        return self.policy.uses_attention

    def observe_attention(self, weights: torch.Tensor) -> None:
        """Add one layer's attention weights [B, H, q, kv] to the per-slot accumulator."""
        kv = weights.shape[-1]
        self.attention[:kv] += weights.detach().float().sum(dim=(0, 1, 2))

    # ----------------------------------------------------------------- episode API
    def reserve(self, n_tokens: int) -> int:
        """Make room for ``n_tokens`` new tokens (evicting by the policy if needed).

        Returns the position id of the first new token. Eviction re-places the kept tokens, so
        position ids for the next forward pass must be computed after this call.
        """
        if self.used_tokens != self.table.used_tokens:
            raise RuntimeError("commit() the tokens of the previous forward pass before reserve()")
        if n_tokens > self.capacity - self.table.protected_tokens(self.policy.protect_pinned):
            raise BudgetError(
                f"{n_tokens} tokens do not fit in a cache of {self.capacity} tokens with "
                f"{self.table.pinned_tokens} pinned; raise the budget")
        view = self.capacity if self.max_context_steps <= 0 else view_capacity(
            self.capacity, self.table.pinned_tokens, max(self.step_tokens, n_tokens), self.max_context_steps)
        self._evict_until(view, n_tokens, block=True)
        return self.next_position

    def commit(self, kind: Kind | str, step: int, pos_span: int | None = None,
               gate: float = 1.0, written: bool | None = None) -> Segment | None:
        """The tokens written since the last commit become one segment.

        pos_span: how far the running position advances across the segment (default: its
        length; for mrope image chunks the caller passes max position + 1 - start).
        """
        kind = Kind(kind)
        start = self.table.used_tokens
        length = self.used_tokens - start
        if length <= 0:
            return None
        span = length if pos_span is None else int(pos_span)
        if kind in (Kind.PINNED, Kind.SINK):
            step, written = -1, True
        seg = Segment(kind, int(step), start, length, self.table.next_position, span, float(gate),
                      bool(written) if written is not None else False)
        self.table.append(seg)
        if seg.is_step:
            if seg.step != self._last_step:
                self._last_step, self.last_step_tokens = seg.step, 0
            self.last_step_tokens += seg.length
            self.current_step = max(self.current_step, seg.step)
        sinks = self.policy.sink_tokens
        if sinks and seg.start < sinks and seg.kind not in (Kind.SINK,):
            self.table.split(len(self.table) - 1, sinks - seg.start, Kind.SINK)
        return seg

    def set_gate(self, step: int, gate: float, written: bool) -> None:
        self.table.set_gate(step, gate, written)

    def rollback(self) -> int:
        """Forget the tokens written since the last commit (e.g. a scored question); returns how many."""
        n = self.used_tokens - self.table.used_tokens
        for layer in self.layers:
            layer.length = self.table.used_tokens
        self.attention[self.table.used_tokens: self.table.used_tokens + n] = 0
        return n

    @property
    def step_tokens(self) -> int:
        """Tokens one step needs: the largest kept step (observation + action segments only, so
        a long instruction or an old outlier does not inflate it), at least ``min_step_tokens``."""
        sizes = [tokens for *_, tokens in self.table.step_summary()]
        return max([self.min_step_tokens, self.last_step_tokens, *sizes])

    def budget_error(self, budget_bytes: int) -> str | None:
        """Why ``budget_bytes`` cannot hold the pinned tokens plus one step now, or None."""
        return budget_error(self.layout, budget_bytes, self.table.pinned_tokens, self.step_tokens)

    def set_budget(self, budget_bytes: int) -> None:
        """Change the hard budget at run time: evict down to it, then reallocate storage."""
        reason = self.budget_error(budget_bytes)
        if reason:
            raise BudgetError(reason)
        capacity = self.layout.capacity(budget_bytes)
        if self.used_tokens != self.table.used_tokens:
            raise RuntimeError("set_budget() between steps only (uncommitted tokens present)")
        if capacity == self.capacity:  # same storage: nothing to evict or reallocate
            self.budget_bytes = int(budget_bytes)
            return
        self._evict_until(capacity, 0)
        for layer in self.layers:
            layer.allocate(capacity)
        attention = torch.zeros(capacity, dtype=torch.float32, device=self.attention.device)
        n = self.used_tokens
        attention[:n] = self.attention[:n]
        self.attention = attention
        self.budget_bytes = int(budget_bytes)

    def clear_memory(self, keep_pinned: bool = True) -> None:
        """Forget the episode; the pinned instruction stays unless keep_pinned is False."""
        keep = [s for s in self.table.segments if keep_pinned and s.kind in (Kind.PINNED, Kind.SINK)]
        self._compact(keep)

    def drop_pinned(self) -> None:
        """Remove the pinned segments (before a new instruction is committed)."""
        self._compact([s for s in self.table.segments if s.kind not in (Kind.PINNED, Kind.SINK)])

    def stats(self) -> MemoryStats:
        summary = self.table.step_summary()
        steps = [s for s, *_ in summary]
        return MemoryStats(
            budget_bytes=self.budget_bytes, allocated_bytes=self.allocated_bytes, used_bytes=self.used_bytes,
            capacity_tokens=self.capacity, used_tokens=self.used_tokens, pinned_tokens=self.pinned_tokens,
            segments_kept=len(self.table), steps_kept=len(steps),
            long_term_steps_kept=sum(1 for _, _, w, _ in summary if w),
            oldest_kept_step=steps[0] if steps else -1,
            max_position=max(self.next_position - 1, 0), evictions_total=self.evictions_total,
            evicted_written_total=self.evicted_written_total,
            kept_steps=steps)

    # ----------------------------------------------------------------- eviction
    def _evict_until(self, capacity: int, incoming: int, block: bool = False) -> int:
        """Evict by the planner until ``incoming`` tokens fit in ``capacity``; returns segments evicted.
        block: free at least ``block_fraction`` of ``capacity`` at once (a step's reserve)."""
        attention = self.attention[: self.used_tokens].cpu().numpy() if self.track_attention else None
        block = int(self.block_fraction * capacity) if block else 0
        plan = plan_eviction(self.table, self.policy, capacity=capacity, incoming=incoming,
                             current_step=self.current_step, recent_steps=self.recent_steps,
                             attention=attention, block_tokens=block)
        if plan is None:
            return 0
        self.evicted_written_total += plan.dropped_written_steps
        self._compact(plan.keep)
        self.evictions_total += plan.dropped_segments
        return plan.dropped_segments

    def _compact(self, keep: list[Segment]) -> None:
        """Execute the move plan: kept segments to contiguous slots and positions (keys re-rotated)."""
        if self.used_tokens != self.table.used_tokens:
            raise RuntimeError("cannot compact with uncommitted tokens in the cache")
        old_used = self.used_tokens
        moves = plan_moves(keep)
        if moves.moves:
            src = torch.from_numpy(moves.src)
            delta = torch.from_numpy(moves.delta) if moves.rotates else None
            memo: dict = {}
            for li in range(len(self.layers)):
                self.layers[li].move(src, delta, moves.first_slot, self.rotator, li, memo)
            device = self.attention.device
            index = src.to(device)
            first, n = moves.first_slot, moves.src.size
            self.attention[first: first + n] = self.attention.index_select(0, index)
        moves.apply_to(keep)
        for layer in self.layers:
            layer.length = moves.used_tokens
        self.attention[moves.used_tokens:old_used] = 0
        self.table.segments = keep
