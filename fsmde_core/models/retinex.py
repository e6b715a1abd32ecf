"""A fixed, parameter-free Retinex layer: the student sees reflectance, not illumination.

Why (issue 11, after Chen et al. 2410.06982's local-texture disambiguation): an
image is reflectance x illumination. Night, dusk and a low sun change the
illumination (a global gain, a smooth gradient from a headlight or a street
light) but not the scene's structure, so a student that reads reflectance
cannot be thrown by them. Multi-scale Retinex estimates the illumination as a
large-scale blur of the log luminance and subtracts it:

    R_c = log(I_c + eps) - mean_s G_s * log(Y + eps),   Y = mean_c I_c

Subtracting the same illumination from each channel keeps the colour ratios.
R is mapped back to three ``[0, 1]`` channels (``sigmoid(R)``: 0.5 = as bright
as the local illumination) so the encoder keeps its RGB interface and ImageNet
weights still load. No parameters and non-persistent buffers: the student's
state dict is unchanged, and export traces a few convolutions and a pad.

The blur is cheap: the log luminance is average-pooled by ``POOL`` first, the
separable Gaussians run at that size (replicate padding, so any sigma works on
any image size) and the illumination is upsampled bilinearly.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as nnf

#: Illumination scales as fractions of the image height (multi-scale Retinex's small/medium/large
#: surrounds: 15/80/250 px of a ~600 px image ~ 0.03/0.13/0.4 of it).
SIGMA_FRACTIONS: tuple[float, ...] = (0.03, 0.13, 0.4)
#: Floor added before the log: a dark pixel's noise is not amplified without bound (~2.5 grey levels of 255).
EPS = 0.01
#: Pooling factor before the blur (the illumination is smooth, so nothing is lost at 1/4 size).
POOL = 4


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian over +-3 sigma (at least 3 taps)."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / max(sigma, 1e-6)) ** 2)
    return k / k.sum()


class RetinexInput(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> (B, 3, H, W) reflectance RGB in (0, 1), sigmas fixed at build time.

    ``height``: the image height the sigmas are fractions of (the student's input height); the
    layer runs on any size, with the sigmas in pixels of that height.
    """

    def __init__(self, height: int, sigma_fractions: tuple[float, ...] = SIGMA_FRACTIONS, eps: float = EPS) -> None:
        super().__init__()
        self.eps = float(eps)
        self.sigmas = tuple(float(f) * height / POOL for f in sigma_fractions)
        for i, sigma in enumerate(self.sigmas):
            self.register_buffer(f"kernel{i}", gaussian_kernel(sigma), persistent=False)

    def _blur(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian of a (B, 1, h, w) map with replicate padding."""
        r = kernel.numel() // 2
        x = nnf.conv2d(nnf.pad(x, (r, r, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
        return nnf.conv2d(nnf.pad(x, (0, 0, r, r), mode="replicate"), kernel.view(1, 1, -1, 1))

    def illumination(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) log illumination: the mean over scales of the blurred log luminance."""
        log_y = torch.log(images.mean(dim=1, keepdim=True) + self.eps)
        small = nnf.avg_pool2d(log_y, POOL, ceil_mode=True) if POOL > 1 else log_y
        kernels = [getattr(self, f"kernel{i}") for i in range(len(self.sigmas))]
        blurred = torch.stack([self._blur(small, k) for k in kernels]).mean(0)
        return nnf.interpolate(blurred, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def reflectance(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) log reflectance: log image minus the log illumination."""
        return torch.log(images + self.eps) - self.illumination(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.reflectance(images))
