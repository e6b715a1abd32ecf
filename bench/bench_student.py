"""The student family against its teachers, in one table measured in one run (issue 14).

Why: the method exists because the foundation model is too heavy for a
surround rig; a student that saves little is not worth training. For every
student preset and for Depth Anything V2 Small and Base (random weights: the
cost of an architecture does not depend on its weights) this measures, on
this machine and in this process:

* GFLOPs per image (``torch.utils.flop_counter``; deterministic) and parameters;
* torch CPU time per N-camera set, repeats interleaved across models (a burst
  of load hits every model, not one), median and min-max;
* ONNX Runtime time per set (students through ``fsmde_core.export``, teachers
  through the same legacy exporter), interleaved the same way after the torch rounds;
* peak memory: the peak RSS of a child process that builds the model and runs
  one set, minus its RSS after importing torch;
* the ratio of each to Depth Anything V2-Small. V2-Large is counted by FLOPs only.

``--accuracy`` adds each preset's held-out AbsRel and cross-view error from the
distillation benchmark (``bench/bench_distill.py --preset P``, CKD + VRKD, the
same data, steps and seeds for every preset) and a speed/accuracy plot.
Teachers run at the multiple of 14 nearest the student size (378x644 for
384x640: 1 % fewer pixels, a little in the teacher's favour).

    python bench/bench_student.py                                   # records bench/results/student.md + .png
    python bench/bench_student.py --accuracy                        # + distillation runs per preset (hours on CPU)
    python bench/bench_student.py --no-record --height 96 --width 160 --cameras 2 --repeats 2   # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "student.md"
PRESETS = ("lite", "base", "large", "legacy")
TEACHERS = ("da2_small", "da2_base")
REFERENCE = "da2_small"

#: Depth Anything V2 sizes as in the ``depth-anything/Depth-Anything-V2-{Small,Base,Large}-hf`` configs.
DA2_SIZES: dict[str, dict[str, Any]] = {
    "da2_small": {"hidden": 384, "layers": 12, "heads": 6, "out": [3, 6, 9, 12], "neck": [48, 96, 192, 384],
                  "fusion": 64},
    "da2_base": {"hidden": 768, "layers": 12, "heads": 12, "out": [3, 6, 9, 12], "neck": [96, 192, 384, 768],
                 "fusion": 128},
    "da2_large": {"hidden": 1024, "layers": 24, "heads": 16, "out": [5, 12, 18, 24],
                  "neck": [256, 512, 1024, 1024], "fusion": 256},
}


# ----------------------------------------------------------------- models
def da2_model(name: str) -> torch.nn.Module:
    """Depth Anything V2 of size ``name`` with random weights, returning the depth tensor only."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

    size = DA2_SIZES[name]
    backbone = {"model_type": "dinov2", "image_size": 518, "patch_size": 14, "hidden_size": size["hidden"],
                "num_hidden_layers": size["layers"], "num_attention_heads": size["heads"],
                "intermediate_size": 4 * size["hidden"], "out_indices": size["out"],
                "reshape_hidden_states": False, "layerscale_value": 1.0}
    cfg = DepthAnythingConfig(backbone_config=backbone, patch_size=14, reassemble_hidden_size=size["hidden"],
                              reassemble_factors=[4, 2, 1, 0.5], neck_hidden_sizes=size["neck"],
                              fusion_hidden_size=size["fusion"], head_hidden_size=32,
                              depth_estimation_type="relative")
    return DepthTensor(DepthAnythingForDepthEstimation(cfg).eval())


class DepthTensor(torch.nn.Module):
    """A transformers depth model as ``images -> predicted_depth`` (what ONNX export and timing want)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=images).predicted_depth


def student_model(preset: str, height: int, width: int) -> torch.nn.Module:
    from fsmde_core.models.student import DepthOnly, StudentConfig, SurroundDepthStudent

    return DepthOnly(SurroundDepthStudent(StudentConfig(preset=preset, input_height=height, input_width=width))).eval()


def input_size(name: str, height: int, width: int) -> tuple[int, int]:
    """Students take the size itself; the ViT teachers the nearest multiple of their 14-pixel patch."""
    if name.startswith("da2_"):
        return 14 * round(height / 14), 14 * round(width / 14)
    return height, width


def build(name: str, height: int, width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return da2_model(name) if name.startswith("da2_") else student_model(name, height, width)


# ------------------------------------------------------------ measurements
def gflops(model: torch.nn.Module, size: tuple[int, int]) -> float:
    from fsmde_core.models.student import count_gflops

    return count_gflops(model, torch.rand(1, 3, *size))


def export_onnx_model(name: str, model: torch.nn.Module, size: tuple[int, int], cameras: int, work: Path) -> Path:
    """Students through ``fsmde_core.export`` (the deployed path, checked against torch); teachers traced."""
    path = work / f"{name}_{size[0]}x{size[1]}_n{cameras}.onnx"
    if name.startswith("da2_"):
        from fsmde_core.export import _torch_to_onnx

        _torch_to_onnx(model, torch.rand(cameras, 3, *size), path, 17, dynamic_batch=False, output_names=["depth"])
        return path
    from fsmde_core.checkpoint import save_student
    from fsmde_core.export import export_onnx
    from fsmde_core.names import SURROUND_CAMERAS

    run = work / f"run_{name}"
    student = model.student
    save_student(run, student, {"student": student.config.to_dict(),
                                "camera_names": list(SURROUND_CAMERAS[:cameras])})
    report = export_onnx(run, path, num_cameras=cameras)
    if not report["passed"]:
        raise RuntimeError(f"{name}: ONNX export differs from torch by {report['max_abs_diff_m']} m")
    return path


def ort_runner(path: Path, images: np.ndarray) -> Callable[[], object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Idle ORT worker threads spin-wait by default: with runs interleaved, the next model
    # (torch's above all) would share the cores with spinning threads and time 2-10x slower.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = torch.get_num_threads()  # the same cores as torch gets
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: images}
    return lambda: session.run(None, feed)


def torch_runner(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return model(images)

    return run


def interleaved_seconds(runners: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Each runner once per round, ``repeats`` rounds after one warm-up round: load bursts hit every row."""
    for run in runners.values():
        run()
    times: dict[str, list[float]] = {key: [] for key in runners}
    for _ in range(repeats):
        for key, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - t0)
    return times


def peak_memory_mb(name: str, height: int, width: int, cameras: int) -> float:
    """Peak RSS of a fresh process building ``name`` and running one set, over its RSS after imports."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peak-of", name, "--height", str(height),
           "--width", str(width), "--cameras", str(cameras)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return float(out.stdout.strip().splitlines()[-1])


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def report_peak(name: str, height: int, width: int, cameras: int) -> None:
    """The child side of :func:`peak_memory_mb`: prints the peak in MB on its last line."""
    import transformers  # noqa: F401  (imported before the baseline: its import is not the model's memory)

    baseline = _rss_mb()
    model = build(name, height, width)
    size = input_size(name, height, width)
    torch_runner(model, torch.rand(cameras, 3, *size))()
    # VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across fork + exec, so every child
    # reported the parent's peak (9662 MB for every model in the first recorded table)
    print(_status_mb("VmHWM") - baseline)


# ------------------------------------------------------------------- rows
@dataclass
class Row:
    name: str
    size: tuple[int, int]
    gflops: float
    params_m: float
    torch_s: list[float] = field(default_factory=list)
    ort_s: list[float] = field(default_factory=list)
    peak_mb: float | None = None
    abs_rel: tuple[float, float] | None = None  # mean, spread over seeds
    cross_view: tuple[float, float] | None = None


def spread_text(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def ratio_text(ref: float | None, value: float | None) -> str:
    return f"{ref / value:.1f}x" if ref and value else "—"


def measure(args: argparse.Namespace, work: Path) -> list[Row]:
    """Count, then time torch, then export and time ONNX Runtime, then peak memory (each in its own phase).

    Models interleave within a backend. The backends do not: measured here, torch timed
    after ONNX exports and sessions existed in the process ran 10-50x slower and bimodal
    (0.04 s or 4 s per set), so no ONNX work happens before the torch rounds end.
    """
    names = [*args.presets, *args.teachers]
    rows, models, images = [], {}, {}
    for name in names:
        models[name] = build(name, args.height, args.width)
        size = input_size(name, args.height, args.width)
        rows.append(Row(name, size, gflops(models[name], size),
                        sum(p.numel() for p in models[name].parameters()) / 1e6))
        images[name] = torch.rand(args.cameras, 3, *size, generator=torch.Generator().manual_seed(0))
        print(f"{name}: {rows[-1].gflops:.2f} GFLOPs, {rows[-1].params_m:.1f} M parameters", flush=True)
    torch_times = interleaved_seconds({n: torch_runner(models[n], images[n]) for n in names}, args.repeats)
    ort_times: dict[str, list[float]] = {}
    if args.onnx:
        runners = {row.name: ort_runner(export_onnx_model(row.name, models[row.name], row.size, args.cameras, work),
                                        images[row.name].numpy()) for row in rows}
        ort_times = interleaved_seconds(runners, args.repeats)
    for row in rows:
        row.torch_s = torch_times[row.name]
        row.ort_s = ort_times.get(row.name, [])
        if args.peak_memory:
            row.peak_mb = peak_memory_mb(row.name, args.height, args.width, args.cameras)
    if args.large_flops:
        size = input_size("da2_large", args.height, args.width)
        large = da2_model("da2_large")
        rows.append(Row("da2_large", size, gflops(large, size), sum(p.numel() for p in large.parameters()) / 1e6))
    return rows


# --------------------------------------------------------------- accuracy
def distill_accuracy(args: argparse.Namespace, rows: list[Row], work: Path, log: list[str]) -> None:
    """bench_distill.py (CKD + VRKD) per preset with the same data, steps and seeds; fills each row's accuracy."""
    for row in rows:
        if row.name not in args.presets:
            continue
        summary = work / f"distill_{row.name}.json"
        cmd = [sys.executable, str(ROOT / "bench" / "bench_distill.py"), "--work", str(work / "distill"),
               "--preset", row.name, "--variants", "c_ckd_vrkd", "--speed-repeats", "0", "--no-record",
               "--summary-json", str(summary), *shlex.split(args.distill_args)]
        log.append(" ".join(shlex.quote(c) for c in cmd))
        print(f"$ {log[-1]}", flush=True)
        subprocess.run(cmd, check=True)
        data = json.loads(summary.read_text())
        mean, spread = data["mean"].get("c_ckd_vrkd"), data["spread"].get("c_ckd_vrkd")
        if mean:
            row.abs_rel = (mean["abs_rel"], spread["abs_rel"])
            row.cross_view = (mean["cross_view"], spread["cross_view"])


def accuracy_from_file(path: Path, rows: list[Row], log: list[str]) -> None:
    """Fill each preset's accuracy from a recorded JSON (``bench/results/student_accuracy.json``).

    Why: the accuracy half costs about 10 CPU-minutes per preset and seed, the speed
    half needs a quiet machine for four minutes; the two are measured apart and
    joined here. The file keeps per-seed values and the commands that made them.
    """
    data = json.loads(path.read_text())
    log.append(f"# accuracy from {path} ({data.get('what', '')})")
    for row in rows:
        runs = data.get("presets", {}).get(row.name)
        if not runs:
            continue
        for key in ("abs_rel", "cross_view"):
            values = [float(v) for v in runs[key]]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            setattr(row, key, (statistics.fmean(values), spread))


# ----------------------------------------------------------------- output
def table(rows: list[Row], cameras: int) -> list[str]:
    ref = next((r for r in rows if r.name == REFERENCE), None)
    ref_t = statistics.median(ref.torch_s) if ref and ref.torch_s else None
    ref_o = statistics.median(ref.ort_s) if ref and ref.ort_s else None
    lines = [f"| model | input | GFLOPs / image | params (M) | torch s / {cameras}-camera set, median (min–max) | "
             f"ONNX Runtime s / set | peak MB | FLOPs vs DA-V2-S | torch vs DA-V2-S | ORT vs DA-V2-S | "
             "held-out AbsRel | cross-view |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = statistics.median(r.torch_s) if r.torch_s else None
        o = statistics.median(r.ort_s) if r.ort_s else None
        acc = f"{r.abs_rel[0]:.4f} ± {r.abs_rel[1]:.4f}" if r.abs_rel else "—"
        cv = f"{r.cross_view[0]:.4f} ± {r.cross_view[1]:.4f}" if r.cross_view else "—"
        peak = f"{r.peak_mb:.0f}" if r.peak_mb is not None else "—"
        lines.append(f"| {r.name} | {r.size[0]}x{r.size[1]} | {r.gflops:.2f} | {r.params_m:.1f} | "
                     f"{spread_text(r.torch_s)} | {spread_text(r.ort_s)} | {peak} | "
                     f"{ratio_text(ref.gflops if ref else None, r.gflops)} | {ratio_text(ref_t, t)} | "
                     f"{ratio_text(ref_o, o)} | {acc} | {cv} |")
    return lines


def plot(rows: list[Row], path: Path) -> None:
    """Speed (torch s / set) against held-out AbsRel where measured, else against GFLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r.torch_s]
    with_acc = [r for r in timed if r.abs_rel]
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in with_acc or timed:
        x = statistics.median(r.torch_s)
        y = r.abs_rel[0] if with_acc else r.gflops
        ax.errorbar(x, y, yerr=r.abs_rel[1] if with_acc else None, fmt="o", capsize=3)
        ax.annotate(r.name, (x, y), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("torch CPU s per surround set (median)")
    ax.set_ylabel("held-out AbsRel (distillation benchmark)" if with_acc else "GFLOPs per image")
    ax.set_xscale("log")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine_line(args: argparse.Namespace) -> str:
    import onnxruntime

    return (f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}, Python "
            f"{platform.python_version()}. Load average at start {os.getloadavg()[0]:.1f}. Input {args.height}x"
            f"{args.width} (teachers at the nearest multiple of 14), {args.cameras} cameras per set, "
            f"{args.repeats} interleaved repeats after a warm-up.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=384)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--cameras", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--presets", type=lambda v: v.split(","), default=list(PRESETS))
    ap.add_argument("--teachers", type=lambda v: [t for t in v.split(",") if t], default=list(TEACHERS),
                    help="timed teachers (da2_small, da2_base); da2_small is the reference of the ratios")
    ap.add_argument("--no-large-flops", dest="large_flops", action="store_false",
                    help="skip counting Depth Anything V2-Large's FLOPs")
    ap.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the ONNX Runtime column")
    ap.add_argument("--no-peak-memory", dest="peak_memory", action="store_false")
    ap.add_argument("--accuracy", action="store_true", help="run the distillation benchmark per preset")
    ap.add_argument("--distill-args", default="--steps 300 --seeds 0,1,2",
                    help="passed to bench/bench_distill.py (default: its full setting, 300 steps, seeds 0,1,2)")
    ap.add_argument("--accuracy-from", type=Path, default=None,
                    help="fill the accuracy columns from a recorded JSON instead (bench/results/student_accuracy.json)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fsmde_student_bench"))
    ap.add_argument("--no-record", action="store_true",
                    help="write the table and plot under --work instead of bench/results/")
    ap.add_argument("--peak-of", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    unknown = sorted(set(args.presets) - set(PRESETS)) + sorted(set(args.teachers) - set(TEACHERS))
    if unknown:
        ap.error(f"unknown models {unknown}; presets: {', '.join(PRESETS)}; teachers: {', '.join(TEACHERS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.peak_of:
        report_peak(args.peak_of, args.height, args.width, args.cameras)
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    machine = machine_line(args)
    rows = measure(args, args.work)
    log = [" ".join(shlex.quote(a) for a in [sys.executable, "bench/bench_student.py", *(argv or sys.argv[1:])])]
    if args.accuracy:
        distill_accuracy(args, rows, args.work, log)
    elif args.accuracy_from:
        accuracy_from_file(args.accuracy_from, rows, log)
    out_md = args.work / "student.md" if args.no_record else RESULTS
    out_png = out_md.with_suffix(".png")
    lines = [f"## Student family vs teachers — {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC", "",
             machine, "", *table(rows, args.cameras), "",
             f"Plot: {out_png.name}. Total wall time {time.perf_counter() - started:.0f} s. Commands:", "", "```",
             *log, "```", ""]
    text = "\n".join(lines)
    print(text)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    with out_md.open("a" if not args.no_record else "w") as fh:
        fh.write(text + "\n")
    plot(rows, out_png)
    print(f"wrote {out_md} and {out_png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
