"""LeRobotDataset v3 folders, read into ``Demonstrations`` and written from them.

A v3 folder (LeRobot >= 0.4) is:

    meta/info.json                  codebase_version "v3.0", fps, features, data_path / video_path templates
    meta/stats.json                 min / max / mean / std / count (and quantiles) per feature
    meta/tasks.parquet              the task strings (a pandas index) and their task_index
    meta/episodes/chunk-*/file-*.parquet   one row per episode: length, where its rows and videos are
    data/chunk-*/file-*.parquet     one row per frame: observation.state, action, timestamp,
                                    frame_index, episode_index, index, task_index (and ``image`` features)
    videos/<key>/chunk-*/file-*.mp4 several episodes per file; an episode is [from_timestamp, to_timestamp)

Parquet is read and written with pyarrow, video with PyAV; nothing here needs LeRobot, torch or
pandas. A camera is a ``video`` feature (frames in the mp4 files) or an ``image`` feature (PNG
bytes in the data parquet). Nothing is resized: the model's processor does that.
"""
from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aura_ros.data import DataError, Demonstrations, check_episode, derived_limits, discrete_joint_names
from aura_ros.sim.tasks import EpisodeRecord

CODEBASE_VERSION = "v3.0"
STATE, ACTION = "observation.state", "action"
IMAGE_PREFIX = "observation.images."
CAMERA_DTYPES = ("video", "image")
INFO = "meta/info.json"
STATS = "meta/stats.json"
TASKS = "meta/tasks.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
CONVERTER = "python -m lerobot.datasets.v30.convert_dataset_v21_to_v30 --repo-id=<repo_id>"
# LeRobot's per-frame bookkeeping features (lerobot.datasets.utils.DEFAULT_FEATURES).
INDEX_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64",
                  "index": "int64", "task_index": "int64"}
# A per-frame flag written beside LeRobot's own features: this frame begins a task. A robot's
# stream of tasks is one episode, and two tasks in a row may share their text (the same task asked
# again), so task_index alone cannot mark every boundary; without the flag a change of task_index
# does (what any other LeRobot dataset gives).
TASK_START = "task_start"
# What the reader needs of meta/episodes: which episodes, and which data file holds each.
EPISODE_COLUMNS = ("episode_index", "data/chunk_index", "data/file_index")
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # the q01 ... q99 that LeRobot's stats carry
# Encoders tried in order, each with its pixel format and quality options; LeRobot's decoders
# (PyAV, torchcodec: both FFmpeg) read them all. h264 in 4:4:4 at crf 0 is lossless in YUV: a frame
# comes back within 2 levels per channel (the RGB <-> YUV rounding), where 4:2:0 blurs the colour of
# the sim's small cues (3.2 levels on average, up to 98 at a coloured edge, measured on its frames).
# libsvtav1 (LeRobot's default encoder) takes only 4:2:0; crf 30 is LeRobot's default.
VIDEO_SETTINGS = {
    "libx264": ("yuv444p", {"crf": "0"}),
    "libsvtav1": ("yuv420p", {"crf": "30"}),
    "libaom-av1": ("yuv420p", {"crf": "30"}),
    "mpeg4": ("yuv420p", {"q:v": "2"}),
}
# A keyframe every 2 frames, as LeRobot writes them: a reader seeks to any frame cheaply.
VIDEO_GOP = 2
IMAGE_STATS_FRAMES = 500


# --------------------------------------------------------------------------------------- reading

def read_lerobot(path: str | Path, cameras: Sequence[str] | str | None = None,
                 instruction: str | None = None) -> Demonstrations:
    """The episodes of a local LeRobotDataset v3 folder.

    cameras: the camera features to read, in frame order: full keys (``observation.images.front``)
        or their last part (``front``); a comma-separated string works too. Default: all camera
        features, sorted by key.
    instruction: one instruction for every episode instead of the dataset's task strings.
    """
    root = Path(path)
    info = _read_info(root)
    features = info["features"]
    fps = float(info.get("fps") or 0.0)
    keys = _camera_keys(root, features, cameras)
    names, state_order = _joint_names(root, features)
    low, high = _action_limits(root, len(names))
    tasks = _read_tasks(root)
    episodes = _read_parquet(root, sorted((root / "meta/episodes").glob("chunk-*/file-*.parquet")),
                             "meta/episodes", required=EPISODE_COLUMNS)
    columns = [STATE, ACTION, "episode_index", "frame_index", "timestamp", "task_index"]
    columns += [k for k in keys if features[k]["dtype"] == "image"]
    columns += [TASK_START] * (TASK_START in features)
    data_files = sorted({_format(info, "data_path", DATA_PATH, chunk_index=int(c), file_index=int(f))
                         for c, f in zip(episodes["data/chunk_index"], episodes["data/file_index"], strict=True)})
    data = _read_parquet(root, [root / f for f in data_files], "data", required=columns, select=True)
    rows_of = _rows_by_episode(data["episode_index"])

    records = []
    for e, ep in enumerate(episodes["episode_index"]):
        ep = int(ep)
        where = f"{root}: episode {ep}"
        rows = rows_of.get(ep, np.zeros(0, dtype=np.int64))
        rows = rows[np.argsort(data["frame_index"][rows], kind="stable")]
        check_episode(where, len(rows))
        if "length" in episodes and int(episodes["length"][e]) != len(rows):
            raise DataError(f"{where}: meta/episodes says {int(episodes['length'][e])} frames, "
                            f"the data files hold {len(rows)}")
        states = _matrix(data[STATE], rows, len(names), where, STATE)[:, state_order]
        actions = _matrix(data[ACTION], rows, len(names), where, ACTION)
        frames = [_camera_frames(root, info, features, episodes, e, k, data, rows, fps, where) for k in keys]
        images = frames[0] if len(keys) == 1 else list(zip(*frames, strict=True))
        task_idx = np.asarray(data["task_index"], dtype=np.int64)[rows]
        boundary = np.r_[True, task_idx[1:] != task_idx[:-1]]
        if TASK_START in data:
            boundary = np.asarray(data[TASK_START], dtype=bool).reshape(len(data[TASK_START]), -1)[rows, 0]
            boundary[0] = True
        starts = (0,) if instruction is not None else tuple(int(s) for s in np.flatnonzero(boundary))
        texts = (instruction,) if instruction is not None else tuple(_task(tasks, task_idx[s], where) for s in starts)
        events = np.zeros(len(rows), dtype=bool)
        events[list(starts)] = True
        records.append(EpisodeRecord(instruction=texts[0], images=images, states=states, actions=actions,
                                     events=events, success=True, task="lerobot", seed=ep,
                                     task_starts=starts, task_instructions=texts if len(texts) > 1 else (),
                                     task_names=("lerobot",) * len(texts) if len(texts) > 1 else ()))
    if not records:
        raise DataError(f"{root}: meta/episodes lists no episode")
    all_actions = np.concatenate([r.actions for r in records])
    return Demonstrations(episodes=records, joint_names=names, low=low, high=high,
                          discrete_joints=discrete_joint_names(names, all_actions), cameras=tuple(keys),
                          fps=fps, source=str(root))


def _read_info(root: Path) -> dict:
    path = root / INFO
    if not path.is_file():
        raise DataError(f"{root}: no {INFO}; not a LeRobotDataset folder")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({_first_line(e)})") from None
    version = str(info.get("codebase_version", "?"))
    if version != CODEBASE_VERSION:
        hint = (f"; convert it with LeRobot's converter: {CONVERTER}" if version.startswith("v2")
                else "")
        raise DataError(f"{path}: codebase_version {version}, not a LeRobotDataset {CODEBASE_VERSION}{hint}")
    if not isinstance(info.get("features"), dict):
        raise DataError(f"{path}: no features")
    for key in (STATE, ACTION):
        if key not in info["features"]:
            raise DataError(f"{path}: no '{key}' feature")
    return info


def _camera_keys(root: Path, features: dict, cameras) -> list[str]:
    available = sorted(k for k, f in features.items() if f.get("dtype") in CAMERA_DTYPES)
    if not available:
        raise DataError(f"{root / INFO}: no camera feature (a 'video' or 'image' feature such as "
                        f"{IMAGE_PREFIX}front)")
    if cameras is None:
        return available
    if isinstance(cameras, str):
        cameras = [c.strip() for c in cameras.split(",") if c.strip()]
    keys = []
    for cam in cameras:
        key = cam if cam in available else IMAGE_PREFIX + cam
        if key not in available:
            raise DataError(f"{root / INFO}: no camera '{cam}' (cameras: {', '.join(available)})")
        keys.append(key)
    return keys


def _feature_names(root: Path, features: dict, key: str) -> tuple[str, ...] | None:
    """A feature's names: a list, or {"motors": [...]} (the older form); None if it has none."""
    names = features[key].get("names")
    if isinstance(names, dict):
        lists = [v for v in names.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{root / INFO}: '{key}' names {names} is not one list of joint names")
        names = lists[0]
    dim = int(np.prod(features[key].get("shape") or [0]))
    if names is not None and len(names) != dim:
        raise DataError(f"{root / INFO}: '{key}' has {dim} values per step but {len(names)} names")
    return tuple(str(n) for n in names) if names is not None else None


def _joint_names(root: Path, features: dict) -> tuple[tuple[str, ...], list[int]]:
    """The action's joint names (j0 ... when it has none) and the state columns in that order."""
    state_dim = int(np.prod(features[STATE].get("shape") or [0]))
    action_dim = int(np.prod(features[ACTION].get("shape") or [0]))
    state_names, action_names = _feature_names(root, features, STATE), _feature_names(root, features, ACTION)
    if state_dim != action_dim:
        raise DataError(f"{root / INFO}: '{STATE}' has {state_dim} values per step but '{ACTION}' has "
                        f"{action_dim}; the policy reads the joint state in the action's joint order")
    names = action_names or state_names or tuple(f"j{i}" for i in range(action_dim))
    if state_names and action_names and set(state_names) == set(action_names):
        return names, [state_names.index(n) for n in action_names]
    return names, list(range(state_dim))


def _action_limits(root: Path, dim: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Action limits from meta/stats.json's action min / max, widened as derived_limits does."""
    path = root / STATS
    if not path.is_file():
        raise DataError(f"{path}: statistics missing (LeRobot writes them on finalize(); the action "
                        f"limits come from them)")
    try:
        stats = json.loads(path.read_text())
        lo = np.asarray(stats[ACTION]["min"], dtype=np.float64).reshape(-1)
        hi = np.asarray(stats[ACTION]["max"], dtype=np.float64).reshape(-1)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({_first_line(e)})") from None
    except (KeyError, TypeError):
        raise DataError(f"{path}: statistics missing for '{ACTION}' (no min / max)") from None
    if lo.shape != (dim,) or hi.shape != (dim,) or not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise DataError(f"{path}: '{ACTION}' min / max are not {dim} finite values each")
    return derived_limits(np.stack([lo, hi]))


def _read_parquet(root: Path, files: list[Path], what: str, required: Sequence[str], select: bool = False) -> dict:
    """The columns of ``files`` concatenated (only the ``required`` ones if ``select``), by name:
    numbers as numpy arrays, the rest as Python lists."""
    import pyarrow as pa

    if not files:
        raise DataError(f"{root}: no {what} parquet files")
    tables = []
    for f in files:
        table = _parquet_table(f, f"{what} file named by meta/episodes")
        missing = [c for c in required if c not in table.column_names]
        if missing:
            raise DataError(f"{f}: no column {', '.join(missing)}")
        tables.append(table.select(list(required)) if select else table)
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    return {name: _column(table.column(name)) for name in table.column_names}


def _parquet_table(path: Path, what: str):
    """The parquet file at ``path`` as a pyarrow table; missing or unreadable: a DataError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"{path}: missing ({what})")
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: unreadable parquet ({_first_line(e)})") from None


def _column(col):
    """Numbers as a numpy array, fixed-size lists of numbers as a [rows, size] array, the rest as
    Python objects (variable-length lists, image structs)."""
    import pyarrow as pa

    t = col.type
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return col.to_numpy()
    if pa.types.is_fixed_size_list(t) and (pa.types.is_integer(t.value_type) or pa.types.is_floating(t.value_type)):
        flat = col.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(col), t.list_size)
    return col.to_pylist()


def _rows_by_episode(episode_index) -> dict[int, np.ndarray]:
    ep = np.asarray(episode_index, dtype=np.int64)
    order = np.argsort(ep, kind="stable")
    bounds = np.flatnonzero(np.diff(ep[order])) + 1
    return {int(ep[g[0]]): g for g in np.split(order, bounds) if len(g)}


def _matrix(values, rows: np.ndarray, dim: int, where: str, key: str) -> np.ndarray:
    try:
        m = np.asarray(values[rows] if isinstance(values, np.ndarray) else [values[r] for r in rows],
                       dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: '{key}' rows are not all of one length") from None
    if m.ndim != 2 or m.shape[1] != dim:
        raise DataError(f"{where}: '{key}' rows have {m.shape[1:] or 'no'} values, meta/info.json says {dim}")
    if not np.all(np.isfinite(m)):
        raise DataError(f"{where}: '{key}' has NaN or infinite values")
    return m


def _read_tasks(root: Path) -> dict[int, str]:
    """task_index -> task string. LeRobot writes a pandas frame indexed by the task string; a
    'task' column is read too."""
    path = root / TASKS
    table = _parquet_table(path, "the task strings")
    text = "task" if "task" in table.column_names else None
    if text is None:
        pandas = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
        text = next((c for c in pandas.get("index_columns", []) if isinstance(c, str)), None)
    if text is None or text not in table.column_names or "task_index" not in table.column_names:
        raise DataError(f"{path}: no task strings with a task_index")
    return dict(zip((int(i) for i in table.column("task_index").to_pylist()),
                    (str(s) for s in table.column(text).to_pylist()), strict=True))


def _task(tasks: dict[int, str], index: int, where: str) -> str:
    if int(index) not in tasks:
        raise DataError(f"{where}: task_index {int(index)} is not in {TASKS}")
    return tasks[int(index)]


def _format(info: dict, field: str, default: str, **kw) -> str:
    return str(info.get(field) or default).format(**kw)


def _camera_frames(root: Path, info: dict, features: dict, episodes: dict, e: int, key: str,
                   data: dict, rows: np.ndarray, fps: float, where: str) -> list[np.ndarray]:
    if features[key]["dtype"] == "image":
        return [_png(data[key][r], root, f"{where}: '{key}' frame {i}") for i, r in enumerate(rows)]
    cols = [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
    if any(c not in episodes for c in cols):
        raise DataError(f"{root}: meta/episodes has no video location for '{key}'")
    video = root / _format(info, "video_path", VIDEO_PATH, video_key=key,
                           chunk_index=int(episodes[cols[0]][e]), file_index=int(episodes[cols[1]][e]))
    start = float(episodes[cols[2]][e])
    times = start + np.asarray(data["timestamp"], dtype=np.float64)[rows]
    return _decode(video, times, fps, where.rsplit(': ', 1)[-1])  # the file names the dataset


def _decode(video: Path, times: np.ndarray, fps: float, where: str) -> list[np.ndarray]:
    """The frames of ``video`` shown at ``times`` (seconds into the file, ascending): each the
    decoded frame nearest in time, within half a frame period."""
    import av

    if not video.is_file():
        raise DataError(f"{video}: missing ({where})")
    tol = 0.5 / fps if fps > 0 else 1e-3
    shown, stamps = [], []
    try:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            container.seek(max(0, int(float(times[0]) / stream.time_base)), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.time is None or frame.time < times[0] - tol:
                    continue
                if frame.time > times[-1] + tol:
                    break
                shown.append(frame.to_ndarray(format="rgb24"))
                stamps.append(frame.time)
    except (av.error.FFmpegError, IndexError, ValueError) as e:
        raise DataError(f"{video}: does not decode at {where} ({_first_line(e)})") from None
    if len(shown) < len(times):
        raise DataError(f"{video}: {len(shown)} frames from {times[0]:.3f} s to {times[-1]:.3f} s "
                        f"for the {len(times)} rows of {where} (a truncated or short video)")
    stamps = np.asarray(stamps)
    nearest = np.abs(stamps[None, :] - times[:, None]).argmin(1)
    off = np.abs(stamps[nearest] - times)
    if off.max() > tol:
        i = int(off.argmax())
        raise DataError(f"{video}: no frame within {tol:.3f} s of {times[i]:.3f} s ({where}, row {i})")
    return [shown[i] for i in nearest]


def _png(value, root: Path, where: str) -> np.ndarray:
    """An ``image`` feature's cell: {"bytes": PNG/JPEG bytes, "path": ...} (as datasets.Image stores it)."""
    from PIL import Image

    data = value.get("bytes") if isinstance(value, dict) else value
    try:
        if data is None and isinstance(value, dict) and value.get("path"):
            data = (root / value["path"]).read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, TypeError, ValueError) as e:
        raise DataError(f"{where}: not an image ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --------------------------------------------------------------------------------------- writing

def write_lerobot(demos: Demonstrations, path: str | Path, fps: float | None = None, *, video: bool = True,
                  vcodec: str | None = None, robot_type: str | None = None) -> Path:
    """Write ``demos`` as a LeRobotDataset v3 folder at ``path`` (which must not exist yet).

    One data file and one video file per camera hold all episodes (LeRobot starts new files
    only past 100 MB of data / 200 MB of video). Videos are mp4 in the first of VIDEO_SETTINGS'
    encoders that PyAV has (or ``vcodec``); video=False stores the frames as PNG ``image``
    features in the data parquet instead (lossless, larger). fps: the recorded rate (default:
    ``demos.fps``, else 10). States and actions keep their dtype (the sim's float64 round-trips
    exactly). Returns the folder.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(path)
    if root.exists():
        raise FileExistsError(f"{root} exists; write_lerobot writes a new folder")
    fps = int(round(fps or demos.fps or 10))
    n_cams, dim = len(demos.cameras), len(demos.joint_names)
    keys = [_camera_feature_key(c) for c in demos.cameras]
    if len(set(keys)) != n_cams:
        raise ValueError(f"camera names {demos.cameras} map to repeated feature keys {keys}")
    episodes = demos.episodes
    if not episodes:
        raise ValueError("no episodes to write")

    def frames_of(rec, cam: int) -> list[np.ndarray]:
        out = []
        for s, img in enumerate(rec.images):
            imgs = (img,) if isinstance(img, np.ndarray) else tuple(img)
            if len(imgs) != n_cams:
                raise ValueError(f"step {s} has {len(imgs)} frames for {n_cams} cameras {demos.cameras}")
            out.append(np.ascontiguousarray(imgs[cam], dtype=np.uint8))
        return out

    float_type = np.result_type(*[r.actions.dtype for r in episodes], *[r.states.dtype for r in episodes])
    float_name = "float64" if float_type == np.float64 else "float32"
    instructions = [[rec.instruction_at(s) for s in range(len(rec.actions))] for rec in episodes]
    task_list = list(dict.fromkeys(t for ep in instructions for t in ep))
    task_of = {t: i for i, t in enumerate(task_list)}

    # Per-frame columns, all episodes concatenated in order.
    lengths = [len(r.actions) for r in episodes]
    for rec, n in zip(episodes, lengths, strict=True):
        if rec.states.shape != (n, dim) or rec.actions.shape != (n, dim) or len(rec.images) != n:
            raise ValueError(f"an episode's states {rec.states.shape}, actions {rec.actions.shape} and "
                             f"{len(rec.images)} images do not match {n} steps of {dim} joints")
    cols = {
        STATE: np.concatenate([r.states for r in episodes]).astype(float_name),
        ACTION: np.concatenate([r.actions for r in episodes]).astype(float_name),
        "timestamp": np.concatenate([np.arange(n) / fps for n in lengths]).astype(np.float32),
        "frame_index": np.concatenate([np.arange(n) for n in lengths]).astype(np.int64),
        "episode_index": np.repeat(np.arange(len(episodes)), lengths).astype(np.int64),
        "index": np.arange(sum(lengths), dtype=np.int64),
        "task_index": np.asarray([task_of[t] for ep in instructions for t in ep], dtype=np.int64),
        TASK_START: np.concatenate([np.isin(np.arange(n), rec.task_starts) for rec, n in zip(episodes, lengths)]),
    }
    frames = {k: [f for rec in episodes for f in frames_of(rec, c)] for c, k in enumerate(keys)}

    features: dict[str, dict] = {}
    codec = vcodec or (_video_codec() if video else None)
    if video and codec not in VIDEO_SETTINGS:
        raise ValueError(f"vcodec {codec!r} is not one of {tuple(VIDEO_SETTINGS)}")
    for key in keys:
        h, w = frames[key][0].shape[:2]
        features[key] = {"dtype": "video" if video else "image", "shape": [h, w, 3],
                         "names": ["height", "width", "channels"]}
        if video:
            out = root / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)
            features[key]["info"] = _encode(out, frames[key], fps, codec)
    for key in (STATE, ACTION):
        features[key] = {"dtype": float_name, "shape": [dim], "names": list(demos.joint_names)}
    for key, dtype in INDEX_FEATURES.items():
        features[key] = {"dtype": dtype, "shape": [1], "names": None}
    features[TASK_START] = {"dtype": "bool", "shape": [1], "names": None}

    # data/: one parquet of every frame (image features as datasets.Image structs of PNG bytes).
    arrays = {key: pa.FixedSizeListArray.from_arrays(pa.array(cols[key].reshape(-1)), dim) for key in (STATE, ACTION)}
    arrays.update({key: pa.array(cols[key]) for key in (*INDEX_FEATURES, TASK_START)})
    if not video:
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        for key in keys:
            arrays[key] = pa.array([{"bytes": _png_bytes(f), "path": None} for f in frames[key]], type=image_type)
    order = keys * (not video) + [STATE, ACTION, *INDEX_FEATURES, TASK_START]
    _write_parquet(pq, pa.table({k: arrays[k] for k in order}), root / DATA_PATH.format(chunk_index=0, file_index=0))

    # meta/: tasks, per-episode rows (where each episode lives, its stats), dataset stats, info.
    _write_parquet(pq, _tasks_table(pa, task_list), root / TASKS)
    bounds = np.r_[0, np.cumsum(lengths)]
    ep_rows = []
    for e in range(len(episodes)):
        lo, hi = int(bounds[e]), int(bounds[e + 1])
        row = {"episode_index": e, "tasks": list(dict.fromkeys(instructions[e])), "length": hi - lo,
               "data/chunk_index": 0, "data/file_index": 0, "dataset_from_index": lo, "dataset_to_index": hi}
        for key in keys * video:
            row.update({f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                        f"videos/{key}/from_timestamp": lo / fps, f"videos/{key}/to_timestamp": hi / fps})
        stats = _all_stats(cols, frames, slice(lo, hi))
        row.update({f"stats/{k}/{s}": v for k, st in stats.items() for s, v in st.items()})
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        ep_rows.append(row)
    _write_parquet(pq, pa.Table.from_pylist(ep_rows), root / EPISODES_PATH)
    (root / STATS).write_text(json.dumps(_all_stats(cols, frames, slice(None)), indent=4))
    info = {
        "codebase_version": CODEBASE_VERSION, "robot_type": robot_type,
        "total_episodes": len(episodes), "total_frames": int(bounds[-1]), "total_tasks": len(task_list),
        "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"}, "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if video else None, "features": features,
    }
    (root / INFO).write_text(json.dumps(info, indent=4))
    return root


def _camera_feature_key(camera: str) -> str:
    """A camera's feature key: LeRobot's own keys as they are, else observation.images.<name>
    (a ROS topic's slashes become underscores: LeRobot feature names may not contain '/')."""
    if camera.startswith("observation.image"):
        return camera
    name = "_".join(p for p in camera.replace("/", " ").split() if p)
    return IMAGE_PREFIX + (name or "image")


def _video_codec() -> str:
    import av

    for name in VIDEO_SETTINGS:
        try:
            av.codec.Codec(name, "w")
            return name
        except (ValueError, av.error.FFmpegError):
            continue
    raise RuntimeError(f"PyAV has none of the video encoders {tuple(VIDEO_SETTINGS)}")


def _encode(out: Path, frames: list[np.ndarray], fps: int, codec: str) -> dict:
    """Encode ``frames`` into an mp4 at ``fps``; the feature's "info" block, as LeRobot writes it."""
    import av

    h, w = frames[0].shape[:2]
    pix_fmt, options = VIDEO_SETTINGS[codec]
    if pix_fmt == "yuv420p" and (h % 2 or w % 2):
        raise ValueError(f"{codec} encodes 4:2:0, which needs even frame sizes, not {w}x{h}")
    options = {"g": str(VIDEO_GOP), **options}
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for img in frames:
            if img.shape != (h, w, 3):
                raise ValueError(f"{out}: a frame of shape {img.shape} among frames of {(h, w, 3)}")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())
        codec_name = stream.codec_context.codec.canonical_name  # libx264 -> h264, as LeRobot records it
    return {"video.height": h, "video.width": w, "video.codec": codec_name, "video.pix_fmt": pix_fmt,
            "video.is_depth_map": False, "video.fps": fps, "video.channels": 3, "has_audio": False}


def _png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _tasks_table(pa, task_list: list[str]):
    """meta/tasks.parquet as LeRobot writes it with pandas: task_index, indexed by the task string
    (the pandas metadata names the 'task' column as the index, so pandas.read_parquet restores it)."""
    table = pa.table({"task_index": pa.array(range(len(task_list)), pa.int64()), "task": pa.array(task_list)})
    pandas = {"index_columns": ["task"], "column_indexes": [],
              "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                           "numpy_type": "int64", "metadata": None},
                          {"name": "task", "field_name": "task", "pandas_type": "unicode",
                           "numpy_type": "object", "metadata": None}],
              "creator": {"library": "pyarrow", "version": pa.__version__}}
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas).encode()})


def _write_parquet(pq, table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _stats(x: np.ndarray, axis: tuple[int, ...] = (0,), keepdims: bool = False) -> dict[str, list]:
    """min / max / mean / std / count and q01 ... q99 over ``axis``, as lists (LeRobot's stats.json)."""
    x = x.astype(np.float64)
    out = {"min": x.min(axis, keepdims=keepdims), "max": x.max(axis, keepdims=keepdims),
           "mean": x.mean(axis, keepdims=keepdims), "std": x.std(axis, keepdims=keepdims)}
    out.update({f"q{round(q * 100):02d}": np.quantile(x, q, axis=axis, keepdims=keepdims) for q in QUANTILES})
    stats = {k: np.asarray(v).tolist() for k, v in out.items()}
    stats["count"] = [int(x.shape[0])]
    return stats


def _all_stats(cols: dict, frames: dict, rows: slice) -> dict[str, dict]:
    stats = {}
    for key, seq in frames.items():
        # Per channel over frames and pixels, in [0, 1], shaped [3, 1, 1] as LeRobot's are; on at
        # most IMAGE_STATS_FRAMES frames, evenly spaced (LeRobot samples frames for these too).
        seq = seq[rows]
        pick = np.unique(np.linspace(0, len(seq) - 1, min(len(seq), IMAGE_STATS_FRAMES)).round().astype(int))
        imgs = np.stack([seq[i] for i in pick]).astype(np.float32) / 255.0  # [N, H, W, 3]
        st = _stats(imgs.transpose(0, 3, 1, 2), axis=(0, 2, 3), keepdims=True)
        stats[key] = {k: (v[0] if k != "count" else v) for k, v in st.items()}
    for key in (STATE, ACTION, *INDEX_FEATURES, TASK_START):
        values = np.asarray(cols[key][rows])
        stats[key] = _stats(values.reshape(len(values), -1).astype(np.float64 if key == TASK_START else values.dtype))
    return stats
