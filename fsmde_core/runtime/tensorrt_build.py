"""Build (or reuse) TensorRT engines from exported ONNX files, keyed on everything that invalidates one.

TensorRT engines are specific to a TensorRT version and a GPU model. They are
cached under a key made of the ONNX bytes' sha256, the TensorRT version, the
GPU name and compute capability, the precision and the input shape (or batch
profile), so a rebuild happens exactly when one of those changes.

This lives in the runtime package, below both users: ``fsmde export
--tensorrt`` builds here, and the TensorRT backend builds here when it is given
an ``.onnx`` file. Neither imports the other.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fsmde_core.atomic import atomic_copy, atomic_write_bytes
from fsmde_core.names import SURROUND_CAMERAS
from fsmde_core.runtime.base import BackendError, BackendUnavailableError
from fsmde_core.runtime.devices import check_precision, require_cuda
from fsmde_core.runtime.sidecar import read_sidecar, sha256_bytes, write_sidecar

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fsmde" / "tensorrt"
#: Facts of the ONNX sidecar that the engine's sidecar carries on (the backend reports them).
CARRIED_FACTS: tuple[str, ...] = ("camera_names", "rig", "min_depth", "max_depth", "focal_canonical", "num_cameras")


def require_tensorrt() -> Any:
    """Import and return the ``tensorrt`` module, or raise BackendUnavailableError saying so."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(
            "TensorRT is not installed (import tensorrt failed: "
            f"{exc}); install NVIDIA TensorRT 10.x/11.x for this Python (pip install tensorrt) on a "
            "machine with a CUDA GPU, or use the onnx or torch backend"
        ) from exc
    return trt


def tensorrt_prerequisites(model_path: str | Path, device: str, precision: str, what: str) -> tuple[Any, Any, Path]:
    """``(tensorrt, torch, path)`` once TensorRT, the CUDA device, the precision and the file are all there.

    Checked in that order by the builder and the backend alike, so the first
    missing thing is what the message names.
    """
    trt = require_tensorrt()
    torch = require_cuda(device, who="TensorRT")
    check_precision(precision)
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return trt, torch, path


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
        "onnx_sha256": sha256_bytes(onnx_bytes),
        "tensorrt": str(tensorrt_version),
        "gpu": str(gpu_name),
        "compute_capability": [int(c) for c in compute_capability],
        "precision": precision,
        "input_shape": [v if isinstance(v, str) else int(v) for v in input_shape],
    }
    return sha256_bytes(json.dumps(payload, sort_keys=True).encode())


def _load_onnx_graph(onnx_path: str | Path) -> Any:
    """The ONNX model without external weights, or a BackendError naming the file."""
    import onnx

    try:
        return onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise BackendError(f"{onnx_path}: not a readable ONNX model ({exc})") from exc


def onnx_input_shape(onnx_path: str | Path) -> list[int | str]:
    """The first graph input's shape: ints for fixed axes, the symbol name for dynamic ones."""
    model = _load_onnx_graph(onnx_path)
    if not model.graph.input:
        raise BackendError(f"{onnx_path}: ONNX graph has no inputs")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def onnx_has_fp16(onnx_path: str | Path) -> bool:
    """True if the ONNX carries float16 weights (a mixed-precision export, e.g. ModelOpt AutoCast)."""
    import onnx

    model = _load_onnx_graph(onnx_path)
    return any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)


def batch_profile(shape: list[int | str], max_batch: int | None, opt_batch: int) -> tuple[int, int, int] | None:
    """(min, opt, max) batch for a symbolic batch axis; None when the batch is fixed."""
    if isinstance(shape[0], int) and shape[0] > 0:
        return None
    hi = int(max_batch) if max_batch else max(opt_batch, 1)
    if hi < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return 1, min(opt_batch, hi), hi


def _refuse_weak_fp16(trt: Any, onnx_path: Path) -> None:
    """TensorRT 11 removed weak typing (BuilderFlag.FP16): an fp16 engine needs fp16 in the graph itself."""
    if not hasattr(trt.BuilderFlag, "FP16") and not onnx_has_fp16(onnx_path):
        raise BackendError(
            f"TensorRT {trt.__version__} builds strongly typed networks only, and {onnx_path} is float32: "
            "convert it to mixed precision first (NVIDIA ModelOpt AutoCast: "
            "modelopt.onnx.autocast.convert_to_mixed_precision(..., low_precision_type='fp16', "
            "keep_io_types=True)) and build that file, or use --precision fp32"
        )


def _builder_config(trt: Any, builder: Any, precision: str, workspace_gb: float) -> Any:
    """Workspace limit and precision flags: fp16 where weak typing exists, TF32 off for fp32."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision == "fp16" and hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        # fp32 means fp32: TF32 tensor-core math (on by default) would cost ~1e-3 relative accuracy.
        config.clear_flag(trt.BuilderFlag.TF32)
    return config


def build_serialized_engine(
    trt: Any,
    onnx_path: Path,
    onnx_bytes: bytes,
    precision: str,
    workspace_gb: float,
    profile: tuple[int, int, int] | None,
    shape: list[int | str],
) -> bytes:
    """Parse the ONNX and build a serialised engine with the TensorRT builder."""
    if precision == "fp16":
        _refuse_weak_fp16(trt, onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes, str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = _builder_config(trt, builder, precision, workspace_gb)
    if profile is not None:
        opt_profile = builder.create_optimization_profile()
        chw = tuple(int(v) for v in shape[1:])
        opt_profile.set_shape(
            network.get_input(0).name, (profile[0], *chw), (profile[1], *chw), (profile[2], *chw)
        )
        config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    return bytes(serialized)


def _carried_facts(onnx_path: Path) -> dict[str, Any]:
    """Camera names and depth range from the ONNX sidecar, carried into the engine's sidecar."""
    facts = read_sidecar(onnx_path)
    return {k: facts[k] for k in CARRIED_FACTS if k in facts}


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
        onnx_path: exported student (see :func:`fsmde_core.export.export_onnx`).
        engine_path: where to write the engine (``OUT.engine``), or None.
        precision: ``"fp32"`` (TF32 off) or ``"fp16"``.
        workspace_gb: builder workspace memory limit.
        cache_dir: engine cache folder; None uses the default cache.
        max_batch: largest batch of the optimisation profile for a dynamic-batch ONNX.
        device: the CUDA device to build for.

    Raises:
        BackendUnavailableError: TensorRT not installed, or no CUDA device.
        BackendError: the ONNX cannot be parsed or the build fails.
        OSError: an engine or sidecar cannot be written (nothing partial is left).
    """
    trt, torch, onnx_path = tensorrt_prerequisites(onnx_path, device, precision, "ONNX model")
    onnx_bytes = onnx_path.read_bytes()
    shape = onnx_input_shape(onnx_path)
    facts = _carried_facts(onnx_path)
    profile = batch_profile(shape, max_batch, int(facts.get("num_cameras", len(SURROUND_CAMERAS))))
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
    cached = (Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR) / f"{key}.engine"
    target = Path(engine_path) if engine_path is not None else cached
    sidecar = {
        "cache_key": key,
        "onnx": str(onnx_path),
        "onnx_sha256": sha256_bytes(onnx_bytes),
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
        _store_engine(target, sidecar, cached)
        return target
    started = time.perf_counter()
    with torch.cuda.device(torch.device(device)):
        data = build_serialized_engine(trt, onnx_path, onnx_bytes, precision, workspace_gb, profile, shape)
    sidecar["build_seconds"] = round(time.perf_counter() - started, 1)
    _store_engine(target, sidecar, data)
    if target != cached:
        _store_engine(cached, sidecar, target)
    log.info("built TensorRT engine %s in %.1f s", target, sidecar["build_seconds"])
    return target


def _store_engine(path: Path, sidecar: dict[str, Any], source: bytes | Path) -> None:
    """Write an engine (built bytes, or a copy of a stored engine file) and then its sidecar, each atomically.

    The sidecar goes last: an engine whose sidecar write failed has no (or an
    old) cache key, so the next call rebuilds it instead of trusting it.
    """
    if isinstance(source, Path):
        atomic_copy(source, path)
    else:
        atomic_write_bytes(path, source)
    write_sidecar(path, sidecar)
