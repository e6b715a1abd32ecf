"""The training-without-LiDAR benchmark's bookkeeping (bench/bench_selfsup.py): variants, rows, paired claims."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench scripts are not a package
import bench_selfsup as bs


def test_every_variant_is_valid_and_the_lidar_free_ones_switch_every_lidar_term_off() -> None:
    from fsmde_core.config import TrainConfig, load_config

    args = bs.parse_args(["--add-variant", "x=loss.photometric_pose=posenet"])
    assert list(args.table)[:5] == ["a_lidar", "b_photo", "c_photo_kd", "d_photo_kd_refl", "e_lidar_photo"]
    for name, (no_lidar, overrides) in args.table.items():
        cfg = TrainConfig.from_dict(load_config(bs.ROOT / "config" / "train_tiny.yaml", overrides))
        if no_lidar:  # trained on the --no-lidar bags: the trainer would refuse any LiDAR term
            assert cfg.loss.lidar_terms == [] and cfg.loss.use_photometric, name
    assert args.table["d_photo_kd_refl"][1][-1] == "loss.use_reflective_mask=true"
    assert args.table["x"][0] is True  # an added variant trains on the camera-only bags


def test_unknown_variant_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bs.parse_args(["--variants", "a_lidar,z_nope"])
    assert "z_nope" in capsys.readouterr().err


def _metrics(abs_rel: float, inside: float | None, bias_log: float) -> dict:
    m = {"mean": {"abs_rel": abs_rel, "rmse": 5.0, "a1": 0.7, "cross_view": 0.15},
         "scale": {"overall": {"bias_log": bias_log, "spread_log": 0.1}}}
    if inside is not None:
        m["reflective"] = {"inside": {"abs_rel": inside}, "outside": {"abs_rel": abs_rel * 0.9}, "fraction": 0.06}
    return m


def test_rows_carry_the_reflective_split_and_the_metric_scale_error() -> None:
    row = bs.row_from_metrics(_metrics(0.2, 0.9, math.log(1.08)))
    assert row["reflective_abs_rel"] == 0.9 and row["reflective_fraction"] == 0.06
    assert row["scale_error"] == pytest.approx(0.08)
    assert bs.row_from_metrics(_metrics(0.2, None, math.log(0.95)))["reflective_abs_rel"] is None
    assert bs.row_from_metrics(_metrics(0.2, None, math.log(0.95)))["scale_error"] == pytest.approx(0.05)


def test_claims_are_paired_over_the_seeds_both_finished() -> None:
    rows = {"a_lidar": [bs.row_from_metrics(_metrics(a, 1.0, 0.0)) for a in (0.20, 0.22, 0.21)],
            "c_photo_kd": [bs.row_from_metrics(_metrics(a, 0.8, 0.02)) for a in (0.24, 0.25, 0.26)],
            "d_photo_kd_refl": [bs.row_from_metrics(_metrics(0.23, r, 0.02)) for r in (0.6, 0.62)] + [None]}
    diffs = bs.paired(rows, "a_lidar")
    assert diffs["c_photo_kd"]["abs_rel"].n == 3 and diffs["c_photo_kd"]["abs_rel"].mean == pytest.approx(0.04)
    assert diffs["d_photo_kd_refl"]["reflective_abs_rel"].n == 2  # the failed seed drops its pair
    args = argparse.Namespace(steps=300, seeds=[0, 1, 2], train_scenes=12, train_frames=8, eval_frames=4)
    text = "\n".join(bs.report(args, rows, ["cmd"], 1.0))
    assert "| c_photo_kd | 3 |" in text and "Reflective masking, paired d_photo_kd_refl − c_photo_kd" in text
    assert "| d_photo_kd_refl | 2 |" in text and "failed" in text
