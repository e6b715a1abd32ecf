"""``fsmde eval``: score a student or a teacher on rosbag2 recordings and write a report with pictures.

The metrics themselves (Eigen metrics, the ``metric`` / ``median`` / ``affine``
alignment modes, cross-view consistency) are defined in :mod:`fsmde_core.metrics`;
what is evaluated is a :class:`fsmde_core.predictors.Predictor`. This module is
the loop that joins them to the bag reader, and the CLI:

* per camera = mean over frames, ``mean`` = mean of the cameras (each camera
  weighs the same, whatever its GT density);
* cross-view consistency is averaged over both directions, then pairs, then
  frames. It is computed on the depth as scored (after the mode's alignment, so
  in ``median``/``affine`` mode the per-image alignment partially hides
  per-camera scale disagreement), and on the dense synthetic ground truth when
  the bag has it: GT is not perfectly consistent either (nearest-pixel
  sampling, depth discontinuities), so its value is the floor a perfect model
  would reach.

A student also yields per-pixel confidence (:mod:`fsmde_core.models.confidence`);
its calibration, AbsRel per confidence decile over every scored pixel of the run,
shows whether the error falls as confidence rises (teachers have none).

With ``corruptions`` (``fsmde eval --corruption all|NAME[@SEVERITY][,..]``) the same
frames are scored again with their camera images corrupted
(:mod:`fsmde_core.corruptions`, the RoboDepth / KITTI-C suite) before the model or
teacher sees them; ground truth, masks and calibration stay untouched. Each image's
random stream is seeded from (seed, corruption, severity, frame, camera name), so a
rerun corrupts identically. RoboDepth's summary figures (:func:`robustness_summary`):

* DEE = (AbsRel - δ1 + 1) / 2 per corruption and severity (0 = perfect, 1 = useless);
* mDEE = mean over corruptions of (mean over their severities of DEE);
* mRR = mean over corruptions of (1 - DEE_c) / (1 - DEE_clean), DEE_c its
  severity mean (= RoboDepth's mean of per-severity ratios: the ratio is linear).

A bag with a reflective-surface mask per camera (``fsmde synth --reflective``:
``/synthetic_gt/<camera>/reflective``) is also scored inside and outside the mask
(:class:`ReflectiveSplit`): the photometric losses of self-supervision fail on
mirrors, so the error there is reported apart. These figures pool every scored
pixel of the run (not camera means), so inside and outside combine exactly into
the pooled figures of all pixels, weighted by the mask's pixel fraction.

Outputs: ``REPORT_DIR/metrics.json`` (schema in :func:`evaluate`) and
``REPORT_DIR/report.md`` with ``depth_mosaic.png``, ``error_maps.png``,
``per_camera_metrics.png``, for a student ``confidence_calibration.png``, and
with corruptions one ``corruption_<name>.png`` each (see :mod:`fsmde_core.report`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fsmde_core.metrics import (
    BOUNDARY_KEYS,
    DEFAULT_MIN_DEPTH,
    METRIC_KEYS,
    MODES,
    CrossViewResult,
    abs_rel_by_confidence,
    align_depth,
    boundary_abs_rel,
    boundary_mask,
    confidence_histogram,
    cross_view_consistency,
    depth_metrics,
    eval_mask,
    image_scale_factors,
    nanmean,
    quiet_nan_warnings,
    scale_error_summary,
)
from fsmde_core.predictors import (
    EvalError,
    Predictor,
    build_eval_teacher,
    parse_teacher_options,
    student_predictor,
    teacher_predictor,
)

log = logging.getLogger(__name__)

GT_KINDS: tuple[str, ...] = ("lidar", "synthetic")
#: Frames whose pictures go into ``depth_mosaic.png``.
MOSAIC_FRAMES = 2
#: Default seed of the corruption random streams (combined with corruption, severity, frame, camera).
CORRUPTION_SEED = 0
#: Severity of the per-corruption picture in the report (the protocol's middle level).
PICTURE_SEVERITY = 3
#: With --max-frames up to this, the corruption passes reuse the clean pass's samples from memory
#: (90 passes would otherwise decode the bag 90 times); more frames are read again per corruption.
CACHED_FRAMES = 64


# ================================================================ the run
#: Regions of the reflective split and the pooled metrics of each (metrics.json "reflective").
REFLECTIVE_REGIONS: tuple[str, ...] = ("inside", "outside", "all")
REFLECTIVE_KEYS: tuple[str, ...] = ("abs_rel", "sq_rel", "rmse", "a1")


@dataclass
class ReflectiveSplit:
    """Pixel sums of the depth errors inside / outside the reflective mask (and over all pixels).

    Sums, not means, so frames and cameras pool by pixel: ``abs_rel``, ``sq_rel``
    and ``a1`` of "all" are exactly the pixel-fraction-weighted mix of "inside" and
    "outside", and ``rmse`` mixes as a root of weighted squares.
    """

    sums: dict[str, dict[str, float]] = field(
        default_factory=lambda: {r: {"abs_rel": 0.0, "sq_rel": 0.0, "se": 0.0, "a1": 0.0, "pixels": 0.0}
                                 for r in REFLECTIVE_REGIONS})

    def add(self, pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, reflective: np.ndarray, cap: float,
            min_depth: float) -> None:
        """One surround set's scored pixels, split by the (N, H, W) bool ``reflective`` mask."""
        regions = {"inside": valid & reflective, "outside": valid & ~reflective, "all": valid}
        for name, region in regions.items():
            m = depth_metrics(pred, gt, region, cap, min_depth)
            n = np.asarray(m["count"], dtype=np.float64)
            acc = self.sums[name]
            acc["pixels"] += float(n.sum())
            for key, total in (("abs_rel", m["abs_rel"]), ("sq_rel", m["sq_rel"]), ("se", np.square(m["rmse"])),
                               ("a1", m["a1"])):
                acc[key] += float(np.where(n > 0, np.asarray(total) * n, 0.0).sum())

    def summary(self) -> dict[str, Any]:
        """{"inside": {abs_rel, sq_rel, rmse, a1, pixels}, "outside": ..., "all": ..., "fraction"}."""
        out: dict[str, Any] = {}
        for name, acc in self.sums.items():
            n = acc["pixels"]
            out[name] = {"abs_rel": acc["abs_rel"] / n if n else math.nan,
                         "sq_rel": acc["sq_rel"] / n if n else math.nan,
                         "rmse": math.sqrt(acc["se"] / n) if n else math.nan,
                         "a1": acc["a1"] / n if n else math.nan,
                         "pixels": int(n)}
        total = self.sums["all"]["pixels"]
        out["fraction"] = self.sums["inside"]["pixels"] / total if total else math.nan
        return out


@dataclass
class _Accumulator:
    """Per-frame results and the few frames kept for pictures."""

    names: list[str]
    per_frame: list[dict[str, np.ndarray]] = field(default_factory=list)
    scale_factors: list[np.ndarray] = field(default_factory=list)  # per frame: (N cameras,) median(pred/gt)
    cross_view: list[CrossViewResult] = field(default_factory=list)
    cross_view_gt: list[CrossViewResult] = field(default_factory=list)
    err_sum: np.ndarray | None = None
    err_count: np.ndarray | None = None
    mosaic: list[Any] = field(default_factory=list)
    ring: list[int] = field(default_factory=list)
    pair_names: dict[tuple[int, int], str] = field(default_factory=dict)
    confidence_count: np.ndarray | None = None  # per fine confidence bin (metrics.confidence_histogram)
    confidence_err_sum: np.ndarray | None = None
    reflective: ReflectiveSplit | None = None  # only when the bag has reflective masks

    def add_confidence(self, count: np.ndarray, err_sum: np.ndarray) -> None:
        """Add one frame's confidence histogram to the run's."""
        if self.confidence_count is None or self.confidence_err_sum is None:
            self.confidence_count, self.confidence_err_sum = count, err_sum
        else:
            self.confidence_count = self.confidence_count + count
            self.confidence_err_sum = self.confidence_err_sum + err_sum

    def add_error_map(self, pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, cap: float,
                      min_depth: float) -> np.ndarray:
        """Accumulate the per-pixel abs-rel error (for the mean error map); returns this frame's."""
        with np.errstate(invalid="ignore", divide="ignore"):
            g = np.clip(gt, min_depth, cap)
            err = np.where(mask, np.abs(np.clip(pred, min_depth, cap) - g) / g, np.nan)
        if self.err_sum is None:
            self.err_sum = np.zeros(err.shape, dtype=np.float64)
            self.err_count = np.zeros(err.shape, dtype=np.int64)
        ok = np.isfinite(err)
        self.err_sum += np.where(ok, err, 0.0)
        self.err_count += ok
        return err


def bag_conditions(bags: list[Path]) -> dict[str, str | None]:
    """Each bag's rendering condition (synthetic bags' metadata), so results can be grouped by it."""
    from fsmde_core.synthetic.weather import bag_condition

    return {str(b): bag_condition(b) for b in bags}


def _reorder(sample: Any, names: list[str] | None) -> Any:
    """Put the sample's cameras in ``names`` order (the checkpoint's), or leave it."""
    if names is None or list(sample.camera_names) == list(names):
        return sample
    missing = [n for n in names if n not in sample.camera_names]
    if missing:
        raise EvalError(
            f"bag {sample.source.bag} lacks camera(s) {missing} that the checkpoint was trained on "
            f"(bag cameras: {list(sample.camera_names)}; checkpoint cameras: {list(names)}); "
            "pass a DataConfig with explicit camera topics if they are named differently"
        )
    return sample.take([list(sample.camera_names).index(n) for n in names])


def _ground_truth(sample: Any, gt: str) -> np.ndarray:
    if gt == "lidar":
        return sample.sparse_depth
    if sample.gt_depth is None:
        raise EvalError(
            f"bag {sample.source.bag} has no dense synthetic ground truth (topics like "
            "/synthetic_gt/<camera>/depth); use --gt lidar for real recordings"
        )
    return sample.gt_depth


def _data_config(base: Any, size: tuple[int, int] | None, gt: str) -> Any:
    """The reader's settings: ``base`` as given; the model's input size only where ``base`` sets none."""
    from fsmde_core.data.config import DataConfig

    cfg = base if base is not None else DataConfig()
    changes: dict[str, Any] = {}
    if size is not None and cfg.size is None:
        changes.update(width=int(size[0]), height=int(size[1]))
    if gt == "synthetic":
        changes["require_lidar"] = False  # LiDAR is not the reference then; keep every set
    return replace(cfg, **changes) if changes else cfg


def _bag_max_depth(bags: list[Path], config: Any) -> float:
    """The recording rig's max depth (rig YAML, else the reader's default)."""
    from fsmde_core.data.bag import BagSource

    return float(BagSource(bags, config).layout(bags[0]).max_depth)


def refuse_camera_only(bags: list[Path], config: Any) -> None:
    """``--gt lidar`` on a bag without a LiDAR topic: one line, instead of a report with no valid pixel."""
    from fsmde_core.data.bag import BagSource

    source = BagSource(bags, config)
    for bag in bags:
        if source.layout(bag).camera_only:
            raise EvalError(f"bag {bag} has no LiDAR topic (a camera-only bag): --gt lidar needs one; use --gt "
                            "synthetic for a synthetic bag, or evaluate on a recording with LiDAR")


def _frame_samples(bags: list[Path], config: Any, max_frames: int | None) -> Iterator[Any]:
    from fsmde_core.data.bag import BagSource

    samples = iter(BagSource(bags, config))
    return islice(samples, max_frames) if max_frames is not None else samples


def _no_set_error(bags: list[Path], config: Any, gt: str) -> EvalError:
    """Name the real cause: incomplete camera sets (with the stamp spread) or missing LiDAR sweeps.

    The reader only counts what it dropped; one survey of the bag's stamps
    (:func:`fsmde_core.data.inspect.explain_no_sets`) says which setting fixes it.
    """
    from fsmde_core.data.inspect import explain_no_sets

    why = explain_no_sets(bags, config, need_lidar=gt == "lidar" and config.require_lidar)
    return EvalError(f"no synchronised surround set in {', '.join(map(str, bags))}: {why}")


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/Inf -> null, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _summarise(acc: _Accumulator, mode: str, gt: str, cap: float, source: str) -> dict[str, Any]:
    """The metrics.json dict: per camera = mean over frames, mean = mean over cameras."""
    per_camera: dict[str, dict[str, float]] = {}
    keys = [*METRIC_KEYS, *(k for k in BOUNDARY_KEYS if k in acc.per_frame[0])]
    with quiet_nan_warnings():
        for k, name in enumerate(acc.names):
            per_camera[name] = {key: float(np.nanmean([f[key][k] for f in acc.per_frame])) for key in keys}
        mean = {key: float(np.nanmean([per_camera[n][key] for n in acc.names])) for key in keys}
    mean["cross_view"] = nanmean(cv.mean for cv in acc.cross_view)
    pairs = {}
    for pair, label in acc.pair_names.items():
        pairs[label] = {
            "pred": nanmean(cv.pairs.get(pair, math.nan) for cv in acc.cross_view),
            "pred_inliers": nanmean(cv.inliers.get(pair, math.nan) for cv in acc.cross_view),
            "gt": nanmean(cv.pairs.get(pair, math.nan) for cv in acc.cross_view_gt),
        }
    return _clean({
        "mode": mode,
        "gt": gt,
        "cap": float(cap),
        "frames": len(acc.per_frame),
        "mean": mean,
        "per_camera": per_camera,
        "cross_view_pairs": pairs,
        "cross_view_gt": nanmean(cv.mean for cv in acc.cross_view_gt) if acc.cross_view_gt else None,
        "scale": _scale_summary(acc),
        "confidence_deciles": (None if acc.confidence_count is None or acc.confidence_err_sum is None
                               else abs_rel_by_confidence(acc.confidence_count, acc.confidence_err_sum)),
        "source": source,
        **({"reflective": acc.reflective.summary()} if acc.reflective is not None else {}),
    })


def _scale_summary(acc: _Accumulator) -> dict[str, Any]:
    """Per-image scale error: over all images of the run, and per camera (its images over frames)."""
    factors = np.stack(acc.scale_factors)  # (frames, cameras)
    return {"overall": scale_error_summary(factors),
            "per_camera": {name: scale_error_summary(factors[:, k]) for k, name in enumerate(acc.names)}}


def _evaluate_frame(
    acc: _Accumulator, sample: Any, predictor: Predictor, gt: str, mode: str, cap: float, min_depth: float,
) -> None:
    """Predict, align, score one surround set and keep what the report needs."""
    from fsmde_core.report import MosaicFrame

    gt_depth = _ground_truth(sample, gt)
    confidence = None
    if predictor.predict_with_confidence is not None:
        raw, confidence = predictor.predict_with_confidence(sample)
    else:
        raw = predictor.predict(sample)
    valid = ~np.asarray(sample.masks, dtype=bool)
    aligned = align_depth(raw, gt_depth, valid, mode, cap, pred_is_inverse=predictor.inverse)
    metrics = depth_metrics(aligned, gt_depth, valid, cap, min_depth)
    if gt == "synthetic":  # dense GT: where objects end is known, so score the boundary band apart
        band = boundary_mask(gt_depth, sample.gt_labels)
        metrics.update(boundary_abs_rel(aligned, gt_depth, band, valid, cap, min_depth))
    acc.per_frame.append(metrics)
    if sample.gt_reflective is not None:
        if acc.reflective is None:
            acc.reflective = ReflectiveSplit()
        acc.reflective.add(aligned, gt_depth, valid, np.asarray(sample.gt_reflective, dtype=bool), cap, min_depth)
    acc.scale_factors.append(np.asarray(image_scale_factors(aligned, gt_depth, valid, cap, min_depth)))
    if confidence is not None:
        acc.add_confidence(*confidence_histogram(aligned, gt_depth, confidence, valid, cap, min_depth))
    rig = sample.rig()
    scored = np.where(np.isnan(aligned), np.nan, np.clip(aligned, min_depth, cap))
    acc.cross_view.append(cross_view_consistency(scored, rig, sample.masks))
    if sample.gt_depth is not None:
        dense = np.where(sample.gt_depth <= cap, sample.gt_depth, np.nan)  # sky / beyond cap: not scored
        acc.cross_view_gt.append(cross_view_consistency(dense, rig, sample.masks))
    if not acc.pair_names:
        acc.ring = rig.ring_order()
        acc.pair_names = {(i, j): f"{acc.names[i]}/{acc.names[j]}" for i, j in rig.adjacent_pairs()}
    mask = eval_mask(gt_depth, valid, cap) & np.isfinite(aligned)
    err = acc.add_error_map(aligned, gt_depth, mask, cap, min_depth)
    if len(acc.mosaic) < MOSAIC_FRAMES:
        acc.mosaic.append(MosaicFrame(title=str(sample.source), images=sample.images.copy(), pred=scored,
                                      gt=np.array(gt_depth, dtype=np.float32), error=err, masks=~valid))


# ============================================================ corruptions
def corrupt_sample(sample: Any, name: str, severity: int, frame_index: int, seed: int = CORRUPTION_SEED) -> Any:
    """The sample with every camera image corrupted; GT, masks and calibration untouched.

    Each image's stream is seeded from (seed, corruption, severity, frame, camera
    name): reproducible, independent of the camera order the checkpoint uses.
    """
    from fsmde_core.corruptions import corrupt, corruption_rng

    images = np.stack([
        corrupt(image, name, severity, corruption_rng(seed, name, severity, frame_index, zlib.crc32(cam.encode())))
        for image, cam in zip(sample.images, sample.camera_names, strict=True)
    ])
    return replace(sample, images=images)


def _score(sample: Any, predictor: Predictor, gt: str, mode: str, cap: float,
           min_depth: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-camera Eigen metrics of one surround set and the depth as scored (aligned, clipped)."""
    gt_depth = _ground_truth(sample, gt)
    valid = ~np.asarray(sample.masks, dtype=bool)
    aligned = align_depth(predictor.predict(sample), gt_depth, valid, mode, cap, pred_is_inverse=predictor.inverse)
    scored = np.where(np.isnan(aligned), np.nan, np.clip(aligned, min_depth, cap))
    return depth_metrics(aligned, gt_depth, valid, cap, min_depth), scored


def depth_estimation_error(abs_rel: float | None, a1: float | None) -> float:
    """RoboDepth's DEE = (AbsRel - δ1 + 1) / 2: 0 for a perfect prediction, NaN when either is unknown."""
    if abs_rel is None or a1 is None:
        return math.nan
    return (float(abs_rel) - float(a1) + 1.0) / 2.0


def _camera_mean(per_frame: list[dict[str, np.ndarray]], n_cameras: int) -> dict[str, float]:
    """Per camera = mean over frames, then the mean of the cameras (as the clean ``mean``), plus DEE."""
    with quiet_nan_warnings():
        mean = {key: float(np.nanmean([np.nanmean([f[key][k] for f in per_frame]) for k in range(n_cameras)]))
                for key in METRIC_KEYS}
    mean["dee"] = depth_estimation_error(mean["abs_rel"], mean["a1"])
    return mean


def robustness_summary(clean: dict[str, Any], corruptions: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """RoboDepth's mDEE and mRR from the clean mean metrics and ``{name: {severity: metrics}}``.

    DEE_c = mean over the evaluated severities of c; mDEE = mean over corruptions
    of DEE_c; RR_c = (1 - DEE_c) / (1 - DEE_clean); mRR = mean over corruptions of
    RR_c (NaN when DEE_clean >= 1: a model that useless has no rate to keep).
    Only with all five severities of all 18 corruptions is it RoboDepth's number.
    """
    dee_clean = depth_estimation_error(clean.get("abs_rel"), clean.get("a1"))
    per: dict[str, dict[str, float]] = {}
    with quiet_nan_warnings():
        for name, levels in corruptions.items():
            dee = float(np.nanmean([_num(m.get("dee")) for m in levels.values()]))
            per[name] = {"dee": dee, "rr": (1.0 - dee) / (1.0 - dee_clean) if dee_clean < 1.0 else math.nan}
        return {
            "dee_clean": dee_clean,
            "mdee": float(np.nanmean([v["dee"] for v in per.values()])),
            "mrr": float(np.nanmean([v["rr"] for v in per.values()])),
            "corruptions": len(per),
            "severities": sum(len(levels) for levels in corruptions.values()),
            "per_corruption": per,
        }


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _picture_severities(pairs: list[tuple[str, int]]) -> dict[str, int]:
    """Per corruption, the evaluated severity closest to PICTURE_SEVERITY (3 unless only others were asked)."""
    chosen: dict[str, int] = {}
    for name, severity in pairs:
        best = chosen.get(name)
        if best is None or abs(severity - PICTURE_SEVERITY) < abs(best - PICTURE_SEVERITY):
            chosen[name] = severity
    return chosen


def _corruption_pass(
    pairs: list[tuple[str, int]], frames: Any, predictor: Predictor, gt: str, mode: str, cap: float,
    min_depth: float, picture_camera: int, seed: int, progress: bool,
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, Any]]:
    """Score the same frames under each (corruption, severity): ``{name: {"S": metrics}}`` and the pictures.

    ``frames`` is a callable returning a fresh iterator over the (reordered) clean
    samples: the bag is read again per corruption instead of held in memory.
    """
    from fsmde_core.report import CorruptionPicture

    results: dict[str, dict[str, dict[str, float]]] = {}
    pictures: dict[str, CorruptionPicture] = {}
    picture_at = _picture_severities(pairs)
    bar = tqdm(pairs, desc="corruptions", unit="corruption", disable=not progress, dynamic_ncols=True)
    for name, severity in bar:
        bar.set_postfix_str(f"{name}@{severity}")
        per_frame: list[dict[str, np.ndarray]] = []
        n_cameras = 0
        for index, clean in enumerate(frames()):
            sample = corrupt_sample(clean, name, severity, index, seed)
            metrics, scored = _score(sample, predictor, gt, mode, cap, min_depth)
            per_frame.append(metrics)
            n_cameras = len(sample.camera_names)
            if index == 0 and picture_at[name] == severity:
                k = picture_camera
                pictures[name] = CorruptionPicture(name=name, severity=severity, camera=str(sample.camera_names[k]),
                                                   image=sample.images[k], pred=scored[k],
                                                   mask=np.asarray(sample.masks[k], dtype=bool))
        results.setdefault(name, {})[str(severity)] = _camera_mean(per_frame, n_cameras)
    return results, pictures


def _corruption_pairs(corruptions: str | Iterable[tuple[str, int]] | None) -> list[tuple[str, int]]:
    """A spec string or (name, severity) pairs -> validated pairs; EvalError (one line) names the bad one."""
    from fsmde_core.corruptions import SEVERITIES, parse_corruption_spec

    if corruptions is None:
        return []
    try:
        if isinstance(corruptions, str):
            return parse_corruption_spec(corruptions)
        pairs = [(str(n), int(s)) for n, s in corruptions]
        if not pairs:
            raise ValueError("no corruption given")
        bad = [f"{n}@{s}" for n, s in pairs if s not in SEVERITIES]
        if bad:
            raise ValueError(f"severity must be 1..5, got {', '.join(bad)}")
        return parse_corruption_spec(",".join(f"{n}@{s}" for n, s in pairs))
    except ValueError as exc:
        raise EvalError(f"--corruption: {exc}") from exc


def evaluate(
    checkpoint_or_teacher: str | Path | Any,
    bags: str | Path | Iterable[str | Path],
    out_dir: str | Path,
    gt: str = "lidar",
    mode: str | None = None,
    cap: float | None = None,
    max_frames: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    data_config: Any = None,
    min_depth: float = DEFAULT_MIN_DEPTH,
    corruptions: str | Iterable[tuple[str, int]] | None = None,
    corruption_seed: int = CORRUPTION_SEED,
) -> dict[str, Any]:
    """Evaluate a student checkpoint or a teacher on rosbag2 recordings.

    Args:
        checkpoint_or_teacher: run directory / ``student.safetensors``, or a
            built teacher (:func:`fsmde_core.models.teachers.build_teacher`).
        bags: one or more rosbag2 recordings.
        out_dir: report directory (created).
        gt: ``lidar`` (sparse projected LiDAR) or ``synthetic`` (dense GT topics).
        mode: ``metric`` / ``median`` / ``affine``; None = ``metric`` for a
            student, ``affine`` for a teacher (relative inverse depth).
        cap: depth cap in metres; None = the student's ``max_depth`` (a teacher:
            the bag rig's max depth).
        max_frames: evaluate at most this many surround sets.
        data_config: :class:`~fsmde_core.data.config.DataConfig` for topics /
            calibration / tolerances (None = defaults); without a size, the
            student's input size is used (a teacher: native size).
            ``fsmde eval --checkpoint RUN`` passes the run's own data section.
        corruptions: a spec (``"all"``, ``"fog"``, ``"fog@3,dark@5"``; see
            :func:`fsmde_core.corruptions.parse_corruption_spec`) or (name, severity)
            pairs: score the same frames again with corrupted images (module docstring).
        corruption_seed: base seed of the corruption random streams.

    Returns (and writes to ``out_dir/metrics.json``)::

        {"mode", "gt", "cap", "frames",
         "mean": {abs_rel, sq_rel, rmse, rmse_log, a1, a2, a3, cross_view},
         "per_camera": {name: {abs_rel, ..., a3}},
         # with gt="synthetic", "mean" and each camera also hold abs_rel_boundary / abs_rel_interior:
         # AbsRel within metrics.BOUNDARY_RADIUS px of a GT depth discontinuity or label boundary / elsewhere
         "cross_view_pairs": {"a/b": {"pred", "pred_inliers", "gt"}},   # adjacent pairs
         "cross_view_gt": float | null,   # dense-GT floor, null without dense GT
         "scale": {"overall": S, "per_camera": {name: S}},   # per-image s = median(pred/gt) of the scored depth,
                  # S = {bias_log, bias_factor, spread_log, p10, p90, images} (metrics.scale_error_summary)
         "confidence_deciles": [{confidence_min, confidence_max, abs_rel, pixels, fraction}, ...]
                               | null,   # least confident first; null for a teacher (no confidence)
         "source": "checkpoint:<path>" | "teacher:<identity>",
         "conditions": {bag: "clear" | "night" | "fog" | "rain" | "dusk" | null},  # synthetic bags say
                       # what they were rendered under (fsmde synth --condition); null: a real recording
         # only when the bag has reflective masks (fsmde synth --reflective), pooled over every scored pixel:
         "reflective": {"inside" | "outside" | "all": {abs_rel, sq_rel, rmse, a1, pixels},
                        "fraction": inside pixels / all pixels},   # see ReflectiveSplit
         # only with corruptions:
         "corruptions": {name: {"S": {abs_rel, ..., a3, dee}}},   # S = severity "1".."5"; mean of cameras
         "robustness": {"dee_clean", "mdee", "mrr", "corruptions": n, "severities": n,
                        "per_corruption": {name: {"dee", "rr"}}, "seed": int}}   # see robustness_summary

        NaN (e.g. no overlap, no valid GT) is written as null.
    """
    from fsmde_core.report import write_report

    if gt not in GT_KINDS:
        raise EvalError(f"unknown ground truth {gt!r}; expected one of {GT_KINDS}")
    if mode is not None and mode not in MODES:
        raise EvalError(f"unknown mode {mode!r}; expected one of {MODES}")
    if cap is not None and not (math.isfinite(cap) and cap > min_depth):
        raise EvalError(f"cap must be a finite depth above {min_depth} m, got {cap}")
    if max_frames is not None and max_frames < 1:
        raise EvalError(f"max_frames must be >= 1, got {max_frames}")
    pairs = _corruption_pairs(corruptions)
    bag_list = [Path(bags)] if isinstance(bags, (str, Path)) else [Path(b) for b in bags]
    if not bag_list:
        raise EvalError("no bag to evaluate on")
    for b in bag_list:
        if not b.exists():
            raise EvalError(f"bag not found: {b}")
    if isinstance(checkpoint_or_teacher, (str, Path)):
        predictor = student_predictor(checkpoint_or_teacher, device)
    else:
        predictor = teacher_predictor(checkpoint_or_teacher, device)
    mode = mode or predictor.default_mode
    config = _data_config(data_config, predictor.size, gt)
    if gt == "lidar":
        refuse_camera_only(bag_list, config)
    cap = float(cap if cap is not None else predictor.cap or _bag_max_depth(bag_list, config))

    acc: _Accumulator | None = None
    keep = bool(pairs) and max_frames is not None and max_frames <= CACHED_FRAMES
    kept: list[Any] = []
    bar = tqdm(_frame_samples(bag_list, config, max_frames), total=max_frames, desc="eval", unit="frame",
               disable=not progress, dynamic_ncols=True)
    for raw_sample in bar:
        sample = _reorder(raw_sample, predictor.camera_names)
        if acc is None:
            acc = _Accumulator(names=list(sample.camera_names))
        _evaluate_frame(acc, sample, predictor, gt, mode, cap, min_depth)
        if keep:
            kept.append(sample)
    if acc is None:
        raise _no_set_error(bag_list, config, gt)
    result = _summarise(acc, mode, gt, cap, predictor.source)
    result["conditions"] = bag_conditions(bag_list)
    pictures: dict[str, Any] = {}
    if pairs:
        def clean_frames() -> Iterator[Any]:
            if keep:
                return iter(kept)
            return (_reorder(s, predictor.camera_names) for s in _frame_samples(bag_list, config, max_frames))

        per_corruption, pictures = _corruption_pass(
            pairs, clean_frames, predictor, gt, mode, cap, min_depth, acc.ring[0] if acc.ring else 0,
            corruption_seed, progress)
        result["corruptions"] = _clean(per_corruption)
        result["robustness"] = _clean({**robustness_summary(result["mean"], per_corruption),
                                       "seed": int(corruption_seed)})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    write_report(out, result, acc.names, acc.ring, acc.mosaic, acc.err_sum, acc.err_count, bag_list,
                 corruption_pictures=pictures)
    return result



# ====================================================================== CLI
def run_data_section(checkpoint: Path) -> dict[str, Any] | None:
    """The ``data`` section of the run that produced ``checkpoint`` (its ``config.json``), or None.

    A run directory holds ``config.json`` beside ``student.safetensors``; a bare
    weights file copied elsewhere has none, and the defaults apply.
    """
    from fsmde_core.checkpoint import read_json

    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    path = run_dir / "config.json"
    if not path.is_file():
        return None
    data = read_json(path, "run config").get("data")
    return dict(data) if isinstance(data, dict) else None


def eval_data_config(args: argparse.Namespace) -> Any:
    """DataConfig for ``fsmde eval``: the run's data section <- --config's <- ``data.*`` overrides."""
    from fsmde_core.config import ConfigError, load_data_config

    base = run_data_section(args.checkpoint) if args.checkpoint is not None and args.checkpoint.exists() else None
    if base is None and args.config is None and not args.overrides:
        return None
    source = str(args.config or (args.checkpoint if base is not None else "<overrides>"))
    try:
        return load_data_config(base, args.config, list(args.overrides), source=source)
    except ConfigError as exc:
        raise EvalError(str(exc)) from exc


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fsmde eval``."""
    from fsmde_core.models.teachers import TEACHER_KINDS

    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", type=Path, help="student run directory or student.safetensors")
    what.add_argument("--teacher", choices=sorted(TEACHER_KINDS),
                      help="evaluate a teacher instead (relative depth: affine mode by default)")
    parser.add_argument("--teacher-option", action="append", default=[], metavar="KEY=VALUE",
                        help="teacher constructor option (repeatable), e.g. path_or_id=/models/da2-small")
    parser.add_argument("--bag", type=Path, action="append", required=True,
                        help="rosbag2 recording (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="report directory")
    parser.add_argument("--gt", choices=GT_KINDS, default="lidar",
                        help="ground truth: projected LiDAR (default) or the synthetic dense depth topics")
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="alignment: metric (student default), median, affine (teacher default)")
    parser.add_argument("--cap", type=float, default=None,
                        help="depth cap in metres (default: the student's max_depth / the rig's)")
    parser.add_argument("--max-frames", type=int, default=None, help="evaluate at most N surround sets")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or auto (cuda when present)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--corruption", default=None, metavar="all|NAME[@SEVERITY][,..]",
                        help="also score the frames with corrupted images (RoboDepth/KITTI-C suite): 'all' = "
                             "18 corruptions x 5 severities, NAME = its 5 severities, NAME@S one; writes mDEE/mRR")
    parser.add_argument("--corruption-seed", type=int, default=CORRUPTION_SEED,
                        help="base seed of the corruption noise (default %(default)s)")
    parser.add_argument("--config", type=Path, default=None,
                        help="training YAML whose data section to read the bag with (default: the run's own "
                             "config.json with --checkpoint, else the defaults)")
    parser.add_argument("overrides", nargs="*", metavar="data.key=value", default=[],
                        help="data settings over the run's, anywhere on the line, e.g. data.sync_tolerance_ms=25")


def _print_summary(result: dict[str, Any], out: Path) -> None:
    m = result["mean"]

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    print(f"fsmde eval: {result['frames']} frames, mode {result['mode']}, gt {result['gt']}, "
          f"cap {result['cap']:g} m")
    print("  " + "  ".join(f"{k} {f(m[k])}" for k in (*METRIC_KEYS, "cross_view")))
    refl = result.get("reflective")
    if refl:
        print(f"  reflective pixels {f(refl['fraction'])} of {refl['all']['pixels']} (pooled over pixels):")
        for region in REFLECTIVE_REGIONS:
            print(f"    {region:<7}  " + "  ".join(f"{k} {f(refl[region][k])}" for k in REFLECTIVE_KEYS))
    robust = result.get("robustness")
    if robust:
        print(f"  corruptions: {robust['corruptions']} ({robust['severities']} corruption@severity passes): "
              f"mDEE {f(robust['mdee'])} (clean DEE {f(robust['dee_clean'])}), mRR {f(robust['mrr'])}")
    print(f"  report: {out / 'report.md'}")


def run_eval(args: argparse.Namespace) -> int:
    """``fsmde eval``: 0 = done, 2 = cannot evaluate (message on stderr)."""
    from fsmde_core.checkpoint import CheckpointError
    from fsmde_core.data.errors import BagError

    try:
        if args.teacher_option and not args.teacher:
            raise EvalError("--teacher-option needs --teacher")
        _corruption_pairs(args.corruption)  # a bad spec fails before any model is built
        if args.teacher:
            options = parse_teacher_options(args.teacher_option)
            what: Any = build_eval_teacher(args.teacher, options, args.device)
        else:
            what = args.checkpoint
        data_config = eval_data_config(args)
        result = evaluate(what, args.bag, args.out, gt=args.gt, mode=args.mode, cap=args.cap,
                          max_frames=args.max_frames, device=args.device, progress=not args.no_progress,
                          data_config=data_config, corruptions=args.corruption,
                          corruption_seed=args.corruption_seed)
    except (EvalError, CheckpointError, BagError, FileNotFoundError) as exc:
        print(f"fsmde eval: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as exc:  # teacher refusals, bad configs, device errors
        print(f"fsmde eval: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    _print_summary(result, Path(args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fsmde eval")
    add_eval_arguments(parser)
    return run_eval(parser.parse_intermixed_args(argv))


if __name__ == "__main__":
    sys.exit(main())
