"""The reflective mask: pixels whose image is much less view-consistent than its diffuse part.

Why (arXiv 2503.22209): on a Lambertian surface the photometric error of the image ``e_I`` and
that of its diffuse part ``e_L`` (:mod:`fsmde_core.selfsup.intrinsic`) move together: a wrong
depth, an occlusion or a texture-less patch raises both. A reflection raises only ``e_I``: the
view-dependent residual R changes between views while L does not. So a pixel is reflective
when its pair ``(e_I, e_L)`` is an outlier on the side where the image is worse than its
diffuse part, and its photometric gradient is left out of the depth loss (``exclude`` of
``photometric_loss``); the teacher's pseudo-depth fills it through CKD.

:class:`ErrorStats` keeps a running (EMA) mean and 2x2 covariance of the pair over valid
pixels, so "outlier" is measured against what this run's errors look like now, not against a
hand-set threshold on errors whose scale changes as the depth trains. :func:`reflective_mask`
flags a pixel when the Mahalanobis distance of the pair *along the image-worse-than-diffuse
direction*, ``z = (d - mean_d) / std_d`` with ``d = e_I - e_L`` (variance
``S_II + S_LL - 2 S_IL`` from the covariance), exceeds ``threshold``. The full Mahalanobis
distance bounds every such one-dimensional projection (:func:`mahalanobis_distance` >= ``|z|``),
so each flagged pixel is also a joint outlier at ``threshold`` with ``e_I - e_L`` above its mean
difference; the projection additionally keeps out the pixels that are joint outliers only
because both errors are high (occlusion, texture-less, moving objects), which the photometric
loss's own minimum reprojection and auto-mask handle.

Wiring (trainer): ``e_I`` = ``PhotometricResult.error``; ``e_L`` = ``ssim_l1`` of the target's
diffuse image against the sources' diffuse images warped with ``PhotometricResult.warp``,
minimum over the same sources; ``valid`` = ``PhotometricResult.used``; the mask is computed
before :meth:`ErrorStats.update` of the same step (no gradients either way).
"""

from __future__ import annotations

import torch

#: Variance floor of the error difference: photometric errors live in [0, ~1], a std below 1e-3
#: is below 8-bit quantisation; it keeps the mask quiet while the two errors are still identical
#: (an untrained decomposer says L = I, so d = 0 everywhere).
MIN_VARIANCE = 1e-6


def _finite_pairs(err_image: torch.Tensor, err_diffuse: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) bool: valid and both errors finite."""
    if err_image.shape != err_diffuse.shape or valid.shape != err_image.shape:
        raise ValueError(f"reflective: err_image {tuple(err_image.shape)}, err_diffuse {tuple(err_diffuse.shape)} "
                         f"and valid {tuple(valid.shape)} must have the same shape")
    return valid.bool() & torch.isfinite(err_image) & torch.isfinite(err_diffuse)


class ErrorStats:
    """Running mean (2,) and covariance (2, 2) of the per-pixel pair ``(e_I, e_L)``, float64, no gradients.

    The first update with valid pixels sets the batch's statistics; each later one blends them in
    with ``new = momentum * old + (1 - momentum) * batch``. Updates without valid pixels change
    nothing. ``state_dict`` holds three plain CPU tensors (safetensors-compatible), so a resumed
    run keeps its statistics.
    """

    def __init__(self, momentum: float = 0.99) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"ErrorStats: momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.mean = torch.zeros(2, dtype=torch.float64)
        self.cov = torch.zeros(2, 2, dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.int64)

    @property
    def initialised(self) -> bool:
        """True once an update has seen valid pixels."""
        return int(self.count) > 0

    @torch.no_grad()
    def update(self, err_image: torch.Tensor, err_diffuse: torch.Tensor, valid: torch.Tensor) -> None:
        """Blend in the statistics of this batch's valid, finite pixels."""
        keep = _finite_pairs(err_image, err_diffuse, valid)
        if not bool(keep.any()):
            return
        pairs = torch.stack([err_image[keep], err_diffuse[keep]], dim=1).detach().to(torch.float64).cpu()
        batch_mean = pairs.mean(dim=0)
        centred = pairs - batch_mean
        batch_cov = centred.T @ centred / pairs.shape[0]
        if not self.initialised:
            self.mean, self.cov = batch_mean, batch_cov
        else:
            m = self.momentum
            self.mean = m * self.mean + (1.0 - m) * batch_mean
            self.cov = m * self.cov + (1.0 - m) * batch_cov
        self.count = self.count + 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"mean", "cov", "count"}`` as independent contiguous CPU tensors."""
        return {"mean": self.mean.clone(), "cov": self.cov.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`'s output; a missing key or a wrong shape is a one-line ValueError."""
        expected = {"mean": (2,), "cov": (2, 2), "count": ()}
        for key, shape in expected.items():
            if key not in state:
                raise ValueError(f"ErrorStats.load_state_dict: missing key {key!r}")
            if tuple(state[key].shape) != shape:
                raise ValueError(f"ErrorStats.load_state_dict: {key!r} must have shape {shape}, "
                                 f"got {tuple(state[key].shape)}")
        self.mean = state["mean"].detach().to("cpu", torch.float64).clone()
        self.cov = state["cov"].detach().to("cpu", torch.float64).clone()
        self.count = state["count"].detach().to("cpu", torch.int64).clone()


def _regularised_cov(stats: ErrorStats, device: torch.device) -> torch.Tensor:
    """The covariance plus ``MIN_VARIANCE / 2`` on its diagonal: the difference direction gets ``MIN_VARIANCE``.

    One regularised matrix for both distances below, so the bound between them holds exactly.
    """
    eye = torch.eye(2, dtype=torch.float64, device=device)
    return stats.cov.to(device) + 0.5 * MIN_VARIANCE * eye


def _deviation(err_image: torch.Tensor, err_diffuse: torch.Tensor, stats: ErrorStats) -> torch.Tensor:
    """(..., 2) float64 pair minus the running mean."""
    mean = stats.mean.to(err_image.device)
    return torch.stack([err_image.double() - mean[0], err_diffuse.double() - mean[1]], dim=-1)


def mahalanobis_distance(err_image: torch.Tensor, err_diffuse: torch.Tensor, stats: ErrorStats) -> torch.Tensor:
    """Per-pixel Mahalanobis distance of ``(e_I, e_L)`` from the running statistics (float32, same shape).

    For diagnostics and tests; the regularised covariance still inverts when the two errors are
    perfectly correlated (an untrained decomposer: L = I).
    """
    x = _deviation(err_image, err_diffuse, stats)
    d2 = (x @ torch.linalg.inv(_regularised_cov(stats, x.device)) * x).sum(dim=-1)
    return d2.clamp_min(0.0).sqrt().float()


def difference_zscore(err_image: torch.Tensor, err_diffuse: torch.Tensor, stats: ErrorStats) -> torch.Tensor:
    """``(d - mean_d) / std_d`` with ``d = e_I - e_L``: the Mahalanobis distance along the direction (1, -1)."""
    x = _deviation(err_image, err_diffuse, stats)
    direction = torch.tensor([1.0, -1.0], dtype=torch.float64, device=x.device)
    variance = direction @ _regularised_cov(stats, x.device) @ direction
    return ((x @ direction) / variance.sqrt()).float()


@torch.no_grad()
def reflective_mask(err_image: torch.Tensor, err_diffuse: torch.Tensor, valid: torch.Tensor, stats: ErrorStats,
                    threshold: float = 3.0) -> torch.Tensor:
    """(B, 1, H, W) bool, True = reflective: leave the pixel out of the photometric loss.

    Never True where ``valid`` is False or either error is NaN/inf, and all False until ``stats``
    has seen data (before its first update there is no notion of "unusual").
    """
    keep = _finite_pairs(err_image, err_diffuse, valid)
    if not stats.initialised:
        return torch.zeros_like(keep)
    e_i = torch.where(keep, err_image, torch.zeros_like(err_image))
    e_l = torch.where(keep, err_diffuse, torch.zeros_like(err_diffuse))
    return keep & (difference_zscore(e_i, e_l, stats) > threshold)
