"""The corruption suite: contract of ``corrupt`` on every corruption x severity, severity ordering, spec parsing."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fsmde_core.corruptions import CORRUPTIONS, SEVERITIES, corrupt, corruption_rng, parse_corruption_spec

ROBODEPTH_NAMES = (
    "brightness", "dark", "fog", "frost", "snow", "contrast",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "elastic_transform", "color_quant",
    "gaussian_noise", "shot_noise", "impulse_noise", "iso_noise", "pixelate", "jpeg_compression",
)


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A street-like test image: smooth random texture over colour ramps, a bright box and a shadowed corner."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 8 + 2, width // 8 + 2, 3))
    texture = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width]
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    image = 0.15 + 0.3 * texture + 0.3 * np.stack([xx, yy, 1 - xx], axis=-1)
    image[height // 3:2 * height // 3, width // 4:width // 2] = (0.8, 0.75, 0.7)
    image[height // 2:, 3 * width // 5:] *= 0.4
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


SMALL = scene(37, 61)  # odd, non-square, far below the protocol's 224 px
REFERENCE = scene(224, 224)  # the size the protocol's severity parameters were chosen at


def test_the_suite_is_robodepths_eighteen_at_five_severities() -> None:
    assert CORRUPTIONS == ROBODEPTH_NAMES
    assert SEVERITIES == (1, 2, 3, 4, 5)


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corrupt_keeps_shape_and_dtype_is_deterministic_and_changes_the_image(name: str, severity: int) -> None:
    before = SMALL.copy()
    out = corrupt(SMALL, name, severity, np.random.default_rng(7))
    again = corrupt(SMALL, name, severity, np.random.default_rng(7))
    assert out.dtype == np.uint8 and out.shape == SMALL.shape
    np.testing.assert_array_equal(out, again)
    assert np.abs(out.astype(int) - SMALL).mean() > 0.1, f"{name}@{severity} left the image unchanged"
    np.testing.assert_array_equal(SMALL, before)  # the input is not modified in place


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "iso_noise", "dark", "fog",
                                  "frost", "snow", "glass_blur", "motion_blur", "elastic_transform"])
def test_random_corruptions_draw_from_the_given_rng(name: str) -> None:
    a = corrupt(REFERENCE, name, 3, np.random.default_rng(1))
    b = corrupt(REFERENCE, name, 3, np.random.default_rng(2))
    assert not np.array_equal(a, b)


def test_tiny_and_wide_images_survive_every_corruption() -> None:
    for shape in ((3, 5, 3), (24, 400, 3)):
        image = np.full(shape, 120, dtype=np.uint8)
        image[:, ::2] = 30
        for name in CORRUPTIONS:
            out = corrupt(image, name, 5, np.random.default_rng(0))
            assert out.shape == shape and out.dtype == np.uint8, name


def _mean(out: np.ndarray, clean: np.ndarray) -> float:
    return float(out.mean())


def _std(out: np.ndarray, clean: np.ndarray) -> float:
    return float(out.astype(float).std())


def _correlation_with_clean(out: np.ndarray, clean: np.ndarray) -> float:
    return float(np.corrcoef(out.astype(float).ravel(), clean.astype(float).ravel())[0, 1])


def _high_frequency_energy(out: np.ndarray, clean: np.ndarray) -> float:
    gray = out.astype(float).mean(axis=2)
    return float(np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean())


def _mean_abs_change(out: np.ndarray, clean: np.ndarray) -> float:
    return float(np.abs(out.astype(float) - clean).mean())


def _residual_std(out: np.ndarray, clean: np.ndarray) -> float:
    return float((out.astype(float) - clean).std())


def _distinct_colours(out: np.ndarray, clean: np.ndarray) -> float:
    return float(len(np.unique(out.reshape(-1, 3), axis=0)))


def _snow_cover(out: np.ndarray, clean: np.ndarray) -> float:
    """Fraction of pixels pushed to near white (flakes + the whitened scene)."""
    return float((out.min(axis=2) >= 200).mean())


# corruption -> (statistic, +1 if it must rise with severity, -1 if it must fall)
MONOTONE: dict[str, tuple[Callable[[np.ndarray, np.ndarray], float], int]] = {
    "brightness": (_mean, +1),
    "dark": (_mean, -1),
    "fog": (_correlation_with_clean, -1),
    "frost": (_correlation_with_clean, -1),
    "snow": (_snow_cover, +1),
    "contrast": (_std, -1),
    "defocus_blur": (_high_frequency_energy, -1),
    "glass_blur": (_high_frequency_energy, -1),
    "motion_blur": (_high_frequency_energy, -1),
    "zoom_blur": (_high_frequency_energy, -1),
    "elastic_transform": (_mean_abs_change, +1),
    "color_quant": (_mean_abs_change, +1),
    "gaussian_noise": (_residual_std, +1),
    "shot_noise": (_residual_std, +1),
    "impulse_noise": (_residual_std, +1),
    "iso_noise": (_residual_std, +1),
    "pixelate": (_distinct_colours, -1),
    "jpeg_compression": (_mean_abs_change, +1),
}


def test_every_corruption_has_a_severity_statistic() -> None:
    assert set(MONOTONE) == set(CORRUPTIONS)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_is_monotone_in_a_simple_statistic(name: str) -> None:
    statistic, direction = MONOTONE[name]
    values = [statistic(corrupt(REFERENCE, name, s, np.random.default_rng(3)), REFERENCE) for s in SEVERITIES]
    steps = direction * np.diff(values)
    assert np.all(steps > 0), f"{name}: {statistic.__name__} over severities 1..5 = {np.round(values, 4).tolist()}"


def test_corruption_rng_is_reproducible_per_key_and_differs_between_keys() -> None:
    a = corruption_rng(0, "fog", 3, 5, 2).random(4)
    np.testing.assert_array_equal(a, corruption_rng(0, "fog", 3, 5, 2).random(4))
    assert not np.array_equal(a, corruption_rng(0, "fog", 3, 5, 1).random(4))
    assert not np.array_equal(a, corruption_rng(0, "fog", 4, 5, 2).random(4))
    assert not np.array_equal(a, corruption_rng(0, "snow", 3, 5, 2).random(4))


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize(("name", "severity", "words"), [
    ("rain", 3, "unknown corruption 'rain'"),
    ("fog", 0, "severity"),
    ("fog", 6, "severity"),
    ("fog", True, "severity"),
    ("fog", "3", "severity"),
])
def test_corrupt_refuses_a_bad_corruption_or_severity(name: str, severity: object, words: str) -> None:
    with pytest.raises(ValueError, match=words) as info:
        corrupt(SMALL, name, severity, np.random.default_rng(0))  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("image", [SMALL.astype(np.float32), SMALL[..., 0], SMALL[..., :2]])
def test_corrupt_refuses_an_image_that_is_not_uint8_rgb(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        corrupt(image, "fog", 1, np.random.default_rng(0))


# ---------------------------------------------------------------- spec
def test_spec_all_is_every_corruption_at_every_severity() -> None:
    pairs = parse_corruption_spec("all")
    assert pairs == [(n, s) for n in CORRUPTIONS for s in SEVERITIES]
    assert len(pairs) == 90


def test_spec_name_severity_and_lists() -> None:
    assert parse_corruption_spec("fog") == [("fog", s) for s in SEVERITIES]
    assert parse_corruption_spec("fog@3") == [("fog", 3)]
    assert parse_corruption_spec(" dark@1 , Motion_Blur@5,fog@3,dark@1") == [
        ("dark", 1), ("motion_blur", 5), ("fog", 3)]
    assert parse_corruption_spec("jpeg@2,elastic@4") == [("jpeg_compression", 2), ("elastic_transform", 4)]


@pytest.mark.parametrize(("spec", "words"), [
    ("", "empty corruption spec"),
    ("rain@3", "unknown corruption 'rain'"),
    ("fog@0", "severity must be 1..5"),
    ("fog@6", "severity must be 1..5"),
    ("fog@x", "severity must be 1..5"),
    ("fog@", "severity must be 1..5"),
    ("fog,,dark", "empty item"),
])
def test_spec_refusals_are_one_line(spec: str, words: str) -> None:
    with pytest.raises(ValueError, match=words) as info:
        parse_corruption_spec(spec)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- known answers
def test_color_quant_is_pil_posterize_to_five_down_to_one_bits() -> None:
    from PIL import Image, ImageOps

    for severity in SEVERITIES:
        expected = np.asarray(ImageOps.posterize(Image.fromarray(REFERENCE), 6 - severity))
        np.testing.assert_array_equal(corrupt(REFERENCE, "color_quant", severity, np.random.default_rng(0)), expected)


def test_brightness_adds_to_the_hsv_value_and_keeps_hue_and_saturation() -> None:
    image = np.array([[[200, 100, 50], [0, 0, 0], [250, 250, 250]]], dtype=np.uint8)
    out = corrupt(image, "brightness", 1, np.random.default_rng(0)).astype(float)  # V + 0.1
    np.testing.assert_allclose(out[0, 0], np.array([200, 100, 50]) * (200 + 25.5) / 200, atol=0.51)
    np.testing.assert_allclose(out[0, 1], [26, 26, 26], atol=0.51)  # black becomes grey 0.1
    np.testing.assert_array_equal(out[0, 2], [255, 255, 255])  # V clipped at 1


def test_contrast_pulls_each_channel_to_its_mean() -> None:
    out = corrupt(REFERENCE, "contrast", 5, np.random.default_rng(0)).astype(float)  # c = 0.05
    clean = REFERENCE.astype(float)
    mean = clean.mean(axis=(0, 1))
    np.testing.assert_allclose(out, (clean - mean) * 0.05 + mean, atol=0.51)
