"""Launch fsmde_ros' surround depth node, optionally with a bag replay and RViz.

    ros2 launch fsmde_ros surround_depth.launch.py model:=/path/to/run
    ros2 launch fsmde_ros surround_depth.launch.py model:=student.onnx device:=cuda \\
        bag:=/data/drive_0001 rviz:=true
    ros2 launch fsmde_ros surround_depth.launch.py model:=/path/to/run \\
        extrinsics_source:=calibration calibration_file:=/path/to/rig.yaml     # no tf2_ros needed

Arguments:
    params_file        node parameters (default: the installed config/surround_depth.yaml)
    model              overrides model.path ("" keeps the params file's value)
    backend            overrides model.backend (auto | torch | onnxruntime | tensorrt; "" keeps it)
    device             overrides model.device (cpu | cuda | cuda:N; "" keeps it)
    extrinsics_source  overrides extrinsics.source (tf | calibration; "" keeps it)
    calibration_file   overrides extrinsics.calibration_file (a rig YAML; "" keeps it)
    bag                rosbag2 to replay with `ros2 bag play BAG --clock` ("" = live cameras;
                       without the ros2 CLI: `python -m fsmde_ros.player`)
    use_sim_time       true | false | auto (default: true exactly when a bag is given)
    rviz               start rviz2 with config/surround_depth.rviz (default false)
    namespace          namespace of the node (topics in the params file are absolute)

Every program and file is found and checked (fsmde_ros.launch_plan) before
any process starts: rviz:=true without rviz2, say, stops the launch with one
line and never leaves a node running.

The node is a lifecycle node that configures and activates itself
(parameter ``autostart``, true in the default params file); set it to false
to drive the transitions from a lifecycle manager instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

from fsmde_ros.launch_plan import plan_launch
from launch import LaunchContext, LaunchDescription

PACKAGE = "fsmde_ros"
NODE_NAME = "surround_depth_node"  # the params file's key is /**/surround_depth_node
PARAMS_FILE = ("config", "surround_depth.yaml")
RVIZ_FILE = ("config", "surround_depth.rviz")
ARGUMENTS = ("params_file", "model", "backend", "device", "extrinsics_source", "calibration_file", "bag",
             "use_sim_time", "rviz", "namespace")


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


def _launch_setup(context: LaunchContext) -> list:
    """Resolve the arguments once, check them and find every program, then return the actions."""
    plan = plan_launch({name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS},
                       rviz_config=_share_file(RVIZ_FILE))
    actions: list = [
        LifecycleNode(
            package=plan.node_package, executable=plan.node_executable, name=NODE_NAME, namespace=plan.namespace,
            parameters=[plan.params_file, plan.overrides], output="screen", emulate_tty=True,
        )
    ]
    for command in (plan.bag_command, plan.rviz_command):
        if command is not None:
            actions.append(ExecuteProcess(cmd=command, output="screen"))
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
        DeclareLaunchArgument("extrinsics_source", default_value="",
                              description="tf | calibration ('' = params file)"),
        DeclareLaunchArgument("calibration_file", default_value="",
                              description="Rig calibration YAML for extrinsics.calibration_file ('' = params file)"),
        DeclareLaunchArgument("bag", default_value="", description="rosbag2 to replay with --clock"),
        DeclareLaunchArgument("use_sim_time", default_value="auto",
                              description="true | false | auto (= true when a bag is given)"),
        DeclareLaunchArgument("rviz", default_value="false", description="Start RViz2 with the fsmde config"),
        DeclareLaunchArgument("namespace", default_value="", description="Node namespace"),
        OpaqueFunction(function=_launch_setup),
    ])
