"""What ``surround_depth.launch.py`` starts, decided from its arguments before anything starts.

Why a plan apart from the launch file: every program the launch needs (the
node, rviz2, a bag player) is found and every file checked *before* the launch
returns a single action. Resolving them as actions run (launch_ros' default)
starts the node first and then fails on ``rviz:=true`` without rviz2, leaving
the node orphaned. And the checks are plain Python, testable where ``launch``
/ ``launch_ros`` are not installed.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fsmde_ros.params import params_file_problem

PACKAGE = "fsmde_ros"
EXECUTABLE = "surround_depth_node"
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
EXTRINSICS_SOURCES = ("tf", "calibration")

#: launch argument -> node parameter it overrides when not empty
PARAMETER_ARGUMENTS: dict[str, str] = {
    "model": "model.path",
    "backend": "model.backend",
    "device": "model.device",
    "extrinsics_source": "extrinsics.source",
    "calibration_file": "extrinsics.calibration_file",
}


class LaunchArgumentError(ValueError):
    """A launch argument is invalid or needs a program that is not installed; the message says which."""


@dataclass(frozen=True)
class LaunchPlan:
    """The node (package None: ``executable`` is a path or on PATH) and the optional helpers' commands."""

    node_package: str | None
    node_executable: str
    namespace: str
    params_file: str
    overrides: dict[str, object]
    bag_command: list[str] | None = None
    rviz_command: list[str] | None = None


def as_bool(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value not in (*TRUE_WORDS, *FALSE_WORDS):
        raise LaunchArgumentError(f"launch argument {name}:={text!r} is not a boolean (true/false)")
    return value in TRUE_WORDS


def _ament_executable(package: str, executable: str) -> str | None:
    """``<prefix>/lib/<package>/<executable>`` of an installed ROS package (what launch_ros runs)."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:
        return None
    try:
        path = Path(get_package_prefix(package)) / "lib" / package / executable
    except (PackageNotFoundError, OSError):  # OSError: no AMENT_PREFIX_PATH at all (pip installs)
        return None
    return str(path) if os.access(path, os.X_OK) else None


def find_program(package: str, executable: str) -> str | None:
    """The program launch would run: from the ament index, else from PATH (pip installs); None if neither."""
    return _ament_executable(package, executable) or shutil.which(executable)


def _overrides(arg: Mapping[str, str], use_sim_time: bool) -> dict[str, object]:
    overrides: dict[str, object] = {"use_sim_time": use_sim_time}
    for launch_name, param in PARAMETER_ARGUMENTS.items():
        value = arg.get(launch_name, "").strip()
        if value:
            overrides[param] = value
    source = overrides.get("extrinsics.source")
    if source is not None and source not in EXTRINSICS_SOURCES:
        raise LaunchArgumentError(
            f"launch argument extrinsics_source:={source!r}: expected one of {', '.join(EXTRINSICS_SOURCES)}")
    calibration = overrides.get("extrinsics.calibration_file")
    if calibration is not None and not Path(str(calibration)).expanduser().is_file():
        raise LaunchArgumentError(f"launch argument calibration_file:={calibration!r} is not a file")
    return overrides


def _bag_command(bag: str) -> list[str]:
    if not Path(bag).expanduser().exists():
        raise LaunchArgumentError(f"launch argument bag:={bag!r} does not exist (a rosbag2 folder or .mcap/.db3)")
    ros2 = shutil.which("ros2")
    if ros2:
        return [ros2, "bag", "play", bag, "--clock"]
    # pip installs have no ros2 CLI: the project's own player (publishes /clock, waits for the cameras)
    return [sys.executable, "-m", "fsmde_ros.player", bag, "--skip-unknown-types", "--wait-for-subscribers"]


def _rviz_command(config: str, use_sim_time: bool) -> list[str]:
    rviz = find_program("rviz2", "rviz2")
    if rviz is None:
        raise LaunchArgumentError(
            "launch argument rviz:=true but rviz2 is not installed (not in the ament index nor on PATH); "
            "install it (apt install ros-$ROS_DISTRO-rviz2) or leave rviz:=false")
    return [rviz, "-d", config, "--ros-args", "-p", f"use_sim_time:={str(use_sim_time).lower()}"]


def plan_launch(arg: Mapping[str, str], rviz_config: str) -> LaunchPlan:
    """Check the launch arguments and find every program; raises :class:`LaunchArgumentError`."""
    problem = params_file_problem(arg["params_file"])
    if problem:
        raise LaunchArgumentError(f"launch argument params_file: {problem}")
    bag = arg.get("bag", "").strip()
    sim = arg.get("use_sim_time", "auto").strip().lower()
    use_sim_time = bool(bag) if sim in ("", "auto") else as_bool(sim, "use_sim_time")
    rviz = as_bool(arg.get("rviz", "false"), "rviz")
    overrides = _overrides(arg, use_sim_time)
    node = _ament_executable(PACKAGE, EXECUTABLE)
    if node is None and shutil.which(EXECUTABLE) is None:
        raise LaunchArgumentError(
            f"{EXECUTABLE} is not installed: build the workspace (colcon build --packages-select {PACKAGE}) "
            f"or pip install -e . in the environment that runs the launch")
    return LaunchPlan(
        node_package=PACKAGE if node is not None else None,
        node_executable=EXECUTABLE,
        namespace=arg.get("namespace", "").strip(),
        params_file=arg["params_file"],
        overrides=overrides,
        bag_command=_bag_command(bag) if bag else None,
        rviz_command=_rviz_command(rviz_config, use_sim_time) if rviz else None,
    )
