"""Write test/data/lerobot_v3_so101_tiny/ with LeRobot's own writer (run by hand, not in CI).

Needs ``lerobot`` (written with 0.4.4; see the fixture's README.md for the environment), so the
reader in ``aura_ros.data.lerobot`` is tested on a folder that LeRobot itself wrote, not on one
we wrote to our own reading of the format. Every value is a pure function of (episode, frame), and
``test/data/test_lerobot.py`` recomputes them with the same functions (copied there, since this
script imports lerobot):

    python test/data/make_lerobot_fixture.py [--images] [OUT_DIR]

writes test/data/lerobot_v3_so101_tiny (cameras as mp4 videos, LeRobot's default AV1) or, with
--images, test/data/lerobot_v3_so101_tiny_images (cameras as PNG ``image`` features in the parquet).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

FPS = 10
SIZE = 64
JOINTS = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "gripper.pos"]
CAMERAS = ["front", "wrist"]  # written in this order; a reader sorts them: front, wrist
TASKS = ["Pick up the red cube and put it in the bin.", "Push the blue cube to the left."]
EPISODES = [(12, 0), (13, 1), (11, 0)]  # (frames, task index) per episode


def state(ep: int, t: int) -> np.ndarray:
    return np.array([0.1 * ep + 0.01 * t, -0.5 + 0.02 * t, 1.0 - 0.03 * t, float(t >= 6)], dtype=np.float32)


def action(ep: int, t: int) -> np.ndarray:
    return state(ep, t + 1)  # the next state: what a position-controlled arm is told


def frame(ep: int, t: int, camera: int) -> np.ndarray:
    """A smooth image (it survives lossy video): a gradient whose level encodes (episode, frame, camera)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    img = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    img[..., 0] = 40 + 60 * ep + 6 * t
    img[..., 1] = (x * 2).astype(np.uint8)
    img[..., 2] = (y * 2 if camera == 0 else 255 - y * 2).astype(np.uint8)
    return img


def main(out: Path, videos: bool = True) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {f"observation.images.{c}": {"dtype": "video" if videos else "image", "shape": (SIZE, SIZE, 3),
                                            "names": ["height", "width", "channels"]} for c in CAMERAS}
    features["observation.state"] = {"dtype": "float32", "shape": (len(JOINTS),), "names": JOINTS}
    features["action"] = {"dtype": "float32", "shape": (len(JOINTS),), "names": JOINTS}
    if out.exists():
        shutil.rmtree(out)
    ds = LeRobotDataset.create(repo_id="aura_ros/so101_tiny", fps=FPS, features=features, root=out,
                               robot_type="so101_follower", use_videos=videos)
    for ep, (n, task) in enumerate(EPISODES):
        for t in range(n):
            f = {f"observation.images.{c}": frame(ep, t, i) for i, c in enumerate(CAMERAS)}
            f.update({"observation.state": state(ep, t), "action": action(ep, t), "task": TASKS[task]})
            ds.add_frame(f)
        ds.save_episode()
    ds.finalize()
    print(f"wrote {out}: {ds.meta.total_episodes} episodes, {ds.meta.total_frames} frames")


if __name__ == "__main__":
    args = sys.argv[1:]
    videos = "--images" not in args
    args = [a for a in args if a != "--images"]
    default = Path(__file__).parent / ("lerobot_v3_so101_tiny" + ("" if videos else "_images"))
    main(Path(args[0]) if args else default, videos)
