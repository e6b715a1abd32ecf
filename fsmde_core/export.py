"""Export a trained student to ONNX (checked against PyTorch) and build TensorRT engines.

    fsmde export --checkpoint RUN_DIR --onnx OUT.onnx [--tensorrt OUT.engine --precision fp16]
    fsmde export --onnx OUT.onnx --tensorrt OUT.engine --build-only      # on the target machine

The ONNX graph takes the whole surround frame as one batch: input ``images``
``(N, 3, H, W)`` float RGB in ``[0, 1]`` (normalisation is inside the graph),
output ``depth`` ``(N, 1, H, W)`` metres, N = number of cameras. A fixed N
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

TensorRT engines are specific to a TensorRT version and a GPU model. They are
cached under a key made of the ONNX bytes' sha256, the TensorRT version, the
GPU name and compute capability, the precision and the input shape, so a
rebuild happens exactly when one of those changes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fsmde_core.checkpoint import atomic_write_json
from fsmde_core.runtime.base import PRECISIONS, BackendError, BackendUnavailableError, check_precision

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "depth"
DEFAULT_CAMERAS = 6
DEFAULT_OPSET = 17
DEFAULT_TOLERANCE_M = 1e-3
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fsmde" / "tensorrt"


class ExportError(RuntimeError):
    """The exported model is invalid or disagrees with PyTorch beyond tolerance."""


# ------------------------------------------------------------------ helpers
def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(path: str | Path) -> Path:
    """``OUT.onnx -> OUT.onnx.json``; ``OUT.engine -> OUT.engine.json``."""
    p = Path(path)
    return p.with_name(p.name + ".json")


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
def _torch_to_onnx(model: Any, example: Any, tmp_path: Path, opset: int, dynamic_batch: bool) -> None:
    """Trace ``model`` with the legacy exporter into ``tmp_path``."""
    import torch

    dynamic_axes = {INPUT_NAME: {0: "cameras"}, OUTPUT_NAME: {0: "cameras"}} if dynamic_batch else None
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
            output_names=[OUTPUT_NAME],
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
    model: Any, onnx_path: Path, cases: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Run each case through PyTorch and ONNX Runtime (CPU); per-case depth differences."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    results = {}
    for name, x in cases.items():
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
        results[name] = depth_difference(expected, got)
    return results


def export_onnx(
    checkpoint: str | Path,
    out_path: str | Path,
    num_cameras: int | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    tolerance_m: float = DEFAULT_TOLERANCE_M,
    seed: int = 0,
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

    Returns:
        The report (also the sidecar's content): sizes, cameras, depth range,
        opset, per-case and overall ``max_abs_diff_m`` / ``max_rel_diff``,
        ``passed``, checkpoint and ONNX sha256.

    Raises:
        CheckpointError: the checkpoint is missing or corrupt (names the file).
        ExportError: the ONNX fails the checker.
    """
    import torch

    from fsmde_core.checkpoint import load_student, resolve_student_files
    from fsmde_core.models.student import DepthOnly

    started = time.perf_counter()
    out_path = Path(out_path)
    model, cfg, meta = load_student(checkpoint, map_location="cpu")
    weights_path, _ = resolve_student_files(checkpoint)
    camera_names = [str(c) for c in meta.get("camera_names") or []]
    n = int(num_cameras) if num_cameras is not None else (len(camera_names) or DEFAULT_CAMERAS)
    if n < 1:
        raise ValueError(f"num_cameras must be >= 1, got {n}")
    if camera_names and len(camera_names) != n:
        log.warning(
            "exporting for %d cameras but the checkpoint lists %d (%s)", n, len(camera_names), camera_names
        )
    wrapper = DepthOnly(model).eval()
    h, w = cfg.input_height, cfg.input_width
    rng = np.random.default_rng(seed)
    cases = {
        "random": rng.uniform(0.0, 1.0, size=(n, 3, h, w)).astype(np.float32),
        "structured": structured_images(n, h, w, seed=seed),
    }
    if dynamic_batch:
        cases["random_batch_1"] = rng.uniform(0.0, 1.0, size=(1, 3, h, w)).astype(np.float32)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + f".tmp{os.getpid()}")
    try:
        _torch_to_onnx(wrapper, torch.from_numpy(cases["structured"]), tmp, opset, dynamic_batch)
        _check_onnx(tmp)
        diffs = _compare_with_ort(wrapper, tmp, cases)
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)

    max_abs = max(d["max_abs_diff_m"] for d in diffs.values())
    report: dict[str, Any] = {
        "format": "fsmde_student_onnx_v1",
        "onnx": str(out_path),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_height": h,
        "input_width": w,
        "num_cameras": n,
        "dynamic_batch": bool(dynamic_batch),
        "camera_names": camera_names,
        "rig": meta.get("rig"),
        "min_depth": cfg.min_depth,
        "max_depth": cfg.max_depth,
        "student": cfg.to_dict(),
        "opset": int(opset),
        "exporter": "torch.onnx legacy (dynamo=False)",
        "torch_version": torch.__version__,
        "onnxruntime_checks": diffs,
        "max_abs_diff_m": max_abs,
        "max_rel_diff": max(d["max_rel_diff"] for d in diffs.values()),
        "tolerance_m": float(tolerance_m),
        "passed": bool(max_abs <= tolerance_m),
        "source_checkpoint": str(weights_path),
        "source_checkpoint_sha256": sha256_file(weights_path),
        "onnx_sha256": sha256_file(out_path),
        "export_seconds": round(time.perf_counter() - started, 3),
    }
    atomic_write_json(sidecar_path(out_path), report)
    return report


# ---------------------------------------------------------------- TensorRT
def engine_cache_key(
    onnx_bytes: bytes,
    *,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: Sequence[int],
    precision: str,
    input_shape: Sequence[int | str],
) -> str:
    """Cache key of a TensorRT engine: everything that makes a built engine invalid.

    sha256 over a canonical JSON of: the ONNX bytes' sha256, the TensorRT
    version (engines are not portable across versions), the GPU name and
    compute capability (tactics are per GPU model), the precision and the
    input shape (or batch profile). Pure function: testable without TensorRT.
    """
    check_precision(precision)
    payload = {
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "tensorrt": str(tensorrt_version),
        "gpu": str(gpu_name),
        "compute_capability": [int(c) for c in compute_capability],
        "precision": precision,
        "input_shape": [v if isinstance(v, str) else int(v) for v in input_shape],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def onnx_input_shape(onnx_path: str | Path) -> list[int | str]:
    """The first graph input's shape: ints for fixed axes, the symbol name for dynamic ones."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise BackendError(f"{onnx_path}: not a readable ONNX model ({exc})") from exc
    if not model.graph.input:
        raise BackendError(f"{onnx_path}: ONNX graph has no inputs")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def onnx_has_fp16(onnx_path: str | Path) -> bool:
    """True if the ONNX carries float16 weights (a mixed-precision export, e.g. ModelOpt AutoCast)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)


def _batch_profile(
    shape: list[int | str], max_batch: int | None, opt_batch: int
) -> tuple[int, int, int] | None:
    """(min, opt, max) batch for a symbolic batch axis; None when the batch is fixed."""
    if isinstance(shape[0], int) and shape[0] > 0:
        return None
    hi = int(max_batch) if max_batch else max(opt_batch, 1)
    if hi < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return 1, min(opt_batch, hi), hi


def _build_serialized_engine(
    trt: Any,
    onnx_path: Path,
    onnx_bytes: bytes,
    precision: str,
    workspace_gb: float,
    profile: tuple[int, int, int] | None,
    shape: list[int | str],
) -> bytes:
    """Parse the ONNX and build a serialised engine with the TensorRT builder."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 11 removed weak typing (BuilderFlag.FP16): precision must be in the graph itself.
    weak_typing = hasattr(trt.BuilderFlag, "FP16")
    if precision == "fp16" and not weak_typing and not onnx_has_fp16(onnx_path):
        raise BackendError(
            f"TensorRT {trt.__version__} builds strongly typed networks only, and {onnx_path} is float32: "
            "convert it to mixed precision first (NVIDIA ModelOpt AutoCast: "
            "modelopt.onnx.autocast.convert_to_mixed_precision(..., low_precision_type='fp16', "
            "keep_io_types=True)) and build that file, or use --precision fp32"
        )
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes, str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision == "fp16" and weak_typing:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        # fp32 means fp32: TF32 tensor-core math (on by default) would cost ~1e-3 relative accuracy.
        config.clear_flag(trt.BuilderFlag.TF32)
    if profile is not None:
        opt_profile = builder.create_optimization_profile()
        chw = tuple(int(v) for v in shape[1:])
        opt_profile.set_shape(
            network.get_input(0).name, (profile[0], *chw), (profile[1], *chw), (profile[2], *chw)
        )
        config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(
            f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)"
        )
    return bytes(serialized)


def _atomic_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def _onnx_sidecar_facts(onnx_path: Path) -> dict[str, Any]:
    """Camera names and depth range from the ONNX sidecar, carried into the engine's sidecar."""
    from fsmde_core.runtime.onnx_backend import read_sidecar

    facts = read_sidecar(onnx_path)
    return {
        k: facts[k] for k in ("camera_names", "rig", "min_depth", "max_depth", "num_cameras") if k in facts
    }


def build_tensorrt_engine(
    onnx_path: str | Path,
    engine_path: str | Path | None = None,
    precision: str = "fp32",
    workspace_gb: float = 4.0,
    cache_dir: str | Path | None = None,
    max_batch: int | None = None,
    device: str = "cuda",
) -> Path:
    """Build (or reuse) a TensorRT engine for an ONNX file; return the engine's path.

    Reuse order: ``engine_path`` whose sidecar has the same cache key, then
    ``cache_dir/<key>.engine``, else build and store in both. With no
    ``engine_path`` the engine lives in the cache (default
    ``~/.cache/fsmde/tensorrt``).

    Args:
        onnx_path: exported student (see :func:`export_onnx`).
        engine_path: where to write the engine (``OUT.engine``), or None.
        precision: ``"fp32"`` (TF32 off) or ``"fp16"``.
        workspace_gb: builder workspace memory limit.
        cache_dir: engine cache folder; None uses the default cache.
        max_batch: largest batch of the optimisation profile for a dynamic-batch ONNX.
        device: the CUDA device to build for.

    Raises:
        BackendUnavailableError: TensorRT not installed, or no CUDA device.
        BackendError: the ONNX cannot be parsed or the build fails.
    """
    from fsmde_core.runtime.onnx_backend import read_sidecar
    from fsmde_core.runtime.tensorrt_backend import require_cuda, require_tensorrt

    trt = require_tensorrt()
    torch = require_cuda(device)
    check_precision(precision)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    onnx_bytes = onnx_path.read_bytes()
    shape = onnx_input_shape(onnx_path)
    facts = _onnx_sidecar_facts(onnx_path)
    profile = _batch_profile(shape, max_batch, int(facts.get("num_cameras", DEFAULT_CAMERAS)))
    key_shape = [f"{profile[0]}:{profile[1]}:{profile[2]}", *shape[1:]] if profile else shape
    gpu = torch.cuda.get_device_name(torch.device(device))
    capability = torch.cuda.get_device_capability(torch.device(device))
    key = engine_cache_key(
        onnx_bytes,
        tensorrt_version=trt.__version__,
        gpu_name=gpu,
        compute_capability=capability,
        precision=precision,
        input_shape=key_shape,
    )
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    cached = cache / f"{key}.engine"
    target = Path(engine_path) if engine_path is not None else cached
    sidecar = {
        "cache_key": key,
        "onnx": str(onnx_path),
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "tensorrt": trt.__version__,
        "gpu": gpu,
        "compute_capability": list(capability),
        "precision": precision,
        "input_shape": key_shape,
        "batch_profile": list(profile) if profile else None,
        **facts,
    }
    if target.is_file() and read_sidecar(target).get("cache_key") == key:
        log.info("TensorRT engine up to date: %s", target)
        return target
    if cached.is_file() and target != cached:
        log.info("TensorRT engine from cache: %s -> %s", cached, target)
        _atomic_copy(cached, target)
        atomic_write_json(sidecar_path(target), sidecar)
        return target
    started = time.perf_counter()
    with torch.cuda.device(torch.device(device)):
        data = _build_serialized_engine(trt, onnx_path, onnx_bytes, precision, workspace_gb, profile, shape)
    sidecar["build_seconds"] = round(time.perf_counter() - started, 1)
    _atomic_write(target, data)
    atomic_write_json(sidecar_path(target), sidecar)
    if target != cached:
        _atomic_copy(target, cached)
        atomic_write_json(sidecar_path(cached), sidecar)
    log.info("built TensorRT engine %s in %.1f s", target, sidecar["build_seconds"])
    return target


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
        )
    verdict = "PASS" if report["passed"] else "FAIL"
    print(
        f"max abs diff {report['max_abs_diff_m']:.3e} m (tolerance {report['tolerance_m']:.1e} m): {verdict}"
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
    except (CheckpointError, BackendError, ExportError, FileNotFoundError, ValueError) as exc:
        if isinstance(exc, BackendUnavailableError) and args.tensorrt is not None and not args.build_only:
            print(f"fsmde export: ONNX was written, but no TensorRT engine: {exc}", file=sys.stderr)
        else:
            print(f"fsmde export: error: {exc}", file=sys.stderr)
        return 2
