"""Record the sim expert's streams as rosbag2 bags over DDS, one bag per stream (run by hand).

What a user does on a robot with `ros2 bag record` while teleoperating, done with the sim: the sim
node in expert mode (the scripted expert teleoperates it: cameras, joint states, the commands it
sends, each task's instruction) and `aura-ros record` as two processes on localhost DDS. Stream i
is the sim node with seed=SEED+i, task_mix=MIX, task_cross_task=CROSS for TASKS tasks: exactly
what `aura-ros train --mix MIX --sim-seed SEED --tasks-per-stream TASKS --cross-task CROSS` builds
in process, so a policy trained from these bags can be set beside one trained in process.

    .venv/bin/python scripts/record_sim_demos.py --out out/bags --streams 12 --tasks 6 \
        --mix cue_recall:20,cue_recall:100,cue_recall:200,latent_fact:50 --seed 20000 --cross-task 0.25
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from aura_ros.ros.env import local_ros_env

RECORD = "import sys; from aura_ros.tools.record import main; sys.exit(main(sys.argv[1:]))"
SIM = "from aura_ros.ros.sim_node import main; main()"
TOPICS = ("/image", "/wrist/image", "/joint_states", "/joint_trajectory", "/instruction", "/task/result")


def record_stream(out: Path, seed: int, args, domain: int) -> float:
    env = local_ros_env(domain_id=domain)
    t0 = time.monotonic()
    recorder = subprocess.Popen([sys.executable, "-c", RECORD, "--out", str(out), "--topics", *TOPICS,
                                 "--until-results", str(args.tasks), "--results-topic", "/task/result"], env=env)
    sim = subprocess.Popen([sys.executable, "-c", SIM, "--ros-args", "-p", f"task_mix:={args.mix}",
                            "-p", "task:=cue_recall", "-p", f"seed:={seed}",
                            "-p", f"task_cross_task:={args.cross_task}",
                            "-p", f"rate_hz:={args.rate}", "-p", "task_expert:=true", "-p", "cameras:=[top, wrist]",
                            "-p", "wait_for_subscribers:=1"], env=env, stdout=subprocess.DEVNULL)
    try:
        code = recorder.wait(timeout=args.timeout)
    finally:
        sim.send_signal(2)
        sim.wait(timeout=30)
    if code != 0:
        raise SystemExit(f"recorder exited {code} on stream seed {seed}")
    return time.monotonic() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--streams", type=int, default=12)
    p.add_argument("--tasks", type=int, default=6)
    p.add_argument("--mix", default="cue_recall:20,cue_recall:100,cue_recall:200,latent_fact:50")
    p.add_argument("--seed", type=int, default=20000)
    p.add_argument("--cross-task", type=float, default=0.25)
    p.add_argument("--rate", type=float, default=100.0, help="sim steps per second (lockstep with the expert)")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--domain", type=int, default=61)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(args.streams):
        bag = out / f"stream_{i:02d}"
        seconds = record_stream(bag, args.seed + i, args, args.domain)
        print(f"{bag}: seed {args.seed + i}, {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
