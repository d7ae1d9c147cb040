"""Generated robot episodes for the recall benchmark: a log with an instruction, long steady
stretches, events where the action changes, and questions about all of them.

Each step is one text line plus the numeric action the robot executed (what the action gate
sees). Steady steps repeat the same action (a hallway); events change it (a grasp closes the
gripper, a turn changes the heading, a drop opens the gripper) and carry the facts that are asked
about later. Control facts sit in steady steps with no action change: the gate has no reason to
keep them, and the benchmark reports what that costs.

Variants (``make_episode(..., variant=...)``), after what real action streams do and the first
episodes lacked (issue 16):
- ``steady``: steady steps repeat one action exactly and grasps/drops persist (the first variant);
- ``jitter``: the same events, but every step's forward speed is drawn around its value
  (``jitter``: half-width, in the joint's units), as a real policy's output wanders between
  neighbouring action bins;
- ``momentary``: jitter, and every event is momentary: the action departs for one step (a turn,
  a stop, a pinch of the gripper) and then returns to the steady action.

Questions are scored by the log-likelihood of each candidate answer. The answer prompts reuse
the log's own words ("step 40: grasp the" -> " blue cup"): with plain question/answer wording a
135M model is near chance even with the full cache (measured; see docs/benchmarks.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black", "pink", "brown"]
OBJECTS = ["cup", "block", "ball", "box", "bottle", "apple", "key", "book", "sponge", "can"]
PLACES = ["table", "shelf", "bin", "tray", "chair", "floor", "counter", "cart"]
SIDES = ["left", "right"]

# action vector: [forward speed, turn rate, gripper closed]
LOW = np.array([0.0, -1.0, 0.0])
HIGH = np.array([1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Question:
    kind: str  # instruction | event | control
    prompt: str  # the text the candidates continue
    candidates: tuple[str, ...]
    answer: int  # index of the right candidate
    fact_step: int  # the step whose line holds the fact (-1: the instruction)


@dataclass
class Episode:
    instruction: str
    lines: list[str]
    actions: np.ndarray  # [steps, 3]
    questions: list[Question] = field(default_factory=list)
    event_steps: list[int] = field(default_factory=list)
    control_steps: list[int] = field(default_factory=list)
    variant: str = "steady"

    @property
    def event_rate(self) -> float:
        """Fraction of steps that are events: what an ideal gate would write."""
        return len(self.event_steps) / max(len(self.lines), 1)


def _distractors(rng: np.random.Generator, pool: list[str], right: str, n: int = 3) -> list[str]:
    others = [p for p in pool if p != right]
    return list(rng.choice(others, size=n, replace=False))


def _mc(rng, kind, prompt, right, pool, fact_step) -> Question:
    cands = [right] + _distractors(rng, pool, right)
    order = rng.permutation(len(cands))
    cands = [cands[i] for i in order]
    return Question(kind, prompt, tuple(" " + c for c in cands), int(np.where(order == 0)[0][0]), fact_step)


VARIANTS = ("steady", "jitter", "momentary")


def make_episode(seed: int, steps: int = 120, events: int = 8, controls: int = 4, variant: str = "steady",
                 jitter: float = 0.05) -> Episode:
    """One episode; ``variant`` and ``jitter`` as in the module docstring."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown episode variant {variant!r}; choose one of {VARIANTS}")
    rng = np.random.default_rng(seed)
    # A separate stream for the jitter, so that every variant of a seed has the same facts.
    noise = np.random.default_rng([seed, 16])
    things = [f"{c} {o}" for c in COLORS for o in OBJECTS]
    target, place = str(rng.choice(things)), str(rng.choice(PLACES))
    instruction = f"Instruction: pick up the {target} and put it on the {place}."
    slots = rng.choice(np.arange(8, steps - 4), size=events + controls, replace=False)
    event_steps = sorted(int(s) for s in slots[:events])
    control_steps = sorted(int(s) for s in slots[events:])
    lines, actions, questions = [], [], []
    action = np.array([0.5, 0.0, 0.0])
    holding: str | None = None
    for t in range(steps):
        steady = action.copy()
        if t in event_steps and variant == "momentary":
            seen = str(rng.choice(things))
            kind = int(rng.integers(3))
            if kind == 0:
                side = str(rng.choice(SIDES))
                action = np.array([0.5, -0.8 if side == "left" else 0.8, steady[2]])
                lines.append(f"step {t}: turn {side} toward the {seen}.")
                questions.append(_mc(rng, "event", f"step {t}: turn {side} toward the", seen, things, t))
            elif kind == 1:
                action = np.array([0.0, 0.0, steady[2]])  # a stop
                lines.append(f"step {t}: stop at the {seen}.")
                questions.append(_mc(rng, "event", f"step {t}: stop at the", seen, things, t))
            else:
                action = np.array([0.5, 0.0, 1.0 - steady[2]])  # the gripper flips for one step
                lines.append(f"step {t}: pinch the {seen}.")
                questions.append(_mc(rng, "event", f"step {t}: pinch the", seen, things, t))
        elif t in event_steps:
            if holding is None and rng.random() < 0.6:
                holding = str(rng.choice(things))
                action = np.array([0.5, 0.0, 1.0])  # the gripper closes and stays closed
                lines.append(f"step {t}: grasp the {holding}.")
                questions.append(_mc(rng, "event", f"step {t}: grasp the", holding, things, t))
            elif holding is not None and rng.random() < 0.7:
                where = str(rng.choice(PLACES))
                action = np.array([0.5, 0.0, 0.0])  # the gripper opens
                lines.append(f"step {t}: drop the {holding} on the {where}.")
                questions.append(_mc(rng, "event", f"step {t}: drop the {holding} on the", where, PLACES, t))
                holding = None
            else:
                side = str(rng.choice(SIDES))
                seen = str(rng.choice(things))
                action = np.array([0.5, -0.8 if side == "left" else 0.8, action[2]])
                lines.append(f"step {t}: turn {side} toward the {seen}.")
                questions.append(_mc(rng, "event", f"step {t}: turn {side} toward the", seen, things, t))
        elif t in control_steps:
            seen = str(rng.choice(things))
            lines.append(f"step {t}: move on, pass the {seen}.")
            questions.append(_mc(rng, "control", f"step {t}: move on, pass the", seen, things, t))
        else:
            lines.append(f"step {t}: move on.")
        executed = action.copy()
        if variant != "steady" and executed[0] > 0:
            # The forward speed wanders around its value; a stop stays a stop.
            executed[0] = np.clip(executed[0] + noise.uniform(-jitter, jitter), LOW[0], HIGH[0])
        actions.append(executed)
        if t in event_steps and variant == "momentary":
            action = steady  # the momentary action is over: back to what the robot was doing
        elif t in event_steps and action[1] != 0.0:
            action = np.array([0.5, 0.0, action[2]])  # the turn is over: straight on again
    questions.insert(0, _mc(rng, "instruction", "Instruction: pick up the", target, things, -1))
    return Episode(instruction, lines, np.stack(actions), questions, event_steps, control_steps, variant)


@dataclass(frozen=True)
class GateRates:
    """What a gate wrote over generated episodes, against what an ideal gate would write."""

    variant: str
    jitter: float
    steps: int
    write_rate: float  # writes / steps
    event_rate: float  # event steps / steps
    events_written: float  # fraction of event steps written
    other_writes: float  # writes on steps that are not events, / steps


def gate_rates(make_gate, variant: str, episodes: int = 60, steps: int = 100, events: int = 6,
               jitter: float = 0.05, seed: int = 0) -> GateRates:
    """Feed each episode's actions through a fresh ``make_gate()`` (no model needed)."""
    n = writes = n_events = events_hit = 0
    for e in range(episodes):
        ep = make_episode(seed + e, steps=steps, events=events, variant=variant, jitter=jitter)
        gate = make_gate()
        written = [t for t, a in enumerate(ep.actions) if gate.update(a).written]
        n, writes, n_events = n + steps, writes + len(written), n_events + len(ep.event_steps)
        events_hit += len(set(written) & set(ep.event_steps))
    return GateRates(variant, jitter, n, writes / n, n_events / n, events_hit / max(n_events, 1),
                     (writes - events_hit) / n)
