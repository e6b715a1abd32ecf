"""TensorRT backend (10.x / 11.x name-based tensor API), device memory owned by torch.

No pycuda: input and output buffers are torch CUDA tensors, their
``data_ptr()`` goes to ``IExecutionContext.set_tensor_address`` and the engine
runs with ``execute_async_v3`` on a torch CUDA stream. Upload, uint8->float
conversion, inference and download are all ordered on that one stream.

``tensorrt`` is imported lazily inside the class, so importing this module
(and the package) works on machines without it; constructing the backend
there raises :class:`BackendUnavailableError` with the reason.

Engines are executable artifacts compiled for one TensorRT version and one
GPU model: load only engines you built (``fsmde export --tensorrt``) or
received over a trusted channel. Given an ``.onnx`` file the backend builds
(or reuses from the cache) an engine through
:func:`fsmde_core.runtime.tensorrt_build.build_tensorrt_engine`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from fsmde_core.runtime.base import BackendError, InferenceBackend
from fsmde_core.runtime.factory import backend_for_model
from fsmde_core.runtime.sidecar import CONFIDENCE_OUTPUT, read_sidecar
from fsmde_core.runtime.tensorrt_build import build_tensorrt_engine, tensorrt_prerequisites

log = logging.getLogger(__name__)


def trt_to_torch_dtype(trt: Any, dtype: Any) -> Any:
    """Map a ``tensorrt.DataType`` to a ``torch.dtype`` (only the types an engine I/O may use)."""
    import torch

    table = {
        "FLOAT": torch.float32,
        "HALF": torch.float16,
        "BF16": torch.bfloat16,
        "INT32": torch.int32,
        "INT64": torch.int64,
        "INT8": torch.int8,
        "UINT8": torch.uint8,
        "BOOL": torch.bool,
    }
    for name, torch_dtype in table.items():
        if hasattr(trt.DataType, name) and dtype == getattr(trt.DataType, name):
            return torch_dtype
    raise BackendError(f"TensorRT tensor type {dtype} has no torch equivalent")


class TensorRTBackend(InferenceBackend):
    """Run a serialised TensorRT engine (or an ONNX file built into one on first use).

    Args:
        model_path: ``.engine``/``.plan`` file, or ``.onnx`` to build (cached) first.
        device: ``"cuda"`` or ``"cuda:<i>"``.
        precision: ``"fp32"``/``"fp16"``; used to build from ONNX, and checked
            against the engine's sidecar JSON when loading a built engine.
        workspace_gb, cache_dir, max_batch: forwarded to the engine builder.
    """

    name = "tensorrt"

    def __init__(
        self,
        model_path: str | Path,
        device: str = "cuda",
        precision: str = "fp32",
        workspace_gb: float = 4.0,
        cache_dir: str | Path | None = None,
        max_batch: int | None = None,
    ) -> None:
        trt, torch, path = tensorrt_prerequisites(model_path, device, precision, "TensorRT engine / ONNX model")
        if backend_for_model(path) == "onnxruntime":  # an ONNX file: build (or reuse) its engine first
            path = build_tensorrt_engine(
                path,
                None,
                precision=precision,
                workspace_gb=workspace_gb,
                cache_dir=cache_dir,
                max_batch=max_batch,
                device=device,
            )
        self.engine_path = path
        self.sidecar = self._read_engine_sidecar(path, precision)
        self._focal_canonical = self.sidecar.get("focal_canonical")
        self.precision = precision
        self.torch_device = torch.device(device)
        self._trt = trt
        with torch.cuda.device(self.torch_device):
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise BackendError(
                    f"{path}: cannot deserialise the TensorRT engine (corrupt, or built by a different "
                    f"TensorRT version than {trt.__version__} or for another GPU); rebuild it"
                )
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise BackendError(f"{path}: cannot create a TensorRT execution context (out of GPU memory?)")
            self.stream = torch.cuda.Stream(device=self.torch_device)
        self._bind_io()
        self._pinned: Any = None

    @staticmethod
    def _read_engine_sidecar(path: Path, precision: str) -> dict[str, Any]:
        sidecar = read_sidecar(path)
        built = sidecar.get("precision")
        if built is not None and built != precision:
            raise ValueError(
                f"{path} was built with precision={built!r}; requested {precision!r} (rebuild it)"
            )
        return sidecar

    def _bind_io(self) -> None:
        """Find the one image input and the outputs by name; read shapes and the batch profile."""
        trt, engine = self._trt, self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not self.output_names:
            raise BackendError(
                f"{self.engine_path}: expected 1 input and >= 1 output, got {inputs} / {self.output_names}"
            )
        self.input_name = inputs[0]
        self.output_name = "depth" if "depth" in self.output_names else self.output_names[0]
        self.confidence_name = CONFIDENCE_OUTPUT if CONFIDENCE_OUTPUT in self.output_names else None
        shape = tuple(engine.get_tensor_shape(self.input_name))
        if len(shape) != 4 or shape[1] != 3 or min(shape[2:]) <= 0:
            raise BackendError(
                f"{self.engine_path}: input {self.input_name!r} must be (N, 3, H, W) with fixed H, W; "
                f"got {shape}"
            )
        self._input_size = (int(shape[2]), int(shape[3]))
        if shape[0] > 0:
            self._batch: int | None = int(shape[0])
            self._batch_range = (self._batch, self._batch)
        else:
            lo, _, hi = engine.get_tensor_profile_shape(self.input_name, 0)
            self._batch, self._batch_range = None, (int(lo[0]), int(hi[0]))
        self.input_dtype = trt_to_torch_dtype(trt, engine.get_tensor_dtype(self.input_name))
        self.output_dtypes = {
            n: trt_to_torch_dtype(trt, engine.get_tensor_dtype(n)) for n in self.output_names
        }

    @property
    def input_size(self) -> tuple[int, int]:
        return self._input_size

    @property
    def batch_size(self) -> int | None:
        return self._batch

    @property
    def batch_range(self) -> tuple[int, int]:
        """Smallest and largest batch the engine accepts (equal for a fixed batch)."""
        return self._batch_range

    def validate_input(self, images: np.ndarray) -> None:
        super().validate_input(images)
        lo, hi = self._batch_range
        if not lo <= images.shape[0] <= hi:
            raise ValueError(
                f"tensorrt backend: engine {self.engine_path} accepts {lo}..{hi} images per call, "
                f"got {images.shape[0]}; rebuild with a larger max batch"
            )

    def describe(self) -> dict[str, Any]:
        import torch

        info: dict[str, Any] = {
            "backend": self.name,
            "device": str(self.torch_device),
            "precision": self.precision,
            "engine": str(self.engine_path),
            "tensorrt": self._trt.__version__,
            "gpu": torch.cuda.get_device_name(self.torch_device),
            "input_size": list(self.input_size),
            "batch_size": self.batch_size,
            "batch_range": list(self._batch_range),
        }
        for key in ("camera_names", "min_depth", "max_depth", "focal_canonical", "cache_key"):
            if key in self.sidecar:
                info[key] = self.sidecar[key]
        return info

    def _upload(self, images: np.ndarray) -> Any:
        """uint8 NHWC -> pinned host -> device (async on our stream) -> linear NCHW float in [0, 1]."""
        import torch

        host = torch.from_numpy(np.ascontiguousarray(images))
        if self._pinned is None or self._pinned.shape != host.shape:
            self._pinned = torch.empty(host.shape, dtype=torch.uint8, pin_memory=True)
        self._pinned.copy_(host)  # safe: the previous call synchronised on its download
        dev = self._pinned.to(self.torch_device, non_blocking=True)
        # TensorRT expects dense linear NCHW: .contiguous() after the permute is required.
        return dev.permute(0, 3, 1, 2).to(torch.float32).div_(255.0).to(self.input_dtype).contiguous()

    @property
    def has_confidence(self) -> bool:
        """The engine has a ``confidence`` output (built from an ONNX exported with ``--confidence``)."""
        return self.confidence_name is not None

    def _infer(self, images: np.ndarray) -> np.ndarray:
        (depth,) = self._run_engine(images, [self.output_name])
        return depth

    def _infer_with_confidence(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        depth, confidence = self._run_engine(images, [self.output_name, str(self.confidence_name)])
        return depth, confidence

    def _run_engine(self, images: np.ndarray, wanted: list[str]) -> list[np.ndarray]:
        """One engine execution; the ``wanted`` outputs (only those are copied back) as float32 host arrays."""
        import torch

        with torch.cuda.device(self.torch_device), torch.cuda.stream(self.stream), torch.inference_mode():
            x = self._upload(images)
            if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
                raise BackendError(f"TensorRT rejected input shape {tuple(x.shape)} for {self.input_name!r}")
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            outputs = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=self.output_dtypes[name], device=self.torch_device)
                self.context.set_tensor_address(name, outputs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise BackendError(f"TensorRT execution failed for engine {self.engine_path}")
            # .cpu() is enqueued on self.stream and blocks until it (and the engine) finished.
            return [outputs[name].float().cpu().numpy() for name in wanted]
