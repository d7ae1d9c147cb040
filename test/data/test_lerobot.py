"""LeRobotDataset v3 folders: the reader on folders LeRobot itself wrote, the writer round trip, bad data.

lerobot_v3_so101_tiny/ (mp4, LeRobot's default AV1) and lerobot_v3_so101_tiny_images/ (PNG
``image`` features) were written by LeRobot 0.4.4 with make_lerobot_fixture.py; the values they
hold are that script's functions of (episode, frame), loaded here from the script (which needs
lerobot only to write). No ROS, no torch, no lerobot needed.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aura_ros.core import arm
from aura_ros.data import DataError, Demonstrations, derived_limits
from aura_ros.data.lerobot import VIDEO_SETTINGS, read_lerobot, write_lerobot
from aura_ros.sim.tasks import expert_episode, expert_stream

HERE = Path(__file__).parent
VIDEO_FIXTURE = HERE / "lerobot_v3_so101_tiny"
IMAGE_FIXTURE = HERE / "lerobot_v3_so101_tiny_images"
FRONT, WRIST = "observation.images.front", "observation.images.wrist"
SIM_CAMERAS = ("top", "wrist")

_spec = importlib.util.spec_from_file_location("make_lerobot_fixture", HERE / "make_lerobot_fixture.py")
fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixture)


def expected(ep: int, what) -> np.ndarray:
    n = fixture.EPISODES[ep][0]
    return np.stack([what(ep, t) for t in range(n)]).astype(np.float64)


# ------------------------------------------------------------------- folders LeRobot wrote

@pytest.fixture(scope="module")
def lerobot_video() -> Demonstrations:
    return read_lerobot(VIDEO_FIXTURE)


def test_reads_what_lerobot_wrote(lerobot_video):
    d = lerobot_video
    assert d.cameras == (FRONT, WRIST)  # sorted, all of them
    assert d.joint_names == tuple(fixture.JOINTS)
    assert d.fps == fixture.FPS
    assert [len(e.actions) for e in d.episodes] == [n for n, _ in fixture.EPISODES]
    assert [e.instruction for e in d.episodes] == [fixture.TASKS[t] for _, t in fixture.EPISODES]
    for ep, rec in enumerate(d.episodes):
        # float32 on disk, float64 here: exactly the values the script wrote.
        assert rec.states.dtype == np.float64 and np.array_equal(rec.states, expected(ep, fixture.state))
        assert np.array_equal(rec.actions, expected(ep, fixture.action))
        assert rec.events.tolist() == [True] + [False] * (len(rec.actions) - 1)
        assert rec.task == "lerobot" and rec.success and rec.task_starts == (0,)
    assert d.episodes[1].states[0].tolist() == pytest.approx([0.1, -0.5, 1.0, 0.0])
    assert d.episodes[2].actions[-1].tolist() == pytest.approx([0.31, -0.28, 0.67, 1.0])


def test_limits_come_from_the_stats_and_the_gripper_is_discrete(lerobot_video):
    actions = np.concatenate([expected(e, fixture.action) for e in range(len(fixture.EPISODES))])
    lo, hi = derived_limits(np.stack([actions.min(0), actions.max(0)]))
    assert lerobot_video.low == pytest.approx(lo) and lerobot_video.high == pytest.approx(hi)
    assert lerobot_video.low[3] == pytest.approx(-0.05) and lerobot_video.high[3] == pytest.approx(1.05)
    assert lerobot_video.discrete_joints == ("gripper.pos",)


def test_video_frames_are_the_rows_frames_in_camera_order(lerobot_video):
    for ep, rec in enumerate(lerobot_video.episodes):
        for t, step in enumerate(rec.images):
            assert isinstance(step, tuple) and len(step) == 2
            front, wrist = step
            assert front.shape == wrist.shape == (64, 64, 3) and front.dtype == np.uint8
            # The red level steps by 6 a frame: within 3 (half a step) it is this frame, not a
            # neighbour (AV1 leaves it 0.8 to 2.7 levels low).
            assert abs(front[..., 0].mean() - (40 + 60 * ep + 6 * t)) < 3, (ep, t)
            # Blue runs down the front view and up the wrist view: the cameras are not swapped.
            assert front[0, :, 2].mean() < 20 < 235 < wrist[0, :, 2].mean()
            # LeRobot's AV1 at crf 30 (lossy, 4:2:0): measured 1.6 levels on average, 2.1 at most.
            for c, got in enumerate(step):
                assert np.abs(got.astype(int) - fixture.frame(ep, t, c)).mean() < 3


def test_image_features_are_read_exactly_and_cameras_in_the_order_asked():
    d = read_lerobot(IMAGE_FIXTURE, cameras=["wrist", FRONT])
    assert d.cameras == (WRIST, FRONT)
    for ep, rec in enumerate(d.episodes):
        assert np.array_equal(rec.states, expected(ep, fixture.state))
        for t, (wrist, front) in enumerate(rec.images):
            assert np.array_equal(wrist, fixture.frame(ep, t, 1)) and np.array_equal(front, fixture.frame(ep, t, 0))


def test_one_camera_gives_one_frame_per_step_and_an_instruction_overrides_the_tasks():
    d = read_lerobot(IMAGE_FIXTURE, cameras="front", instruction="sort the cubes")
    assert d.cameras == (FRONT,)
    assert isinstance(d.episodes[0].images[0], np.ndarray) and d.episodes[0].images[0].shape == (64, 64, 3)
    assert {e.instruction for e in d.episodes} == {"sort the cubes"}


# ------------------------------------------------------------------- write_lerobot round trip

@pytest.fixture(scope="module")
def sim_demos() -> Demonstrations:
    """Two short sim episodes and a stream of three tasks (the first two of the same text: the
    task asked again), with the sim's two cameras."""
    recs = [expert_episode("cue_recall", 0, 2, cameras=SIM_CAMERAS),
            expert_episode("latent_fact", 1, 1, cameras=SIM_CAMERAS),
            expert_stream(7, [("cue_recall", 1), ("cue_recall", 0), ("latent_fact", 1)], cameras=SIM_CAMERAS)]
    return Demonstrations(recs, arm.JOINT_NAMES, arm.LOW, arm.HIGH, arm.DISCRETE_JOINTS,
                          cameras=SIM_CAMERAS, fps=10, source="sim")


@pytest.fixture(scope="module")
def written(sim_demos, tmp_path_factory) -> Path:
    return write_lerobot(sim_demos, tmp_path_factory.mktemp("rt") / "sim")


def check_round_trip(src: Demonstrations, got: Demonstrations) -> None:
    assert got.cameras == ("observation.images.top", "observation.images.wrist")
    assert got.joint_names == arm.JOINT_NAMES and got.fps == 10
    assert len(got.episodes) == len(src.episodes)
    all_actions = np.concatenate([r.actions for r in src.episodes])
    assert (got.low, got.high) == derived_limits(all_actions)  # stats.json holds the exact min / max
    assert got.discrete_joints == discrete(src)
    for a, b in zip(src.episodes, got.episodes, strict=True):
        assert np.array_equal(a.states, b.states) and np.array_equal(a.actions, b.actions)  # float64 on disk
        assert b.instruction == a.instruction and b.task_starts == a.task_starts
        steps = range(len(a.actions))
        assert [b.instruction_at(t) for t in steps] == [a.instruction_at(t) for t in steps]


def discrete(demos: Demonstrations) -> tuple[str, ...]:
    from aura_ros.data import discrete_joint_names

    return discrete_joint_names(demos.joint_names, np.concatenate([r.actions for r in demos.episodes]))


def test_round_trip_through_video(sim_demos, written):
    info = json.loads((written / "meta/info.json").read_text())
    codec = info["features"]["observation.images.top"]["info"]["video.codec"]
    got = read_lerobot(written)
    check_round_trip(sim_demos, got)
    stream, src = got.episodes[2], sim_demos.episodes[2]
    # Every boundary, the one between two tasks of the same text too (the task_start flag).
    assert len(src.task_starts) == 3 and src.task_instructions[0] == src.task_instructions[1]
    assert stream.task_starts == src.task_starts
    assert stream.events.nonzero()[0].tolist() == list(src.task_starts)
    if codec != "h264":
        pytest.skip(f"PyAV here has no libx264 (wrote {codec}): the bound below is h264 4:4:4's")
    assert VIDEO_SETTINGS["libx264"][0] == info["features"]["observation.images.top"]["info"]["video.pix_fmt"]
    # h264 4:4:4 at crf 0 is lossless in YUV: only the RGB <-> YUV rounding is left, at most 2
    # levels per channel (measured: 2 at most, 0.44 on average).
    worst, errors = 0, []
    for a, b in zip(sim_demos.episodes, got.episodes, strict=True):
        for sa, sb in zip(a.images, b.images, strict=True):
            for fa, fb in zip(sa, sb, strict=True):
                diff = np.abs(fa.astype(int) - fb)
                worst, errors = max(worst, int(diff.max())), errors + [diff.mean()]
    assert worst <= 2 and np.mean(errors) < 1.0


def test_round_trip_through_png_images_is_exact(sim_demos, tmp_path):
    got = read_lerobot(write_lerobot(sim_demos, tmp_path / "sim", video=False))
    check_round_trip(sim_demos, got)
    for a, b in zip(sim_demos.episodes, got.episodes, strict=True):
        assert all(np.array_equal(fa, fb) for sa, sb in zip(a.images, b.images, strict=True)
                   for fa, fb in zip(sa, sb, strict=True))


def test_written_metadata_is_lerobots_layout(sim_demos, written):
    info = json.loads((written / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == sim_demos.n_steps
    assert info["features"]["action"] == {"dtype": "float64", "shape": [4], "names": list(arm.JOINT_NAMES)}
    stats = json.loads((written / "meta/stats.json").read_text())
    actions = np.concatenate([r.actions for r in sim_demos.episodes])
    assert stats["action"]["min"] == actions.min(0).tolist() and stats["action"]["count"] == [len(actions)]
    assert np.asarray(stats["observation.images.top"]["mean"]).shape == (3, 1, 1)
    assert set(stats["action"]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    # pandas restores the task string as the index (LeRobot reads tasks.iloc[i].name).
    tasks = pq.read_table(written / "meta/tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    episodes = pq.read_table(written / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in episodes] == [len(r.actions) for r in sim_demos.episodes]
    assert episodes[1]["videos/observation.images.top/from_timestamp"] == len(sim_demos.episodes[0].actions) / 10


def test_the_writer_writes_a_new_folder_only(sim_demos, written):
    with pytest.raises(FileExistsError):
        write_lerobot(sim_demos, written)


# ------------------------------------------------------------------- bad data

def copy(tmp_path: Path, src: Path = VIDEO_FIXTURE) -> Path:
    return Path(shutil.copytree(src, tmp_path / src.name))


def edit_info(root: Path, change) -> Path:
    path = root / "meta/info.json"
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))
    return root


def no_stats(root):
    (root / "meta/stats.json").unlink()
    return root


def truncated_mp4(root):
    mp4 = root / "videos" / FRONT / "chunk-000/file-000.mp4"
    mp4.write_bytes(mp4.read_bytes()[:1400])
    return root


def missing_mp4(root):
    (root / "videos" / WRIST / "chunk-000/file-000.mp4").unlink()
    return root


def no_camera(root):
    return edit_info(root, lambda i: [i["features"].pop(k) for k in (FRONT, WRIST)])


def names_mismatch(root):
    return edit_info(root, lambda i: i["features"]["action"].update(names=fixture.JOINTS[:3]))


def dims_mismatch(root):
    return edit_info(root, lambda i: i["features"]["observation.state"].update(shape=[5], names=None))


def v21(root):
    return edit_info(root, lambda i: i.update(codebase_version="v2.1"))


def garbage_parquet(root):
    (root / "data/chunk-000/file-000.parquet").write_bytes(b"not a parquet file")
    return root


def rows_beyond_the_video(root):
    """Three more rows in episode 2 than its part of the video holds (the data is fine, the video short)."""
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    last = table.slice(table.num_rows - 1).to_pylist()[0]
    extra = [dict(last, frame_index=last["frame_index"] + k, index=last["index"] + k,
                  timestamp=last["timestamp"] + k / fixture.FPS) for k in (1, 2, 3)]
    pq.write_table(pa.concat_tables([table, pa.Table.from_pylist(extra, schema=table.schema)]), path)
    episodes = root / "meta/episodes/chunk-000/file-000.parquet"
    meta = pq.read_table(episodes)
    lengths = meta.column("length").to_pylist()
    lengths[2] += 3
    pq.write_table(meta.set_column(meta.schema.get_field_index("length"), "length", pa.array(lengths)), episodes)
    return root


BAD = {
    "no stats": (no_stats, {}, ["stats.json", "statistics missing"]),
    "truncated mp4": (truncated_mp4, {}, [f"{FRONT}/chunk-000/file-000.mp4", "does not decode"]),
    "missing mp4": (missing_mp4, {}, [f"{WRIST}/chunk-000/file-000.mp4", "missing"]),
    "video shorter than the rows": (rows_beyond_the_video, {},
                                    ["file-000.mp4", "11 frames", "14 rows of episode 2", "short video"]),
    "camera asked for is missing": (lambda r: r, {"cameras": ["front", "side"]}, ["no camera 'side'", FRONT]),
    "no camera feature": (no_camera, {}, ["info.json", "no camera feature"]),
    "names do not match the dim": (names_mismatch, {}, ["'action' has 4 values per step but 3 names"]),
    "state and action dims differ": (dims_mismatch, {}, ["'observation.state' has 5 values", "'action' has 4"]),
    "v2.1 dataset": (v21, {}, ["codebase_version v2.1", "convert", "convert_dataset_v21_to_v30"]),
    "unreadable parquet": (garbage_parquet, {}, ["data/chunk-000/file-000.parquet", "unreadable parquet"]),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_data_is_one_line_naming_the_problem(tmp_path, case):
    make, kwargs, words = BAD[case]
    root = make(copy(tmp_path))
    with pytest.raises(DataError) as err:
        read_lerobot(root, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_an_episode_of_one_step_is_too_short(sim_demos, tmp_path):
    short = expert_episode("cue_recall", 3, 1, cameras=SIM_CAMERAS)
    for field in ("images", "states", "actions", "events"):
        setattr(short, field, getattr(short, field)[:1])
    demos = Demonstrations([sim_demos.episodes[0], short], arm.JOINT_NAMES, arm.LOW, arm.HIGH, cameras=SIM_CAMERAS)
    root = write_lerobot(demos, tmp_path / "short", video=False)
    with pytest.raises(DataError, match=r"episode 1: episode too short \(1 steps"):
        read_lerobot(root)


def test_not_a_dataset_folder(tmp_path):
    with pytest.raises(DataError, match="no meta/info.json; not a LeRobotDataset folder"):
        read_lerobot(tmp_path)
