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
from fsmde_core.models.teachers.registry import (
    TEACHER_KINDS,
    TeacherKind,
    TeacherOptionError,
    check_teacher_options,
    default_options,
    teacher_kind,
)


def invert_positive(depth: torch.Tensor) -> torch.Tensor:
    """1 / depth where depth > 0, NaN elsewhere (no opinion), never +-Inf.

    Teachers that predict depth (metric fine-tunes, some ONNX exports) are
    turned into inverse depth with this, so every teacher speaks one quantity.
    """
    safe = depth.clamp_min(torch.finfo(depth.dtype).tiny)
    return torch.where(depth > 0, 1.0 / safe, torch.full_like(depth, math.nan))


def teacher_class(kind: str) -> type[Teacher]:
    """The class of ``kind`` (imports its module now)."""
    spec = teacher_kind(kind)
    return getattr(importlib.import_module(spec.module), spec.class_name)


def build_teacher(kind: str, **cfg: Any) -> Teacher:
    """Build a teacher by kind; ``cfg`` goes to the teacher's constructor.

    Options the kind does not take, or a missing required one, raise
    :class:`TeacherOptionError` (a ValueError) naming them, never a TypeError.

    Examples:
        ``build_teacher("depth_anything_v2", path_or_id="/models/da2-small", input_size=518)``
        ``build_teacher("onnx", model_path="midas.onnx", input_size=(384, 384), output_kind="inverse_depth")``
        ``build_teacher("synthetic")``
    """
    check_teacher_options(kind, cfg)
    return teacher_class(kind)(**cfg)


__all__ = ["TEACHER_KINDS", "Teacher", "TeacherKind", "TeacherOptionError", "TeacherOutput", "build_teacher",
           "check_teacher_options", "default_options", "invert_positive", "teacher_class", "teacher_kind"]
