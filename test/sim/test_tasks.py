"""The memory tasks: deterministic by seed, the expert always succeeds, guessing sits at chance."""
from __future__ import annotations

import numpy as np
import pytest

from aura_ros.core import arm
from aura_ros.core.actions import ActionSpace
from aura_ros.memory.gate import ActionGate
from aura_ros.sim.tasks import N_BINS, TASKS, EpisodeRecord, TaskStep, expert_episode, make_task, over_bin

SPACE = ActionSpace(arm.JOINT_NAMES, np.array(arm.LOW), np.array(arm.HIGH))


@pytest.mark.parametrize("name", sorted(TASKS))
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


@pytest.mark.parametrize("name", sorted(TASKS))
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
