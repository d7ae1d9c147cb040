"""`aura-ros train`: gated training contexts, the runtime's exact token layout, a short run that
learns and loads, and the trained default's memory under the action gate vs a sliding window."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aura_ros.backends.transformers.loading import load_model, trained_default_available
from aura_ros.backends.transformers.policy import VLMPolicy
from aura_ros.backends.transformers.train import (
    TRAIN_INFO_FILE,
    ContextSampler,
    TrainConfig,
    _Encoder,
    action_logits,
    build_batch,
    gated_context,
    written_steps,
)
from aura_ros.backends.transformers.vocab import action_token_ids
from aura_ros.core.config import PolicyConfig
from aura_ros.core.types import Observation
from aura_ros.sim.tasks import EpisodeRecord, expert_episode, make_task


def test_gated_context_keeps_written_steps_and_the_recent_window():
    written = np.zeros(40, dtype=bool)
    written[[0, 3, 4, 37]] = True
    # Step 30 with a window of 8: the written steps before the window, then 22..30.
    assert gated_context(30, written, 8) == [0, 3, 4] + list(range(22, 31))
    assert gated_context(30, written, 8, extra_keep=[10, 25]) == [0, 3, 4, 10] + list(range(22, 31))
    assert gated_context(5, written, 8) == list(range(6))  # everything is still in the window


def test_the_gate_writes_the_cue_step_of_the_expert():
    ep = expert_episode("cue_recall", 3, 40)
    w = written_steps(ep.actions, ep.events, PolicyConfig())
    assert w[ep.cue_step] and w[ep.recall_start_step] and not w[ep.cue_step + 2: ep.recall_start_step].any()


def test_sampler_warm_up_frames_and_the_window_curriculum():
    """Single-frame contexts hold one step; a capped window keeps only written steps beyond it."""
    episodes = [expert_episode("cue_recall", seed, 30) for seed in range(3)]
    sampler = ContextSampler(episodes, PolicyConfig(), TrainConfig(novelty_keep_prob=0.0))
    rng = np.random.default_rng(0)
    windows = set()
    for _ in range(100):
        assert len(sampler.sample(rng, single_frame=True)[1]) == 1
        e, steps = sampler.sample(rng, max_window=1)
        t = steps[-1]
        assert all(s >= t - 1 for s in steps if not sampler.written[e][s])
        e, steps = sampler.sample(rng)
        windows.add(len([s for s in steps if not sampler.written[e][s]]))
    assert max(windows) > 2  # uncapped, the window reaches beyond the curriculum's first step


@pytest.fixture(scope="module")
def random_default(tmp_path_factory):
    """A random-weight model of the default architecture (the trainer's starting point)."""
    from aura_ros.backends.transformers import tiny_models
    from aura_ros.backends.transformers.loading import DEFAULT_ARCH

    return tiny_models.build_tiny_vlm(DEFAULT_ARCH, tmp_path_factory.mktemp("init"), seed=0)


@pytest.mark.parametrize("cameras", [("top",), ("top", "wrist")])
def test_training_sees_exactly_what_the_runtime_feeds(random_default, cameras):
    """The policy runs a task with the unbounded cache; the trainer encodes the same steps (the
    policy's own actions as labels) as one full context: the action logits agree, with one camera
    and with two (each step's frames in camera order)."""
    loaded = load_model(random_default)
    cfg = PolicyConfig(eviction="unbounded", n_cameras=len(cameras))
    ids = action_token_ids(loaded.tokenizer, cfg.n_bins)
    task = make_task("cue_recall", 1, 3, cameras=cameras)
    policy = VLMPolicy(loaded.model, loaded.processor, cfg, ids, task.instruction)
    images, states, actions, logits = [], [], [], []
    for _ in range(5):
        obs = task.observe()
        a = policy.step(Observation(obs.image, obs.joint_state))
        images.append(obs.image)
        states.append(obs.joint_state)
        actions.append(a.first)
        logits.append(a.logits)
        task.apply(a.first)
    rec = EpisodeRecord(task.instruction, images, np.array(states), np.array(actions), np.zeros(5, bool), False)
    batch = build_batch(loaded, _Encoder(loaded, cfg, ids), [(0, list(range(5)))], [rec], pad_id=0)
    with torch.no_grad():
        got = action_logits(loaded.model, batch, torch.tensor(ids))
    first_tokens = got[:: cfg.action_space().tokens_per_step]  # each step's first action token
    torch.testing.assert_close(first_tokens, torch.tensor(np.array(logits)), atol=2e-4, rtol=1e-4)
    expected_bins = cfg.action_space().to_bins(np.array(actions)).reshape(-1)
    assert got.argmax(-1).tolist() == expected_bins.tolist()


def test_short_training_run_lowers_the_loss_and_loads(random_default, tmp_path):
    from aura_ros.tools.cli import main

    out = tmp_path / "policy"
    rc = main(["train", "--out", str(out), "--model", str(random_default), "--steps", "8", "--streams", "2",
               "--max-distractor", "0", "--batch-size", "2", "--lr", "5e-3", "--log-every", "2",
               "--check-episodes", "1", "--no-progress"])
    assert rc == 0
    info = json.loads((out / TRAIN_INFO_FILE).read_text())
    losses = info["losses"]
    assert losses[-1] < losses[0]
    held_out = info["held_out"]["accuracy"]
    # One held-out stream of 4 tasks, no reset: its task types are scored apart.
    assert held_out and set(held_out) <= {"cue_recall", "latent_fact", "recall_previous"}
    assert info["held_out"]["tasks_per_stream"] == 4
    assert all(0.0 <= v <= 1.0 for kinds in held_out.values() for v in kinds.values())
    # The result loads like any model and drives a task through the policy.
    policy = VLMPolicy.from_pretrained(str(out), PolicyConfig(budget_bytes=2**20))
    task = make_task("cue_recall", 0, 2)
    for _ in range(3):
        obs = task.observe()
        action = policy.step(Observation(obs.image, obs.joint_state, instruction=task.instruction))
        task.apply(action.first)
    assert policy.step_index == 3


def test_two_camera_training_writes_the_params_the_node_runs_with(random_default, tmp_path):
    """`--cameras top,wrist`: the model takes two frames a step, and the params file beside it names
    the two camera topics, the joints and limits, as parameters the node declares and accepts."""
    import yaml

    from aura_ros.ros.params import POLICY_PARAMS
    from aura_ros.tools.cli import main

    out = tmp_path / "two"
    rc = main(["train", "--out", str(out), "--model", str(random_default), "--steps", "2", "--streams", "1",
               "--max-distractor", "0", "--batch-size", "2", "--cameras", "top,wrist", "--check-episodes", "0",
               "--no-progress"])
    assert rc == 0
    doc = yaml.safe_load((out / "aura_ros_policy.yaml").read_text())
    params = doc["/**"]["ros__parameters"]
    assert params["image.camera_topics"] == ["image", "wrist/image"]
    assert params["model.path"] == str(out.resolve())
    assert params["action.joint_names"] == ["shoulder", "elbow", "wrist", "gripper"]
    for name, value in params.items():
        assert name in POLICY_PARAMS.by_name and not POLICY_PARAMS.check(name, value), name
    robot = json.loads((out / TRAIN_INFO_FILE).read_text())["robot"]
    assert robot["cameras"] == ["image", "wrist/image"] and robot["source"] == "sim"
    policy = VLMPolicy.from_pretrained(str(out), PolicyConfig(n_cameras=2))
    task = make_task("cue_recall", 0, 2, cameras=("top", "wrist"))
    obs = task.observe()
    policy.step(Observation(obs.image, obs.joint_state))
    with pytest.raises(ValueError, match="1 camera frame; the policy takes 2"):
        policy.step(Observation(obs.image[0], obs.joint_state))


@pytest.mark.parametrize("argv,words", [
    (["--cameras", "top,side"], "cameras must be distinct views"),
    (["--bags", "x", "--lerobot", "y"], "two sources"),
    (["--low=-1,-1,-1"], "--low has 3 value(s) for 4 joints"),
    (["--low=-1,-1,-1,0.5", "--high=1,1,1,1"], "outside the limits given"),
    (["--discrete-joints", "claw"], "not among the joints"),
])
def test_a_bad_training_source_is_one_line_and_exit_2(tmp_path, capsys, argv, words):
    from aura_ros.tools.cli import main

    rc = main(["train", "--out", str(tmp_path / "x"), "--steps", "1", "--streams", "1", "--no-progress", *argv])
    printed = capsys.readouterr().out.strip()
    assert rc == 2 and words in printed and "\n" not in printed and "Traceback" not in printed


def test_bad_data_is_one_line_and_exit_2(tmp_path, capsys):
    """A dataset without its statistics and a bag without a camera: the reader's reason, one line."""
    import shutil
    from pathlib import Path

    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from aura_ros.tools.cli import main

    fixture = Path(__file__).resolve().parents[1] / "data" / "lerobot_v3_so101_tiny"
    broken = tmp_path / "no_stats"
    shutil.copytree(fixture, broken)
    (broken / "meta" / "stats.json").unlink()
    store = get_typestore(Stores.ROS2_JAZZY)
    bag = tmp_path / "no_camera"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conn = w.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=store)
        T = store.types
        for k in range(5):
            msg = T["sensor_msgs/msg/JointState"](
                header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=k, nanosec=0), frame_id=""),
                name=["a"], position=np.array([0.1 * k]), velocity=np.array([], dtype=np.float64),
                effort=np.array([], dtype=np.float64))
            w.write(conn, k * 10**9, store.serialize_cdr(msg, "sensor_msgs/msg/JointState"))
    for source, words in ((["--lerobot", str(broken)], "stats"), (["--bags", str(bag)], "camera")):
        rc = main(["train", "--out", str(tmp_path / "x"), "--steps", "1", "--no-progress", *source])
        printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("aura-ros train:")]
        assert rc == 2 and len(printed) == 1 and words in printed[0], (source, printed)


@pytest.mark.skipif(not trained_default_available(), reason="the trained default policy is not in this checkout")
def test_held_out_check_tells_a_trained_policy_from_a_random_one(random_default):
    """At cue_recall's decision steps (react to the cue, recall it) the shipped default acts as the
    expert does from the gated context; the untrained starting point does not."""
    from aura_ros.backends.transformers.train import decision_accuracy, held_out_episodes

    episodes = held_out_episodes(3, 12, tasks=(("cue_recall", 1.0),))
    trained = decision_accuracy(None, episodes)["cue_recall"]
    untrained = decision_accuracy(random_default, episodes)["cue_recall"]
    assert trained["decision"] == 1.0 and trained["steady"] == 1.0
    assert untrained["decision"] < 0.5


def test_training_is_deterministic_by_seed(random_default, tmp_path):
    from aura_ros.backends.transformers.train import train

    eps = [expert_episode("cue_recall", s, 1) for s in range(3)]
    cfg = TrainConfig(steps=3, batch_size=2, log_every=1, threads=1, single_frame_warmup_steps=1)  # both paths
    a = train(eps, tmp_path / "a", model=random_default, config=cfg, progress=False)
    b = train(eps, tmp_path / "b", model=random_default, config=cfg, progress=False)
    assert a.losses == b.losses


@pytest.mark.skipif(not trained_default_available(), reason="the trained default policy is not in this checkout")
def test_action_gate_keeps_the_cue_step_and_a_sliding_window_does_not():
    """The trained default on one cue_recall episode, D far beyond what the budget holds as a
    window: at the first recall step the gated cache still holds the cue step, the window not.
    The gate reads the trained policy's own actions (issue 16's closed-loop stream): it writes at
    most 1/7 of the steps."""
    loaded = load_model(None)
    ids = action_token_ids(loaded.tokenizer, 256)
    kept = {}
    for eviction in ("action_gate", "sliding_window"):
        task = make_task("cue_recall", 0, 60)
        cfg = PolicyConfig(eviction=eviction, budget_bytes=384 * 1024)
        policy = VLMPolicy(loaded.model, loaded.processor, cfg, ids, task.instruction)
        writes = 0
        while task.step_index < task.recall_start_step:
            obs = task.observe()
            out = policy.step(Observation(obs.image, obs.joint_state))
            writes += int(out.gate.written)
            task.apply(out.first)
        if eviction == "action_gate":
            assert 0 < writes <= task.recall_start_step / 7, writes
        steps = [row[0] for row in policy.memory_map() if row[0] >= 0]
        assert max(steps) == task.recall_start_step - 1
        assert steps[0] > task.cue_step or eviction == "action_gate"  # the budget is tight for a window
        kept[eviction] = task.cue_step in steps
    assert kept == {"action_gate": True, "sliding_window": False}
