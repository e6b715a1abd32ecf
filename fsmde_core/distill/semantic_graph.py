"""Semantic-structural KD: match a semantic teacher's region affinity graph within each image.

Why (issue 11, after Chen et al. 2410.06982's semantic-structural correlation):
a depth student that relies on local texture fails when fog or night removes
it; which regions *belong together* (this patch is road like that one, that
one is a car) survives, and a segmentation model knows it. The teacher's
knowledge is passed as a graph, not as features, because the two networks'
features share neither width nor meaning:

* nodes: the image's regions, features average-pooled to a (gh, gw) grid;
* edges: cosine similarity of node features (G x G, G = gh * gw);
* the student's features go through a learned 1x1 projection first (the
  "isomorphic graph" adapter, :class:`SemanticGraphKD`): the student is asked
  for features *whose graph* is the teacher's, not for the teacher's features,
  and the adapter lets the depth features keep their own basis;
* loss: each node's row of similarities, as a softmax at temperature tau,
  matched to the teacher's by KL (as VRKD does across cameras,
  :mod:`fsmde_core.distill.vrkd`; here within each image), averaged over rows
  and images. Zero for identical graphs.

The adapter is owned by the loss, trained with the student and saved in the
training checkpoint (not in the deliverable student: inference never runs it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (the universal torch idiom)
from torch import nn


def region_nodes(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) features -> (B, C, gh, gw) region nodes (adaptive average pooling)."""
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, h, w), got {tuple(features.shape)}")
    return F.adaptive_avg_pool2d(features, tuple(grid))


def affinity_graph(nodes: torch.Tensor) -> torch.Tensor:
    """(B, C, gh, gw) nodes -> (B, G, G) cosine similarities, row-major node order."""
    flat = F.normalize(nodes.flatten(2).transpose(1, 2), dim=-1, eps=1e-8)
    return flat @ flat.transpose(1, 2)


def graph_kl(student_graph: torch.Tensor, teacher_graph: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over images and rows of KL(softmax(teacher row / tau) || softmax(student row / tau)).

    No tau^2 factor (the weight absorbs it); the teacher's graph is detached.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if student_graph.shape != teacher_graph.shape:
        raise ValueError(f"student graph {tuple(student_graph.shape)} and teacher graph "
                         f"{tuple(teacher_graph.shape)} differ in shape")
    log_q = F.log_softmax(student_graph / tau, dim=-1)
    log_p = F.log_softmax(teacher_graph.detach().to(student_graph.dtype) / tau, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


class SemanticGraphKD(nn.Module):
    """The semantic-structural KD term with its trained adapter (a 1x1 projection of the student's features).

    Args:
        in_channels: the student's feature width (``SurroundDepthStudent.feature_channels``).
        dim: the projection's output width.
        grid: (gh, gw) regions per image.
        tau: softmax temperature over cosine similarities (0.2 as VRKD: they live in [-1, 1]).
    """

    def __init__(self, in_channels: int, dim: int, grid: tuple[int, int], tau: float) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.grid = (int(grid[0]), int(grid[1]))
        self.tau = float(tau)
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=1)

    def student_nodes(self, features: torch.Tensor) -> torch.Tensor:
        """Pool, then project: the two are linear and commute, so pooling first costs G pixels, not h*w."""
        return self.proj(region_nodes(features, self.grid))

    def forward(self, student_features: torch.Tensor, teacher_nodes: torch.Tensor) -> torch.Tensor:
        """Loss of (B, C, h, w) student features against (B, Ct, gh, gw) teacher nodes (any Ct)."""
        if student_features.shape[0] != teacher_nodes.shape[0]:
            raise ValueError(f"student ({student_features.shape[0]}) and semantic teacher "
                             f"({teacher_nodes.shape[0]}) batch sizes differ")
        if tuple(teacher_nodes.shape[-2:]) != self.grid:
            teacher_nodes = region_nodes(teacher_nodes, self.grid)
        return graph_kl(affinity_graph(self.student_nodes(student_features)), affinity_graph(teacher_nodes),
                        self.tau)
