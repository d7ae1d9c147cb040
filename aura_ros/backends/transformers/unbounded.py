"""The unbounded reference: transformers' DynamicCache behind the same episode API.

It grows by every step's tokens (torch.cat) and never evicts: the baseline that the benchmarks
and the demo run beside the gated cache, until a stated cap, to show what a fixed budget buys.
"""
from __future__ import annotations

from transformers import DynamicCache

from aura_ros.memory.segments import Kind, Segment, SegmentTable
from aura_ros.memory.stats import MemoryStats


class UnboundedCache(DynamicCache):
    def __init__(self, config, max_tokens: int | None = None):
        super().__init__(config=config)
        self.max_tokens = max_tokens  # a stated cap for benchmarks: past it, reserve() raises
        self.table = SegmentTable()
        self.evictions_total = 0
        self.budget_bytes = 0
        self.policy = None

    @property
    def used_tokens(self) -> int:
        return self.get_seq_length()

    @property
    def next_position(self) -> int:
        return self.table.next_position + (self.used_tokens - self.table.used_tokens)

    @property
    def allocated_bytes(self) -> int:
        return sum(layer.keys.untyped_storage().nbytes() + layer.values.untyped_storage().nbytes()
                   for layer in self.layers if layer.is_initialized and layer.keys is not None)

    @property
    def pinned_tokens(self) -> int:
        return self.table.pinned_tokens

    def reserve(self, n_tokens: int) -> int:
        if self.max_tokens is not None and self.used_tokens + n_tokens > self.max_tokens:
            raise MemoryError(f"unbounded cache reached its stated cap of {self.max_tokens} tokens")
        return self.next_position

    def commit(self, kind, step: int, pos_span: int | None = None, gate: float = 1.0, written=None):
        start = self.table.used_tokens
        length = self.used_tokens - start
        if length <= 0:
            return None
        kind = Kind(kind)
        seg = Segment(kind, -1 if kind in (Kind.PINNED, Kind.SINK) else int(step), start, length,
                      self.table.next_position, length if pos_span is None else int(pos_span), gate, bool(written))
        self.table.append(seg)
        return seg

    def set_gate(self, step: int, gate: float, written: bool, event: str = "") -> None:
        self.table.set_gate(step, gate, written, event)

    def rollback(self) -> int:
        # Sliced by hand: DynamicCache.crop's argument changed meaning between transformers 5.x releases.
        n = self.used_tokens - self.table.used_tokens
        keep = self.table.used_tokens
        for layer in self.layers:  # every layer: a failed forward may have left them uneven
            if layer.is_initialized and layer.keys is not None and layer.keys.shape[-2] != keep:
                layer.keys, layer.values = layer.keys[:, :, :keep].clone(), layer.values[:, :, :keep].clone()
        return n

    def drop_pinned(self) -> None:
        if self.table.segments:
            raise NotImplementedError("the unbounded reference cache takes one instruction per episode")

    def clear_memory(self, keep_pinned: bool = True) -> None:
        raise NotImplementedError("the unbounded reference cache cannot forget")

    def stats(self) -> MemoryStats:
        summary = self.table.step_summary()
        used = self.allocated_bytes
        return MemoryStats(
            budget_bytes=0, allocated_bytes=used, used_bytes=used, capacity_tokens=self.used_tokens,
            used_tokens=self.used_tokens, pinned_tokens=self.pinned_tokens, segments_kept=len(self.table),
            steps_kept=len(summary), long_term_steps_kept=sum(1 for s in summary if s[2]),
            oldest_kept_step=summary[0][0] if summary else -1, max_position=max(self.next_position - 1, 0),
            evictions_total=0, kept_steps=[])
