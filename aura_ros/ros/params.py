"""Every parameter of the policy node, declared up front with a ParameterDescriptor.

One table (PARAMS) says name, default, description, range and whether the value can change
while running. ``declare_all`` declares them; ``read_settings`` reads them once into a frozen
dataclass (vla_ros2's pattern), and live changes are validated by ``validate_change`` before
they are accepted.
"""
from __future__ import annotations

from dataclasses import dataclass

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

ACTION_TYPES = ("joint_trajectory", "float64_multi_array", "twist")
EVICTION_POLICIES = ("action_gate", "sliding_window", "streaming_llm", "h2o")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Spec:
    name: str
    default: object
    description: str
    read_only: bool = False
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None


PARAMS: tuple[Spec, ...] = (
    Spec("model.path", "", "Local folder or hub id of a transformers VLM; empty: the embedded tiny default",
         read_only=True),
    Spec("model.dtype", "float32", "Model and KV dtype: float32, bfloat16 or float16", read_only=True, choices=DTYPES),
    Spec("model.device", "cpu", "torch device: cpu, cuda or cuda:N", read_only=True),
    Spec("model.torch_threads", 1,
         "torch CPU threads for inference; 1 keeps a 2-core machine responsive for DDS and the sim (0 = torch's default)",
         read_only=True, range=(0, 256)),
    Spec("model.trust_remote_code", False, "Allow code from the model folder (off unless you trust it)",
         read_only=True),
    Spec("memory.vram_budget_mb", 8.0, "Hard KV-cache budget in MiB; live: shrinking evicts, growing reallocates",
         range=(0.001, 1_000_000.0)),
    Spec("memory.recent_steps", 8, "The last N control steps are always kept (while anything else can go)",
         range=(0, 100_000)),
    Spec("memory.eviction", "action_gate",
         "Eviction policy: action_gate (ours) or the baselines sliding_window, streaming_llm, h2o",
         read_only=True, choices=EVICTION_POLICIES),
    Spec("memory.clear_on_instruction", False, "A new instruction also clears the episode memory"),
    Spec("memory.snapshot_path", "",
         "Snapshot file (without suffix) for ~/save_memory, ~/load_memory, periodic and shutdown snapshots; '' = off",
         read_only=True),
    Spec("memory.snapshot_period_s", 0.0, "Save a snapshot this often (0 = never)", range=(0.0, 86400.0)),
    Spec("memory.snapshot_on_shutdown", True, "Save a snapshot when the node shuts down (SIGINT/SIGTERM)"),
    Spec("memory.load_on_start", True, "Resume from the snapshot at start if one exists (refused ones are logged)",
         read_only=True),
    Spec("gate.threshold", 0.5, "Gate value at or above which a step is written to long-term memory",
         range=(0.0, 1.0)),
    Spec("gate.w_delta", 1.0, "Weight of the normalised action change", range=(0.0, 10.0)),
    Spec("gate.w_discrete", 1.0, "Weight of a discrete change (gripper flip, event)", range=(0.0, 10.0)),
    Spec("gate.w_surprise", 0.5, "Weight of the distance from the running mean of recent actions",
         range=(0.0, 10.0)),
    Spec("gate.delta_scale", 0.1, "Action change (fraction of joint range) that saturates the delta term",
         range=(0.001, 1.0)),
    Spec("gate.surprise_scale", 0.2, "Distance (fraction of joint range) that saturates the surprise term",
         range=(0.001, 1.0)),
    Spec("control.rate_hz", 10.0, "Control rate; ticks that find the worker busy are skipped and counted",
         range=(0.1, 1000.0)),
    Spec("control.dry_run", False, "Compute and report, publish no command"),
    Spec("action.type", "joint_trajectory",
         "Command message: joint_trajectory (JointTrajectory on joint_trajectory), float64_multi_array "
         "(Float64MultiArray on commands) or twist (TwistStamped on cmd_vel)", read_only=True, choices=ACTION_TYPES),
    Spec("action.joint_names", ["shoulder", "elbow", "wrist", "gripper"],
         "Action dimensions (joint names; for twist: linear_x, angular_z)", read_only=True),
    Spec("action.low", [-3.14, -2.5, -3.14, 0.0], "Lower limit of each action dimension", read_only=True),
    Spec("action.high", [3.14, 2.5, 3.14, 1.0], "Upper limit of each action dimension", read_only=True),
    Spec("action.discrete_joints", ["gripper"], "Dimensions whose flips are always gate events", read_only=True),
    Spec("state.joint_names", [""],
         "Joints whose positions form the state text; [''] means action.joint_names (twist: all joints received)",
         read_only=True),
    Spec("action.n_bins", 256, "Bins per action dimension (OpenVLA-style action tokens)", read_only=True,
         range=(2, 4096)),
    Spec("action.chunk", 1, "Actions predicted per step (the first is executed)", read_only=True, range=(1, 64)),
    Spec("action.time_from_start_s", 0.1, "JointTrajectory: time_from_start of the first point",
         range=(0.0, 60.0)),
    Spec("timeouts.image_s", 1.0, "Hold and warn when the newest frame is older than this", range=(0.01, 3600.0)),
    Spec("timeouts.joint_state_s", 1.0, "Hold and warn when the newest joint state is older than this",
         range=(0.01, 3600.0)),
    Spec("instruction", "", "Initial instruction (the instruction topic replaces it)"),
    Spec("instruction_max_chars", 2000, "Longer instructions are truncated to this many characters",
         range=(1, 1_000_000)),
    Spec("image.max_pixels", 7680 * 4320, "Frames with more pixels are dropped and counted", range=(1, 10**9)),
    Spec("diagnostics.period_s", 1.0, "Period of /diagnostics", range=(0.05, 60.0)),
    Spec("autostart", True, "Configure and activate on start (otherwise wait for lifecycle transitions)",
         read_only=True),
)
BY_NAME = {s.name: s for s in PARAMS}


def descriptor(spec: Spec) -> ParameterDescriptor:
    text = spec.description
    if spec.choices:
        text += f" (one of: {', '.join(spec.choices)})"
    d = ParameterDescriptor(name=spec.name, description=text, read_only=spec.read_only)
    if spec.range is not None:
        lo, hi = spec.range
        if isinstance(spec.default, bool):
            pass
        elif isinstance(spec.default, int):
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        elif isinstance(spec.default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return d


def declare_all(node: Node) -> None:
    for spec in PARAMS:
        node.declare_parameter(spec.name, spec.default, descriptor(spec))


@dataclass(frozen=True)
class Settings:
    model_path: str
    dtype: str
    device: str
    trust_remote_code: bool
    torch_threads: int
    budget_mb: float
    recent_steps: int
    eviction: str
    clear_on_instruction: bool
    snapshot_path: str
    snapshot_period_s: float
    snapshot_on_shutdown: bool
    load_on_start: bool
    gate_threshold: float
    gate_w_delta: float
    gate_w_discrete: float
    gate_w_surprise: float
    gate_delta_scale: float
    gate_surprise_scale: float
    rate_hz: float
    dry_run: bool
    action_type: str
    joint_names: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    discrete_joints: tuple[str, ...]
    state_joint_names: tuple[str, ...]
    n_bins: int
    chunk: int
    time_from_start_s: float
    image_timeout_s: float
    joint_state_timeout_s: float
    instruction: str
    instruction_max_chars: int
    max_pixels: int
    diagnostics_period_s: float
    autostart: bool


_FIELDS = {
    "model.path": "model_path", "model.dtype": "dtype", "model.device": "device",
    "model.trust_remote_code": "trust_remote_code", "model.torch_threads": "torch_threads",
    "memory.vram_budget_mb": "budget_mb",
    "memory.recent_steps": "recent_steps", "memory.eviction": "eviction",
    "memory.clear_on_instruction": "clear_on_instruction", "memory.snapshot_path": "snapshot_path",
    "memory.snapshot_period_s": "snapshot_period_s", "memory.snapshot_on_shutdown": "snapshot_on_shutdown",
    "memory.load_on_start": "load_on_start", "gate.threshold": "gate_threshold",
    "gate.w_delta": "gate_w_delta", "gate.w_discrete": "gate_w_discrete", "gate.w_surprise": "gate_w_surprise",
    "gate.delta_scale": "gate_delta_scale", "gate.surprise_scale": "gate_surprise_scale",
    "control.rate_hz": "rate_hz", "control.dry_run": "dry_run", "action.type": "action_type",
    "action.joint_names": "joint_names", "action.low": "low", "action.high": "high",
    "action.discrete_joints": "discrete_joints", "state.joint_names": "state_joint_names", "action.n_bins": "n_bins", "action.chunk": "chunk",
    "action.time_from_start_s": "time_from_start_s", "timeouts.image_s": "image_timeout_s",
    "timeouts.joint_state_s": "joint_state_timeout_s", "instruction": "instruction",
    "instruction_max_chars": "instruction_max_chars", "image.max_pixels": "max_pixels",
    "diagnostics.period_s": "diagnostics_period_s", "autostart": "autostart",
}


def _coerce(value):
    return tuple(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "array" else value


def read_settings(node: Node, overrides: dict | None = None) -> Settings:
    values = {field: _coerce(node.get_parameter(name).value) for name, field in _FIELDS.items()}
    for name, value in (overrides or {}).items():
        values[_FIELDS[name]] = _coerce(value)
    return Settings(**values)


def choice_error(name: str, value) -> str | None:
    spec = BY_NAME.get(name)
    if spec is not None and spec.choices and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}; got {value!r}"
    return None


def check_action_limits(names, low, high) -> str | None:
    if not (len(names) == len(low) == len(high)) or not names:
        return (f"action.joint_names ({len(names)}), action.low ({len(low)}) and action.high ({len(high)}) "
                "must have the same, non-zero length")
    bad = [n for n, lo, hi in zip(names, low, high) if not lo < hi]
    if bad:
        return f"action.low must be below action.high for every joint; not for {', '.join(bad)}"
    return None


def param_value(p: Parameter):
    return _coerce(p.value)
