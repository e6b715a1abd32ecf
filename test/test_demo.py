"""``fsmde demo`` end to end at toy size (no node step): every CLI step it prints runs, and
its summary reports the held-out score a newcomer is told to look at."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="fsmde demo trains a student")
pytest.importorskip("onnxruntime", reason="fsmde demo exports and checks ONNX")

REPO = Path(__file__).resolve().parents[1]


def _demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fsmde_core.cli", "demo", "--out", str(out), "--skip-node", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "MPLBACKEND": "Agg"})


def test_demo_trains_on_several_streets_and_reports_the_heldout_score(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = _demo(out, "--train-scenes", "2", "--train-frames", "2", "--eval-frames", "2", "--steps", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    # several training streets, none of them the held-out one
    assert [Path(b).name for b in summary["bags"]] == ["train_seed11", "train_seed12", "heldout_seed2"]
    assert summary["student"] == "base" and summary["steps"] == 2
    assert summary["heldout_abs_rel"] == pytest.approx(summary["metrics"]["abs_rel"], abs=1e-4)
    assert 0 < summary["teacher_affine_abs_rel"] < summary["heldout_abs_rel"]
    assert "held-out metric AbsRel of the base student after 2 steps" in done.stdout
    # the train command it printed (the tutorial) names both training bags
    train_line = next(line for line in done.stdout.splitlines() if line.startswith("$ ") and " train " in line)
    assert train_line.count("--bag") == 2
    assert (out / "run" / "student.onnx").is_file() and (out / "report" / "depth_mosaic.png").is_file()


def test_demo_refuses_a_zero_count_in_one_line(tmp_path: Path) -> None:
    done = _demo(tmp_path / "demo", "--train-scenes", "0")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "fsmde demo: --train-scenes, --train-frames, --eval-frames and --steps must be >= 1"]
