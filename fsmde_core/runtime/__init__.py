"""Inference backends behind one interface: torch, ONNX Runtime, TensorRT.

    from fsmde_core.runtime import build_backend, resize_batch

    backend = build_backend("onnx", "student.onnx", device="cuda")
    backend.warmup()
    depth = backend.infer(resize_batch(camera_images, backend.input_size))  # (N, H, W) metres

Importing this package is cheap: it loads numpy and Pillow only. torch,
onnxruntime and tensorrt are imported by the backend that needs them.
"""

from fsmde_core.runtime.base import BackendError, BackendUnavailableError, InferenceBackend
from fsmde_core.runtime.devices import PRECISIONS
from fsmde_core.runtime.factory import BACKEND_KINDS, MODEL_SUFFIXES, backend_for_model, build_backend, infer_kind
from fsmde_core.runtime.preprocess import resize_batch, resize_depth_nearest, to_nchw_float

__all__ = [
    "BACKEND_KINDS",
    "MODEL_SUFFIXES",
    "PRECISIONS",
    "BackendError",
    "BackendUnavailableError",
    "InferenceBackend",
    "backend_for_model",
    "build_backend",
    "infer_kind",
    "resize_batch",
    "resize_depth_nearest",
    "to_nchw_float",
]
