"""Photometric self-supervision: SSIM + L1, per-pixel minimum reprojection, auto-masking (monodepth2).

Why each piece:

* **SSIM + L1** (``pe = alpha (1 - SSIM) / 2 + (1 - alpha) L1``): SSIM compares
  local structure and tolerates the exposure differences between frames and
  between cameras; L1 keeps the absolute colour anchored.
* **per-pixel minimum over the sources**: a pixel occluded or out of view in
  one source is usually visible in another; averaging would punish the
  correct depth there, the minimum does not. Invalid samples count as +inf, so
  an adjacent camera (whose image only overlaps a band) never wins outside
  its overlap, and a pixel valid in no source is left out.
* **auto-masking**: pixels where an *unwarped* temporal source matches better
  than every warped one are static relative to the camera (a standstill, an
  object moving with the car, a textureless sky) and carry no depth signal;
  they are left out. Only temporal sources ("prev", "next") are compared
  unwarped: an adjacent camera's raw image is a different view, its
  agreement with the target says nothing about motion.

Batches follow the trainer: S surround sets of N cameras flattened to B = S*N
targets, camera-major within a set (image b = set b // N, camera b % N).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 (the universal torch idiom)

from fsmde_core.selfsup.warp import invert_rigid, relative_camera_poses, sample_with_grid, sampling_grid

#: SSIM stabilisers for images in [0, 1] (Wang et al. 2004; monodepth2).
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
#: Tie-breaking noise on the identity errors (monodepth2): an exact tie is decided at random, not by order.
IDENTITY_NOISE = 1e-5
#: Source kinds that are compared unwarped for the auto-mask (same camera, another time).
TEMPORAL_KINDS = ("prev", "next")
KINDS = ("prev", "next", "left", "right")


def ssim_l1(pred: torch.Tensor, target: torch.Tensor, alpha: float = 0.85) -> torch.Tensor:
    """Per-pixel photometric error (B, 1, H, W): alpha (1 - SSIM)/2 + (1 - alpha) L1, averaged over channels.

    SSIM over 3x3 windows with reflection padding (monodepth2), C1 = 0.01^2, C2 = 0.03^2.
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"ssim_l1 needs equal (B, C, H, W) shapes, got {tuple(pred.shape)} and {tuple(target.shape)}")
    l1 = (pred - target).abs().mean(1, keepdim=True)
    x = F.pad(pred, (1, 1, 1, 1), mode="reflect")
    y = F.pad(target, (1, 1, 1, 1), mode="reflect")
    mu_x = F.avg_pool2d(x, 3, 1)
    mu_y = F.avg_pool2d(y, 3, 1)
    sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_x**2
    sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_y**2
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
    den = (mu_x**2 + mu_y**2 + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
    dssim = ((1 - num / den) / 2).clamp(0, 1).mean(1, keepdim=True)
    return alpha * dssim + (1 - alpha) * l1


@dataclass
class PhotometricSources:
    """The source views of each of the B targets: S slots, some of them absent (valid False).

    images (B, S, 3, H, W) in [0, 1]; K (B, S, 3, 3) source intrinsics at the
    image size; T_src_tgt (B, S, 4, 4) target camera -> source camera; valid
    (B, S) bool (the source exists and its pose is known); kinds: one of
    "prev", "next", "left", "right" per slot.
    """

    images: torch.Tensor
    K: torch.Tensor
    T_src_tgt: torch.Tensor
    valid: torch.Tensor
    kinds: tuple[str, ...]

    def check(self, batch: int, height: int, width: int) -> None:
        """One clear line when the sources do not fit B targets of H x W."""
        n = len(self.kinds)
        if n == 0:
            raise ValueError("PhotometricSources needs at least one source slot")
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"PhotometricSources.kinds must be among {KINDS}, got {unknown}")
        expected = {"images": (batch, n, 3, height, width), "K": (batch, n, 3, 3),
                    "T_src_tgt": (batch, n, 4, 4), "valid": (batch, n)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"PhotometricSources.{name} must be {shape}, got {tuple(getattr(self, name).shape)}")


@dataclass
class PhotometricResult:
    """What :func:`photometric_loss` computed, for the loss, the reflective mask and the logs.

    loss: scalar mean of ``error`` over ``used``; error (B, 1, H, W) the
    per-pixel minimum reprojection error (+inf where no source is valid);
    source_errors (B, S, 1, H, W) (+inf where that source is invalid or its
    SSIM window touches an invalid pixel); used
    (B, 1, H, W) the pixels that entered the loss; automask (B, 1, H, W) True
    where a warped source beat every unwarped one (all True when off); warp:
    re-applies this call's sampling grids to other per-source maps,
    ``x_src (B, S, C, H, W) -> (warped (B, S, C, H, W), valid (B, S, 1, H, W))``
    with the warp's own validity (in front, inside, source present; no window erosion).
    """

    loss: torch.Tensor
    error: torch.Tensor
    source_errors: torch.Tensor
    used: torch.Tensor
    automask: torch.Tensor
    warp: Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _optional_mask(x: torch.Tensor | None, like: torch.Tensor, name: str, default: bool) -> torch.Tensor:
    """A (B, 1, H, W) bool mask, or a constant one when None; one clear line on a wrong shape or dtype."""
    shape = (like.shape[0], 1, *like.shape[-2:])
    if x is None:
        return torch.full(shape, default, dtype=torch.bool, device=like.device)
    if x.dtype != torch.bool or tuple(x.shape) != shape:
        raise ValueError(f"{name} must be a bool tensor of shape {shape}, got {x.dtype} {tuple(x.shape)}")
    return x


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(B, S, ...) -> (B*S, ...)."""
    return x.reshape(-1, *x.shape[2:])


def _identity_errors(target: torch.Tensor, sources: PhotometricSources, alpha: float) -> torch.Tensor | None:
    """(B, T, 1, H, W) errors of the unwarped temporal sources (+noise for ties, +inf where absent), or None."""
    slots = [i for i, k in enumerate(sources.kinds) if k in TEMPORAL_KINDS]
    if not slots:
        return None
    b, t = target.shape[0], len(slots)
    idx = torch.tensor(slots, device=target.device)
    raw = sources.images.index_select(1, idx)
    err = ssim_l1(_flat(raw), target.repeat_interleave(t, 0), alpha).reshape(b, t, 1, *target.shape[-2:])
    err = err + IDENTITY_NOISE * torch.randn_like(err)
    present = sources.valid.index_select(1, idx)[:, :, None, None, None]
    return torch.where(present, err, torch.full_like(err, float("inf")))


def _whole_window_valid(valid: torch.Tensor) -> torch.Tensor:
    """(B, S, 1, H, W) valid pixels whose whole 3x3 SSIM window is valid (outside the image counts as valid).

    Why: next to an invalid pixel the window mixes in border-clamped samples
    of the source, which the true depth cannot explain; on a rendered pair
    those rims carried most of the error at the true depth (0.020 vs 0.003).
    """
    b, s, _, h, w = valid.shape
    any_invalid = F.max_pool2d((~valid).reshape(b * s, 1, h, w).float(), 3, 1, 1) > 0
    return valid & ~any_invalid.reshape(b, s, 1, h, w)


def _make_warp(grid: torch.Tensor, valid: torch.Tensor, b: int, s: int) -> Callable[..., tuple]:
    """The warp closure of a :class:`PhotometricResult` (grids (B*S, H, W, 2), valid (B, S, 1, H, W))."""

    def warp(x_src: torch.Tensor, detach_grid: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample per-source maps (B, S, C, H, W) where this call sampled the images; detach_grid: no depth grad."""
        if x_src.dim() != 5 or tuple(x_src.shape[:2]) != (b, s) or x_src.shape[-2:] != valid.shape[-2:]:
            raise ValueError(f"warp needs (B={b}, S={s}, C, H, W) at the loss's size, got {tuple(x_src.shape)}")
        g = grid.detach() if detach_grid else grid
        warped = sample_with_grid(_flat(x_src), g)
        return warped.reshape(b, s, *warped.shape[1:]), valid

    return warp


def photometric_loss(
    depth: torch.Tensor, target: torch.Tensor, K: torch.Tensor, sources: PhotometricSources,
    mask: torch.Tensor | None = None, *, automask: bool = True, alpha: float = 0.85,
    exclude: torch.Tensor | None = None,
) -> PhotometricResult:
    """Minimum-reprojection photometric loss of the targets' depth against their sources.

    Every source is warped into its target at once (the S slots flattened into
    the batch), its per-pixel error (:func:`ssim_l1`) is +inf where the warp is
    invalid or the source absent, and the per-pixel minimum over sources is the
    error. The loss averages it over pixels that are usable (``mask``), not
    excluded (``exclude``, e.g. reflective), valid in at least one source and
    kept by the auto-mask; 0 (with a graph) when no pixel qualifies.

    Args:
        depth: (B, 1, H, W) metres along the optical axis, > 0, at the images' size.
        target: (B, 3, H, W) target images in [0, 1].
        K: (B, 3, 3) target intrinsics at this size.
        sources: the source views (:func:`surround_sources`).
        mask: (B, 1, H, W) bool, True = usable (False on ego pixels); None = all.
        automask: leave out pixels where an unwarped temporal source wins.
        alpha: SSIM weight of the error.
        exclude: (B, 1, H, W) bool, True = leave out (the reflective mask); None = nothing.
    """
    b, _, h, w = target.shape
    if tuple(depth.shape) != (b, 1, h, w):
        raise ValueError(f"depth must be (B, 1, H, W) = {(b, 1, h, w)} like the target, got {tuple(depth.shape)}")
    sources.check(b, h, w)
    usable = _optional_mask(mask, target, "mask", True) & ~_optional_mask(exclude, target, "exclude", False)
    s = len(sources.kinds)
    grid, valid = sampling_grid(depth.repeat_interleave(s, 0), K.repeat_interleave(s, 0), _flat(sources.K),
                                _flat(sources.T_src_tgt))
    valid = valid.reshape(b, s, 1, h, w) & sources.valid[:, :, None, None, None]
    warped = sample_with_grid(_flat(sources.images).to(target.dtype), grid)
    err = ssim_l1(warped, target.repeat_interleave(s, 0), alpha).reshape(b, s, 1, h, w)
    source_errors = torch.where(_whole_window_valid(valid), err, torch.full_like(err, float("inf")))
    error = source_errors.min(1).values
    kept = torch.ones_like(usable)
    identity = _identity_errors(target, sources, alpha) if automask else None
    if identity is not None:
        kept = error < identity.min(1).values.detach()
    used = usable & torch.isfinite(error) & kept
    safe = torch.where(used, error, torch.zeros_like(error))
    loss = safe.sum() / used.sum().clamp_min(1).to(safe.dtype)  # keeps its graph through the where when empty
    return PhotometricResult(loss, error, source_errors, used, kept, _make_warp(grid, valid, b, s))


def _rows(x: torch.Tensor, s: int, n: int, name: str, tail: tuple[int, ...]) -> torch.Tensor:
    """Check a batch entry is (S, N, *tail); one clear line otherwise."""
    if tuple(x.shape) != (s, n, *tail):
        raise ValueError(f"batch['{name}'] must be {(s, n, *tail)}, got {tuple(x.shape)}")
    return x


def _flags(batch: dict, key: str, s: int, device: torch.device) -> torch.Tensor:
    """(S,) bool per-set flag of the batch (False when the key is missing: the data lacks it)."""
    if key not in batch:
        return torch.zeros(s, dtype=torch.bool, device=device)
    return batch[key].reshape(s).to(device=device, dtype=torch.bool)


def _check_ring(ring_neighbours: list[tuple[int, int]], n: int) -> torch.Tensor:
    """(N, 2) long (left, right) per camera; one clear line when it does not fit N cameras."""
    ring = torch.as_tensor(ring_neighbours, dtype=torch.long).reshape(-1, 2)
    if ring.shape[0] != n or (ring.numel() and (int(ring.min()) < 0 or int(ring.max()) >= n)):
        raise ValueError(f"ring_neighbours must give (left, right) camera indices in [0, {n}) for each of {n} "
                         f"cameras, got {ring_neighbours}")
    return ring


def _temporal_source(
    batch: dict, which: str, images: torch.Tensor, T_base_cam: torch.Tensor, ego: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same camera at t-1 or t+1 -> (images (S,N,3,H,W), T_src_tgt (S,N,4,4), valid (S,N)).

    Pose from the odometry (each camera at its own stamp), or, when ``ego``
    (S, 4, 4) base(t_src) <- base(t) is given, from the pose network.
    """
    s, n = images.shape[:2]
    src = _rows(batch[f"{which}_images"], s, n, f"{which}_images", tuple(images.shape[2:])).to(images.dtype)
    exists = _flags(batch, f"has_{which}", s, images.device)
    if ego is None:
        T_odom = _rows(batch["T_odom_base"], s, n, "T_odom_base", (4, 4))
        T_odom_src = _rows(batch[f"{which}_T_odom_base"], s, n, f"{which}_T_odom_base", (4, 4))
        T = relative_camera_poses(T_odom_src, T_base_cam, T_odom, T_base_cam)
        exists = exists & _flags(batch, "has_odom", s, images.device)
    else:
        # Conjugation by the extrinsics, in the pose net's dtype so its gradient flows.
        cam = T_base_cam.to(ego.dtype)
        T = invert_rigid(cam) @ ego[:, None] @ cam
    return src, T.to(images.device), exists[:, None].expand(s, n)


def _spatial_source(
    batch: dict, side: int, ring: torch.Tensor, images: torch.Tensor, K: torch.Tensor, T_base_cam: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The left (side 0) or right (side 1) camera of the same set -> (images, K, T_src_tgt, valid), (S, N, ...).

    Through the extrinsics and, when the set has odometry, the base's motion
    between the two cameras' stamps (a rolling rig at 10 m/s moves 5 cm per
    5 ms of trigger offset). A camera that is its own neighbour has no source.
    """
    s, n = images.shape[:2]
    j = ring[:, side].to(images.device)
    has_odom = _flags(batch, "has_odom", s, images.device)[:, None, None, None]
    eye = torch.eye(4, dtype=torch.float64, device=images.device).expand(s, n, 4, 4)
    T_odom = _rows(batch["T_odom_base"], s, n, "T_odom_base", (4, 4)).to(torch.float64) \
        if "T_odom_base" in batch else eye
    T_odom = torch.where(has_odom, T_odom, eye)
    T = relative_camera_poses(T_odom[:, j], T_base_cam[:, j], T_odom, T_base_cam)
    own = (j == torch.arange(n, device=images.device))[None].expand(s, n)
    return images[:, j], K[:, j], T, ~own


def surround_sources(
    batch: dict, *, temporal: bool, spatial: bool, ring_neighbours: list[tuple[int, int]],
    ego_motion: torch.Tensor | None = None,
) -> tuple[PhotometricSources, torch.Tensor]:
    """The photometric sources of every camera of every set -> (sources for B = S*N targets, targets (B,3,H,W)).

    Slots, in order: "prev", "next" (``temporal``: the same camera's
    neighbouring sets; poses from ``T_odom_base`` when the set has odometry,
    from ``ego_motion`` (S, 2, 4, 4) = base(t_prev) <- base(t), base(t_next) <-
    base(t) when given), then "left", "right" (``spatial``: the adjacent
    cameras of the same set, ``ring_neighbours[k] = (left, right)``).

    Args:
        batch: the collated dataset dict, (S, N, ...) per key, on the trainer's device
            (images, K, T_base_cam, T_odom_base, has_odom; prev_/next_ images and
            T_odom_base and has_prev / has_next for the temporal sources).
    """
    images = batch["images"]
    if images.dim() != 5 or images.shape[2] != 3:
        raise ValueError(f"batch['images'] must be (S, N, 3, H, W), got {tuple(images.shape)}")
    if not (temporal or spatial):
        raise ValueError("surround_sources needs temporal or spatial sources (both are off)")
    s, n, _, h, w = images.shape
    K = _rows(batch["K"], s, n, "K", (3, 3)).to(images.dtype)
    T_base_cam = _rows(batch["T_base_cam"], s, n, "T_base_cam", (4, 4))
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    kinds: list[str] = []
    if temporal:
        needed = ["prev_images", "next_images"]
        if ego_motion is None:
            needed += ["T_odom_base", "prev_T_odom_base", "next_T_odom_base"]
        missing = [key for key in needed if key not in batch]
        if missing:
            raise ValueError(f"temporal photometric sources need neighbour frames and their poses: batch lacks "
                             f"{missing} (build the dataset with neighbours=True)")
        if ego_motion is not None and tuple(ego_motion.shape) != (s, 2, 4, 4):
            raise ValueError(f"ego_motion must be (S, 2, 4, 4) = {(s, 2, 4, 4)}, got {tuple(ego_motion.shape)}")
        for i, which in enumerate(("prev", "next")):
            ego = None if ego_motion is None else ego_motion[:, i]
            src, T, valid = _temporal_source(batch, which, images, T_base_cam, ego)
            parts.append((src, K, T, valid))
            kinds.append(which)
    if spatial:
        ring = _check_ring(ring_neighbours, n)
        for side, kind in enumerate(("left", "right")):
            parts.append(_spatial_source(batch, side, ring, images, K, T_base_cam))
            kinds.append(kind)
    b = s * n
    sources = PhotometricSources(
        images=torch.stack([p[0] for p in parts], 2).reshape(b, len(parts), 3, h, w),
        K=torch.stack([p[1] for p in parts], 2).reshape(b, len(parts), 3, 3),
        T_src_tgt=torch.stack([p[2].to(device=images.device, dtype=torch.float32) for p in parts], 2)
        .reshape(b, len(parts), 4, 4),
        valid=torch.stack([p[3] for p in parts], 2).reshape(b, len(parts)),
        kinds=tuple(kinds),
    )
    return sources, images.reshape(b, 3, h, w)
