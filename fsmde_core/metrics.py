"""Depth metrics and cross-view consistency: pure numpy, no model, no bag, no torch.

``fsmde eval``, the trainer's validation and the node's calibration-health
check all score depth with these functions, so every number means the same
thing wherever it is printed (the protocol: docs/method.md §6 "Evaluation").

* **Eigen metrics** per image — AbsRel, SqRel, RMSE, RMSElog, δ<1.25ⁿ — over
  pixels whose ground truth is finite, > 0, at most ``cap`` metres and not on
  the ego vehicle; prediction and GT are clipped to ``[min_depth, cap]`` (the
  monodepth2 / Eigen protocol).
* **Alignment modes**, applied per image before the metrics:

  - ``metric``: none — what the runtime node publishes is what is scored.
  - ``median``: ``pred * median(gt) / median(pred)`` (monodepth2's protocol for
    scale-ambiguous models; it hides a global scale error).
  - ``affine``: least-squares scale and shift in *inverse-depth* space,
    ``s * (1/pred) + t ≈ 1/gt`` over valid pixels, then ``depth = 1/(s/pred + t)``.
    This is the standard protocol for relative-depth models (MiDaS, Depth
    Anything), whose output is affine-invariant inverse depth; fitting in
    depth space instead would let far pixels dominate and is not what those
    papers report. Degenerate fits are guarded: with fewer than 2 valid
    pixels no fit exists (the image is skipped, metrics NaN); a constant
    prediction (zero variance) gets the best constant ``s = 0, t = mean(1/gt)``;
    aligned inverse depth ``<= 0`` (beyond infinity) becomes ``cap``.

* **Per-image scale error**: ``s = median(pred / gt)`` per image, summarised as
  bias (mean of ``log s``) and spread (std of ``log s``): whether a metric model
  is globally too near / far, and how much its scale wanders between images.
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
  occlusion, which the depth metrics catch anyway.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from fsmde_core.geometry import cross_view_projection
from fsmde_core.rig import Rig, RigCamera

METRIC_KEYS: tuple[str, ...] = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
MODES: tuple[str, ...] = ("metric", "median", "affine")
#: Lower clip of prediction and GT (metres), as in the Eigen / monodepth2 protocol.
DEFAULT_MIN_DEPTH = 1e-3
#: Relative difference above which a cross-view correspondence counts as an occlusion.
OCCLUSION_REL_DIFF = 0.5


@contextmanager
def quiet_nan_warnings() -> Iterator[None]:
    """nanmedian / nanmean of an all-NaN slice warn; an image or camera without valid GT is expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


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


def _scored_pixels(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None,
                   cap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 ``pred``, ``gt`` and the (B, H*W) mask of pixels that are scored: one definition for every metric."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: {pred.shape} vs {gt.shape}")
    return pred, gt, _flat_images(eval_mask(gt, valid, cap) & ~np.isnan(pred))


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
    pred, gt, mask = _scored_pixels(pred, gt, valid, cap)
    lead = pred.shape[:-2]
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


# ============================================================ per-image scale
#: Keys of :func:`scale_error_summary` (metrics.json ``scale`` blocks).
SCALE_KEYS: tuple[str, ...] = ("bias_log", "bias_factor", "spread_log", "p10", "p90", "images")


def image_scale_factors(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray | None = None,
    cap: float = 80.0,
    min_depth: float = DEFAULT_MIN_DEPTH,
) -> np.ndarray:
    """Per image ``s = median(pred / gt)`` over the scored pixels: the image's metric scale factor.

    Why: AbsRel mixes structure and scale; a metric student's main failure is a
    per-image (per-camera) scale that drifts, which ``s`` isolates (``s = 1.2``:
    the image is predicted 20 % too far). Pixels and clipping as in :func:`depth_metrics`.

    Returns:
        The leading shape of ``pred`` (a float for one (H, W) image); NaN where no pixel is scored.
    """
    pred, gt, mask = _scored_pixels(pred, gt, valid, cap)
    ratio = np.clip(_flat_images(pred), min_depth, cap) / np.clip(_flat_images(gt), min_depth, cap)
    with quiet_nan_warnings():
        s = np.nanmedian(np.where(mask, ratio, np.nan), axis=1)
    return float(s[0]) if pred.ndim == 2 else s.reshape(pred.shape[:-2])


def scale_error_summary(factors: Iterable[float] | np.ndarray) -> dict[str, float | int]:
    """Bias and spread of per-image scale factors (NaN ones left out).

    ``bias_log`` = mean of ``log s`` (0 = unbiased; ``bias_factor = exp(bias_log)``
    reads as "x 1.08 too far"), ``spread_log`` = population std of ``log s`` (how
    much the scale moves from image to image, what no global correction can fix),
    ``p10`` / ``p90`` = percentiles of ``s``, ``images`` = how many images counted.
    In log space because scale errors multiply: x 2 and x 0.5 are equally wrong.
    """
    s = np.asarray(factors if isinstance(factors, np.ndarray) else list(factors), dtype=np.float64).ravel()
    s = s[np.isfinite(s) & (s > 0)]
    if s.size == 0:
        return {**dict.fromkeys(SCALE_KEYS, math.nan), "images": 0}
    log_s = np.log(s)
    bias = float(log_s.mean())
    return {"bias_log": bias, "bias_factor": math.exp(bias), "spread_log": float(log_s.std()),
            "p10": float(np.percentile(s, 10)), "p90": float(np.percentile(s, 90)), "images": int(s.size)}


def median_scale(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-image ``median(gt) / median(pred)`` over ``mask``; (B,) with NaN where undefined."""
    P, G, M = _flat_images(pred), _flat_images(gt), _flat_images(mask).astype(bool)
    with np.errstate(invalid="ignore", divide="ignore"), quiet_nan_warnings():
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


# ===================================================== object boundaries
#: Keys of :func:`boundary_abs_rel` (metrics.json, with dense synthetic ground truth).
BOUNDARY_KEYS: tuple[str, ...] = ("abs_rel_boundary", "abs_rel_interior")
#: Pixels within this many pixels (Chebyshev distance) of a discontinuity are "near a boundary".
BOUNDARY_RADIUS = 2
#: Relative depth jump between 4-neighbours, ``|a - b| / min(a, b)``, above which they are a discontinuity.
BOUNDARY_REL_JUMP = 0.1


def _neighbour_edges(a: np.ndarray, b: np.ndarray, rel_jump: float) -> np.ndarray:
    """Depth discontinuity between neighbour arrays ``a`` and ``b``: a relative jump, or finite next to +Inf.

    NaN (unknown depth) never makes an edge: nothing says whether it is one.
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        finite = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
        jump = np.abs(a - b) > rel_jump * np.minimum(a, b)
        sky = (np.isposinf(a) & np.isfinite(b)) | (np.isposinf(b) & np.isfinite(a))
    return (finite & jump) | sky


def _label_edges(a: np.ndarray, b: np.ndarray, void: int) -> np.ndarray:
    """Neighbours of different classes, neither void (void says nothing about where a class ends)."""
    return (a != b) & (a != void) & (b != void)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of the last two axes by a (2r+1)^2 square: separable shifted ORs, no per-pixel loop."""
    out = mask
    for axis in (-2, -1):
        grown = out.copy()
        n = out.shape[axis]
        for k in range(1, min(radius, n - 1) + 1):
            lo = [slice(None)] * out.ndim
            hi = [slice(None)] * out.ndim
            lo[axis], hi[axis] = slice(0, n - k), slice(k, n)
            grown[tuple(lo)] |= out[tuple(hi)]
            grown[tuple(hi)] |= out[tuple(lo)]
        out = grown
    return out


def boundary_mask(
    gt: np.ndarray,
    labels: np.ndarray | None = None,
    radius: int = BOUNDARY_RADIUS,
    rel_jump: float = BOUNDARY_REL_JUMP,
    void: int = 255,
) -> np.ndarray:
    """Pixels within ``radius`` px of an object boundary in the ground truth: (..., H, W) bool.

    Why: the bridged teacher (issue 10) claims its gain where objects end, which
    an image-wide AbsRel dilutes. A boundary lies between two 4-neighbours whose
    GT depth jumps by more than ``rel_jump`` relative to the nearer one, or where
    one is sky (+Inf) and the other a surface, or - when ``labels`` are given -
    whose classes differ (void excluded). Both pixels of such a pair are edge
    pixels; the band is the edges dilated by ``radius`` (Chebyshev distance).
    NaN depth is no edge. Note that the ground plane near the horizon, where
    depth grows by more than ``rel_jump`` per row, counts as a discontinuity too.
    """
    gt = np.asarray(gt, dtype=np.float64)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    edges = np.zeros(gt.shape, dtype=bool)
    pairs = [(gt[..., :-1, :], gt[..., 1:, :], (slice(None, -1), slice(None)), (slice(1, None), slice(None))),
             (gt[..., :, :-1], gt[..., :, 1:], (slice(None), slice(None, -1)), (slice(None), slice(1, None)))]
    lab = None if labels is None else np.asarray(labels)
    if lab is not None and lab.shape != gt.shape:
        raise ValueError(f"labels and gt shapes differ: {lab.shape} vs {gt.shape}")
    for a, b, first, second in pairs:
        edge = _neighbour_edges(a, b, rel_jump)
        if lab is not None:
            edge |= _label_edges(lab[(..., *first)], lab[(..., *second)], void)
        edges[(..., *first)] |= edge
        edges[(..., *second)] |= edge
    return _dilate(edges, radius)


def boundary_abs_rel(
    pred: np.ndarray,
    gt: np.ndarray,
    boundary: np.ndarray,
    valid: np.ndarray | None = None,
    cap: float = 80.0,
    min_depth: float = DEFAULT_MIN_DEPTH,
) -> dict[str, Any]:
    """AbsRel over the scored pixels inside the ``boundary`` band and outside it (per image, as :func:`depth_metrics`).

    Returns ``{"abs_rel_boundary", "abs_rel_interior"}``: floats for one (H, W)
    image, else arrays of the leading shape; NaN where a part has no scored pixel.
    """
    band = np.asarray(boundary, dtype=bool)
    base = np.ones(band.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    near = depth_metrics(pred, gt, base & band, cap, min_depth)["abs_rel"]
    far = depth_metrics(pred, gt, base & ~band, cap, min_depth)["abs_rel"]
    return {"abs_rel_boundary": near, "abs_rel_interior": far}


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
        return nanmean(list(self.pairs.values()))


def nanmean(values: Iterable[float]) -> float:
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
        errs[(i, j)] = nanmean(r[0] for r in results)
        total = sum(r[2] for r in results)
        inliers[(i, j)] = sum(r[1] for r in results) / total if total else math.nan
    return CrossViewResult(errs, inliers)



# ==================================================== confidence calibration
#: Fine confidence bins of :func:`confidence_histogram`; deciles are merged from them.
CONFIDENCE_HISTOGRAM_BINS = 1000


def confidence_histogram(
    pred: np.ndarray,
    gt: np.ndarray,
    confidence: np.ndarray,
    valid: np.ndarray | None = None,
    cap: float = 80.0,
    min_depth: float = DEFAULT_MIN_DEPTH,
    bins: int = CONFIDENCE_HISTOGRAM_BINS,
) -> tuple[np.ndarray, np.ndarray]:
    """Scored pixels and their summed abs-rel error per fine confidence bin over ``[0, 1]``.

    Why a histogram and not the pixels: deciles need every pixel of every frame, and
    summed per bin they cost ``bins`` numbers per run instead of growing with the bag.
    Pixels are scored as in :func:`depth_metrics` (same mask and clipping); those
    without a finite confidence are left out.

    Returns:
        ``(count, err_sum)``, each ``(bins,)``: int64 pixels and float64 sum of abs-rel.
    """
    pred = np.asarray(pred, dtype=np.float64)
    conf = np.asarray(confidence, dtype=np.float64)
    if pred.shape != np.shape(gt) or pred.shape != conf.shape:
        raise ValueError(f"pred, gt and confidence shapes differ: {pred.shape}, {np.shape(gt)}, {conf.shape}")
    mask = eval_mask(gt, valid, cap) & ~np.isnan(pred) & np.isfinite(conf)
    g = np.clip(np.asarray(gt, dtype=np.float64)[mask], min_depth, cap)
    err = np.abs(np.clip(pred[mask], min_depth, cap) - g) / g
    index = np.clip((np.clip(conf[mask], 0.0, 1.0) * bins).astype(np.int64), 0, bins - 1)
    return (np.bincount(index, minlength=bins).astype(np.int64),
            np.bincount(index, weights=err, minlength=bins))


def abs_rel_by_confidence(count: np.ndarray, err_sum: np.ndarray, groups: int = 10) -> list[dict[str, float]]:
    """AbsRel per confidence quantile group (deciles by default), least confident first.

    Fine bins are merged in order until each group holds about ``1/groups`` of the
    scored pixels (exact up to one fine bin: a bin is never split). Empty groups,
    where one fine bin holds more than a group's share, are left out.

    Returns:
        Per group ``{"confidence_min", "confidence_max", "abs_rel", "pixels", "fraction"}``;
        the confidence bounds are the edges of the fine bins it spans.
    """
    count = np.asarray(count, dtype=np.int64)
    err_sum = np.asarray(err_sum, dtype=np.float64)
    total = int(count.sum())
    if total == 0:
        return []
    bins = count.size
    # Group of a fine bin: by the cumulative count at its centre, so each bin lands in one group.
    centre = np.cumsum(count) - count / 2.0
    group = np.minimum((centre / total * groups).astype(np.int64), groups - 1)
    out = []
    for g in range(groups):
        member = (group == g) & (count > 0)
        if not member.any():
            continue
        idx = np.flatnonzero(member)
        pixels = int(count[idx].sum())
        out.append({
            "confidence_min": float(idx[0] / bins),
            "confidence_max": float((idx[-1] + 1) / bins),
            "abs_rel": float(err_sum[idx].sum() / pixels),
            "pixels": pixels,
            "fraction": pixels / total,
        })
    return out
