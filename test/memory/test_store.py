"""The shared memory store over a storage written in a few lines of numpy: a backend implements
only the storage surface (capacity, allocated_bytes, _storage_tokens / _truncate / _compact /
_resize), and the bookkeeping (reserve, commit, rollback, eviction, budget changes) holds."""
from __future__ import annotations

import numpy as np
import pytest

from aura_ros.memory import BudgetError, Kind, KVLayout, sliding_window
from aura_ros.memory.store import MemoryStore

LAYOUT = KVLayout(kv_heads=(1,), k_head_dim=(2,), v_head_dim=(2,), dtype_bytes=4)  # 16 bytes a token


class ArrayStore(MemoryStore):
    """Slots of (token id, position): the position stands for a rotated key, so a move that
    forgets to re-rotate shows as a position that no longer matches the segment table."""

    def __init__(self, budget_bytes: int, **kwargs):
        super().__init__(LAYOUT, budget_bytes, **kwargs)
        self.capacity = LAYOUT.capacity(budget_bytes)
        self.ids = np.zeros(self.capacity, dtype=np.int64)
        self.pos = np.zeros(self.capacity, dtype=np.int64)
        self.n = 0

    @property
    def allocated_bytes(self) -> int:
        return LAYOUT.bytes_for(self.capacity)

    def write(self, ids) -> None:
        start = self.next_position
        for i, token in enumerate(ids):
            self.ids[self.n], self.pos[self.n] = token, start + i
            self.n += 1

    def _storage_tokens(self) -> int:
        return self.n

    def _storage_truncate(self, n: int) -> None:
        self.n = n

    def _storage_compact(self, keep, moves) -> None:
        if moves.moves:
            first, m = moves.first_slot, moves.src.size
            self.ids[first: first + m] = self.ids[moves.src]
            self.pos[first: first + m] = self.pos[moves.src] + (moves.delta if moves.rotates else 0)
        self.n = moves.used_tokens

    def _storage_resize(self, capacity: int) -> int:
        ids, pos = np.zeros(capacity, dtype=np.int64), np.zeros(capacity, dtype=np.int64)
        ids[: self.n], pos[: self.n] = self.ids[: self.n], self.pos[: self.n]
        self.ids, self.pos = ids, pos
        return capacity  # the base sets ``capacity`` (a plain attribute here)


def run_step(store: ArrayStore, step: int, tokens: int = 6) -> None:
    store.reserve(tokens)
    store.write([1000 * step + i for i in range(tokens - 2)])
    store.commit(Kind.OBSERVATION, step)
    store.write([1000 * step + 900, 1000 * step + 901])
    store.commit(Kind.ACTION, step)
    store.set_gate(step, 0.9 if step % 5 == 0 else 0.1, step % 5 == 0)


def consistent(store: ArrayStore) -> None:
    """Every kept token is where the table says, with its own id and the table's position."""
    assert store.used_tokens == store.table.used_tokens <= store.capacity
    for seg in store.table.segments:
        assert np.array_equal(store.pos[seg.start: seg.end], np.arange(seg.pos_start, seg.pos_start + seg.length))
        if seg.is_step:
            assert np.all(store.ids[seg.start: seg.end] // 1000 == seg.step)


def test_an_endless_episode_stays_inside_its_budget():
    store = ArrayStore(16 * 40, recent_steps=2)
    store.write([7] * 8)
    store.commit(Kind.PINNED, -1)
    for step in range(60):
        run_step(store, step)
        consistent(store)
    stats = store.stats()
    assert stats.evictions_total > 0 and stats.pinned_tokens == 8 and stats.allocated_bytes == 16 * 40
    assert store.table.segments[0].kind is Kind.PINNED and stats.kept_steps[-1] == 59
    assert 55 in stats.kept_steps and 56 not in stats.kept_steps  # written outlasts transient, past the window
    assert stats.max_position < store.capacity  # positions stay compact


def test_rollback_set_budget_and_clear():
    store = ArrayStore(16 * 40, recent_steps=2)
    store.write([7] * 8)
    store.commit(Kind.PINNED, -1)
    for step in range(10):
        run_step(store, step)
    store.reserve(3)
    store.write([1, 2, 3])
    with pytest.raises(RuntimeError, match="commit"):
        store.reserve(1)
    with pytest.raises(RuntimeError, match="between steps"):
        store.set_budget(16 * 30)
    assert store.rollback() == 3 and store.uncommitted_tokens == 0
    store.set_budget(16 * 30)  # evicts down, then the storage reallocates
    assert store.capacity == 30 and store.used_tokens <= 30 and store.budget_bytes == 16 * 30
    consistent(store)
    assert store.budget_error(16 * 4) and "one step" in store.budget_error(16 * 4)
    with pytest.raises(BudgetError):
        store.set_budget(16 * 4)
    store.set_budget(16 * 80)
    assert store.capacity == 80
    run_step(store, 10)
    consistent(store)
    store.drop_pinned()
    assert store.pinned_tokens == 0
    consistent(store)
    store.clear_memory()
    assert store.used_tokens == 0 and store.stats().kept_steps == []


def test_the_constructor_checks_its_settings():
    with pytest.raises(BudgetError, match="one step needs 10"):
        ArrayStore(16 * 5, min_step_tokens=10)
    with pytest.raises(ValueError, match="block_fraction"):
        ArrayStore(16 * 40, block_fraction=1.0)
    with pytest.raises(ValueError, match="recent_steps"):
        ArrayStore(16 * 40, recent_steps=-1)


def test_a_policy_without_pinned_protection_and_a_view_cap():
    store = ArrayStore(16 * 60, policy=sliding_window(), recent_steps=1, max_context_steps=4)
    for step in range(20):
        run_step(store, step)
        consistent(store)
    assert len(store.stats().kept_steps) <= 5  # the view cap, not the budget, bounds what is read
