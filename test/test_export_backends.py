"""ONNX export and the inference backends (torch, ONNX Runtime, TensorRT).

A tiny student (ResNet-18 at 64x96, 16 bins, slim decoder) keeps the whole
file to a few seconds per export on 2 CPU cores. TensorRT tests that need the
library and a GPU skip with a reason; the engine cache key and the "TensorRT
not installed" path are tested everywhere.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from fsmde_core.atomic import AtomicWriteError, atomic_write_bytes
from fsmde_core.checkpoint import CheckpointError
from fsmde_core.export import (
    add_export_arguments,
    export_onnx,
    run_export,
    structured_images,
    to_uint8_nhwc,
)
from fsmde_core.runtime import (
    BackendError,
    BackendUnavailableError,
    backend_for_model,
    build_backend,
    infer_kind,
    resize_batch,
    resize_depth_nearest,
    to_nchw_float,
)
from fsmde_core.runtime.devices import check_precision_on_device, require_cuda, resolve_device
from fsmde_core.runtime.onnx_backend import OnnxBackend
from fsmde_core.runtime.tensorrt_backend import TensorRTBackend
from fsmde_core.runtime.tensorrt_build import build_tensorrt_engine, engine_cache_key, onnx_input_shape

H, W = 64, 96
NO_CUDA = "needs a CUDA device (torch.cuda.is_available() is False)"


@pytest.fixture(scope="module")
def student_dir(saved_student: Callable[..., Path]) -> Path:
    return saved_student(H, W, rig="test_rig")


@pytest.fixture(scope="module")
def exported(student_dir: Path) -> tuple[Path, dict]:
    out = student_dir / "export" / "student.onnx"
    return out, export_onnx(student_dir, out)


def _images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, H, W, 3), dtype=np.uint8)


# ------------------------------------------------------------------ export
def test_export_passes_checker_and_matches_torch(exported: tuple[Path, dict], student_dir: Path,
                                                  camera_names: list[str]) -> None:
    path, report = exported
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["depth"]
    assert onnx_input_shape(path) == [6, 3, H, W]
    assert report["passed"] and report["max_abs_diff_m"] < 1e-3
    assert set(report["onnxruntime_checks"]) == {"random", "structured"}
    sidecar = json.loads(path.with_name("student.onnx.json").read_text())
    assert sidecar == json.loads(json.dumps(report))
    weights = (student_dir / "student.safetensors").read_bytes()
    assert sidecar["source_checkpoint_sha256"] == hashlib.sha256(weights).hexdigest()
    assert (sidecar["input_height"], sidecar["input_width"], sidecar["num_cameras"]) == (H, W, 6)
    assert sidecar["camera_names"] == camera_names and sidecar["opset"] == 17
    assert (sidecar["min_depth"], sidecar["max_depth"]) == (0.5, 80.0)


def test_torch_and_onnx_backends_agree(exported: tuple[Path, dict], student_dir: Path,
                                       camera_names: list[str]) -> None:
    path, report = exported
    torch_backend = build_backend("torch", student_dir)
    ort_backend = build_backend("auto", path, intra_op_threads=1)
    assert isinstance(ort_backend, OnnxBackend)
    assert torch_backend.input_size == ort_backend.input_size == (H, W)
    assert torch_backend.batch_size is None and ort_backend.batch_size == 6
    images = _images(6)
    a, b = torch_backend.infer(images), ort_backend.infer(images)
    assert a.shape == b.shape == (6, H, W) and a.dtype == b.dtype == np.float32
    assert np.all((a >= report["min_depth"]) & (a <= report["max_depth"]))
    assert np.abs(a - b).max() < 1e-3
    # Different inputs must give different depth (the comparison is not vacuous).
    assert np.abs(ort_backend.infer(_images(6, seed=2)) - b).max() > 1e-3
    info = ort_backend.describe()
    assert info["backend"] == "onnxruntime" and info["providers"] == ["CPUExecutionProvider"]
    assert info["camera_names"] == camera_names and info["batch_size"] == 6
    assert torch_backend.describe()["precision"] == "fp32"
    ort_backend.warmup(iterations=1)


def test_cli_dynamic_batch_export(student_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    out = tmp_path / "dyn.onnx"
    args = parser.parse_args(["--checkpoint", str(student_dir), "--onnx", str(out), "--dynamic-batch"])
    assert run_export(args) == 0
    printed = capsys.readouterr().out
    assert "max abs diff" in printed and "PASS" in printed and "random_batch_1" in printed
    backend = OnnxBackend(out)
    assert backend.batch_size is None
    reference = build_backend("torch", student_dir)
    for n in (1, 3):
        images = _images(n, seed=n)
        assert np.abs(backend.infer(images) - reference.infer(images)).max() < 1e-3


def test_cli_reports_bad_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    missing = tmp_path / "no_such_run"
    missing.mkdir()
    assert run_export(parser.parse_args(["--checkpoint", str(missing)])) == 2
    assert "student.safetensors" in capsys.readouterr().err


def _export_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    return parser.parse_args(list(argv))


def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fsync_on_a_full_disk(fd: int) -> None:
    """Buffered data meets the full disk when it is flushed."""
    raise _disk_full()


@pytest.mark.parametrize("full_while", ["onnx", "sidecar"])
def test_disk_full_export_is_one_line_and_loses_nothing(
    exported: tuple[Path, dict],
    student_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    full_while: str,
) -> None:
    """The disk fills while the ONNX (or, after it, its sidecar) is written over a previous export."""
    out = tmp_path / "models" / "student.onnx"
    out.parent.mkdir()
    for src in (exported[0], exported[0].with_name("student.onnx.json")):
        shutil.copy(src, out.parent / src.name)
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    if full_while == "onnx":

        def export_then_full(model, args, f, **kwargs) -> None:  # the exporter writes part, then ENOSPC
            Path(f).write_bytes(b"half an onnx graph")
            raise _disk_full()

        monkeypatch.setattr(torch.onnx, "export", export_then_full)
    else:
        monkeypatch.setattr(os, "fsync", _fsync_on_a_full_disk)
    args = _export_args("--checkpoint", str(student_dir), "--onnx", str(out), "--dynamic-batch")
    assert run_export(args) == 2
    err = capsys.readouterr().err
    target = out if full_while == "onnx" else out.with_name("student.onnx.json")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"cannot write {target}: No space left on device" in err
    # the previous export is intact (the dynamic-batch one would differ) and nothing partial is left
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before


def test_atomic_write_keeps_the_old_file_when_the_disk_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "engine.plan"
    atomic_write_bytes(path, b"old engine")
    monkeypatch.setattr(os, "fsync", _fsync_on_a_full_disk)
    with pytest.raises(AtomicWriteError, match=re.escape(f"cannot write {path}: No space left")) as info:
        atomic_write_bytes(path, b"new engine")
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old engine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine.plan"]


# -------------------------------------------------------- input validation
@pytest.fixture(scope="module", params=["torch", "onnx"])
def backend(request: pytest.FixtureRequest, exported: tuple[Path, dict], student_dir: Path):
    return build_backend("torch", student_dir) if request.param == "torch" else OnnxBackend(exported[0])


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (np.zeros((6, H, W, 3), np.float32), TypeError, "uint8"),
        ([np.zeros((H, W, 3), np.uint8)] * 6, TypeError, "numpy array"),
        (np.zeros((6, H, W), np.uint8), ValueError, r"\(N, H, W, 3\)"),
        (np.zeros((6, H, W, 4), np.uint8), ValueError, r"\(N, H, W, 3\)"),
        (np.zeros((6, H + 32, W, 3), np.uint8), ValueError, "resize_batch"),
        (np.zeros((0, H, W, 3), np.uint8), ValueError, "empty batch"),
    ],
)
def test_backend_input_validation(backend, images, error, match) -> None:
    with pytest.raises(error, match=match):
        backend.infer(images)


def test_fixed_batch_mismatch_is_explained(exported: tuple[Path, dict]) -> None:
    with pytest.raises(ValueError, match=r"fixed batch of 6 .* got 4.*--cameras 4"):
        OnnxBackend(exported[0]).infer(_images(4))


def test_precision_and_device_errors(exported: tuple[Path, dict], student_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"fp16.*needs CUDA"):
        build_backend("torch", student_dir, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision it was exported with"):
        OnnxBackend(exported[0], precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        build_backend("onnx", exported[0], precision="int8")
    with pytest.raises(ValueError, match="device must be"):
        build_backend("onnx", exported[0], device="gpu")
    with pytest.raises(ValueError, match="unknown backend kind"):
        build_backend("openvino", exported[0])
    with pytest.raises(ValueError, match="not supported by the torch backend"):
        build_backend("torch", student_dir, intra_op_threads=2)


def test_onnx_cuda_request_falls_back_to_cpu_with_warning(
    exported: tuple[Path, dict], caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider; the fallback path is not taken")
    with caplog.at_level("WARNING", logger="fsmde_core.runtime.onnx_backend"):
        backend = OnnxBackend(exported[0], device="cuda")
    assert backend.describe()["providers"] == ["CPUExecutionProvider"]
    assert "no CUDAExecutionProvider" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the no-CUDA error; this machine has CUDA")
def test_torch_cuda_unavailable_error(student_dir: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        build_backend("torch", student_dir, device="cuda")


@pytest.mark.parametrize(
    ("name", "kind"),
    [("m.onnx", "onnxruntime"), ("m.ENGINE", "tensorrt"), ("m.plan", "tensorrt"), ("m.trt", "tensorrt"),
     ("student.safetensors", "torch"), ("run_dir", "torch")],
)
def test_backend_suffix_registry(name: str, kind: str, tmp_path: Path) -> None:
    assert backend_for_model(tmp_path / name) == kind == infer_kind(tmp_path / name)


def test_unknown_model_suffix_names_the_accepted_ones(tmp_path: Path) -> None:
    assert backend_for_model(tmp_path / "model.pt") is None
    with pytest.raises(ValueError, match=r"model\.pt.*'\.pt'.*\.safetensors, \.onnx, \.engine"):
        build_backend("auto", tmp_path / "model.pt")
    run = tmp_path / "run.v2"  # a run directory with a dot in its name is still a run directory
    run.mkdir()
    assert backend_for_model(run) == "torch"


def test_device_rules() -> None:
    assert resolve_device("auto") == resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ValueError, match=re.escape("device must be 'cpu', 'cuda' or 'cuda:<index>', got 'gpu'")):
        resolve_device("gpu")
    assert check_precision_on_device("fp16", "cuda:0") == "fp16"
    assert check_precision_on_device("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match=r"fp16.*needs CUDA but device is 'cpu'"):
        check_precision_on_device("fp16", "cpu")


# ------------------------------------------------------------ broken files
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_checkpoint_names_the_file(student_dir: Path, tmp_path: Path, damage: str) -> None:
    broken = tmp_path / "broken_run"
    shutil.copytree(student_dir, broken, ignore=shutil.ignore_patterns("export"))
    weights = broken / "student.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"not a safetensors file" * 10 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"student\.safetensors"):
        build_backend("torch", broken)
    with pytest.raises(CheckpointError, match=re.escape(str(weights))):
        export_onnx(broken, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_corrupt_onnx_is_a_clear_error(exported: tuple[Path, dict], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 definitely not protobuf" * 50)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported[0].read_bytes()[:5000])
    for bad in (garbage, truncated):
        with pytest.raises(BackendError, match=re.escape(f"cannot load ONNX model {bad}")):
            build_backend("onnx", bad)
    with pytest.raises(BackendError, match="not a readable ONNX model"):
        onnx_input_shape(garbage)
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        build_backend("onnx", tmp_path / "missing.onnx")


# ---------------------------------------------------------------- TensorRT
def test_engine_cache_key_covers_every_input() -> None:
    base = {
        "tensorrt_version": "10.9.0",
        "gpu_name": "NVIDIA H100",
        "compute_capability": (9, 0),
        "precision": "fp16",
        "input_shape": (6, 3, 384, 640),
    }
    key = engine_cache_key(b"onnx-bytes", **base)
    assert key == engine_cache_key(b"onnx-bytes", **base) and len(key) == 64
    changed = [
        engine_cache_key(b"onnx-bytes!", **base),
        *(
            engine_cache_key(b"onnx-bytes", **{**base, field: value})
            for field, value in [
                ("tensorrt_version", "11.0.0"),
                ("gpu_name", "NVIDIA L4"),
                ("compute_capability", (8, 9)),
                ("precision", "fp32"),
                ("input_shape", (4, 3, 384, 640)),
                ("input_shape", ("1:6:8", 3, 384, 640)),
            ]
        ),
    ]
    assert len({key, *changed}) == len(changed) + 1
    with pytest.raises(ValueError, match="precision"):
        engine_cache_key(b"x", **{**base, "precision": "int8"})


def test_tensorrt_not_installed_error(
    exported: tuple[Path, dict],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        TensorRTBackend(exported[0])
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        build_backend("trt", tmp_path / "student.engine", device="cuda")
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        build_tensorrt_engine(exported[0], tmp_path / "student.engine")
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    argv = ["--onnx", str(exported[0]), "--tensorrt", str(tmp_path / "e.engine"), "--build-only"]
    assert run_export(parser.parse_args(argv)) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the no-CUDA error; this machine has CUDA")
def test_tensorrt_requires_cuda() -> None:
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        require_cuda("cuda")
    with pytest.raises(ValueError, match="CUDA device"):
        require_cuda("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_tensorrt_engine_matches_onnx_runtime(exported: tuple[Path, dict], tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT Python package not installed")
    cache = tmp_path / "cache"
    engine = build_tensorrt_engine(
        exported[0], tmp_path / "student.engine", precision="fp32", cache_dir=cache
    )
    stamp = engine.stat().st_mtime_ns
    assert build_tensorrt_engine(exported[0], engine, precision="fp32", cache_dir=cache) == engine
    assert engine.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert len(list(cache.glob("*.engine"))) == 1
    trt_backend = build_backend("tensorrt", engine, device="cuda")
    images = to_uint8_nhwc(structured_images(6, H, W))
    diff = np.abs(trt_backend.infer(images) - OnnxBackend(exported[0]).infer(images))
    assert diff.max() < 1e-2
    assert trt_backend.describe()["backend"] == "tensorrt"


# -------------------------------------------------------------- preprocess
def test_resize_batch_mixed_camera_sizes() -> None:
    rng = np.random.default_rng(0)
    sizes = [(120, 200), (H, W), (33, 47)]
    images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]
    out = resize_batch(images, (H, W))
    assert out.shape == (3, H, W, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    expected0 = np.asarray(Image.fromarray(images[0]).resize((W, H), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out[0], expected0)
    np.testing.assert_array_equal(out[1], images[1])  # already at size: copied untouched
    constant = np.full((50, 70, 3), (10, 200, 90), dtype=np.uint8)
    np.testing.assert_array_equal(
        resize_batch([constant], (H, W))[0], np.broadcast_to(constant[0, 0], (H, W, 3))
    )
    stacked = _images(2)
    assert resize_batch(stacked, (H, W)) is stacked  # no-op on the fast path
    with pytest.raises(TypeError, match="image 0: expected uint8"):
        resize_batch([np.zeros((H, W, 3), np.float32)], (H, W))
    with pytest.raises(ValueError, match=r"image 1: expected shape \(H, W, 3\)"):
        resize_batch([images[1], np.zeros((H, W), np.uint8)], (H, W))
    with pytest.raises(ValueError, match="no images"):
        resize_batch([], (H, W))


def test_resize_depth_nearest_keeps_markers() -> None:
    depth = np.array([[1.0, np.nan], [np.inf, 4.0]], dtype=np.float32)
    up = resize_depth_nearest(depth, (4, 6))
    expected = np.repeat(np.repeat(depth, 2, axis=0), 3, axis=1)
    np.testing.assert_array_equal(up, expected)
    batch = np.random.default_rng(0).uniform(1, 50, size=(3, 30, 40)).astype(np.float32)
    down = resize_depth_nearest(batch, (7, 9))
    assert down.shape == (3, 7, 9) and np.isin(down, batch).all()
    assert resize_depth_nearest(batch, (30, 40)) is batch


def test_to_nchw_float_matches_torch_conversion() -> None:
    images = _images(2)
    expected = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0).numpy()
    got = to_nchw_float(images)
    assert got.flags.c_contiguous and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
