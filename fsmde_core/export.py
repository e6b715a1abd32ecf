"""Export a trained student to ONNX (checked against PyTorch) and build TensorRT engines.

    fsmde export --checkpoint RUN_DIR --onnx OUT.onnx [--tensorrt OUT.engine --precision fp16]
    fsmde export --onnx OUT.onnx --tensorrt OUT.engine --build-only      # on the target machine

The ONNX graph takes the whole surround frame as one batch: input ``images``
``(N, 3, H, W)`` float RGB in ``[0, 1]`` (normalisation is inside the graph),
output ``depth`` ``(N, 1, H, W)`` metres, N = number of cameras; with
``--confidence`` a second output ``confidence`` ``(N, 1, H, W)`` in ``[0, 1]``
(:mod:`fsmde_core.models.confidence`). A fixed N
(the default) lets TensorRT pick kernels for exactly the rig's batch;
``--dynamic-batch`` makes N symbolic for rigs that drop cameras.

Every export is verified: ONNX checker (with shape inference), then ONNX
Runtime against PyTorch on a random and a structured (image-like) input, with
the largest difference reported in metres and relative. The facts land in a
JSON sidecar ``OUT.onnx.json`` that the runtime backends read.

Exporter: the legacy TorchScript exporter (``dynamo=False``). The torch.export
based exporter needs ``onnxscript``, which this project does not ship; the
student's forward is trace-friendly (no data-dependent control flow), so
tracing loses nothing. When torch removes the legacy path, switch to
``dynamo=True`` with ``dynamic_shapes`` and add onnxscript to the requirements.

``--tensorrt`` then builds an engine with
:func:`fsmde_core.runtime.tensorrt_build.build_tensorrt_engine` (cached per
ONNX, TensorRT version, GPU, precision and shape) and checks it against ONNX
Runtime.

Writes are atomic (:mod:`fsmde_core.atomic`): a failed export (disk full, a
failed check) leaves the previous ONNX and sidecar as they were and no partial
file, and the CLI says so in one line.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fsmde_core.atomic import atomic_output
from fsmde_core.names import SURROUND_CAMERAS
from fsmde_core.runtime.base import BackendError, BackendUnavailableError
from fsmde_core.runtime.devices import PRECISIONS
from fsmde_core.runtime.sidecar import CONFIDENCE_OUTPUT, sha256_file, write_sidecar
from fsmde_core.runtime.tensorrt_build import DEFAULT_CACHE_DIR, build_tensorrt_engine

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "depth"
DEFAULT_CAMERAS = len(SURROUND_CAMERAS)
DEFAULT_OPSET = 17
DEFAULT_TOLERANCE_M = 1e-3
#: Largest |ORT - torch| confidence difference for an export to pass (confidence is in [0, 1]).
CONFIDENCE_TOLERANCE = 1e-3


class ExportError(RuntimeError):
    """The exported model is invalid or disagrees with PyTorch beyond tolerance."""


# ------------------------------------------------------------------ helpers
def structured_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Deterministic image-like ``(n, 3, H, W)`` float32 in ``[0, 1]``.

    Uniform noise alone is a poor export test: every bin gets similar logits.
    Smooth ramps (sky-to-ground), hard edges (checkerboard at a per-camera
    frequency) and flat patches exercise the saturated-softmax and large
    activation regimes real frames produce, where fp16 or fused kernels
    disagree first.
    """
    rng = np.random.default_rng(seed)
    yy = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xx = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    out = np.empty((n, 3, height, width), dtype=np.float32)
    for i in range(n):  # per camera, not per pixel: each line is a vectorised image op
        freq = 2 + 2 * i
        checker = ((np.floor(yy * freq) + np.floor(xx * freq * width / height)) % 2).astype(np.float32)
        ramp = np.broadcast_to(1.0 - yy, (height, width))
        diagonal = (xx + yy) / 2.0
        tint = rng.uniform(0.2, 1.0, size=3).astype(np.float32)
        out[i, 0] = tint[0] * (0.6 * ramp + 0.4 * checker)
        out[i, 1] = tint[1] * (0.5 * diagonal + 0.5 * checker)
        out[i, 2] = tint[2] * ramp
        h0, w0 = height // 4, width // 4
        out[i, :, h0 : 2 * h0, w0 : 2 * w0] = rng.uniform(0.0, 1.0, size=(3, 1, 1))  # a flat "object"
    return np.clip(out, 0.0, 1.0)


def to_uint8_nhwc(images: np.ndarray) -> np.ndarray:
    """``(N, 3, H, W)`` float ``[0, 1]`` -> ``(N, H, W, 3)`` uint8 (what backends take)."""
    return np.ascontiguousarray(
        (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8).transpose(0, 2, 3, 1)
    )


def depth_difference(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Max absolute (metres) and max relative difference of two depth maps."""
    ref = np.asarray(reference, dtype=np.float64)
    diff = np.abs(ref - np.asarray(other, dtype=np.float64))
    rel = diff / np.maximum(np.abs(ref), 1e-6)
    return {
        "max_abs_diff_m": float(diff.max()),
        "max_rel_diff": float(rel.max()),
        "mean_abs_diff_m": float(diff.mean()),
    }


def default_onnx_path(checkpoint: str | Path) -> Path:
    """``RUN_DIR/student.onnx`` for a run directory, else the checkpoint with a ``.onnx`` suffix."""
    p = Path(checkpoint)
    return p / "student.onnx" if p.is_dir() else p.with_suffix(".onnx")


# -------------------------------------------------------------------- ONNX
def _torch_to_onnx(model: Any, example: Any, tmp_path: Path, opset: int, dynamic_batch: bool,
                   output_names: list[str]) -> None:
    """Trace ``model`` with the legacy exporter into ``tmp_path``."""
    import torch

    dynamic_axes = {name: {0: "cameras"} for name in [INPUT_NAME, *output_names]} if dynamic_batch else None
    with warnings.catch_warnings():
        # The exporter announces its own deprecation on every call; the choice is documented above.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        torch.onnx.export(
            model,
            (example,),
            str(tmp_path),
            dynamo=False,
            export_params=True,
            do_constant_folding=True,
            input_names=[INPUT_NAME],
            output_names=output_names,
            opset_version=int(opset),
            dynamic_axes=dynamic_axes,
        )


def _check_onnx(path: Path) -> None:
    """onnx.checker with full shape inference; raise ExportError naming the file."""
    import onnx

    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path}: exported ONNX fails onnx.checker: {exc}") from exc


def _compare_with_ort(
    model: Any, onnx_path: Path, cases: dict[str, np.ndarray], output_names: list[str]
) -> dict[str, dict[str, float]]:
    """Run each case through PyTorch and ONNX Runtime (CPU); per-case depth (and confidence) differences."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    results = {}
    for name, x in cases.items():
        with torch.inference_mode():
            expected = model(torch.from_numpy(x))
        expected = [t.numpy() for t in expected] if isinstance(expected, tuple) else [expected.numpy()]
        got = session.run(output_names, {INPUT_NAME: x})
        results[name] = depth_difference(expected[0], got[0])
        if len(output_names) > 1:  # confidence: absolute difference only, it is a probability
            results[name]["confidence_max_abs_diff"] = float(np.abs(expected[1] - got[1]).max())
    return results


def export_onnx(
    checkpoint: str | Path,
    out_path: str | Path,
    num_cameras: int | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    tolerance_m: float = DEFAULT_TOLERANCE_M,
    seed: int = 0,
    confidence: bool = False,
) -> dict[str, Any]:
    """Export a student checkpoint to ONNX, verify it, and write ``OUT.onnx.json``.

    Args:
        checkpoint: run directory or ``student.safetensors``.
        out_path: the ``.onnx`` file to write (atomically; parent created).
        num_cameras: batch size N; default the checkpoint's camera count, else 6.
        opset: ONNX opset (17 is what TensorRT 10 and ORT both handle well).
        dynamic_batch: make N symbolic (``cameras``) instead of fixed.
        tolerance_m: max abs ORT-vs-torch difference (metres) for ``passed``.
        seed: seed of the random and structured check inputs.
        confidence: add the per-pixel confidence as a second output ``confidence``
            (checked against torch too, within :data:`CONFIDENCE_TOLERANCE`).

    Returns:
        The report (also the sidecar's content): sizes, cameras, depth range,
        opset, per-case and overall ``max_abs_diff_m`` / ``max_rel_diff``,
        ``passed``, ``confidence_output`` (the output's name, or None), checkpoint and ONNX sha256.

    Raises:
        CheckpointError: the checkpoint is missing or corrupt (names the file).
        ExportError: the ONNX fails the checker.
        AtomicWriteError: the ONNX or its sidecar cannot be written (disk full); the
            previous files are unchanged and no partial file is left.
    """
    import torch

    from fsmde_core.checkpoint import load_student, resolve_student_files
    from fsmde_core.models.confidence import CONFIDENCE_KINDS, DepthAndConfidence
    from fsmde_core.models.student import DepthOnly

    started = time.perf_counter()
    out_path = Path(out_path)
    model, cfg, meta = load_student(checkpoint, map_location="cpu")
    weights_path, _ = resolve_student_files(checkpoint)
    camera_names = [str(c) for c in meta.get("camera_names") or []]
    n = _batch_size(num_cameras, camera_names)
    wrapper = (DepthAndConfidence(model) if confidence else DepthOnly(model)).eval()
    output_names = [OUTPUT_NAME, CONFIDENCE_OUTPUT] if confidence else [OUTPUT_NAME]
    cases = _check_cases(n, cfg.input_height, cfg.input_width, seed, dynamic_batch)
    with atomic_output(out_path) as tmp:
        _torch_to_onnx(wrapper, torch.from_numpy(cases["structured"]), tmp, opset, dynamic_batch, output_names)
        _check_onnx(tmp)
        diffs = _compare_with_ort(wrapper, tmp, cases, output_names)
        report: dict[str, Any] = {
            "format": "fsmde_student_onnx_v1",
            "onnx": str(out_path),
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "confidence_output": CONFIDENCE_OUTPUT if confidence else None,
            "confidence_kind": CONFIDENCE_KINDS[0] if confidence else None,
            "input_height": cfg.input_height,
            "input_width": cfg.input_width,
            "num_cameras": n,
            "dynamic_batch": bool(dynamic_batch),
            "camera_names": camera_names,
            "rig": meta.get("rig"),
            "min_depth": cfg.min_depth,
            "max_depth": cfg.max_depth,
            # Camera-aware centres: the graph predicts for this fx / width; the runtime rescales per camera.
            "focal_canonical": cfg.focal_canonical,
            "student": cfg.to_dict(),
            "opset": int(opset),
            "exporter": "torch.onnx legacy (dynamo=False)",
            "torch_version": torch.__version__,
            **_verdict(diffs, tolerance_m),
            "source_checkpoint": str(weights_path),
            "source_checkpoint_sha256": sha256_file(weights_path),
            "onnx_sha256": sha256_file(tmp),
            "export_seconds": round(time.perf_counter() - started, 3),
        }
        # The sidecar lands first: if it cannot be written, the ONNX is not replaced either,
        # so an old model never sits next to a new model's facts (or the reverse).
        write_sidecar(out_path, report)
    return report


def _batch_size(num_cameras: int | None, camera_names: list[str]) -> int:
    """The exported batch N: as asked, else the checkpoint's camera count, else the default rig's."""
    n = int(num_cameras) if num_cameras is not None else (len(camera_names) or DEFAULT_CAMERAS)
    if n < 1:
        raise ValueError(f"num_cameras must be >= 1, got {n}")
    if camera_names and len(camera_names) != n:
        log.warning(
            "exporting for %d cameras but the checkpoint lists %d (%s)", n, len(camera_names), camera_names
        )
    return n


def _check_cases(n: int, h: int, w: int, seed: int, dynamic_batch: bool) -> dict[str, np.ndarray]:
    """The inputs ORT and torch must agree on: random, image-like, and batch 1 for a dynamic batch."""
    rng = np.random.default_rng(seed)
    cases = {
        "random": rng.uniform(0.0, 1.0, size=(n, 3, h, w)).astype(np.float32),
        "structured": structured_images(n, h, w, seed=seed),
    }
    if dynamic_batch:
        cases["random_batch_1"] = rng.uniform(0.0, 1.0, size=(1, 3, h, w)).astype(np.float32)
    return cases


def _verdict(diffs: dict[str, dict[str, float]], tolerance_m: float) -> dict[str, Any]:
    """Per-case and overall ORT-vs-torch differences, and whether the largest is within tolerance."""
    max_abs = max(d["max_abs_diff_m"] for d in diffs.values())
    verdict = {
        "onnxruntime_checks": diffs,
        "max_abs_diff_m": max_abs,
        "max_rel_diff": max(d["max_rel_diff"] for d in diffs.values()),
        "tolerance_m": float(tolerance_m),
        "passed": bool(max_abs <= tolerance_m),
    }
    confidence = [d["confidence_max_abs_diff"] for d in diffs.values() if "confidence_max_abs_diff" in d]
    if confidence:
        verdict["confidence_max_abs_diff"] = max(confidence)
        verdict["confidence_tolerance"] = CONFIDENCE_TOLERANCE
        verdict["passed"] = verdict["passed"] and max(confidence) <= CONFIDENCE_TOLERANCE
    return verdict


# ---------------------------------------------------------------- TensorRT
def compare_tensorrt(onnx_path: Path, engine_path: Path, precision: str, seed: int = 0) -> dict[str, float]:
    """TensorRT engine vs ONNX Runtime on a structured uint8 batch (what the node will feed)."""
    from fsmde_core.runtime.onnx_backend import OnnxBackend
    from fsmde_core.runtime.tensorrt_backend import TensorRTBackend

    reference = OnnxBackend(onnx_path)
    engine = TensorRTBackend(engine_path, precision=precision)
    h, w = reference.input_size
    n = reference.batch_size or engine.batch_size or min(DEFAULT_CAMERAS, engine.batch_range[1])
    images = to_uint8_nhwc(structured_images(n, h, w, seed=seed))
    return depth_difference(reference.infer(images), engine.infer(images))


# --------------------------------------------------------------------- CLI
def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``fsmde export``."""
    parser.add_argument("--checkpoint", type=Path, help="student run directory or student.safetensors")
    parser.add_argument(
        "--onnx",
        type=Path,
        help="ONNX file to write (default: RUN_DIR/student.onnx); with --build-only, the input",
    )
    parser.add_argument(
        "--tensorrt", type=Path, metavar="OUT.engine", help="also build a TensorRT engine here"
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="TensorRT engine precision")
    parser.add_argument(
        "--build-only",
        action="store_true",
        help="only build the TensorRT engine from an existing --onnx and exit "
        "(no checkpoint, no export; e.g. on the target machine)",
    )
    parser.add_argument(
        "--cameras",
        type=int,
        default=None,
        help="batch size = number of cameras (default: the checkpoint's cameras, else 6)",
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    parser.add_argument(
        "--dynamic-batch", action="store_true", help="symbolic batch axis instead of a fixed one"
    )
    parser.add_argument(
        "--confidence",
        action="store_true",
        help="add per-pixel confidence in [0, 1] as a second output 'confidence' "
        "(the node publishes it with outputs.confidence)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="largest batch of the TensorRT profile for a dynamic-batch ONNX",
    )
    parser.add_argument("--workspace-gb", type=float, default=4.0, help="TensorRT builder workspace limit")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help=f"engine cache (default {DEFAULT_CACHE_DIR})"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE_M,
        help="max |ORT - torch| depth difference in metres for the export to pass",
    )


def _build_engine_from_args(args: argparse.Namespace, onnx_path: Path) -> Path:
    engine = build_tensorrt_engine(
        onnx_path,
        args.tensorrt,
        precision=args.precision,
        workspace_gb=args.workspace_gb,
        cache_dir=args.cache_dir,
        max_batch=args.max_batch,
    )
    print(f"TensorRT engine ({args.precision}): {engine}")
    return engine


def _print_onnx_report(report: dict[str, Any]) -> None:
    print(
        f"ONNX written: {report['onnx']} ({report['num_cameras']} cameras x 3 x "
        f"{report['input_height']} x {report['input_width']}, opset {report['opset']})"
    )
    for name, d in report["onnxruntime_checks"].items():
        print(
            f"  ORT vs torch [{name}]: max abs diff {d['max_abs_diff_m']:.3e} m, "
            f"max rel diff {d['max_rel_diff']:.3e}"
            + (f", confidence max abs diff {d['confidence_max_abs_diff']:.3e}"
               if "confidence_max_abs_diff" in d else "")
        )
    verdict = "PASS" if report["passed"] else "FAIL"
    confidence = ""
    if "confidence_max_abs_diff" in report:
        confidence = (f", confidence {report['confidence_max_abs_diff']:.3e} "
                      f"(tolerance {report['confidence_tolerance']:.1e})")
    print(
        f"max abs diff {report['max_abs_diff_m']:.3e} m (tolerance {report['tolerance_m']:.1e} m)"
        f"{confidence}: {verdict}"
    )


def run_export(args: argparse.Namespace) -> int:
    """``fsmde export``: 0 = success, 1 = verification failed, 2 = cannot run (input/environment)."""
    from fsmde_core.checkpoint import CheckpointError

    try:
        if args.build_only:
            if args.onnx is None or args.tensorrt is None:
                print(
                    "fsmde export: --build-only needs --onnx (input) and --tensorrt (output)", file=sys.stderr
                )
                return 2
            _build_engine_from_args(args, args.onnx)
            return 0
        if args.checkpoint is None:
            print("fsmde export: --checkpoint is required (unless --build-only)", file=sys.stderr)
            return 2
        onnx_path = args.onnx or default_onnx_path(args.checkpoint)
        report = export_onnx(
            args.checkpoint,
            onnx_path,
            num_cameras=args.cameras,
            opset=args.opset,
            dynamic_batch=args.dynamic_batch,
            tolerance_m=args.tolerance,
            confidence=args.confidence,
        )
        _print_onnx_report(report)
        if not report["passed"]:
            return 1
        if args.tensorrt is not None:
            engine = _build_engine_from_args(args, onnx_path)
            diff = compare_tensorrt(onnx_path, engine, args.precision)
            print(
                f"  TensorRT vs ORT [structured uint8]: max abs diff {diff['max_abs_diff_m']:.3e} m, "
                f"max rel diff {diff['max_rel_diff']:.3e}"
            )
        return 0
    except (CheckpointError, BackendError, ExportError, OSError, ValueError) as exc:
        if isinstance(exc, BackendUnavailableError) and args.tensorrt is not None and not args.build_only:
            print(f"fsmde export: ONNX was written, but no TensorRT engine: {exc}", file=sys.stderr)
        else:
            print(f"fsmde export: error: {exc}", file=sys.stderr)
        return 2
