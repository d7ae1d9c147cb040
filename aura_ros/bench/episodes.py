"""Generated robot episodes for the recall benchmark: a log with an instruction, long steady
stretches, events where the action changes, and questions about all of them.

Each step is one text line plus the numeric action the robot executed (what the action gate
sees). Steady steps repeat the same action (a hallway); events change it (a grasp closes the
gripper, a turn changes the heading, a drop opens the gripper) and carry the facts that are asked
about later. Control facts sit in steady steps with no action change: the gate has no reason to
keep them, and the benchmark reports what that costs.

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


def _distractors(rng: np.random.Generator, pool: list[str], right: str, n: int = 3) -> list[str]:
    others = [p for p in pool if p != right]
    return list(rng.choice(others, size=n, replace=False))


def _mc(rng, kind, prompt, right, pool, fact_step) -> Question:
    cands = [right] + _distractors(rng, pool, right)
    order = rng.permutation(len(cands))
    cands = [cands[i] for i in order]
    return Question(kind, prompt, tuple(" " + c for c in cands), int(np.where(order == 0)[0][0]), fact_step)


def make_episode(seed: int, steps: int = 120, events: int = 8, controls: int = 4) -> Episode:
    rng = np.random.default_rng(seed)
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
        if t in event_steps:
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
        actions.append(action.copy())
        if t in event_steps and action[1] != 0.0:
            action = np.array([0.5, 0.0, action[2]])  # the turn is over: straight on again
    questions.insert(0, _mc(rng, "instruction", "Instruction: pick up the", target, things, -1))
    return Episode(instruction, lines, np.stack(actions), questions, event_steps, control_steps)
