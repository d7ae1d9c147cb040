"""From a teleoperated robot to training data, over real DDS: the sim node in expert mode (its own
teleoperator, two cameras) and `aura-ros record` as separate processes, the bag read back with
read_bags. The episode record must be the in-process expert_stream's exactly: every frame bitwise,
the states, the actions, the task boundaries and instructions. Nothing lost, nothing doubled:
the recorder subscribes reliably to the reliable publishers, and the sim starts only once the
recorder's subscriptions are matched (wait_for_subscribers)."""
from __future__ import annotations

import signal
import time
import uuid

import numpy as np
import pytest
import yaml
from helpers.ros_proc import PythonRunner
from rosbags.highlevel import AnyReader

from aura_ros.data.bags import read_bags
from aura_ros.ros.env import local_ros_env
from aura_ros.sim.tasks import expert_stream, stream_specs

RUN_SIM = "from aura_ros.ros.sim_node import main; main()"
# `aura-ros record` without loading the other commands (the CLI imports torch to build its parser).
RUN_RECORD = "import sys; from aura_ros.tools.record import main; sys.exit(main(sys.argv[1:]))"
SEED, DISTRACTORS, TASKS, RATE_HZ = 7, 3, 3, 20.0
TIMEOUT_S = 45.0


def test_a_recorded_expert_stream_reads_back_as_the_expert_stream(tmp_path):
    ns = f"/aura_rec_{uuid.uuid4().hex[:10]}"
    runner = PythonRunner(env=local_ros_env(), cwd=tmp_path)
    topics = {k: f"{ns}/{v}" for k, v in (("top", "image"), ("wrist", "wrist/image"), ("joints", "joint_states"),
                                          ("commands", "joint_trajectory"), ("instruction", "instruction"),
                                          ("result", "task/result"))}
    bag = tmp_path / "demo_bag"
    t0 = time.monotonic()
    with runner.spawn(RUN_RECORD, "--out", str(bag), "--topics", *topics.values(), "--until-results",
                      str(TASKS), "--results-topic", topics["result"], name="recorder") as recorder, \
         runner.spawn(RUN_SIM, "--ros-args", "-r", f"__ns:={ns}", "-p", "task:=cue_recall",
                      "-p", f"task_distractors:={DISTRACTORS}", "-p", f"seed:={SEED}", "-p", f"rate_hz:={RATE_HZ}",
                      "-p", "task_expert:=true", "-p", "cameras:=[top, wrist]", "-p", "wait_for_subscribers:=1",
                      name="sim") as sim:
        code = recorder.wait(TIMEOUT_S)
        assert code == 0, f"recorder exited {code}:\n{recorder.output()}\nsim:\n{sim.output()}"
        assert sim.alive(), sim.output()
        assert sim.interrupt() == 0, sim.output()
    seconds = time.monotonic() - t0
    assert "Traceback" not in recorder.output() + sim.output()

    lines: list[str] = []
    demos = read_bags([bag], cameras=[topics["top"], topics["wrist"]], joint_states=topics["joints"],
                      commands=topics["commands"], instruction_topic=topics["instruction"], log=lines.append)
    expected = expert_stream(SEED, stream_specs(SEED, TASKS, (("cue_recall", DISTRACTORS),)), cameras=("top", "wrist"))
    (rec,) = demos.episodes
    n = len(expected.actions)
    assert len(rec.images) == len(rec.actions) == n, (len(rec.actions), n, lines, recorder.output())
    for k in range(n):
        assert isinstance(rec.images[k], tuple) and len(rec.images[k]) == 2
        assert np.array_equal(rec.images[k][0], expected.images[k][0]), f"top frame of step {k}"
        assert np.array_equal(rec.images[k][1], expected.images[k][1]), f"wrist frame of step {k}"
    assert np.array_equal(rec.states, expected.states)
    assert np.array_equal(rec.actions, expected.actions)
    assert np.array_equal(rec.events, expected.events)
    assert rec.task_starts == expected.task_starts
    assert rec.task_instructions == expected.task_instructions and rec.instruction == expected.instruction
    assert demos.joint_names == ("shoulder", "elbow", "wrist", "gripper")
    assert demos.cameras == (topics["top"], topics["wrist"])
    assert RATE_HZ * 0.5 < demos.fps < RATE_HZ * 1.5
    # The defaults find the same topics in the sim's namespace.
    default = read_bags([bag], log=lambda _line: None)
    assert default.cameras == demos.cameras and default.episodes[0].task_starts == rec.task_starts

    # The bag itself: rosbag2 MCAP (storage version 9), one message per step on each stream
    # topic, the instruction of each task, the results, and not a message more.
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 9 and meta["storage_identifier"] == "mcap"
    counts = {t["topic_metadata"]["name"]: t["message_count"] for t in meta["topics_with_message_count"]}
    assert counts == {topics["top"]: n, topics["wrist"]: n, topics["joints"]: n, topics["commands"]: n,
                      topics["instruction"]: TASKS, topics["result"]: TASKS}, counts
    print(f"recorded {n} steps of {TASKS} tasks over DDS and read them back in {seconds:.1f} s")

    # Training from the bag is training on the sim's own episodes: a short run from each (the
    # same recipe, the sim arm's limits) gives the same weights, byte for byte.
    from aura_ros.tools.cli import main

    recipe = ["--steps", "3", "--batch-size", "2", "--low=-3.14,-2.5,-3.14,0.0", "--high=3.14,2.5,3.14,1.0",
              "--discrete-joints", "gripper", "--check-episodes", "0", "--no-progress"]
    assert main(["train", "--out", str(tmp_path / "from_bag"), "--bags", str(bag), *recipe]) == 0
    assert main(["train", "--out", str(tmp_path / "in_process"), "--cameras", "top,wrist", "--streams", "1",
                 "--mix", f"cue_recall:{DISTRACTORS}", "--tasks-per-stream", str(TASKS), "--sim-seed", str(SEED),
                 "--cross-task", "0", *recipe]) == 0
    weights = [(tmp_path / d / "model.safetensors").read_bytes() for d in ("from_bag", "in_process")]
    assert weights[0] == weights[1]
    params = yaml.safe_load((tmp_path / "from_bag" / "aura_ros_policy.yaml").read_text())["/**"]["ros__parameters"]
    assert params["image.camera_topics"] == [topics["top"], topics["wrist"]]


@pytest.mark.parametrize("signals", [(signal.SIGINT,), (signal.SIGINT, signal.SIGINT), (signal.SIGTERM,)],
                         ids=["sigint", "sigint twice", "sigterm"])
def test_the_recorder_stops_on_a_signal_with_the_bag_closed(tmp_path, signals):
    ns = f"/aura_rec_sig_{uuid.uuid4().hex[:10]}"
    runner = PythonRunner(env=local_ros_env(), cwd=tmp_path)
    bag = tmp_path / "bag"
    with runner.spawn(RUN_SIM, "--ros-args", "-r", f"__ns:={ns}", "-p", "rate_hz:=30.0", name="sim") as sim, \
         runner.spawn(RUN_RECORD, "--out", str(bag), "--topics", f"{ns}/image", f"{ns}/joint_states",
                      f"{ns}/never_published", name="recorder") as recorder:
        deadline = time.monotonic() + TIMEOUT_S
        while f"record: {ns}/joint_states" not in recorder.output():
            assert recorder.alive() and time.monotonic() < deadline, recorder.output() + sim.output()
            time.sleep(0.05)
        time.sleep(1.0)
        for sig in signals:
            recorder.proc.send_signal(sig)
            time.sleep(0.05)
        assert recorder.wait(TIMEOUT_S) == 0, recorder.output()
    out = recorder.output()
    assert "Traceback" not in out and "never published: " + f"{ns}/never_published" in out, out
    with AnyReader([bag]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert counts[f"{ns}/image"] >= 5 and counts[f"{ns}/joint_states"] >= 5, counts
        stamps = [t for _, t, _ in reader.messages()]
        assert stamps == sorted(stamps) and len(stamps) == sum(counts.values())
