"""The one interface every teacher implements.

A teacher turns a batch of camera images into *relative* (affine-invariant)
inverse depth plus a feature map for view-relational distillation. The student
never sees the teacher's scale: cross-interaction KD only uses the teacher's
scale-invariant structure, metric scale comes from LiDAR ground truth.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass
class TeacherOutput:
    """What a teacher returns for a batch of B images.

    Attributes:
        inv_depth: (B, 1, h, w) float relative inverse depth (larger = closer),
            defined up to an unknown per-image scale and shift. NaN where the
            teacher has no opinion. The resolution may be lower than the input.
        features: (B, C, hf, wf) float feature map used by VRKD (for ViT
            teachers: the last hidden tokens reshaped to the patch grid).
    """

    inv_depth: torch.Tensor
    features: torch.Tensor


class Teacher(ABC):
    """Images -> relative inverse depth + features. Stateless apart from weights.

    ``identity`` names the teacher and its weights for the teacher-output cache:
    two teachers with the same identity must produce the same outputs, and any
    change of weights or settings must change it.
    """

    name: str = "teacher"

    @property
    @abstractmethod
    def identity(self) -> str:
        """A stable string that changes whenever the outputs could change."""

    @abstractmethod
    def predict(self, images: torch.Tensor, extras: dict[str, torch.Tensor] | None = None) -> TeacherOutput:
        """Run the teacher.

        Args:
            images: (B, 3, H, W) float RGB in [0, 1] (not normalised: each teacher
                applies its own normalisation).
            extras: optional per-sample tensors some teachers need (the synthetic
                teacher needs ``"gt_depth"``: (B, 1, H, W) metric dense depth).
        """
