"""Property tests of view-relational KD (fsmde_core.distill.vrkd)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from fsmde_core.distill.vrkd import relation_matrix, vrkd_loss


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- VRKD


def test_relation_matrix_shape_and_norm() -> None:
    f = torch.randn(3, 7, 13, 17, generator=_gen(9))
    r = relation_matrix(f, (2, 4))
    assert r.shape == (3, 8, 7)
    torch.testing.assert_close(r.norm(dim=-1), torch.ones(3, 8))


def test_vrkd_zero_for_orthogonal_embedding_of_channels_and_positive_otherwise() -> None:
    g = _gen(10)
    student = torch.randn(6, 8, 12, 20, generator=g, requires_grad=True)
    q, _ = torch.linalg.qr(torch.randn(24, 8, generator=g))  # 24x8, orthonormal columns
    teacher = torch.einsum("tc,bchw->bthw", q, student.detach())  # other width, same geometry
    teacher = F.interpolate(teacher, size=(24, 40), mode="nearest")  # and another resolution
    pairs = [(i, (i + 1) % 6) for i in range(6)]
    assert vrkd_loss(student, teacher, pairs, grid=(3, 5), tau=0.2).item() < 1e-6
    perm = teacher[:, torch.randperm(24, generator=g)]  # channel permutation: also invariant
    assert vrkd_loss(student, perm, torch.tensor(pairs), grid=(3, 5), tau=0.2).item() < 1e-6
    other = torch.randn(6, 24, 24, 40, generator=g)
    loss = vrkd_loss(student, other, pairs, grid=(3, 5), tau=0.2)
    assert loss.item() > 1e-3
    loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_vrkd_pairs_validation_and_empty() -> None:
    s = torch.randn(4, 3, 8, 8, requires_grad=True)
    t = torch.randn(4, 5, 8, 8)
    assert vrkd_loss(s, t, [], grid=(2, 2)).item() == 0.0
    with pytest.raises(ValueError, match="pair indices"):
        vrkd_loss(s, t, [(0, 4)], grid=(2, 2))
    with pytest.raises(ValueError, match="batch sizes"):
        vrkd_loss(s, t[:3], [(0, 1)], grid=(2, 2))


def test_vrkd_bands_whole_image_equals_unbanded_and_ignores_columns_outside() -> None:
    g = _gen(12)
    s = torch.randn(4, 6, 8, 20, generator=g)
    t = torch.randn(4, 9, 8, 20, generator=g)
    pairs = [(0, 1), (1, 2), (2, 3), (3, 0)]
    whole = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]] * 4, dtype=torch.float64)
    torch.testing.assert_close(vrkd_loss(s, t, pairs, (2, 4), 0.2, whole), vrkd_loss(s, t, pairs, (2, 4), 0.2))
    # view i keeps its left 30 %, view j its right 30 % (columns [0, 6) and [14, 20) of 20)
    bands = torch.tensor([[[0.0, 0.3], [0.7, 1.0]]] * 4, dtype=torch.float64)
    base = vrkd_loss(s, t, pairs, (2, 2), 0.2, bands)
    outside = s.clone()
    outside[..., 6:14] = torch.randn(4, 6, 8, 8, generator=g)  # no view's band covers these columns
    assert vrkd_loss(outside, t, pairs, (2, 2), 0.2, bands).item() == pytest.approx(base.item(), abs=1e-6)
    inside = s.clone()
    inside[..., :6] = torch.randn(4, 6, 8, 6, generator=g)
    assert abs(vrkd_loss(inside, t, pairs, (2, 2), 0.2, bands).item() - base.item()) > 1e-4
    # the band's own features: identical student and teacher relations -> 0
    assert vrkd_loss(t, t, pairs, (2, 2), 0.2, bands).item() < 1e-6


def test_vrkd_bands_validation() -> None:
    s, t = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
    with pytest.raises(ValueError, match="bands must be"):
        vrkd_loss(s, t, [(0, 1)], (2, 2), 0.2, torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="0 <= u0 < u1 <= 1"):
        vrkd_loss(s, t, [(0, 1)], (2, 2), 0.2, torch.tensor([[[0.5, 0.2], [0.0, 1.0]]]))
