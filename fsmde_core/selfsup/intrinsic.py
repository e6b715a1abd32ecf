"""Intrinsic image decomposition for self-supervision on reflective surfaces (after arXiv 2503.22209).

Why: the photometric loss assumes a Lambertian world, where a surface point looks the same from
every view. Car paint, windows, glass facades and wet roads break that: their reflection moves
with the viewpoint, so a correct depth still gives a large photometric error there and the loss
pushes depth the wrong way. Splitting each image into a view-independent diffuse part L and a
view-dependent residual R,

    log I = log L + log R,

gives a second image (the diffuse one) that *is* consistent across views; comparing the
photometric error of the image with that of its diffuse part tells where the reflection is
(:mod:`fsmde_core.selfsup.reflective`).

The network (:class:`IntrinsicDecomposer`) is a small 3-level U-Net whose outputs live in log
space and are bounded: ``log L`` in the log-image range ``[log EPS, log(1 + EPS)]`` (a sigmoid)
and ``log R`` in ``[-2, 2]`` (``2 tanh``: a reflection brightens or darkens by at most e^2).
Its last layer starts at zero and the diffuse head is added to the logit of the input, so an
untrained decomposer says "all diffuse" (L = I, R = 1): depth training is unaffected until the
cross-view loss has moved the view-dependent part into R.

Losses (:func:`decomposition_losses`, weights 1, 1, 0.01 as in the paper):

* ``recon``: L1 between ``log I`` and ``log L + log R``.
* ``cross``: the source views' diffuse parts, warped into the target through the predicted
  depth and the known poses, should equal the target's diffuse part: L1 on ``log L`` over the
  pixels the warp reaches, the per-pixel minimum over the sources (as monodepth2's minimum
  reprojection: a pixel occluded in one source is still compared with the others).
* ``contrast``: L1 on ``log R`` (residual energy pulled towards zero), optionally gated off
  where the image itself is inconsistent across views. Chosen over an InfoNCE on pixel
  features because it stops both degenerate splits with nothing to tune: "all in R" (L flat)
  satisfies recon and cross but pays ``w_contrast * |log I|`` everywhere, while "all in L"
  pays the cross loss wherever the view changes the appearance. With ``w_contrast`` (0.01)
  far below ``w_cross`` (1) the cheapest explanation is exact: view-independent colour goes
  into L, a view-dependent change into R. (An InfoNCE on colours instead rewards a diffuse
  image with more contrast than the input, which R then has to cancel.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as nnf

#: Floor added to the image before the log: black pixels (and their noise) stay finite (~2.5 grey levels).
EPS = 0.01
#: Bounds of ``log L`` = the range of ``log(I + EPS)`` for I in [0, 1].
LOG_DIFFUSE_MIN = math.log(EPS)
LOG_DIFFUSE_MAX = math.log(1.0 + EPS)
#: Bound of ``|log R|``: a reflection changes the brightness by at most a factor e^2 ~ 7.4.
LOG_RESIDUAL_BOUND = 2.0
#: The input logit is clamped to this probability margin so black/white pixels stay finite.
_LOGIT_MARGIN = 1e-3


def log_image(images: torch.Tensor) -> torch.Tensor:
    """``log(I + EPS)`` of (B, 3, H, W) images in [0, 1] (clamped): the space the decomposition lives in."""
    return torch.log(images.clamp(0.0, 1.0) + EPS)


@dataclass
class Decomposition:
    """``log I ~ log_diffuse + log_residual``, both (B, 3, H, W)."""

    log_diffuse: torch.Tensor
    log_residual: torch.Tensor

    @property
    def log_reconstruction(self) -> torch.Tensor:
        """``log L + log R``: what the decomposition says ``log(I + EPS)`` is."""
        return self.log_diffuse + self.log_residual

    def diffuse_image(self) -> torch.Tensor:
        """(B, 3, H, W) diffuse image in [0, 1]: what the photometric error of the diffuse part is computed on."""
        return (torch.exp(self.log_diffuse) - EPS).clamp(0.0, 1.0)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ELU(inplace=True))


class IntrinsicDecomposer(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> :class:`Decomposition`; a 3-level U-Net (``width``, 2x, 2x channels).

    ~61k parameters at ``width=16`` (cheap next to the student; runs on CPU at 192x320). Any
    image size works: the decoder upsamples to each skip's size.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"IntrinsicDecomposer: width must be >= 1, got {width}")
        w1, w2 = width, 2 * width
        self.enc0 = nn.Sequential(_conv(3, w1), _conv(w1, w1))
        self.enc1 = nn.Sequential(_conv(w1, w2, stride=2), _conv(w2, w2))
        self.enc2 = nn.Sequential(_conv(w2, w2, stride=2), _conv(w2, w2))
        self.dec1 = _conv(w2 + w2, w2)
        self.dec0 = _conv(w2 + w1, w1)
        self.head = nn.Conv2d(w1, 6, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @staticmethod
    def _up_cat(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = nnf.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([up, skip], dim=1)

    @staticmethod
    def _diffuse_prior_logit(images: torch.Tensor) -> torch.Tensor:
        """The logit that makes the bounded ``log L`` equal ``log I``: the head starts from "all diffuse"."""
        p = (log_image(images) - LOG_DIFFUSE_MIN) / (LOG_DIFFUSE_MAX - LOG_DIFFUSE_MIN)
        return torch.logit(p.clamp(_LOGIT_MARGIN, 1.0 - _LOGIT_MARGIN))

    def forward(self, images: torch.Tensor) -> Decomposition:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"IntrinsicDecomposer: expected (B, 3, H, W) images, got {tuple(images.shape)}")
        x0 = self.enc0(images * 2.0 - 1.0)
        x1 = self.enc1(x0)
        x2 = self.enc2(x1)
        d1 = self.dec1(self._up_cat(x2, x1))
        d0 = self.dec0(self._up_cat(d1, x0))
        out = self.head(d0)
        diffuse_logit = self._diffuse_prior_logit(images) + out[:, :3]
        log_diffuse = LOG_DIFFUSE_MIN + (LOG_DIFFUSE_MAX - LOG_DIFFUSE_MIN) * torch.sigmoid(diffuse_logit)
        log_residual = LOG_RESIDUAL_BOUND * torch.tanh(out[:, 3:])
        return Decomposition(log_diffuse=log_diffuse, log_residual=log_residual)


def _check_shapes(images: torch.Tensor, dec: Decomposition, warped: torch.Tensor, valid: torch.Tensor) -> None:
    """One clear line for a caller that mixed up the (B, S, ...) layouts."""
    b, c, h, w = images.shape
    if dec.log_diffuse.shape != images.shape or dec.log_residual.shape != images.shape:
        raise ValueError(f"decomposition_losses: decomposition shapes {tuple(dec.log_diffuse.shape)} / "
                         f"{tuple(dec.log_residual.shape)} do not match images {tuple(images.shape)}")
    if warped.dim() != 5 or warped.shape[0] != b or tuple(warped.shape[2:]) != (c, h, w):
        raise ValueError(f"decomposition_losses: warped_source_log_diffuse must be (B, S, {c}, {h}, {w}) "
                         f"with B={b}, got {tuple(warped.shape)}")
    if tuple(valid.shape) != (b, warped.shape[1], 1, h, w):
        raise ValueError(f"decomposition_losses: warp_valid must be {(b, warped.shape[1], 1, h, w)}, "
                         f"got {tuple(valid.shape)}")


def cross_view_loss(log_diffuse: torch.Tensor, warped_source_log_diffuse: torch.Tensor,
                    warp_valid: torch.Tensor) -> torch.Tensor:
    """Mean over reached pixels of the per-pixel minimum over sources of ``|log L_tgt - warp(log L_src)|``.

    Non-finite warped values count as not reached; a batch where no pixel is reached gives a
    zero that still belongs to the graph (the trainer's backward never sees a detached loss).
    """
    finite = torch.isfinite(warped_source_log_diffuse).all(dim=2, keepdim=True)
    valid = warp_valid.bool() & finite
    warped = torch.where(valid, warped_source_log_diffuse, torch.zeros_like(warped_source_log_diffuse))
    err = (log_diffuse.unsqueeze(1) - warped).abs().mean(dim=2, keepdim=True)  # (B, S, 1, H, W)
    err = torch.where(valid, err, torch.full_like(err, math.inf))
    best = err.min(dim=1).values  # (B, 1, H, W)
    reached = valid.any(dim=1)
    if not bool(reached.any()):
        return log_diffuse.sum() * 0.0
    return best[reached].mean()


def contrast_weight(image_error: torch.Tensor, scale_factor: float = 3.0) -> torch.Tensor:
    """(B, 1, H, W) weight in (0, 1] of the residual prior: ~1 where the image is consistent across views.

    ``1 / (1 + (e / s)^2)`` with ``s = scale_factor * median`` of the finite errors: scale-free,
    0.9 at the median, 0.1 at three times ``s``. Non-finite errors (no source) keep weight 1.
    """
    e = image_error.detach()
    finite = torch.isfinite(e)
    if not bool(finite.any()):
        return torch.ones_like(e)
    scale = (scale_factor * e[finite].median()).clamp_min(1e-6)
    weight = 1.0 / (1.0 + (e / scale) ** 2)
    return torch.where(finite, weight, torch.ones_like(weight))


def decomposition_losses(images: torch.Tensor, dec: Decomposition, warped_source_log_diffuse: torch.Tensor,
                         warp_valid: torch.Tensor, *, w_recon: float = 1.0, w_cross: float = 1.0,
                         w_contrast: float = 0.01, image_error: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The decomposer's losses: ``{"recon", "cross", "contrast", "total"}`` (scalars; see the module docstring).

    ``images``: (B, 3, H, W) targets in [0, 1]; ``warped_source_log_diffuse``: (B, S, 3, H, W) the
    sources' ``log_diffuse`` warped into each target (``PhotometricResult.warp``); ``warp_valid``:
    (B, S, 1, H, W) where that warp lands. ``image_error`` (optional, (B, 1, H, W)): the image's
    per-pixel photometric error; where it is high (the view changes the appearance) the residual
    prior is relaxed (:func:`contrast_weight`), so a reflection is not pulled back into L.
    """
    _check_shapes(images, dec, warped_source_log_diffuse, warp_valid)
    recon = (log_image(images) - dec.log_reconstruction).abs().mean()
    cross = cross_view_loss(dec.log_diffuse, warped_source_log_diffuse, warp_valid)
    residual_energy = dec.log_residual.abs().mean(dim=1, keepdim=True)
    if image_error is not None:
        residual_energy = residual_energy * contrast_weight(image_error)
    contrast = residual_energy.mean()
    total = w_recon * recon + w_cross * cross + w_contrast * contrast
    return {"recon": recon, "cross": cross, "contrast": contrast, "total": total}
