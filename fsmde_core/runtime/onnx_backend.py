"""ONNX Runtime backend for models written by :func:`fsmde_core.export.export_onnx`.

Everything the backend needs is read from the model itself: the input name,
its element type, the fixed spatial size and whether the batch (= camera)
axis is fixed or symbolic. The JSON sidecar ``MODEL.onnx.json`` written by the
exporter is optional and only adds facts to :meth:`describe` (cameras, depth
range, export diff), so a bare ONNX file from elsewhere still runs.

Providers: CUDA when ``device`` is CUDA *and* this onnxruntime build has the
CUDA provider, otherwise CPU with a logged warning (the CPU wheel is the
common case and a node should still come up). ``describe()['providers']``
reports what the session really uses.

Precision is a property of the ONNX file (float32 or float16 input), not a
runtime switch: asking for a precision the file does not have is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fsmde_core.runtime.base import BackendError, InferenceBackend
from fsmde_core.runtime.devices import check_device, check_precision, is_cuda_device
from fsmde_core.runtime.preprocess import to_nchw_float
from fsmde_core.runtime.sidecar import CONFIDENCE_OUTPUT, read_sidecar

log = logging.getLogger(__name__)

_ORT_TYPES: dict[str, tuple[str, type[np.floating]]] = {
    "tensor(float)": ("fp32", np.float32),
    "tensor(float16)": ("fp16", np.float16),
}


def select_providers(device: str, available: Sequence[str]) -> list[str]:
    """CUDA first when asked for and present; CPU always last as the fallback."""
    if is_cuda_device(device):
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        log.warning(
            "device %r requested but this onnxruntime has no CUDAExecutionProvider (available: %s); "
            "running on CPU. Install onnxruntime-gpu for CUDA.",
            device,
            list(available),
        )
    return ["CPUExecutionProvider"]


def _provider_entries(providers: list[str], device: str) -> list[Any]:
    """Attach the CUDA device index to the CUDA provider."""
    if "CUDAExecutionProvider" not in providers:
        return list(providers)
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    return [
        ("CUDAExecutionProvider", {"device_id": index}) if p == "CUDAExecutionProvider" else p
        for p in providers
    ]


class OnnxBackend(InferenceBackend):
    """Run an exported student with ONNX Runtime.

    Args:
        model_path: the ``.onnx`` file.
        device: ``"cpu"`` or ``"cuda[:i]"`` (falls back to CPU without the CUDA provider).
        precision: must match the model's input type (``"fp32"`` for our exports).
        intra_op_threads: threads for one operator; 0 lets ORT decide (all cores).
        input_size: ``(H, W)``, only needed if the model's spatial axes are symbolic.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_path: str | Path,
        device: str = "cpu",
        precision: str = "fp32",
        intra_op_threads: int = 0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        import onnxruntime as ort

        self.model_path = Path(model_path)
        self.device = check_device(device)
        check_precision(precision)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.model_path}")
        if intra_op_threads < 0:
            raise ValueError(
                f"intra_op_threads must be >= 0 (0 = ONNX Runtime default), got {intra_op_threads}"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(intra_op_threads)
        # Idle ORT threads spin by default and steal the core the node needs for
        # decoding/publishing between sets (measured: worst-case overhead 25 -> 17 ms).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = select_providers(self.device, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(
                str(self.model_path),
                sess_options=options,
                providers=_provider_entries(providers, self.device),
            )
        except Exception as exc:  # onnxruntime raises its own InvalidProtobuf/Fail/InvalidGraph types
            raise BackendError(f"cannot load ONNX model {self.model_path}: {exc}") from exc
        self.sidecar = read_sidecar(self.model_path)
        self._focal_canonical = self.sidecar.get("focal_canonical")
        self.intra_op_threads = int(intra_op_threads)
        self._bind_io(precision, input_size)

    def _bind_io(self, precision: str, input_size: tuple[int, int] | None) -> None:
        """Read input name/type/shape and pick the depth output; check they fit our contract."""
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise BackendError(
                f"{self.model_path}: expected 1 input (images), found {[i.name for i in inputs]}"
            )
        graph_input = inputs[0]
        if graph_input.type not in _ORT_TYPES:
            raise BackendError(
                f"{self.model_path}: input {graph_input.name!r} has unsupported type {graph_input.type}"
            )
        model_precision, self.input_dtype = _ORT_TYPES[graph_input.type]
        if precision != model_precision:
            raise ValueError(
                f"{self.model_path} takes {model_precision} input; ONNX Runtime runs a model at the "
                f"precision it was exported with, so precision={precision!r} is not possible (use the "
                "tensorrt backend for fp16 engines)"
            )
        self.precision = model_precision
        shape = list(graph_input.shape)
        if len(shape) != 4 or shape[1] != 3:
            raise BackendError(
                f"{self.model_path}: input {graph_input.name!r} must be (N, 3, H, W), got {shape}"
            )
        self.input_name = graph_input.name
        self._batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self._input_size = self._spatial_size(shape, input_size)
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = "depth" if "depth" in outputs else outputs[0]
        self.confidence_name = CONFIDENCE_OUTPUT if CONFIDENCE_OUTPUT in outputs else None

    def _spatial_size(self, shape: list[Any], input_size: tuple[int, int] | None) -> tuple[int, int]:
        h, w = shape[2], shape[3]
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
            if input_size is not None and tuple(input_size) != (h, w):
                raise ValueError(
                    f"{self.model_path} has a fixed input size {h}x{w}; input_size={input_size} differs"
                )
            return h, w
        if input_size is None and "input_height" in self.sidecar:
            input_size = (self.sidecar["input_height"], self.sidecar["input_width"])
        if input_size is None:
            raise ValueError(
                f"{self.model_path} has symbolic spatial axes {shape[2:]}; pass input_size=(H, W)"
            )
        return int(input_size[0]), int(input_size[1])

    @property
    def input_size(self) -> tuple[int, int]:
        return self._input_size

    @property
    def batch_size(self) -> int | None:
        return self._batch

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backend": self.name,
            "device": self.device,
            "precision": self.precision,
            "providers": self.session.get_providers(),
            "intra_op_threads": self.intra_op_threads,
            "model": str(self.model_path),
            "input_name": self.input_name,
            "output_name": self.output_name,
            "confidence_output": self.confidence_name,
            "input_size": list(self.input_size),
            "batch_size": self.batch_size,
        }
        for key in ("camera_names", "rig", "min_depth", "max_depth", "focal_canonical", "source_checkpoint_sha256"):
            if key in self.sidecar:
                info[key] = self.sidecar[key]
        return info

    @property
    def has_confidence(self) -> bool:
        """The ONNX graph has a ``confidence`` output (``fsmde export --confidence``)."""
        return self.confidence_name is not None

    def _infer(self, images: np.ndarray) -> np.ndarray:
        x = to_nchw_float(images, self.input_dtype)
        (depth,) = self.session.run([self.output_name], {self.input_name: x})
        return depth

    def _infer_with_confidence(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = to_nchw_float(images, self.input_dtype)
        depth, confidence = self.session.run([self.output_name, self.confidence_name], {self.input_name: x})
        return depth, confidence
