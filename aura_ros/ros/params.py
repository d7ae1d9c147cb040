"""Parameters from one table: name, default (and so type), range or choices, live or not, and a
description. The ParameterDescriptors, the frozen Settings object a node reads them into
(vla_ros2's pattern) and the README's parameter table all derive from it; the policy node and
the sim node use the same code.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, make_dataclass

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

from aura_ros.core import arm, topics
from aura_ros.core.registry import BACKENDS
from aura_ros.memory.scorers import POLICIES

ACTION_TYPES = ("joint_trajectory", "float64_multi_array", "twist")
EVICTION_POLICIES = tuple(POLICIES)
DTYPES = ("float32", "bfloat16", "float16")
MODEL_BACKENDS = ("auto", *BACKENDS)
KV_TYPES = ("f16", "q8_0", "q4_0")


@dataclass(frozen=True)
class Spec:
    name: str  # the ROS parameter name
    field: str  # the Settings attribute
    default: object  # its type is the parameter's type
    description: str
    live: bool = False  # may change while the node runs (ros2 param set)
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None

    @property
    def type_name(self) -> str:
        d = self.default
        return ("bool" if isinstance(d, bool) else "int" if isinstance(d, int) else
                "double" if isinstance(d, float) else "string" if isinstance(d, str) else
                f"{type(d[0]).__name__}[]" if isinstance(d, (list, tuple)) and d else "array")


def _coerce(value):
    return tuple(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "array" else value


class ParamTable:
    """A node's parameters: declare them, read them into Settings, check and document them."""

    def __init__(self, specs: tuple[Spec, ...], settings_name: str = "Settings"):
        self.specs = specs
        self.by_name = {s.name: s for s in specs}
        if len(self.by_name) != len(specs) or len({s.field for s in specs}) != len(specs):
            raise ValueError("parameter names and fields must be unique")
        self.settings_type = make_dataclass(
            settings_name, [(s.field, type(_coerce(s.default))) for s in specs], frozen=True)

    def descriptor(self, spec: Spec) -> ParameterDescriptor:
        text = spec.description
        if spec.choices:
            text += f" (one of: {', '.join(spec.choices)})"
        d = ParameterDescriptor(name=spec.name, description=text, read_only=not spec.live)
        if spec.range is not None and not isinstance(spec.default, bool):
            lo, hi = spec.range
            if isinstance(spec.default, int):
                d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
            elif isinstance(spec.default, float):
                d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
        return d

    def declare(self, node: Node) -> None:
        """Declare every parameter. A whole number given for a double (``-p name:=2`` on the
        command line is an INTEGER) is taken as that double instead of refused at start."""
        overrides = getattr(node, "_parameter_overrides", {})
        for spec in self.specs:
            given = overrides.get(spec.name)
            if (isinstance(spec.default, float) and given is not None
                    and given.type_ == Parameter.Type.INTEGER):
                overrides[spec.name] = Parameter(spec.name, Parameter.Type.DOUBLE, float(given.value))
            node.declare_parameter(spec.name, spec.default, self.descriptor(spec))

    def whole_numbers_as_doubles(self, params: list[Parameter]) -> list[Parameter]:
        """A pre-set callback: a whole number set on a double parameter (``ros2 param set /node
        memory.vram_budget_mb 2`` sends an INTEGER) becomes that double instead of being refused
        as the wrong type, as at start (declare())."""
        out = []
        for p in params:
            spec = self.by_name.get(p.name)
            if spec is not None and isinstance(spec.default, float) and p.type_ == Parameter.Type.INTEGER:
                p = Parameter(p.name, Parameter.Type.DOUBLE, float(p.value))
            out.append(p)
        return out

    def read(self, node: Node, overrides: dict | None = None):
        values = {s.field: _coerce(node.get_parameter(s.name).value) for s in self.specs}
        for name, value in (overrides or {}).items():
            values[self.by_name[name].field] = _coerce(value)
        return self.settings_type(**values)

    def replace(self, settings, **changes):
        values = {f.name: getattr(settings, f.name) for f in fields(settings)}
        values.update(changes)
        return self.settings_type(**values)

    def apply(self, settings, changes: dict):
        """``settings`` with the parameter values in ``changes`` ({parameter name: value})."""
        return self.replace(settings, **{self.by_name[n].field: _coerce(v) for n, v in changes.items()
                                         if n in self.by_name})

    def check(self, name: str, value) -> str | None:
        """Why ``value`` is refused for ``name`` beyond what rclpy checks (choices), or None."""
        spec = self.by_name.get(name)
        if spec is not None and spec.choices and value not in spec.choices:
            return f"{name} must be one of {', '.join(spec.choices)}; got {value!r}"
        return None

    def markdown(self) -> str:
        """The README's parameter table."""
        rows = ["| parameter | type | default | live | range / choices | meaning |", "|---|---|---|---|---|---|"]
        for s in self.specs:
            default = (f"[{', '.join(str(x) for x in s.default)}]" if isinstance(s.default, (list, tuple))
                       else repr(s.default) if isinstance(s.default, str) else str(s.default).lower()
                       if isinstance(s.default, bool) else f"{s.default:g}" if isinstance(s.default, float)
                       else str(s.default))
            limits = (", ".join(s.choices) if s.choices else
                      f"{s.range[0]:g} .. {s.range[1]:g}" if s.range else "")
            rows.append(f"| `{s.name}` | {s.type_name} | {default} | {'yes' if s.live else 'no'} | {limits} "
                        f"| {s.description} |")
        return "\n".join(rows)


POLICY_PARAMS = ParamTable((
    Spec("model.path", "model_path", "", "Local folder or hub id of a transformers VLM; empty: the embedded default"),
    Spec("model.backend", "backend", "auto", "Backend that runs the model (auto: a .gguf model.path selects "
         "llama_cpp, anything else transformers; mlx: a Llava folder on MLX, opt-in)", choices=MODEL_BACKENDS),
    Spec("model.mmproj", "mmproj", "", "llama_cpp: projector GGUF for images through libmtmd; empty: text "
         "observations (the joint state), frames ignored"),
    Spec("model.kv_type", "kv_type", "f16", "llama_cpp: KV cache type (q8_0/q4_0 hold ~2x/~3.5x the tokens of "
         "a budget)", choices=KV_TYPES),
    Spec("model.dtype", "dtype", "float32", "Model and KV dtype", choices=DTYPES),
    Spec("model.device", "device", "cpu", "torch device: cpu, cuda or cuda:N"),
    Spec("model.torch_threads", "torch_threads", 1,
         "torch CPU threads for inference; 1 keeps a 2-core machine responsive for DDS and the sim "
         "(0 = torch's default)", range=(0, 256)),
    Spec("model.min_step_s", "min_step_s", 0.0,
         "Tests and benchmarks only: the inference worker pads every policy step to at least this long, "
         "standing in for a slower model (0 = off)", range=(0.0, 60.0)),
    Spec("model.trust_remote_code", "trust_remote_code", False,
         "Allow code from the model folder (off unless you trust it)"),
    Spec("memory.vram_budget_mb", "budget_mb", 0.5,
         "Hard KV-cache budget in MiB; shrinking evicts, growing reallocates", live=True, range=(0.001, 1_000_000.0)),
    Spec("memory.block_fraction", "block_fraction", 0.05,
         "When the cache is full, free at least this fraction of it at once, so compaction is paid once per "
         "block, not every step (0: one step's room)", range=(0.0, 0.5)),
    Spec("memory.recent_steps", "recent_steps", 8,
         "The last N control steps are always kept (while anything else can go)", live=True, range=(0, 100_000)),
    Spec("memory.recent_share", "recent_share", 0.1,
         "action_gate: when long-term steps would have to go, the recent window gives up its oldest steps down "
         "to this share of the unpinned budget (1: never)", range=(0.0, 1.0)),
    Spec("memory.max_context_steps", "max_context_steps", 24,
         "The most steps the policy reads at once, whatever the budget: a policy works inside the context "
         "lengths it was trained on (the shipped default: 24); 0 = the budget alone", range=(0, 1_000_000)),
    Spec("memory.task_horizon", "task_horizon", 1,
         "action_gate: long-term steps of tasks more than this many task boundaries back (each /instruction "
         "message begins a task) are stale and leave first under pressure; 1 keeps the previous task's facts",
         range=(0, 1_000_000)),
    Spec("memory.supersede", "supersede", True,
         "action_gate: once a task has written an action event of its own, the earlier tasks' action events "
         "are stale too (a newer fact of the same kind replaces the older); false keeps them by task_horizon "
         "alone"),
    Spec("memory.eviction", "eviction", "action_gate",
         "Eviction policy: action_gate (ours) or the baselines", choices=EVICTION_POLICIES),
    Spec("memory.clear_on_instruction", "clear_on_instruction", False,
         "A new instruction also clears the episode memory", live=True),
    Spec("memory.snapshot_path", "snapshot_path", "",
         "Snapshot file (without suffix) for ~/save_memory, ~/load_memory, periodic and shutdown snapshots; "
         "'' = off"),
    Spec("memory.snapshot_period_s", "snapshot_period_s", 0.0, "Save a snapshot this often (0 = never)",
         live=True, range=(0.0, 86400.0)),
    Spec("memory.snapshot_on_shutdown", "snapshot_on_shutdown", True,
         "Save a snapshot when the node shuts down (SIGINT/SIGTERM)", live=True),
    Spec("memory.load_on_start", "load_on_start", True,
         "Resume from the snapshot at start if one exists (refused ones are logged and counted)"),
    Spec("gate.threshold", "gate_threshold", 0.5, "Gate value at or above which a step is written to long-term "
         "memory (gate = strength / (1 + strength); 0.5 = one unit of change)", live=True, range=(0.0, 1.0)),
    Spec("gate.w_delta", "gate_w_delta", 1.0, "Weight of the action's departure from its recent baseline, in units "
         "of max(noise_z x the joint's running noise scale, delta_scale)", live=True, range=(0.0, 10.0)),
    Spec("gate.w_discrete", "gate_w_discrete", 1.0, "Weight of a discrete change (gripper flip, event)",
         live=True, range=(0.0, 10.0)),
    Spec("gate.w_surprise", "gate_w_surprise", 1.0, "Weight of the baseline's drift since the last write (a slow "
         "drift eventually writes)", live=True, range=(0.0, 10.0)),
    Spec("gate.delta_scale", "gate_delta_scale", 0.1,
         "Smallest action change (fraction of joint range) that counts as one unit: the noise floor",
         live=True, range=(0.001, 1.0)),
    Spec("gate.surprise_scale", "gate_surprise_scale", 0.2,
         "Smallest baseline drift (fraction of joint range) that counts as one unit", live=True, range=(0.001, 1.0)),
    Spec("gate.surprise_window", "gate_surprise_window", 10,
         "Steps of the action baseline's running mean (after a write the drift is measured from its level then)",
         live=True, range=(1, 10000)),
    Spec("gate.noise_z", "gate_noise_z", 4.0, "A unit of change is this many running noise scales of the joint "
         "(jitter stays below it, a real change does not)", live=True, range=(0.5, 100.0)),
    Spec("gate.noise_window", "gate_noise_window", 20, "Steps of each joint's running noise scale", live=True,
         range=(1, 10000)),
    Spec("gate.warmup_steps", "gate_warmup_steps", 5, "Quiet steps before the noise estimate is trusted (until "
         "then a unit is at least twice delta_scale)", live=True, range=(0, 10000)),
    Spec("gate.return_window", "gate_return_window", 1, "Steps after a write in which a return to the pre-event "
         "baseline joins that event (a momentary action is written once; 0 = off)", live=True, range=(0, 1000)),
    Spec("gate.w_novelty", "gate_w_novelty", 0.0, "Weight of the observation embedding's novelty (0 = off; needs a "
         "backend that supplies embeddings)", live=True, range=(0.0, 10.0)),
    Spec("gate.novelty_window", "gate_novelty_window", 10, "Steps of the observation embedding's running mean and "
         "scale", live=True, range=(1, 10000)),
    Spec("gate.novelty_floor", "gate_novelty_floor", 0.05, "Smallest embedding distance unit, relative to the "
         "running mean's norm", live=True, range=(0.0001, 10.0)),
    Spec("control.rate_hz", "rate_hz", 10.0, "Control rate; ticks that find the worker busy are skipped and counted",
         live=True, range=(0.1, 1000.0)),
    Spec("control.dry_run", "dry_run", False, "Compute and report, publish no command", live=True),
    Spec("action.type", "action_type", "joint_trajectory",
         "Command message: joint_trajectory (JointTrajectory on joint_trajectory), float64_multi_array "
         "(Float64MultiArray on commands) or twist (TwistStamped on cmd_vel)", choices=ACTION_TYPES),
    Spec("action.joint_names", "joint_names", list(arm.JOINT_NAMES),
         "Action dimensions (joint names; for twist: linear_x, angular_z)"),
    Spec("action.low", "low", list(arm.LOW), "Lower limit of each action dimension"),
    Spec("action.high", "high", list(arm.HIGH), "Upper limit of each action dimension"),
    Spec("action.discrete_joints", "discrete_joints", list(arm.DISCRETE_JOINTS),
         "Dimensions whose flips are always gate events"),
    Spec("state.joint_names", "state_joint_names", [""],
         "Joints whose positions form the state text; [''] means action.joint_names (twist: all joints received)"),
    Spec("state.limit", "state_limit", 100.0,
         "Joint-state values are clipped to the action limits (state joints outside the action: to +-this) and "
         "counted, so one absurd value cannot flood the cache with digits", range=(0.001, 1e6)),
    Spec("action.n_bins", "n_bins", 256, "Bins per action dimension (OpenVLA-style action tokens)", range=(2, 4096)),
    Spec("action.chunk", "chunk", 1, "Actions predicted per inference. 1: one inference per control tick, its "
         "action sent at once; more: chunk execution, one queued action sent per tick while the next chunk is "
         "inferred (README: chunk execution)", range=(1, 64)),
    Spec("action.refill_below", "refill_below", 0.5, "Chunk execution: the next inference is requested when the "
         "queue holds at most this fraction of a chunk; it must return within refill_below x action.chunk "
         "ticks or the queue runs dry", live=True, range=(0.0, 0.95)),
    Spec("action.time_from_start_s", "time_from_start_s", 0.1, "JointTrajectory: time_from_start of the first "
         "point", live=True, range=(0.0, 60.0)),
    Spec("timeouts.image_s", "image_timeout_s", 1.0, "Hold and warn when the newest frame arrived longer ago",
         live=True, range=(0.01, 3600.0)),
    Spec("timeouts.joint_state_s", "joint_state_timeout_s", 1.0,
         "Hold and warn when the newest joint state arrived longer ago", live=True, range=(0.01, 3600.0)),
    Spec("timeouts.stamp_tolerance_s", "stamp_tolerance_s", 0.5,
         "Joint-state stamps more than this ahead of the node clock are dropped; stamps may go back this much "
         "(two publishers) before a message counts as out of order", live=True, range=(0.0, 3600.0)),
    Spec("instruction", "instruction", "", "The instruction (the instruction topic replaces it)", live=True),
    Spec("instruction_max_chars", "instruction_max_chars", 2000, "Longer instructions are truncated to this many "
         "characters", live=True, range=(1, 1_000_000)),
    Spec("image.camera_topics", "camera_topics", [topics.REL_IMAGE],
         "One Image topic per camera, in the order the policy was trained on (each also heard on "
         "<topic>/compressed); a step waits for a fresh frame of every camera"),
    Spec("image.transport", "image_transport", "both",
         "Which frames to take: raw (Image on each camera topic), compressed (CompressedImage on "
         "<topic>/compressed) or both; across a network, compressed keeps raw frames off the link",
         choices=("both", "raw", "compressed")),
    Spec("image.max_pixels", "max_pixels", 7680 * 4320, "Frames with more pixels are dropped and counted",
         live=True, range=(1, 10**9)),
    Spec("diagnostics.period_s", "diagnostics_period_s", 1.0, "Period of /diagnostics", live=True,
         range=(0.05, 60.0)),
    Spec("autostart", "autostart", True, "Configure and activate on start (otherwise wait for lifecycle "
         "transitions)"),
), "Settings")

Settings = POLICY_PARAMS.settings_type


def check_action_limits(names, low, high) -> str | None:
    if not (len(names) == len(low) == len(high)) or not names:
        return (f"action.joint_names ({len(names)}), action.low ({len(low)}) and action.high ({len(high)}) "
                "must have the same, non-zero length")
    bad = [n for n, lo, hi in zip(names, low, high) if not lo < hi]
    if bad:
        return f"action.low must be below action.high for every joint; not for {', '.join(bad)}"
    return None


def check_camera_topics(names) -> str | None:
    names = [str(n).strip() for n in names]
    if not names or any(not n for n in names):
        return f"image.camera_topics must list at least one topic and no empty name, got {list(names)}"
    if len(set(names)) != len(names):
        return f"image.camera_topics lists a topic twice: {list(names)}"
    return None


def param_value(p: Parameter):
    return _coerce(p.value)
