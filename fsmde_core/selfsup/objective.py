"""The self-supervised terms of a training step: photometric, smoothness, reflective handling (issue 12).

Kept out of :func:`fsmde_core.distill.objective.compute_losses` because they
need what that function never sees: the clean images, the neighbour sets, the
odometry and the modules these terms train (pose network, intrinsic
decomposition, the reflective error statistics). :class:`SelfSupervision` owns
those modules; the trainer checkpoints them with the student
(:class:`fsmde_core.train.TrainedModules`).

Metric scale without LiDAR comes from two places: the spatial sources (adjacent
cameras through the extrinsics: a metric baseline) and the temporal sources when
their poses come from /tf odometry (metric translation). With CKD on, the same
photometric loss is applied to CKD's cross depth D^x (the teacher's rank bins
read out with the student's centres), so the centres learn their metres from
the video the way the LiDAR centre term teaches them otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 (the universal torch idiom)

from fsmde_core.distill.ckd import ckd_loss, cross_depth
from fsmde_core.distill.objective import DistillLossConfig
from fsmde_core.models.teachers.base import TeacherOutput
from fsmde_core.selfsup.intrinsic import EPS as LOG_EPS
from fsmde_core.selfsup.intrinsic import Decomposition, IntrinsicDecomposer, decomposition_losses
from fsmde_core.selfsup.photometric import PhotometricSources, photometric_loss, ssim_l1, surround_sources
from fsmde_core.selfsup.posenet import RigPoseNet
from fsmde_core.selfsup.reflective import ErrorStats, reflective_mask

#: Keys of a dataset item that the self-supervised terms read, stacked per set (S, N, ...) by the collate.
SET_KEYS = ("images", "masks", "K", "T_base_cam", "T_odom_base", "has_odom", "prev_images", "next_images",
            "prev_T_odom_base", "next_T_odom_base", "has_prev", "has_next")


def rescaled_intrinsics(K: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    """K for an image resized by (sx, sy) (pixel-centre convention of :mod:`fsmde_core.data.sample`)."""
    K = K.clone()
    K[..., 0, 0] *= sx
    K[..., 0, 2] = (K[..., 0, 2] + 0.5) * sx - 0.5
    K[..., 1, 1] *= sy
    K[..., 1, 2] = (K[..., 1, 2] + 0.5) * sy - 0.5
    return K


def downscaled_sets(sets: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """The per-set tensors at ``scale`` x the training size: images area-averaged, masks nearest, K rescaled.

    The photometric terms are mostly elementwise work over (targets x sources)
    pixels; at half size they cost a quarter, which is what lets a CPU run them
    (``loss.photometric_scale``).
    """
    if scale == 1.0:
        return sets
    h, w = sets["images"].shape[-2:]
    size = (max(8, round(h * scale)), max(8, round(w * scale)))
    out = dict(sets)
    for key in ("images", "prev_images", "next_images"):
        if key in sets:
            x = sets[key]
            out[key] = F.interpolate(x.flatten(0, 1), size=size, mode="area").view(*x.shape[:3], *size)
    m = sets["masks"]
    out["masks"] = F.interpolate(m.flatten(0, 1).float(), size=size, mode="nearest").view(*m.shape[:3], *size) > 0.5
    out["K"] = rescaled_intrinsics(sets["K"], size[1] / w, size[0] / h)
    return out


def _reflective_slots(sources: PhotometricSources) -> PhotometricSources:
    """The adjacent-camera slots when there are any (else all): what the reflective pass compares.

    A reflection moves with the viewpoint between two cameras of the rig as it
    does between two instants of one camera (baselines of ~0.5-1 m either way).
    """
    keep = [k for k, kind in enumerate(sources.kinds) if kind in ("left", "right")]
    if not keep or len(keep) == len(sources.kinds):
        return sources
    idx = torch.tensor(keep, device=sources.images.device)
    return PhotometricSources(images=sources.images[:, idx], K=sources.K[:, idx], T_src_tgt=sources.T_src_tgt[:, idx],
                              valid=sources.valid[:, idx], kinds=tuple(sources.kinds[k] for k in keep))


def _resized_depth(depth: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """The student's depth at the photometric size: area when shrinking (every pixel keeps a gradient)."""
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth
    shrinking = depth.shape[-2] > size[0]
    return F.interpolate(depth, size=size, mode="area") if shrinking else F.interpolate(
        depth, size=size, mode="bilinear", align_corners=False)


def ring_neighbours(pairs: list[tuple[int, int]], num_cameras: int) -> list[tuple[int, int]]:
    """(left, right) camera of each camera from the rig's adjacent pairs (i -> next counter-clockwise)."""
    left = {j: i for i, j in pairs}
    right = {i: j for i, j in pairs}
    return [(left.get(k, right.get(k, k)), right.get(k, left.get(k, k))) for k in range(num_cameras)]


def smoothness_loss(depth: torch.Tensor, images: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """monodepth2's edge-aware smoothness of the mean-normalised inverse depth (B,1,H,W), images (B,3,H,W)."""
    disp = 1.0 / depth.clamp_min(1e-3)
    disp = disp / disp.mean(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    dx = (disp[..., :, 1:] - disp[..., :, :-1]).abs()
    dy = (disp[..., 1:, :] - disp[..., :-1, :]).abs()
    ix = (images[..., :, 1:] - images[..., :, :-1]).abs().mean(1, keepdim=True)
    iy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean(1, keepdim=True)
    sx, sy = dx * torch.exp(-ix), dy * torch.exp(-iy)
    if mask is None:
        return sx.mean() + sy.mean()
    mx = (mask[..., :, 1:] & mask[..., :, :-1]).to(sx.dtype)
    my = (mask[..., 1:, :] & mask[..., :-1, :]).to(sy.dtype)
    return (sx * mx).sum() / mx.sum().clamp_min(1.0) + (sy * my).sum() / my.sum().clamp_min(1.0)


class ErrorStatsModule(torch.nn.Module):
    """:class:`ErrorStats` with its state as buffers, so the training checkpoint carries it (no pickling)."""

    def __init__(self) -> None:
        super().__init__()
        self.stats = ErrorStats()
        for name, value in self.stats.state_dict().items():
            self.register_buffer(name, value.clone())

    def sync_in(self) -> None:
        self.stats.load_state_dict({name: getattr(self, name) for name in self.stats.state_dict()})

    def sync_out(self) -> None:
        for name, value in self.stats.state_dict().items():
            getattr(self, name).copy_(value)


@dataclass
class SelfSupervisedBatch:
    """The per-set (S, N, ...) view of a batch that the photometric terms read (on the trainer's device)."""

    sets: dict[str, torch.Tensor]


class SelfSupervision(torch.nn.Module):
    """The photometric terms and the modules they train; one instance per training run."""

    def __init__(self, cfg: DistillLossConfig, ring: list[tuple[int, int]], use_posenet: bool, seed: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.ring = ring
        with torch.random.fork_rng(devices=[]):  # own seeds: the student's stream stays as without these modules
            torch.manual_seed(seed + 2)
            self.posenet = RigPoseNet() if use_posenet else None
            self.decomposer = IntrinsicDecomposer() if cfg.use_reflective_mask else None
        self.error_stats = ErrorStatsModule() if cfg.use_reflective_mask else None
        self.last_reflective_fraction = 0.0

    # -------------------------------------------------------------- sources
    def _ego_motion(self, sets: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """(S, 2, 4, 4) base(t_prev) <- base(t), base(t_next) <- base(t) from the pose network; None = odometry."""
        if self.posenet is None or not self.cfg.photometric_temporal:
            return None
        cur, tb = sets["images"], sets["T_base_cam"]
        return torch.stack([self.posenet(cur, sets["prev_images"], tb), self.posenet(cur, sets["next_images"], tb)],
                           dim=1)

    def sources(self, sets: dict[str, torch.Tensor]) -> tuple[PhotometricSources, torch.Tensor]:
        return surround_sources(sets, temporal=self.cfg.photometric_temporal, spatial=self.cfg.photometric_spatial,
                                ring_neighbours=self.ring, ego_motion=self._ego_motion(sets))

    # ---------------------------------------------------------------- terms
    def forward(self, out, batch: SelfSupervisedBatch, teacher: TeacherOutput | None, readout: str,
                cfg: DistillLossConfig) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Unweighted terms and their weights (``cfg``: this step's, with the KD ramp applied)."""
        sets = downscaled_sets(batch.sets, cfg.photometric_scale)
        sources, target = self.sources(sets)
        size = tuple(target.shape[-2:])
        depth = _resized_depth(out.depth, size)
        K = sets["K"].flatten(0, 1)
        usable = ~sets["masks"].flatten(0, 1)
        terms: dict[str, torch.Tensor] = {}
        weights: dict[str, float] = {}
        exclude = None
        if self.decomposer is not None:
            exclude, terms["decomposition"] = self._reflective(depth.detach(), target, K, sources, usable, sets)
            weights["decomposition"] = cfg.w_decomposition
        result = photometric_loss(depth, target, K, sources, usable, automask=cfg.photometric_automask,
                                  alpha=cfg.photometric_alpha, exclude=exclude)
        terms["photometric"], weights["photometric"] = result.loss, cfg.w_photometric
        if cfg.w_smoothness > 0:
            terms["smoothness"], weights["smoothness"] = smoothness_loss(depth, target, usable), cfg.w_smoothness
        if cfg.use_ckd and teacher is not None and cfg.w_photometric_centres > 0:
            cross, _ = cross_depth(out.centres, teacher.inv_depth, depth, usable, readout)
            centre = photometric_loss(cross, target, K, sources, usable, automask=cfg.photometric_automask,
                                      alpha=cfg.photometric_alpha, exclude=exclude)
            terms["photometric_centres"], weights["photometric_centres"] = centre.loss, cfg.w_photometric_centres
        if exclude is not None and cfg.use_ckd and teacher is not None and cfg.w_reflective_ckd > 0:
            size_l = tuple(out.logits.shape[-2:])
            refl = F.interpolate(exclude.float(), size=size_l, mode="area") > 0.5
            terms["reflective_ckd"] = ckd_loss(out.logits, teacher.inv_depth, refl, cfg.tau_ckd)
            weights["reflective_ckd"] = cfg.w_ckd * cfg.w_reflective_ckd
        return terms, weights

    def _reflective(self, depth: torch.Tensor, target: torch.Tensor, K: torch.Tensor, sources: PhotometricSources,
                    usable: torch.Tensor, sets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The reflective mask of this step (no gradient) and the decomposition's own loss (its gradient only).

        The image's per-pixel photometric error is compared with that of its
        diffuse part under the same warps (the depth is detached: the mask must
        not shape the depth it masks). With spatial sources on, only they are
        compared (:func:`_reflective_slots`): they are the set's own cameras, so
        the decomposition runs once per image of the set and not on the
        neighbour sets (a third of the cost).
        """
        assert self.decomposer is not None and self.error_stats is not None
        sources = _reflective_slots(sources)
        dec_t = self.decomposer(target)
        log_src = self._source_log_diffuse(dec_t, sources, sets)
        with torch.no_grad():
            image_pass = photometric_loss(depth, target, K, sources, usable, automask=False,
                                          alpha=self.cfg.photometric_alpha)
        warped_log, warp_valid = image_pass.warp(log_src)
        warp_valid = warp_valid & sources.valid[:, :, None, None, None]
        err_image = image_pass.error
        losses = decomposition_losses(target, dec_t, warped_log, warp_valid, image_error=err_image.detach())
        with torch.no_grad():
            err_diffuse = self._diffuse_error(dec_t, warped_log, warp_valid)
            valid = usable & torch.isfinite(err_image) & torch.isfinite(err_diffuse)
            self.error_stats.sync_in()
            mask = reflective_mask(err_image, err_diffuse, valid, self.error_stats.stats, self.cfg.reflective_threshold)
            self.error_stats.stats.update(err_image, err_diffuse, valid)  # after the mask (reflective.py)
            self.error_stats.sync_out()
            self.last_reflective_fraction = float(mask.float().mean())
        return mask, losses["total"]

    def _source_log_diffuse(self, dec_t: Decomposition, sources: PhotometricSources,
                            sets: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, S, 3, h, w) log-diffuse of every source slot: prev/next decomposed here, left/right gathered."""
        assert self.decomposer is not None
        s, n = sets["images"].shape[:2]
        cams = torch.arange(s * n, device=dec_t.log_diffuse.device)
        set_start = cams - cams % n
        slots = []
        for kind in sources.kinds:
            if kind in ("prev", "next"):
                slots.append(self.decomposer(sets[f"{kind}_images"].flatten(0, 1)).log_diffuse)
            else:
                side = 0 if kind == "left" else 1
                other = torch.tensor([self.ring[k % n][side] for k in range(s * n)], device=cams.device)
                slots.append(dec_t.log_diffuse[set_start + other])
        return torch.stack(slots, 1)

    def _diffuse_error(self, dec_t: Decomposition, warped_log: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Per-pixel minimum over the sources of the diffuse images' SSIM + L1 error (inf where no source)."""
        target = dec_t.diffuse_image()
        errors = []
        for k in range(warped_log.shape[1]):
            e = ssim_l1((warped_log[:, k].exp() - LOG_EPS).clamp(0.0, 1.0), target, self.cfg.photometric_alpha)
            errors.append(torch.where(valid[:, k], e, torch.full_like(e, float("inf"))))
        return torch.stack(errors, 1).amin(1)
