"""Launch fsmde_ros' surround depth node, optionally with a bag replay and RViz.

    ros2 launch fsmde_ros surround_depth.launch.py model:=/path/to/run
    ros2 launch fsmde_ros surround_depth.launch.py model:=student.onnx device:=cuda \\
        bag:=/data/drive_0001 rviz:=true

Arguments:
    params_file   node parameters (default: the installed config/surround_depth.yaml)
    model         overrides model.path ("" keeps the params file's value)
    backend       overrides model.backend (auto | torch | onnxruntime | tensorrt; "" keeps it)
    device        overrides model.device (cpu | cuda | cuda:N; "" keeps it)
    bag           rosbag2 to replay with `ros2 bag play BAG --clock` ("" = live cameras)
    use_sim_time  true | false | auto (default: true exactly when a bag is given)
    rviz          start rviz2 with config/surround_depth.rviz (default false)
    namespace     namespace of the node (topics in the params file are absolute)

The node is a lifecycle node that configures and activates itself
(parameter ``autostart``, true in the default params file); set it to false
to drive the transitions from a lifecycle manager instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from launch import LaunchContext, LaunchDescription

PACKAGE = "fsmde_ros"
EXECUTABLE = "surround_depth_node"
NODE_NAME = "surround_depth_node"  # the params file's key is /**/surround_depth_node
PARAMS_FILE = ("config", "surround_depth.yaml")
RVIZ_FILE = ("config", "surround_depth.rviz")
TRUE_WORDS = ("true", "1", "yes", "on")


def _share_file(parts: tuple[str, ...]) -> str:
    """A file installed under share/fsmde_ros, or the source tree's copy when not installed."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            return os.path.join(get_package_share_directory(PACKAGE), *parts)
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    return str(Path(__file__).resolve().parents[1].joinpath(*parts))


def _as_bool(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value not in (*TRUE_WORDS, "false", "0", "no", "off"):
        raise ValueError(f"launch argument {name}:={text!r} is not a boolean (true/false)")
    return value in TRUE_WORDS


def _launch_setup(context: LaunchContext) -> list:
    """Resolve the arguments once, so `use_sim_time:=auto` can depend on `bag`."""
    arg = {name: LaunchConfiguration(name).perform(context) for name in
           ("params_file", "model", "backend", "device", "bag", "use_sim_time", "rviz", "namespace")}
    bag = arg["bag"].strip()
    sim = arg["use_sim_time"].strip().lower()
    use_sim_time = bool(bag) if sim in ("", "auto") else _as_bool(sim, "use_sim_time")
    overrides: dict[str, object] = {"use_sim_time": use_sim_time}
    for launch_name, param in (("model", "model.path"), ("backend", "model.backend"), ("device", "model.device")):
        if arg[launch_name].strip():
            overrides[param] = arg[launch_name].strip()
    actions: list = [
        LifecycleNode(
            package=PACKAGE, executable=EXECUTABLE, name=NODE_NAME, namespace=arg["namespace"],
            parameters=[arg["params_file"], overrides], output="screen", emulate_tty=True,
        )
    ]
    if bag:
        actions.append(ExecuteProcess(cmd=["ros2", "bag", "play", bag, "--clock"], output="screen"))
    if _as_bool(arg["rviz"], "rviz"):
        actions.append(Node(
            package="rviz2", executable="rviz2", name="rviz2", output="screen",
            arguments=["-d", _share_file(RVIZ_FILE)], parameters=[{"use_sim_time": use_sim_time}],
        ))
    return actions


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=_share_file(PARAMS_FILE),
                              description="Node parameters YAML"),
        DeclareLaunchArgument("model", default_value="",
                              description="Student model (run dir / .safetensors / .onnx / .engine)"),
        DeclareLaunchArgument("backend", default_value="",
                              description="auto | torch | onnxruntime | tensorrt ('' = params file)"),
        DeclareLaunchArgument("device", default_value="", description="cpu | cuda | cuda:N ('' = params file)"),
        DeclareLaunchArgument("bag", default_value="", description="rosbag2 to replay with --clock"),
        DeclareLaunchArgument("use_sim_time", default_value="auto",
                              description="true | false | auto (= true when a bag is given)"),
        DeclareLaunchArgument("rviz", default_value="false", description="Start RViz2 with the fsmde config"),
        DeclareLaunchArgument("namespace", default_value="", description="Node namespace"),
        OpaqueFunction(function=_launch_setup),
    ])
