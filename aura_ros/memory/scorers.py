"""Eviction scorers: each is a small dataclass with one ``score()`` method (kvpress's presses are
the model) and scorers compose by weighted sum. A higher score means "keep"; the cache evicts
the lowest-scoring group first. Protection (pinned, sinks, the recent window) is the policy's
business, not the scorer's, so every scorer stays a pure function of the candidates.

All ``score`` methods take a GroupView (arrays of shape [G], one entry per evictable group)
and return a float64 array of shape [G].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aura_ros.memory.segments import GroupView


@dataclass(frozen=True)
class OldestFirst:
    """Sliding window: the older the group, the lower its score."""

    uses_attention = False

    def score(self, view: GroupView) -> np.ndarray:
        return view.step.astype(np.float64)


@dataclass(frozen=True)
class Recency:
    """exp(-age / tau): 1 for the newest step, towards 0 for old ones."""

    tau: float = 100.0
    uses_attention = False

    def score(self, view: GroupView) -> np.ndarray:
        return np.exp(-view.age.astype(np.float64) / self.tau)


@dataclass(frozen=True)
class GateValue:
    """The action gate's value for the step (pinned groups have 1)."""

    uses_attention = False

    def score(self, view: GroupView) -> np.ndarray:
        return view.gate.astype(np.float64)


@dataclass(frozen=True)
class Written:
    """1 for steps written to long-term memory, 0 for transient ones."""

    uses_attention = False

    def score(self, view: GroupView) -> np.ndarray:
        return view.written.astype(np.float64)


@dataclass(frozen=True)
class RunEnds:
    """Thins runs of consecutive long-term steps: 1 for a long-term step that stands alone or
    starts or ends a run (steps at most ``max_gap`` apart), 0 inside a run and for transient steps.

    A run of writes is one manoeuvre seen step by step (a drift, a long turn): its first and last
    steps say where it began and ended, the inside repeats them, so under pressure the inside
    goes before a distinct event elsewhere does.
    """

    max_gap: int = 1
    uses_attention = False

    def score(self, view: GroupView) -> np.ndarray:
        out = np.zeros(len(view), dtype=np.float64)
        idx = np.nonzero(view.written & ~view.pinned & ~view.sink)[0]
        if not idx.size:
            return out
        idx = idx[np.argsort(view.step[idx], kind="stable")]
        steps = view.step[idx]
        gaps = np.diff(steps)
        joined_before = np.concatenate(([False], gaps <= self.max_gap))
        joined_after = np.concatenate((gaps <= self.max_gap, [False]))
        out[idx] = (~(joined_before & joined_after)).astype(np.float64)
        return out


@dataclass(frozen=True)
class TaskAge:
    """-(tasks begun since the group's task): 0 for the current task, -1 for the one before, ...

    With a weight above the spread of the other terms, every long-term step of an earlier task
    ranks below every long-term step of a later one: a finished task's facts go first.
    """

    uses_attention = False

    def score(self, view: GroupView) -> np.ndarray:
        return -view.task_age.astype(np.float64)


@dataclass(frozen=True)
class AccumulatedAttention:
    """H2O's heavy hitters: mean attention per token received so far, scaled to [0, 1]."""

    uses_attention = True

    def score(self, view: GroupView) -> np.ndarray:
        att = view.attention.astype(np.float64)
        top = att.max() if att.size else 0.0
        return att / top if top > 0 else np.zeros_like(att)


@dataclass(frozen=True)
class Weighted:
    """sum_i w_i * scorer_i.score(view)."""

    terms: tuple[tuple[float, object], ...]

    @property
    def uses_attention(self) -> bool:
        return any(w != 0 and s.uses_attention for w, s in self.terms)

    def score(self, view: GroupView) -> np.ndarray:
        total = np.zeros(len(view), dtype=np.float64)
        for weight, scorer in self.terms:
            if weight:
                total += weight * scorer.score(view)
        return total


@dataclass(frozen=True)
class EvictionPolicy:
    """What the cache may evict and in which order.

    protect_pinned: pinned segments (instruction) are never evicted.
    sink_tokens: the first N tokens of the sequence are split into a protected sink segment.
    protect_recent: the last ``recent_steps`` steps are kept while anything else can go.
    recent_share: when long-term steps would have to go, the window gives up its oldest steps
        down to this share of the tokens the pinned (and sink) tokens leave; 1.0 = the whole
        window, always.
    keep_written: written (long-term) steps go only for the room a step really needs: after every
        transient step and after the window's share, and never just to round an eviction up to a
        block.
    task_horizon: with keep_written, the steps of tasks more than this many task boundaries back
        are stale: they leave before anything else when room is needed (None: no such rule).
    supersede: with keep_written, a finished task's events are stale too once a later task has
        written one of its own of the same kind (segments.EVENT_KINDS: an action event, a task's
        start): the newer fact replaces the older one. A later task that has reacted to nothing
        yet (one that asks for the previous task's fact) leaves the action events where they are.
    """

    name: str
    scorer: object
    protect_pinned: bool = True
    sink_tokens: int = 0
    protect_recent: bool = True
    recent_share: float = 1.0
    keep_written: bool = False
    task_horizon: int | None = None
    supersede: bool = False

    @property
    def uses_attention(self) -> bool:
        return bool(getattr(self.scorer, "uses_attention", False))


@dataclass(frozen=True)
class UtilityWeights:
    """Weights of the action-gated utility (the node's gate.* / memory.* parameters)."""

    written: float = 10.0  # dominates: transient steps go before any long-term step
    gate: float = 1.0  # graded by how surprising the step was: the strongest events stay longest
    run_ends: float = 0.3  # the inside of a run of writes goes first, unless it is much stronger
    attention: float = 0.0  # > 0 turns on the (eager) attention hook
    # A slow fade, so an endless episode's memory still turns over, but too weak to outrank
    # strength within a few hundred steps (at 0.5 / 100 steps it decided among saturated gates
    # and the oldest events went first, issue 16).
    recency: float = 0.2
    recency_tau: float = 500.0
    # When long-term steps would have to go, the recent window gives up its oldest steps down to
    # this share of the unpinned budget. At 0.5, 5-10 % of an episode's tokens kept 0.13-0.42 of
    # the event steps against 0.22-0.88 at 0.1, which equals a perfect gate's (issue 16,
    # docs/benchmarks.md section 4); without that pressure the whole window stays.
    recent_share: float = 0.1
    # A finished task's long-term steps rank below the current task's (2 > the spread of the terms
    # above: gate 1 + run_ends 0.3 + recency 0.2), and those of tasks more than ``task_horizon``
    # boundaries back are stale: they leave first under pressure. 1 keeps the previous task's
    # facts beside the current one's (a task may ask for them).
    task: float = 2.0
    task_horizon: int = 1
    # Two cues in memory, the current task's and the previous one's, are two answers for the
    # policy to choose between: with a reset per task the shipped default read the right one 40
    # times in 40, without one 33 in 40, every miss with both kept (docs/benchmarks.md section 8).
    # A later task's own event of the same kind (an action event, its start) supersedes the
    # finished task's, which then leaves first.
    supersede: bool = True


def action_gated(weights: UtilityWeights | None = None) -> EvictionPolicy:
    """aura_ros's policy: instruction pinned, recent window kept, transient steps first, then the
    long-term steps of lowest utility (inside of a run of writes, gate value, attention still
    received, age)."""
    w = weights or UtilityWeights()
    scorer = Weighted(((w.written, Written()), (w.gate, GateValue()), (w.run_ends, RunEnds()),
                       (w.attention, AccumulatedAttention()), (w.recency, Recency(w.recency_tau)),
                       (w.task, TaskAge())))
    return EvictionPolicy("action_gate", scorer, protect_pinned=True, protect_recent=True,
                          recent_share=w.recent_share, keep_written=True, task_horizon=w.task_horizon,
                          supersede=w.supersede)


def sliding_window() -> EvictionPolicy:
    """Plain sliding window: oldest first, nothing protected (the instruction goes first)."""
    return EvictionPolicy("sliding_window", OldestFirst(), protect_pinned=False, protect_recent=True)


def streaming_llm(sink_tokens: int = 4) -> EvictionPolicy:
    """StreamingLLM: ``sink_tokens`` attention sinks + a window of the most recent tokens."""
    return EvictionPolicy("streaming_llm", OldestFirst(), protect_pinned=False, sink_tokens=sink_tokens)


def h2o() -> EvictionPolicy:
    """H2O: heavy hitters by accumulated attention, plus the recent window."""
    return EvictionPolicy("h2o", AccumulatedAttention(), protect_pinned=False, protect_recent=True)


POLICIES = {"action_gate": action_gated, "sliding_window": sliding_window,
            "streaming_llm": streaming_llm, "h2o": h2o}


def make_policy(name: str, **kwargs) -> EvictionPolicy:
    try:
        return POLICIES[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r}; choose one of {sorted(POLICIES)}") from None
