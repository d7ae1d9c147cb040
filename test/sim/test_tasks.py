"""The memory tasks: deterministic by seed, the expert always succeeds, guessing sits at chance."""
from __future__ import annotations

import numpy as np
import pytest

from aura_ros.core import arm
from aura_ros.core.actions import ActionSpace
from aura_ros.memory.gate import ActionGate
from aura_ros.sim.tasks import EPISODE_TASKS, N_BINS, EpisodeRecord, TaskStep, expert_episode, make_task, over_bin

SPACE = ActionSpace(arm.JOINT_NAMES, np.array(arm.LOW), np.array(arm.HIGH))


@pytest.mark.parametrize("name", sorted(EPISODE_TASKS))
@pytest.mark.parametrize("distractor_steps", [0, 3, 8, 30, 120])
def test_expert_succeeds_on_fixed_seeds(name, distractor_steps):
    for seed in range(4):
        ep = expert_episode(name, seed, distractor_steps)
        assert isinstance(ep, EpisodeRecord) and ep.success, (name, seed, distractor_steps)
        T = len(ep.images)
        assert ep.states.shape == (T, 4) and ep.actions.shape == (T, 4) and ep.events.shape == (T,)
        assert ep.images[0].dtype == np.uint8 and ep.images[0].ndim == 3 and ep.images[0].shape[2] == 3
        assert T == ep.recall_start_step + 2 and ep.recall_start_step == ep.cue_step + 1 + distractor_steps


def test_task_api_and_determinism():
    a, b = make_task("cue_recall", 5, 12), make_task("cue_recall", 5, 12)
    assert a.n_choices == N_BINS and a.instruction and a.total_steps == a.recall_start_step + 2
    while not a.done:
        sa, sb = a.observe(), b.observe()
        assert isinstance(sa, TaskStep) and sa.joint_state.shape == (4,)
        np.testing.assert_array_equal(sa.image, sb.image)
        np.testing.assert_array_equal(a.expert_action(), b.expert_action())
        assert a.success is None
        a.apply(a.expert_action())
        b.apply(b.expert_action())
    assert a.success is True and a.step_index == a.total_steps
    with pytest.raises(RuntimeError):
        a.apply(a.expert_action())
    # Different seeds: different cued bins across a handful of episodes.
    assert len({make_task("cue_recall", s, 5).target for s in range(30)}) == N_BINS


def test_expert_actions_are_exact_action_bins():
    ep = expert_episode("cue_recall", 1, 10)
    np.testing.assert_allclose(SPACE.from_bins(SPACE.to_bins(ep.actions)), ep.actions)


def test_cue_is_visible_only_at_the_cue_step_and_recall_is_signalled():
    task = make_task("cue_recall", 2, 20)
    frames = []
    while not task.done:
        frames.append(task.observe().image.astype(int))
        task.apply(task.expert_action())
    cue, recall = task.cue_step, task.recall_start_step
    # The light changes the frame at the cue step; the go light is on from the recall step on.
    assert np.abs(frames[cue] - frames[cue - 1]).sum() > 0
    assert np.abs(frames[recall] - frames[recall - 1]).sum() > np.abs(frames[recall - 1] - frames[recall - 2]).sum()


@pytest.mark.parametrize("name,reacts", [("cue_recall", True), ("latent_fact", False)])
def test_action_gate_writes_the_cue_step_only_when_the_expert_reacts(name, reacts):
    ep = expert_episode(name, 4, 50)
    gate = ActionGate(SPACE.low, SPACE.high, np.array([False, False, False, True]))
    written = [gate.update(a).written for a in ep.actions]
    assert written[ep.cue_step] is reacts
    # The distractor stretch is steady: nothing written there.
    assert not any(written[ep.cue_step + 2: ep.recall_start_step])
    assert written[ep.recall_start_step]
    if reacts:  # the recall step acts exactly as the cue step did: the memory to copy from
        np.testing.assert_array_equal(ep.actions[ep.cue_step], ep.actions[ep.recall_start_step])


def run_policy(task, choose) -> bool:
    while not task.done:
        task.apply(choose(task, task.observe()))
    return bool(task.success)


@pytest.mark.parametrize("name", sorted(EPISODE_TASKS))
def test_random_policies_sit_near_chance(name):
    rng = np.random.default_rng(0)
    n = 60
    # Uniformly random joint targets: hardly ever drops the block into the right bin.
    uniform = np.mean([run_policy(make_task(name, s, 6), lambda t, o: rng.uniform(arm.LOW, arm.HIGH))
                       for s in range(n)])
    assert uniform <= 1 / N_BINS + 0.1

    # The expert's moves, but a guessed bin (what a policy that forgot the cue can do): chance.
    def guess(task, obs):
        if task.step_index < task.recall_start_step:
            return task.expert_action()
        k = (task.seed * 7 + 1) % N_BINS  # a fixed guess per episode, blind to the cue
        return over_bin(k, open_gripper=task.step_index > task.recall_start_step)

    guessed = np.mean([run_policy(make_task(name, s, 6), guess) for s in range(n)])
    assert abs(guessed - 1 / N_BINS) < 0.15


def test_long_distractor_is_cheap_and_bad_arguments_are_refused():
    ep = expert_episode("latent_fact", 0, 600)
    assert ep.success and len(ep.images) == ep.recall_start_step + 2
    with pytest.raises(ValueError, match="unknown task"):
        make_task("nope", 0, 5)
    with pytest.raises(ValueError):
        make_task("cue_recall", 0, -1)


# ---------------------------------------------------------------------- streams: tasks back to back
def test_the_expert_succeeds_on_every_task_of_a_stream_with_no_reset():
    from aura_ros.sim.tasks import expert_stream, stream_specs

    specs = stream_specs(3, 8, mix=(("cue_recall", 6), ("latent_fact", 4)), cross_task=0.4)
    assert "recall_previous" in {n for n, _ in specs} and specs[0][0] != "recall_previous"
    rec = expert_stream(3, specs)
    assert rec.success and len(rec.task_starts) == 8 and rec.task_names == tuple(n for n, _ in specs)
    assert rec.events.sum() == 8 and all(rec.events[s] for s in rec.task_starts)
    # Every task's first step is the boundary; instruction_at follows the task.
    for i, s in enumerate(rec.task_starts):
        assert rec.task_at(s) == i and rec.instruction_at(s) == rec.task_instructions[i]


def test_a_stream_continues_on_one_scene_and_hands_over_a_new_block():
    from aura_ros.sim.tasks import make_stream

    stream = make_stream(0, 3, mix=(("cue_recall", 2),))
    scene = stream.task.scene
    firsts = []
    while not stream.done:
        step = stream.observe()
        if step.new_task:
            firsts.append(stream.index)
            assert stream.task.scene is scene  # one scene: the arm is where the last task left it
            assert [o.name for o in scene.objects if o.shape != "bin"] == ["block"]  # the old block is gone
            assert step.instruction == stream.task.instruction
        stream.apply(stream.expert_action())
    assert firsts == [0, 1, 2] and stream.successes == [True, True, True]


def test_streams_are_deterministic_by_seed():
    from aura_ros.sim.tasks import expert_stream, stream_specs

    a = expert_stream(5, stream_specs(5, 4, cross_task=0.5, mix=(("cue_recall", 3),)))
    b = expert_stream(5, stream_specs(5, 4, cross_task=0.5, mix=(("cue_recall", 3),)))
    assert np.array_equal(a.actions, b.actions) and all(np.array_equal(x, y) for x, y in zip(a.images, b.images))


def test_recall_previous_needs_the_task_before_and_an_emptied_memory_cannot_know_its_bin():
    from aura_ros.sim.tasks import TaskStream

    with pytest.raises(ValueError, match="previous"):
        make_task("recall_previous", 0, 5)
    with pytest.raises(ValueError, match="cannot start"):
        TaskStream(0, [("recall_previous", 3), ("cue_recall", 3)])
    # Its bin is the one that lit up in the task before, and nothing in its own frames shows it.
    for seed in range(6):
        stream = TaskStream(seed, [("cue_recall", 2), ("recall_previous", 4)])
        first_target = stream.task.target
        while stream.index == 0:
            stream.apply(stream.expert_action())
        assert stream.task.target == first_target
        frames = []
        while not stream.done:
            frames.append(stream.observe().image)
            stream.apply(stream.expert_action())
        from aura_ros.sim.scene import COLORS
        from aura_ros.sim.tasks import LIGHT_COLOR

        blue = np.array(COLORS[LIGHT_COLOR])
        assert not any(np.any(np.all(f == blue, axis=-1)) for f in frames)
