"""Teachers for distillation and a factory that builds one by name.

Each teacher module is imported only when asked for: ``transformers`` takes
seconds to import and ``onnxruntime`` is not needed by most runs, so neither
should load just because the package is imported.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import torch

from fsmde_core.models.teachers.base import Teacher, TeacherOutput

#: kind -> (module, class). The synthetic teacher lives in its own module.
TEACHER_KINDS: dict[str, tuple[str, str]] = {
    "depth_anything_v2": ("fsmde_core.models.teachers.depth_anything_v2", "DepthAnythingV2Teacher"),
    "onnx": ("fsmde_core.models.teachers.onnx_teacher", "OnnxTeacher"),
    "synthetic": ("fsmde_core.models.teachers.synthetic", "SyntheticTeacher"),
}


def invert_positive(depth: torch.Tensor) -> torch.Tensor:
    """1 / depth where depth > 0, NaN elsewhere (no opinion), never +-Inf.

    Teachers that predict depth (metric fine-tunes, some ONNX exports) are
    turned into inverse depth with this, so every teacher speaks one quantity.
    """
    safe = depth.clamp_min(torch.finfo(depth.dtype).tiny)
    return torch.where(depth > 0, 1.0 / safe, torch.full_like(depth, math.nan))


def build_teacher(kind: str, **cfg: Any) -> Teacher:
    """Build a teacher by kind; ``cfg`` goes to the teacher's constructor.

    Examples:
        ``build_teacher("depth_anything_v2", path_or_id="/models/da2-small", input_size=518)``
        ``build_teacher("onnx", model_path="midas.onnx", input_size=(384, 384), output_kind="inverse_depth")``
        ``build_teacher("synthetic")``
    """
    if kind not in TEACHER_KINDS:
        raise ValueError(f"unknown teacher kind {kind!r}; expected one of {sorted(TEACHER_KINDS)}")
    module_name, class_name = TEACHER_KINDS[kind]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**cfg)


__all__ = ["TEACHER_KINDS", "Teacher", "TeacherOutput", "build_teacher", "invert_positive"]
