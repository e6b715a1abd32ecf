"""Tiny ResNet-18 students for tests that run the real backends (node and estimator tests).

*Textured*: the bin logits are sharpened, so depth varies strongly across pixels (~7 to
~70 m) and comparing an output with the backend's own prediction checks every pixel's
path, not a constant. *Plane*: every pixel of every image is exactly one bin centre, a
fronto-parallel plane at a known depth whose cloud has a known place.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from fsmde_core.checkpoint import save_student
from fsmde_core.models.student import StudentConfig, SurroundDepthStudent

PLANE_DEPTH_M = 8.5  # bin 1 of 16 equal bins over [1, 81] m


def _config(height: int, width: int, min_depth: float, max_depth: float) -> StudentConfig:
    return StudentConfig(encoder="resnet18", num_bins=16, min_depth=min_depth, max_depth=max_depth,
                         decoder_channels=(32, 16, 16, 8), input_height=height, input_width=width)


def save_textured_student(run: Path, cameras: Sequence[str], height: int, width: int) -> Path:
    cfg = _config(height, width, 0.5, 80.0)
    torch.manual_seed(0)
    model = SurroundDepthStudent(cfg)
    with torch.no_grad():  # peaky bin probabilities: depth varies from ~7 to ~70 m
        model.logit_head.weight.mul_(30.0)
        model.logit_head.bias.normal_(0.0, 2.0)
    save_student(run, model, {"student": cfg.to_dict(), "camera_names": list(cameras), "rig": "ddad"})
    return run


def save_plane_student(run: Path, cameras: Sequence[str], height: int, width: int) -> Path:
    cfg = _config(height, width, 1.0, 81.0)
    torch.manual_seed(0)
    model = SurroundDepthStudent(cfg)
    with torch.no_grad():
        model.bin_head.mlp[-1].weight.zero_()  # equal bin widths: centres 3.5, 8.5, 13.5, ... m
        model.bin_head.mlp[-1].bias.zero_()
        model.logit_head.weight.zero_()  # the same logits at every pixel ...
        model.logit_head.bias.zero_()
        model.logit_head.bias[1] = 60.0  # ... all on bin 1
    save_student(run, model, {"student": cfg.to_dict(), "camera_names": list(cameras), "rig": "ddad"})
    return run
