"""bench_distill reuses a finished run only when it was trained with today's settings.

Run directories are named by variant and seed; a moved config default (a loss
term switched on) must not let an old run stand in for the new variant, nor be
resumed from its checkpoints with other settings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # bench scripts are not a package
import bench_distill  # noqa: E402

from fsmde_core.config import load_config  # noqa: E402

CONFIG = ROOT / "config" / "train_tiny.yaml"
SETTINGS = ["optim.max_steps=300", "optim.epochs=1000", "seed=0"]


def _trained_run(run_dir: Path, overrides: list[str]) -> Path:
    """A run directory as `fsmde train` leaves it, as far as the reuse check reads it (config.json)."""
    run_dir.mkdir(parents=True)
    cfg = load_config(CONFIG, [*SETTINGS, *overrides])
    cfg["data"]["bags"] = ["/somewhere/else"]  # the data section is the work directory's business
    (run_dir / "config.json").write_text(json.dumps(cfg))
    return run_dir


def test_same_settings_nothing_changed(tmp_path: Path) -> None:
    run = _trained_run(tmp_path / "c_seed0", ["loss.w_ckd=0.3"])
    assert bench_distill.settings_changed(run, CONFIG, [*SETTINGS, "loss.w_ckd=0.3"]) == []
    assert bench_distill.settings_changed(tmp_path / "missing", CONFIG, SETTINGS) == []


def test_moved_setting_is_named(tmp_path: Path) -> None:
    run = _trained_run(tmp_path / "c_seed0", ["loss.w_ckd=0.3"])
    changed = bench_distill.settings_changed(run, CONFIG, [*SETTINGS, "loss.w_ckd=0.7", "optim.max_steps=600"])
    assert changed == ["loss.w_ckd: 0.3 there, 0.7 now", "optim.max_steps: 300 there, 600 now"]


def test_train_refuses_a_run_trained_with_other_settings(tmp_path: Path) -> None:
    run = _trained_run(tmp_path / "runs" / "c_ckd_vrkd_seed0", ["loss.use_vrkd=false"])
    ctx = bench_distill.Context(tmp_path, 4, [sys.executable, "-m", "fsmde_core.cli"], [])
    with pytest.raises(SystemExit) as stop:
        bench_distill.train(ctx, run, [], 300, 0, [])
    message = str(stop.value)
    assert str(run) in message and "loss.use_vrkd: False there, True now" in message
    assert "\n" not in message
    assert ctx.log == []  # nothing was run
