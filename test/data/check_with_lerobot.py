"""Load folders that aura_ros's write_lerobot wrote with LeRobot's own LeRobotDataset (run by hand).

Needs ``lerobot`` and aura_ros importable in one environment (see lerobot_v3_so101_tiny/README.md):

    PYTHONPATH=. python test/data/check_with_lerobot.py [OUT_DIR]

Writes three sim episodes (the third a stream of two tasks) with the sim's two cameras (top and
wrist views), once as mp4 videos and once as PNG ``image`` features, loads each with
``LeRobotDataset(repo_id, root=...)`` and checks every frame: episode and frame index, the task
string, state and action (LeRobot hands out float32 tensors: equal to the written float64 values
cast to float32) and both cameras' pixels (videos: within 2 levels; images: exact). Exits non-zero
on the first mismatch.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from aura_ros.core import arm
from aura_ros.data import Demonstrations
from aura_ros.data.lerobot import write_lerobot
from aura_ros.sim.tasks import expert_episode, expert_stream

CAMERAS = ("top", "wrist")


def sim_demos() -> Demonstrations:
    recs = [expert_episode("cue_recall", 0, 2, cameras=CAMERAS), expert_episode("latent_fact", 1, 3, cameras=CAMERAS),
            expert_stream(7, [("cue_recall", 1), ("latent_fact", 1)], cameras=CAMERAS)]
    return Demonstrations(episodes=recs, joint_names=arm.JOINT_NAMES, low=arm.LOW, high=arm.HIGH,
                          cameras=CAMERAS, fps=10)


def check(root: Path, demos: Demonstrations, max_pixel_error: int) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("aura_ros/sim", root=root, video_backend="pyav")
    assert len(ds) == demos.n_steps, (len(ds), demos.n_steps)
    assert ds.meta.camera_keys == [f"observation.images.{c}" for c in CAMERAS], ds.meta.camera_keys
    i, errors, worst = 0, [], 0
    for e, rec in enumerate(demos.episodes):
        for t in range(len(rec.actions)):
            item = ds[i]
            i += 1
            assert (int(item["episode_index"]), int(item["frame_index"])) == (e, t)
            assert item["task"] == rec.instruction_at(t), (item["task"], rec.instruction_at(t))
            assert np.array_equal(item["observation.state"].numpy(), rec.states[t].astype(np.float32))
            assert np.array_equal(item["action"].numpy(), rec.actions[t].astype(np.float32))
            for c, cam in enumerate(CAMERAS):
                got = (item[f"observation.images.{cam}"].numpy().transpose(1, 2, 0) * 255).round()
                diff = np.abs(got - rec.images[t][c])
                errors.append(diff.mean())
                worst = max(worst, int(diff.max()))
    assert worst <= max_pixel_error, worst
    sub = LeRobotDataset("aura_ros/sim", root=root, episodes=[2], video_backend="pyav")
    assert len(sub) == len(demos.episodes[2].actions)
    print(f"{root.name}: LeRobot read {i} frames of {len(demos.episodes)} episodes; tasks, states, actions "
          f"equal; pixels: mean abs error {np.mean(errors):.3f}, largest {worst}; "
          f"codec {ds.meta.features[f'observation.images.{CAMERAS[0]}'].get('info', {}).get('video.codec', 'png')}")


def main(out: Path) -> None:
    demos = sim_demos()
    check(write_lerobot(demos, out / "sim_video"), demos, max_pixel_error=2)
    check(write_lerobot(demos, out / "sim_images", video=False), demos, max_pixel_error=0)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="aura_lerobot_")))
