"""`aura-ros train`: behaviour cloning of a VLM policy with a gated memory, on the sim's memory
tasks (streams of tasks back to back without a reset: the robot's endless episode) or on a user's
own demonstrations (rosbag2 recordings, a LeRobotDataset v3 folder).

    aura-ros train --out my-policy                              # the default's recipe (sim)
    aura-ros train --out my-policy --cameras top,wrist          # the sim with two cameras
    aura-ros train --out my-policy --bags demos/ep_*            # ros2 bag record of teleoperated episodes
    aura-ros train --out my-policy --lerobot ~/datasets/so101   # a LeRobotDataset v3 folder
    aura-ros train --out tiny --steps 20 --streams 4            # a quick check

The recipe and the gated training contexts: aura_ros.backends.transformers.train. The result is
a model folder that ``--model`` / ``model.path`` / ``VLMPolicy.from_pretrained`` accept, and beside
the weights ``aura_ros_policy.yaml``: the node's parameters for this policy (joint names, limits,
cameras, budget), for ``ros2 launch aura_ros policy.launch.py params_file:=<out>/aura_ros_policy.yaml``.
Bad data stops with one line that says why, and exit code 2.
"""
from __future__ import annotations

import argparse
from pathlib import Path

NODE_PARAMS_FILE = "aura_ros_policy.yaml"


def add_parser(sub) -> argparse.ArgumentParser:
    from aura_ros.backends.transformers.train import DEFAULT_CROSS_TASK, TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="behaviour-clone a VLM policy on expert episodes of the memory tasks")
    p.add_argument("--out", required=True, help="folder the trained model is written to")
    p.add_argument("--model", default=None,
                   help="model folder or hub id to fine-tune (default: the embedded default's architecture, fresh)")
    src = p.add_argument_group("demonstrations (default: the sim's expert)")
    src.add_argument("--bags", nargs="+", default=None, metavar="DIR",
                     help="rosbag2 recordings (MCAP or sqlite3), one recording per folder")
    src.add_argument("--lerobot", default=None, metavar="DIR", help="a local LeRobotDataset v3 folder")
    src.add_argument("--cameras", default=None,
                     help="cameras in order, comma-separated: the sim's views (top,wrist; default top), the bags' "
                          "image topics or the dataset's observation.images.* keys (default: every camera found)")
    src.add_argument("--instruction", default=None, help="the instruction of every episode (replaces the recorded one)")
    src.add_argument("--joint-states", default="joint_states", help="bags: the JointState topic")
    src.add_argument("--commands", default=None,
                     help="bags: the command topic (JointTrajectory, Float64MultiArray or TwistStamped); default: "
                          "the node's command topics, if recorded; none: the next joint state is the action")
    src.add_argument("--instruction-topic", default="instruction", help="bags: the std_msgs/String instruction topic")
    src.add_argument("--episode-marker", default=None,
                     help="bags: a topic whose every message starts an episode (default: one episode per bag, its "
                          "tasks begun by the instruction topic)")
    src.add_argument("--mix", default=None,
                     help="sim: stream i is exactly what the sim node runs with seed=--sim-seed+i, task_mix=MIX, "
                          "task_cross_task=--cross-task (e.g. cue_recall:20,cue_recall:200,latent_fact:50)")
    src.add_argument("--tasks-per-stream", type=int, default=6, help="sim with --mix: tasks per stream")
    src.add_argument("--sim-seed", type=int, default=10_000, help="sim with --mix: the first stream's seed")
    src.add_argument("--camera-topics", default=None,
                     help="the robot's image topics for the cameras, comma-separated, in camera order (written into "
                          "the params file; default: the bags' topics, the sim's, or <name>/image for a dataset's "
                          "observation.images.<name>)")
    src.add_argument("--low", default=None,
                     help="the robot's lower joint limits, comma-separated in the data's joint order (e.g. from its "
                          "URDF; default: the recorded range widened by 5 %%)")
    src.add_argument("--high", default=None, help="the robot's upper joint limits (as --low)")
    src.add_argument("--discrete-joints", default=None,
                     help="joints whose every change is a discrete event for the gate (a gripper), comma-separated; "
                          "default: those whose recorded actions take at most two values; '' for none")
    p.add_argument("--budget-mb", type=float, default=0.5,
                   help="the KV budget the policy is meant to run at (written into the params file)")
    p.add_argument("--tasks", default="cue_recall:0.7,latent_fact:0.3", help="task:weight,... of the episodes")
    p.add_argument("--streams", type=int, default=50,
                   help="expert streams generated in the sim (each 3-6 tasks back to back, no reset)")
    p.add_argument("--cross-task", type=float, default=DEFAULT_CROSS_TASK,
                   help="share of a stream's tasks (after its first) that recall the previous task's bin")
    p.add_argument("--max-distractor", type=int, default=30, help="distractor steps D are drawn from 0..this")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--context-steps", type=int, default=d.context_steps,
                   help="recent steps of a training context, at most (a cache holds this many before it is full)")
    p.add_argument("--single-frame-warmup-steps", type=int, default=d.single_frame_warmup_steps,
                   help="optimizer steps of single-frame contexts first (0 when fine-tuning a trained policy)")
    p.add_argument("--window-curriculum-steps", type=int, default=d.window_curriculum_steps,
                   help="optimizer steps over which the recent window grows to --context-steps (0: at once)")
    p.add_argument("--seed", type=int, default=d.seed, help="fixes episodes, sampling and the initial weights")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: torch's default)")
    p.add_argument("--log-every", type=int, default=d.log_every, help="optimizer steps per logged mean loss")
    p.add_argument("--check-episodes", type=int, default=4,
                   help="held-out expert streams (4 tasks each) for the check after training (0: no check)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from aura_ros.backends.transformers.train import TrainConfig, train
    from aura_ros.data import DataError

    tasks = []
    for item in args.tasks.split(","):
        name, _, weight = item.partition(":")
        tasks.append((name.strip(), float(weight or 1.0)))
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, context_steps=args.context_steps,
                      seed=args.seed, threads=args.threads, log_every=args.log_every,
                      single_frame_warmup_steps=args.single_frame_warmup_steps,
                      window_curriculum_steps=args.window_curriculum_steps)
    try:
        demos = with_robot_limits(demonstrations(args, tuple(tasks)), args)
    except (DataError, ValueError) as exc:  # bad data or a bad option: one line, no traceback
        print(f"aura-ros train: {exc}")
        return 2
    pcfg = policy_config(demos)
    try:
        topics_for_node = camera_topics(demos, args.camera_topics)
    except ValueError as exc:
        print(f"aura-ros train: {exc}")
        return 2
    result = train(demos.episodes, Path(args.out), model=args.model, config=cfg, policy_config=pcfg,
                   progress=not args.no_progress, init_seed=args.seed)
    params = write_node_params(result.out_dir, demos, pcfg, args.budget_mb, topics_for_node)
    record_robot(result.out_dir, demos)
    print(f"trained on {result.n_episodes} episodes ({demos.n_steps} steps, {len(demos.cameras)} camera(s)) in "
          f"{result.seconds:.0f} s: loss {result.first_loss:.4f} -> {result.final_loss:.4f}; wrote {result.out_dir}")
    if tuple(topics_for_node) != tuple(demos.cameras):
        print("camera topics for the node: " + ", ".join(f"{c} -> {t}" for c, t in zip(demos.cameras, topics_for_node))
              + " (--camera-topics names your robot's)")
    print(f"node parameters: ros2 launch aura_ros policy.launch.py params_file:={params}")
    if args.check_episodes > 0 and demos.source == "sim":
        from aura_ros.core import topics

        views = tuple(v for c in demos.cameras for v, topic in topics.SIM_CAMERA_TOPICS.items() if topic == c)
        check(result.out_dir, tuple(tasks), args.check_episodes, window=args.context_steps,
              cross_task=args.cross_task, views=views)
    return 0


def demonstrations(args, tasks):
    """The episodes to train on and the robot they imply: the sim's expert, bags, or a dataset."""
    from aura_ros.core import arm, topics
    from aura_ros.data import Demonstrations

    cameras = tuple(c.strip() for c in args.cameras.split(",") if c.strip()) if args.cameras else None
    if args.bags and args.lerobot:
        raise ValueError("--bags and --lerobot are two sources; give one")
    if args.bags:
        from aura_ros.data.bags import read_bags

        return read_bags(args.bags, cameras=cameras, joint_states=args.joint_states, commands=args.commands,
                         instruction_topic=args.instruction_topic, instruction=args.instruction,
                         episode_marker=args.episode_marker)
    if args.lerobot:
        from aura_ros.data.lerobot import read_lerobot

        return read_lerobot(args.lerobot, cameras=cameras, instruction=args.instruction)
    from aura_ros.backends.transformers.train import default_streams
    from aura_ros.sim.tasks import check_cameras, expert_stream, parse_mix, stream_specs

    views = check_cameras(cameras or ("top",))
    if args.mix:
        mix = parse_mix(args.mix)
        seeds = [args.sim_seed + i for i in range(args.streams)]
        episodes = [expert_stream(s, stream_specs(s, args.tasks_per_stream, mix, args.cross_task), cameras=views)
                    for s in seeds]
    else:
        episodes = default_streams(args.streams, seed=args.seed, max_distractor=args.max_distractor, tasks=tasks,
                                   cross_task=args.cross_task, cameras=views)
    return Demonstrations(episodes, arm.JOINT_NAMES, arm.LOW, arm.HIGH, arm.DISCRETE_JOINTS,
                          cameras=tuple(topics.SIM_CAMERA_TOPICS[v] for v in views), source="sim")


def with_robot_limits(demos, args):
    """The demonstrations with the limits and discrete joints the user gave (the robot's own, from
    its URDF) instead of those derived from the data. Limits that cut off recorded actions are
    refused: the policy could not express what it is trained on."""
    from dataclasses import replace

    import numpy as np

    def values(text: str, flag: str) -> tuple[float, ...]:
        try:
            out = tuple(float(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise ValueError(f"{flag} takes numbers, comma-separated; got {text!r}") from None
        if len(out) != len(demos.joint_names):
            raise ValueError(f"{flag} has {len(out)} value(s) for {len(demos.joint_names)} joints "
                             f"{list(demos.joint_names)}")
        return out

    low = values(args.low, "--low") if getattr(args, "low", None) else demos.low
    high = values(args.high, "--high") if getattr(args, "high", None) else demos.high
    if any(lo >= hi for lo, hi in zip(low, high)):
        raise ValueError(f"every --low must be below its --high; got {list(low)} and {list(high)}")
    actions = np.concatenate([np.asarray(e.actions) for e in demos.episodes])
    outside = [n for j, n in enumerate(demos.joint_names)
               if actions[:, j].min() < low[j] - 1e-9 or actions[:, j].max() > high[j] + 1e-9]
    if outside:
        raise ValueError(f"recorded actions of {', '.join(outside)} lie outside the limits given; widen them")
    discrete = demos.discrete_joints
    given = getattr(args, "discrete_joints", None)
    if given is not None:
        discrete = tuple(n.strip() for n in given.split(",") if n.strip())
        unknown = [n for n in discrete if n not in demos.joint_names]
        if unknown:
            raise ValueError(f"--discrete-joints names {unknown}, not among the joints {list(demos.joint_names)}")
    return replace(demos, low=tuple(low), high=tuple(high), discrete_joints=tuple(discrete))


def policy_config(demos):
    from aura_ros.core.config import PolicyConfig

    return PolicyConfig(joint_names=tuple(demos.joint_names), low=tuple(demos.low), high=tuple(demos.high),
                        discrete_joints=tuple(demos.discrete_joints), n_cameras=len(demos.cameras))


def camera_topics(demos, given: str | None) -> tuple[str, ...]:
    """The node's image topics, one per camera of the demonstrations: ``given`` (comma-separated),
    else the recorded topic, or for a dataset's ``observation.images.<name>`` the topic
    ``<name>/image`` (the first camera: the node's default ``image``)."""
    from aura_ros.core import topics

    if given:
        names = tuple(c.strip() for c in given.split(",") if c.strip())
        if len(names) != len(demos.cameras):
            raise ValueError(f"--camera-topics names {len(names)} topic(s) for {len(demos.cameras)} camera(s) "
                             f"{list(demos.cameras)}")
        return names
    prefix = "observation.images."
    if not any(c.startswith(prefix) for c in demos.cameras):
        return tuple(demos.cameras)
    return tuple(topics.REL_IMAGE if k == 0 else f"{c[len(prefix):] if c.startswith(prefix) else c}/image"
                 for k, c in enumerate(demos.cameras))


def write_node_params(out_dir: Path, demos, pcfg, budget_mb: float, camera_topic_names=None) -> Path:
    """The node's parameters for this policy, in ``ros2 launch ... params_file:=`` form: what it
    must be told that the weights do not say (the robot's joints and limits, its cameras, the budget)."""
    import yaml

    def strings(values) -> list[str]:
        return list(values) or [""]  # a ROS string array cannot be empty: [""] is the node's "none"

    params = {
        "model.path": str(Path(out_dir).resolve()),
        "image.camera_topics": strings(camera_topic_names or demos.cameras),
        "action.joint_names": strings(pcfg.joint_names),
        "action.low": [float(x) for x in pcfg.low],
        "action.high": [float(x) for x in pcfg.high],
        "action.discrete_joints": strings(pcfg.discrete_joints),
        "action.n_bins": int(pcfg.n_bins),
        "memory.vram_budget_mb": float(budget_mb),
    }
    path = Path(out_dir) / NODE_PARAMS_FILE
    header = ("# Written by `aura-ros train` for the policy in this folder:\n"
              f"#   ros2 launch aura_ros policy.launch.py params_file:={path.resolve()}\n"
              f"# Trained on {len(demos.episodes)} episode(s) from {demos.source or 'the sim'}.\n")
    path.write_text(header + yaml.safe_dump({"/**": {"ros__parameters": params}}, sort_keys=False))
    return path


def record_robot(out_dir: Path, demos) -> None:
    """The robot the policy was trained for, in the model folder's training record."""
    import json

    from aura_ros.backends.transformers.train import TRAIN_INFO_FILE

    info_file = Path(out_dir) / TRAIN_INFO_FILE
    info = json.loads(info_file.read_text())
    info["robot"] = {"joint_names": list(demos.joint_names), "low": list(demos.low), "high": list(demos.high),
                     "discrete_joints": list(demos.discrete_joints), "cameras": list(demos.cameras),
                     "fps": demos.fps, "source": demos.source, "episodes": len(demos.episodes),
                     "steps": demos.n_steps}
    info_file.write_text(json.dumps(info, indent=2) + "\n")


def check(out_dir: Path, tasks, n_per_task: int, distractor_steps: int = 20, window: int | None = None,
          cross_task: float | None = None, views: tuple[str, ...] = ("top",)) -> dict:
    """The held-out check: printed, and stored in the model folder's training record. ``window``:
    recent steps of the gated context (None: the trainer's ``context_steps``). Held-out streams
    (tasks back to back with no reset, ``n_per_task`` streams of 4 tasks): each task type's decisions
    with the previous task's memory in view, recall_previous among them."""
    import json

    from aura_ros.backends.transformers.train import (
        DEFAULT_CROSS_TASK,
        TRAIN_INFO_FILE,
        TrainConfig,
        decision_accuracy,
        held_out_streams,
    )

    window = TrainConfig.context_steps if window is None else window
    cross_task = DEFAULT_CROSS_TASK if cross_task is None else cross_task
    from aura_ros.core.config import PolicyConfig

    streams = held_out_streams(n_per_task, distractor_steps, tasks, cross_task=cross_task, cameras=views)
    acc = decision_accuracy(out_dir, streams, PolicyConfig(n_cameras=len(views)), recent_steps=window)
    for task, kinds in acc.items():
        print(f"held-out {task} (D={distractor_steps}, in {n_per_task} streams of 4 tasks with no reset, gated "
              f"contexts with {window} recent steps): action right at decision steps {kinds['decision']:.2f}, "
              f"at steady steps {kinds['steady']:.2f}")
    info_file = Path(out_dir) / TRAIN_INFO_FILE
    info = json.loads(info_file.read_text())
    info["held_out"] = {"streams": n_per_task, "tasks_per_stream": 4, "distractor_steps": distractor_steps,
                        "recent_steps": window, "cross_task": cross_task,
                        "context": "what the action-gated cache holds (teacher-forced), the task before in view",
                        "accuracy": acc}
    info_file.write_text(json.dumps(info, indent=2) + "\n")
    return acc


def add_sim_dataset_parser(sub) -> argparse.ArgumentParser:
    from aura_ros.backends.transformers.train import DEFAULT_CROSS_TASK

    p = sub.add_parser("sim-dataset", help="write the sim expert's streams as a LeRobotDataset v3 folder (to try "
                                           "the training route without a robot)")
    p.add_argument("--out", required=True, help="the dataset folder (must not exist)")
    p.add_argument("--cameras", default="top", help="the sim's views, comma-separated (top, wrist)")
    p.add_argument("--mix", default="cue_recall:20,cue_recall:200,latent_fact:50",
                   help="stream i is what the sim node runs with seed=--sim-seed+i and task_mix=MIX")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--tasks-per-stream", type=int, default=6)
    p.add_argument("--sim-seed", type=int, default=10_000)
    p.add_argument("--cross-task", type=float, default=DEFAULT_CROSS_TASK)
    p.add_argument("--fps", type=float, default=10.0, help="the recorded rate written into the dataset")
    p.add_argument("--png", action="store_true", help="frames as PNG image features (lossless) instead of mp4")
    p.set_defaults(func=run_sim_dataset)
    return p


def run_sim_dataset(args) -> int:
    from aura_ros.data.lerobot import write_lerobot

    ns = argparse.Namespace(bags=None, lerobot=None, cameras=args.cameras, mix=args.mix, streams=args.streams,
                            tasks_per_stream=args.tasks_per_stream, sim_seed=args.sim_seed, cross_task=args.cross_task)
    try:
        demos = demonstrations(ns, ())
        out = write_lerobot(demos, args.out, fps=args.fps, video=not args.png)
    except (ValueError, FileExistsError) as exc:
        print(f"aura-ros sim-dataset: {exc}")
        return 2
    print(f"wrote {out}: {len(demos.episodes)} episodes, {demos.n_steps} steps, cameras {list(demos.cameras)}")
    return 0
