"""launch/policy.launch.py against the real ROS 2 Jazzy launch API (launch 3.4, launch_ros 0.26).

launch and launch_ros are on no registry this machine reaches, so this module is skipped unless
they are installed (a real Jazzy install, or a scratch venv built from the public repositories).
The launch file asks the ament index for the aura_ros share directory, so the package must be in
AMENT_PREFIX_PATH too.

The launch file is loaded the way `ros2 launch` loads it (PythonLaunchDescriptionSource), and
its actions are evaluated in a LaunchContext: what each node would be started with (executable,
node name, namespace, parameter files in order, Fast DDS profile) is checked without starting a
process. Bad arguments are run through a real LaunchService, which must refuse them.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

# launch_ros first: with the repository root on sys.path, `import launch` alone could resolve
# to this repository's launch/ folder (a namespace package) instead of ROS 2 launch.
launch_ros = pytest.importorskip("launch_ros")
launch = pytest.importorskip("launch")

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory  # noqa: E402
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction, SetEnvironmentVariable  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from launch.substitutions import LocalSubstitution  # noqa: E402
from launch.utilities import perform_substitutions  # noqa: E402
from launch_ros.actions import Node  # noqa: E402
from launch_ros.substitutions import ExecutableInPackage  # noqa: E402

from launch import LaunchContext, LaunchDescription, LaunchService  # noqa: E402

LAUNCH_FILE = Path(__file__).resolve().parents[2] / "launch" / "policy.launch.py"
ARGUMENTS = {"params_file", "namespace", "model", "backend", "mmproj", "vram_budget_mb", "snapshot_path", "use_sim",
             "fastdds_profile"}

try:
    SHARE = get_package_share_directory("aura_ros")
except PackageNotFoundError:
    pytest.skip("aura_ros is not in the ament index (AMENT_PREFIX_PATH)", allow_module_level=True)


def _description() -> LaunchDescription:
    # The loader `ros2 launch` uses: it imports the file and calls generate_launch_description().
    return PythonLaunchDescriptionSource(str(LAUNCH_FILE)).try_get_launch_description_without_context()


def _context(ld: LaunchDescription, **arguments: str) -> LaunchContext:
    """A context holding each declared argument's default, overridden by ``arguments``."""
    context = LaunchContext()
    for arg in ld.entities:
        if isinstance(arg, DeclareLaunchArgument):
            context.launch_configurations[arg.name] = perform_substitutions(context, arg.default_value)
    assert set(arguments) <= ARGUMENTS, f"unknown launch arguments {set(arguments) - ARGUMENTS}"
    context.launch_configurations.update(arguments)
    return context


def _evaluate(ld: LaunchDescription, context: LaunchContext) -> list:
    """The description's actions in launch order, OpaqueFunctions replaced by what they return."""
    actions = []
    for entity in ld.entities:
        if isinstance(entity, OpaqueFunction):
            actions.extend(entity.execute(context) or [])
        elif not isinstance(entity, DeclareLaunchArgument):
            actions.append(entity)
    return actions


def _command(node: Node, context: LaunchContext) -> list[str]:
    """The node's arguments after substitutions, less the executable and the name/namespace remaps.

    Node.execute() performs the same substitutions before starting the process; the remap
    arguments are filled in there from the expanded name and namespace (checked separately), and
    the executable is looked up in the install space (test_executables_are_installed).
    """
    node._perform_substitutions(context)
    return [perform_substitutions(context, token) for token in node.cmd
            if not any(isinstance(s, (LocalSubstitution, ExecutableInPackage)) for s in token)]


def _params_files(command: list[str]) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == "--params-file"]


def _run(**arguments: str) -> int:
    """Runs the launch file through a real LaunchService, as `ros2 launch` does."""
    service = LaunchService()
    service.include_launch_description(LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH_FILE)), launch_arguments=list(arguments.items()))]))
    return service.run()


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text("/**:\n  ros__parameters:\n    memory:\n      vram_budget_mb: 8.0\n")
    return path


def test_arguments_and_defaults():
    ld = _description()
    args = {a.name: a for a in ld.entities if isinstance(a, DeclareLaunchArgument)}
    assert set(args) == ARGUMENTS
    context = LaunchContext()
    defaults = {name: perform_substitutions(context, arg.default_value) for name, arg in args.items()}
    assert defaults == {"params_file": os.path.join(SHARE, "config", "policy.yaml"), "namespace": "", "model": "",
                        "backend": "", "mmproj": "", "vram_budget_mb": "", "snapshot_path": "", "use_sim": "false",
                        "fastdds_profile": os.path.join(SHARE, "config", "fastdds.xml")}
    assert all(arg.description for arg in args.values())


def test_executables_are_installed():
    # The colcon/CMake route installs nodes/policy_node and nodes/sim_node to lib/aura_ros, where
    # launch_ros looks; the laptop route (messages only in the venv prefix) installs no executables.
    prefix = Path(SHARE).parents[1]
    if not (prefix / "lib" / "aura_ros").is_dir():
        pytest.skip(f"no executables under {prefix}/lib/aura_ros (laptop route; build with colcon)")
    ld = _description()
    # Any existing file will do as params_file: only the executables are looked at.
    context = _context(ld, params_file=__file__, fastdds_profile="")
    nodes = [a for a in _evaluate(ld, context) if isinstance(a, Node)]
    assert sorted(node.node_executable for node in nodes) == ["policy_node", "sim_node"]
    for node in nodes:
        path = perform_substitutions(context, node.cmd[0])
        assert path == str(prefix / "lib" / "aura_ros" / node.node_executable)
        assert os.access(path, os.X_OK), f"{path} is not executable"


def test_policy_node_command_with_overrides(params_file, tmp_path):
    ld = _description()
    profile = tmp_path / "fastdds.xml"
    profile.write_text("<profiles/>\n")
    mmproj = tmp_path / "mmproj.gguf"
    mmproj.write_bytes(b"GGUF")
    context = _context(ld, params_file=str(params_file), namespace="arm", model="/models/policy.gguf",
                       backend="llama_cpp", mmproj=str(mmproj), vram_budget_mb="3.5",
                       snapshot_path=str(tmp_path / "arm"), fastdds_profile=str(profile))
    actions = _evaluate(ld, context)

    # The profile is set before either node starts.
    assert isinstance(actions[0], SetEnvironmentVariable)
    assert perform_substitutions(context, actions[0].name) == "FASTRTPS_DEFAULT_PROFILES_FILE"
    assert perform_substitutions(context, actions[0].value) == str(profile)

    policy, sim = actions[1:]
    assert (policy.node_package, policy.node_executable) == ("aura_ros", "policy_node")
    assert (sim.node_package, sim.node_executable) == ("aura_ros", "sim_node")
    command = _command(policy, context)
    assert policy.node_name == "/arm/aura_policy"
    assert policy.expanded_node_namespace == "/arm"

    # The params file first, then the overrides: later files win, so the arguments override it.
    files = _params_files(command)
    assert len(files) == 2 and files[0] == str(params_file)
    overrides = yaml.safe_load(Path(files[1]).read_text())
    assert overrides == {"/arm/aura_policy": {"ros__parameters": {"model.path": "/models/policy.gguf",
                                                                  "model.backend": "llama_cpp",
                                                                  "model.mmproj": str(mmproj),
                                                                  "memory.vram_budget_mb": 3.5,
                                                                  "memory.snapshot_path": str(tmp_path / "arm")}}}


def test_empty_arguments_keep_the_params_file(params_file):
    ld = _description()
    context = _context(ld, params_file=str(params_file), fastdds_profile="")
    actions = _evaluate(ld, context)
    # fastdds_profile:= (empty) leaves the environment's profile alone.
    assert not any(isinstance(a, SetEnvironmentVariable) for a in actions)
    policy = next(a for a in actions if isinstance(a, Node) and a.node_executable == "policy_node")
    assert _params_files(_command(policy, context)) == [str(params_file)]
    assert policy.node_name == "/aura_policy"


@pytest.mark.parametrize("use_sim, started", [("false", False), ("true", True), ("True", True)])
def test_sim_node_follows_use_sim(use_sim, started):
    ld = _description()
    context = _context(ld, use_sim=use_sim)
    (sim,) = [e for e in ld.entities if isinstance(e, Node)]
    assert sim.node_executable == "sim_node"
    assert sim.condition.evaluate(context) is started
    _command(sim, context)
    assert sim.node_name == "/aura_sim"


@pytest.mark.parametrize("arguments, message", [
    # launch_ros alone would only warn about a missing params file and start the node without it.
    ({"params_file": "/nonexistent/policy.yaml"}, "params_file:='/nonexistent/policy.yaml': no such file"),
    ({"vram_budget_mb": "lots"}, "vram_budget_mb:='lots': expected a number of MiB in [0.001, 1e+06]"),
    ({"vram_budget_mb": "-1"}, "vram_budget_mb:='-1': expected a number of MiB in [0.001, 1e+06]"),
    ({"vram_budget_mb": "nan"}, "vram_budget_mb:='nan': expected a number of MiB in [0.001, 1e+06]"),
    ({"vram_budget_mb": "0.0001"}, "vram_budget_mb:='0.0001': expected a number of MiB in [0.001, 1e+06]"),
    ({"backend": "tensorflow"}, "backend:='tensorflow': expected one of auto, transformers, llama_cpp, mlx"),
    ({"fastdds_profile": "/nonexistent/fastdds.xml"}, "fastdds_profile:='/nonexistent/fastdds.xml': no such file"),
])
def test_bad_arguments_stop_the_launch_before_any_process(arguments, message, params_file, tmp_path, caplog):
    # Valid values for the others (the laptop route's share directory has no config/). Each bad
    # argument is refused by an OpaqueFunction that runs before any Node, so nothing is started.
    profile = tmp_path / "fastdds.xml"
    profile.write_text("<profiles/>\n")
    full = {"params_file": str(params_file), "fastdds_profile": str(profile), **arguments}
    assert _run(**full) == 1
    assert message in caplog.text  # launch logs the refusal through the "launch" logger


def test_use_sim_must_be_a_boolean():
    from launch.conditions import InvalidConditionExpressionError

    ld = _description()
    (sim,) = [e for e in ld.entities if isinstance(e, Node)]
    with pytest.raises(InvalidConditionExpressionError):
        sim.condition.evaluate(_context(ld, use_sim="maybe"))
