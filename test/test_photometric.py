"""Photometric loss and its sources: SSIM+L1 by hand, min reprojection, auto-mask, masks, poses of every slot.

The rig tests render a three-camera rig moving through the ray-cast room of
``selfsup_scene``: with the true depth and the batch's own poses every source
reconstructs its target, so the loss is near zero and its gradient points at
the true scale; wrong poses or depths show up as error.
"""

from __future__ import annotations

import math

import pytest
import torch
from selfsup_scene import RING, SOURCE_POSE, intrinsics, pair, pose, rig_extrinsics, rig_odom, room_batch, rotation

from fsmde_core.selfsup.photometric import (
    PhotometricSources,
    photometric_loss,
    ssim_l1,
    surround_sources,
)
from fsmde_core.selfsup.warp import warp_image


def test_ssim_l1_known_values() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 10)
    assert float(ssim_l1(x, x).abs().max()) < 1e-6
    y = torch.rand(2, 3, 8, 10)
    torch.testing.assert_close(ssim_l1(x, y, alpha=0.0), (x - y).abs().mean(1, keepdim=True))
    # Flat images 0.3 and 0.5: no variance, SSIM = luminance term only.
    a, b = torch.full((1, 3, 6, 6), 0.3), torch.full((1, 3, 6, 6), 0.5)
    c1 = 0.01**2
    ssim = (2 * 0.3 * 0.5 + c1) / (0.3**2 + 0.5**2 + c1)
    expected = 0.85 * (1 - ssim) / 2 + 0.15 * 0.2
    torch.testing.assert_close(ssim_l1(a, b), torch.full((1, 1, 6, 6), expected), atol=2e-5, rtol=0)


def _single_pair_sources(p: dict, kinds: tuple[str, ...] = ("prev",)) -> PhotometricSources:
    n = len(kinds)
    return PhotometricSources(images=p["source"][:, None].expand(1, n, 3, *p["source"].shape[-2:]).clone(),
                              K=p["K"][:, None].expand(1, n, 3, 3),
                              T_src_tgt=p["T_src_tgt"][:, None].expand(1, n, 4, 4),
                              valid=torch.ones(1, n, dtype=torch.bool), kinds=kinds)


def test_loss_is_near_zero_at_the_true_depth_and_grows_with_a_wrong_one() -> None:
    p = pair(SOURCE_POSE)
    src = _single_pair_sources(p)
    losses = {s: float(photometric_loss(p["depth"] * s, p["target"], p["K"], src, automask=False).loss)
              for s in (1.0, 1.2, 0.8)}
    assert losses[1.0] < 0.01
    assert losses[1.2] > 2.0 * losses[1.0] and losses[0.8] > 2.0 * losses[1.0]


@pytest.mark.parametrize(("scale", "sign"), [(1.2, 1.0), (0.8, -1.0)])
def test_gradient_reaches_depth_and_points_at_the_true_scale(scale: float, sign: float) -> None:
    p = pair(SOURCE_POSE)
    log_scale = torch.tensor(math.log(scale), requires_grad=True)
    depth = p["depth"] * torch.exp(log_scale)
    depth.retain_grad()
    photometric_loss(depth, p["target"], p["K"], _single_pair_sources(p), automask=False).loss.backward()
    assert torch.isfinite(depth.grad).all() and float(depth.grad.abs().sum()) > 0
    assert sign * float(log_scale.grad) > 0  # descending the gradient moves the scale back towards 1


def test_automask_drops_pixels_where_the_unwarped_source_wins() -> None:
    """A source whose left half moves with the camera (equals the target): those pixels leave the loss."""
    p = pair(SOURCE_POSE)
    src = _single_pair_sources(p)
    half = p["target"].shape[-1] // 2
    src.images[..., :half] = p["target"][:, None, :, :, :half]
    with_mask = photometric_loss(p["depth"], p["target"], p["K"], src)
    without = photometric_loss(p["depth"], p["target"], p["K"], src, automask=False)
    assert bool(without.automask.all())
    left, right = with_mask.automask[..., 4:half - 4], with_mask.automask[..., half + 12:-4]
    valid_right = torch.isfinite(with_mask.error[..., half + 12:-4])
    assert float(left.float().mean()) < 0.1
    assert float(right[valid_right].float().mean()) > 0.9
    assert not bool((with_mask.used & ~with_mask.automask).any())


def test_automask_ignores_spatial_sources() -> None:
    """An adjacent camera identical to the target says nothing about motion: no pixel is auto-masked."""
    p = pair(SOURCE_POSE)
    src = _single_pair_sources(p, ("left",))
    src.images[:] = p["target"][:, None]
    assert bool(photometric_loss(p["depth"], p["target"], p["K"], src).automask.all())


def test_mask_exclude_and_validity_are_honoured() -> None:
    p = pair(SOURCE_POSE)
    src = _single_pair_sources(p, ("prev", "left"))
    src.valid[0, 1] = False
    h, w = p["target"].shape[-2:]
    mask = torch.ones(1, 1, h, w, dtype=torch.bool)
    mask[..., h - 10:, :] = False  # ego pixels at the bottom
    exclude = torch.zeros_like(mask)
    exclude[..., :, :8] = True
    r = photometric_loss(p["depth"], p["target"], p["K"], src, mask, exclude=exclude, automask=False)
    assert not bool((r.used & ~mask).any()) and not bool((r.used & exclude).any())
    assert bool(torch.isinf(r.source_errors[:, 1]).all())  # the absent source never wins
    torch.testing.assert_close(r.error, r.source_errors.min(1).values)
    assert bool((r.used == (mask & ~exclude & torch.isfinite(r.error))).all())
    assert not bool(torch.isfinite(r.error).all())  # some pixels leave the source's view: valid in no source
    torch.testing.assert_close(r.loss, r.error[r.used].mean())


def test_no_usable_pixel_gives_zero_with_a_graph() -> None:
    p = pair(SOURCE_POSE)
    depth = p["depth"].clone().requires_grad_(True)
    r = photometric_loss(depth, p["target"], p["K"], _single_pair_sources(p),
                         torch.zeros(1, 1, *depth.shape[-2:], dtype=torch.bool))
    assert float(r.loss.detach()) == 0.0
    r.loss.backward()
    assert float(depth.grad.abs().sum()) == 0.0


def test_warp_callable_reapplies_the_sampling() -> None:
    p = pair(SOURCE_POSE)
    src = _single_pair_sources(p, ("prev", "left"))
    r = photometric_loss(p["depth"], p["target"], p["K"], src)
    other = torch.rand(1, 2, 5, *p["depth"].shape[-2:])
    warped, valid = r.warp(other)
    expected, expected_valid = warp_image(other[:, 1], p["depth"], p["K"], p["K"], p["T_src_tgt"])
    torch.testing.assert_close(warped[:, 1], expected)
    assert bool((valid[:, 1] == expected_valid).all()) and tuple(valid.shape) == (1, 2, 1, *p["depth"].shape[-2:])


def test_bad_shapes_give_one_clear_line() -> None:
    p = pair(SOURCE_POSE)
    src = _single_pair_sources(p)
    with pytest.raises(ValueError, match="exclude"):
        photometric_loss(p["depth"], p["target"], p["K"], src, exclude=torch.zeros(1, 1, 3, 3, dtype=torch.bool))
    src.kinds = ("behind",)
    with pytest.raises(ValueError, match="kinds"):
        photometric_loss(p["depth"], p["target"], p["K"], src)


# --- surround_sources on hand-built batches -------------------------------------------------------------------


def _hand_batch(s: int = 2, n: int = 3, static: bool = True) -> dict[str, torch.Tensor]:
    """S sets of N cameras, odometry far from the origin, known motions; images carry their (set, cam, time) id."""
    cams = rig_extrinsics(n).float().expand(s, n, 4, 4).clone()
    odom = torch.stack([rig_odom(4000.0 + 10 * i, 0.3 * i) for i in range(s)])[:, None].expand(s, n, 4, 4).clone()
    if not static:  # the base moves 2 cm forward between consecutive camera triggers
        for k in range(n):
            odom[:, k] = odom[:, k] @ pose(torch.eye(3, dtype=torch.float64), (0.0, 0.0, 0.02 * k))
    prev_motion = pose(rotation(0.02), (0.01, 0.0, -0.5))  # base(t_prev) <- base(t): t_prev is 0.5 m behind
    next_motion = pose(rotation(-0.01), (0.0, 0.0, 0.6))
    ident = torch.arange(s * n, dtype=torch.float32).reshape(s, n, 1, 1, 1)
    return {"images": (ident / 100).expand(s, n, 3, 4, 5).clone(), "K": intrinsics(5, 4).float().expand(s, n, 3, 3),
            "T_base_cam": cams, "T_odom_base": odom, "has_odom": torch.ones(s, dtype=torch.bool),
            "prev_images": (0.5 + ident / 100).expand(s, n, 3, 4, 5).clone(),
            "next_images": (0.7 + ident / 100).expand(s, n, 3, 4, 5).clone(),
            "prev_T_odom_base": odom @ torch.linalg.inv(prev_motion),
            "next_T_odom_base": odom @ torch.linalg.inv(next_motion),
            "has_prev": torch.tensor([True, False][:s]), "has_next": torch.ones(s, dtype=torch.bool),
            "prev_motion": prev_motion, "next_motion": next_motion}


def test_temporal_poses_are_the_odometry_motion_in_the_camera_frame() -> None:
    batch = _hand_batch()
    sources, targets = surround_sources(batch, temporal=True, spatial=False, ring_neighbours=RING)
    assert sources.kinds == ("prev", "next") and tuple(targets.shape) == (6, 3, 4, 5)
    cams = batch["T_base_cam"].double()
    for b in range(6):
        s, k = divmod(b, 3)
        for slot, motion in enumerate((batch["prev_motion"], batch["next_motion"])):
            expected = torch.linalg.inv(cams[s, k]) @ motion @ cams[s, k]
            assert float((sources.T_src_tgt[b, slot].double() - expected).abs().max()) < 1e-5
        torch.testing.assert_close(sources.images[b, 0], batch["prev_images"][s, k])
        torch.testing.assert_close(sources.images[b, 1], batch["next_images"][s, k])
        torch.testing.assert_close(targets[b], batch["images"][s, k])
    assert sources.valid[:, 0].tolist() == [True] * 3 + [False] * 3  # set 1 has no previous set
    assert bool(sources.valid[:, 1].all())


def test_temporal_sources_need_odometry_or_a_pose_net() -> None:
    batch = _hand_batch()
    batch["has_odom"] = torch.tensor([False, True])
    sources, _ = surround_sources(batch, temporal=True, spatial=False, ring_neighbours=RING)
    assert sources.valid[:, 1].tolist() == [False] * 3 + [True] * 3


def test_spatial_poses_are_the_extrinsics_when_odometry_is_static() -> None:
    batch = _hand_batch()
    sources, _ = surround_sources(batch, temporal=False, spatial=True, ring_neighbours=RING)
    assert sources.kinds == ("left", "right")
    cams = batch["T_base_cam"].double()
    for b in range(6):
        s, i = divmod(b, 3)
        for slot in range(2):
            j = RING[i][slot]
            expected = torch.linalg.inv(cams[s, j]) @ cams[s, i]
            assert float((sources.T_src_tgt[b, slot].double() - expected).abs().max()) < 1e-5
            torch.testing.assert_close(sources.images[b, slot], batch["images"][s, j])
            assert bool(sources.valid[b, slot]) == (j != i)


def test_spatial_poses_include_the_motion_between_camera_stamps() -> None:
    batch = _hand_batch(static=False)
    sources, _ = surround_sources(batch, temporal=False, spatial=True, ring_neighbours=RING)
    cams, odom = batch["T_base_cam"].double(), batch["T_odom_base"]
    i, j = 1, RING[1][0]
    expected = torch.linalg.inv(odom[0, j] @ cams[0, j]) @ odom[0, i] @ cams[0, i]
    assert float((sources.T_src_tgt[i, 0].double() - expected).abs().max()) < 1e-5
    static = torch.linalg.inv(cams[0, j]) @ cams[0, i]
    assert float((expected - static).abs().max()) > 0.01  # the 2 cm between triggers is really in there
    batch["has_odom"] = torch.zeros(2, dtype=torch.bool)  # without odometry: extrinsics only
    sources, _ = surround_sources(batch, temporal=False, spatial=True, ring_neighbours=RING)
    assert float((sources.T_src_tgt[i, 0].double() - static).abs().max()) < 1e-5


def test_ego_motion_replaces_odometry_and_carries_gradient() -> None:
    batch = _hand_batch()
    batch["has_odom"] = torch.zeros(2, dtype=torch.bool)
    ego = torch.stack([batch["prev_motion"], batch["next_motion"]]).float()[None].repeat(2, 1, 1, 1)
    ego.requires_grad_(True)
    sources, _ = surround_sources(batch, temporal=True, spatial=True, ring_neighbours=RING, ego_motion=ego)
    assert sources.kinds == ("prev", "next", "left", "right")
    cams = batch["T_base_cam"].double()
    expected = torch.linalg.inv(cams[1, 2]) @ batch["next_motion"] @ cams[1, 2]
    assert float((sources.T_src_tgt[5, 1].detach().double() - expected).abs().max()) < 1e-5
    assert sources.valid[:, 1].all() and sources.valid[:, 0].tolist() == [True] * 3 + [False] * 3
    sources.T_src_tgt.sum().backward()
    assert ego.grad is not None and float(ego.grad.abs().sum()) > 0


def test_surround_sources_says_what_is_missing() -> None:
    batch = _hand_batch()
    del batch["prev_images"]
    with pytest.raises(ValueError, match="prev_images"):
        surround_sources(batch, temporal=True, spatial=False, ring_neighbours=RING)
    del batch["next_T_odom_base"]
    with pytest.raises(ValueError, match="next_T_odom_base"):
        surround_sources({**batch, "prev_images": batch["next_images"]}, temporal=True, spatial=False,
                         ring_neighbours=RING)
    with pytest.raises(ValueError, match="ring_neighbours"):
        surround_sources(batch, temporal=False, spatial=True, ring_neighbours=[(1, 2)])
    with pytest.raises(ValueError, match="S, N, 3, H, W"):
        surround_sources({**batch, "images": batch["images"][0]}, temporal=False, spatial=True, ring_neighbours=RING)


# --- the whole path on a rendered rig ----------------------------------------------------------------------


def _rig_loss(batch: dict, scale: float, temporal: bool, spatial: bool) -> float:
    sources, targets = surround_sources(batch, temporal=temporal, spatial=spatial, ring_neighbours=RING)
    depth = batch["depth"].reshape(3, 1, *targets.shape[-2:]) * scale
    r = photometric_loss(depth, targets, batch["K"].reshape(3, 3, 3), sources, automask=False)
    return float(r.loss)


@pytest.mark.parametrize(("temporal", "spatial"), [(True, False), (False, True), (True, True)])
def test_rendered_rig_reconstructs_with_true_depth_and_batch_poses(temporal: bool, spatial: bool) -> None:
    batch = room_batch()
    right = _rig_loss(batch, 1.0, temporal, spatial)
    assert right < 0.01
    assert _rig_loss(batch, 1.25, temporal, spatial) > 2.0 * right
    assert _rig_loss(batch, 0.8, temporal, spatial) > 2.0 * right


def test_rendered_rig_with_wrong_odometry_reconstructs_worse() -> None:
    batch = room_batch()
    right = _rig_loss(batch, 1.0, True, False)
    batch["prev_T_odom_base"] = batch["T_odom_base"].clone()  # claims the car stood still
    assert _rig_loss(batch, 1.0, True, False) > 2.0 * right
