"""``fsmde`` — one command line for the whole product.

    fsmde synth    write a synthetic surround rosbag2 (tests, demo, benchmarks)
    fsmde inspect  show what a bag holds and what is missing
    fsmde rig      write a bag's rig calibration YAML (+ node parameters)
    fsmde train    distil a student from a teacher on rosbag2 recordings
    fsmde eval     evaluate a checkpoint (or a teacher) on a bag, with pictures
    fsmde export   export a checkpoint to ONNX (and TensorRT where available)
    fsmde play     replay a bag into ROS 2 with /clock (no ros2 CLI needed)
    fsmde demo     synth -> train -> eval -> export -> node on the demo bag

Also reachable as ``ros2 run fsmde_ros fsmde <command> ...``.

Each subcommand lives in its own module and is imported only when chosen, so
``fsmde --help`` stays fast and ``fsmde inspect`` never loads torch or rclpy.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, add-arguments function, run function, one-line help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "synth": ("fsmde_core.synthetic.writer", "add_synth_arguments", "run_synth",
              "write a synthetic surround rosbag2 with LiDAR, tf_static and dense ground truth"),
    "inspect": ("fsmde_core.data.inspect", "add_inspect_arguments", "run_inspect",
                "print a bag's topics, rates, camera layout and what is missing"),
    "rig": ("fsmde_core.data.rigfile", "add_rig_arguments", "run_rig",
            "write the bag's rig calibration YAML (and node parameters) from /tf_static and camera_info"),
    "train": ("fsmde_core.train", "add_train_arguments", "run_train",
              "distil the student from a teacher on rosbag2 recordings"),
    "eval": ("fsmde_core.evaluate", "add_eval_arguments", "run_eval",
             "evaluate a checkpoint or teacher: metrics.json + report with pictures"),
    "export": ("fsmde_core.export", "add_export_arguments", "run_export",
               "export a checkpoint to ONNX (and a TensorRT engine where TensorRT exists)"),
    "play": ("fsmde_ros.player", "add_play_arguments", "run_play",
             "replay a rosbag2 into ROS 2 at recorded rate with /clock"),
    "demo": ("fsmde_core.demo", "add_demo_arguments", "run_demo",
             "the whole product end to end on a synthetic bag, with pictures"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsmde",
        description="Full-surround metric depth: synthetic data, distillation, evaluation, export, replay.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'fsmde <command> --help' for a command's options.",
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command",
                        help="; ".join(f"{k}: {v[3]}" for k, v in COMMANDS.items()))
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    ns = top.parse_args(argv[:1])
    module_name, add_name, run_name, help_text = COMMANDS[ns.command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"fsmde {ns.command}", description=help_text)
    getattr(module, add_name)(parser)
    # Intermixed: key=value overrides may sit anywhere among the options (fsmde train / eval / inspect).
    args = parser.parse_intermixed_args(argv[1:])
    try:
        return int(getattr(module, run_name)(args) or 0)
    except KeyboardInterrupt:
        print(f"fsmde {ns.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
