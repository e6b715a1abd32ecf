"""Evaluation: Eigen metrics and alignment modes on hand-computed arrays, the
cross-view consistency metric on an analytic ground plane, and ``fsmde eval``
end to end on a tiny synthetic bag (student checkpoint and synthetic teacher)."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from bagfactory import SWEEP_OFFSETS_MS, BagSpec, write_bag
from PIL import Image

from fsmde_core.evaluate import add_eval_arguments, evaluate, run_eval
from fsmde_core.metrics import (
    BOUNDARY_KEYS,
    METRIC_KEYS,
    SCALE_KEYS,
    affine_fit,
    align_depth,
    cross_view_consistency,
    depth_metrics,
    image_scale_factors,
    median_scale,
    scale_error_summary,
)
from fsmde_core.predictors import EvalError, parse_teacher_options
from fsmde_core.rig import Rig


# ------------------------------------------------------------------ metrics
def test_metrics_known_answer_by_hand() -> None:
    gt = np.array([[1.0, 2.0], [4.0, 10.0]])
    pred = np.array([[1.0, 3.0], [2.0, 10.0]])
    m = depth_metrics(pred, gt, cap=80.0)
    # |d|/g = 0, .5, .5, 0 ; d²/g = 0, .5, 1, 0 ; d² = 0, 1, 4, 0 ; ratio = 1, 1.5, 2, 1
    assert m["abs_rel"] == pytest.approx(0.25)
    assert m["sq_rel"] == pytest.approx(0.375)
    assert m["rmse"] == pytest.approx(math.sqrt(1.25))
    assert m["rmse_log"] == pytest.approx(math.sqrt((math.log(1.5) ** 2 + math.log(2) ** 2) / 4))
    assert m["a1"] == pytest.approx(0.5)  # 1, 1 pass; 1.5, 2 fail
    assert m["a2"] == pytest.approx(0.75)  # 1.5 < 1.5625
    assert m["a3"] == pytest.approx(0.75)  # 2 >= 1.953125
    assert m["count"] == 4


def test_perfect_prediction_scores_perfectly() -> None:
    rng = np.random.default_rng(0)
    gt = rng.uniform(1, 70, size=(3, 8, 12))
    m = depth_metrics(gt.copy(), gt, cap=80.0)
    for key in ("abs_rel", "sq_rel", "rmse", "rmse_log"):
        np.testing.assert_allclose(m[key], 0.0, atol=1e-12)
    for key in ("a1", "a2", "a3"):
        np.testing.assert_allclose(m[key], 1.0)
    assert m["abs_rel"].shape == (3,)


def test_invalid_gt_masked_and_capped_pixels_are_not_scored() -> None:
    gt = np.array([[5.0, np.nan, np.inf, 0.0, 120.0, 5.0]])
    pred = np.array([[5.0, 1.0, 1.0, 1.0, 1.0, 50.0]])
    valid = np.array([[True, True, True, True, True, False]])  # last pixel is ego
    m = depth_metrics(pred, gt, valid, cap=80.0)
    assert m["count"] == 1 and m["abs_rel"] == 0.0


def test_prediction_is_clipped_to_cap_and_min_depth() -> None:
    gt = np.array([[50.0, 0.5]])
    pred = np.array([[np.inf, 1e-6]])
    m = depth_metrics(pred, gt, cap=60.0, min_depth=0.5)
    # inf -> 60 (|10|/50 = 0.2); 1e-6 -> 0.5 (exact)
    assert m["abs_rel"] == pytest.approx(0.1)


def test_image_without_valid_gt_gives_nan() -> None:
    m = depth_metrics(np.ones((2, 2, 2)), np.stack([np.full((2, 2), np.nan), np.ones((2, 2))]), cap=80.0)
    assert math.isnan(m["abs_rel"][0]) and m["abs_rel"][1] == 0.0


def test_median_mode_recovers_a_uniform_scale_error() -> None:
    rng = np.random.default_rng(1)
    gt = rng.uniform(2, 35, size=(2, 10, 16))
    pred = 2.0 * gt  # stays below the cap: clipping would change the answer
    assert depth_metrics(pred, gt, cap=80.0)["abs_rel"] == pytest.approx([1.0, 1.0])
    np.testing.assert_allclose(median_scale(pred, gt, np.ones_like(gt, bool)), 0.5)
    aligned = align_depth(pred, gt, None, "median", cap=80.0)
    m = depth_metrics(aligned, gt, cap=80.0)
    np.testing.assert_allclose(m["abs_rel"], 0.0, atol=1e-12)
    np.testing.assert_allclose(m["a1"], 1.0)


def test_metric_mode_is_the_identity() -> None:
    pred = np.array([[3.0, 4.0]])
    np.testing.assert_array_equal(align_depth(pred, np.array([[1.0, 2.0]]), None, "metric", 80.0), pred)


def test_affine_mode_recovers_an_inverse_depth_affine_distortion() -> None:
    rng = np.random.default_rng(2)
    gt = rng.uniform(1, 70, size=(2, 12, 20))
    # A relative-depth model: unknown per-image scale and shift of inverse depth.
    rel_inv = np.stack([3.0 / gt[0] + 0.2, 0.5 / gt[1] + 1.0])
    aligned = align_depth(rel_inv, gt, None, "affine", cap=80.0, pred_is_inverse=True)
    np.testing.assert_allclose(aligned, gt, rtol=1e-9)
    # The same distortion given as "depth" (1 / rel_inv) is aligned identically.
    aligned_d = align_depth(1.0 / rel_inv, gt, None, "affine", cap=80.0)
    np.testing.assert_allclose(aligned_d, gt, rtol=1e-9)
    # Median scaling cannot undo a shift in inverse depth.
    med = align_depth(1.0 / rel_inv, gt, None, "median", cap=80.0)
    assert depth_metrics(med, gt, cap=80.0)["abs_rel"].min() > 0.05


def test_affine_fit_known_answer_and_degenerate_guards() -> None:
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    s, t = affine_fit(x, 2 * x + 1, np.ones_like(x, bool))
    assert s[0] == pytest.approx(2.0) and t[0] == pytest.approx(1.0)
    # constant prediction: best constant, no division by zero
    s, t = affine_fit(np.full((1, 4), 5.0), x, np.ones_like(x, bool))
    assert s[0] == 0.0 and t[0] == pytest.approx(2.5)
    # fewer than two points: no fit
    s, t = affine_fit(x, x, np.array([[True, False, False, False]]))
    assert math.isnan(s[0]) and math.isnan(t[0])


def test_affine_alignment_never_produces_negative_or_infinite_depth() -> None:
    # Anti-correlated inverse depth: the fit has s < 0 and some aligned inverse depths <= 0.
    gt = np.array([[1.0, 2.0, 4.0, 8.0, 16.0, 32.0]])
    pred_inv = np.array([[0.0, 0.1, 0.2, 0.3, 0.4, 5.0]])
    out = align_depth(pred_inv, gt, None, "affine", cap=80.0, pred_is_inverse=True)
    assert np.all(np.isfinite(out)) and np.all(out > 0) and np.all(out <= 80.0)


def test_scale_factor_of_a_uniformly_scaled_prediction() -> None:
    """pred = 1.2 x GT: every image's s is 1.2, so bias = log 1.2 (x 1.2) and spread 0."""
    gt = np.random.default_rng(2).uniform(2, 50, size=(3, 8, 12))
    s = image_scale_factors(1.2 * gt, gt, cap=80.0)
    np.testing.assert_allclose(s, 1.2)
    summary = scale_error_summary(s)
    assert summary["bias_log"] == pytest.approx(math.log(1.2))
    assert summary["bias_factor"] == pytest.approx(1.2)
    assert summary["spread_log"] == pytest.approx(0.0, abs=1e-12)
    assert summary["p10"] == pytest.approx(1.2) and summary["p90"] == pytest.approx(1.2)
    assert summary["images"] == 3


def test_scale_factor_is_the_median_ratio_over_scored_pixels_only() -> None:
    """Half the pixels x 2, a quarter x 0.5, a quarter unscored (ego, NaN pred, beyond cap): s = 2."""
    gt = np.full((4, 4), 10.0)
    pred = np.full((4, 4), 20.0)
    pred[0, :3] = 5.0                      # 3 of 12 scored pixels at x 0.5: the median stays 2
    valid = np.ones((4, 4), bool)
    valid[3] = False                       # ego row: not scored even though it says x 0.1
    pred[3] = 1.0
    gt[2, 3], pred[1, 3] = 200.0, np.nan   # beyond the cap / a NaN prediction: not scored
    assert image_scale_factors(pred, gt, valid, cap=80.0) == pytest.approx(2.0)
    assert math.isnan(image_scale_factors(pred, np.full((4, 4), np.nan), cap=80.0))


def test_scale_summary_of_mixed_scales_has_the_right_bias_and_spread() -> None:
    """Images at x 2 and x 0.5 cancel in log space (bias 0, factor 1) with spread log 2; NaN images skipped."""
    s = np.array([2.0, 0.5, 2.0, 0.5, np.nan])
    summary = scale_error_summary(s)
    assert summary["bias_log"] == pytest.approx(0.0, abs=1e-12)
    assert summary["bias_factor"] == pytest.approx(1.0)
    assert summary["spread_log"] == pytest.approx(math.log(2.0))
    assert summary["images"] == 4
    skewed = scale_error_summary([1.0, 1.0, 1.0, 4.0])  # log s = 0, 0, 0, log 4
    assert skewed["bias_log"] == pytest.approx(math.log(4.0) / 4)
    assert skewed["spread_log"] == pytest.approx(math.log(4.0) * math.sqrt(3) / 4)
    assert skewed["p10"] == pytest.approx(1.0) and skewed["p90"] == pytest.approx(3.1)
    empty = scale_error_summary([np.nan])
    assert set(empty) == set(SCALE_KEYS) and empty["images"] == 0 and math.isnan(empty["bias_log"])


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="alignment mode"):
        align_depth(np.ones((2, 2)), np.ones((2, 2)), None, "scale", 80.0)


# --------------------------------------------------------------- cross-view
def ground_plane_depths(rig: Rig, max_depth: float = 60.0) -> np.ndarray:
    """Exact optical-Z depth of the plane z = 0 (base frame) in every camera; NaN above the horizon."""
    out = []
    for cam in rig.cameras:
        rays = cam.model.pixel_rays().astype(np.float64)  # unit optical Z
        rays_base = rays @ cam.T_base_cam[:3, :3].T
        with np.errstate(divide="ignore", invalid="ignore"):
            d = -cam.T_base_cam[2, 3] / rays_base[..., 2]
        out.append(np.where((rays_base[..., 2] < 0) & (d <= max_depth), d, np.nan))
    return np.stack(out)


@pytest.fixture(scope="module")
def plane_rig(surround_rig: Callable[..., Rig]) -> tuple[Rig, np.ndarray]:
    rig = surround_rig("ddad", 320, 192)
    return rig, ground_plane_depths(rig)


def test_cross_view_of_consistent_geometry_is_near_zero(plane_rig) -> None:
    rig, depths = plane_rig
    res = cross_view_consistency(depths, rig)
    assert set(res.pairs) == set(rig.adjacent_pairs()) and len(res.pairs) == 6
    assert all(np.isfinite(v) for v in res.pairs.values())  # every adjacent pair overlaps on the road
    # Only nearest-pixel sampling of a slanted plane remains (shrinks with resolution).
    assert res.mean < 0.02
    assert all(v == 1.0 for v in res.inliers.values())


def test_cross_view_detects_a_per_camera_scale_error(plane_rig) -> None:
    rig, depths = plane_rig
    scaled = depths.copy()
    k = rig.index("front_left")
    scaled[k] *= 1.2
    res = cross_view_consistency(scaled, rig)
    # i -> j: |z - 1.2 z| / 1.2 z = 1/6 ; j -> i: 0.2 ; mean of both directions 0.1833
    for pair, err in res.pairs.items():
        if k in pair:
            assert err == pytest.approx((1 / 6 + 0.2) / 2, abs=0.01)
        else:
            assert err < 0.03
    assert res.mean > cross_view_consistency(depths, rig).mean + 0.05


def test_cross_view_ignores_masked_pixels_and_occlusions(plane_rig) -> None:
    rig, depths = plane_rig
    k = rig.index("front")
    bottom = slice(depths.shape[1] - 40, None)
    broken = depths.copy()
    broken[k][bottom] *= 5.0  # the bottom rows wildly wrong (the hood, say)
    masks = np.zeros(depths.shape, bool)
    masks[k][bottom] = True
    clean = cross_view_consistency(depths, rig)
    res = cross_view_consistency(broken, rig, masks)
    for pair in res.pairs:
        assert res.pairs[pair] == pytest.approx(clean.pairs[pair], abs=0.01)
        assert res.inliers[pair] == 1.0
    # unmasked, the 5x pixels are dropped as occlusions: the error stays low, the inlier fraction falls
    unmasked = cross_view_consistency(broken, rig)
    touched = [p for p in res.pairs if k in p]
    assert all(unmasked.inliers[p] < 0.95 for p in touched)
    assert all(unmasked.pairs[p] < 0.05 for p in touched)


# -------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def random_student(saved_student: Callable[..., Path]) -> Path:
    return saved_student(96, 160)  # the synthetic bag's size: no resizing in the loop


def _png_is_nontrivial(path: Path) -> bool:
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float64)
    return path.stat().st_size > 5_000 and arr.shape[0] > 100 and arr.std() > 10


@pytest.fixture(scope="module")
def student_report(synthetic_bag, random_student, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("report")
    return evaluate(random_student, synthetic_bag, out, gt="synthetic", progress=False), out


def test_student_eval_writes_the_metrics_schema(student_report, camera_names: list[str]) -> None:
    result, out = student_report
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == result
    assert {"mode", "gt", "cap", "frames", "mean", "per_camera", "source"} <= set(on_disk)
    assert on_disk["mode"] == "metric" and on_disk["gt"] == "synthetic"
    assert on_disk["cap"] == 80.0  # the student's max_depth
    assert on_disk["frames"] == 3
    assert set(on_disk["mean"]) == {*METRIC_KEYS, *BOUNDARY_KEYS, "cross_view"}  # dense GT: boundary band too
    assert list(on_disk["per_camera"]) == camera_names  # the checkpoint's camera order
    for name in camera_names:
        assert set(on_disk["per_camera"][name]) == {*METRIC_KEYS, *BOUNDARY_KEYS}
        assert all(np.isfinite(v) for v in on_disk["per_camera"][name].values())
    assert len(on_disk["cross_view_pairs"]) == 6
    assert on_disk["mean"]["cross_view"] > 0
    assert on_disk["cross_view_gt"] is not None
    assert on_disk["source"].startswith("checkpoint:")
    assert list(on_disk["conditions"].values()) == ["clear"]  # a synthetic bag says what it was rendered under
    scale = on_disk["scale"]
    assert list(scale["per_camera"]) == camera_names
    assert scale["overall"]["images"] == 3 * len(camera_names)
    assert all(scale["per_camera"][n]["images"] == 3 for n in camera_names)
    for block in (scale["overall"], *scale["per_camera"].values()):
        assert set(block) == set(SCALE_KEYS)
        assert block["bias_factor"] == pytest.approx(math.exp(block["bias_log"]))
        assert block["spread_log"] >= 0 and 0 < block["p10"] <= block["p90"]
    # mean = mean of cameras
    for key in ("abs_rel", *BOUNDARY_KEYS):
        assert on_disk["mean"][key] == pytest.approx(np.mean([on_disk["per_camera"][n][key] for n in camera_names]))


def test_student_eval_writes_the_report_and_pictures(student_report, camera_names: list[str]) -> None:
    _, out = student_report
    for name in ("depth_mosaic.png", "error_maps.png", "per_camera_metrics.png"):
        assert _png_is_nontrivial(out / name), name
    md = (out / "report.md").read_text()
    for name in ("depth_mosaic.png", "error_maps.png", "per_camera_metrics.png", "| **mean** |", *camera_names,
                 "## Per-image scale error", "| **all images** |", "## Object boundaries",
                 "| camera | abs_rel_boundary | abs_rel_interior |"):
        assert name in md


def test_dense_gt_is_far_more_cross_view_consistent_than_a_random_student(student_report) -> None:
    result, _ = student_report
    assert result["cross_view_gt"] < 0.5 * result["mean"]["cross_view"]


def test_synthetic_teacher_in_affine_mode_beats_a_random_student(synthetic_bag, student_report, tmp_path) -> None:
    from fsmde_core.models.teachers import build_teacher

    student, _ = student_report
    result = evaluate(build_teacher("synthetic", quality=0.8), synthetic_bag, tmp_path, gt="synthetic",
                      progress=False)
    assert result["mode"] == "affine" and result["source"].startswith("teacher:synthetic")
    assert result["mean"]["abs_rel"] < 0.25 * student["mean"]["abs_rel"]
    assert result["mean"]["a1"] > student["mean"]["a1"] + 0.3


def test_lidar_gt_and_max_frames(synthetic_bag, random_student, tmp_path) -> None:
    result = evaluate(random_student, synthetic_bag, tmp_path, gt="lidar", mode="median", max_frames=2,
                      cap=50.0, progress=False)
    assert result["frames"] == 2 and result["gt"] == "lidar" and result["cap"] == 50.0
    assert np.isfinite(result["mean"]["abs_rel"])
    assert set(result["mean"]) == {*METRIC_KEYS, "cross_view"}  # sparse LiDAR: no boundary band
    assert "## Object boundaries" not in (tmp_path / "report.md").read_text()


# ---------------------------------------------------------------------- CLI
def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    return parser.parse_intermixed_args(list(argv))  # as fsmde_core.cli parses it


def test_cli_teacher_run(synthetic_bag, tmp_path, capsys) -> None:
    out = tmp_path / "rep"
    rc = run_eval(_args("--teacher", "synthetic", "--teacher-option", "quality=0.9", "--bag", str(synthetic_bag),
                        "--out", str(out), "--gt", "synthetic", "--max-frames", "1", "--no-progress"))
    assert rc == 0
    assert json.loads((out / "metrics.json").read_text())["frames"] == 1
    assert "abs_rel" in capsys.readouterr().out


def test_cli_missing_checkpoint_exits_2(synthetic_bag, tmp_path, capsys) -> None:
    rc = run_eval(_args("--checkpoint", str(tmp_path / "nope"), "--bag", str(synthetic_bag),
                        "--out", str(tmp_path / "r")))
    assert rc == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_cli_needs_exactly_one_of_checkpoint_or_teacher(tmp_path) -> None:
    with pytest.raises(SystemExit):
        _args("--bag", "b", "--out", "o")
    with pytest.raises(SystemExit):
        _args("--checkpoint", "c", "--teacher", "synthetic", "--bag", "b", "--out", "o")


def test_missing_synthetic_gt_is_a_clear_error(tmp_path, random_student, small_bag, capsys) -> None:
    assert not small_bag.spec.with_gt
    rc = run_eval(_args("--checkpoint", str(random_student), "--bag", str(small_bag.path), "--out", str(tmp_path / "r"),
                        "--gt", "synthetic", "--no-progress"))
    assert rc == 2
    assert "no dense synthetic ground truth" in capsys.readouterr().err


def test_bag_without_a_checkpoint_camera_is_a_clear_error(tmp_path, synthetic_bag, saved_student,
                                                         camera_names: list[str]) -> None:
    run = saved_student(32, 64, camera_names=[*camera_names[:5], "roof"])
    with pytest.raises(EvalError, match=r"lacks camera\(s\) \['roof'\]"):
        evaluate(run, synthetic_bag, tmp_path / "r", gt="synthetic", progress=False)


def test_teacher_options_are_parsed_as_yaml_values() -> None:
    opts = parse_teacher_options(["quality=0.5", "input_size=[378, 644]", "path_or_id=/m/da2", "fp16=false"])
    assert opts == {"quality": 0.5, "input_size": (378, 644), "path_or_id": "/m/da2", "fp16": False}
    with pytest.raises(EvalError, match="key=value"):
        parse_teacher_options(["quality"])


# ------------------------------------------------- the run's data settings
@pytest.fixture(scope="module")
def sweep_bag(tmp_path_factory) -> Path:
    return write_bag(tmp_path_factory.mktemp("b") / "sweep",
                     BagSpec(n_frames=4, period_ms=83.3, offsets_ms=list(SWEEP_OFFSETS_MS), latency_ms=(1.0, 3.0))).path


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory, random_student) -> Path:
    """A run directory as fsmde train leaves it: weights, student.json and config.json with its data section."""
    import shutil

    from fsmde_core.config import load_config

    run = tmp_path_factory.mktemp("sweep_run")
    for f in random_student.iterdir():
        shutil.copy(f, run / f.name)
    cfg = load_config(None, ["data.width=160", "data.height=96", "data.sync_tolerance_ms=55",
                             "data.phase_correction=false", "data.lidar_tolerance_ms=80"])
    (run / "config.json").write_text(json.dumps(cfg))
    return run


def test_eval_reads_the_runs_data_settings(sweep_run, tmp_path, capsys) -> None:
    """LiDAR 70 ms after the cameras (5 Hz): the defaults (50 ms) keep no set, the run's 80 ms keeps all."""
    bag = write_bag(tmp_path / "late", BagSpec(n_frames=3, period_ms=200.0, lidar_offset_ms=70.0)).path
    rc = run_eval(_args("--checkpoint", str(sweep_run), "--bag", str(bag), "--out", str(tmp_path / "r"),
                        "--no-progress"))
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["frames"] == 3
    bare = tmp_path / "bare"  # the same weights without the run's config.json: defaults apply
    bare.mkdir()
    for f in sweep_run.iterdir():
        if f.name != "config.json":
            (bare / f.name).write_bytes(f.read_bytes())
    assert run_eval(_args("--checkpoint", str(bare), "--bag", str(bag), "--out", str(tmp_path / "r2"))) == 2
    assert "within data.lidar_tolerance_ms=50" in capsys.readouterr().err


def test_eval_overrides_anywhere_and_the_error_names_the_spread(sweep_run, sweep_bag, tmp_path, capsys) -> None:
    rc = run_eval(_args("--checkpoint", str(sweep_run), "data.sync_tolerance_ms=20", "--bag", str(sweep_bag),
                        "--out", str(tmp_path / "r"), "--no-progress"))
    assert rc == 2
    err = capsys.readouterr().err
    assert "no complete camera set" in err and "data.sync_tolerance_ms=20" in err
    # the run's phase_correction=false was read: the fix names it
    assert "spread over median 42.6 ms, max 42.6 ms" in err and "set data.phase_correction=true" in err
    assert "would mix capture instants" in err  # 42.6 ms > half the 83 ms period: no plain tolerance offered
    assert "LiDAR" not in err  # the LiDAR is not blamed for the cameras
    assert len(err.strip().splitlines()) == 1


def test_eval_names_missing_lidar_sweeps_and_the_setting(random_student, tmp_path, capsys) -> None:
    bag = write_bag(tmp_path / "late", BagSpec(n_frames=3, lidar_offset_ms=45.0)).path
    args = ("--checkpoint", str(random_student), "--bag", str(bag), "--no-progress")
    assert run_eval(_args(*args, "--out", str(tmp_path / "r"), "data.lidar_tolerance_ms=20")) == 2
    err = capsys.readouterr().err
    assert "3 camera set(s) formed but none has a LiDAR sweep" in err and "45.0 ms away" in err
    assert "set data.lidar_tolerance_ms=" in err
    assert run_eval(_args(*args, "--out", str(tmp_path / "ok"), "data.lidar_tolerance_ms=60")) == 0


def test_eval_refuses_non_data_overrides_and_unknown_keys(random_student, synthetic_bag, tmp_path, capsys) -> None:
    base = ("--checkpoint", str(random_student), "--bag", str(synthetic_bag), "--out", str(tmp_path / "r"))
    assert run_eval(_args(*base, "optim.lr=1")) == 2
    assert "only data.* settings apply here" in capsys.readouterr().err
    assert run_eval(_args(*base, "data.sync_tol=3")) == 2
    assert "unknown key 'data.sync_tol'; valid data keys: sync_tolerance_ms, " in capsys.readouterr().err


def test_eval_teacher_option_errors_name_the_kind_and_valid_options(synthetic_bag, tmp_path, capsys) -> None:
    rc = run_eval(_args("--teacher", "depth_anything_v2", "--teacher-option", "quality=0.7", "--teacher-option",
                        "path_or_id=/models/da2", "--bag", str(synthetic_bag), "--out", str(tmp_path / "r")))
    assert rc == 2
    err = capsys.readouterr().err
    assert "'depth_anything_v2' has no option 'quality'; valid options: path_or_id" in err
    assert "TypeError" not in err



# -------------------------------------------------------------- corruptions
def test_robustness_summary_by_hand() -> None:
    from fsmde_core.evaluate import depth_estimation_error, robustness_summary

    assert depth_estimation_error(0.1, 0.9) == pytest.approx(0.1)  # (0.1 - 0.9 + 1) / 2
    clean = {"abs_rel": 0.1, "a1": 0.9}  # DEE 0.1
    per = {"fog": {"1": {"dee": 0.2}, "3": {"dee": 0.4}},  # DEE_fog = 0.3, RR = 0.7 / 0.9
           "dark": {"5": {"dee": 0.55}}}  # RR = 0.45 / 0.9
    summary = robustness_summary(clean, per)
    assert summary["dee_clean"] == pytest.approx(0.1)
    assert summary["per_corruption"]["fog"] == pytest.approx({"dee": 0.3, "rr": 0.7 / 0.9})
    assert summary["mdee"] == pytest.approx((0.3 + 0.55) / 2)
    assert summary["mrr"] == pytest.approx((0.7 / 0.9 + 0.45 / 0.9) / 2)
    assert summary["corruptions"] == 2 and summary["severities"] == 3
    useless = robustness_summary({"abs_rel": 1.5, "a1": 0.2}, per)  # clean DEE 1.15: RR undefined
    assert useless["dee_clean"] == pytest.approx(1.15) and useless["mdee"] == pytest.approx(summary["mdee"])
    assert math.isnan(useless["mrr"]) and math.isnan(useless["per_corruption"]["fog"]["rr"])


def test_corrupt_sample_changes_only_the_images_and_is_reproducible(synthetic_bag) -> None:
    from fsmde_core.data.bag import BagSource
    from fsmde_core.evaluate import corrupt_sample

    sample = next(iter(BagSource([synthetic_bag])))
    images = sample.images.copy()
    out = corrupt_sample(sample, "gaussian_noise", 3, frame_index=0)
    assert out.images.shape == images.shape and out.images.dtype == np.uint8
    np.testing.assert_array_equal(sample.images, images)  # the clean sample is not modified
    for k in range(len(images)):
        assert np.abs(out.images[k].astype(int) - images[k]).mean() > 5
    for key in ("sparse_depth", "gt_depth", "masks", "gt_labels", "T_base_cam"):
        assert getattr(out, key) is getattr(sample, key), key  # ground truth and calibration untouched
    np.testing.assert_array_equal(out.images, corrupt_sample(sample, "gaussian_noise", 3, frame_index=0).images)
    assert not np.array_equal(out.images, corrupt_sample(sample, "gaussian_noise", 3, frame_index=1).images)
    residual = out.images.astype(int) - images
    assert not np.array_equal(residual[0], residual[1])  # each camera draws its own noise
    reordered = corrupt_sample(_swap_first_cameras(sample), "gaussian_noise", 3, frame_index=0)
    np.testing.assert_array_equal(reordered.images[0], out.images[1])  # seeded by camera name, not position


def _swap_first_cameras(sample):
    from dataclasses import replace

    order = [1, 0, *range(2, len(sample.camera_names))]
    return replace(sample, camera_names=[sample.camera_names[k] for k in order], images=sample.images[order])


@pytest.fixture(scope="module")
def corruption_report(synthetic_bag, random_student, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("corrupted")
    # median alignment: the random student's clean DEE stays below 1, where RR is defined
    result = evaluate(random_student, synthetic_bag, out, gt="synthetic", mode="median", max_frames=2,
                      progress=False, corruptions="fog@3,gaussian_noise@5,dark")
    return result, out


def test_corruption_eval_writes_per_corruption_metrics_and_the_summary(corruption_report) -> None:
    result, out = corruption_report
    assert json.loads((out / "metrics.json").read_text()) == result
    per = result["corruptions"]
    assert {name: sorted(levels) for name, levels in per.items()} == {
        "fog": ["3"], "gaussian_noise": ["5"], "dark": ["1", "2", "3", "4", "5"]}
    for levels in per.values():
        for metrics in levels.values():
            assert set(metrics) == {*METRIC_KEYS, "dee"}
            assert all(np.isfinite(v) for v in metrics.values())
            assert metrics["dee"] == pytest.approx((metrics["abs_rel"] - metrics["a1"] + 1) / 2)
    robust = result["robustness"]
    dee_clean = (result["mean"]["abs_rel"] - result["mean"]["a1"] + 1) / 2
    assert robust["dee_clean"] == pytest.approx(dee_clean)
    dark_dee = np.mean([per["dark"][s]["dee"] for s in per["dark"]])
    assert robust["per_corruption"]["dark"]["dee"] == pytest.approx(dark_dee)
    assert robust["per_corruption"]["dark"]["rr"] == pytest.approx((1 - dark_dee) / (1 - dee_clean))
    assert robust["mdee"] == pytest.approx(np.mean([v["dee"] for v in robust["per_corruption"].values()]))
    assert robust["mrr"] == pytest.approx(np.mean([v["rr"] for v in robust["per_corruption"].values()]))
    assert robust["corruptions"] == 3 and robust["severities"] == 7 and robust["seed"] == 0
    assert 0 < dee_clean < 1
    # the student reads pixels: heavy noise moves its prediction, so its score
    assert per["gaussian_noise"]["5"]["abs_rel"] != pytest.approx(result["mean"]["abs_rel"], rel=1e-4)


def test_corruption_eval_leaves_the_clean_pass_alone_and_is_reproducible(
        corruption_report, synthetic_bag, random_student, tmp_path) -> None:
    result, _ = corruption_report
    again = evaluate(random_student, synthetic_bag, tmp_path, gt="synthetic", mode="median", max_frames=2,
                     progress=False, corruptions=[("fog", 3)])
    assert again["mean"] == pytest.approx(result["mean"])
    # seeded per frame / camera / corruption / severity: the same numbers whatever else ran
    assert again["corruptions"]["fog"]["3"] == pytest.approx(result["corruptions"]["fog"]["3"], rel=1e-9)


def test_corruption_eval_writes_the_table_and_a_picture_per_corruption(corruption_report) -> None:
    _, out = corruption_report
    md = (out / "report.md").read_text()
    assert "## Robustness to image corruptions" in md and "mDEE" in md and "mRR" in md
    assert "| corruption | abs_rel @1 | abs_rel @2 | abs_rel @3 | abs_rel @4 | abs_rel @5 | DEE | RR |" in md
    for name in ("fog", "gaussian_noise", "dark"):
        assert _png_is_nontrivial(out / f"corruption_{name}.png"), name
        assert f"(corruption_{name}.png)" in md
        assert f"| {name} |" in md
    with Image.open(out / "corruption_fog.png") as im:
        assert im.width > 1.5 * im.height  # input and prediction side by side


def test_cli_corruption_with_a_teacher_that_reads_no_pixels(synthetic_bag, tmp_path, capsys) -> None:
    out = tmp_path / "rep"
    rc = run_eval(_args("--teacher", "synthetic", "--bag", str(synthetic_bag), "--out", str(out), "--gt", "synthetic",
                        "--max-frames", "1", "--no-progress", "--corruption", "snow@3"))
    assert rc == 0
    result = json.loads((out / "metrics.json").read_text())
    assert list(result["corruptions"]) == ["snow"] and list(result["corruptions"]["snow"]) == ["3"]
    # the synthetic teacher derives depth from the (untouched) ground truth, not the pixels: no loss at all
    assert result["robustness"]["mrr"] == pytest.approx(1.0)
    assert (out / "corruption_snow.png").is_file()
    assert "mDEE" in capsys.readouterr().out


@pytest.mark.parametrize(("spec", "words"), [
    ("rain@3", "unknown corruption 'rain'"),
    ("fog@9", "severity must be 1..5"),
    ("fog,,dark", "empty item"),
])
def test_cli_bad_corruption_spec_is_one_line(synthetic_bag, tmp_path, capsys, spec: str, words: str) -> None:
    rc = run_eval(_args("--teacher", "synthetic", "--bag", str(synthetic_bag), "--out", str(tmp_path / "r"),
                        "--gt", "synthetic", "--corruption", spec))
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("fsmde eval: error: --corruption:") and words in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()
