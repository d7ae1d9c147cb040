"""The policy seam. The node, the demo, the soak, the benchmarks and replay call only this.

A backend is a class that implements ``Policy`` and a factory line in ``core.registry``.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from aura_ros.core.config import PolicyConfig
from aura_ros.core.types import Action, Observation
from aura_ros.memory.gate import GateConfig
from aura_ros.memory.stats import MemoryStats


@runtime_checkable
class Policy(Protocol):
    config: PolicyConfig
    instruction: str
    step_index: int

    def step(self, obs: Observation) -> Action:
        """One control step: observe, decode an action chunk, gate the step."""

    def reset(self) -> None:
        """Forget the episode; the instruction stays pinned."""

    def set_instruction(self, instruction: str) -> None:
        """Pin a new instruction; raises BudgetError (old one kept) when it cannot fit."""

    def instruction_error(self, instruction: str) -> str | None:
        """Why set_instruction(instruction) would be refused now, or None; nothing changes."""

    def begin_task(self) -> int:
        """Record a task boundary (the episode goes on); returns the new task's index."""

    def set_budget(self, budget_bytes: int) -> None:
        """Change the hard KV budget between steps; raises BudgetError with the numbers."""

    def budget_error(self, budget_bytes: int) -> str | None:
        """Why ``budget_bytes`` would be refused now, or None when it fits."""

    def reserve_step(self, image, state) -> int:
        """Count a step with this observation in every budget check from now on (the node passes
        its worst case: the widest joint text); returns its tokens. Nothing is written."""

    def set_options(self, *, recent_steps: int | None = None, gate: GateConfig | None = None,
                    clear_memory_on_instruction: bool | None = None) -> None:
        """Apply live memory settings between steps."""

    def stats(self) -> MemoryStats:
        """The memory as it is now (what MemoryBudget carries, plus the kept steps)."""

    def memory_map(self) -> list[tuple[int, float, bool, int]]:
        """(step, gate value, long-term, tokens) of every kept step, oldest first."""

    def is_out_of_memory(self, exc: BaseException) -> bool:
        """Whether ``exc`` raised by step() means the device ran out of memory."""

    def free_memory_bytes(self) -> int:
        """Memory free where the KV store allocates (a budget above it cannot be allocated)."""

    def save_memory(self, path) -> str:
        """Write the episode's memory atomically; returns the path written."""

    def load_memory(self, path) -> dict:
        """Resume from a snapshot; SnapshotError leaves the memory as it was. Returns what the
        snapshot carried besides the memory (its instruction, counters), for the caller to use."""


class EpisodeCache(Protocol):
    """The episode API every KV store offers (the gated cache and the unbounded reference)."""

    def reserve(self, n_tokens: int) -> int: ...
    def commit(self, kind, step: int, pos_span: int | None = None, gate: float = 1.0, written=None): ...
    def set_gate(self, step: int, gate: float, written: bool, event: str = "") -> None: ...
    def rollback(self) -> int: ...
    def clear_memory(self, keep_pinned: bool = True) -> None: ...
    def drop_pinned(self) -> None: ...
    def stats(self) -> MemoryStats: ...
