"""Memory tasks in the sim: episodes whose success needs a fact that left the picture long ago.

Both tasks share one scene (``SimScene``, seen from above, the base never moves): three bins in
front of the arm at fixed places, a block the robot holds, and a "go" light behind the base. The
arm works with four joint-target poses, every value an action-bin centre of the default
``ActionSpace`` (so an expert action is exactly one token per joint):

- ``WORK``: the arm holds the block behind it, to the left (the steady pose of the long stretches);
- ``over_bin(k)``: the gripper (still closed) above bin k;
- ``over_bin(k)`` with the gripper open: the block drops into bin k.

cue_recall (the action gate's case): after 6-8 steady steps one bin lights up (a yellow square
inside it) for one step; the expert reacts at once: it swings the block over the lit bin (its
action changes: a step the action gate writes), then back to ``WORK`` when the light is gone. A
distractor stretch of D steps follows: the arm holds still while objects of other colours appear
and vanish around it. Then the go light comes on (the recall phase, visible in the frame): the
expert moves over the cued bin and opens the gripper. Success: the released block lies inside
the cued bin. Chance (a guess among the bins) is 1/3. The cue step's action tokens are the recall
step's action tokens, so a policy that keeps that step in its memory can copy them.

latent_fact (the gate's blind spot): the same, except that the expert does not react to the light
(it keeps ``WORK``; the action does not change), so only the frame of that step carries the fact.

Episodes are deterministic by seed; ``distractor_steps`` (D) is free, from 0 to thousands (a step
is a 64x64 render and a few numpy operations).

    task = make_task("cue_recall", seed=3, distractor_steps=200)
    while not task.done:
        step = task.observe()                  # TaskStep(image, joint_state)
        task.apply(policy_action(step))        # or task.expert_action()
    task.success
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from aura_ros.core import arm
from aura_ros.core.actions import ActionSpace
from aura_ros.sim.scene import COLORS, LINK_LENGTHS, SimScene

# One control step of the tasks, in sim seconds: long enough for the arm to swing between any two
# of the task's poses within one step (the scene limits joint speed to 1.5 rad/s).
STEP_DT = 2.5
IMAGE_SIZE = 64
N_BINS = 3
RECALL_STEPS = 2  # over the bin (closed), then open
WARMUP_STEPS = 5  # steady steps before the cue can come
BIN_SIZE = 0.2
LIGHT_SIZE = BIN_SIZE
LIGHT_COLOR = "blue"
GO_COLOR = "cyan"
GO_POSITION = (-0.42, -0.42)  # base frame: behind the base, to the right
GO_SIZE = 0.34
DISTRACTOR_COLORS = tuple(c for c in COLORS if c not in (LIGHT_COLOR, GO_COLOR, "purple"))
MAX_DISTRACTORS = 3

_SPACE = ActionSpace(arm.JOINT_NAMES, np.array(arm.LOW), np.array(arm.HIGH))


def _snap(values) -> np.ndarray:
    """The action-bin centres nearest ``values`` (the default 256-bin action space)."""
    return _SPACE.from_bins(_SPACE.to_bins(np.asarray(values, dtype=np.float64)))


_ELBOW, _WRIST = 0.5, 0.5
BIN_SHOULDER = (-0.8, 0.0, 0.8)
WORK = _snap([2.2, _ELBOW, _WRIST, 1.0])
GRIPPER_OPEN = float(_snap([0, 0, 0, 0.0])[3])
GRIPPER_CLOSED = float(WORK[3])


def over_bin(k: int, open_gripper: bool = False) -> np.ndarray:
    """Joint targets with the gripper above bin ``k`` (closed, or open to drop the block)."""
    return _snap([BIN_SHOULDER[k], _ELBOW, _WRIST, 0.0 if open_gripper else 1.0])


def gripper_centre(joints: np.ndarray) -> np.ndarray:
    """Forward kinematics of the planar arm (base frame, metres): the gripper centre."""
    p, angle = np.zeros(2), 0.0
    for q, length in zip(joints[:3], LINK_LENGTHS):
        angle += float(q)
        p = p + length * np.array([math.cos(angle), math.sin(angle)])
    return p


BIN_POSITIONS = tuple(gripper_centre(over_bin(k)) for k in range(N_BINS))
WORK_POSITION = gripper_centre(WORK)


@dataclass
class TaskStep:
    """What the policy sees at one control step."""

    image: np.ndarray  # HxWx3 uint8
    joint_state: np.ndarray  # [4] shoulder, elbow, wrist, gripper


@dataclass
class EpisodeRecord:
    """One episode as the trainer takes it (a user's recorded episode has the same fields).

    events: external events per step (a new sub-task), which the gate treats as a discrete change;
    the memory tasks have none.
    """

    instruction: str
    images: list[np.ndarray]
    states: np.ndarray  # [T, 4]
    actions: np.ndarray  # [T, 4]
    events: np.ndarray  # [T] bool
    success: bool
    task: str = ""
    seed: int = -1
    cue_step: int = -1
    recall_start_step: int = -1


class MemoryTask:
    """One seeded episode of a memory task. Subclasses say whether the expert reacts to the cue."""

    name = "memory"
    instruction = ""
    expert_reacts = True

    def __init__(self, seed: int, distractor_steps: int, n_choices: int = N_BINS,
                 image_size: int = IMAGE_SIZE) -> None:
        if distractor_steps < 0:
            raise ValueError(f"distractor_steps must be >= 0, got {distractor_steps}")
        if n_choices != N_BINS:
            raise ValueError(f"the tasks have {N_BINS} bins; n_choices={n_choices} is not supported")
        self.seed = int(seed)
        self.n_choices = n_choices
        self.distractor_steps = int(distractor_steps)
        rng = np.random.default_rng([self.seed, 7919])
        self.target = int(rng.integers(n_choices))
        self.cue_step = int(rng.integers(*self._cue_range()))
        self.recall_start_step = self.cue_step + 1 + self.distractor_steps
        self.total_steps = self.recall_start_step + RECALL_STEPS
        self.step_index = 0
        self.success: bool | None = None
        self._rng = rng
        self.scene = SimScene(width=image_size, height=image_size, seed=self.seed, event_period_steps=0)
        for obj in self.scene.objects:
            self.scene.remove_object(obj.name)
        for k, xy in enumerate(BIN_POSITIONS):
            self.scene.add_object(f"bin_{k}", "purple", xy, size=BIN_SIZE, shape="bin")
        # The block lies where the gripper closes in the first step (the arm swings to WORK).
        self.scene.add_object("block", "red", WORK_POSITION, size=0.06, shape="box")
        self._distractors: list[tuple[str, int]] = []  # (name, step it vanishes)
        self._n_distractors = 0
        self._update_scene()

    def _cue_range(self) -> tuple[int, int]:
        # After a steady start of at least WARMUP_STEPS: a gate that learns the action stream's
        # noise first (memory.gate: warmup_steps) has a settled baseline when the cue comes.
        return WARMUP_STEPS + 1, WARMUP_STEPS + 4

    @property
    def done(self) -> bool:
        return self.step_index >= self.total_steps

    def phase(self, step: int | None = None) -> str:
        s = self.step_index if step is None else step
        if s < self.cue_step:
            return "start"
        if s == self.cue_step:
            return "cue"
        if s < self.recall_start_step:
            return "distractor"
        return "recall"

    def observe(self) -> TaskStep:
        _, q, _ = self.scene.joint_state()
        return TaskStep(image=self.scene.render(), joint_state=q)

    def expert_action(self) -> np.ndarray:
        s = self.step_index
        if s >= self.recall_start_step:
            return over_bin(self.target, open_gripper=s > self.recall_start_step)
        if s == self.cue_step and self.expert_reacts:
            return over_bin(self.target)
        return WORK.copy()

    def apply(self, action: np.ndarray) -> None:
        if self.done:
            raise RuntimeError("the episode is over")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.size != 4 or not np.all(np.isfinite(a)):
            raise ValueError(f"an action is 4 finite joint targets, got {action!r}")
        self.scene.step(STEP_DT, position_targets=a)
        self.step_index += 1
        if self.done:
            self.success = self._check()
        else:
            self._update_scene()

    def _check(self) -> bool:
        block = self.scene.get_object("block")
        if block.held:
            return False
        inside = np.max(np.abs(block.position - BIN_POSITIONS[self.target])) <= BIN_SIZE / 2
        return bool(inside)

    # ------------------------------------------------------------------ the scene per step
    def _update_scene(self) -> None:
        """Set what the frame of the step about to be observed shows: cue, go light, distractors."""
        s = self.step_index
        names = {o.name for o in self.scene.objects}
        if s == self.cue_step:
            self.scene.add_object("light", LIGHT_COLOR, BIN_POSITIONS[self.target], size=LIGHT_SIZE, shape="box")
        elif "light" in names:
            self.scene.remove_object("light")
        if s == self.recall_start_step:
            self.scene.add_object("go", GO_COLOR, GO_POSITION, size=GO_SIZE, shape="disc")
        if self.cue_step < s < self.recall_start_step:
            self._distract(s)
        elif s >= self.recall_start_step:
            for name, _ in self._distractors:
                self.scene.remove_object(name)
            self._distractors.clear()

    def _distract(self, s: int) -> None:
        """Objects come and go while the arm holds still."""
        rng = self._rng
        for name, until in list(self._distractors):
            if s >= until:
                self.scene.remove_object(name)
                self._distractors.remove((name, until))
        if len(self._distractors) < MAX_DISTRACTORS and rng.random() < 0.25:
            self._n_distractors += 1
            name = f"distractor_{self._n_distractors}"
            self.scene.add_object(name, str(rng.choice(DISTRACTOR_COLORS)), self._free_spot(),
                                  size=float(rng.uniform(0.05, 0.09)), shape=str(rng.choice(("box", "disc"))))
            self._distractors.append((name, s + int(rng.integers(3, 15))))

    def _free_spot(self) -> np.ndarray:
        keep_clear = [*BIN_POSITIONS, np.array(GO_POSITION), WORK_POSITION]
        for _ in range(100):
            xy = self._rng.uniform(-0.65, 0.65, size=2)
            if all(np.linalg.norm(xy - c) > 0.17 for c in keep_clear) and np.linalg.norm(xy) > 0.15:
                return xy
        return np.array([0.6, -0.6])


class CueRecallTask(MemoryTask):
    name = "cue_recall"
    instruction = "put the block in the bin that lights up when the go light is on"
    expert_reacts = True


class LatentFactTask(MemoryTask):
    name = "latent_fact"
    instruction = "hold the block, note the lit bin, put the block there when the go light is on"
    expert_reacts = False

    def _cue_range(self) -> tuple[int, int]:
        return WARMUP_STEPS + 1, WARMUP_STEPS + 5  # the light comes during the steady stretch


TASKS: dict[str, type] = {"cue_recall": CueRecallTask, "latent_fact": LatentFactTask}


def make_task(name: str, seed: int, distractor_steps: int, **kw) -> MemoryTask:
    try:
        cls = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}") from None
    return cls(seed, distractor_steps, **kw)


def expert_episode(name: str, seed: int, distractor_steps: int, **kw) -> EpisodeRecord:
    """Roll out the scripted expert: what it saw and what it commanded at every step."""
    task = make_task(name, seed, distractor_steps, **kw)
    images, states, actions = [], [], []
    while not task.done:
        step = task.observe()
        action = task.expert_action()
        images.append(step.image)
        states.append(step.joint_state)
        actions.append(action)
        task.apply(action)
    return EpisodeRecord(instruction=task.instruction, images=images, states=np.array(states),
                         actions=np.array(actions), events=np.zeros(len(actions), dtype=bool),
                         success=bool(task.success), task=name, seed=seed, cue_step=task.cue_step,
                         recall_start_step=task.recall_start_step)
