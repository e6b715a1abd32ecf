"""``fsmde eval`` inside and outside the reflective-surface mask (bags from ``fsmde synth --reflective``).

The split is pooled over pixels, so it must add up: the pixels inside and outside
are all the scored pixels, and AbsRel / SqRel / δ1 of all pixels are the
fraction-weighted mix of inside and outside (RMSE as a root of weighted squares).
A known-answer case checks the arithmetic by hand; bags without the mask topic
get no "reflective" key at all.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fsmde_core.evaluate import REFLECTIVE_KEYS, ReflectiveSplit, add_eval_arguments, evaluate, run_eval


@pytest.fixture(scope="module")
def reflective_bag(tmp_path_factory) -> Path:
    """The conftest synthetic bag's world (ddad, seed 0, 160x96) rendered with reflective materials."""
    from fsmde_core.synthetic.writer import generate_bag

    out = tmp_path_factory.mktemp("reflective_bag") / "ddad"
    generate_bag("ddad", frames=2, seed=0, out=out, width=160, height=96, progress=False, workers=1,
                 reflective=True)
    return out


@pytest.fixture(scope="module")
def student(saved_student: Callable[..., Path]) -> Path:
    return saved_student(96, 160)


def test_split_known_answer_by_hand() -> None:
    gt = np.array([[[1.0, 2.0], [4.0, 10.0]]])
    pred = np.array([[[1.0, 3.0], [2.0, 10.0]]])
    refl = np.array([[[False, True], [True, False]]])
    split = ReflectiveSplit()
    split.add(pred, gt, np.ones_like(refl), refl, cap=80.0, min_depth=1e-3)
    out = split.summary()
    # inside: |d|/g = .5, .5; d²/g = .5, 1; d² = 1, 4; ratio 1.5, 2 -> δ1 0
    assert out["inside"] == pytest.approx({"abs_rel": 0.5, "sq_rel": 0.75, "rmse": math.sqrt(2.5), "a1": 0.0,
                                           "pixels": 2})
    assert out["outside"] == pytest.approx({"abs_rel": 0.0, "sq_rel": 0.0, "rmse": 0.0, "a1": 1.0, "pixels": 2})
    assert out["all"] == pytest.approx({"abs_rel": 0.25, "sq_rel": 0.375, "rmse": math.sqrt(1.25), "a1": 0.5,
                                        "pixels": 4})
    assert out["fraction"] == 0.5
    # a second set pools by pixel, not by image: one more exact pixel outside
    split.add(np.array([[[5.0]]]), np.array([[[5.0]]]), np.ones((1, 1, 1), bool), np.zeros((1, 1, 1), bool),
              cap=80.0, min_depth=1e-3)
    out = split.summary()
    assert out["all"]["abs_rel"] == pytest.approx(1.0 / 5) and out["fraction"] == pytest.approx(2 / 5)


def test_no_pixel_inside_gives_nan_not_an_error() -> None:
    split = ReflectiveSplit()
    split.add(np.ones((1, 2, 2)), np.ones((1, 2, 2)), np.ones((1, 2, 2), bool), np.zeros((1, 2, 2), bool), 80.0,
              1e-3)
    out = split.summary()
    assert math.isnan(out["inside"]["abs_rel"]) and out["inside"]["pixels"] == 0 and out["fraction"] == 0.0


def assert_split_is_consistent(refl: dict) -> None:
    inside, outside, everything = refl["inside"], refl["outside"], refl["all"]
    assert inside["pixels"] > 0 and outside["pixels"] > 0
    assert inside["pixels"] + outside["pixels"] == everything["pixels"]
    f = refl["fraction"]
    assert f == pytest.approx(inside["pixels"] / everything["pixels"])
    for key in ("abs_rel", "sq_rel", "a1"):
        assert everything[key] == pytest.approx(f * inside[key] + (1 - f) * outside[key], rel=1e-9)
    assert everything["rmse"] ** 2 == pytest.approx(f * inside["rmse"] ** 2 + (1 - f) * outside["rmse"] ** 2,
                                                    rel=1e-9)


def test_student_eval_splits_metrics_by_the_mask(reflective_bag, student, tmp_path) -> None:
    result = evaluate(student, reflective_bag, tmp_path, gt="synthetic", progress=False)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == result
    refl = result["reflective"]
    assert set(refl) == {"inside", "outside", "all", "fraction"}
    for region in ("inside", "outside", "all"):
        assert set(refl[region]) == {*REFLECTIVE_KEYS, "pixels"}
    assert 0.01 < refl["fraction"] < 0.9  # windows, paint, glass facades, puddles: a part of the scene
    assert_split_is_consistent(refl)
    md = (tmp_path / "report.md").read_text()
    assert "## Reflective surfaces" in md and "| inside |" in md and "| outside |" in md


def test_lidar_gt_is_split_too(reflective_bag, student, tmp_path) -> None:
    result = evaluate(student, reflective_bag, tmp_path, gt="lidar", mode="median", progress=False)
    assert_split_is_consistent(result["reflective"])
    assert result["reflective"]["all"]["pixels"] < 0.5 * 6 * 2 * 160 * 96  # projected LiDAR: not every pixel
    assert 0.0 < result["reflective"]["fraction"] < 1.0


def test_bag_without_the_mask_topic_has_no_reflective_key(synthetic_bag, student, tmp_path) -> None:
    result = evaluate(student, synthetic_bag, tmp_path, gt="synthetic", max_frames=1, progress=False)
    assert "reflective" not in result
    assert "## Reflective surfaces" not in (tmp_path / "report.md").read_text()


def test_cli_prints_the_split(reflective_bag, tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    args = parser.parse_intermixed_args(["--teacher", "synthetic", "--bag", str(reflective_bag), "--out",
                                         str(tmp_path / "rep"), "--gt", "synthetic", "--max-frames", "1",
                                         "--no-progress"])
    assert run_eval(args) == 0
    out = capsys.readouterr().out
    assert "reflective pixels" in out
    for region in ("inside", "outside", "all"):
        assert any(line.strip().startswith(region) and "abs_rel" in line for line in out.splitlines()), region
