"""The teacher kinds: where each lives, which options it takes, and its defaults.

One table, because three places need the same facts: the training config
(overriding ``teacher.kind`` must start from THAT kind's defaults, not keep
another kind's options), ``fsmde eval --teacher`` and :func:`build_teacher`.
Checking option names here turns a constructor ``TypeError`` deep inside a run
into one line naming the option, the kind and what the kind accepts. The table
is plain data (no torch, no teacher module import) so config parsing stays cheap;
``test/test_teachers.py`` checks it against each constructor's signature.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TeacherKind:
    """One teacher kind.

    Attributes:
        module, class_name: where the class lives (imported only when built).
        options: every constructor keyword the kind accepts.
        defaults: the options a config starts from when it picks this kind.
        required: options without a default (the model to load).
    """

    module: str
    class_name: str
    options: tuple[str, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()


TEACHER_KINDS: dict[str, TeacherKind] = {
    "depth_anything_v2": TeacherKind(
        "fsmde_core.models.teachers.depth_anything_v2", "DepthAnythingV2Teacher",
        options=("path_or_id", "input_size", "device", "fp16"),
        defaults={"input_size": 518, "fp16": False},
        required=("path_or_id",),
    ),
    "bridged": TeacherKind(
        "fsmde_core.models.teachers.bridged", "BridgedTeacher",
        options=("depth", "segmentation", "gates", "tau", "input_size", "device", "fp16", "features"),
        defaults={"input_size": 518, "fp16": False, "features": "depth"},
        required=("depth", "segmentation"),
    ),
    "onnx": TeacherKind(
        "fsmde_core.models.teachers.onnx_teacher", "OnnxTeacher",
        options=("model_path", "input_size", "mean", "std", "output_kind", "depth_output", "feature_output",
                 "feature_stride", "input_name", "device", "providers"),
        defaults={"output_kind": "inverse_depth"},
        required=("model_path",),
    ),
    "synthetic": TeacherKind(
        "fsmde_core.models.teachers.synthetic", "SyntheticTeacher",
        options=("quality", "seed", "feature_dim", "feature_stride", "lowfreq_mult", "lowfreq_add", "blur_sigma",
                 "thin_px", "noise_std", "lowfreq_grid", "scale_range", "shift_range"),
        defaults={"quality": 0.7, "seed": 0},
    ),
}

#: ``teacher.kind`` values that mean "no teacher" (no options allowed).
NO_TEACHER: tuple[Any, ...] = ("none", None)


class TeacherOptionError(ValueError):
    """A teacher kind or option is not known / missing; the message names kind, option and valid options."""


def teacher_kind(kind: str) -> TeacherKind:
    """The registry entry of ``kind``; TeacherOptionError listing the known kinds otherwise."""
    if kind not in TEACHER_KINDS:
        raise TeacherOptionError(f"unknown teacher kind {kind!r}; expected one of {sorted(TEACHER_KINDS)} or none")
    return TEACHER_KINDS[kind]


def default_options(kind: str | None) -> dict[str, Any]:
    """A fresh copy of ``kind``'s default options ({} for no teacher)."""
    if kind in NO_TEACHER:
        return {}
    return dict(teacher_kind(kind).defaults)


def check_teacher_options(kind: str | None, options: Mapping[str, Any], require: bool = True) -> None:
    """Refuse options ``kind`` does not take (and, with ``require``, missing required ones)."""
    if kind in NO_TEACHER:
        if options:
            raise TeacherOptionError(f"teacher kind {kind!r} takes no options, got {sorted(options)}")
        return
    spec = teacher_kind(kind)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        word = "option" if len(unknown) == 1 else "options"
        raise TeacherOptionError(f"teacher kind {kind!r} has no {word} {', '.join(map(repr, unknown))}; "
                                 f"valid options: {', '.join(spec.options)}")
    missing = [k for k in spec.required if options.get(k) in (None, "")] if require else []
    if missing:
        raise TeacherOptionError(f"teacher kind {kind!r} needs option {missing[0]!r} "
                                 f"(e.g. teacher.options.{missing[0]}=...); valid options: {', '.join(spec.options)}")
