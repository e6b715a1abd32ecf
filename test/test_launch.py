"""The launch file's plan: every program found and every file checked before anything starts.

The programs are real executables in a temporary PATH or a temporary ament prefix (the layout
colcon installs: share/ament_index/resource_index/packages/<pkg> + lib/<pkg>/<exe>), looked up by
the real shutil.which / ament_index_python. Where ``launch`` and ``launch_ros`` are installed the
launch file itself is run through its OpaqueFunction as ``ros2 launch`` would.
"""

from __future__ import annotations

import importlib.util
import stat
from pathlib import Path

import pytest

from fsmde_ros.launch_plan import LaunchArgumentError, plan_launch

REPO = Path(__file__).resolve().parents[1]
PARAMS = str(REPO / "config" / "surround_depth.yaml")
RIG = str(REPO / "config" / "rig_ddad.yaml")
RVIZ = str(REPO / "config" / "surround_depth.rviz")
LAUNCH_FILE = REPO / "launch" / "surround_depth.launch.py"


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def programs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only a pip-installed node (no ros2 CLI, no rviz2), and no ament prefix."""
    bin_dir = tmp_path / "bin"
    _executable(bin_dir / "surround_depth_node")
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    return bin_dir


def _args(**given: str) -> dict[str, str]:
    return {"params_file": PARAMS, "model": "", "backend": "", "device": "", "extrinsics_source": "",
            "calibration_file": "", "bag": "", "use_sim_time": "auto", "rviz": "false", "namespace": "", **given}


def test_rviz_without_rviz2_fails_before_anything_starts(programs: Path) -> None:
    with pytest.raises(LaunchArgumentError, match=r"rviz:=true but rviz2 is not installed"):
        plan_launch(_args(rviz="true"), RVIZ)


def test_rviz_is_found_on_path_or_in_an_ament_prefix(programs: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rviz = _executable(programs / "rviz2")
    plan = plan_launch(_args(rviz="true", bag=""), RVIZ)
    assert plan.rviz_command == [str(rviz), "-d", RVIZ, "--ros-args", "-p", "use_sim_time:=false"]
    rviz.unlink()
    prefix = tmp_path / "install"
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / "rviz2").write_text("")
    installed = _executable(prefix / "lib" / "rviz2" / "rviz2")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    assert plan_launch(_args(rviz="true"), RVIZ).rviz_command[0] == str(installed)


def test_node_from_the_ament_index_or_path_and_refused_when_neither(programs: Path) -> None:
    plan = plan_launch(_args(), RVIZ)
    assert (plan.node_package, plan.node_executable) == (None, "surround_depth_node")  # pip: from PATH
    (programs / "surround_depth_node").unlink()
    with pytest.raises(LaunchArgumentError, match=r"surround_depth_node is not installed"):
        plan_launch(_args(), RVIZ)


def test_extrinsics_arguments_become_node_parameters(programs: Path) -> None:
    plan = plan_launch(_args(model="/m/run", extrinsics_source="calibration", calibration_file=RIG), RVIZ)
    assert plan.overrides == {"use_sim_time": False, "model.path": "/m/run", "extrinsics.source": "calibration",
                              "extrinsics.calibration_file": RIG}
    assert plan_launch(_args(), RVIZ).overrides == {"use_sim_time": False}  # "" keeps the params file's value
    with pytest.raises(LaunchArgumentError, match=r"extrinsics_source:='calibraton': expected one of tf, calib"):
        plan_launch(_args(extrinsics_source="calibraton"), RVIZ)
    with pytest.raises(LaunchArgumentError, match=r"calibration_file:='/no/rig.yaml' is not a file"):
        plan_launch(_args(calibration_file="/no/rig.yaml"), RVIZ)


def test_params_file_and_booleans_are_checked(programs: Path, tmp_path: Path) -> None:
    with pytest.raises(LaunchArgumentError, match=r"params_file: params file '/no/params.yaml' does not exist"):
        plan_launch(_args(params_file="/no/params.yaml"), RVIZ)
    (tmp_path / "bad.yaml").write_text("a: [b\n")
    with pytest.raises(LaunchArgumentError, match=r"bad.yaml' is not valid YAML at line 2"):
        plan_launch(_args(params_file=str(tmp_path / "bad.yaml")), RVIZ)
    with pytest.raises(LaunchArgumentError, match=r"rviz:='maybe' is not a boolean"):
        plan_launch(_args(rviz="maybe"), RVIZ)


def test_bag_replay_uses_ros2_bag_play_or_the_project_player(programs: Path, tmp_path: Path) -> None:
    bag = tmp_path / "drive"
    with pytest.raises(LaunchArgumentError, match=r"bag:=.*drive' does not exist"):
        plan_launch(_args(bag=str(bag)), RVIZ)
    bag.mkdir()
    (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: {}\n")
    plan = plan_launch(_args(bag=str(bag)), RVIZ)
    assert plan.overrides["use_sim_time"] is True  # auto: a bag means /clock
    assert plan.bag_command[1:4] == ["-m", "fsmde_ros.player", str(bag)]
    ros2 = _executable(programs / "ros2")
    assert plan_launch(_args(bag=str(bag), use_sim_time="false"), RVIZ).bag_command == \
        [str(ros2), "bag", "play", str(bag), "--clock"]


def test_launch_file_declares_every_argument_the_plan_reads() -> None:
    if importlib.util.find_spec("launch_ros") is None:
        pytest.skip("launch_ros is not installed (no ROS 2 launch stack here); the plan is tested above")
    from launch.actions import ExecuteProcess

    from launch import LaunchContext

    spec = importlib.util.spec_from_file_location("surround_depth_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert {a.name for a in description.get_launch_arguments()} == set(module.ARGUMENTS)
    context = LaunchContext()
    for action in description.entities[:-1]:  # the DeclareLaunchArgument actions set the defaults
        action.visit(context)
    actions = description.entities[-1].execute(context)  # the OpaqueFunction
    assert not any(isinstance(a, ExecuteProcess) and "rviz2" in str(a.cmd) for a in actions)
