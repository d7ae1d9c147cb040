"""Per-step statistics: everything MemoryBudget and GateStats carry, plus the memory map."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class StepStats:
    step: int
    # MemoryBudget
    budget_bytes: int
    allocated_bytes: int
    used_bytes: int
    capacity_tokens: int
    used_tokens: int
    pinned_tokens: int
    device_allocated_bytes: int = 0
    device_reserved_bytes: int = 0
    process_rss_bytes: int = 0
    # GateStats
    gate_value: float = 0.0
    written: bool = False
    writes_total: int = 0
    evictions_total: int = 0
    segments_kept: int = 0
    steps_kept: int = 0
    long_term_steps_kept: int = 0
    oldest_kept_step: int = -1
    max_position: int = 0
    write_rate: float = 0.0
    action_delta: float = 0.0
    step_latency_ms: float = 0.0
    # memory map: control steps with a segment in the cache, oldest first
    kept_steps: list[int] = field(default_factory=list)

    @property
    def used_fraction(self) -> float:
        return self.used_tokens / self.capacity_tokens if self.capacity_tokens else 0.0

    def as_dict(self) -> dict:
        return asdict(self)
