"""Many robots on one model (`aura-ros bench serve`): N robots served from one process on one
loaded model, against N separate processes each loading its own.

Each robot is a policy fed by its own endless stream of the sim's memory tasks (in process, no
DDS), stepping on a thread of its own as the node's inference worker does, as fast as it can:

- ``shared``: one process, the model loaded once (``share_loaded_models``), N policies (each its
  own cache, budget and gate) on N threads;
- ``separate``: N processes of one robot each, each loading the model, stepping at the same time.

Every run is a fresh process (the parent only starts them, so its own memory counts nowhere);
the processes load, say "ready", and step together once all are ready. Reported per N and mode:
aggregate steps/s (all robots' steps over the wall time of the stepping), resident memory (the
one process's RSS, or the sum over the N processes), p50/p99 of each robot's step time, and each
robot's allocated KV bytes at its first and last step (and how often they changed: 0 is flat).
The robots step one at a time each on its own thread: no batched forward (see the README).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

MODES = ("shared", "separate")
INSTRUCTION = "pick up the red block and put it in the bin"


# ------------------------------------------------------------------ one process: the worker
def _robot(policy, seed: int, steps: int, start: threading.Barrier, out: dict) -> None:
    from aura_ros.core.types import Observation
    from aura_ros.sim.tasks import make_stream

    stream = make_stream(seed, None)  # endless: tasks back to back, no reset
    times, allocated = [], []
    start.wait()
    for _ in range(steps):
        obs = stream.observe()
        new = obs.new_task and stream.index > 0
        t0 = time.perf_counter()
        act = policy.step(Observation(obs.image, obs.joint_state, instruction=obs.instruction if new else None,
                                      new_task=new))
        times.append(time.perf_counter() - t0)
        allocated.append(act.stats.allocated_bytes)
        stream.apply(act.first)
    out.update(step_ms=np.asarray(times) * 1e3, allocated=allocated, end=time.perf_counter())


def worker(robots: int, steps: int, budget_mb: float, model: str | None, seed: int, share: bool,
           threads: int) -> dict:
    """``robots`` policies in this process, stepped ``steps`` times each on their own threads.
    Prints "ready" once loaded and waits for a line on stdin before stepping (the parent starts
    all processes of a run together)."""
    import psutil
    import torch

    from aura_ros.core.config import PolicyConfig
    from aura_ros.core.registry import make_policy, share_loaded_models, shared_models
    from aura_ros.memory import MIB

    torch.set_num_threads(threads)
    if share:
        share_loaded_models()
    config = PolicyConfig(budget_bytes=int(budget_mb * MIB))
    policies = [make_policy(model, config, instruction=INSTRUCTION) for _ in range(robots)]
    shared = [m["loads"] for ms in shared_models().values() for m in ms]
    process = psutil.Process()
    rss_loaded = process.memory_info().rss
    print("ready", flush=True)
    sys.stdin.readline()
    start = threading.Barrier(robots + 1)
    results = [{} for _ in range(robots)]
    threads_ = [threading.Thread(target=_robot, args=(p, seed + 7919 * i, steps, start, results[i]),
                                 name=f"robot-{i}") for i, p in enumerate(policies)]
    for t in threads_:
        t.start()
    rss_samples = []
    start.wait()
    t0 = time.perf_counter()
    while any(t.is_alive() for t in threads_):
        rss_samples.append(process.memory_info().rss)
        time.sleep(0.2)
    for t in threads_:
        t.join()
    wall = max(r["end"] for r in results) - t0
    rss_end = process.memory_info().rss
    return dict(
        robots=robots, steps=steps, wall_s=wall, t0=time.time() - (time.perf_counter() - t0), rss_loaded=rss_loaded,
        rss_end=rss_end, rss_peak=max([rss_end, *rss_samples]),
        model_loads=sum(shared) or robots,  # a backend that does not share: each policy loaded its own
        per_robot=[dict(p50_ms=float(np.percentile(r["step_ms"], 50)), p99_ms=float(np.percentile(r["step_ms"], 99)),
                        kv_first=int(r["allocated"][0]), kv_last=int(r["allocated"][-1]),
                        kv_changes=int(np.count_nonzero(np.diff(r["allocated"])))) for r in results],
        # RSS over the run: the mean of the first tenth of the samples against that of the last tenth.
        rss_first_tenth=int(np.mean(rss_samples[: max(1, len(rss_samples) // 10)])) if rss_samples else rss_end,
        rss_last_tenth=int(np.mean(rss_samples[-max(1, len(rss_samples) // 10):])) if rss_samples else rss_end)


# ------------------------------------------------------------------ the parent: runs and the report
def _spawn(robots: int, steps: int, budget_mb: float, model: str | None, seed: int, share: bool,
           threads: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "aura_ros.bench.serve", "--worker", "--robots", str(robots), "--steps", str(steps),
           "--budget-mb", str(budget_mb), "--seed", str(seed), "--threads", str(threads)]
    if model:
        cmd += ["--model", model]
    if share:
        cmd.append("--share")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[2])


def _expect_line(proc: subprocess.Popen, prefix: str, what: str) -> str:
    """The worker's next stdout line that starts with ``prefix`` (a library may print others)."""
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.wait(30)
            raise RuntimeError(f"a bench worker exited with {proc.returncode} before {what} (its stderr is above)")
        if line.startswith(prefix):
            return line.strip()


def run_mode(mode: str, n: int, steps: int, budget_mb: float, model: str | None, seed: int, threads: int) -> dict:
    """One measurement: ``n`` robots shared in one process, or in ``n`` processes of one robot."""
    if mode not in MODES:
        raise ValueError(f"mode is one of {MODES}, got {mode!r}")
    if mode == "shared":
        procs = [_spawn(n, steps, budget_mb, model, seed, True, threads)]
    else:
        procs = [_spawn(1, steps, budget_mb, model, seed + 7919 * i, False, threads) for i in range(n)]
    try:
        for p in procs:
            _expect_line(p, "ready", "loading")
        for p in procs:  # all loaded: step together
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(_expect_line(p, "{", "its result")) for p in procs]
        for p in procs:
            p.wait(60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    per_robot = [r for res in results for r in res["per_robot"]]
    begin = min(res["t0"] for res in results)
    end = max(res["t0"] + res["wall_s"] for res in results)
    return dict(mode=mode, robots=n, steps_per_robot=steps, processes=len(procs),
                aggregate_steps_per_s=n * steps / (end - begin),
                rss_mib=sum(res["rss_end"] for res in results) / 2**20,
                rss_peak_mib=sum(res["rss_peak"] for res in results) / 2**20,
                rss_loaded_mib=sum(res["rss_loaded"] for res in results) / 2**20,
                rss_growth_mib=sum(res["rss_last_tenth"] - res["rss_first_tenth"] for res in results) / 2**20,
                model_loads=sum(res["model_loads"] for res in results),
                p50_ms=[r["p50_ms"] for r in per_robot], p99_ms=[r["p99_ms"] for r in per_robot],
                kv_first=[r["kv_first"] for r in per_robot], kv_last=[r["kv_last"] for r in per_robot],
                kv_changes=[r["kv_changes"] for r in per_robot])


def table(rows: list[dict]) -> str:
    head = ("| robots | mode | processes | model loads | aggregate steps/s | RSS (MiB) | RSS growth (MiB) | "
            "p50 step per robot (ms) | p99 step per robot (ms) | KV per robot first -> last (KiB) | KV changes |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        kv = sorted({(a, b) for a, b in zip(r["kv_first"], r["kv_last"])})
        lines.append(
            f"| {r['robots']} | {r['mode']} | {r['processes']} | {r['model_loads']} | "
            f"{r['aggregate_steps_per_s']:.1f} | {r['rss_mib']:.0f} | {r['rss_growth_mib']:+.1f} | "
            f"{min(r['p50_ms']):.1f}-{max(r['p50_ms']):.1f} | {min(r['p99_ms']):.1f}-{max(r['p99_ms']):.1f} | "
            f"{', '.join(f'{a / 1024:.0f} -> {b / 1024:.0f}' for a, b in kv)} | {sum(r['kv_changes'])} |")
    return head + "\n".join(lines) + "\n"


def run(robots=(1, 2, 4, 8), steps: int = 300, budget_mb: float = 0.5, model: str | None = None, seed: int = 0,
        threads: int = 1, modes=MODES, out: Path = Path("out/bench_serve"), progress=print) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in robots:
        for mode in modes:
            row = run_mode(mode, n, steps, budget_mb, model, seed, threads)
            rows.append(row)
            if progress:
                progress(f"{n} robots {mode:>8}: {row['aggregate_steps_per_s']:7.1f} steps/s, RSS "
                         f"{row['rss_mib']:7.0f} MiB, p50 {np.median(row['p50_ms']):6.1f} ms, "
                         f"p99 {np.median(row['p99_ms']):6.1f} ms, KV changes {sum(row['kv_changes'])}")
    meta = dict(steps_per_robot=steps, budget_mb=budget_mb, model=model or "embedded default", threads=threads,
                seed=seed, cpus=os.cpu_count())
    (out / "serve.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    with open(out / "serve.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["robots", "mode", "processes", "model_loads", "aggregate_steps_per_s", "rss_mib",
                    "rss_growth_mib", "robot", "p50_ms", "p99_ms", "kv_first", "kv_last", "kv_changes"])
        for r in rows:
            for i in range(r["robots"]):
                w.writerow([r["robots"], r["mode"], r["processes"], r["model_loads"],
                            f"{r['aggregate_steps_per_s']:.3f}", f"{r['rss_mib']:.1f}", f"{r['rss_growth_mib']:.2f}",
                            i, f"{r['p50_ms'][i]:.3f}", f"{r['p99_ms'][i]:.3f}", r["kv_first"][i], r["kv_last"][i],
                            r["kv_changes"][i]])
    (out / "serve_table.md").write_text(table(rows))
    return rows


def _worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m aura_ros.bench.serve --worker")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--robots", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--budget-mb", type=float, required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--share", action="store_true")
    a = p.parse_args(argv)
    result = worker(a.robots, a.steps, a.budget_mb, a.model, a.seed, a.share, a.threads)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
