"""What ``fsmde eval`` scores: a student checkpoint or a teacher, behind one :class:`Predictor`.

The evaluation loop must not care which it has: a student predicts metric
depth at its own input size and camera order, a teacher predicts relative
inverse depth at any size and is affine-aligned by default. Each is wrapped
into the same small record (a predict function plus those facts), so adding a
model kind means one more constructor here and no change to the loop.
Teacher kinds, their options and their defaults come from the teacher
registry (:mod:`fsmde_core.models.teachers.registry`); devices follow
:mod:`fsmde_core.runtime.devices`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fsmde_core.runtime.devices import is_cuda_device, require_cuda, resolve_device

log = logging.getLogger(__name__)


class EvalError(ValueError):
    """The evaluation cannot run as asked (bad input, missing GT or camera); message says why."""


@dataclass
class Predictor:
    """Something that turns a surround sample into per-camera depth.

    Attributes:
        source: what is evaluated, for metrics.json (checkpoint path or teacher identity).
        predict: sample -> (N, H, W) float array (depth, or inverse depth if ``inverse``).
        inverse: the prediction is relative inverse depth (teachers).
        camera_names: the camera order the model expects (None = the bag's order).
        size: (width, height) to read samples at (None = native).
        cap: default evaluation cap (None = the bag rig's max depth).
        default_mode: alignment mode when none is asked for.
        predict_with_confidence: sample -> (prediction, per-pixel confidence in [0, 1]) from
            one pass; None = the model has no confidence (teachers).
    """

    source: str
    predict: Callable[[Any], np.ndarray]
    inverse: bool
    camera_names: list[str] | None
    size: tuple[int, int] | None
    cap: float | None
    default_mode: str
    predict_with_confidence: Callable[[Any], tuple[np.ndarray, np.ndarray]] | None = None


def eval_device(device: str | None) -> torch.device:
    """The torch device to evaluate on: ``auto`` picks CUDA when present; CUDA must really be there."""
    name = resolve_device(device)
    if is_cuda_device(name):
        require_cuda(name, who="fsmde eval")
    return torch.device(name)


def _images_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def student_predictor(path: str | Path, device: str = "cpu") -> Predictor:
    """Load a student checkpoint (run dir or .safetensors) as a :class:`Predictor`."""
    from fsmde_core.checkpoint import load_student
    from fsmde_core.models.confidence import student_confidence

    p = Path(path)
    if not p.exists():
        raise EvalError(f"checkpoint not found: {p}")
    dev = eval_device(device)
    model, cfg, meta = load_student(p, map_location=dev)
    names = meta.get("camera_names")
    if names is None:
        log.warning("%s: no camera_names in the student metadata; using the bag's camera order", p)

    def focal_width(sample: Any) -> torch.Tensor:
        """fx / width per camera: camera-aware centres (student.focal_canonical) read it."""
        return torch.tensor([float(m.K[0, 0]) / m.width for m in sample.models], device=dev)

    def predict(sample: Any) -> np.ndarray:
        # One batched forward per surround set: the cameras are the batch.
        with torch.inference_mode():
            depth = model(_images_tensor(sample.images, dev), focal_width(sample)).depth
        return depth[:, 0].float().cpu().numpy()

    def predict_with_confidence(sample: Any) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            out = model(_images_tensor(sample.images, dev), focal_width(sample))
            confidence = student_confidence(model, out)
        return out.depth[:, 0].float().cpu().numpy(), confidence[:, 0].float().cpu().numpy()

    return Predictor(
        source=f"checkpoint:{p.resolve()}",
        predict=predict,
        inverse=False,
        camera_names=list(names) if names is not None else None,
        size=(cfg.input_width, cfg.input_height),
        cap=float(cfg.max_depth),
        default_mode="metric",
        predict_with_confidence=predict_with_confidence,
    )


def teacher_predictor(teacher: Any, device: str = "cpu") -> Predictor:
    """Wrap a :class:`~fsmde_core.models.teachers.base.Teacher` (relative inverse depth)."""
    dev = eval_device(device)

    def predict(sample: Any) -> np.ndarray:
        n, h, w = sample.images.shape[:3]
        # The sample's ordinal seeds teachers that draw random degradations (the synthetic one),
        # so a frame gets the same teacher output here as in the training cache.
        seed = torch.full((n,), int(sample.source.index), dtype=torch.long)
        extras: dict[str, torch.Tensor] = {"seed": seed}
        if sample.gt_depth is not None:
            extras["gt_depth"] = torch.from_numpy(sample.gt_depth[:, None].astype(np.float32)).to(dev)
        with torch.inference_mode():
            inv = teacher.predict(_images_tensor(sample.images, dev), extras).inv_depth.float()
        if inv.shape[-2:] != (h, w):
            inv = torch.nn.functional.interpolate(inv, size=(h, w), mode="bilinear", align_corners=False)
        return inv[:, 0].cpu().numpy()

    return Predictor(
        source=f"teacher:{teacher.identity}",
        predict=predict,
        inverse=True,
        camera_names=None,
        size=None,
        cap=None,
        default_mode="affine",
    )



def parse_teacher_options(items: Iterable[str]) -> dict[str, Any]:
    """``["quality=0.9", "input_size=[378,644]"]`` -> kwargs; values parsed as YAML scalars/lists."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise EvalError(f"--teacher-option expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise EvalError(f"--teacher-option {item!r}: cannot parse the value ({exc})") from exc
        options[key.strip()] = tuple(value) if isinstance(value, list) else value
    return options


def build_eval_teacher(kind: str, options: dict[str, Any], device: str) -> Any:
    """Build a teacher from the registry, passing ``device`` to kinds whose constructor takes one.

    An unknown kind or option is an :class:`EvalError` naming the kind and the
    valid options (the registry's own message), never a constructor TypeError.
    """
    from fsmde_core.models.teachers import build_teacher
    from fsmde_core.models.teachers.registry import TeacherOptionError, check_teacher_options, teacher_kind

    options = dict(options)
    try:
        if "device" in teacher_kind(kind).options:
            options.setdefault("device", resolve_device(device))
        check_teacher_options(kind, options)
    except TeacherOptionError as exc:
        raise EvalError(f"--teacher {kind} --teacher-option: {exc}") from exc
    return build_teacher(kind, **options)
