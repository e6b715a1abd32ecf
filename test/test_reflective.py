"""The reflective mask and its running error statistics (``fsmde_core.selfsup.reflective``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fsmde_core.selfsup.reflective import ErrorStats, difference_zscore, mahalanobis_distance, reflective_mask

H, W = 40, 50  # 2000 pixels per image


def _errors(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(2, 1, H, W) photometric errors of an image and of its diffuse part, and where each kind of pixel is.

    typical: e_L ~ 0.05 +- 0.02, e_I a little above it (0.01 +- 0.005): the two errors move together.
    reflective (3 %): e_L typical, e_I 0.15 higher: the image is much worse than its diffuse part.
    both_high (3 %): e_L ~ 0.4 and e_I just as high (occlusion, texture-less): both inconsistent.
    both_low (3 %): both exactly 0 (a perfect match).
    """
    g = torch.Generator().manual_seed(seed)
    shape = (2, 1, H, W)
    e_l = (0.05 + 0.02 * torch.randn(shape, generator=g)).clamp_min(0.0)
    e_i = e_l + 0.01 + 0.005 * torch.randn(shape, generator=g)
    kind = torch.randint(0, 100, shape, generator=g)
    where = {"reflective": kind < 3, "both_high": (kind >= 3) & (kind < 6), "both_low": (kind >= 6) & (kind < 9)}
    where["typical"] = kind >= 9
    e_i = torch.where(where["reflective"], e_l + 0.15, e_i)
    high = 0.4 + 0.05 * torch.randn(shape, generator=g)
    e_l = torch.where(where["both_high"], high, e_l)
    e_i = torch.where(where["both_high"], high + 0.01 + 0.005 * torch.randn(shape, generator=g), e_i)
    e_i = torch.where(where["both_low"], torch.zeros_like(e_i), e_i)
    e_l = torch.where(where["both_low"], torch.zeros_like(e_l), e_l)
    return e_i, e_l, where


def _all_valid() -> torch.Tensor:
    return torch.ones(2, 1, H, W, dtype=torch.bool)


def _fraction(mask: torch.Tensor, where: torch.Tensor) -> float:
    return float(mask[where].float().mean())


def test_the_mask_is_empty_before_the_stats_have_seen_data() -> None:
    e_i, e_l, _ = _errors()
    mask = reflective_mask(e_i, e_l, _all_valid(), ErrorStats())
    assert mask.shape == e_i.shape and mask.dtype == torch.bool
    assert not bool(mask.any())


def test_flags_an_image_much_worse_than_its_diffuse_part_not_both_high_or_both_low() -> None:
    e_i, e_l, where = _errors()
    stats = ErrorStats()
    stats.update(e_i, e_l, _all_valid())
    mask = reflective_mask(e_i, e_l, _all_valid(), stats, threshold=3.0)
    assert _fraction(mask, where["reflective"]) > 0.95
    assert _fraction(mask, where["both_high"]) < 0.02
    assert _fraction(mask, where["both_low"]) == 0.0
    assert _fraction(mask, where["typical"]) < 0.01
    # the both-high pixels ARE joint outliers: only the direction test keeps them out
    d = mahalanobis_distance(e_i, e_l, stats)
    assert float((d[where["both_high"]] > 3.0).float().mean()) > 0.9
    # a stricter threshold flags a subset
    strict = reflective_mask(e_i, e_l, _all_valid(), stats, threshold=6.0)
    assert bool((strict <= mask).all()) and int(strict.sum()) < int(mask.sum())


def test_every_flagged_pixel_is_a_joint_mahalanobis_outlier_with_the_image_worse() -> None:
    e_i, e_l, _ = _errors(1)
    stats = ErrorStats()
    stats.update(e_i, e_l, _all_valid())
    z = difference_zscore(e_i, e_l, stats)
    d = mahalanobis_distance(e_i, e_l, stats)
    assert bool((d >= z.abs() - 1e-4).all())  # the full distance bounds the one-dimensional one
    mask = reflective_mask(e_i, e_l, _all_valid(), stats, threshold=3.0)
    assert bool((d[mask] > 3.0).all())
    mean_difference = float(stats.mean[0] - stats.mean[1])
    assert bool(((e_i - e_l)[mask] > mean_difference).all())


def test_invalid_pixels_are_never_flagged_and_do_not_enter_the_stats() -> None:
    e_i, e_l, where = _errors()
    valid = ~where["reflective"]
    stats = ErrorStats()
    stats.update(e_i, e_l, valid)
    assert not bool(reflective_mask(e_i, e_l, valid, stats)[where["reflective"]].any())
    # the stats are those of the valid pixels only
    ref = ErrorStats()
    ref.update(e_i[valid].view(1, 1, 1, -1), e_l[valid].view(1, 1, 1, -1), torch.ones(1, 1, 1, int(valid.sum()),
                                                                                        dtype=torch.bool))
    torch.testing.assert_close(stats.mean, ref.mean)
    torch.testing.assert_close(stats.cov, ref.cov)


def _numpy_stats(e_i: torch.Tensor, e_l: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    pairs = np.stack([e_i.numpy().ravel(), e_l.numpy().ravel()]).astype(np.float64)
    return pairs.mean(axis=1), np.cov(pairs, bias=True)


def test_the_first_update_sets_the_stats_and_later_ones_blend_them_in() -> None:
    a_i, a_l, _ = _errors(0)
    b_i, b_l, _ = _errors(1)
    b_i = b_i * 2.0 + 0.1  # a visibly different batch
    stats = ErrorStats(momentum=0.9)
    stats.update(a_i, a_l, _all_valid())
    mean_a, cov_a = _numpy_stats(a_i, a_l)
    np.testing.assert_allclose(stats.mean.numpy(), mean_a, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(stats.cov.numpy(), cov_a, rtol=1e-6, atol=1e-9)
    stats.update(b_i, b_l, _all_valid())
    mean_b, cov_b = _numpy_stats(b_i, b_l)
    np.testing.assert_allclose(stats.mean.numpy(), 0.9 * mean_a + 0.1 * mean_b, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(stats.cov.numpy(), 0.9 * cov_a + 0.1 * cov_b, rtol=1e-6, atol=1e-9)
    assert int(stats.count) == 2
    # a batch without valid pixels changes nothing
    before = stats.state_dict()
    stats.update(b_i, b_l, torch.zeros_like(_all_valid()))
    for key, value in stats.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_update_takes_no_gradient_and_the_mask_none() -> None:
    e_i, e_l, _ = _errors()
    e_i.requires_grad_(True)
    stats = ErrorStats()
    stats.update(e_i, e_l, _all_valid())
    assert not stats.mean.requires_grad and not stats.cov.requires_grad
    assert not reflective_mask(e_i, e_l, _all_valid(), stats).requires_grad


def test_nan_and_inf_are_treated_as_invalid() -> None:
    e_i, e_l, where = _errors()
    bad = torch.zeros_like(where["reflective"])
    bad[0, 0, :5] = True
    bad[1, 0, :, :3] = True
    e_i_bad = e_i.clone()
    e_l_bad = e_l.clone()
    e_i_bad[0, 0, :5] = float("nan")
    e_l_bad[1, 0, :, :3] = float("inf")
    e_i_bad[1, 0, :, :2] = float("-inf")  # overlaps: still just invalid
    stats = ErrorStats()
    stats.update(e_i_bad, e_l_bad, _all_valid())
    assert torch.isfinite(stats.mean).all() and torch.isfinite(stats.cov).all()
    ref = ErrorStats()
    ref.update(e_i, e_l, ~bad)
    torch.testing.assert_close(stats.mean, ref.mean)
    torch.testing.assert_close(stats.cov, ref.cov)
    mask = reflective_mask(e_i_bad, e_l_bad, _all_valid(), stats)
    assert not bool(mask[bad].any())
    assert _fraction(mask, where["reflective"] & ~bad) > 0.95
    # all non-finite: stats untouched, nothing flagged
    empty = ErrorStats()
    empty.update(torch.full_like(e_i, float("nan")), e_l, _all_valid())
    assert not empty.initialised


def test_state_dict_round_trip_through_safetensors(tmp_path: Path) -> None:
    e_i, e_l, _ = _errors()
    stats = ErrorStats()
    stats.update(e_i, e_l, _all_valid())
    stats.update(*_errors(2)[:2], _all_valid())
    path = tmp_path / "stats.safetensors"
    save_file(stats.state_dict(), str(path))
    resumed = ErrorStats()
    resumed.load_state_dict(load_file(str(path)))
    assert int(resumed.count) == 2
    torch.testing.assert_close(resumed.mean, stats.mean)
    torch.testing.assert_close(resumed.cov, stats.cov)
    assert torch.equal(reflective_mask(e_i, e_l, _all_valid(), resumed),
                       reflective_mask(e_i, e_l, _all_valid(), stats))
    # the resumed stats keep blending (not restarting from the next batch)
    resumed.update(*_errors(3)[:2], _all_valid())
    stats.update(*_errors(3)[:2], _all_valid())
    torch.testing.assert_close(resumed.mean, stats.mean)
    # the state is a copy: editing it does not touch the stats
    state = stats.state_dict()
    state["mean"].add_(1.0)
    assert not torch.equal(state["mean"], stats.mean)


def test_a_bad_state_is_one_clear_error() -> None:
    stats = ErrorStats()
    with pytest.raises(ValueError, match="missing key 'cov'"):
        stats.load_state_dict({"mean": torch.zeros(2), "count": torch.tensor(1)})
    with pytest.raises(ValueError, match="'mean' must have shape"):
        stats.load_state_dict({"mean": torch.zeros(3), "cov": torch.zeros(2, 2), "count": torch.tensor(1)})
    with pytest.raises(ValueError, match="momentum"):
        ErrorStats(momentum=1.0)
    e_i, e_l, _ = _errors()
    with pytest.raises(ValueError, match="same shape"):
        reflective_mask(e_i, e_l[:1], _all_valid(), stats)
