"""View-relational KD (VRKD): the teacher's cross-camera feature relations, inside the overlap bands.

Why relations and not features: teacher and student features differ in
width and resolution; cell-to-cell cosine similarities between two adjacent
cameras do not, and they carry what cross-view consistency needs — the same
content described alike in both views. Teacher features are detached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 (the universal torch idiom)


def relation_matrix(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Pool (B,C,h,w) features to a (gh, gw) grid -> (B, gh*gw, C), L2-normalised per cell.

    Row-major cell order. Pooling first makes the relation independent of the
    feature resolution (teacher stride 14, student stride 16, ...).
    """
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, h, w), got {tuple(features.shape)}")
    pooled = F.adaptive_avg_pool2d(features, tuple(grid))
    return F.normalize(pooled.flatten(2).transpose(1, 2), dim=-1, eps=1e-8)


def _as_pairs(
    pairs: torch.Tensor | Sequence[tuple[int, int]], batch: int, device: torch.device
) -> torch.Tensor:
    """Validate adjacency pairs of flattened batch indices -> LongTensor (P, 2)."""
    p = torch.as_tensor(pairs, dtype=torch.long, device=device)
    if p.numel() == 0:
        return p.reshape(0, 2)
    if p.dim() != 2 or p.shape[1] != 2:
        raise ValueError(f"pairs must be (P, 2), got shape {tuple(p.shape)}")
    if int(p.min()) < 0 or int(p.max()) >= batch:
        raise ValueError(f"pair indices must be in [0, {batch}), got range [{int(p.min())}, {int(p.max())}]")
    return p


def _band_columns(band: torch.Tensor, width: int) -> tuple[int, int]:
    """Normalised (u0, u1) -> feature columns [c0, c1), at least one column wide."""
    c0 = min(int(float(band[0]) * width), width - 1)
    c1 = max(c0 + 1, min(width, math.ceil(float(band[1]) * width)))
    return c0, c1


def _band_relations(
    feats: torch.Tensor, pairs: torch.Tensor, bands: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """(P, G, G) cross-view relations of each pair, each view pooled inside its own band."""
    width = feats.shape[-1]
    rel = []
    for (i, j), (band_i, band_j) in zip(pairs.tolist(), bands, strict=True):
        a0, a1 = _band_columns(band_i, width)
        b0, b1 = _band_columns(band_j, width)
        fi = relation_matrix(feats[i:i + 1, :, :, a0:a1], grid)[0]
        fj = relation_matrix(feats[j:j + 1, :, :, b0:b1], grid)[0]
        rel.append(fi @ fj.T)
    return torch.stack(rel)


def vrkd_loss(
    student_feats: torch.Tensor,
    teacher_feats: torch.Tensor,
    pairs: torch.Tensor | Sequence[tuple[int, int]],
    grid: tuple[int, int] = (4, 8),
    tau: float = 1.0,
    bands: torch.Tensor | None = None,
) -> torch.Tensor:
    """View-relational KD over adjacent camera pairs.

    For each pair (i, j) of flattened batch indices (the trainer flattens
    S surround samples x N cameras to B = S*N), the cross-view relation
    R_ij = F_i F_j^T (G x G, G = gh*gw cells, cosine similarities) is built for
    teacher and student separately — only cell-to-cell similarities are compared,
    so channel counts may differ (dimension-agnostic). Rows are matched with
    KL(softmax(R^T/tau) || softmax(R^S/tau)), averaged over rows and pairs.
    No tau^2 factor (the weight absorbs it). Teacher features are detached.
    Empty ``pairs`` -> 0.

    ``bands`` restricts each view to the columns it shares with the other view
    (:func:`fsmde_core.geometry.overlap_band`), pooled to ``grid`` there. Why:
    over whole images most cells of view i have no counterpart in view j, so
    the relation rows mostly say "road looks like road"; inside the shared
    band every cell has a counterpart, and matching the teacher's relations
    there asks the student to describe the same content alike in both
    cameras — what cross-view depth consistency needs from a network that
    sees one camera at a time (measured: bench/results/vrkd_overlap.md).

    Args:
        student_feats: (B, Cs, hs, ws).
        teacher_feats: (B, Ct, ht, wt).
        pairs: (P, 2) LongTensor or list of (i, j).
        grid: pooling grid (gh, gw) of each view (of its band when ``bands`` is given).
        tau: softmax temperature over cosine similarities.
        bands: optional (P, 2, 2) normalised column bands: ``bands[p, 0]`` = (u0, u1) of
            view ``pairs[p, 0]``, ``bands[p, 1]`` of view ``pairs[p, 1]``.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    b = student_feats.shape[0]
    if teacher_feats.shape[0] != b:
        raise ValueError(f"student ({b}) and teacher ({teacher_feats.shape[0]}) batch sizes differ")
    p = _as_pairs(pairs, b, student_feats.device)
    if p.shape[0] == 0:
        return student_feats.sum() * 0.0
    teacher_feats = teacher_feats.detach().to(student_feats.dtype)
    if bands is not None:
        bands = torch.as_tensor(bands, dtype=torch.float64).cpu()
        if tuple(bands.shape) != (p.shape[0], 2, 2):
            raise ValueError(f"bands must be (P, 2, 2) with P={p.shape[0]}, got {tuple(bands.shape)}")
        if not bool(((bands >= 0) & (bands <= 1)).all()) or not bool((bands[..., 1] > bands[..., 0]).all()):
            raise ValueError("bands must be normalised column ranges 0 <= u0 < u1 <= 1")
        r_s = _band_relations(student_feats, p, bands, grid)
        r_t = _band_relations(teacher_feats, p, bands, grid)
    else:
        fs = relation_matrix(student_feats, grid)
        ft = relation_matrix(teacher_feats, grid)
        r_s = torch.bmm(fs.index_select(0, p[:, 0]), fs.index_select(0, p[:, 1]).transpose(1, 2))
        r_t = torch.bmm(ft.index_select(0, p[:, 0]), ft.index_select(0, p[:, 1]).transpose(1, 2))
    log_q = F.log_softmax(r_s / tau, dim=-1)
    log_p = F.log_softmax(r_t / tau, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()
