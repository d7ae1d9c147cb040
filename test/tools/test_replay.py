"""`aura-ros replay`: real rosbag2 recordings (written here with rosbags) through the policy seam."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from bag_helpers import make_recording, write_bag
from rosbags.highlevel import AnyReader

from aura_ros.core import topics
from aura_ros.core.config import PolicyConfig
from aura_ros.core.registry import make_policy
from aura_ros.core.types import Observation
from aura_ros.tools.cli import main
from aura_ros.tools.replay import BagError, compare, comparison_table, iter_ticks, make_typestore, read_topics, replay

BUDGET = 128 * 1024  # small: evictions within a few steps
INSTRUCTION = "pick up the red block"


@pytest.fixture(scope="module")
def rec():
    return make_recording(n_frames=8)


def direct_commands(frames, joints_at_frames, config=None) -> np.ndarray:
    """What stepping the policy on the same inputs gives, without any bag."""
    policy = make_policy(None, config or PolicyConfig(budget_bytes=BUDGET), instruction=INSTRUCTION)
    return np.array([policy.step(Observation(f, j)).first for f, j in zip(frames, joints_at_frames)])


def joints_at(rec, times):
    """The newest recorded joint state at or before each time (what the node holds)."""
    out = []
    for t in times:
        i = max(k for k, tj in enumerate(rec.joint_times) if tj <= t)
        out.append(rec.joints[i])
    return out


@pytest.mark.parametrize("camera,storage,rmw_joints", [("raw", "mcap", False), ("compressed", "sqlite3", True)])
def test_replay_gives_the_commands_of_direct_stepping(tmp_path, rec, camera, storage, rmw_joints):
    bag = write_bag(tmp_path / "in", rec, camera=camera, storage=storage, rmw_joints=rmw_joints)
    result = replay(bag, tmp_path / "out", PolicyConfig(budget_bytes=BUDGET), instruction=INSTRUCTION, progress=False)
    assert result.steps == len(rec.frames) and result.stamps_ns == rec.frame_times
    # PNG is lossless, so both camera kinds give the policy exactly the recorded frames.
    expected = direct_commands(rec.frames, joints_at(rec, rec.frame_times))
    np.testing.assert_array_equal(result.commands, expected)
    assert result.evictions_total > 0 and result.command_error is not None

    counts = read_topics(result.out)
    image_topic = topics.IMAGE if camera == "raw" else topics.IMAGE_COMPRESSED
    for topic in (image_topic, topics.JOINT_STATES, topics.COMMANDS["joint_trajectory"], topics.MEMORY,
                  topics.GATE_STATS):
        assert counts[topic] == len(rec.frames), (topic, counts)
    assert counts[topics.MEMORY_MAP] >= 1 and counts[topics.DIAGNOSTICS] >= 1


def test_two_cameras_replay_as_direct_stepping_with_both_frames(tmp_path, rec):
    """A second camera (its frames 2 ms before the first camera's, the first one missing): each
    step gets the first camera's frame and the newest of the second; steps before the second
    camera has sent anything are skipped and counted, and its frames reach the output bag."""
    wrist = [(t - 2_000_000, np.ascontiguousarray(f[::-1])) for t, f in zip(rec.frame_times, rec.frames)][1:]
    bag = write_bag(tmp_path / "in", rec, more_cameras={"/wrist/image": wrist})
    result = replay(bag, tmp_path / "out", PolicyConfig(budget_bytes=4 * BUDGET), instruction=INSTRUCTION,
                    progress=False, more_cameras=("/wrist/image",))
    assert result.steps == len(rec.frames) - 1 and result.stamps_ns == rec.frame_times[1:]
    assert len(result.dropped) == 1 and "before every camera had sent one" in result.dropped[0]
    pairs = [(f, w) for f, (_, w) in zip(rec.frames[1:], wrist)]
    expected = direct_commands(pairs, joints_at(rec, rec.frame_times[1:]),
                               PolicyConfig(budget_bytes=4 * BUDGET, n_cameras=2))
    np.testing.assert_array_equal(result.commands, expected)
    assert read_topics(result.out)["/wrist/image"] == result.steps


def test_output_bag_reads_back_at_the_recorded_times(tmp_path, rec):
    bag = next(write_bag(tmp_path / "in", rec, camera="raw").glob("*.mcap"))  # a bare .mcap file works as well
    result = replay(bag, tmp_path / "out", PolicyConfig(budget_bytes=BUDGET), instruction=INSTRUCTION, progress=False)
    with AnyReader([result.out], default_typestore=make_typestore()) as reader:
        seen: dict[str, list] = {}
        for conn, t, raw in reader.messages():
            seen.setdefault(conn.topic, []).append((t, reader.deserialize(raw, conn.msgtype)))
    memory = seen[topics.MEMORY]
    assert [t for t, _ in memory] == rec.frame_times
    assert [m.step for _, m in memory] == list(range(len(rec.frames)))
    assert all(m.used_bytes <= m.allocated_bytes <= m.budget_bytes == BUDGET for _, m in memory)
    assert memory[0][1].header.stamp.sec == rec.frame_times[0] // 10**9
    gate = [m for _, m in seen[topics.GATE_STATS]]
    assert gate[-1].evictions_total == result.evictions_total and gate[-1].writes_total == result.writes_total
    cmds = np.array([m.points[0].positions for _, m in seen[topics.COMMANDS["joint_trajectory"]]])
    np.testing.assert_allclose(cmds, result.commands)
    t_map, mm = seen[topics.MEMORY_MAP][-1]
    assert t_map == rec.frame_times[-1] and mm.encoding == "rgb8" and mm.width == 640 and mm.height == 160
    assert np.asarray(mm.data).size == mm.step * mm.height
    _, diag = seen[topics.DIAGNOSTICS][0]
    assert diag.status[0].name == f"aura_ros: {topics.NODE_NAME}"
    frame0 = seen[topics.IMAGE][0][1]
    np.testing.assert_array_equal(np.asarray(frame0.data).reshape(frame0.height, frame0.width, 3), rec.frames[0])


def test_replay_is_deterministic_and_rate_mode_steps_on_a_grid(tmp_path, rec):
    bag = write_bag(tmp_path / "in", rec, camera="raw", commands=False)
    a = replay(bag, None, PolicyConfig(budget_bytes=BUDGET), instruction=INSTRUCTION, progress=False)
    b = replay(bag, None, PolicyConfig(budget_bytes=BUDGET), instruction=INSTRUCTION, progress=False)
    np.testing.assert_array_equal(a.commands, b.commands)
    assert a.command_error is None  # no recorded commands
    slow = replay(bag, None, PolicyConfig(budget_bytes=BUDGET), instruction=INSTRUCTION, rate_hz=5.0, progress=False)
    period = 200_000_000
    assert slow.stamps_ns == list(range(rec.frame_times[0], rec.frame_times[-1] + 1, period))


def test_comparison_of_eviction_policies(tmp_path, rec):
    bag = write_bag(tmp_path / "in", rec, camera="compressed")
    variants = [(e, PolicyConfig(budget_bytes=BUDGET, eviction=e)) for e in ("action_gate", "sliding_window")]
    results = compare(bag, variants, tmp_path / "cmp", instruction=INSTRUCTION, progress=False)
    assert [r.name for r in results] == ["action_gate", "sliding_window"]
    assert all((tmp_path / "cmp" / r.name).is_dir() for r in results)
    table = comparison_table(results)
    assert "cmd MAE vs recorded" in table and "| action_gate | 8 |" in table and "| sliding_window | 8 |" in table


def test_truncated_bag_is_a_clear_error(tmp_path, rec):
    bag = next(write_bag(tmp_path / "in", rec, camera="raw").glob("*.mcap"))
    data = bag.read_bytes()
    bag.write_bytes(data[: len(data) // 2])
    with pytest.raises(BagError, match="truncated or corrupt"):
        replay(bag, tmp_path / "out", PolicyConfig(budget_bytes=BUDGET), progress=False)
    assert not (tmp_path / "out").exists()


def test_truncated_sqlite_bag_is_a_clear_error(tmp_path, rec):
    folder = write_bag(tmp_path / "in", rec, camera="raw", storage="sqlite3")
    db = next(folder.glob("*.db3"))
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])
    with pytest.raises(BagError, match="truncated or corrupt"):
        replay(folder, None, PolicyConfig(budget_bytes=BUDGET), progress=False)


def test_bag_without_camera_topic_is_a_clear_error(tmp_path, rec):
    bag = write_bag(tmp_path / "in", rec, camera=None)
    with pytest.raises(BagError, match=r"no camera topic .*/joint_states \(sensor_msgs/msg/JointState\)"):
        replay(bag, None, PolicyConfig(budget_bytes=BUDGET), progress=False)
    bag2 = write_bag(tmp_path / "in2", rec, camera="raw")
    with pytest.raises(BagError, match="no camera topic '/front/image'"):
        replay(bag2, None, PolicyConfig(budget_bytes=BUDGET), camera_topic="/front/image", progress=False)
    with pytest.raises(BagError, match="camera topic '/joint_states' is sensor_msgs/msg/JointState"):
        replay(bag2, None, PolicyConfig(budget_bytes=BUDGET), camera_topic="/joint_states", progress=False)
    with pytest.raises(BagError, match="no such bag"):
        replay(tmp_path / "nope", None, PolicyConfig(budget_bytes=BUDGET), progress=False)


def test_cli_replay_prints_a_table_and_bad_bags_exit_2(tmp_path, rec, capsys):
    bag = write_bag(tmp_path / "in", rec, camera="raw")
    assert main(["replay", str(bag), "--budget-mb", "0.125,0.25", "--out", str(tmp_path / "o"),
                 "--instruction", INSTRUCTION, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| budget_0.125MB |" in out and "| budget_0.25MB |" in out and "cmd MAE" in out
    assert (tmp_path / "o" / "budget_0.125MB").is_dir()
    # Same output folder again: refused unless --overwrite.
    assert main(["replay", str(bag), "--out", str(tmp_path / "o1"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["replay", str(bag), "--out", str(tmp_path / "o1"), "--no-progress"]) == 2
    assert "exists" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "o1")

    no_cam = write_bag(tmp_path / "nocam", rec, camera=None)
    assert main(["replay", str(no_cam), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("aura-ros replay: error: ") and "Traceback" not in err


def test_output_mcap_decodes_with_a_third_party_ros2_decoder(tmp_path, rec):
    """What Foxglove does with a ROS 2 MCAP: decode each message with the schema the file embeds
    (mcap + mcap-ros2-support, not rosbags), so a wrong embedded definition would show here."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    bag = write_bag(tmp_path / "in", rec, camera="raw")
    result = replay(bag, tmp_path / "out", PolicyConfig(budget_bytes=BUDGET), instruction=INSTRUCTION, progress=False)
    (mcap_file,) = result.out.glob("*.mcap")
    decoded: dict[str, list] = {}
    with mcap_file.open("rb") as f:
        for schema, channel, _, msg in make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages():
            decoded.setdefault(channel.topic, []).append((schema.name, msg))
    assert set(decoded) == {topics.IMAGE, topics.JOINT_STATES, topics.COMMANDS["joint_trajectory"], topics.MEMORY,
                            topics.GATE_STATS, topics.MEMORY_MAP, topics.DIAGNOSTICS}
    name, memory = decoded[topics.MEMORY][-1]
    assert name == "aura_ros/msg/MemoryBudget" and memory.step == len(rec.frames) - 1
    assert 0 < memory.used_bytes <= memory.budget_bytes == BUDGET
    _, gate = decoded[topics.GATE_STATS][-1]
    assert gate.evictions_total == result.evictions_total
    _, mm = decoded[topics.MEMORY_MAP][-1]
    assert (mm.width, mm.height, mm.encoding, len(mm.data)) == (640, 160, "rgb8", 640 * 160 * 3)


def test_cli_replay_with_the_robots_joint_names(tmp_path, rec, capsys):
    """A robot's own joints (here the recording's extra head_pan as a fifth joint) from the command line."""
    bag = write_bag(tmp_path / "in", rec, camera="raw", commands=False)
    names = ",".join(rec.joint_names + ("head_pan",))
    assert main(["replay", str(bag), "--out", str(tmp_path / "o"), "--no-progress", "--max-steps", "3",
                 "--joint-names", names, "--low=-3,-2.5,-3,0,-1", "--high=3,2.5,3,1,1"]) == 0
    capsys.readouterr()
    with AnyReader([tmp_path / "o"], default_typestore=make_typestore()) as reader:
        conns = [c for c in reader.connections if c.topic == topics.COMMANDS["joint_trajectory"]]
        cmds = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages(connections=conns)]
    assert len(cmds) == 3 and list(cmds[0].joint_names) == names.split(",") and len(cmds[0].points[0].positions) == 5
    assert main(["replay", str(bag), "--joint-names", names, "--low", "0", "--high", "1", "--no-progress"]) == 2
    assert "--low and --high need one limit each" in capsys.readouterr().err


def _ticks(bag, rec, **kwargs):
    return list(iter_ticks(bag, rec.joint_names, **kwargs))


def test_replay_of_a_replay_pairs_the_same_frames_with_the_same_joint_states(tmp_path, rec):
    """The output writes each frame and its joint state at one stamp: read back, every frame still
    has its own joint state (and the instruction it came with), so the round trip is lossless."""
    said = (rec.frame_times[2] - 100, "put the block in the bin")
    bag = write_bag(tmp_path / "in", rec, camera="raw", commands=False, instructions=[said])
    first = replay(bag, tmp_path / "out1", PolicyConfig(budget_bytes=BUDGET), instruction=INSTRUCTION, progress=False)
    second = replay(first.out, tmp_path / "out2", PolicyConfig(budget_bytes=BUDGET), instruction=INSTRUCTION,
                    progress=False)
    original, again = _ticks(bag, rec), _ticks(first.out, rec)
    assert [t.t_ns for t in again] == [t.t_ns for t in original] == rec.frame_times
    for a, b in zip(original, again):
        np.testing.assert_array_equal(b.joints, a.joints)
        np.testing.assert_array_equal(b.image, a.image)
        assert b.instruction == a.instruction
    assert [t.instruction for t in again].count(said[1]) == 1
    assert second.stamps_ns == first.stamps_ns and not second.dropped
    np.testing.assert_array_equal(second.commands, first.commands)


def test_a_frame_pairs_with_the_joint_state_of_its_own_stamp_whichever_was_written_first(tmp_path, rec):
    from bag_helpers import STORE, image_msg, joint_msg
    from rosbags.rosbag2 import StoragePlugin, Writer

    path = tmp_path / "same_stamp"
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        cam = w.add_connection("/image", "sensor_msgs/msg/Image", typestore=STORE)
        js = w.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=STORE)
        for k, (t, frame, pos) in enumerate(zip(rec.frame_times[:3], rec.frames, rec.joints)):
            msgs = [(cam, "sensor_msgs/msg/Image", image_msg(frame, t)),
                    (js, "sensor_msgs/msg/JointState", joint_msg(pos, rec.joint_names, t))]
            for conn, typ, msg in (msgs if k % 2 == 0 else msgs[::-1]):  # image first, then joints first
                w.write(conn, t, STORE.serialize_cdr(msg, typ))
    ticks = _ticks(path, rec)
    assert [t.t_ns for t in ticks] == rec.frame_times[:3]
    for tick, pos in zip(ticks, rec.joints):
        np.testing.assert_array_equal(tick.joints, pos)


@pytest.mark.parametrize("kind", ["folder", "folder_with_mcap", "foxglove_mcap"])
def test_what_is_not_a_ros2_bag_is_named_not_called_corrupt(tmp_path, rec, kind, capsys):
    from aura_ros.tools.foxglove_live import LiveView

    if kind == "folder":
        path = tmp_path / "photos"
        path.mkdir()
        (path / "notes.txt").write_text("not a bag")
        expected = "a folder without metadata.yaml and without .mcap or .db3 files: not a rosbag2 bag"
    elif kind == "folder_with_mcap":  # a recording stopped before rosbag2 wrote metadata.yaml
        path = write_bag(tmp_path / "in", rec, camera="raw")
        (path / "metadata.yaml").unlink()
        expected = "a folder without metadata.yaml, so not a rosbag2 bag; it holds in.mcap: pass that file instead"
    else:  # what `aura-ros foxglove --mcap` and the demo record: intact, but Foxglove's own messages
        path = tmp_path / "demo.mcap"
        with LiveView(port=None, mcap_path=path) as view:
            view.log_step(rec.frames[0], None, diagnostics={"step": "0"}, t_ns=rec.frame_times[0])
        expected = "an MCAP file but not ROS 2 (profile '', written by Foxglove SDK, messages encoded json, protobuf)"
    with pytest.raises(BagError) as info:
        replay(path, None, PolicyConfig(budget_bytes=BUDGET), progress=False)
    assert expected in str(info.value) and "truncated" not in str(info.value)
    assert main(["replay", str(path), "--no-progress", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err


def test_a_camera_only_bag_says_what_to_do_and_replays_with_zero_joints(tmp_path, rec, capsys):
    bag = write_bag(tmp_path / "in", rec, camera="raw", joints=False)
    with pytest.raises(BagError, match="no joint states .* pass --zero-joints"):
        replay(bag, None, PolicyConfig(budget_bytes=BUDGET), progress=False)
    assert main(["replay", str(bag), "--no-progress", "--out", str(tmp_path / "o0")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--zero-joints" in err and not (tmp_path / "o0").exists()

    assert main(["replay", str(bag), "--no-progress", "--zero-joints", "--out", str(tmp_path / "o"),
                 "--instruction", INSTRUCTION, "--budget-mb", str(BUDGET / 2**20)]) == 0
    cap = capsys.readouterr()
    assert "warning: --zero-joints" in cap.err and "joint states none" in cap.out
    zeros = [np.zeros(len(rec.joint_names))] * len(rec.frames)
    with AnyReader([tmp_path / "o"], default_typestore=make_typestore()) as reader:
        conns = {c.topic: c for c in reader.connections}
        states = [reader.deserialize(raw, c.msgtype)
                  for c, _, raw in reader.messages(connections=[conns[topics.JOINT_STATES]])]
        cmds = [reader.deserialize(raw, c.msgtype).points[0].positions
                for c, _, raw in reader.messages(connections=[conns[topics.COMMANDS["joint_trajectory"]]])]
    assert len(states) == len(rec.frames) and all(list(s.name) == list(rec.joint_names) for s in states)
    assert all(np.all(np.asarray(s.position) == 0) for s in states)
    np.testing.assert_allclose(np.array(cmds), direct_commands(rec.frames, zeros))


def test_cli_replay_help_defaults_and_the_topics_it_chose(tmp_path, rec, capsys):
    from aura_ros.ros.params import POLICY_PARAMS

    node_budget = POLICY_PARAMS.by_name["memory.vram_budget_mb"].default
    with pytest.raises(SystemExit) as done:
        main(["replay", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {node_budget:g})" in text and "(default: action_gate)" in text and "--zero-joints" in text
    # The node's defaults are read from its table only when used: the other subcommands run without rclpy.
    probe = ("import sys; from aura_ros.tools.cli import main; main(['version']); "
             "sys.exit(3 if 'rclpy' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=60).returncode == 0

    bag = write_bag(tmp_path / "in", rec, camera="compressed")
    assert main(["replay", str(bag), "--no-progress", "--max-steps", "2", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert ("camera /camera/image_raw/compressed (sensor_msgs/msg/CompressedImage, 8 frames), joint states "
            "/joint_states, recorded commands /joint_trajectory") in out
    with AnyReader([tmp_path / "o"], default_typestore=make_typestore()) as reader:
        conns = [c for c in reader.connections if c.topic == topics.MEMORY]
        budgets = {reader.deserialize(raw, c.msgtype).budget_bytes for c, _, raw in reader.messages(connections=conns)}
    assert budgets == {int(node_budget * 2**20)}


@pytest.mark.parametrize("args,says", [
    (["--low=1,1,1,1", "--high=-1,-1,-1,-1"], "--low must be below --high, both finite, for every joint; not for "
                                              "shoulder (1 .. -1)"),
    (["--joint-names", "a,b", "--low=0,nan", "--high=1,1"], "not for b (nan .. 1)"),
    (["--low=a"], "--low takes comma-separated numbers; got 'a'"),
    (["--low=0,0"], "the default arm has 4 joints (shoulder,elbow,wrist,gripper); --low and --high need one "
                    "limit each"),
    (["--joint-names", "a,b"], "--joint-names has 2 joints: give one limit each with --low=... and --high=..."),
    (["--budget-mb", "0.5,x"], "--budget-mb takes comma-separated numbers; got '0.5,x'"),
    (["--budget-mb", "-1"], "--budget-mb takes positive sizes in MiB"),
])
def test_cli_replay_bad_limits_and_budgets_are_one_line_and_exit_2(tmp_path, rec, capsys, args, says):
    bag = write_bag(tmp_path / "in", rec, camera="raw")
    assert main(["replay", str(bag), "--no-progress", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("aura-ros replay: error: ") and says in err
    assert not (tmp_path / "o").exists()


def test_joint_name_mismatch_points_to_the_robot_options(tmp_path, rec, capsys):
    bag = write_bag(tmp_path / "in", rec, camera="raw")
    assert main(["replay", str(bag), "--no-progress", "--joint-names", "a,b", "--low=0,0", "--high=1,1",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "without the policy's joints ['a', 'b']" in err
    assert "--joint-names gripper,wrist,elbow,shoulder,head_pan" in err and "--low=" in err and "--high=" in err
