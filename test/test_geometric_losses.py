"""Geometric metric-scale terms on a two-camera rig whose depth is ray-cast from a known box world.

The world is a room (floor z = 0 = the road plane, walls, ceiling) seen from
inside, optionally with a pillar standing on the floor: depth rendered from it
is consistent across views by construction, so every number asserted here
follows from the geometry, not from the implementation.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fsmde_core.camera import CameraModel
from fsmde_core.distill.geometric import (
    cross_view_loss,
    cross_view_residuals,
    ground_plane_hits,
    ground_scale_loss,
)
from fsmde_core.rig import make_transform, optical_to_base_rotation

TINY = Path(__file__).resolve().parents[1] / "config" / "train_tiny.yaml"
W, H = 96, 64
ROOM = (np.array([-14.0, -12.0, 0.0]), np.array([16.0, 13.0, 8.0]))
PILLAR = (np.array([3.0, 1.6, 0.0]), np.array([3.6, 2.2, 2.5]))  # in both views, near: parallax occludes
LOG_1_2 = float(np.log(1.2))


def _rig() -> tuple[torch.Tensor, torch.Tensor]:
    """Two cameras 1.5 m above the floor, 45 deg apart with a 1 m baseline: K (2,3,3), T_base_cam (2,4,4)."""
    K = CameraModel.pinhole(W, H, 90.0).K
    poses = [(0.0, (1.5, -0.5, 1.5)), (45.0, (1.2, 0.5, 1.4))]
    T = [make_transform(optical_to_base_rotation(yaw, 3.0), np.asarray(pos)) for yaw, pos in poses]
    return torch.tensor(np.stack([K, K]), dtype=torch.float32), torch.tensor(np.stack(T), dtype=torch.float32)


def _slab(origin: np.ndarray, rays: np.ndarray, box: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ray parameters where each ray enters and leaves an axis-aligned box (slab method)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = (box[0] - origin) / rays
        t1 = (box[1] - origin) / rays
    near = np.nanmax(np.minimum(t0, t1), axis=-1)
    far = np.nanmin(np.maximum(t0, t1), axis=-1)
    return near, far


def _render(K: torch.Tensor, T: torch.Tensor, pillar: bool) -> torch.Tensor:
    """(B,1,H,W) optical depth of the room (+ pillar): rays have unit optical z, so the ray parameter is depth."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)
    out = []
    for k, t in zip(K.double().numpy(), T.double().numpy(), strict=True):
        rays = pix @ np.linalg.inv(k).T @ t[:3, :3].T
        depth = _slab(t[:3, 3], rays, ROOM)[1]  # inside the room: where the ray leaves it
        if pillar:
            near, far = _slab(t[:3, 3], rays, PILLAR)
            depth = np.where((near <= far) & (near > 0), np.minimum(depth, near), depth)
        out.append(depth)
    return torch.tensor(np.stack(out)[:, None], dtype=torch.float32)


PAIRS = torch.tensor([[0, 1]])


def test_cross_view_is_zero_for_a_consistent_world_and_sees_a_scale_error():
    K, T = _rig()
    depth = _render(K, T, pillar=False)
    _, comparable = cross_view_residuals(depth, K, T, PAIRS, torch.ones_like(depth, dtype=torch.bool), 2)
    assert comparable.sum(1).min() > 100  # the two views overlap in both directions
    assert float(cross_view_loss(depth, K, T, PAIRS, stride=2)) < 0.01
    scaled = depth.clone()
    scaled[1] *= 1.2
    loss = float(cross_view_loss(scaled, K, T, PAIRS, stride=2))
    assert loss == pytest.approx(LOG_1_2, abs=0.02)


def test_cross_view_drops_occluded_points_but_not_a_scale_error():
    K, T = _rig()
    depth = _render(K, T, pillar=True)
    r, comparable = cross_view_residuals(depth, K, T, PAIRS, torch.ones_like(depth, dtype=torch.bool), 2)
    occluded = comparable & (r > 0.5)  # seen by the source, behind the pillar in the target
    assert occluded.sum() > 10
    naive = float(r.abs()[comparable].mean())
    gated = float(cross_view_loss(depth, K, T, PAIRS, stride=2))
    assert naive > 0.05 and gated < 0.25 * naive and gated < 0.02
    scaled = depth.clone()
    scaled[0] *= 1.2
    assert float(cross_view_loss(scaled, K, T, PAIRS, stride=2)) == pytest.approx(LOG_1_2, abs=0.03)


def test_cross_view_respects_the_mask_and_passes_gradients_to_both_views():
    K, T = _rig()
    depth = (_render(K, T, pillar=True) * 1.1).requires_grad_()
    mask = torch.ones_like(depth, dtype=torch.bool)
    mask[1] = False  # the second camera entirely invalid (ego): nothing to compare in either direction
    assert float(cross_view_loss(depth, K, T, PAIRS, mask, stride=2).detach()) == 0.0
    scaled = depth * torch.tensor([1.0, 1.3]).view(2, 1, 1, 1)
    cross_view_loss(scaled, K, T, PAIRS, stride=2).backward()
    grad = depth.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0


def test_cross_view_refuses_bad_shapes_with_one_line():
    K, T = _rig()
    depth = _render(K, T, pillar=False)
    with pytest.raises(ValueError, match=r"K must be \(B, 3, 3\) with B=2"):
        cross_view_loss(depth, K[:1], T, PAIRS)
    with pytest.raises(ValueError, match=r"pair indices must be in \[0, 2\)"):
        cross_view_loss(depth, K, T, torch.tensor([[0, 2]]))


def test_ground_plane_depth_matches_the_rendered_floor():
    K, T = _rig()
    depth = _render(K, T, pillar=False)
    plane, lateral = ground_plane_hits(K, T, H, W, 1, 0.0)
    plane = plane.reshape(2, 1, H, W)
    floor = torch.isfinite(plane) & (depth > plane - 1e-3)  # the rays that meet the floor before any wall
    assert floor.sum() > 2000
    torch.testing.assert_close(depth[floor], plane[floor], rtol=1e-4, atol=1e-4)
    assert (depth <= plane + 1e-3).all()  # a wall can only be closer than the plane behind it
    # camera 0 (y = -0.5) looks straight ahead: its centre columns (half a pixel off axis) stay at y = -0.5
    centre = lateral.reshape(2, H, W)[0, :, (W - 1) // 2 : W // 2 + 1]
    near = plane[0, 0, :, (W - 1) // 2 : W // 2 + 1] < 10.0
    assert near.sum() > H // 2
    torch.testing.assert_close(centre[near], torch.full_like(centre[near], -0.5), atol=10.0 * 0.5 / 48, rtol=0)
    assert torch.isinf(plane[:, :, : H // 4]).all()  # the camera pitches 3 deg down: the top rows see no floor


def test_ground_term_is_zero_on_the_road_and_measures_a_scale_error():
    K, T = _rig()
    depth = _render(K, T, pillar=False)
    assert float(ground_scale_loss(depth, K, T, stride=2)) < 0.01
    for s in (1.2, 1 / 1.2):
        assert float(ground_scale_loss(depth * s, K, T, stride=2)) == pytest.approx(LOG_1_2, abs=0.01)


def test_ground_term_ignores_objects_on_the_road_and_does_not_flatten_them():
    K, T = _rig()
    depth = _render(K, T, pillar=True)  # the pillar stands on the floor: closer than the plane behind it
    assert float(ground_scale_loss(depth, K, T, stride=2)) < 0.01
    # an object covering a third of the lower image, at 60 % of the road's depth
    patch = (slice(None), slice(None), slice(H // 2, H), slice(W // 3, 2 * W // 3))
    with_object = depth.clone()
    with_object[patch] *= 0.6
    assert float(ground_scale_loss(with_object, K, T, stride=2)) < 0.01
    pred = (with_object * 1.2).requires_grad_()
    loss = ground_scale_loss(pred, K, T, stride=2)
    assert float(loss.detach()) == pytest.approx(LOG_1_2, abs=0.01)
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert float(pred.grad[patch].abs().max()) == 0.0  # the object gets no pull towards the road


def test_ground_term_leaves_out_images_without_road():
    K, T = _rig()
    depth = _render(K, T, pillar=False)
    high = T.clone()
    high[1, 2, 3] = -1.0  # camera 1 below the plane: no ray meets it from above
    mixed = depth.clone()
    mixed[0] *= 1.2
    assert float(ground_scale_loss(mixed, K, high, stride=2)) == pytest.approx(LOG_1_2, abs=0.01)
    mask = torch.zeros_like(depth, dtype=torch.bool)
    assert float(ground_scale_loss(mixed, K, T, mask, stride=2)) == 0.0


# ------------------------------------------------- the synthetic world and the trainer
def _dense_gt(item: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The synthetic bag's dense ground truth (sky -> far) and where it may enter the loss."""
    gt = item["gt_depth"]
    valid = ~item["masks"] & torch.isfinite(gt)
    return torch.where(torch.isfinite(gt), gt, torch.full_like(gt, 1000.0)), valid


@pytest.fixture(scope="module")
def synthetic_dataset(synthetic_bag, tmp_path_factory):
    """The session's synthetic ddad bag decoded into the sample cache at its own size (160x96)."""
    from fsmde_core.config import TrainConfig, load_config
    from fsmde_core.data.cache import SurroundDataset, build_cache

    cfg = TrainConfig.from_dict(load_config(TINY, ["data.width=160", "data.height=96"]), "test")
    return SurroundDataset(build_cache([synthetic_bag], cfg.data, tmp_path_factory.mktemp("geo_cache"),
                                       progress=False))


def test_the_synthetic_worlds_true_depth_satisfies_both_terms(synthetic_dataset):
    """Real rendered geometry (suspension pitch and roll, kerbs, parked cars): ~0 for the truth, log 1.2 at 1.2x."""
    rig = synthetic_dataset.rig(0)
    pairs = torch.tensor(rig.adjacent_pairs())
    for i in range(len(synthetic_dataset)):
        item = synthetic_dataset[i]
        depth, valid = _dense_gt(item)
        K, T = item["K"], item["T_base_cam"]
        assert float(ground_scale_loss(depth, K, T, valid, stride=2)) < 0.03
        assert float(cross_view_loss(depth, K, T, pairs, valid, stride=2)) < 0.03
        for s in (1.2, 1 / 1.2):
            assert float(ground_scale_loss(depth * s, K, T, valid, stride=2)) == pytest.approx(LOG_1_2, abs=0.03)
        one_camera_off = depth.clone()
        one_camera_off[0] *= 1.2  # front camera 1.2x: 4 of the 12 directed pairs disagree by log 1.2
        xview = float(cross_view_loss(one_camera_off, K, T, pairs, valid, stride=2))
        assert len(pairs) == 6 and xview == pytest.approx(LOG_1_2 * 4 / 12, abs=0.02)


def test_three_training_steps_with_both_terms_log_them_and_stay_finite(synthetic_bag, tmp_path, monkeypatch):
    from fsmde_core.config import load_config
    from fsmde_core.train import Trainer

    monkeypatch.setenv("FSMDE_CACHE", str(tmp_path / "cache"))
    cfg = load_config(TINY, ["data.width=64", "data.height=64", "teacher.cache_height=32",
                             "teacher.cache_width=32", "log.tensorboard=false", "optim.max_steps=3",
                             "loss.use_xview=true", "loss.use_ground=true", "loss.xview_stride=2",
                             "loss.ground_stride=2"])
    cfg["data"]["bags"] = [str(synthetic_bag)]
    trainer = Trainer(cfg, tmp_path / "run", progress=False, device_name="cpu")
    trainer.setup()
    steps = []
    for batch in trainer._loader(0, 0):
        before = [p.detach().clone() for p in trainer.model.parameters()]
        _, losses = trainer.step(batch)
        steps.append({k: float(v.detach()) for k, v in losses.items()})
        assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters(), strict=True))
    assert len(steps) == 3
    for terms in steps:
        assert {"silog", "bins", "ckd", "vrkd", "xview", "ground", "total"} <= set(terms)
        assert all(np.isfinite(v) for v in terms.values())
        assert terms["xview"] > 0 and terms["ground"] > 0  # an untrained student is neither consistent nor metric


# ------------------------------------------------- configuration and the objective
def test_the_objective_adds_both_terms_with_their_weights():
    from types import SimpleNamespace

    from fsmde_core.distill.objective import DistillLossConfig, compute_losses

    K, T = _rig()
    truth = _render(K, T, pillar=True)
    depth = (truth * torch.tensor([1.0, 1.2]).view(2, 1, 1, 1)).requires_grad_()
    out = SimpleNamespace(depth=depth, logits=torch.zeros(2, 4, H, W), centres=torch.ones(2, 4),
                          features=torch.zeros(2, 3, 4, 6))
    cfg = DistillLossConfig(use_bins=False, use_ckd=False, use_vrkd=False, use_xview=True, use_ground=True,
                            w_xview=2.0, w_ground=3.0, xview_stride=2, ground_stride=2)
    losses = compute_losses(out, truth, None, None, PAIRS, cfg, readout="log", K=K, T_base_cam=T)
    assert set(losses) == {"silog", "xview", "ground", "total"}
    torch.testing.assert_close(losses["xview"], cross_view_loss(depth, K, T, PAIRS, stride=2))
    torch.testing.assert_close(losses["ground"], ground_scale_loss(depth, K, T, stride=2))
    torch.testing.assert_close(losses["total"], 10 * losses["silog"] + 2 * losses["xview"] + 3 * losses["ground"])
    assert float(losses["xview"].detach()) > 0.1 and float(losses["ground"].detach()) > 0.05
    with pytest.raises(ValueError, match=r"\['use_ground'\] need the cameras' K and T_base_cam"):
        compute_losses(out, truth, cfg=DistillLossConfig(use_ckd=False, use_vrkd=False, use_ground=True),
                       readout="log")
    with pytest.raises(ValueError, match="use_xview is enabled but no adjacent-view pairs"):
        compute_losses(out, truth, cfg=DistillLossConfig(use_ckd=False, use_vrkd=False, use_xview=True),
                       readout="log", K=K, T_base_cam=T)


@pytest.mark.parametrize(("override", "message"), [
    ("loss.xview_stride=0", "loss.xview_stride must be an integer >= 1, got 0"),
    ("loss.ground_stride=2.5", "loss.ground_stride must be an integer >= 1, got 2.5"),
    ("loss.xview_gate=0", "loss.xview_gate must be > 0, got 0"),
    ("loss.ground_half_width=-1", "loss.ground_half_width must be > 0, got -1"),
    ("loss.w_ground=-1", "loss.w_ground must be >= 0, got -1"),
])
def test_bad_geometric_keys_are_one_config_line(override, message):
    from fsmde_core.config import ConfigError, TrainConfig, load_config

    with pytest.raises(ConfigError, match=re.escape(message).replace(r"loss\.", r"(DistillLossConfig|loss)\.")):
        TrainConfig.from_dict(load_config(TINY, [override]), "cmd")


def test_geometric_terms_alone_are_refused():
    from fsmde_core.distill.objective import DistillLossConfig

    with pytest.raises(ValueError, match="alone do not determine depth"):
        DistillLossConfig(use_silog=False, use_bins=False, use_ckd=False, use_vrkd=False, use_xview=True,
                          use_ground=True)


def test_the_shipped_configs_carry_the_geometric_keys_switched_off():
    import yaml

    for path in sorted(TINY.parent.glob("train_*.yaml")):
        loss = yaml.safe_load(path.read_text())["loss"]
        assert loss["use_xview"] is False and loss["use_ground"] is False, path.name
        assert {"w_xview", "xview_stride", "xview_gate", "w_ground", "ground_z", "ground_max_depth",
                "ground_half_width", "ground_band", "ground_stride"} <= set(loss), path.name
