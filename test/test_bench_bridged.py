"""bench/bench_bridged.py hands its teacher settings to ``fsmde train`` and ``fsmde teacher fit`` as overrides:
they must be what those commands accept, or a long benchmark dies after its first hour."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def _args(tmp_path: Path) -> argparse.Namespace:
    return argparse.Namespace(depth=tmp_path / "depth", segmentation=tmp_path / "sam", input_size="[126,224]",
                              student_width=224, student_height=128, student_steps=300)


@pytest.mark.parametrize("bridged", [False, True])
def test_student_overrides_are_a_valid_training_config(tmp_path: Path, bridged: bool) -> None:
    from bench_bridged import student_overrides

    from fsmde_core.config import load_config

    gates = tmp_path / "gates" if bridged else None
    cfg = load_config(ROOT / "config" / "train_tiny.yaml", student_overrides(_args(tmp_path), gates))
    teacher = cfg["teacher"]
    if bridged:
        assert teacher["kind"] == "bridged"
        assert teacher["options"]["gates"] == str(gates) and teacher["options"]["segmentation"] == str(
            tmp_path / "sam")
    else:
        assert teacher["kind"] == "depth_anything_v2" and teacher["options"]["path_or_id"] == str(tmp_path / "depth")
    assert "quality" not in teacher["options"]  # the synthetic teacher's options do not leak into another kind
    assert teacher["options"]["input_size"] == [126, 224]
    assert cfg["data"]["width"] == 224 and cfg["optim"]["max_steps"] == 300


def test_every_tau_variant_is_a_valid_fit_config(tmp_path: Path) -> None:
    from bench_bridged import TAU_VARIANTS, fit_overrides

    from fsmde_core.teacher_fit import load_fit_config

    args = argparse.Namespace(**vars(_args(tmp_path)), width=224, height=126, fit_steps=300, fit_lr=5e-4)
    configs = [load_fit_config(ROOT / "config" / "teacher_bridged.yaml", fit_overrides(args, name))
               for name in TAU_VARIANTS]
    assert {c["gates"]["tau_mode"] for c in configs} == {"none", "fixed", "learnable"}
    assert all(c["models"]["input_size"] == [126, 224] and c["optim"]["max_steps"] == 300 for c in configs)
