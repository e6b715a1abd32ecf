"""``fsmde``'s command line: the core never imports the ROS layer, ROS commands come from a registry.

The import checks run in a fresh interpreter with a meta-path blocker in front of every other finder,
so an import of ``fsmde_ros`` or ``rclpy`` anywhere in ``fsmde_core`` (even inside a try) is recorded.
They import the real modules and run the real ``fsmde`` entry point.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsmde_core import cli

REPO = Path(__file__).resolve().parents[1]

BLOCKER = """
import importlib, importlib.abc, json, pkgutil, sys
BLOCKED = tuple(sys.argv[1].split(","))
attempts = []

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ImportError(f"blocked for this test: {name}")
        return None

sys.meta_path.insert(0, Blocker())
"""

IMPORT_ALL_CORE = BLOCKER + """
import fsmde_core
failed = {}
for info in pkgutil.walk_packages(fsmde_core.__path__, "fsmde_core."):
    try:
        importlib.import_module(info.name)
    except ImportError as exc:
        failed[info.name] = str(exc)
print(json.dumps({"attempts": attempts, "failed": failed,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""

RUN_CLI = BLOCKER + """
from fsmde_core.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_no_core_module_imports_ros() -> None:
    done = _python(IMPORT_ALL_CORE, "fsmde_ros,rclpy")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"attempts": [], "failed": {}, "loaded": []}


def test_no_core_source_imports_ros_even_inside_a_function() -> None:
    """Lazy imports inside functions escape the import check above; the source does not."""
    found = []
    for path in sorted((REPO / "fsmde_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names
                      if n.split(".")[0] in ("fsmde_ros", "rclpy")]
    assert found == []


def test_help_lists_the_ros_commands_without_loading_rclpy() -> None:
    done = _python(RUN_CLI, "rclpy", "--help")
    assert done.returncode == 0, done.stderr
    listed = " ".join(done.stdout.split())  # argparse wraps the help text
    for name in ("synth", "train", "eval", "export", "demo", "play"):
        assert f"{name}: " in listed, done.stdout
    assert done.stderr == ""


def test_a_ros_command_without_ros_is_one_clear_line() -> None:
    done = _python(RUN_CLI, "rclpy", "play", "some_bag")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "fsmde play: needs a package that is not installed: blocked for this test: rclpy (ROS 2 commands: "
        "pip install -r requirements-ros.txt, or source a ROS 2 install)"]


def test_play_is_registered_by_the_ros_layer_not_the_core() -> None:
    assert "play" not in cli.CORE_COMMANDS
    plugins = cli.plugin_commands()
    assert plugins["play"].module == "fsmde_ros.player"
    module = importlib.import_module(plugins["play"].module)
    assert callable(getattr(module, plugins["play"].add_arguments)) and callable(getattr(module, plugins["play"].run))


@pytest.mark.parametrize("argv", [
    ["train", "--out", "runs/x", "optim.lr=0.001", "--config", "c.yaml", "data.stride=2"],
    ["train", "optim.lr=0.001", "--out", "runs/x", "data.stride=2", "--config", "c.yaml"],
])
def test_train_overrides_may_follow_any_option(argv: list[str]) -> None:
    pytest.importorskip("torch", reason="fsmde train's module needs torch")
    name, _, args = cli.parse_command(argv, cli.CORE_COMMANDS)
    assert name == "train"
    assert args.out == Path("runs/x") and args.config == Path("c.yaml")
    assert args.overrides == ["optim.lr=0.001", "data.stride=2"]


def test_eval_overrides_may_follow_out() -> None:
    pytest.importorskip("torch", reason="fsmde eval's module needs torch")
    _, _, args = cli.parse_command(["eval", "--checkpoint", "run", "--bag", "b", "--out", "rep",
                                    "data.sync_tolerance_ms=45", "--gt", "synthetic"], cli.CORE_COMMANDS)
    assert args.out == Path("rep") and args.gt == "synthetic" and args.overrides == ["data.sync_tolerance_ms=45"]
