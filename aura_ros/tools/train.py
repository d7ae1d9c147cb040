"""`aura-ros train`: behaviour cloning of a VLM policy on the sim's memory tasks, run as streams
of tasks back to back without a reset (the robot's endless episode).

    aura-ros train --out my-policy                      # the default's recipe
    aura-ros train --out my-policy --model /models/vla  # any model load_model supports (with action tokens)
    aura-ros train --out tiny --steps 20 --streams 4    # a quick check

The recipe and the gated training contexts: aura_ros.backends.transformers.train. The result is
a model folder that ``--model`` / ``model.path`` / ``VLMPolicy.from_pretrained`` accept.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    from aura_ros.backends.transformers.train import DEFAULT_CROSS_TASK, TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="behaviour-clone a VLM policy on expert episodes of the memory tasks")
    p.add_argument("--out", required=True, help="folder the trained model is written to")
    p.add_argument("--model", default=None,
                   help="model folder or hub id to fine-tune (default: the embedded default's architecture, fresh)")
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
    from aura_ros.backends.transformers.train import TrainConfig, default_streams, train

    tasks = []
    for item in args.tasks.split(","):
        name, _, weight = item.partition(":")
        tasks.append((name.strip(), float(weight or 1.0)))
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, context_steps=args.context_steps,
                      seed=args.seed, threads=args.threads, log_every=args.log_every,
                      single_frame_warmup_steps=args.single_frame_warmup_steps,
                      window_curriculum_steps=args.window_curriculum_steps)
    episodes = default_streams(args.streams, seed=args.seed, max_distractor=args.max_distractor, tasks=tuple(tasks),
                               cross_task=args.cross_task)
    result = train(episodes, Path(args.out), model=args.model, config=cfg, progress=not args.no_progress,
                   init_seed=args.seed)
    print(f"trained on {result.n_episodes} episodes in {result.seconds:.0f} s: loss {result.first_loss:.4f} -> "
          f"{result.final_loss:.4f}; wrote {result.out_dir}")
    if args.check_episodes > 0:
        check(result.out_dir, tuple(tasks), args.check_episodes, window=args.context_steps,
              cross_task=args.cross_task)
    return 0


def check(out_dir: Path, tasks, n_per_task: int, distractor_steps: int = 20, window: int | None = None,
          cross_task: float | None = None) -> dict:
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
    streams = held_out_streams(n_per_task, distractor_steps, tasks, cross_task=cross_task)
    acc = decision_accuracy(out_dir, streams, recent_steps=window)
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
