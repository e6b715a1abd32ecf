"""Per-pixel confidence end to end without ROS: the measures, the export, the backends, the estimator, eval.

The node's confidence topic is tested over DDS in ``test_node_confidence.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is needed for the student")
pytest.importorskip("onnxruntime", reason="onnxruntime is needed for the exported model")

from tiny_students import save_textured_student  # noqa: E402

from fsmde_core.estimator import CameraFrame, CloudOptions, SurroundDepthEstimator  # noqa: E402
from fsmde_core.evaluate import evaluate  # noqa: E402
from fsmde_core.export import export_onnx, structured_images, to_uint8_nhwc  # noqa: E402
from fsmde_core.metrics import abs_rel_by_confidence, confidence_histogram  # noqa: E402
from fsmde_core.models.confidence import (  # noqa: E402
    normalised_entropy_confidence,
    readout_mass_confidence,
    student_confidence,
)
from fsmde_core.models.student import SurroundDepthStudent, bin_expectation  # noqa: E402
from fsmde_core.rig import Rig, preset  # noqa: E402
from fsmde_core.runtime import BackendError, build_backend, resize_batch  # noqa: E402
from fsmde_core.runtime.sidecar import read_sidecar  # noqa: E402

H, W = 64, 96  # network size
IMG_H, IMG_W = 96, 160
K = 16


@pytest.fixture(scope="module")
def rig() -> Rig:
    return preset("ddad", IMG_W, IMG_H)


@pytest.fixture(scope="module")
def textured_run(tmp_path_factory: pytest.TempPathFactory, rig: Rig) -> Path:
    return save_textured_student(tmp_path_factory.mktemp("textured"), rig.names, H, W)


@pytest.fixture(scope="module")
def exported(textured_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The textured student exported with and without the confidence output."""
    out = tmp_path_factory.mktemp("onnx")
    with_conf, depth_only = out / "with_confidence.onnx", out / "depth_only.onnx"
    assert export_onnx(textured_run, with_conf, confidence=True)["passed"]
    assert export_onnx(textured_run, depth_only)["passed"]
    return {"confidence": with_conf, "depth_only": depth_only}


def _camera_images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:IMG_H, 0:IMG_W].astype(np.float32)
    return [np.clip(128 + 90 * np.sin(xx / (4 + k) + yy / (9 + k))[..., None] + rng.normal(0, 20, (IMG_H, IMG_W, 3)),
                    0, 255).astype(np.uint8) for k in range(n)]


# ------------------------------------------------------------------ the measures
def test_entropy_confidence_is_zero_for_uniform_one_for_one_hot_and_bounded() -> None:
    uniform = torch.zeros(2, K, 3, 5)
    np.testing.assert_allclose(normalised_entropy_confidence(uniform).numpy(), 0.0, atol=1e-6)
    one_hot = torch.full((2, K, 3, 5), -1e4)
    one_hot[:, 3] = 1e4  # saturated: exact zeros in the softmax must not give NaN
    np.testing.assert_allclose(normalised_entropy_confidence(one_hot).numpy(), 1.0, atol=1e-6)
    logits = torch.randn(4, K, 8, 8, generator=torch.Generator().manual_seed(0)) * 5
    conf = normalised_entropy_confidence(logits).numpy()
    assert conf.shape == (4, 1, 8, 8) and np.isfinite(conf).all() and conf.min() >= 0 and conf.max() <= 1
    assert 0.0 < conf.min() < conf.max() < 1.0  # a graded measure, not a constant


def test_mass_confidence_is_one_for_one_hot_and_zero_for_mass_split_between_far_bins() -> None:
    centres = torch.tensor([[1.0, 1.1, 2.0, 5.0, 10.0, 40.0]])
    one_hot = torch.zeros(1, 6, 2, 2)
    one_hot[:, 3] = 1.0
    readout = bin_expectation(one_hot, centres)
    np.testing.assert_allclose(readout_mass_confidence(one_hot, centres, readout).numpy(), 1.0, atol=1e-6)
    neighbours = torch.zeros(1, 6, 1, 1)
    neighbours[:, :2] = 0.5  # truth between two close centres: precise, not uncertain
    assert readout_mass_confidence(neighbours, centres, bin_expectation(neighbours, centres)).item() == 1.0
    split = torch.zeros(1, 6, 1, 1)
    split[:, 0], split[:, 5] = 0.5, 0.5  # a near and a far surface: the readout (6.3 m) is neither
    assert readout_mass_confidence(split, centres, bin_expectation(split, centres)).item() == 0.0
    assert normalised_entropy_confidence(torch.log(split.clamp_min(1e-12))).item() > 0.5  # entropy is fooled
    probs = torch.softmax(torch.randn(3, 6, 4, 4, generator=torch.Generator().manual_seed(1)) * 3, dim=1)
    conf = readout_mass_confidence(probs, centres.expand(3, 6), bin_expectation(probs, centres.expand(3, 6)))
    assert np.isfinite(conf.numpy()).all() and conf.min() >= 0 and conf.max() <= 1


@pytest.mark.parametrize("kind", ["mass", "entropy"])
def test_student_confidence_has_the_depth_shape_and_range(student_config, kind: str) -> None:
    torch.manual_seed(0)
    model = SurroundDepthStudent(student_config(H, W)).eval()
    with torch.inference_mode():
        out = model(torch.rand(2, 3, H, W))
        conf = student_confidence(model, out, kind)
    assert conf.shape == out.depth.shape
    assert torch.isfinite(conf).all() and conf.min() >= 0 and conf.max() <= 1
    with pytest.raises(ValueError, match="confidence kind"):
        student_confidence(model, out, "variance")


# ------------------------------------------------------------------ export and backends
def test_onnx_confidence_output_matches_torch_and_the_sidecar_says_so(textured_run: Path, exported) -> None:
    sidecar = read_sidecar(exported["confidence"])
    assert sidecar["confidence_output"] == "confidence" and sidecar["confidence_max_abs_diff"] < 1e-4
    assert read_sidecar(exported["depth_only"])["confidence_output"] is None
    ort, reference = build_backend("onnxruntime", exported["confidence"]), build_backend("torch", textured_run)
    assert ort.has_confidence and reference.has_confidence
    images = to_uint8_nhwc(structured_images(6, H, W, seed=3))
    depth, conf = ort.infer_with_confidence(images)
    ref_depth, ref_conf = reference.infer_with_confidence(images)
    assert conf.shape == depth.shape == (6, H, W) and conf.dtype == np.float32
    assert np.isfinite(conf).all() and conf.min() >= 0 and conf.max() <= 1 and conf.std() > 0.01
    np.testing.assert_allclose(conf, ref_conf, atol=1e-4)
    np.testing.assert_allclose(depth, ref_depth, atol=1e-3)
    np.testing.assert_array_equal(depth, ort.infer(images))  # the same depth with or without confidence


def test_a_model_without_confidence_says_how_to_get_it(exported) -> None:
    backend = build_backend("onnxruntime", exported["depth_only"])
    assert not backend.has_confidence
    images = to_uint8_nhwc(structured_images(6, H, W))
    with pytest.raises(BackendError, match="fsmde export --confidence"):
        backend.infer_with_confidence(images)
    with pytest.raises(ValueError, match="fsmde export --confidence"):
        SurroundDepthEstimator(backend, confidence=True)


def test_export_cli_writes_the_confidence_output(textured_run: Path, tmp_path: Path, capsys) -> None:
    from fsmde_core.cli import main

    out = tmp_path / "cli.onnx"
    assert main(["export", "--checkpoint", str(textured_run), "--onnx", str(out), "--confidence"]) == 0
    assert "confidence max abs diff" in capsys.readouterr().out
    assert build_backend("onnxruntime", out).has_confidence


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA device; none here")
def test_tensorrt_engine_gives_the_confidence_of_onnx_runtime(exported, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT Python package not installed")
    from fsmde_core.runtime.tensorrt_build import build_tensorrt_engine

    engine = build_tensorrt_engine(exported["confidence"], tmp_path / "c.engine", precision="fp32",
                                   cache_dir=tmp_path / "cache")
    trt = build_backend("tensorrt", engine, device="cuda")
    assert trt.has_confidence
    images = to_uint8_nhwc(structured_images(6, H, W, seed=4))
    depth, conf = trt.infer_with_confidence(images)
    ref_depth, ref_conf = build_backend("onnxruntime", exported["confidence"]).infer_with_confidence(images)
    assert np.abs(conf - ref_conf).max() < 1e-2 and np.abs(depth - ref_depth).max() < 1e-2
    np.testing.assert_array_equal(depth, trt.infer(images))


# ------------------------------------------------------------------ estimator
def test_estimator_carries_confidence_masked_like_depth(exported, rig: Rig) -> None:
    backend = build_backend("onnxruntime", exported["confidence"])
    images = _camera_images(6)
    mask = np.zeros((IMG_H, IMG_W), dtype=bool)
    mask[-30:] = True  # the hood
    frames = [CameraFrame(c.name, images[k], c.model, c.T_base_cam, mask=mask if k == 0 else None)
              for k, c in enumerate(rig.cameras)]
    result = SurroundDepthEstimator(backend, confidence=True).predict(frames)
    _, offline = backend.infer_with_confidence(resize_batch(images, (H, W)))
    assert result.confidence is not None and result.confidence.shape == result.depth.shape
    np.testing.assert_array_equal(np.isnan(result.confidence), np.isnan(result.depth))
    assert np.isnan(result.confidence[0]).any()  # the ego mask reached the confidence
    valid = ~np.isnan(result.depth)
    np.testing.assert_array_equal(result.confidence[valid], offline[valid])
    assert SurroundDepthEstimator(backend).predict(frames).confidence is None  # not asked: not computed


def test_min_confidence_leaves_unsure_pixels_out_of_the_cloud(exported, rig: Rig) -> None:
    backend = build_backend("onnxruntime", exported["confidence"])
    frames = [CameraFrame(c.name, img, c.model, c.T_base_cam) for c, img in zip(rig.cameras, _camera_images(6),
                                                                                   strict=True)]
    est = SurroundDepthEstimator(backend, confidence=True)
    result = est.predict(frames)
    stride, max_range = 2, 1e4
    threshold = float(np.float32(np.nanmedian(result.confidence)))  # compared in float32 like the estimator
    every = est.fuse(result, CloudOptions(stride=stride, max_range=max_range)).xyz.shape[0]
    kept = est.fuse(result, CloudOptions(stride=stride, max_range=max_range, min_confidence=threshold)).xyz
    sampled = result.confidence[:, ::stride, ::stride]
    assert kept.shape[0] == int((sampled >= threshold).sum())  # exactly the confident pixels (all have depth)
    assert 0 < kept.shape[0] < every == sampled.size
    with pytest.raises(ValueError, match="min_confidence"):
        SurroundDepthEstimator(backend).estimate(frames, CloudOptions(min_confidence=0.5))


# ------------------------------------------------------------------ eval
def test_abs_rel_by_confidence_splits_pixels_into_equal_groups() -> None:
    conf = np.linspace(0.0, 1.0, 1000, endpoint=False).reshape(1, 10, 100)
    gt = np.full_like(conf, 10.0)
    pred = gt * (1.0 + (1.0 - conf))  # error 1 - confidence: falls as confidence rises
    count, err_sum = confidence_histogram(pred, gt, conf, cap=80.0)
    assert count.sum() == 1000
    deciles = abs_rel_by_confidence(count, err_sum)
    assert len(deciles) == 10 and all(d["pixels"] == 100 for d in deciles)
    expected = [1.0 - (g + 0.5) / 10 + 0.0005 for g in range(10)]  # the mean error of each group
    np.testing.assert_allclose([d["abs_rel"] for d in deciles], expected, atol=1e-9)
    assert deciles[0]["confidence_min"] == 0.0 and deciles[-1]["confidence_max"] == 1.0
    nan_conf = conf.copy()
    nan_conf[0, 0] = np.nan  # no confidence: not counted
    assert confidence_histogram(pred, gt, nan_conf, cap=80.0)[0].sum() == 900
    assert abs_rel_by_confidence(np.zeros(1000), np.zeros(1000)) == []


def test_eval_writes_the_confidence_deciles_and_the_plot(saved_student, synthetic_bag: Path, tmp_path: Path,
                                                         camera_names) -> None:
    run = saved_student(96, 160, camera_names=camera_names)
    result = evaluate(run, synthetic_bag, tmp_path / "report", gt="synthetic", max_frames=2, progress=False)
    deciles = result["confidence_deciles"]
    assert 5 <= len(deciles) <= 10
    on_disk = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert on_disk["confidence_deciles"] == deciles
    lows = [d["confidence_min"] for d in deciles]
    assert lows == sorted(lows) and all(0 <= d["confidence_min"] < d["confidence_max"] <= 1 for d in deciles)
    assert math.isclose(sum(d["fraction"] for d in deciles), 1.0)
    overall = sum(d["abs_rel"] * d["pixels"] for d in deciles) / sum(d["pixels"] for d in deciles)
    assert overall == pytest.approx(_pixel_abs_rel(run, synthetic_bag), rel=1e-6)
    assert (tmp_path / "report" / "confidence_calibration.png").stat().st_size > 0
    assert "## Confidence calibration" in (tmp_path / "report" / "report.md").read_text()


def test_a_teacher_has_no_confidence_deciles(synthetic_bag: Path, tmp_path: Path) -> None:
    from fsmde_core.models.teachers import build_teacher

    result = evaluate(build_teacher("synthetic", quality=0.8), synthetic_bag, tmp_path, gt="synthetic", max_frames=1,
                      progress=False)
    assert result["confidence_deciles"] is None
    assert json.loads((tmp_path / "metrics.json").read_text())["confidence_deciles"] is None
    assert not (tmp_path / "confidence_calibration.png").exists()
    assert "Confidence calibration" not in (tmp_path / "report.md").read_text()


def _pixel_abs_rel(run: Path, bag: Path) -> float:
    """Pixel-weighted AbsRel of the first two frames, scored independently of the histogram."""
    from fsmde_core.data.bag import BagSource
    from fsmde_core.data.config import DataConfig
    from fsmde_core.metrics import eval_mask

    backend = build_backend("torch", run)
    errors = []
    for k, sample in enumerate(BagSource([bag], DataConfig(width=160, height=96, require_lidar=False))):
        if k == 2:
            break
        pred = backend.infer(sample.images)
        mask = eval_mask(sample.gt_depth, ~np.asarray(sample.masks, dtype=bool), 80.0)
        g = np.clip(sample.gt_depth[mask], 1e-3, 80.0)
        errors.append(np.abs(np.clip(pred[mask], 1e-3, 80.0) - g) / g)
    return float(np.concatenate(errors).mean())
