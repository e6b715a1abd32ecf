"""``fsmde eval``: depth metrics, cross-view consistency and a report with pictures.

What is measured (DESIGN.md §5 "Evaluation"):

* **Eigen metrics** per image — AbsRel, SqRel, RMSE, RMSElog, δ<1.25ⁿ — over
  pixels whose ground truth is finite, > 0, at most ``cap`` metres and not on
  the ego vehicle; prediction and GT are clipped to ``[min_depth, cap]`` (the
  monodepth2 / Eigen protocol). Per camera = mean over frames, ``mean`` =
  mean of the cameras (each camera weighs the same, whatever its GT density).
* **Alignment modes**, applied per image before the metrics:

  - ``metric``: none — what the runtime node publishes is what is scored.
  - ``median``: ``pred * median(gt) / median(pred)`` (monodepth2's protocol for
    scale-ambiguous models; it hides a global scale error).
  - ``affine``: least-squares scale and shift in *inverse-depth* space,
    ``s * (1/pred) + t ≈ 1/gt`` over valid pixels, then ``depth = 1/(s/pred + t)``.
    This is the standard protocol for relative-depth models (MiDaS, Depth
    Anything), whose output is affine-invariant inverse depth; fitting in
    depth space instead would let far pixels dominate and is not what those
    papers report. Teachers are evaluated this way by default. Degenerate
    fits are guarded: with fewer than 2 valid pixels no fit exists (the image
    is skipped, metrics NaN); a constant prediction (zero variance) gets the
    best constant ``s = 0, t = mean(1/gt)``; aligned inverse depth ``<= 0``
    (beyond infinity) becomes ``cap``.

* **Cross-view consistency** (our own metric, VRKD should lower it): for each
  adjacent camera pair of the ring (:meth:`fsmde_core.rig.Rig.adjacent_pairs`)
  and both directions, camera i's depth is projected into camera j
  (:func:`fsmde_core.geometry.cross_view_projection`) and compared with j's
  depth at the nearest pixel: ``|z_i→j − d_j| / d_j``. Ego pixels of either
  camera are excluded, and so are points with a relative difference above
  ``0.5``: those are almost always occlusions (i sees a surface that an object
  hides from j) rather than depth errors, and one occlusion boundary would
  otherwise dominate the mean. The metric is therefore an *inlier* consistency
  error; a gross per-camera scale error above 50 % would be dropped as
  occlusion, which the depth metrics catch anyway. The error is averaged over
  both directions, then pairs, then frames. It is computed on the depth as
  scored (after the mode's alignment, so in ``median``/``affine`` mode the
  per-image alignment partially hides per-camera scale disagreement), and on
  the dense synthetic ground truth when the bag has it: GT is not perfectly
  consistent either (nearest-pixel sampling, depth discontinuities), so its
  value is the floor a perfect model would reach.

Outputs: ``REPORT_DIR/metrics.json`` (schema in :func:`evaluate`) and
``REPORT_DIR/report.md`` with ``depth_mosaic.png``, ``error_maps.png`` and
``per_camera_metrics.png`` (see :mod:`fsmde_core.report`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from fsmde_core.geometry import cross_view_projection
from fsmde_core.rig import Rig, RigCamera

log = logging.getLogger(__name__)

METRIC_KEYS: tuple[str, ...] = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
MODES: tuple[str, ...] = ("metric", "median", "affine")
GT_KINDS: tuple[str, ...] = ("lidar", "synthetic")
#: Lower clip of prediction and GT (metres), as in the Eigen / monodepth2 protocol.
DEFAULT_MIN_DEPTH = 1e-3
#: Relative difference above which a cross-view correspondence counts as an occlusion.
OCCLUSION_REL_DIFF = 0.5
#: Frames whose pictures go into ``depth_mosaic.png``.
MOSAIC_FRAMES = 2


class EvalError(ValueError):
    """The evaluation cannot run as asked (bad input, missing GT or camera); message says why."""


@contextmanager
def _quiet_nan_warnings() -> Iterator[None]:
    """nanmedian / nanmean of an all-NaN slice warn; an image or camera without valid GT is expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# ===================================================================== metrics
def eval_mask(gt: np.ndarray, valid: np.ndarray | None, cap: float) -> np.ndarray:
    """Pixels that count: finite GT in ``(0, cap]`` and ``valid`` (not ego)."""
    gt = np.asarray(gt)
    with np.errstate(invalid="ignore"):
        mask = np.isfinite(gt) & (gt > 0) & (gt <= cap)
    if valid is not None:
        mask &= np.asarray(valid, dtype=bool)
    return mask


def _flat_images(a: np.ndarray) -> np.ndarray:
    """(..., H, W) -> (B, H*W) float64 so per-image reductions are one vectorised call."""
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(-1, a.shape[-2] * a.shape[-1]) if a.ndim >= 2 else a.reshape(1, -1)


def _masked_mean(values: np.ndarray, mask: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mask, values, 0.0).sum(axis=1) / np.where(n > 0, n, np.nan)


def depth_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray | None = None,
    cap: float = 80.0,
    min_depth: float = DEFAULT_MIN_DEPTH,
) -> dict[str, Any]:
    """Eigen depth metrics per image.

    Args:
        pred: (..., H, W) predicted depth in metres (NaN pixels are left out:
            a teacher's "no opinion"; +Inf is clipped to ``cap``).
        gt: same shape; NaN / Inf / <= 0 / > cap pixels are not scored.
        valid: optional bool mask, False = ego pixel / not to be scored.
        cap: evaluation depth cap in metres; ``min_depth``: lower clip.

    Returns:
        ``{key: value}`` for :data:`METRIC_KEYS` plus ``"count"`` (scored
        pixels). Values are floats for one (H, W) image, else arrays of the
        leading shape. An image with no scored pixel gives NaN.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: {pred.shape} vs {gt.shape}")
    lead = pred.shape[:-2]
    mask = _flat_images(eval_mask(gt, valid, cap) & ~np.isnan(pred))
    p = np.clip(_flat_images(pred), min_depth, cap)
    g = np.clip(np.where(mask, _flat_images(gt), 1.0), min_depth, cap)
    p = np.where(mask, p, 1.0)
    n = mask.sum(axis=1).astype(np.float64)
    ratio = np.maximum(g / p, p / g)
    diff = g - p
    out = {
        "abs_rel": _masked_mean(np.abs(diff) / g, mask, n),
        "sq_rel": _masked_mean(diff * diff / g, mask, n),
        "rmse": np.sqrt(_masked_mean(diff * diff, mask, n)),
        "rmse_log": np.sqrt(_masked_mean((np.log(g) - np.log(p)) ** 2, mask, n)),
        "a1": _masked_mean(ratio < 1.25, mask, n),
        "a2": _masked_mean(ratio < 1.25**2, mask, n),
        "a3": _masked_mean(ratio < 1.25**3, mask, n),
        "count": n,
    }
    if not lead:
        return {k: float(v[0]) for k, v in out.items()}
    return {k: v.reshape(lead) for k, v in out.items()}


def median_scale(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-image ``median(gt) / median(pred)`` over ``mask``; (B,) with NaN where undefined."""
    P, G, M = _flat_images(pred), _flat_images(gt), _flat_images(mask).astype(bool)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet_nan_warnings():
        med_p = np.nanmedian(np.where(M, P, np.nan), axis=1)
        med_g = np.nanmedian(np.where(M, G, np.nan), axis=1)
        return np.where(med_p > 0, med_g / med_p, np.nan)


def affine_fit(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image least squares ``s * x + t ≈ y`` over ``mask`` (closed form); (B,) each.

    Guards: fewer than 2 points -> NaN (no fit); zero variance of ``x`` (a
    constant prediction) -> ``s = 0, t = mean(y)``, the best constant.
    """
    X, Y, M = _flat_images(x), _flat_images(y), _flat_images(mask).astype(bool)
    n = M.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        nn_ = np.where(n > 0, n, np.nan)
        mx = np.where(M, X, 0.0).sum(axis=1) / nn_
        my = np.where(M, Y, 0.0).sum(axis=1) / nn_
        dx = np.where(M, X - mx[:, None], 0.0)
        dy = np.where(M, Y - my[:, None], 0.0)
        var = (dx * dx).sum(axis=1)
        cov = (dx * dy).sum(axis=1)
        # Relative threshold: "constant" must not depend on the units of x.
        flat = var <= 1e-12 * np.maximum((np.where(M, X, 0.0) ** 2).sum(axis=1), 1e-300)
        s = np.where(flat, 0.0, cov / np.where(flat, 1.0, var))
        t = my - s * mx
    few = n < 2
    return np.where(few, np.nan, s), np.where(few, np.nan, t)


def align_depth(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray | None,
    mode: str,
    cap: float,
    pred_is_inverse: bool = False,
) -> np.ndarray:
    """Align a prediction to GT per image (see the module docstring for the modes).

    Args:
        pred: (..., H, W) depth, or relative inverse depth if ``pred_is_inverse``
            (teachers: larger = closer, 0 = infinitely far).
        gt, valid, cap: as in :func:`depth_metrics`; only scored pixels drive the fit.

    Returns:
        Depth in metres, same shape; NaN where ``pred`` is NaN, or everywhere in
        an image that cannot be aligned (no valid GT).
    """
    if mode not in MODES:
        raise ValueError(f"unknown alignment mode {mode!r}; expected one of {MODES}")
    pred = np.asarray(pred, dtype=np.float64)
    shape = pred.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = 1.0 / pred if pred_is_inverse else pred
        inv = pred if pred_is_inverse else 1.0 / pred
    if mode == "metric":
        return depth
    mask = eval_mask(gt, valid, cap) & np.isfinite(inv)
    if mode == "median":
        s = median_scale(depth, gt, mask & np.isfinite(depth))
        return (_flat_images(depth) * s[:, None]).reshape(shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        s, t = affine_fit(inv, 1.0 / np.asarray(gt, dtype=np.float64), mask)
        aligned_inv = _flat_images(inv) * s[:, None] + t[:, None]
        out = np.where(aligned_inv > 0, 1.0 / aligned_inv, cap)
    out = np.where(np.isnan(aligned_inv), np.nan, out)
    return out.reshape(shape)


# ========================================================= cross-view metric
@dataclass
class CrossViewResult:
    """Cross-view consistency of one surround frame.

    Attributes:
        pairs: ``(i, j) -> error`` for each adjacent pair (mean of both
            directions; NaN when the two views share no valid overlap).
        inliers: ``(i, j) -> fraction`` of overlap points kept (not occlusions).
    """

    pairs: dict[tuple[int, int], float]
    inliers: dict[tuple[int, int], float]

    @property
    def mean(self) -> float:
        return _nanmean(list(self.pairs.values()))


def _nanmean(values: Iterable[float]) -> float:
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


def directional_consistency(
    depth_src: np.ndarray,
    depth_dst: np.ndarray,
    cam_src: RigCamera,
    cam_dst: RigCamera,
    mask_src: np.ndarray | None = None,
    mask_dst: np.ndarray | None = None,
    max_rel: float = OCCLUSION_REL_DIFF,
    stride: int = 1,
) -> tuple[float, int, int]:
    """Mean ``|z_src→dst − d_dst| / d_dst`` over the overlap, src -> dst only.

    Returns:
        (mean relative difference of the inliers or NaN, inliers, overlap points).
    """
    src = np.array(depth_src, dtype=np.float64)
    if mask_src is not None:
        src[np.asarray(mask_src, dtype=bool)] = np.nan
    uv, z = cross_view_projection(src, cam_src, cam_dst, stride=stride)
    u = np.floor(uv[:, 0] + 0.5).astype(np.int64)
    v = np.floor(uv[:, 1] + 0.5).astype(np.int64)
    d = np.asarray(depth_dst, dtype=np.float64)[v, u]
    ok = np.isfinite(d) & (d > 0)
    if mask_dst is not None:
        ok &= ~np.asarray(mask_dst, dtype=bool)[v, u]
    rel = np.abs(z[ok] - d[ok]) / d[ok]
    inl = rel <= max_rel
    n_in = int(inl.sum())
    return (float(rel[inl].mean()) if n_in else math.nan), n_in, int(ok.sum())


def cross_view_consistency(
    depths: np.ndarray,
    rig: Rig,
    masks: np.ndarray | None = None,
    pairs: list[tuple[int, int]] | None = None,
    max_rel: float = OCCLUSION_REL_DIFF,
    stride: int = 1,
) -> CrossViewResult:
    """Cross-view consistency of (N, H, W) depths of ``rig``'s cameras (same order).

    ``pairs`` defaults to the rig's adjacency ring. Non-finite / <= 0 depth
    (sky, no GT) and ``masks`` (True = ego) pixels never take part.
    """
    if len(depths) != len(rig.cameras):
        raise ValueError(f"{len(depths)} depth maps for a rig of {len(rig.cameras)} cameras")
    pairs = rig.adjacent_pairs() if pairs is None else pairs
    errs: dict[tuple[int, int], float] = {}
    inliers: dict[tuple[int, int], float] = {}
    for i, j in pairs:
        directions = [(i, j), (j, i)]
        results = [
            directional_consistency(depths[a], depths[b], rig.cameras[a], rig.cameras[b],
                                    None if masks is None else masks[a], None if masks is None else masks[b],
                                    max_rel, stride)
            for a, b in directions
        ]
        errs[(i, j)] = _nanmean(r[0] for r in results)
        total = sum(r[2] for r in results)
        inliers[(i, j)] = sum(r[1] for r in results) / total if total else math.nan
    return CrossViewResult(errs, inliers)


# ================================================================ predictors
@dataclass
class Predictor:
    """Something that turns a surround sample into per-camera depth.

    Attributes:
        source: what is evaluated, for metrics.json (checkpoint path or teacher identity).
        predict: sample -> (N, H, W) float array (depth, or inverse depth if ``inverse``).
        inverse: the prediction is relative inverse depth (teachers).
        camera_names: the camera order the model expects (None = the bag's order).
        size: (width, height) to read samples at (None = native).
        cap: default evaluation cap (None = the bag rig's max depth).
        default_mode: alignment mode when none is asked for.
    """

    source: str
    predict: Callable[[Any], np.ndarray]
    inverse: bool
    camera_names: list[str] | None
    size: tuple[int, int] | None
    cap: float | None
    default_mode: str


def _images_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def student_predictor(path: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """Load a student checkpoint (run dir or .safetensors) as a :class:`Predictor`."""
    from fsmde_core.checkpoint import load_student

    p = Path(path)
    if not p.exists():
        raise EvalError(f"checkpoint not found: {p}")
    dev = torch.device(device)
    model, cfg, meta = load_student(p, map_location=dev)
    names = meta.get("camera_names")
    if names is None:
        log.warning("%s: no camera_names in the student metadata; using the bag's camera order", p)

    def predict(sample: Any) -> np.ndarray:
        # One batched forward per surround set: the cameras are the batch.
        with torch.inference_mode():
            depth = model(_images_tensor(sample.images, dev)).depth
        return depth[:, 0].float().cpu().numpy()

    return Predictor(
        source=f"checkpoint:{p.resolve()}",
        predict=predict,
        inverse=False,
        camera_names=list(names) if names is not None else None,
        size=(cfg.input_width, cfg.input_height),
        cap=float(cfg.max_depth),
        default_mode="metric",
    )


def teacher_predictor(teacher: Any, device: str | torch.device = "cpu") -> Predictor:
    """Wrap a :class:`~fsmde_core.models.teachers.base.Teacher` (relative inverse depth)."""
    dev = torch.device(device)

    def predict(sample: Any) -> np.ndarray:
        n, h, w = sample.images.shape[:3]
        # The sample's ordinal seeds teachers that draw random degradations (the synthetic one),
        # so a frame gets the same teacher output here as in the training cache.
        seed = torch.full((n,), int(sample.source.index), dtype=torch.long)
        extras: dict[str, torch.Tensor] = {"seed": seed}
        if sample.gt_depth is not None:
            extras["gt_depth"] = torch.from_numpy(sample.gt_depth[:, None].astype(np.float32)).to(dev)
        with torch.inference_mode():
            inv = teacher.predict(_images_tensor(sample.images, dev), extras).inv_depth.float()
        if inv.shape[-2:] != (h, w):
            inv = torch.nn.functional.interpolate(inv, size=(h, w), mode="bilinear", align_corners=False)
        return inv[:, 0].cpu().numpy()

    return Predictor(
        source=f"teacher:{teacher.identity}",
        predict=predict,
        inverse=True,
        camera_names=None,
        size=None,
        cap=None,
        default_mode="affine",
    )


# ================================================================ the run
@dataclass
class _Accumulator:
    """Per-frame results and the few frames kept for pictures."""

    names: list[str]
    per_frame: list[dict[str, np.ndarray]] = field(default_factory=list)
    cross_view: list[CrossViewResult] = field(default_factory=list)
    cross_view_gt: list[CrossViewResult] = field(default_factory=list)
    err_sum: np.ndarray | None = None
    err_count: np.ndarray | None = None
    mosaic: list[Any] = field(default_factory=list)
    ring: list[int] = field(default_factory=list)
    pair_names: dict[tuple[int, int], str] = field(default_factory=dict)

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
    idx = [list(sample.camera_names).index(n) for n in names]
    return replace(
        sample,
        camera_names=list(names),
        images=sample.images[idx],
        camera_stamps_ns=sample.camera_stamps_ns[idx],
        models=[sample.models[k] for k in idx],
        T_base_cam=sample.T_base_cam[idx],
        sparse_depth=sample.sparse_depth[idx],
        gt_depth=None if sample.gt_depth is None else sample.gt_depth[idx],
        masks=sample.masks[idx],
    )


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
    with _quiet_nan_warnings():
        for k, name in enumerate(acc.names):
            per_camera[name] = {key: float(np.nanmean([f[key][k] for f in acc.per_frame]))
                                for key in METRIC_KEYS}
        mean = {key: float(np.nanmean([per_camera[n][key] for n in acc.names])) for key in METRIC_KEYS}
    mean["cross_view"] = _nanmean(cv.mean for cv in acc.cross_view)
    pairs = {}
    for pair, label in acc.pair_names.items():
        pairs[label] = {
            "pred": _nanmean(cv.pairs.get(pair, math.nan) for cv in acc.cross_view),
            "pred_inliers": _nanmean(cv.inliers.get(pair, math.nan) for cv in acc.cross_view),
            "gt": _nanmean(cv.pairs.get(pair, math.nan) for cv in acc.cross_view_gt),
        }
    return _clean({
        "mode": mode,
        "gt": gt,
        "cap": float(cap),
        "frames": len(acc.per_frame),
        "mean": mean,
        "per_camera": per_camera,
        "cross_view_pairs": pairs,
        "cross_view_gt": _nanmean(cv.mean for cv in acc.cross_view_gt) if acc.cross_view_gt else None,
        "source": source,
    })


def _evaluate_frame(
    acc: _Accumulator, sample: Any, predictor: Predictor, gt: str, mode: str, cap: float, min_depth: float,
) -> None:
    """Predict, align, score one surround set and keep what the report needs."""
    from fsmde_core.report import MosaicFrame

    gt_depth = _ground_truth(sample, gt)
    raw = predictor.predict(sample)
    valid = ~np.asarray(sample.masks, dtype=bool)
    aligned = align_depth(raw, gt_depth, valid, mode, cap, pred_is_inverse=predictor.inverse)
    acc.per_frame.append(depth_metrics(aligned, gt_depth, valid, cap, min_depth))
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

    Returns (and writes to ``out_dir/metrics.json``)::

        {"mode", "gt", "cap", "frames",
         "mean": {abs_rel, sq_rel, rmse, rmse_log, a1, a2, a3, cross_view},
         "per_camera": {name: {abs_rel, ..., a3}},
         "cross_view_pairs": {"a/b": {"pred", "pred_inliers", "gt"}},   # adjacent pairs
         "cross_view_gt": float | null,   # dense-GT floor, null without dense GT
         "source": "checkpoint:<path>" | "teacher:<identity>"}

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
    cap = float(cap if cap is not None else predictor.cap or _bag_max_depth(bag_list, config))

    acc: _Accumulator | None = None
    bar = tqdm(_frame_samples(bag_list, config, max_frames), total=max_frames, desc="eval", unit="frame",
               disable=not progress, dynamic_ncols=True)
    for raw_sample in bar:
        sample = _reorder(raw_sample, predictor.camera_names)
        if acc is None:
            acc = _Accumulator(names=list(sample.camera_names))
        _evaluate_frame(acc, sample, predictor, gt, mode, cap, min_depth)
    if acc is None:
        raise _no_set_error(bag_list, config, gt)
    result = _summarise(acc, mode, gt, cap, predictor.source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    write_report(out, result, acc.names, acc.ring, acc.mosaic, acc.err_sum, acc.err_count, bag_list)
    return result


# ====================================================================== CLI
def parse_teacher_options(items: Iterable[str]) -> dict[str, Any]:
    """``["quality=0.9", "input_size=[378,644]"]`` -> kwargs; values parsed as YAML scalars/lists."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise EvalError(f"--teacher-option expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise EvalError(f"--teacher-option {item!r}: cannot parse the value ({exc})") from exc
        options[key.strip()] = tuple(value) if isinstance(value, list) else value
    return options


def build_eval_teacher(kind: str, options: dict[str, Any], device: str) -> Any:
    """Build a teacher, passing ``device`` to those whose constructor takes one."""
    from fsmde_core.models.teachers import TEACHER_KINDS, build_teacher, check_teacher_options

    if kind not in TEACHER_KINDS:
        raise EvalError(f"unknown teacher {kind!r}; expected one of {sorted(TEACHER_KINDS)}")
    options = dict(options)
    try:
        check_teacher_options(kind, options)
    except ValueError as exc:
        raise EvalError(f"--teacher-option: {exc}") from exc
    if "device" in TEACHER_KINDS[kind].options:
        options.setdefault("device", device)
    return build_teacher(kind, **options)


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
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    print(f"  report: {out / 'report.md'}")


def run_eval(args: argparse.Namespace) -> int:
    """``fsmde eval``: 0 = done, 2 = cannot evaluate (message on stderr)."""
    from fsmde_core.checkpoint import CheckpointError
    from fsmde_core.data.errors import BagError

    try:
        if args.teacher_option and not args.teacher:
            raise EvalError("--teacher-option needs --teacher")
        if args.teacher:
            options = parse_teacher_options(args.teacher_option)
            what: Any = build_eval_teacher(args.teacher, options, args.device)
        else:
            what = args.checkpoint
        data_config = eval_data_config(args)
        result = evaluate(what, args.bag, args.out, gt=args.gt, mode=args.mode, cap=args.cap,
                          max_frames=args.max_frames, device=args.device, progress=not args.no_progress,
                          data_config=data_config)
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
