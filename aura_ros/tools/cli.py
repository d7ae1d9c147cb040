"""The `aura-ros` command: the demo and the benchmarks.

    aura-ros demo                   # the closed loop over real topics, with a plot
    aura-ros serve --robots a,b     # one process, one model, a policy node per robot namespace
    aura-ros bench memory           # flat memory / latency per policy (20k steps by default)
    aura-ros bench recall           # what the memory keeps, with real SmolLM2-135M weights
    aura-ros bench tasks            # closed-loop success on the memory tasks, per memory policy
    aura-ros bench streams          # the endless run: tasks back to back without a reset
    aura-ros bench cross-host       # the policy on another host: loop and recovery over a link (root)
    aura-ros bench serve            # N robots on one model in one process against N processes
    aura-ros soak --steps 100000    # node + sim, invariants checked on every message
    aura-ros train --out DIR        # behaviour-clone a policy on the sim's memory tasks
    aura-ros export-gguf            # that policy as a GGUF pair for the llama.cpp backend
    aura-ros replay BAG             # the policy over a recorded rosbag2, to an MCAP (--eviction a,b compares)
    aura-ros record --out DIR --topics /image /joint_states ...   # a rosbag2 (MCAP) where rosbag2 is missing
    aura-ros foxglove               # the policy on the sim, served live to Foxglove on ws://127.0.0.1
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _threads(n: int) -> None:
    import torch

    if n > 0:
        torch.set_num_threads(n)


def _model_options(args) -> dict:
    """--backend / --mmproj / --kv-type / --threads as the chosen backend's loading options."""
    from aura_ros.core.registry import backend_options

    return backend_options(args.model, getattr(args, "mmproj", None), getattr(args, "kv_type", None), args.threads,
                           backend=getattr(args, "backend", "auto"))


def _gguf_arguments(p) -> None:
    from aura_ros.core.registry import BACKENDS

    p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS],
                   help="backend that runs the model (auto: a .gguf file selects llama_cpp, anything else "
                        "transformers; mlx after `make mlx`)")
    p.add_argument("--mmproj", default=None, help="GGUF models: the projector GGUF (images through libmtmd)")
    p.add_argument("--kv-type", default=None, help="GGUF models: KV cache type f16 (default), q8_0 or q4_0")


def _bench_memory(args) -> int:
    from aura_ros.bench import memory

    _threads(args.threads)
    ratios = memory.run(steps=args.steps, budget_mb=args.budget_mb, model=args.model,
                        policies=tuple(args.policies.split(",")), unbounded_cap=args.unbounded_cap, out=Path(args.out),
                        model_kwargs=_model_options(args))
    print(f"\nwrote {args.out}/memory_checkpoints.csv, memory_table.md, memory.png, memory_summary.json")
    for k, v in ratios.items():
        print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    return 0


def _bench_scaling(args) -> int:
    from aura_ros.bench import scaling
    from aura_ros.core.config import PolicyConfig

    _threads(args.threads)
    if args.block_fraction is None:
        args.block_fraction = PolicyConfig.block_fraction
    scaling.run(budgets=tuple(float(b) for b in args.budgets_mb.split(",")), policies=tuple(args.policies.split(",")),
                block_fraction=args.block_fraction, min_steps=args.min_steps, max_steps=args.max_steps,
                model=args.model, out=Path(args.out), evict_every=args.evict_every, model_kwargs=_model_options(args))
    print((Path(args.out) / "scaling_table.md").read_text())
    return 0


def _bench_recall(args) -> int:
    from aura_ros.bench import recall

    return recall.run_from_args(args)


def _bench_tasks(args) -> int:
    from aura_ros.bench import tasks

    if args.merge:
        summary = tasks.merge([Path(p) for p in args.merge.split(",")], Path(args.out))
        print((Path(args.out) / "tasks_table.md").read_text())
        return 0
    _threads(args.threads)
    summary = tasks.run(tasks=tuple(args.tasks.split(",")), policies=tuple(p for p in args.policies.split(",") if p),
                        distractors=tuple(int(d) for d in args.distractors.split(",")), episodes=args.episodes,
                        budget_tokens=args.budget_tokens, budget_mb=args.budget_mb, unbounded_cap=args.unbounded_cap,
                        recent_steps=args.recent_steps, novelty_weight=args.novelty_weight, model=args.model,
                        seed=args.seed, expert=not args.no_expert, out=Path(args.out), progress=not args.no_progress,
                        model_kwargs=_model_options(args))
    out = Path(args.out)
    print(f"\nwrote {out}/tasks_episodes.csv, tasks_success.csv, tasks_table.md, tasks_success.png, "
          f"tasks_summary.json ({summary['meta']['seconds']:.0f} s)")
    print((out / "tasks_table.md").read_text())
    return 0


def _bench_streams(args) -> int:
    from aura_ros.bench import streams

    _threads(args.threads)
    try:
        streams.parse_mix(args.mix)  # a bad --mix: one line and exit code 2
    except ValueError as exc:
        print(f"aura-ros bench streams: {exc}")
        return 2
    summary = streams.run(policies=tuple(p for p in args.policies.split(",") if p),
                          budgets_mb=tuple(float(b) for b in args.budget_mb.split(",")), mix=args.mix,
                          tasks_per_stream=args.tasks, streams=args.streams, cross_task=args.cross_task,
                          modes=("stream",) if args.no_reset_reference else streams.MODES,
                          recent_steps=args.recent_steps, novelty_weight=args.novelty_weight,
                          max_context_steps=args.max_context_steps, model=args.model, seed=args.seed,
                          out=Path(args.out), progress=not args.no_progress, model_kwargs=_model_options(args),
                          cameras=tuple(c for c in args.cameras.split(",") if c))
    out = Path(args.out)
    print(f"\nwrote {out}/streams_tasks.csv, streams_by_index.csv, streams_table.md, streams_success.png, "
          f"streams_summary.json ({len(summary['rows'])} rows)")
    print((out / "streams_table.md").read_text())
    return 0


def _bench_serve(args) -> int:
    from aura_ros.bench import serve

    try:
        robots = tuple(int(n) for n in args.robots.split(",") if n)
        modes = tuple(m for m in args.modes.split(",") if m)
        if not robots or min(robots) < 1 or not modes or set(modes) - set(serve.MODES):
            raise ValueError
    except ValueError:
        print(f"aura-ros bench serve: --robots is a list of counts (1,2,4,8), --modes from {','.join(serve.MODES)}")
        return 2
    out = Path(args.out)
    serve.run(robots=robots, steps=args.steps, budget_mb=args.budget_mb, model=args.model, seed=args.seed,
              threads=args.threads, modes=modes, out=out)
    print(f"\nwrote {out}/serve.json, serve.csv, serve_table.md")
    print((out / "serve_table.md").read_text())
    return 0


def _bench_cameras(args) -> int:
    from aura_ros.bench import cameras

    _threads(args.threads)
    cameras.run(steps=args.steps, budget_mb=args.budget_mb, rounds=args.rounds, model=args.model, out=Path(args.out))
    return 0


def _bench_chunks(args) -> int:
    from aura_ros.bench import chunks

    sizes = [int(c) for c in args.chunks.split(",") if c.strip()]
    if not sizes or min(sizes) < 1 or max(sizes) > 64:
        print(f"aura-ros bench chunks: --chunks takes sizes from 1 to 64, got {args.chunks!r}")
        return 2
    reports = chunks.run(chunks=sizes, rate_hz=args.rate_hz, min_step_s=args.min_step_s,
                         refill_below=args.refill_below, seconds=args.seconds, warmup_s=args.warmup_s,
                         out=Path(args.out), sim_rate_hz=args.sim_rate_hz)
    print(chunks.table(reports))
    return 0 if all(r.exit_codes.get("policy_node") == 0 for r in reports) else 1


def _bench_cross_host(args) -> int:
    from aura_ros.bench import cross_host

    width, _, height = args.size.partition("x")
    modes = tuple(m for m in args.modes.split(",") if m)
    if not width.isdigit() or not height.isdigit() or not modes or set(modes) - set(cross_host.MODES):
        print(f"aura-ros bench cross-host: --size WxH and --modes from {','.join(cross_host.MODES)}")
        return 2
    try:
        cross_host.run(modes=modes, width=int(width), height=int(height), rate_hz=args.rate_hz, cuts=args.cuts,
                       cut_s=args.cut_s, long_cut_s=args.long_cut_s, window_s=args.window_s,
                       discovery=args.discovery, out=Path(args.out), profile=args.profile)
    except RuntimeError as exc:
        print(f"aura-ros bench cross-host: {exc}")
        return 2
    return 0


def _demo(args) -> int:
    from aura_ros.tools.demo import run_demo

    return run_demo(episodes=args.tasks, distractors=args.distractors, budget_mb=args.budget_mb,
                    rate_hz=args.rate_hz, out=Path(args.out), unbounded_steps=args.unbounded_steps, task=args.task,
                    seed=args.seed, threads=args.threads, cross_task=args.cross_task,
                    foxglove_port=None if args.foxglove_port < 0 else args.foxglove_port)


def _soak(args) -> int:
    from aura_ros.tools.soak import run_soak

    rep = run_soak(steps=args.steps, hours=args.hours, budget_mb=args.budget_mb, rate_hz=args.rate_hz,
                   out=Path(args.out), trace_steps=args.trace_steps)
    print(f"soak: {rep.steps} steps in {rep.seconds:.0f} s, KV allocated {rep.allocated_bytes / 2**20:.3f} MiB "
          f"(constant), max position {rep.max_position} <= capacity {rep.capacity_tokens}, RSS growth after "
          f"warm-up {rep.rss_growth:+.2%}, p50 {rep.p50_latency_ms:.1f} ms, writes {rep.writes_total}, "
          f"evictions {rep.evictions_total}")
    for v in rep.violations:
        print(f"VIOLATION: {v}")
    if rep.interrupted:
        print(f"soak: interrupted; the report in {args.out} covers the {rep.steps} steps run")
    return 1 if rep.violations else 130 if rep.interrupted else 0


class _NodeDefault:
    """The default of one of the policy node's parameters (aura_ros/ros/params.py, their one home),
    read only when a command uses it or --help shows it: the table imports rclpy, which most
    subcommands run without."""

    def __init__(self, name: str):
        self.name = name

    @property
    def value(self):
        from aura_ros.ros.params import POLICY_PARAMS

        return POLICY_PARAMS.by_name[self.name].default

    def __str__(self) -> str:
        return f"{self.value:g}" if isinstance(self.value, float) else str(self.value)


def _value(arg):
    """An option's value: what was given, or the node's default."""
    return arg.value if isinstance(arg, _NodeDefault) else arg


def _replay_floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise _ReplayUsage(f"{flag} takes comma-separated numbers; got {text!r}") from None


class _ReplayUsage(Exception):
    """Bad replay arguments: one line, exit code 2."""


def _replay_robot(args) -> dict:
    """The policy's joints and limits from --joint-names/--low/--high (default: the sim arm's),
    checked the way the node checks its action.* parameters."""
    import math

    from aura_ros.core import arm

    names = tuple(n.strip() for n in args.joint_names.split(",")) if args.joint_names else arm.JOINT_NAMES
    low = _replay_floats(args.low, "--low") if args.low is not None else None
    high = _replay_floats(args.high, "--high") if args.high is not None else None
    if args.joint_names and (low is None or high is None):
        raise _ReplayUsage(f"--joint-names has {len(names)} joints: give one limit each with --low=... and --high=...")
    low = arm.LOW if low is None else low
    high = arm.HIGH if high is None else high
    if not len(names) == len(low) == len(high) or not all(names):
        raise _ReplayUsage(f"{'--joint-names has' if args.joint_names else 'the default arm has'} {len(names)} "
                           f"joints ({','.join(names)}); --low and --high need one limit each (got {len(low)} and "
                           f"{len(high)})")
    bad = [f"{n} ({lo:g} .. {hi:g})" for n, lo, hi in zip(names, low, high)
           if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi)]
    if bad:
        raise _ReplayUsage(f"--low must be below --high, both finite, for every joint; not for {', '.join(bad)}")
    return dict(joint_names=names, low=low, high=high,
                discrete_joints=tuple(n for n in names if n in arm.DISCRETE_JOINTS))


def _replay(args) -> int:
    """Replay a bag; several budgets/evictions run side by side and print a comparison table."""
    from aura_ros.core.config import PolicyConfig
    from aura_ros.memory.budget import BudgetError
    from aura_ros.tools import replay

    _threads(args.threads)
    try:
        budgets = _replay_floats(str(args.budget_mb), "--budget-mb")
        if not budgets or any(not b > 0 for b in budgets):
            raise _ReplayUsage(f"--budget-mb takes positive sizes in MiB; got {args.budget_mb!r}")
        robot = _replay_robot(args)
    except _ReplayUsage as exc:
        print(f"aura-ros replay: error: {exc}", file=sys.stderr)
        return 2
    evictions = args.eviction.split(",")
    variants = []
    for e in evictions:
        for b in budgets:
            name = "_".join(([e] if len(evictions) > 1 else []) + ([f"budget_{b:g}MB"] if len(budgets) > 1 else []))
            variants.append((name or "replay", PolicyConfig(budget_bytes=int(b * 2**20), eviction=e,
                                                            recent_steps=_value(args.recent_steps), **robot)))
    bag = Path(args.bag)
    out = Path(args.out) if args.out else Path("out/replay") / (bag.stem or bag.name)
    kwargs = dict(model=args.model, instruction=args.instruction, camera_topic=args.camera_topic,
                  joints_topic=args.joints_topic, command_topic=args.command_topic, rate_hz=args.rate,
                  map_period_s=args.map_period, max_steps=args.max_steps, progress=not args.no_progress,
                  overwrite=args.overwrite, zero_joints=args.zero_joints,
                  more_cameras=tuple(c.strip() for c in args.more_cameras.split(",") if c.strip()))
    try:
        sel = replay.inspect_bag(bag, args.camera_topic, args.joints_topic, args.command_topic, args.zero_joints)
        print(f"aura-ros replay: camera {sel.camera} ({sel.camera_type}, {sel.camera_count} frames)"
              + "".join(f", camera {k + 2} {c}" for k, c in enumerate(kwargs["more_cameras"])) + ", joint states "
              + (sel.joints or "none (--zero-joints: every joint at zero)")
              + (f", recorded commands {sel.commands}" if sel.commands else "")
              + (f", instructions {sel.instruction}" if sel.instruction else ""), flush=True)
        if args.zero_joints:
            print(f"aura-ros replay: warning: --zero-joints: the policy sees {', '.join(robot['joint_names'])} at "
                  f"zero (clipped into --low/--high) on every step, an arm that never moves; its commands are not "
                  f"what it would send on the robot", file=sys.stderr)
        if len(variants) == 1:
            results = [replay.replay(bag, out, variants[0][1], name=variants[0][0], **kwargs)]
        else:
            results = replay.compare(bag, variants, out, **kwargs)
    except (replay.BagError, FileExistsError, BudgetError) as exc:
        print(f"aura-ros replay: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(replay.comparison_table(results))
    for r in results:
        print(f"wrote {r.out} ({r.steps} steps; open it in Foxglove with config/foxglove_layout.json)"
              + (f"; {len(r.dropped)} frames skipped" if r.dropped else ""))
    return 0


def _record(args) -> int:
    from aura_ros.tools.record import run_from_args

    return run_from_args(args)


def _export_gguf(args) -> int:
    from aura_ros.tools.export_gguf import export_gguf

    try:
        done = export_gguf(args.model, Path(args.out), vision=not args.text_only)
    except (ValueError, FileNotFoundError) as exc:
        print(f"aura-ros export-gguf: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {done.model}" + (f" and {done.mmproj}" if done.mmproj else "") + f" ({done.n_params:,} weights, f32)")
    run = f"--model {done.model}" + (f" --mmproj {done.mmproj}" if done.mmproj else "")
    print(f"run it on llama.cpp: aura-ros bench tasks {run}   (the node: model.path / model.mmproj)")
    return 0


def _foxglove(args) -> int:
    from aura_ros.tools.foxglove_live import run_sim_live

    _threads(args.threads)
    return run_sim_live(steps=args.steps, budget_mb=_value(args.budget_mb), rate_hz=args.rate_hz, port=args.port,
                        mcap_path=Path(args.mcap) if args.mcap else None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # its ROS arguments (--ros-args ...) are rcl's, not argparse's
        from aura_ros.ros import serve

        return serve.main(argv[1:])
    parser = argparse.ArgumentParser(prog="aura-ros", description="aura_ros: demo and benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version")
    sub.add_parser("serve", help="one process, one model, many robots: aura-ros serve --robots a,b "
                                 "[--ros-args --params-file F]  (aura-ros serve --help)")

    demo = sub.add_parser("demo", help="run the sim and the policy node over real topics, then plot")
    demo.add_argument("--task", default="cue_recall", help="memory task the sim runs (cue_recall, latent_fact)")
    demo.add_argument("--tasks", "--episodes", type=int, default=8, dest="tasks",
                      help="tasks back to back with no reset, over DDS (and again in process)")
    demo.add_argument("--cross-task", type=float, default=0.25,
                      help="share of tasks (after the first) that ask for the bin that lit up in the task before")
    demo.add_argument("--distractors", type=int, default=60, help="distractor steps D of each task")
    demo.add_argument("--budget-mb", type=float, default=0.5, help="KV budget of the gated and window caches (MiB)")
    demo.add_argument("--rate-hz", type=float, default=10.0, help="control rate of the node (the sim follows it)")
    demo.add_argument("--unbounded-steps", type=int, default=400,
                      help="steps of the unbounded-cache comparison (it slows down as it grows)")
    demo.add_argument("--seed", type=int, default=0, help="episode i uses seed + i")
    demo.add_argument("--threads", type=int, default=1,
                      help="torch CPU threads of the in-process runs (0: torch's default)")
    demo.add_argument("--foxglove-port", type=int, default=8765,
                      help="Foxglove WebSocket on 127.0.0.1 (0: a free port, -1: off); the run is recorded to "
                           "out/demo/demo.mcap either way")
    demo.add_argument("--out", default="out/demo", help="folder for the plot and the CSV")
    demo.set_defaults(func=_demo)

    soak = sub.add_parser("soak", help="run node + sim and check the memory invariants throughout")
    soak.add_argument("--steps", type=int, default=2000)
    soak.add_argument("--hours", type=float, default=None, help="run for this long instead of --steps")
    soak.add_argument("--budget-mb", type=float, default=0.5)
    soak.add_argument("--rate-hz", type=float, default=50.0)
    soak.add_argument("--trace-steps", type=int, default=1000,
                      help="the report's latency trace: p50/p99 of every this many steps")
    soak.add_argument("--out", default="out/soak")
    soak.set_defaults(func=_soak)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    mem = bench.add_parser("memory", help="memory and latency over a long episode, per policy")
    mem.add_argument("--steps", type=int, default=20000)
    mem.add_argument("--budget-mb", type=float, default=2.0)
    mem.add_argument("--model", default=None, help="model folder, hub id or .gguf file (default: the embedded model)")
    _gguf_arguments(mem)
    mem.add_argument("--policies", default=",".join(("unbounded", "sliding_window", "streaming_llm", "h2o",
                                                      "action_gate")))
    mem.add_argument("--unbounded-cap", type=int, default=2000, help="steps after which the unbounded run stops")
    mem.add_argument("--out", default="out/bench_memory")
    mem.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    mem.set_defaults(func=_bench_memory)

    sv = bench.add_parser("serve", help="N robots on one model in one process, against N processes of one robot")
    sv.add_argument("--robots", default="1,2,4,8", help="robot counts to measure, comma-separated")
    sv.add_argument("--steps", type=int, default=300, help="steps of each robot")
    sv.add_argument("--budget-mb", type=float, default=0.5, help="KV budget of each robot (MiB)")
    sv.add_argument("--model", default=None, help="model folder or hub id (default: the embedded model)")
    sv.add_argument("--modes", default="shared,separate", help="shared (one process) and/or separate (N processes)")
    sv.add_argument("--seed", type=int, default=0, help="robot i's task stream uses seed + 7919 i")
    sv.add_argument("--threads", type=int, default=1, help="torch CPU threads of each process")
    sv.add_argument("--out", default="out/bench_serve")
    sv.set_defaults(func=_bench_serve)

    sc = bench.add_parser("scaling", help="step time at capacity against the budget, per policy, vs the physical limit")
    sc.add_argument("--budgets-mb", default="1,8,64,256")
    sc.add_argument("--policies", default="physical_limit,sliding_window,streaming_llm,h2o,action_gate")
    sc.add_argument("--block-fraction", type=float, default=None,
                    help="when full, free at least this fraction of the capacity at once (0: one step's room; "
                         "default: PolicyConfig's, which the node uses too)")
    sc.add_argument("--min-steps", type=int, default=40,
                    help="timed steps per (budget, policy) at the largest budgets, at least")
    sc.add_argument("--max-steps", type=int, default=400,
                    help="timed steps per (budget, policy) at 1 MiB; fewer as the budget grows")
    sc.add_argument("--evict-every", type=int, default=4,
                    help="every N-th timed step is made to evict (see aura_ros/bench/scaling.py)")
    sc.add_argument("--model", default=None, help="model folder, hub id or .gguf file (default: the embedded model)")
    _gguf_arguments(sc)
    sc.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    sc.add_argument("--out", default="out/bench_scaling")
    sc.set_defaults(func=_bench_scaling)

    rec = bench.add_parser("recall", help="memory quality with real SmolLM2-135M weights")
    from aura_ros.bench.recall import add_arguments as recall_arguments

    recall_arguments(rec)
    rec.set_defaults(func=_bench_recall)

    tb = bench.add_parser("tasks", help="closed-loop success on the memory tasks, per memory policy")
    tb.add_argument("--tasks", default="cue_recall,latent_fact")
    tb.add_argument("--policies", default="unbounded,sliding_window,streaming_llm,h2o,action_gate,action_gate_novelty")
    tb.add_argument("--distractors", default="20,200,2000", help="distractor lengths D (steps)")
    tb.add_argument("--episodes", default="20", help="episodes per (task, policy, D): one N, or one per D (20,20,5)")
    budget = tb.add_mutually_exclusive_group()
    budget.add_argument("--budget-tokens", type=int, default=1024, help="KV budget of every bounded policy, in tokens")
    budget.add_argument("--budget-mb", type=float, default=None, help="KV budget in MiB (instead of --budget-tokens)")
    tb.add_argument("--unbounded-cap", type=int, default=600,
                    help="the unbounded cache runs only episodes of at most this many steps")
    tb.add_argument("--recent-steps", type=int, default=8, help="recent steps every bounded policy keeps")
    tb.add_argument("--novelty-weight", type=float, default=1.0, help="w_novelty of the action_gate_novelty row")
    tb.add_argument("--model", default=None, help="model folder or .gguf file (default: the embedded trained policy)")
    _gguf_arguments(tb)
    tb.add_argument("--seed", type=int, default=0, help="episode i uses seed + i, for every policy and D")
    tb.add_argument("--no-expert", action="store_true", help="skip the scripted expert's reference rows")
    tb.add_argument("--no-progress", action="store_true", help="no progress bar")
    tb.add_argument("--merge", default=None,
                    help="no run: merge the outputs of earlier runs (folders, comma-separated; e.g. one per task) "
                         "into --out")
    tb.add_argument("--out", default="out/bench_tasks")
    tb.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    tb.set_defaults(func=_bench_tasks)

    bs = bench.add_parser("streams", help="the endless run: tasks back to back on one policy, no reset, "
                                          "beside the same tasks with a reset (success by task index)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bs.add_argument("--tasks", type=int, default=20, help="tasks per stream (K)")
    bs.add_argument("--streams", type=int, default=8, help="streams per (policy, budget, mode); stream i uses seed + i")
    bs.add_argument("--mix", default="cue_recall:200",
                    help="task:D[:weight],... each task of a stream is drawn from these")
    bs.add_argument("--cross-task", type=float, default=0.0,
                    help="share of tasks (after the first) that recall the previous task's bin (recall_previous)")
    bs.add_argument("--policies", default="sliding_window,streaming_llm,action_gate",
                    help="memory policies: sliding_window, streaming_llm, action_gate, action_gate_novelty")
    bs.add_argument("--budget-mb", default="0.5", help="KV budget(s) in MiB, comma-separated for a sweep")
    bs.add_argument("--recent-steps", type=int, default=8, help="recent steps every bounded policy keeps")
    bs.add_argument("--novelty-weight", type=float, default=1.0, help="w_novelty of the action_gate_novelty row")
    bs.add_argument("--max-context-steps", type=int, default=None,
                    help="steps the policy reads at most (default: PolicyConfig's; 0: the budget alone)")
    bs.add_argument("--no-reset-reference", action="store_true", help="skip the reference with a reset per task")
    bs.add_argument("--model", default=None, help="model folder or .gguf file (default: the embedded trained policy)")
    _gguf_arguments(bs)
    bs.add_argument("--seed", type=int, default=0)
    bs.add_argument("--cameras", default="top",
                    help="the sim's camera views per observation, comma-separated (top, wrist), as the model was "
                         "trained")
    bs.add_argument("--no-progress", action="store_true", help="no progress bar")
    bs.add_argument("--out", default="out/bench_streams")
    bs.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    bs.set_defaults(func=_bench_streams)

    bc = bench.add_parser("cameras", help="what a second camera costs: tokens per step, steps held, step time")
    bc.add_argument("--steps", type=int, default=300, help="steps per run (the cache fills within the first ~20)")
    bc.add_argument("--budget-mb", type=float, default=0.5, help="KV budget in MiB, the same for both")
    bc.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each figure is the best round's")
    bc.add_argument("--model", default=None, help="model folder (default: the embedded trained policy)")
    bc.add_argument("--out", default="out/bench_cameras")
    bc.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    bc.set_defaults(func=_bench_cameras)

    bk = bench.add_parser("chunks", help="chunk execution with a slow policy step: command rate and gaps at the "
                          "robot over DDS, chunked against one inference per tick")
    bk.add_argument("--chunks", default="32,1", help="action.chunk of each run, comma-separated (1: one inference "
                    "per tick, the comparison)")
    bk.add_argument("--rate-hz", type=float, default=50.0, help="control.rate_hz (and the sim's rate)")
    bk.add_argument("--min-step-s", type=float, default=0.3,
                    help="model.min_step_s: every policy step padded to at least this long")
    bk.add_argument("--sim-rate-hz", type=float, default=None,
                    help="the sim's camera and joint-state rate (default: --rate-hz)")
    bk.add_argument("--refill-below", type=float, default=0.75, help="action.refill_below")
    bk.add_argument("--seconds", type=float, default=60.0, help="the measured window of each run")
    bk.add_argument("--warmup-s", type=float, default=5.0, help="after the first step, before measuring")
    bk.add_argument("--out", default="out/bench_chunks")
    bk.set_defaults(func=_bench_chunks)

    bx = bench.add_parser("cross-host", help="the policy on another host: the loop and its recovery after link "
                                             "cuts, over a veth pair between two network namespaces (root)")
    bx.add_argument("--modes", default="raw,jpeg", help="frames over the link: raw (Image), jpeg (CompressedImage)")
    bx.add_argument("--size", default="96x96", help="frame size WxH")
    bx.add_argument("--rate-hz", type=float, default=10.0, help="sim and control rate")
    bx.add_argument("--cuts", type=int, default=3, help="link cuts per mode")
    bx.add_argument("--cut-s", type=float, default=4.0, help="seconds each cut lasts")
    bx.add_argument("--long-cut-s", type=float, default=0.0,
                    help="one more cut of this length (e.g. 25: past Fast DDS's 20 s participant lease); 0: none")
    bx.add_argument("--window-s", type=float, default=10.0, help="seconds of steady running measured")
    bx.add_argument("--discovery", default="static", choices=("static", "server"),
                    help="static: multicast on the subnet + ROS_STATIC_PEERS; server: a Fast DDS discovery server")
    bx.add_argument("--profile", default="fastdds_network.xml",
                    help="Fast DDS profile from config/ on both hosts (fastdds.xml: the one-host profile)")
    bx.add_argument("--out", default="out/bench_cross_host")
    bx.set_defaults(func=_bench_cross_host)

    ex = sub.add_parser("export-gguf", help="write a policy this package built (default: the embedded one) as "
                                           "model.gguf + mmproj.gguf for the llama.cpp backend")
    ex.add_argument("--model", default=None, help="model folder (default: the embedded trained policy)")
    ex.add_argument("--out", default="out/gguf", help="folder for model.gguf and mmproj.gguf")
    ex.add_argument("--text-only", action="store_true", help="no mmproj.gguf (the policy then reads joint states only)")
    ex.set_defaults(func=_export_gguf)

    node_budget_mb = _NodeDefault("memory.vram_budget_mb")
    rp = sub.add_parser("replay", help="run the policy over a recorded rosbag2 (MCAP or sqlite3), write an MCAP",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                        epilog="A bag without joint states (camera only) replays with --zero-joints. Bad input "
                               "exits with code 2 and a one-line reason.")
    rp.add_argument("bag", help="rosbag2 folder, or a .mcap / .db3 file")
    rp.add_argument("--out", default=None,
                    help="output bag (a folder per run when comparing; None: out/replay/<bag>)")
    rp.add_argument("--budget-mb", default=node_budget_mb,
                    help="KV budget(s) in MiB, comma-separated to compare (the node's memory.vram_budget_mb)")
    rp.add_argument("--eviction", default="action_gate",
                    help="eviction polic(ies), comma-separated to compare: action_gate, sliding_window, streaming_llm, "
                         "h2o, unbounded")
    rp.add_argument("--model", default=None, help="model folder (None: the embedded model)")
    rp.add_argument("--instruction", default="", help="the instruction (an /instruction topic in the bag replaces it)")
    rp.add_argument("--camera-topic", default=None, help="None: /image, /image/compressed, or the only image topic")
    rp.add_argument("--more-cameras", default="",
                    help="further camera topics, comma-separated, for a policy trained on several cameras (their "
                         "newest frames join each step's, in this order)")
    rp.add_argument("--joints-topic", default=None, help="None: /joint_states or the only JointState topic")
    rp.add_argument("--zero-joints", action="store_true",
                    help="no joint states (a camera-only bag): every joint at zero, clipped into the limits, with "
                         "a warning; the policy then sees an arm that never moves")
    rp.add_argument("--command-topic", default=None,
                    help="recorded commands to compare with (None: /joint_trajectory or /commands if present)")
    rp.add_argument("--joint-names", default=None,
                    help="the robot's joints in the policy's order, comma-separated (None: the sim arm's); "
                         "give --low and --high with it")
    rp.add_argument("--low", default=None,
                    help="lower position limits, one per joint (--low=-3,-2.5,...; None: the sim arm's)")
    rp.add_argument("--high", default=None, help="upper position limits, one per joint (None: the sim arm's)")
    rp.add_argument("--rate", type=float, default=None, help="control rate in Hz (None: one step per camera frame)")
    rp.add_argument("--recent-steps", type=int, default=_NodeDefault("memory.recent_steps"),
                    help="the last N steps are always kept (the node's memory.recent_steps)")
    rp.add_argument("--map-period", type=float, default=1.0, help="seconds of recorded time between memory maps")
    rp.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (None: the whole bag)")
    rp.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    rp.add_argument("--no-progress", action="store_true", help="no progress bar")
    rp.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    rp.set_defaults(func=_replay)

    from aura_ros.tools import record as record_tool

    rc = sub.add_parser("record", help=record_tool.DESCRIPTION, epilog=record_tool.EPILOG,
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    record_tool.add_arguments(rc)
    rc.set_defaults(func=_record)

    fg = sub.add_parser("foxglove", help="run the policy on the sim and serve it live to Foxglove (ws://127.0.0.1)")
    fg.add_argument("--steps", type=int, default=0, help="control steps (0: until Ctrl-C)")
    fg.add_argument("--budget-mb", type=float, default=node_budget_mb,
                    help="KV budget in MiB (default: %(default)s, the node's memory.vram_budget_mb)")
    fg.add_argument("--rate-hz", type=float, default=10.0)
    fg.add_argument("--port", type=int, default=8765, help="websocket port on 127.0.0.1 (0: a free port)")
    fg.add_argument("--mcap", default=None, help="also record the run to this MCAP file")
    fg.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    fg.set_defaults(func=_foxglove)

    from aura_ros.tools import train as train_tool

    train_tool.add_parser(sub)
    train_tool.add_sim_dataset_parser(sub)

    args = parser.parse_args(argv)
    if args.command == "version":
        from aura_ros import __version__

        print(__version__)
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
