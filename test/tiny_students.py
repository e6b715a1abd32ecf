"""The tiny ResNet-18 student every test uses (``conftest`` fixtures wrap it), and two with set weights.

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
from fsmde_core.names import SURROUND_CAMERAS

PLANE_DEPTH_M = 8.5  # bin 1 of 16 equal bins over [1, 81] m


#: Architecture of every test student: ResNet-18, 16 bins over 0.5-80 m, a narrow decoder.
TINY_STUDENT = {"encoder": "resnet18", "num_bins": 16, "min_depth": 0.5, "max_depth": 80.0,
                "decoder_channels": (32, 16, 16, 8)}


def tiny_student_config(height: int, width: int, **overrides: object) -> StudentConfig:
    """The tiny student at ``height`` x ``width``; ``overrides`` change single fields on purpose."""
    return StudentConfig(**{**TINY_STUDENT, "input_height": height, "input_width": width, **overrides})


def save_tiny_student(run: Path, cfg: StudentConfig, camera_names: Sequence[str] = SURROUND_CAMERAS,
                      seed: int = 0, rig: str | None = None) -> Path:
    """Randomly initialised (seeded) weights of ``cfg`` saved as ``fsmde train`` leaves a run directory."""
    torch.manual_seed(seed)
    meta: dict[str, object] = {"student": cfg.to_dict(), "camera_names": list(camera_names)}
    if rig is not None:
        meta["rig"] = rig
    save_student(run, SurroundDepthStudent(cfg), meta)
    return run


def save_textured_student(run: Path, cameras: Sequence[str], height: int, width: int) -> Path:
    cfg = tiny_student_config(height, width)
    torch.manual_seed(0)
    model = SurroundDepthStudent(cfg)
    with torch.no_grad():  # peaky bin probabilities: depth varies from ~7 to ~70 m
        model.logit_head.weight.mul_(30.0)
        model.logit_head.bias.normal_(0.0, 2.0)
    save_student(run, model, {"student": cfg.to_dict(), "camera_names": list(cameras), "rig": "ddad"})
    return run


def save_plane_student(run: Path, cameras: Sequence[str], height: int, width: int,
                       focal_canonical: float | None = None) -> Path:
    cfg = tiny_student_config(height, width, min_depth=1.0, max_depth=81.0, focal_canonical=focal_canonical)
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
