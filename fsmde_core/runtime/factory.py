"""``build_backend``: one call that turns (kind, model file, device, precision) into a backend.

The ROS node and the benchmarks take these four values as parameters. The
backend modules are imported only when chosen, so selecting ``onnx`` on a
machine without TensorRT (or ``tensorrt`` without onnxruntime) just works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fsmde_core.runtime.base import InferenceBackend

#: Accepted ``kind`` values -> canonical backend name.
BACKEND_KINDS: dict[str, str] = {
    "torch": "torch",
    "pytorch": "torch",
    "onnx": "onnxruntime",
    "onnxruntime": "onnxruntime",
    "ort": "onnxruntime",
    "tensorrt": "tensorrt",
    "trt": "tensorrt",
    "auto": "auto",
}


#: Model file suffix -> the backend that runs it; a path without a suffix is a student run directory.
MODEL_SUFFIXES: dict[str, str] = {
    ".safetensors": "torch",
    ".onnx": "onnxruntime",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
    ".trt": "tensorrt",
}


def backend_for_model(model_path: str | Path) -> str | None:
    """The backend for a model path by its suffix (a directory or no suffix: torch), None if unknown."""
    p = Path(model_path)
    if p.is_dir() or not p.suffix:
        return "torch"
    return MODEL_SUFFIXES.get(p.suffix.lower())


def infer_kind(model_path: str | Path) -> str:
    """Backend for ``kind="auto"``; a ValueError naming the accepted suffixes for any other file."""
    kind = backend_for_model(model_path)
    if kind is None:
        raise ValueError(
            f"{model_path}: cannot tell the backend from the suffix {Path(model_path).suffix!r}; "
            f"use a student run directory, a {', '.join(MODEL_SUFFIXES)} file, or name the backend kind"
        )
    return kind


def build_backend(
    kind: str,
    model_path: str | Path,
    device: str = "cpu",
    precision: str = "fp32",
    **opts: Any,
) -> InferenceBackend:
    """Create an inference backend.

    Args:
        kind: ``"torch"``, ``"onnx"``/``"onnxruntime"``, ``"tensorrt"``/``"trt"``, or
            ``"auto"`` (chosen from the file extension, see :func:`infer_kind`).
        model_path: student run directory / ``.safetensors`` (torch), ``.onnx``
            (onnxruntime, or tensorrt which builds an engine), ``.engine`` (tensorrt).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"``.
        precision: ``"fp32"`` or ``"fp16"`` (see each backend for what it means there).
        **opts: backend-specific options, e.g. ``intra_op_threads`` (onnxruntime) or
            ``workspace_gb``/``cache_dir``/``max_batch`` (tensorrt).

    Raises:
        ValueError: unknown kind or option values.
        CheckpointError, BackendError, FileNotFoundError: the model cannot be loaded.
        BackendUnavailableError: the backend's library or GPU is missing here.
    """
    canonical = BACKEND_KINDS.get(str(kind).lower())
    if canonical is None:
        raise ValueError(f"unknown backend kind {kind!r}; choose one of {sorted(BACKEND_KINDS)}")
    if canonical == "auto":
        canonical = infer_kind(model_path)
    try:
        if canonical == "torch":
            from fsmde_core.runtime.torch_backend import TorchBackend

            return TorchBackend.from_checkpoint(model_path, device=device, precision=precision, **opts)
        if canonical == "onnxruntime":
            from fsmde_core.runtime.onnx_backend import OnnxBackend

            return OnnxBackend(model_path, device=device, precision=precision, **opts)
        from fsmde_core.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(model_path, device=device, precision=precision, **opts)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise ValueError(f"option not supported by the {canonical} backend: {exc}") from exc
        raise
