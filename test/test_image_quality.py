"""The per-camera image-quality measures (fsmde_core.image_quality) and their diagnostic status.

Each degradation is applied to one sharp dead-leaves scene (test/quality_images.py) the way the
world applies it; the original must come out clean, so each verdict is shown to be caused by its
degradation, not by the scene.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from quality_images import dark, dead_leaves, foggy, gaussian_blur, half_covered, noisy, to_uint8

from fsmde_core.image_quality import QualityThresholds, analysis_grey, assess, measure

H, W = 96, 160  # below the default max_side: the measures see every pixel


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return dead_leaves(H, W, seed=0)


def _kinds(problems: tuple[str, ...]) -> list[str]:
    """The problem names without their values ("too dark (mean 12/255)" -> "too dark")."""
    return [p.split(" (")[0] for p in problems]


def test_the_sharp_original_has_no_problem(scene: np.ndarray) -> None:
    q = assess(to_uint8(scene))
    assert q.problems == ()
    assert q.blur_px < 1.2 and q.featureless_fraction < 0.1 and q.contrast_std > 25 and q.noise_sigma < 1.0
    assert q.analysis_size == (W, H)


def test_a_dark_image_is_flagged_dark_and_only_dark(scene: np.ndarray) -> None:
    q = assess(dark(scene, 0.1))
    # the low std and featureless tiles of a dark image are its darkness, not fog or a blocked lens
    assert _kinds(q.problems) == ["too dark"]
    assert q.problems[0] == f"too dark (mean {q.mean_luma:.0f}/255)" and q.mean_luma < 20


def test_a_clipped_image_is_flagged_by_its_clipped_fraction(scene: np.ndarray) -> None:
    blown = to_uint8(scene * 3.0)  # most pixels saturate white
    q = assess(blown)
    assert q.white_fraction > 0.4 and _kinds(q.problems) == ["too bright"]
    half_black = to_uint8(np.concatenate([scene[:, : W // 2 + 20] * 0.0, scene[:, W // 2 + 20:]], axis=1))
    q = assess(half_black, QualityThresholds(dark_mean=10.0))  # the mean alone would not call it dark
    assert q.mean_luma > 10 and "clipped black" in q.problems[0]


def test_a_blurred_copy_is_flagged_while_the_original_is_not(scene: np.ndarray) -> None:
    readings = [assess(to_uint8(gaussian_blur(scene, s))).blur_px for s in (1.0, 2.0, 3.0)]
    assert readings == sorted(readings)  # more blur reads as more blur
    sharp, blurred = assess(to_uint8(scene)), assess(to_uint8(gaussian_blur(scene, 3.0)))
    assert "blurred" not in _kinds(sharp.problems)
    assert _kinds(blurred.problems) == ["blurred"] and blurred.blur_px > 2.0


def test_noise_does_not_hide_blur(scene: np.ndarray) -> None:
    """The noise's share of the difference energies is removed: a noisy blurred image reads as blurred as the
    clean one, and pure noise does not read as blur."""
    clean = assess(to_uint8(gaussian_blur(scene, 3.0)))
    q = assess(noisy(gaussian_blur(scene, 3.0), 4.0))
    assert q.noise_sigma > 2.0 and "blurred" in _kinds(q.problems)
    assert q.blur_px == pytest.approx(clean.blur_px, rel=0.1)
    for sigma in (8.0, 16.0, 30.0):  # noise alone: sharp or not judged, never blurred
        pure = assess(noisy(scene, sigma))
        assert "blurred" not in _kinds(pure.problems) and not pure.blur_px > 1.2, (sigma, pure.blur_px)


def test_blur_along_one_direction_is_seen(scene: np.ndarray) -> None:
    """Motion blur smears one direction: the larger of the row and column readings catches it."""
    kernel = np.ones(9, np.float32) / 9  # a 9-pixel horizontal box: the car moved during the exposure
    padded = np.pad(scene, ((0, 0), (4, 4), (0, 0)), mode="reflect")
    smeared = sum(kernel[i] * padded[:, i:i + W] for i in range(9))
    q = assess(to_uint8(smeared))
    assert "blurred" in _kinds(q.problems)


def test_blur_is_contrast_independent(scene: np.ndarray) -> None:
    """A ratio of energies: the foggy (low-contrast) copy of a sharp scene is still sharp."""
    q = assess(foggy(scene, 0.25))
    assert q.blur_px == pytest.approx(assess(to_uint8(scene)).blur_px, abs=0.1)
    assert "blurred" not in _kinds(q.problems)


def test_a_half_covered_lens_is_flagged_blocked(scene: np.ndarray) -> None:
    for image in (half_covered(scene), noisy(half_covered(scene), 4.0)):  # sensor noise on the mud too
        q = assess(image)
        assert q.featureless_fraction == pytest.approx(0.5, abs=0.05)
        assert _kinds(q.problems) == ["blocked lens or occlusion?"]


def test_a_foggy_image_is_flagged_low_contrast(scene: np.ndarray) -> None:
    q = assess(foggy(scene, 0.25))
    assert q.contrast_std < 18 and _kinds(q.problems) == ["low contrast"]


@pytest.mark.parametrize("sigma", [4.0, 6.0, 10.0, 16.0])
def test_noise_estimate_is_within_20_percent_of_the_added_sigma(sigma: float) -> None:
    """Luma noise (the same on all channels) of a known sigma on a 320x192 scene, the analysis size."""
    image = dead_leaves(192, 320, seed=3)
    luma_noise = np.random.default_rng(1).normal(0, sigma, (192, 320, 1))
    q = measure(to_uint8(image + luma_noise))
    assert q.noise_sigma == pytest.approx(sigma, rel=0.2)
    assert ("noisy" in _kinds(assess(to_uint8(image + luma_noise)).problems)) == (sigma > 8.0)


def test_channel_noise_is_measured_in_luma() -> None:
    """Independent noise per channel averages down in the luma: sigma * |(0.299, 0.587, 0.114)|."""
    image = dead_leaves(192, 320, seed=3)
    q = measure(noisy(image, 12.0))
    assert q.noise_sigma == pytest.approx(12.0 * math.hypot(0.299, 0.587, 0.114), rel=0.2)


def test_analysis_grey_is_an_exact_area_average() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (203, 317, 3), dtype=np.uint8)
    grey = analysis_grey(image, max_side=100)  # factor ceil(317 / 100) = 4 -> 50 x 79
    assert grey.shape == (50, 79) and grey.dtype == np.float32
    blocks = image[:200, :316].astype(np.float64).reshape(50, 4, 79, 4, 3).mean(axis=(1, 3))
    want = blocks @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(grey, want, atol=1e-3)
    big = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)  # factor 6: 1080p at the default size
    assert analysis_grey(big).shape == (180, 320)
    assert analysis_grey(image[..., 0], max_side=400).shape == (203, 317)  # mono, no downsampling


def test_a_flat_image_has_no_blur_reading_and_bad_shapes_are_refused() -> None:
    q = assess(np.full((48, 80, 3), 128, np.uint8))
    assert math.isnan(q.blur_px) and q.values()["blur_px"] == "n/a"
    assert _kinds(q.problems) == ["low contrast"]  # a uniform image: its featureless tiles are its contrast
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        assess(np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="dark_mean"):
        QualityThresholds(dark_mean=200.0, bright_mean=100.0)


def test_thresholds_decide_the_verdicts(scene: np.ndarray) -> None:
    image = dark(scene, 0.1)
    assert assess(image, QualityThresholds(dark_mean=5.0, low_contrast_std=1.0, blocked_fraction=1.0)).problems == ()


# ----------------------------------------------------------------- the node's parameters and status
def test_image_quality_parameters_validate_and_apply_live(tmp_path) -> None:
    from fsmde_ros.params import LIVE_PARAMETERS, ParameterError, settings_from_values

    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    s = settings_from_values({"model.path": str(model)})
    assert s.image_quality.enabled and s.image_quality.every_n_sets == 10
    assert s.image_quality.thresholds == QualityThresholds()  # the parameter defaults are the library's
    s = settings_from_values({"model.path": str(model), "image_quality.dark_mean": 25.0,
                              "image_quality.every_n_sets": 3})
    assert s.image_quality.thresholds.dark_mean == 25.0 and s.image_quality.every_n_sets == 3
    with pytest.raises(ParameterError, match=r"'image_quality.dark_mean' \(230.0\) must be smaller"):
        settings_from_values({"model.path": str(model), "image_quality.dark_mean": 230.0})
    with pytest.raises(ParameterError, match=r"'image_quality.blocked_fraction' is 1.5"):
        settings_from_values({"model.path": str(model), "image_quality.blocked_fraction": 1.5})
    assert {"image_quality.enabled", "image_quality.dark_mean", "image_quality.every_n_sets"} <= LIVE_PARAMETERS


def test_status_names_the_camera_and_the_problem(scene: np.ndarray) -> None:
    pytest.importorskip("diagnostic_msgs", reason="ROS message packages are not installed")
    from fsmde_ros.diagnostics import ERROR, OK, WARN, ImageQualityBoard, image_quality_status

    board = ImageQualityBoard()
    none_yet = image_quality_status("/car/surround_depth_node", "front", board.latest("front"), 10)
    assert none_yet.level == OK and "no image checked yet" in none_yet.message
    board.record("front", assess(dark(scene, 0.1)), 1_700_000_000_500_000_000)
    board.record("back", assess(to_uint8(scene)), 1_700_000_000_500_000_000)
    board.record("back", assess(to_uint8(scene)), 1_700_000_000_600_000_000)
    front = image_quality_status("/car/surround_depth_node", "front", board.latest("front"), 10)
    back = image_quality_status("/car/surround_depth_node", "back", board.latest("back"), 10)
    assert front.name == "/car/surround_depth_node: image quality front" and front.hardware_id == "front"
    assert front.level == WARN and front.level != ERROR
    assert front.message.startswith("front: too dark (mean ") and front.message.endswith("/255)")
    values = {kv.key: kv.value for kv in front.values}
    assert float(values["mean_luma"]) < 20 and values["checked_images"] == "1"
    assert values["checked_stamp_s"] == "1700000000.500"
    assert back.level == OK and back.message == "back: OK"
    assert {kv.key: kv.value for kv in back.values}["checked_images"] == "2"
