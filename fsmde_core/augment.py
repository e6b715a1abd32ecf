"""Texture-robust augmentation (``augment:``): the student sees corrupted pixels, the teacher the clean ones.

Why (issue 11, after Chen et al. 2410.06982): a student that copies the
teacher's structure from fog, noise, blur or a dark exposure must find that
structure without the local texture the corruption destroyed. So each camera
image of a training batch is, with probability ``p``, replaced by one of the
RoboDepth / KITTI-C corruptions (:mod:`fsmde_core.corruptions`) at a random
severity, *after* the teacher cache was built from the clean image and
without touching the LiDAR / dense ground truth: the targets stay what the
clean scene says.

Reproducible: every image's draw comes from its own generator seeded by
(training seed, step, sample index, camera), so the same seed gives the same
corruptions (the paired benchmark compares runs image for image) and a resumed
run continues exactly as an uninterrupted one. Cheap: corruptions run on the
uint8 pixels the cache stored (``images * 255`` restores them exactly), on the
CPU, before the batch moves to the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: ``augment.corruptions`` value meaning every corruption of the suite.
ALL = "all"


def _suite() -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(corruption names, severities) of :mod:`fsmde_core.corruptions` (imported on use: scipy, PIL)."""
    from fsmde_core.corruptions import CORRUPTIONS, SEVERITIES

    return tuple(CORRUPTIONS), tuple(SEVERITIES)


@dataclass(frozen=True)
class AugmentConfig:
    """The ``augment:`` section: off by default.

    Attributes:
        enabled: corrupt the student's input images.
        p: probability that one camera image of a step is corrupted (each camera draws on its own).
        corruptions: ``"all"`` or a list of names from :data:`fsmde_core.corruptions.CORRUPTIONS`.
        severities: the severities (1..5) drawn from, uniformly.
    """

    enabled: bool = False
    p: float = 0.5
    corruptions: str | list[str] = ALL
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"augment.enabled must be true or false, got {self.enabled!r}")
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 0.0 <= self.p <= 1.0:
            raise ValueError(f"augment.p must be a probability in [0, 1], got {self.p!r}")
        if not (self.corruptions == ALL or (isinstance(self.corruptions, (list, tuple)) and self.corruptions
                                            and all(isinstance(c, str) for c in self.corruptions))):
            raise ValueError(f"augment.corruptions must be 'all' or a non-empty list of names, "
                             f"got {self.corruptions!r}")
        if not (isinstance(self.severities, (list, tuple)) and self.severities
                and all(isinstance(s, int) and not isinstance(s, bool) for s in self.severities)):
            raise ValueError(f"augment.severities must be a non-empty list of integers, got {self.severities!r}")
        if self.enabled:
            self.names()  # unknown names and severities fail at start, not at the first corrupted step
            self.levels()

    def names(self) -> tuple[str, ...]:
        """The corruptions drawn from, checked against the suite."""
        known, _ = _suite()
        if self.corruptions == ALL:
            return known
        bad = [c for c in self.corruptions if c not in known]
        if bad:
            raise ValueError(f"augment.corruptions: unknown corruption(s) {', '.join(map(repr, bad))}; "
                             f"valid: {ALL}, {', '.join(known)}")
        return tuple(self.corruptions)

    def levels(self) -> tuple[int, ...]:
        """The severities drawn from, checked against the suite's."""
        _, valid = _suite()
        bad = [s for s in self.severities if s not in valid]
        if bad:
            raise ValueError(f"augment.severities: {bad} not among the suite's severities {list(valid)}")
        return tuple(self.severities)


@dataclass(frozen=True)
class Applied:
    """One corrupted image of a batch: its row, the corruption and its severity (logged, and tested)."""

    row: int
    name: str
    severity: int


class RobustAugment:
    """Corrupts the student's copy of a flattened camera batch; see the module docstring."""

    def __init__(self, cfg: AugmentConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, int(seed)
        self.names, self.severities = cfg.names(), cfg.levels()

    def _rng(self, step: int, sample: int, camera: int, stream: int) -> np.random.Generator:
        """Stream 0 draws the plan, stream 1 feeds the corruption's own noise (independent of the choice)."""
        return np.random.default_rng([self.seed, int(step), int(sample), int(camera), stream])

    def plan(self, sample_indices: list[int], num_cameras: int, step: int) -> list[Applied]:
        """Which rows get which corruption at ``step`` (a pure function of seed, step, samples, cameras)."""
        out = []
        for s, sample in enumerate(sample_indices):
            for cam in range(num_cameras):
                rng = self._rng(step, sample, cam, 0)
                if rng.random() < self.cfg.p:
                    name = self.names[int(rng.integers(len(self.names)))]
                    severity = self.severities[int(rng.integers(len(self.severities)))]
                    out.append(Applied(s * num_cameras + cam, name, severity))
        return out

    def __call__(self, images: torch.Tensor, sample_indices: list[int], num_cameras: int,
                 step: int) -> tuple[torch.Tensor, list[Applied]]:
        """(B, 3, H, W) float [0, 1] images (B = samples x cameras) -> a corrupted copy and what was applied.

        The input tensor is not modified (the caller's clean batch stays clean).
        """
        from fsmde_core.corruptions import corrupt

        plan = self.plan(sample_indices, num_cameras, step)
        if not plan:
            return images, plan
        out = images.clone()
        for a in plan:
            pixels = (images[a.row].permute(1, 2, 0) * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
            rng = self._rng(step, sample_indices[a.row // num_cameras], a.row % num_cameras, 1)
            bad = corrupt(np.ascontiguousarray(pixels), a.name, a.severity, rng)
            out[a.row] = torch.from_numpy(np.ascontiguousarray(bad)).permute(2, 0, 1).float().div_(255.0)
        return out, plan


def augment_config_from(section: dict[str, Any] | None) -> AugmentConfig:
    """The typed section (an empty or missing section: the defaults, i.e. off)."""
    return AugmentConfig(**(section or {}))
