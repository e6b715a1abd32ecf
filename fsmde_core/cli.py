"""``fsmde`` — one command line for the whole product.

    fsmde synth    write a synthetic surround rosbag2 (tests, demo, benchmarks)
    fsmde inspect  show what a bag holds and what is missing
    fsmde rig      write a bag's rig calibration YAML (+ node parameters)
    fsmde train    distil a student from a teacher on rosbag2 recordings
    fsmde eval     evaluate a checkpoint (or a teacher) on a bag, with pictures
    fsmde export   export a checkpoint to ONNX (and TensorRT where available)
    fsmde teacher  teacher tools: ``fsmde teacher fit`` trains the bridged teacher's gates on bags
    fsmde play     replay a bag into ROS 2 with /clock (no ros2 CLI needed)
    fsmde demo     synth -> train -> eval -> export -> node on the demo bag

Also reachable as ``ros2 run fsmde_ros fsmde <command> ...``.

Each subcommand lives in its own module and is imported only when chosen, so
``fsmde --help`` stays fast and ``fsmde inspect`` never loads torch or rclpy.
Commands of the ROS layer (``play``) come from the ``fsmde.commands`` entry
point group (fsmde_ros' setup.py): fsmde_core never imports fsmde_ros.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import entry_points
from types import ModuleType
from typing import NamedTuple

PLUGIN_GROUP = "fsmde.commands"


class Command(NamedTuple):
    """A subcommand, named by strings so that choosing another one never imports it."""

    module: str
    add_arguments: str  # function(parser) in module
    run: str  # function(args) -> exit code in module
    help: str


class CommandGroup(NamedTuple):
    """A command with verbs (``fsmde teacher fit``): each verb is a :class:`Command` of its own."""

    commands: dict[str, Command]
    help: str


TEACHER_COMMANDS: dict[str, Command] = {
    "fit": Command("fsmde_core.teacher_fit", "add_fit_arguments", "run_fit",
                   "train the bridged teacher's Bridging Gates on recordings against their LiDAR"),
}

CORE_COMMANDS: dict[str, Command | CommandGroup] = {
    "synth": Command("fsmde_core.synthetic.writer", "add_synth_arguments", "run_synth",
                     "write a synthetic surround rosbag2 with LiDAR, tf_static and dense ground truth"),
    "inspect": Command("fsmde_core.data.inspect", "add_inspect_arguments", "run_inspect",
                       "print a bag's topics, rates, camera layout and what is missing"),
    "rig": Command("fsmde_core.data.rigfile", "add_rig_arguments", "run_rig",
                   "write the bag's rig calibration YAML (and node parameters) from /tf_static and camera_info"),
    "train": Command("fsmde_core.train", "add_train_arguments", "run_train",
                     "distil the student from a teacher on rosbag2 recordings"),
    "eval": Command("fsmde_core.evaluate", "add_eval_arguments", "run_eval",
                    "evaluate a checkpoint or teacher: metrics.json + report with pictures"),
    "export": Command("fsmde_core.export", "add_export_arguments", "run_export",
                      "export a checkpoint to ONNX (and a TensorRT engine where TensorRT exists)"),
    "demo": Command("fsmde_core.demo", "add_demo_arguments", "run_demo",
                    "the whole product end to end on a synthetic bag, with pictures"),
    "teacher": CommandGroup(TEACHER_COMMANDS, "teacher tools; 'fit' trains the bridged teacher's gates on bags"),
}


def plugin_commands() -> dict[str, Command]:
    """Commands other packages register under the ``fsmde.commands`` entry point group.

    Why a registry: the ROS layer (``fsmde play``) depends on the core, never the other way
    round; fsmde_ros' setup.py names its commands here. An entry point must load a
    :class:`Command` from a light module (no rclpy), so ``fsmde --help`` stays fast.
    """
    found = {}
    for point in entry_points(group=PLUGIN_GROUP):
        try:
            command = point.load()
        except ImportError as exc:
            print(f"fsmde: command {point.name!r} ({point.value}) is unavailable: {exc}", file=sys.stderr)
            continue
        found[point.name] = Command(*command)
    return found


def all_commands() -> dict[str, Command | CommandGroup]:
    return {**CORE_COMMANDS, **plugin_commands()}


def _top_parser(commands: dict[str, Command | CommandGroup], prog: str = "fsmde",
                description: str = "Full-surround metric depth: synthetic data, distillation, evaluation, export, "
                                   "replay.") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Run '{prog} <command> --help' for a command's options.",
    )
    parser.add_argument("command", choices=sorted(commands), metavar="command",
                        help="; ".join(f"{name}: {c.help}" for name, c in commands.items()))
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _load(name: str, command: Command) -> ModuleType | None:
    """The command's module; None (said in one line) when what it needs is not installed."""
    try:
        return importlib.import_module(command.module)
    except ImportError as exc:
        print(f"fsmde {name}: needs a package that is not installed: {exc} "
              f"(ROS 2 commands: pip install -r requirements-ros.txt, or source a ROS 2 install)", file=sys.stderr)
        return None


def parse_command(argv: list[str], commands: dict[str, Command | CommandGroup],
                  prog: str = "fsmde") -> tuple[str, ModuleType, argparse.Namespace] | None:
    """``[command, args...]`` -> (name, its module, its parsed arguments); None when it cannot load.

    A group's verb is part of the name (``"teacher fit"``). Intermixed parsing: ``key=value``
    overrides may sit anywhere among the options, also after ``--out`` (``fsmde train --out run
    optim.lr=1e-3``); argparse cannot intermix with sub-parsers, hence groups are resolved here.
    """
    name = _top_parser(commands, prog).parse_args(argv[:1]).command
    command = commands[name]
    if isinstance(command, CommandGroup):
        if len(argv) < 2 or argv[1] in ("-h", "--help"):
            _top_parser(command.commands, f"{prog} {name}", command.help).print_help()
            raise SystemExit(0 if len(argv) >= 2 else 2)
        parsed = parse_command(argv[1:], command.commands, f"{prog} {name}")  # the verb's own parser
        return None if parsed is None else (f"{name} {parsed[0]}", *parsed[1:])
    module = _load(name, command)
    if module is None:
        return None
    parser = argparse.ArgumentParser(prog=f"{prog} {name}", description=command.help)
    getattr(module, command.add_arguments)(parser)
    return name, module, parser.parse_intermixed_args(argv[1:])


def resolve_command(name: str, commands: dict[str, Command | CommandGroup]) -> Command:
    """The :class:`Command` of a (possibly grouped) name such as ``"teacher fit"``."""
    first, _, rest = name.partition(" ")
    command = commands[first]
    return resolve_command(rest, command.commands) if isinstance(command, CommandGroup) else command


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = all_commands()
    if not argv or argv[0] in ("-h", "--help"):
        _top_parser(commands).print_help()
        return 0 if argv else 2
    parsed = parse_command(argv, commands)
    if parsed is None:
        return 2
    name, module, args = parsed
    try:
        return int(getattr(module, resolve_command(name, commands).run)(args) or 0)
    except KeyboardInterrupt:
        print(f"fsmde {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
