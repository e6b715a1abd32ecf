"""Tests of the masked helpers every loss module shares (fsmde_core.distill.masked)."""

from __future__ import annotations

import torch

from fsmde_core.distill.masked import masked_mean, mean_over_images, resize_nan_safe

NAN = float("nan")


def test_resize_nan_safe_ignores_invalid_neighbours() -> None:
    x = torch.tensor([[1.0, NAN], [1.0, 1.0]]).view(1, 1, 2, 2)
    y = resize_nan_safe(x, (4, 4))
    assert torch.isfinite(y).sum() >= 12
    torch.testing.assert_close(y[torch.isfinite(y)], torch.ones(int(torch.isfinite(y).sum())))
    assert resize_nan_safe(x, (2, 2)) is x


def test_masked_mean_and_mean_over_images_leave_empty_images_out() -> None:
    x = torch.tensor([[2.0, 4.0], [7.0, 9.0]]).view(2, 1, 1, 2)
    valid = torch.tensor([[True, True], [False, False]]).view(2, 1, 1, 2)
    mean, count = masked_mean(x, valid)
    assert mean.tolist() == [3.0, 0.0] and count.tolist() == [2, 0]
    assert mean_over_images(mean, count > 0).item() == 3.0  # not (3 + 0) / 2
    assert mean_over_images(mean, torch.zeros(2, dtype=torch.bool)).item() == 0.0
