"""The object-boundary band of the evaluation (metrics.boundary_mask / boundary_abs_rel).

The bridged teacher (issue 10) claims its gain near object boundaries, so the
band must sit exactly where the ground truth has a discontinuity, and an edge
blurred by a model must show up there and not in the interior.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fsmde_core.metrics import boundary_abs_rel, boundary_mask

H, W, STEP = 20, 30, 12  # a step edge between columns STEP - 1 and STEP


def step_depth(near: float = 5.0, far: float = 20.0) -> np.ndarray:
    gt = np.full((H, W), near)
    gt[:, STEP:] = far
    return gt


def band_columns(mask: np.ndarray) -> list[int]:
    cols = np.flatnonzero(mask.any(axis=0))
    assert (mask[:, cols] == mask[:1, cols]).all(), "the band of a vertical step must be whole columns"
    return cols.tolist()


@pytest.mark.parametrize("radius", [0, 1, 2, 4])
def test_step_edge_band_is_exactly_radius_columns_either_side(radius: int) -> None:
    mask = boundary_mask(step_depth(), radius=radius)
    assert band_columns(mask) == list(range(STEP - 1 - radius, STEP + 1 + radius))


def test_small_relative_jumps_are_not_boundaries() -> None:
    gt = step_depth(near=10.0, far=10.5)  # 5 % jump, below the 10 % default
    assert not boundary_mask(gt).any()
    assert boundary_mask(gt, rel_jump=0.04).any()
    smooth = np.tile(np.linspace(5.0, 6.0, W), (H, 1))  # a slanted plane: 0.1 % per pixel
    assert not boundary_mask(smooth).any()


def test_batched_maps_are_independent_images() -> None:
    gts = np.stack([step_depth(), np.full((H, W), 7.0)])
    mask = boundary_mask(gts)
    assert mask.shape == (2, H, W)
    assert band_columns(mask[0]) == list(range(STEP - 3, STEP + 3))
    assert not mask[1].any()  # no bleeding across the batch axis


def test_label_only_edges_are_found_and_void_is_not_an_edge() -> None:
    gt = np.full((H, W), 8.0)  # flat depth: only the labels say where objects end
    labels = np.full((H, W), 1, dtype=np.uint8)
    labels[5:, :] = 6  # a class boundary between rows 4 and 5
    assert not boundary_mask(gt).any()
    mask = boundary_mask(gt, labels, radius=1)
    assert np.flatnonzero(mask.any(axis=1)).tolist() == [3, 4, 5, 6]
    void = np.full((H, W), 1, dtype=np.uint8)
    void[:, STEP:] = 255
    assert not boundary_mask(gt, void).any()


def test_sky_edges_count_and_nan_never_makes_an_edge() -> None:
    gt = np.full((H, W), 10.0)
    gt[:6, :] = np.inf  # sky above row 6
    rows = np.flatnonzero(boundary_mask(gt, radius=0).any(axis=1)).tolist()
    assert rows == [5, 6]  # the sky pixel and the surface pixel of the horizon
    unknown = np.full((H, W), 10.0)
    unknown[:, STEP:] = np.nan
    unknown[3, 3] = np.nan
    assert not boundary_mask(unknown).any()
    assert not boundary_mask(np.full((H, W), np.inf)).any()


def test_blurred_edges_score_worse_on_the_boundary_than_inside() -> None:
    gt = step_depth()
    blurred = gt.copy()
    ramp = np.linspace(5.0, 20.0, 6)  # the step smeared over 6 columns around the edge
    blurred[:, STEP - 3:STEP + 3] = ramp
    band = boundary_mask(gt)
    out = boundary_abs_rel(blurred, gt, band)
    assert out["abs_rel_interior"] == 0.0
    assert out["abs_rel_boundary"] > 0.2
    perfect = boundary_abs_rel(gt, gt, band)
    assert perfect == {"abs_rel_boundary": 0.0, "abs_rel_interior": 0.0}


def test_boundary_abs_rel_respects_valid_and_reports_nan_for_an_empty_part() -> None:
    gt = step_depth()
    pred = gt * 1.1
    band = boundary_mask(gt)
    out = boundary_abs_rel(pred, gt, band)
    assert out["abs_rel_boundary"] == pytest.approx(0.1) and out["abs_rel_interior"] == pytest.approx(0.1)
    valid = ~band  # nothing on the boundary is scored
    out = boundary_abs_rel(pred, gt, band, valid)
    assert math.isnan(out["abs_rel_boundary"]) and out["abs_rel_interior"] == pytest.approx(0.1)
    batched = boundary_abs_rel(np.stack([pred, gt]), np.stack([gt, gt]), np.stack([band, band]))
    np.testing.assert_allclose(batched["abs_rel_boundary"], [0.1, 0.0])


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="radius"):
        boundary_mask(step_depth(), radius=-1)
    with pytest.raises(ValueError, match="labels and gt shapes differ"):
        boundary_mask(step_depth(), np.zeros((H, W + 1), dtype=np.uint8))
