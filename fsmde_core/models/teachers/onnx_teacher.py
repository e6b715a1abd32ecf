"""Any relative-depth ONNX model as a teacher, through ONNX Runtime.

Useful for teachers that are only distributed as ONNX (MiDaS, Depth Anything
exports, Metric3D...) or to run a teacher without transformers. Everything the
model does not say about itself comes from the constructor: input size,
normalisation, and whether its output is inverse depth or depth.

Features: an ONNX file exposes only its graph outputs, so there are no hidden
tokens unless the exporter added them as a second output. Name that output in
``feature_output`` to use it (it must be (B, C, h, w)); otherwise the features
are the raw inverse-depth map average-pooled by
``feature_stride`` -- a single-channel stand-in that still lets VRKD compare
views, but carries far less information than ViT tokens.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as nnf

from fsmde_core.models.teachers import invert_positive
from fsmde_core.models.teachers.base import Teacher, TeacherOutput
from fsmde_core.runtime.sidecar import sha256_file

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
OUTPUT_KINDS: tuple[str, ...] = ("inverse_depth", "depth")

_ORT_FLOAT_TYPES: dict[str, type[np.floating]] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _select_providers(device: str, requested: Sequence[str] | None) -> list[str]:
    """CUDA first when asked for and available, CPU always as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested is not None:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ValueError(f"ONNX Runtime providers {missing} not available; available: {available}")
        return list(requested)
    wanted = ["CUDAExecutionProvider"] if device.startswith("cuda") else []
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


def _to_b1hw(array: np.ndarray, name: str) -> torch.Tensor:
    """Accept (B, H, W) or (B, 1, H, W) depth-like outputs."""
    t = torch.from_numpy(np.ascontiguousarray(array)).float()
    if t.ndim == 3:
        t = t.unsqueeze(1)
    if t.ndim != 4 or t.shape[1] != 1:
        raise ValueError(f"ONNX output {name!r} has shape {tuple(array.shape)}; expected (B, [1,] H, W)")
    return t


class OnnxTeacher(Teacher):
    """Relative inverse depth from an ONNX model run by ONNX Runtime.

    Args:
        model_path: the ``.onnx`` file.
        input_size: ``(h, w)`` the model is fed at; None feeds the images at
            their own size (models with dynamic spatial axes).
        mean, std: per-channel normalisation applied to the ``[0, 1]`` RGB input.
        output_kind: ``"inverse_depth"`` (MiDaS/Depth Anything style) or
            ``"depth"`` (inverted here; non-positive depth becomes NaN).
        depth_output: output name of the depth map (default: the first output).
        feature_output: optional output name of a (B, C, h, w) feature map.
        feature_stride: pooling stride for the fallback features.
        input_name: graph input name (default: the first input).
        device: ``"cpu"`` or ``"cuda[:i]"`` (CUDA provider used when available).
        providers: explicit ONNX Runtime provider list (overrides ``device``).
    """

    name = "onnx"

    def __init__(
        self,
        model_path: str | Path,
        input_size: tuple[int, int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        output_kind: str = "inverse_depth",
        depth_output: str | None = None,
        feature_output: str | None = None,
        feature_stride: int = 14,
        input_name: str | None = None,
        device: str = "cpu",
        providers: Sequence[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"ONNX teacher model not found: {self.model_path}")
        if output_kind not in OUTPUT_KINDS:
            raise ValueError(f"output_kind must be one of {OUTPUT_KINDS}, got {output_kind!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values with std > 0, got mean={mean}, std={std}")
        if feature_stride < 1:
            raise ValueError(f"feature_stride must be >= 1, got {feature_stride}")
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        self.mean = torch.tensor([float(m) for m in mean]).view(1, 3, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).view(1, 3, 1, 1)
        self.output_kind = output_kind
        self.feature_stride = int(feature_stride)
        try:
            chosen = _select_providers(device, providers)
            self.session = ort.InferenceSession(str(self.model_path), providers=chosen)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise RuntimeError(f"cannot load ONNX teacher {self.model_path}: {exc}") from exc
        self._bind_io(input_name, depth_output, feature_output)
        self._identity: str | None = None

    def _bind_io(self, input_name: str | None, depth_output: str | None, feature_output: str | None) -> None:
        """Resolve and check input/output names against the graph."""
        inputs = self.session.get_inputs()
        outputs = [o.name for o in self.session.get_outputs()]
        by_name = {i.name: i for i in inputs}
        if input_name is not None and input_name not in by_name:
            raise ValueError(f"{self.model_path}: no input named {input_name!r}; inputs are {list(by_name)}")
        graph_input = by_name[input_name] if input_name else inputs[0]
        if graph_input.type not in _ORT_FLOAT_TYPES:
            raise ValueError(f"{self.model_path}: input {graph_input.name!r} has type {graph_input.type}")
        self.input_name = graph_input.name
        self.input_dtype = _ORT_FLOAT_TYPES[graph_input.type]
        # A fixed batch dimension of 1 means the model must be called per image.
        self.fixed_batch_one = graph_input.shape[0] == 1
        for wanted in (depth_output, feature_output):
            if wanted is not None and wanted not in outputs:
                raise ValueError(f"{self.model_path}: no output named {wanted!r}; outputs are {outputs}")
        self.depth_output = depth_output or outputs[0]
        self.feature_output = feature_output

    @property
    def identity(self) -> str:
        """``class|model file sha256|settings hash`` (providers are left out)."""
        if self._identity is None:
            settings = {
                "input_size": self.input_size,
                "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist(),
                "output_kind": self.output_kind,
                "input": self.input_name,
                "depth_output": self.depth_output,
                "feature_output": self.feature_output,
                "feature_stride": self.feature_stride,
            }
            settings_hash = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
            self._identity = (
                f"{type(self).__name__}|w={sha256_file(self.model_path)[:16]}|cfg={settings_hash[:16]}"
            )
        return self._identity

    def preprocess(self, images: torch.Tensor) -> np.ndarray:
        """[0, 1] RGB (B, 3, H, W) -> resized, normalised array in the model's dtype."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        x = images.detach().float().cpu()
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = nnf.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        return x.numpy().astype(self.input_dtype, copy=False)

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        names = [self.depth_output] + ([self.feature_output] if self.feature_output else [])
        if not self.fixed_batch_one:
            return self.session.run(names, {self.input_name: batch})
        per_image = [self.session.run(names, {self.input_name: batch[i : i + 1]}) for i in range(len(batch))]
        return [np.concatenate([r[j] for r in per_image], axis=0) for j in range(len(names))]

    def predict(self, images: torch.Tensor, extras: dict[str, torch.Tensor] | None = None) -> TeacherOutput:
        """Relative inverse depth (B, 1, h, w) at the model's output size, plus features.

        ``extras`` is unused. Results are float32 on the device of ``images``.
        """
        results = self._run(self.preprocess(images))
        pred = _to_b1hw(results[0], self.depth_output)
        if self.output_kind == "depth":
            pred = invert_positive(pred)
        if self.feature_output:
            feats = torch.from_numpy(np.ascontiguousarray(results[1])).float()
            if feats.ndim != 4:
                raise ValueError(
                    f"feature output {self.feature_output!r} has shape {tuple(feats.shape)}; "
                    "expected (B, C, h, w)"
                )
        else:
            # NaN (invalid depth) must not poison whole pooled cells: pool a
            # zero-filled map and divide by the pooled validity fraction.
            valid = torch.isfinite(pred).float()
            k = self.feature_stride
            num = nnf.avg_pool2d(torch.nan_to_num(pred, nan=0.0, posinf=0.0), k, k, ceil_mode=True)
            den = nnf.avg_pool2d(valid, k, k, ceil_mode=True)
            feats = torch.where(den > 0, num / den.clamp_min(1e-6), torch.zeros_like(num))
        return TeacherOutput(inv_depth=pred.to(images.device), features=feats.to(images.device))
