"""Per-step statistics: everything MemoryBudget and GateStats carry, plus the memory map."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class MemoryStats:
    """Everything MemoryBudget and the cache part of GateStats carry, plus the memory map."""

    budget_bytes: int
    allocated_bytes: int
    used_bytes: int
    capacity_tokens: int
    used_tokens: int
    pinned_tokens: int
    segments_kept: int
    steps_kept: int
    long_term_steps_kept: int
    oldest_kept_step: int
    max_position: int
    evictions_total: int
    evicted_written_total: int = 0  # long-term steps evicted: a sign of budget pressure
    kept_steps: list[int] = field(default_factory=list)


@dataclass
class StepStats(MemoryStats):
    """The cache's MemoryStats plus what the step, the gate and the device add."""

    step: int = 0
    device_allocated_bytes: int = 0  # torch.cuda.memory_allocated() on CUDA, 0 on CPU
    device_reserved_bytes: int = 0
    process_rss_bytes: int = 0  # filled by the node (psutil), 0 elsewhere
    gate_value: float = 0.0
    written: bool = False
    writes_total: int = 0
    write_rate: float = 0.0  # exponential moving average of `written`
    action_delta: float = 0.0
    step_latency_ms: float = 0.0

    @property
    def used_fraction(self) -> float:
        return self.used_tokens / self.capacity_tokens if self.capacity_tokens else 0.0

    def as_dict(self) -> dict:
        return asdict(self)
