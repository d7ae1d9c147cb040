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

recall_previous (memory across tasks): no bin lights up in this task; the instruction asks for the
bin that lit up in the previous task of the stream, so only memory carried over a task boundary
solves it (an emptied memory is at chance). It exists only inside a stream.

Episodes are deterministic by seed; ``distractor_steps`` (D) is free, from 0 to thousands (a step
is a 64x64 render and a few numpy operations).

A robot's episode never ends: ``TaskStream`` runs tasks back to back on one scene with no reset.
After each drop the block is taken away and a new one is handed over where the gripper closes at
``WORK``; the next task's first observation carries its instruction and ``new_task``. Tasks may be
mixed, each with its own D; a recall_previous task follows another task.

    stream = make_stream(seed=0, n_tasks=20, mix=(("cue_recall", 200),))
    while not stream.done:
        step = stream.observe()                # TaskStep(..., new_task, instruction)
        stream.apply(policy_action(step))
    stream.successes                           # one bool per task

    task = make_task("cue_recall", seed=3, distractor_steps=200)
    while not task.done:
        step = task.observe()                  # TaskStep(image, joint_state)
        task.apply(policy_action(step))        # or task.expert_action()
    task.success
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from aura_ros.core import arm
from aura_ros.core.actions import ActionSpace
from aura_ros.sim.scene import CAMERA_VIEWS, COLORS, LINK_LENGTHS, SimScene

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


def check_cameras(cameras) -> tuple[str, ...]:
    cameras = tuple(cameras)
    if not cameras or any(c not in CAMERA_VIEWS for c in cameras) or len(set(cameras)) != len(cameras):
        raise ValueError(f"cameras must be distinct views among {CAMERA_VIEWS}, got {cameras!r}")
    return cameras


@dataclass
class TaskStep:
    """What the policy sees at one control step."""

    image: np.ndarray | tuple[np.ndarray, ...]  # HxWx3 uint8; a tuple of frames, one per camera, for several
    joint_state: np.ndarray  # [4] shoulder, elbow, wrist, gripper
    new_task: bool = False  # the first step of a task in a stream (a task boundary)
    instruction: str = ""  # the task's instruction


@dataclass
class EpisodeRecord:
    """One episode as the trainer takes it (a user's recorded episode has the same fields).

    events: external events per step (a new sub-task), which the gate treats as a discrete change;
    the memory tasks have none.
    """

    instruction: str
    images: list  # per step: one HxWx3 uint8 frame, or a tuple of frames (one per camera)
    states: np.ndarray  # [T, 4]
    actions: np.ndarray  # [T, 4]
    events: np.ndarray  # [T] bool
    success: bool
    task: str = ""
    seed: int = -1
    cue_step: int = -1
    recall_start_step: int = -1
    # A stream of tasks (``expert_stream``): the first step of each task, its instruction and name.
    # A single episode is a stream of one task.
    task_starts: tuple[int, ...] = (0,)
    task_instructions: tuple[str, ...] = ()
    task_names: tuple[str, ...] = ()

    def task_at(self, step: int) -> int:
        """Index of the task that step ``step`` belongs to."""
        return int(np.searchsorted(np.asarray(self.task_starts), step, side="right") - 1)

    def instruction_at(self, step: int) -> str:
        return self.task_instructions[self.task_at(step)] if self.task_instructions else self.instruction


class MemoryTask:
    """One seeded episode of a memory task. Subclasses say whether the expert reacts to the cue."""

    name = "memory"
    instruction = ""
    expert_reacts = True
    shows_light = True  # a bin lights up in this task (recall_previous: the fact is from the task before)

    def __init__(self, seed: int, distractor_steps: int, n_choices: int = N_BINS,
                 image_size: int = IMAGE_SIZE, scene: SimScene | None = None, target: int | None = None,
                 cameras: tuple[str, ...] = ("top",)) -> None:
        """scene: continue on this scene (a stream: the bins stay, the arm is where the last task
        left it, a new block is handed over); target: the bin (recall_previous: the previous
        task's); cameras: the views each observation holds (scene.CAMERA_VIEWS): one camera gives
        one frame, several a tuple of frames in this order."""
        if distractor_steps < 0:
            raise ValueError(f"distractor_steps must be >= 0, got {distractor_steps}")
        if n_choices != N_BINS:
            raise ValueError(f"the tasks have {N_BINS} bins; n_choices={n_choices} is not supported")
        self.cameras = check_cameras(cameras)
        self.seed = int(seed)
        self.n_choices = n_choices
        self.distractor_steps = int(distractor_steps)
        rng = np.random.default_rng([self.seed, 7919])
        self.target = int(rng.integers(n_choices))
        if target is not None:
            self.target = int(target)
        elif not self.shows_light:
            raise ValueError(f"{self.name} recalls the previous task's bin: it runs inside a stream (make_stream)")
        self.cue_step = int(rng.integers(*self._cue_range()))
        self.recall_start_step = self.cue_step + 1 + self.distractor_steps
        self.total_steps = self.recall_start_step + RECALL_STEPS
        self.step_index = 0
        self.success: bool | None = None
        self._rng = rng
        if scene is None:
            self.scene = SimScene(width=image_size, height=image_size, seed=self.seed, event_period_steps=0)
            for obj in self.scene.objects:
                self.scene.remove_object(obj.name)
            for k, xy in enumerate(BIN_POSITIONS):
                self.scene.add_object(f"bin_{k}", "purple", xy, size=BIN_SIZE, shape="bin")
        else:
            # The last task's block is taken out of its bin (a block left there would show the
            # previous task's answer in every later frame) and its props go.
            self.scene = scene
            for obj in self.scene.objects:
                if obj.shape != "bin":
                    self.scene.remove_object(obj.name)
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
        frames = tuple(self.scene.render_view(view) for view in self.cameras)
        return TaskStep(image=frames[0] if len(frames) == 1 else frames, joint_state=q)

    def expert_action(self) -> np.ndarray:
        s = self.step_index
        if s >= self.recall_start_step:
            return over_bin(self.target, open_gripper=s > self.recall_start_step)
        if s == self.cue_step and self.expert_reacts and self.shows_light:
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
        if s == self.cue_step and self.shows_light:
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


class RecallPreviousTask(MemoryTask):
    name = "recall_previous"
    instruction = "put the block in the bin that lit up in the previous task when the go light is on"
    expert_reacts = False
    shows_light = False


TASKS: dict[str, type] = {"cue_recall": CueRecallTask, "latent_fact": LatentFactTask,
                          "recall_previous": RecallPreviousTask}
# Tasks that need a task before them in a stream; the others also run as single episodes.
CROSS_TASK = ("recall_previous",)
EPISODE_TASKS = tuple(n for n in TASKS if n not in CROSS_TASK)


def make_task(name: str, seed: int, distractor_steps: int, **kw) -> MemoryTask:
    try:
        cls = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}") from None
    return cls(seed, distractor_steps, **kw)


class TaskStream:
    """Tasks back to back on one scene, no reset: the robot's endless episode, one task after another.

    specs: (task name, D) per task, in order: a list, or an endless iterator (``iter_specs``). Task
    i runs with seed ``seed * 1000 + i`` (its cue time, bin and distractors); a recall_previous
    task's bin is the task before's.
    """

    def __init__(self, seed: int, specs, image_size: int = IMAGE_SIZE, cameras: tuple[str, ...] = ("top",)) -> None:
        self.seed = int(seed)
        self.image_size = image_size
        self.cameras = check_cameras(cameras)
        self._specs = iter(specs)
        first = self._next_spec()
        if first is None:
            raise ValueError("a stream needs at least one task")
        if first[0] in CROSS_TASK:
            raise ValueError(f"a stream cannot start with {first[0]}: it recalls the task before")
        self.specs = [first]  # the tasks begun so far
        self.index = 0  # the running task's index (the number of tasks done)
        self.successes: list[bool] = []
        self.task = self._make(first, None)
        self.steps_total = 0
        self._first = True
        self._done = False

    def _next_spec(self) -> tuple[str, int] | None:
        spec = next(self._specs, None)
        if spec is None:
            return None
        name, d = str(spec[0]), int(spec[1])
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
        return name, d

    def _make(self, spec: tuple[str, int], scene: SimScene | None) -> MemoryTask:
        name, d = spec
        target = self.task.target if name in CROSS_TASK else None
        return TASKS[name](self.seed * 1000 + self.index, d, image_size=self.image_size, scene=scene, target=target,
                           cameras=self.cameras)

    @property
    def done(self) -> bool:
        return self._done

    def observe(self) -> TaskStep:
        step = self.task.observe()
        step.new_task = self._first
        step.instruction = self.task.instruction
        return step

    def expert_action(self) -> np.ndarray:
        return self.task.expert_action()

    def apply(self, action: np.ndarray) -> None:
        if self.done:
            raise RuntimeError("the stream is over")
        self.task.apply(action)
        self.steps_total += 1
        self._first = False
        if self.task.done:
            self.successes.append(bool(self.task.success))
            self.index += 1
            spec = self._next_spec()
            if spec is None:
                self._done = True
                return
            self.specs.append(spec)
            self.task = self._make(spec, self.task.scene)
            self._first = True


def parse_mix(text: str) -> tuple[tuple[str, int, float], ...]:
    """"cue_recall:200,latent_fact:50:0.5" -> ((name, D, weight), ...); recall_previous is not drawn
    from a mix (its share is ``cross_task``)."""
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            if len(parts) not in (2, 3) or not parts[0]:
                raise ValueError
            name, d, w = parts[0], int(parts[1]), float(parts[2]) if len(parts) == 3 else 1.0
        except ValueError:
            raise ValueError(f"a mix entry is task:D or task:D:weight, got {item!r}") from None
        if name not in EPISODE_TASKS:
            raise ValueError(f"unknown task {name!r} in the mix; choose from {sorted(EPISODE_TASKS)} "
                             "(recall_previous comes from the cross-task share)")
        if d < 0 or w <= 0:
            raise ValueError(f"{item!r}: D must be >= 0 and the weight > 0")
        out.append((name, d, w))
    return tuple(out)


def iter_specs(seed: int, mix=(("cue_recall", 200),), cross_task: float = 0.0):
    """(task, D) without end, deterministic by seed: each task drawn from ``mix`` ((name, D) or
    (name, D, weight)); after the first, with probability ``cross_task`` a recall_previous task
    with the D of the task it follows."""
    rng = np.random.default_rng([int(seed), 4243])
    entries = [(m[0], int(m[1]), float(m[2]) if len(m) > 2 else 1.0) for m in mix]
    w = np.array([e[2] for e in entries])
    w = w / w.sum()
    last: tuple[str, int] | None = None
    while True:
        if last is not None and last[0] not in CROSS_TASK and rng.random() < cross_task:
            last = ("recall_previous", last[1])
        else:
            name, d, _ = entries[int(rng.choice(len(entries), p=w))]
            last = (name, d)
        yield last


def stream_specs(seed: int, n_tasks: int, mix=(("cue_recall", 200),), cross_task: float = 0.0) -> list[tuple[str, int]]:
    """The first ``n_tasks`` of ``iter_specs``."""
    return list(itertools.islice(iter_specs(seed, mix, cross_task), n_tasks))


def make_stream(seed: int, n_tasks: int | None, mix=(("cue_recall", 200),), cross_task: float = 0.0,
                **kw) -> TaskStream:
    """A stream of ``n_tasks`` tasks (None: endless)."""
    specs = iter_specs(seed, mix, cross_task) if n_tasks is None else stream_specs(seed, n_tasks, mix, cross_task)
    return TaskStream(seed, specs, **kw)


def expert_stream(seed: int, specs, cameras: tuple[str, ...] = ("top",)) -> EpisodeRecord:
    """Roll out the scripted expert over a stream: one record, task boundaries in ``task_starts``.

    ``events`` marks each task's first step (the task boundary the policy is told of)."""
    stream = TaskStream(seed, specs, cameras=cameras)
    images, states, actions, starts, instructions, names = [], [], [], [], [], []
    while not stream.done:
        step = stream.observe()
        if step.new_task:
            starts.append(len(actions))
            instructions.append(step.instruction)
            names.append(stream.task.name)
        action = stream.expert_action()
        images.append(step.image)
        states.append(step.joint_state)
        actions.append(action)
        stream.apply(action)
    events = np.zeros(len(actions), dtype=bool)
    events[starts] = True
    return EpisodeRecord(instruction=instructions[0], images=images, states=np.array(states),
                         actions=np.array(actions), events=events, success=all(stream.successes),
                         task="stream", seed=seed, task_starts=tuple(starts),
                         task_instructions=tuple(instructions), task_names=tuple(names))


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
