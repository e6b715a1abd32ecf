"""The intrinsic decomposer and its losses (reconstruction, cross-view, contrast): ``selfsup.intrinsic``."""

from __future__ import annotations

import pytest
import torch

from fsmde_core.selfsup.intrinsic import (
    LOG_DIFFUSE_MAX,
    LOG_DIFFUSE_MIN,
    LOG_RESIDUAL_BOUND,
    Decomposition,
    IntrinsicDecomposer,
    contrast_weight,
    decomposition_losses,
    log_image,
)

H, W = 32, 48


def _images(b: int = 2, seed: int = 0) -> torch.Tensor:
    """(b, 3, H, W) blocky texture in [0.1, 0.9]."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.rand(b, 3, H // 8, W // 8, generator=g) * 0.8 + 0.1
    return blocks.repeat_interleave(8, 2).repeat_interleave(8, 3)


def _randomised(model: IntrinsicDecomposer, seed: int = 0) -> IntrinsicDecomposer:
    """The zero-initialised head replaced by a random one (an untrained decomposer is exactly "all diffuse")."""
    torch.manual_seed(seed)
    torch.nn.init.normal_(model.head.weight, std=1.0)
    torch.nn.init.normal_(model.head.bias, std=3.0)
    return model


def test_decomposer_shapes_bounds_and_gradients() -> None:
    model = _randomised(IntrinsicDecomposer(width=16))
    assert sum(p.numel() for p in model.parameters()) < 300_000
    images = torch.cat([_images(), torch.zeros(1, 3, H, W), torch.ones(1, 3, H, W)])  # black and white frames too
    dec = model(images)
    assert dec.log_diffuse.shape == dec.log_residual.shape == images.shape
    assert torch.isfinite(dec.log_diffuse).all() and torch.isfinite(dec.log_residual).all()
    log_l, log_r = dec.log_diffuse.detach(), dec.log_residual.detach()
    assert float(log_l.min()) >= LOG_DIFFUSE_MIN and float(log_l.max()) <= LOG_DIFFUSE_MAX
    assert float(log_r.abs().max()) <= LOG_RESIDUAL_BOUND
    assert float(log_r.abs().max()) > 0.5  # the random head does use the range
    diffuse = dec.diffuse_image().detach()
    assert float(diffuse.min()) >= 0.0 and float(diffuse.max()) <= 1.0
    (dec.log_diffuse.sum() + dec.log_residual.sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0.0, name


def test_odd_image_sizes_work_and_bad_input_is_one_clear_error() -> None:
    model = IntrinsicDecomposer(width=8)
    dec = model(torch.rand(1, 3, 37, 51))
    assert dec.log_diffuse.shape == (1, 3, 37, 51)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 4, 16, 16))


def test_an_untrained_decomposer_says_all_diffuse() -> None:
    """Zero head + the input logit: L = I and R = 1, so plugging it in changes nothing until it learns."""
    images = _images()
    with torch.no_grad():
        dec = IntrinsicDecomposer()(images)
    torch.testing.assert_close(dec.log_diffuse, log_image(images), atol=1e-4, rtol=0)
    assert float(dec.log_residual.abs().max()) == 0.0
    torch.testing.assert_close(dec.diffuse_image(), images, atol=1e-4, rtol=0)


def _no_sources(b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(b, 1, 3, H, W), torch.zeros(b, 1, 1, H, W, dtype=torch.bool)


def test_reconstruction_is_zero_exactly_when_the_residual_completes_the_image() -> None:
    images = _images()
    with torch.no_grad():
        dec = _randomised(IntrinsicDecomposer())(images)
    completed = Decomposition(log_diffuse=dec.log_diffuse, log_residual=log_image(images) - dec.log_diffuse)
    losses = decomposition_losses(images, completed, *_no_sources())
    assert float(losses["recon"]) < 1e-6
    off = Decomposition(log_diffuse=dec.log_diffuse, log_residual=completed.log_residual + 0.1)
    assert float(decomposition_losses(images, off, *_no_sources())["recon"]) == pytest.approx(0.1, abs=1e-5)
    assert float(decomposition_losses(images, dec, *_no_sources())["recon"]) > 0.05  # the random head is wrong


def test_cross_loss_zero_when_the_warped_diffuse_matches_and_positive_otherwise() -> None:
    images = _images()
    with torch.no_grad():
        dec = _randomised(IntrinsicDecomposer())(images)
    same = dec.log_diffuse.detach().unsqueeze(1)  # (B, 1, 3, H, W)
    valid = torch.ones(2, 1, 1, H, W, dtype=torch.bool)
    assert float(decomposition_losses(images, dec, same, valid)["cross"]) < 1e-7
    shifted = same + 0.3
    assert float(decomposition_losses(images, dec, shifted, valid)["cross"]) == pytest.approx(0.3, abs=1e-5)


def test_cross_loss_ignores_invalid_and_non_finite_pixels() -> None:
    images = _images()
    model = _randomised(IntrinsicDecomposer())
    dec = model(images)
    warped = dec.log_diffuse.detach().unsqueeze(1).clone()
    valid = torch.ones(2, 1, 1, H, W, dtype=torch.bool)
    valid[..., :, : W // 2] = False
    warped[..., : W // 2] = float("nan")  # garbage where the warp does not land
    warped[0, 0, 1, 3, -1] = float("inf")  # and one non-finite sample inside: treated as not reached
    losses = decomposition_losses(images, dec, warped, valid)
    assert float(losses["cross"].detach()) < 1e-7
    losses["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())  # the NaNs do not leak into gradients
    # a pixel the warp does not reach gets no cross gradient: zeroing its source changes nothing
    warped2 = warped.clone()
    warped2[..., : W // 2] = 5.0
    assert float(decomposition_losses(images, dec, warped2, valid)["cross"].detach()) < 1e-7
    # no pixel reached: a zero loss that still has a graph
    none = decomposition_losses(images, dec, warped, torch.zeros_like(valid))
    assert float(none["cross"].detach()) == 0.0 and none["cross"].requires_grad


def test_cross_loss_takes_the_best_source_per_pixel() -> None:
    """A pixel occluded in one source (its warp lands on another surface) is still compared with the other."""
    images = _images()
    with torch.no_grad():
        dec = _randomised(IntrinsicDecomposer())(images)
    good = dec.log_diffuse.detach()
    occluded = good.clone()
    occluded[..., : W // 2] += 1.0
    occluded[..., W // 2 :] += 0.2
    warped = torch.stack([occluded, good + 0.05], dim=1)  # (B, 2, 3, H, W)
    valid = torch.ones(2, 2, 1, H, W, dtype=torch.bool)
    assert float(decomposition_losses(images, dec, warped, valid)["cross"]) == pytest.approx(0.05, abs=1e-5)
    valid[:, 1] = False  # only the occluded source left
    assert float(decomposition_losses(images, dec, warped, valid)["cross"]) == pytest.approx(0.6, abs=1e-5)


def test_shape_mismatch_is_one_clear_error() -> None:
    images = _images()
    dec = IntrinsicDecomposer()(images)
    with pytest.raises(ValueError, match="warp_valid"):
        decomposition_losses(images, dec, torch.zeros(2, 2, 3, H, W), torch.zeros(2, 1, 1, H, W, dtype=torch.bool))
    with pytest.raises(ValueError, match="warped_source_log_diffuse"):
        decomposition_losses(images, dec, torch.zeros(2, 3, H, W), torch.zeros(2, 1, 1, H, W, dtype=torch.bool))


def _two_views() -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 3, 32, 32) target and source of a static scene: the right half carries a highlight that moves.

    Left half: identical in both views (Lambertian). Right half: 2x brighter in the target than in
    the source (a reflection seen from one view only). The warp is the identity (same pixels).
    """
    g = torch.Generator().manual_seed(3)
    base = (torch.rand(1, 3, 8, 8, generator=g) * 0.3 + 0.1).repeat_interleave(4, 2).repeat_interleave(4, 3)
    target = base.clone()
    target[..., 16:] *= 2.0
    return target, base


def _optimise_split(w_contrast: float, start: str, *, tied: bool, steps: int = 40) -> tuple[float, float]:
    """Adam on free log L (and log R) of both views under the decomposition losses.

    Returns the mean ``|log R|`` over the static half and over the changing half. ``tied``: log R
    is ``log I - log L`` (the reconstruction held exactly, as a trained decomposer holds it), so
    the optimisation runs along the valley the degenerate splits lie in; untied, L and R are
    free and the reconstruction loss ties them.
    """
    target, source = _two_views()
    images = torch.cat([target, source])  # view 0 warps from view 1 and back (identity warp)
    log_i = log_image(images)
    # "all_residual": L flat grey, the degenerate split; "all_diffuse": the untrained decomposer's split
    init = torch.full_like(log_i, float(log_i.mean())) if start == "all_residual" else log_i.clone()
    log_l = init.requires_grad_(True)
    log_r = (log_i - init).detach().requires_grad_(True)
    opt = torch.optim.Adam([log_l] if tied else [log_l, log_r], lr=0.05)
    valid = torch.ones(2, 1, 1, 32, 32, dtype=torch.bool)
    for _ in range(steps):
        opt.zero_grad()
        residual = log_i - log_l if tied else log_r
        dec = Decomposition(log_diffuse=log_l, log_residual=residual)
        warped = log_l.flip(0).unsqueeze(1)  # the other view's diffuse part, identity warp
        decomposition_losses(images, dec, warped, valid, w_contrast=w_contrast)["total"].backward()
        opt.step()
    residual = (log_i - log_l if tied else log_r).detach()
    energy = residual.abs().mean(dim=(0, 1, 2))  # (32,) per column
    return float(energy[:16].mean()), float(energy[16:].mean())


def test_the_contrast_term_prevents_the_degenerate_split() -> None:
    """From "all in R" the contrast term drives the static half's residual out; the moving highlight stays in R."""
    static, changing = _optimise_split(w_contrast=0.01, start="all_residual", tied=True)
    assert static < 0.05, static
    # |log R_t| + |log R_s| >= log 2 on the changing half: >= 0.35 per view on average
    assert changing > 0.3, changing
    assert changing > 5.0 * static
    # without the term nothing leaves the degenerate split: the static half keeps its residual energy
    static0, changing0 = _optimise_split(w_contrast=0.0, start="all_residual", tied=True)
    assert static0 > 0.3, static0
    assert changing0 < 2.0 * static0


def test_the_cross_loss_moves_the_view_dependent_part_out_of_the_diffuse() -> None:
    """From "all in L" with L and R free, the changing half's difference moves into R and the rest stays in L."""
    static, changing = _optimise_split(w_contrast=0.01, start="all_diffuse", tied=False)
    assert static < 0.02, static
    assert changing > 0.25, changing


def test_the_contrast_weight_relaxes_the_prior_where_the_image_is_inconsistent() -> None:
    err = torch.full((1, 1, 4, 4), 0.05)
    err[..., 0, 0] = 2.0  # a reflection: the image's error is far above the typical one
    err[..., 0, 1] = float("nan")  # no source: keeps the prior
    w = contrast_weight(err)
    assert float(w[..., 1, 1]) > 0.85 and float(w[..., 0, 0]) < 0.01 and float(w[..., 0, 1]) == 1.0
    images = _images(1)
    dec = Decomposition(log_diffuse=log_image(images), log_residual=torch.full((1, 3, H, W), 0.5))
    big = torch.full((1, 1, H, W), 0.05)
    big[..., : H // 2, :] = 3.0
    plain = decomposition_losses(images, dec, *_no_sources(1))["contrast"]
    gated = decomposition_losses(images, dec, *_no_sources(1), image_error=big)["contrast"]
    assert float(plain) == pytest.approx(0.5)
    assert float(gated) < 0.6 * float(plain)
