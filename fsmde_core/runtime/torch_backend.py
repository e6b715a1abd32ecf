"""PyTorch backend: the reference the exported backends are checked against.

Runs the student straight from its safetensors checkpoint, on CPU or CUDA.

Precision policy: ``fp16`` means CUDA autocast (convolutions in half, softmax
and reductions kept in float32 by autocast's op lists). On CPU ``fp16`` is
**refused** with a ValueError rather than silently run in fp32: a user who
asked for fp16 is measuring speed or memory, and a quiet fallback would make
their numbers lie. Ask for ``fp32`` on CPU.

On CUDA the uint8 batch is copied into a reusable pinned (page-locked) host
buffer and uploaded asynchronously, then converted to float on the GPU: a
quarter of the bytes of a float upload, and no pageable-memory staging copy.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fsmde_core.models.confidence import student_confidence
from fsmde_core.models.fusion import fold_batchnorm
from fsmde_core.models.student import SurroundDepthStudent
from fsmde_core.runtime.base import InferenceBackend
from fsmde_core.runtime.devices import check_device, check_precision_on_device, is_cuda_device, require_cuda

log = logging.getLogger(__name__)


class TorchBackend(InferenceBackend):
    """Run a student ``nn.Module`` (or anything returning depth) with PyTorch.

    Args:
        model: the student (:class:`SurroundDepthStudent`) or a module that maps
            ``(N, 3, H, W)`` float ``[0, 1]`` to depth ``(N, 1, H, W)``; a
            ``StudentOutput`` is reduced to its ``depth`` field.
        input_size: ``(H, W)`` the model runs at.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"``.
        precision: ``"fp32"``, or ``"fp16"`` (CUDA autocast; refused on CPU).
        metadata: extra facts reported by :meth:`describe` (checkpoint path, cameras).
    """

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        input_size: tuple[int, int],
        device: str = "cpu",
        precision: str = "fp32",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.device = torch.device(check_device(device))
        self.precision = check_precision_on_device(precision, device)
        self.on_cuda = is_cuda_device(device)
        if self.on_cuda:
            require_cuda(device, who="the torch backend")
        self._input_size = (int(input_size[0]), int(input_size[1]))
        self.metadata = dict(metadata or {})
        self._focal_canonical = getattr(getattr(model, "config", None), "focal_canonical", None)
        # NHWC (channels_last) kernels are the fast path on tensor cores and on the CPU alike (oneDNN:
        # 1.7x for the base preset, 1.8x for lite, 6x384x640 on 2 cores, bench/results/student.md), and
        # the uint8 NHWC upload permuted to NCHW already has channels_last strides: no copy.
        # The backend owns the model: BatchNorms are folded into their convolutions (what ONNX Runtime and
        # TensorRT do on their own; fsmde_core/models/fusion.py).
        model = model.eval()
        fold_batchnorm(model)
        model = model.to(self.device).to(memory_format=torch.channels_last)
        if self.on_cuda:
            torch.backends.cudnn.benchmark = True  # fixed shapes: autotune once, reuse
        self.model = model
        self._pinned: torch.Tensor | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", precision: str = "fp32") -> TorchBackend:
        """Load a student run directory or ``student.safetensors`` (raises CheckpointError if broken)."""
        from fsmde_core.checkpoint import load_student

        check_precision_on_device(precision, device)
        model, cfg, meta = load_student(path, map_location="cpu")
        info = {
            "checkpoint": str(path),
            "camera_names": list(meta.get("camera_names", [])),
            "rig": meta.get("rig"),
            "encoder": cfg.encoder,
            "min_depth": cfg.min_depth,
            "max_depth": cfg.max_depth,
            "focal_canonical": cfg.focal_canonical,
        }
        return cls(
            model, (cfg.input_height, cfg.input_width), device=device, precision=precision, metadata=info
        )

    @property
    def input_size(self) -> tuple[int, int]:
        return self._input_size

    @property
    def batch_size(self) -> int | None:
        return None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backend": self.name,
            "device": str(self.device),
            "precision": self.precision,
            "input_size": list(self.input_size),
            "batch_size": self.batch_size,
            "torch": torch.__version__,
        }
        if self.on_cuda:
            info["gpu"] = torch.cuda.get_device_name(self.device)
        info.update(self.metadata)
        return info

    def _upload(self, images: np.ndarray) -> torch.Tensor:
        """uint8 NHWC host array -> float NCHW ``[0, 1]`` on the device."""
        host = torch.from_numpy(np.ascontiguousarray(images))
        if self.on_cuda:
            if self._pinned is None or self._pinned.shape != host.shape:
                self._pinned = torch.empty(host.shape, dtype=torch.uint8, pin_memory=True)
            # Safe to reuse: the previous call synchronised when it copied its result back.
            self._pinned.copy_(host)
            host = self._pinned.to(self.device, non_blocking=True)
        return host.permute(0, 3, 1, 2).float().div_(255.0)  # channels_last strides, like the model

    @property
    def has_confidence(self) -> bool:
        """A student (its forward returns the bin logits) can always give confidence."""
        return isinstance(self.model, SurroundDepthStudent)

    def _forward(self, images: np.ndarray) -> Any:
        """The model's raw output for a batch (autocast under fp16); call inside inference_mode."""
        x = self._upload(images)
        if self.precision == "fp16":
            with torch.autocast(device_type="cuda", dtype=torch.float16):
                return self.model(x)
        return self.model(x)

    def _infer(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self._forward(images)
            depth = getattr(out, "depth", out)
            return depth.float().cpu().numpy()

    def _infer_with_confidence(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            out = self._forward(images)
            # In float32 even under fp16: the entropy / mass sums over K bins are where half rounds worst.
            out = out._replace(logits=out.logits.float(), centres=out.centres.float(), depth=out.depth.float())
            confidence = student_confidence(self.model, out)
            return out.depth.float().cpu().numpy(), confidence.float().cpu().numpy()
