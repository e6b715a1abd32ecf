"""Per-pixel confidence in [0, 1] from the student's bin distribution, and its export wrapper.

Why: downstream users (costmaps, fusion) must know which depth pixels to trust,
and the student already holds that knowledge in its per-pixel bin
probabilities; reading it out costs one reduction over K at stride 2.

Two measures, both ONNX-traceable and in ``[0, 1]``:

* ``mass`` (the default): the probability mass of the bins whose centre lies
  within a factor :data:`READOUT_RATIO` (1.25, the δ<1.25 threshold of the
  Eigen metrics) of the depth read out of them: "how likely is the readout
  right to within 25 %". Two neighbouring bins sharing the mass (the truth
  lies between two centres, the normal sub-bin case) score high; mass split
  between a near and a far surface scores low.
* ``entropy``: ``1 - H(p) / log K``, uniform -> 0, one-hot -> 1. It cannot tell
  the two cases above apart: it ignores where the bins lie.

Measured (``bench/bench_confidence.py``, table in ``bench/results/confidence.md``):
students trained 192 CPU steps (seeds 0 and 1) on 16 frames of a synthetic ddad
bag at 160x96, scored on 6 held-out frames of another seed against dense GT
(values: seed 0; seed 1).

* AbsRel of the most / least confident decile: ``mass`` 0.102 / 0.375; 0.105 / 0.401,
  ``entropy`` 0.169 / 0.737; 0.151 / 0.536.
* sparsification area (lower = better): ``mass`` 0.261; 0.227, ``entropy`` 0.266; 0.250.
* Spearman(confidence, abs-rel error) (more negative = better): ``mass`` -0.335; -0.355,
  ``entropy`` -0.389; -0.385.

(all pixels: AbsRel 0.386; 0.334.) The sparsification area is the AbsRel of the
most confident 10 %, 20 %, ..., 100 % of the pixels, averaged: what thresholding
by confidence buys. ``mass`` wins there in both seeds, and its most confident
decile is a third less wrong; ``entropy`` has the higher rank correlation over
all pixels, because its least confident decile collects more of the gross errors.
The node's use is a threshold (``cloud.min_confidence``, a costmap keeping only
confident points), so ``mass`` is the default.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as nnf

from fsmde_core.models.student import StudentOutput, SurroundDepthStudent, bin_expectation

#: Confidence measures, the default first.
CONFIDENCE_KINDS: tuple[str, ...] = ("mass", "entropy")
#: ``mass``: bins within this depth ratio of the readout count as agreeing with it (δ < 1.25).
READOUT_RATIO = 1.25


def normalised_entropy_confidence(logits: torch.Tensor) -> torch.Tensor:
    """``1 - H(softmax(z)) / log K`` per pixel: (B, K, h, w) logits -> (B, 1, h, w) in [0, 1].

    From the logits with ``log_softmax`` (not ``log(softmax)``): a saturated
    softmax has exact zeros whose log is -inf, and 0 * -inf is NaN.
    """
    log_p = torch.log_softmax(logits, dim=1)
    entropy = -(log_p.exp() * log_p).sum(dim=1, keepdim=True)
    return (1.0 - entropy / math.log(logits.shape[1])).clamp(0.0, 1.0)


def readout_mass_confidence(
    probs: torch.Tensor, centres: torch.Tensor, readout: torch.Tensor, ratio: float = READOUT_RATIO
) -> torch.Tensor:
    """Probability mass of the bins within ``ratio`` of the readout: (B, K, h, w), (B, K), (B, 1, h, w) -> (B, 1, h, w).

    Distances in log depth, so "within 25 %" means the same near and far.
    """
    log_gap = (torch.log(centres)[:, :, None, None] - torch.log(readout)).abs()
    near = (log_gap <= math.log(ratio)).to(probs.dtype)
    return (probs * near).sum(dim=1, keepdim=True).clamp(0.0, 1.0)


def student_confidence(
    student: SurroundDepthStudent, out: StudentOutput, kind: str = CONFIDENCE_KINDS[0]
) -> torch.Tensor:
    """(B, 1, H, W) confidence at the depth's size for one forward pass ``out`` of ``student``.

    Resolved at the bins' stride like depth, then bilinearly upsampled (a convex
    combination, so it stays in [0, 1]).
    """
    if kind not in CONFIDENCE_KINDS:
        raise ValueError(f"confidence kind must be one of {CONFIDENCE_KINDS}, got {kind!r}")
    if kind == "entropy":
        low = normalised_entropy_confidence(out.logits)
    else:
        probs = torch.softmax(out.logits, dim=1)
        readout = bin_expectation(probs, out.centres, log_space=student.config.readout == "log")
        low = readout_mass_confidence(probs, out.centres, readout)
    return nnf.interpolate(low, size=out.depth.shape[-2:], mode="bilinear", align_corners=False)


class DepthAndConfidence(nn.Module):
    """Export wrapper: one input, two outputs (depth, confidence), each ``(N, 1, H, W)``.

    The confidence twin of :class:`fsmde_core.models.student.DepthOnly` for
    ``fsmde export --confidence``.
    """

    def __init__(self, student: SurroundDepthStudent, kind: str = CONFIDENCE_KINDS[0]) -> None:
        super().__init__()
        self.student = student
        self.kind = kind

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.student(images)
        return out.depth, student_confidence(self.student, out, self.kind)
