"""The segment table: which tokens of the cache belong to what, and where they sit.

Every cached token belongs to exactly one segment; segments tile the used slots in order
(slot = index into the fixed storage). Eviction removes whole groups of segments: a control
step's segments go together (its observation and its action), and each pinned or sink segment
is a group of its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

# Events the memory tells apart, because a newer one of the same kind replaces an older one: an
# action event (the robot reacted: its action left the baseline, or a gripper flipped) and a task's
# start (written as a gate event; it shows where the last task left the arm). A sight the robot
# did not react to cannot be told from another (a distractor) and is never superseded.
ACTION_EVENT = "action"
TASK_START = "task"
EVENT_KINDS = ("", ACTION_EVENT, TASK_START)


class Kind(str, Enum):
    PINNED = "pinned"  # system prompt + instruction: never evicted by the action-gated policy
    SINK = "sink"  # StreamingLLM's attention-sink tokens (split off the first segment)
    OBSERVATION = "observation"  # one step's image tokens + joint-state text
    ACTION = "action"  # the action tokens the model emitted for the step
    OTHER = "other"  # anything else a caller commits (e.g. a question in a benchmark)


@dataclass
class Segment:
    kind: Kind
    step: int  # control step (-1 for pinned/sink)
    start: int  # first slot
    length: int  # tokens
    pos_start: int  # position id of the first token (mrope: the segment's base position)
    pos_span: int  # how far the running position advances across the segment
    gate: float = 1.0  # gate value of the step (1 for pinned)
    written: bool = False  # written to long-term memory
    task: int = 0  # the task the step belongs to (SegmentTable.current_task when it was committed)
    # What kind of event the written step was (EVENT_KINDS): a later task's own event of the same
    # kind supersedes it (planner). "" for a sight, a marked event, a drift, or a step not written.
    event: str = ""

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def is_step(self) -> bool:
        return self.kind in (Kind.OBSERVATION, Kind.ACTION, Kind.OTHER)


@dataclass
class GroupView:
    """The eviction candidates seen by a scorer: one entry per group, arrays of shape [G]."""

    step: np.ndarray  # int64, control step (-1 for pinned/sink)
    age: np.ndarray  # int64, current step - step (0 for pinned/sink)
    tokens: np.ndarray  # int64, tokens in the group
    gate: np.ndarray  # float64, gate value of the step
    written: np.ndarray  # bool, step written to long-term memory
    attention: np.ndarray  # float64, mean accumulated attention per token (0 when not tracked)
    pinned: np.ndarray  # bool
    sink: np.ndarray  # bool
    task_age: np.ndarray | None = None  # int64, tasks begun since the group's (0: the current task)
    # bool, an action event of a finished task after which a later task has had its own
    superseded: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.task_age is None:
            self.task_age = np.zeros(len(self.step), dtype=np.int64)
        if self.superseded is None:
            self.superseded = np.zeros(len(self.step), dtype=bool)

    def __len__(self) -> int:
        return int(self.step.shape[0])


@dataclass
class SegmentTable:
    segments: list[Segment] = field(default_factory=list)
    # The task the next steps belong to. A robot's episode never ends but its tasks do: a task
    # boundary (``begin_task``) is what lets the memory tell the current task's facts from stale
    # ones of earlier tasks (the planner's stale rule, scorers.TaskAge).
    current_task: int = 0

    def begin_task(self) -> int:
        """Record a task boundary: the steps committed from now on belong to a new task."""
        self.current_task += 1
        return self.current_task

    def __len__(self) -> int:
        return len(self.segments)

    @property
    def used_tokens(self) -> int:
        return self.segments[-1].end if self.segments else 0

    @property
    def next_position(self) -> int:
        last = self.segments[-1] if self.segments else None
        return last.pos_start + last.pos_span if last else 0

    @property
    def pinned_tokens(self) -> int:
        return sum(s.length for s in self.segments if s.kind in (Kind.PINNED, Kind.SINK))

    def protected_tokens(self, protect_pinned: bool) -> int:
        """Tokens no eviction may free: the sinks, and the pinned segments where the policy protects them."""
        kinds = (Kind.PINNED, Kind.SINK) if protect_pinned else (Kind.SINK,)
        return sum(s.length for s in self.segments if s.kind in kinds)

    def append(self, seg: Segment) -> None:
        if seg.start != self.used_tokens:
            raise ValueError(f"segment starts at slot {seg.start}, table ends at {self.used_tokens}")
        if seg.is_step:
            seg.task = self.current_task
        self.segments.append(seg)

    def group_keys(self) -> list[tuple]:
        """One key per segment: segments with equal keys are evicted together."""
        return [("step", s.step) if s.is_step else (s.kind.value, s.start) for s in self.segments]

    def kept_steps(self) -> list[int]:
        seen: dict[int, None] = {}
        for s in self.segments:
            if s.is_step:
                seen.setdefault(s.step, None)
        return sorted(seen)

    def step_summary(self) -> list[tuple[int, float, bool, int]]:
        """(step, gate, written, tokens) per kept step, oldest first."""
        out: dict[int, list] = {}
        for s in self.segments:
            if s.is_step:
                entry = out.setdefault(s.step, [s.gate, s.written, 0])
                entry[2] += s.length
        return [(k, v[0], v[1], v[2]) for k, v in sorted(out.items())]

    def latest_event_tasks(self) -> dict[str, int]:
        """For each event kind among the kept written steps, the newest task that has one."""
        out: dict[str, int] = {}
        for s in self.segments:
            if s.is_step and s.written and s.event:
                out[s.event] = max(out.get(s.event, -1), s.task)
        return out

    def set_gate(self, step: int, gate: float, written: bool, event: str = "") -> None:
        # Called every step for the newest step: walk back from the end, stop at older steps.
        if event not in EVENT_KINDS:
            raise ValueError(f"event kind is one of {EVENT_KINDS}, got {event!r}")
        for s in reversed(self.segments):
            if s.is_step and s.step == step:
                s.gate, s.written, s.event = gate, written, event if written else ""
            elif s.is_step and s.step < step:
                break

    def split(self, index: int, at: int, first_kind: Kind) -> None:
        """Split segment ``index`` after ``at`` tokens; the first part gets ``first_kind``."""
        s = self.segments[index]
        if not 0 < at < s.length:
            return
        head = Segment(first_kind, s.step, s.start, at, s.pos_start, at, s.gate, s.written, s.task, s.event)
        s.start, s.length, s.pos_start, s.pos_span = s.start + at, s.length - at, s.pos_start + at, s.pos_span - at
        self.segments.insert(index, head)
