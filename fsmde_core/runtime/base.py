"""The one interface every inference backend implements.

The ROS node, the benchmarks and the export check all talk to a backend
through :class:`InferenceBackend`, so swapping PyTorch for ONNX Runtime or
TensorRT is a parameter, not a code change. The contract is deliberately
narrow and numpy-only at the boundary:

* input: ``(N, H, W, 3)`` ``uint8`` RGB, already resized to
  :attr:`InferenceBackend.input_size` (see :mod:`fsmde_core.runtime.preprocess`).
  ``uint8`` crosses the host/device boundary four times cheaper than float32,
  and every backend converts to ``[0, 1]`` float the same way, so they cannot
  disagree on preprocessing.
* output: ``(N, H, W)`` ``float32`` metric depth in metres; with
  :meth:`InferenceBackend.infer_with_confidence`, also ``(N, H, W)`` ``float32``
  per-pixel confidence in ``[0, 1]`` (:mod:`fsmde_core.models.confidence`) when
  the model has it (:attr:`InferenceBackend.has_confidence`).

The base class validates both ends so each backend implements only
:meth:`InferenceBackend._infer` (and :meth:`InferenceBackend._infer_with_confidence`
when it can produce confidence).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class BackendError(RuntimeError):
    """A model file cannot be loaded or run by a backend (corrupt, wrong format, wrong I/O)."""


class BackendUnavailableError(BackendError):
    """The backend's library or hardware is missing here (TensorRT not installed, no CUDA device)."""


class InferenceBackend(ABC):
    """Batched metric depth inference: ``(N, H, W, 3) uint8 -> (N, H, W) float32`` metres.

    Subclasses set :attr:`name` and implement :meth:`_infer`, :attr:`input_size`,
    :attr:`batch_size` and :meth:`describe`.
    """

    #: Short backend identifier (``"torch"``, ``"onnxruntime"``, ``"tensorrt"``).
    name: str = "abstract"

    @property
    @abstractmethod
    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` the model runs at; images must already have this size."""

    @property
    @abstractmethod
    def batch_size(self) -> int | None:
        """The fixed number of images per call (cameras), or None when any N works."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-serialisable facts for logs and diagnostics: backend, device, precision, ..."""

    @abstractmethod
    def _infer(self, images: np.ndarray) -> np.ndarray:
        """Run the model on validated input; return ``(N, H, W)`` or ``(N, 1, H, W)`` depth."""

    @property
    def focal_canonical(self) -> float | None:
        """``fx / width`` the model predicts for (camera-aware centres, ``student.focal_canonical``);
        None = the model's depth is final. With a value, :class:`fsmde_core.estimator.SurroundDepthEstimator`
        multiplies each camera's depth by ``(fx / width) / focal_canonical``."""
        value = getattr(self, "_focal_canonical", None)
        return None if value is None else float(value)

    @property
    def has_confidence(self) -> bool:
        """Whether the model also yields per-pixel confidence (an ONNX/engine exported with
        ``--confidence``; a torch student always can)."""
        return False

    @abstractmethod
    def _infer_with_confidence(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on validated input; return depth and confidence, each like :meth:`_infer`'s.

        Only called when :attr:`has_confidence` is True."""

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Metric depth for a batch of RGB images.

        Args:
            images: ``(N, H, W, 3)`` ``uint8`` RGB at :attr:`input_size`.

        Returns:
            ``(N, H, W)`` ``float32`` depth in metres.

        Raises:
            TypeError: ``images`` is not a uint8 numpy array.
            ValueError: wrong rank, channel count, spatial size or batch size.
        """
        self.validate_input(images)
        depth = np.asarray(self._infer(images))
        return self._finish_output(depth, images.shape[0])

    def infer_with_confidence(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Metric depth and per-pixel confidence for a batch, in one model pass.

        Returns:
            ``(depth, confidence)``, each ``(N, H, W)`` ``float32``; confidence in ``[0, 1]``.

        Raises:
            BackendError: the model has no confidence output (re-export with ``--confidence``).
            TypeError, ValueError: as :meth:`infer`.
        """
        if not self.has_confidence:
            raise BackendError(
                f"{self.name} backend: the model has no confidence output; "
                "re-export it with `fsmde export --confidence`"
            )
        self.validate_input(images)
        depth, confidence = self._infer_with_confidence(images)
        n = images.shape[0]
        return (self._finish_output(np.asarray(depth), n, "depth"),
                self._finish_output(np.asarray(confidence), n, "confidence"))

    def validate_input(self, images: np.ndarray) -> None:
        """Raise a TypeError/ValueError that says exactly what is wrong with ``images``."""
        if not isinstance(images, np.ndarray):
            raise TypeError(
                f"{self.name} backend: images must be a numpy array (N, H, W, 3) uint8, "
                f"got {type(images).__name__}; stack per-camera images with resize_batch()"
            )
        if images.dtype != np.uint8:
            raise TypeError(
                f"{self.name} backend: images must be uint8 RGB (0..255), got dtype {images.dtype}; "
                "do not pre-normalise, the model normalises internally"
            )
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{self.name} backend: images must have shape (N, H, W, 3), got {images.shape}")
        height, width = self.input_size
        if images.shape[1:3] != (height, width):
            raise ValueError(
                f"{self.name} backend: images are {images.shape[1]}x{images.shape[2]} (HxW) but the model "
                f"runs at {height}x{width}; resize them first with fsmde_core.runtime.resize_batch"
            )
        n = images.shape[0]
        if n < 1:
            raise ValueError(f"{self.name} backend: empty batch (N=0)")
        fixed = self.batch_size
        if fixed is not None and n != fixed:
            raise ValueError(
                f"{self.name} backend: the model was exported for a fixed batch of {fixed} images "
                f"(one per camera) but got {n}; re-export with --cameras {n} or --dynamic-batch"
            )

    def _finish_output(self, out: np.ndarray, n: int, what: str = "depth") -> np.ndarray:
        """Squeeze a channel axis, check the shape and return contiguous float32."""
        if out.ndim == 4 and out.shape[1] == 1:
            out = out[:, 0]
        expected = (n, *self.input_size)
        if out.shape != expected:
            raise BackendError(
                f"{self.name} backend: model returned {what} of shape {out.shape}, expected {expected}"
            )
        return np.ascontiguousarray(out, dtype=np.float32)

    def warmup(self, iterations: int = 2, batch: int | None = None) -> None:
        """Run a few dummy batches so lazy initialisation (CUDA context, cuDNN/TensorRT
        tactic selection, ORT arena growth) happens before the first real frame, not in it.

        Args:
            iterations: number of forward passes.
            batch: images per pass; defaults to the fixed batch, else 1.
        """
        n = self.batch_size or batch or 1
        dummy = np.zeros((n, *self.input_size, 3), dtype=np.uint8)
        for _ in range(max(int(iterations), 0)):
            self.infer(dummy)

    def __repr__(self) -> str:
        h, w = self.input_size
        return f"<{type(self).__name__} {h}x{w} batch={self.batch_size}>"
