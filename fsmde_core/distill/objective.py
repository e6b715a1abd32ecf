"""The distillation objective the trainer calls: its configuration and the weighted sum of the terms.

Why apart from the terms: the terms are pure functions of tensors; this is
where the configuration (switches, weights, which CKD target) meets the
student's output, the resolutions are reconciled, and a configuration that
would silently do less than it says is refused. The method is docs/method.md:
SILog + Chamfer make the student metric, CKD transfers the teacher's
structure as bin probabilities, VRKD transfers cross-view feature relations,
and the geometric terms (off by default) add the rig's own metric cues:
cross-view depth consistency and the road plane.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import torch
import torch.nn.functional as F  # noqa: N812 (the universal torch idiom)

from fsmde_core.distill.ablations import ABLATION_TARGETS, ANCHORS, AblationTarget, ablation_ckd_loss
from fsmde_core.distill.anchored import dense_kd_loss
from fsmde_core.distill.ckd import check_readout, ckd_centre_loss, ckd_loss
from fsmde_core.distill.geometric import cross_view_loss, ground_scale_loss
from fsmde_core.distill.semantic_graph import SemanticGraphKD
from fsmde_core.distill.supervised import bin_centre_chamfer, silog_loss
from fsmde_core.distill.vrkd import vrkd_loss
from fsmde_core.models.teachers.base import TeacherOutput

CKD_TARGETS = ("rank", *ABLATION_TARGETS)

#: Loss keys that only some CKD targets read -> those targets. Setting one away from its
#: default for another target is refused: the run would not do what its config says.
TARGET_ONLY_KEYS: dict[str, tuple[str, ...]] = {
    "ckd_sigma": ("kernel",),
    "ckd_anchor": ABLATION_TARGETS,
    "w_ckd_centres": ("rank",),
    "ckd_centres_variance_focus": ("rank",),
}


class StudentOutputLike(Protocol):
    """What ``compute_losses`` reads from the student (duck-typed on purpose).

    depth (B,1,H,W) metres; logits (B,K,H,W); centres (B,K) metres;
    features (B,C,hf,wf).
    """

    depth: torch.Tensor
    logits: torch.Tensor
    centres: torch.Tensor
    features: torch.Tensor


@dataclass(frozen=True)
class DistillLossConfig:
    """Weights and switches of the distillation objective (``loss:`` in the training YAML).

    One switch per term, for ablations. Supervised defaults follow AdaBins
    (``w_silog=10`` with the square-rooted SILog = BTS/AdaBins' ``10*sqrt(D)``;
    Chamfer 0.1); KD terms have unit weight. ``ckd_target`` "rank" is the kept
    CKD (:mod:`fsmde_core.distill.ckd`), its centre term weighs
    ``w_ckd * w_ckd_centres`` and is plain log-RMSE by default (the teacher
    fixes the structure, scale is what is left). "kernel" / "linear" and
    ``ckd_anchor`` / ``ckd_sigma`` are ablations
    (:mod:`fsmde_core.distill.ablations`); a key the chosen target does not
    read may not be set away from its default (:data:`TARGET_ONLY_KEYS`).
    ``tau_vrkd`` 0.2: cosine similarities live in [-1, 1], a softmax at tau 1
    is nearly uniform. Why these values: bench/results/ckd_targets.md,
    bench/results/vrkd_overlap.md, bench/results/distill.md.

    The geometric terms (:mod:`fsmde_core.distill.geometric`) are off until
    measured: ``use_xview`` (cross-view depth consistency of adjacent cameras,
    every ``xview_stride``-th pixel, occlusion gate floor ``xview_gate`` in log
    units) and ``use_ground`` (per-image scale from the road plane
    z = ``ground_z`` in base_link, 0 when base_link is on the ground as in the
    presets and nuScenes; plane depths up to ``ground_max_depth`` m and within
    ``ground_half_width`` m of the vehicle's centre line, road pixels within
    ``ground_band`` of the residual's mode, every ``ground_stride``-th pixel).

    Semantic-structural KD (:mod:`fsmde_core.distill.semantic_graph`, issue 11) is
    off until measured: ``use_semgraph`` matches, within each image, the affinity
    graph of ``semgraph_grid`` regions of the semantic teacher (``semantic:``
    section) by a learned ``semgraph_dim``-wide 1x1 projection of the student's
    features, row-softmax KL at ``tau_semgraph``.

    ``use_dense_kd`` (:mod:`fsmde_core.distill.anchored`): the teacher mapped to
    metres by a robust per-image line onto that image's LiDAR inverse depth
    supervises the student's depth at every pixel (SILog, lambda
    ``dense_kd_variance_focus``, targets beyond ``dense_kd_max_depth`` m and sky
    left out) — a per-pixel metric path that the rank CKD lacks.

    ``use_photometric`` (:mod:`fsmde_core.selfsup`, issue 12): self-supervision from
    the video — each image warped from its camera's previous/next set
    (``photometric_temporal``; poses from /tf odometry or a pose network,
    ``photometric_pose``) and from the adjacent cameras of its own set
    (``photometric_spatial``: the extrinsics' metric baseline), SSIM + L1
    (``photometric_alpha``), per-pixel minimum, auto-masking, at ``photometric_scale``
    x the training size; ``w_smoothness`` for
    the edge-aware smoothness of monodepth2; with CKD on, the same loss on CKD's
    cross depth (``w_photometric_centres``) gives the bin centres their metres
    without LiDAR. ``use_reflective_mask`` trains an intrinsic decomposition
    (``w_decomposition``), leaves pixels whose photometric error is a
    view-dependent outlier (``reflective_threshold``, Mahalanobis) out of the
    photometric loss and gives them to the teacher through CKD (extra weight
    ``w_reflective_ckd``).
    """

    use_silog: bool = True
    use_bins: bool = True
    use_ckd: bool = True
    use_vrkd: bool = True
    w_silog: float = 10.0
    w_bins: float = 0.1
    w_ckd: float = 1.0
    w_vrkd: float = 1.0
    w_ckd_centres: float = 10.0
    ckd_centres_variance_focus: float = 0.0
    tau_ckd: float = 1.0
    ckd_sigma: float = 0.05
    ckd_anchor: str = "gt_fit"
    ckd_target: str = "rank"
    tau_vrkd: float = 0.2
    vrkd_grid: tuple[int, int] = (4, 8)
    vrkd_region: str = "image"
    variance_focus: float = 0.85
    use_xview: bool = False
    use_ground: bool = False
    w_xview: float = 1.0
    w_ground: float = 1.0
    xview_stride: int = 4
    xview_gate: float = 0.1
    ground_z: float = 0.0
    ground_max_depth: float = 20.0
    ground_half_width: float = 1.5
    ground_band: float = 0.1
    ground_stride: int = 4
    use_semgraph: bool = False
    w_semgraph: float = 1.0
    tau_semgraph: float = 0.2
    semgraph_grid: tuple[int, int] = (4, 8)
    semgraph_dim: int = 64
    use_dense_kd: bool = False
    w_dense_kd: float = 10.0
    dense_kd_variance_focus: float = 0.85
    dense_kd_max_depth: float = 80.0
    use_photometric: bool = False
    w_photometric: float = 1.0
    photometric_temporal: bool = True
    photometric_spatial: bool = True
    photometric_alpha: float = 0.85
    photometric_scale: float = 1.0
    photometric_automask: bool = True
    photometric_pose: str = "auto"
    w_photometric_centres: float = 1.0
    w_smoothness: float = 0.001
    use_reflective_mask: bool = False
    reflective_threshold: float = 3.0
    w_decomposition: float = 1.0
    w_reflective_ckd: float = 1.0

    def __post_init__(self) -> None:
        if not any((self.use_silog, self.use_bins, self.use_ckd, self.use_vrkd, self.use_dense_kd,
                    self.use_photometric)):
            raise ValueError("DistillLossConfig: every loss term is switched off"
                             + (" but the geometric ones, which alone do not determine depth (they constrain "
                                "only cross-view agreement and the road's scale)"
                                if self.use_xview or self.use_ground else ""))
        for name in ("w_silog", "w_bins", "w_ckd", "w_vrkd", "w_ckd_centres", "w_xview", "w_ground", "w_semgraph",
                     "w_dense_kd", "w_photometric", "w_photometric_centres", "w_smoothness", "w_decomposition",
                     "w_reflective_ckd"):
            if getattr(self, name) < 0:
                raise ValueError(f"DistillLossConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("xview_stride", "ground_stride", "semgraph_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DistillLossConfig.{name} must be an integer >= 1, got {value!r}")
        for name in ("tau_ckd", "ckd_sigma", "tau_vrkd", "xview_gate", "ground_max_depth", "ground_half_width",
                     "ground_band", "tau_semgraph", "dense_kd_max_depth", "reflective_threshold"):
            if getattr(self, name) <= 0:
                raise ValueError(f"DistillLossConfig.{name} must be > 0, got {getattr(self, name)}")
        _check_choice("ckd_anchor", self.ckd_anchor, ANCHORS)
        _check_choice("ckd_target", self.ckd_target, CKD_TARGETS)
        _check_choice("vrkd_region", self.vrkd_region, ("image", "overlap"))
        _check_choice("photometric_pose", self.photometric_pose, PHOTOMETRIC_POSES)
        if not 0.0 < self.photometric_scale <= 1.0:
            raise ValueError(f"DistillLossConfig.photometric_scale must be in (0, 1], got {self.photometric_scale}")
        if not 0.0 <= self.photometric_alpha <= 1.0:
            raise ValueError(f"DistillLossConfig.photometric_alpha must be in [0, 1], got {self.photometric_alpha}")
        if self.use_photometric and not (self.photometric_temporal or self.photometric_spatial):
            raise ValueError("loss.use_photometric needs a source: photometric_temporal or photometric_spatial")
        if self.use_reflective_mask and not self.use_photometric:
            raise ValueError("loss.use_reflective_mask masks the photometric loss: set loss.use_photometric=true")
        grid = tuple(int(g) for g in self.vrkd_grid)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"DistillLossConfig.vrkd_grid must be two positive ints, got {self.vrkd_grid}")
        object.__setattr__(self, "vrkd_grid", grid)
        sg_grid = tuple(int(g) for g in self.semgraph_grid)
        if len(sg_grid) != 2 or min(sg_grid) < 1 or sg_grid[0] * sg_grid[1] < 2:
            raise ValueError(f"DistillLossConfig.semgraph_grid must be two positive ints (at least 2 regions), "
                             f"got {self.semgraph_grid}")
        object.__setattr__(self, "semgraph_grid", sg_grid)
        for name in ("variance_focus", "ckd_centres_variance_focus", "dense_kd_variance_focus"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"DistillLossConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        self._refuse_keys_the_target_ignores()

    def _refuse_keys_the_target_ignores(self) -> None:
        """Refuse (not warn): a warning would repeat at every KD ramp step, and the fix is to delete one key."""
        defaults = {f.name: f.default for f in fields(self)}
        for key, readers in TARGET_ONLY_KEYS.items():
            value = getattr(self, key)
            if self.ckd_target not in readers and value != defaults[key]:
                raise ValueError(
                    f"loss.{key}={value!r} has no effect with loss.ckd_target={self.ckd_target!r} "
                    f"(only {', '.join(readers)} reads it): remove it or choose that target")

    @property
    def needs_teacher(self) -> bool:
        """True when a KD term is on, so the trainer must provide teacher outputs."""
        return self.use_ckd or self.use_vrkd or self.use_dense_kd

    @property
    def lidar_terms(self) -> list[str]:
        """The switched-on terms that read LiDAR depth (a camera-only bag cannot train them)."""
        terms = [n for n, f in (("use_silog", self.use_silog), ("use_bins", self.use_bins),
                                ("use_dense_kd", self.use_dense_kd), ("use_ground", False)) if f]
        if self.use_ckd and self.ckd_target == "rank" and not self.use_photometric:
            terms.append("use_ckd (its centre term; with loss.use_photometric the centres learn from the video)")
        elif self.use_ckd and self.ckd_target != "rank":
            terms.append(f"use_ckd (ckd_target {self.ckd_target!r} anchors on LiDAR)")
        return terms


#: ``loss.photometric_pose``: auto = /tf odometry when every sample has it, else the pose network.
PHOTOMETRIC_POSES = ("auto", "odom", "posenet")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """One error line naming the loss key and its valid values."""
    if value not in choices:
        raise ValueError(f"DistillLossConfig.{key} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a dense prediction (no-op when the size already matches)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _resize_mask(mask: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    """Nearest resize of a region mask (it marks regions, so no interpolation of truth values)."""
    if mask is None or tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask.float(), size=tuple(size), mode="nearest") > 0.5


def _ckd_terms(
    out: StudentOutputLike, gt_depth: torch.Tensor, mask: torch.Tensor | None, teacher: TeacherOutput,
    cfg: DistillLossConfig, readout: str,
) -> dict[str, torch.Tensor]:
    """The CKD term(s) of ``cfg.ckd_target`` at the logits' resolution (the centre term at the GT's)."""
    logit_size = (out.logits.shape[-2], out.logits.shape[-1])
    logit_mask = _resize_mask(mask, logit_size)
    if cfg.ckd_target == "rank":
        return {
            "ckd": ckd_loss(out.logits, teacher.inv_depth, logit_mask, cfg.tau_ckd),
            "ckd_centres": ckd_centre_loss(out.centres, teacher.inv_depth, gt_depth, mask,
                                           cfg.ckd_centres_variance_focus, readout),
        }
    # the ablation anchors read the sparse GT at the logits' size (nearest, so NaN holes stay holes)
    gt_small = gt_depth if tuple(gt_depth.shape[-2:]) == logit_size else F.interpolate(
        gt_depth, size=logit_size, mode="nearest")
    spec = AblationTarget(cfg.ckd_target, cfg.ckd_anchor, cfg.ckd_sigma, cfg.tau_ckd, readout)
    return {"ckd": ablation_ckd_loss(out.logits, out.centres, _resize_to(out.depth, logit_size), teacher.inv_depth,
                                     logit_mask, gt_small, spec)}


@dataclass
class SemanticGraphInput:
    """What the semantic-structural term needs besides the student: its loss module and the teacher's nodes."""

    module: SemanticGraphKD
    teacher_nodes: torch.Tensor  # (B, C, gh, gw), the same B images as the student's output


def _check_geometric_inputs(
    cfg: DistillLossConfig, pairs: object, K: torch.Tensor | None, T_base_cam: torch.Tensor | None,
) -> None:
    """One line naming what a switched-on geometric term lacks."""
    on = [n for n, f in (("use_xview", cfg.use_xview), ("use_ground", cfg.use_ground)) if f]
    if on and (K is None or T_base_cam is None):
        raise ValueError(f"loss terms {on} need the cameras' K and T_base_cam; pass K= and T_base_cam=")
    if cfg.use_xview and pairs is None:
        raise ValueError("use_xview is enabled but no adjacent-view pairs were given")


def _geometric_terms(
    depth: torch.Tensor, mask: torch.Tensor | None, pairs: torch.Tensor | Sequence[tuple[int, int]] | None,
    K: torch.Tensor | None, T_base_cam: torch.Tensor | None, cfg: DistillLossConfig,
) -> dict[str, torch.Tensor]:
    """The switched-on geometric terms on ``depth`` at K's (the GT's) size."""
    terms: dict[str, torch.Tensor] = {}
    if cfg.use_xview:
        assert K is not None and T_base_cam is not None and pairs is not None
        terms["xview"] = cross_view_loss(depth, K, T_base_cam, torch.as_tensor(pairs), mask, cfg.xview_stride,
                                         cfg.xview_gate)
    if cfg.use_ground:
        assert K is not None and T_base_cam is not None
        terms["ground"] = ground_scale_loss(depth, K, T_base_cam, mask, cfg.ground_z, cfg.ground_max_depth,
                                            cfg.ground_half_width, cfg.ground_band, cfg.ground_stride)
    return terms


def compute_losses(
    out: StudentOutputLike,
    gt_depth: torch.Tensor,
    mask: torch.Tensor | None = None,
    teacher: TeacherOutput | None = None,
    pairs: torch.Tensor | Sequence[tuple[int, int]] | None = None,
    cfg: DistillLossConfig | None = None,
    bands: torch.Tensor | None = None,
    *,
    readout: str,
    K: torch.Tensor | None = None,
    T_base_cam: torch.Tensor | None = None,
    semgraph: SemanticGraphInput | None = None,
) -> dict[str, torch.Tensor]:
    """All enabled loss terms plus their weighted sum.

    Terms that are switched off are not computed at all. Returned values are
    *unweighted* (for logging) under ``"silog"``, ``"bins"``, ``"ckd"``
    (+ ``"ckd_centres"`` for the rank target), ``"vrkd"``, ``"dense_kd"``, ``"xview"``,
    ``"ground"``, ``"semgraph"``; ``"total"`` is the weighted sum. If the student's depth is
    smaller than the GT it is upsampled bilinearly for SILog and the geometric
    terms (sparse GT is never resampled; K is at the GT's size); CKD runs at
    the logits' resolution (mask resized nearest).

    Args:
        out: student output with ``.depth``, ``.logits``, ``.centres``, ``.features``.
        gt_depth: (B, 1, H, W) sparse metric GT (NaN / Inf / <= 0 invalid).
        mask: optional (B, 1, H, W) bool region mask (e.g. ego-vehicle pixels False).
        teacher: teacher output for the same B images; required by CKD / VRKD.
        pairs: (P, 2) adjacent-view pairs of flattened batch indices; required by VRKD.
        cfg: weights and switches (default ``DistillLossConfig()``).
        bands: (P, 2, 2) overlap bands of the pairs; required by VRKD when
            ``cfg.vrkd_region == "overlap"``.
        readout: the student's ``StudentConfig.readout`` ("log" / "linear"), required
            so the CKD targets read depth out of bins exactly as the student does.
        K: (B, 3, 3) intrinsics at the GT's size; required by the geometric terms.
        T_base_cam: (B, 4, 4) camera optical frame -> base_link; required by the geometric terms.
        semgraph: the semantic-structural term's module and teacher nodes; required by ``use_semgraph``.

    Raises:
        ValueError: a KD term is on but ``teacher`` (or ``pairs`` / ``bands`` for VRKD) is missing,
            or a geometric term is on but ``K`` / ``T_base_cam`` (or ``pairs`` for xview) is.
    """
    cfg = cfg or DistillLossConfig()
    check_readout(readout)
    if cfg.needs_teacher and teacher is None:
        on = [n for n, f in (("ckd", cfg.use_ckd), ("vrkd", cfg.use_vrkd), ("dense_kd", cfg.use_dense_kd)) if f]
        raise ValueError(f"loss terms {on} need teacher outputs but teacher is None; "
                         "switch them off (use_ckd/use_vrkd/use_dense_kd=False) for a supervised-only run")
    if cfg.use_vrkd and pairs is None:
        raise ValueError("VRKD is enabled but no adjacent-view pairs were given")
    if cfg.use_vrkd and cfg.vrkd_region == "overlap" and bands is None:
        raise ValueError("vrkd_region 'overlap' needs the pairs' overlap bands")
    _check_geometric_inputs(cfg, pairs, K, T_base_cam)
    if cfg.use_semgraph and semgraph is None:
        raise ValueError("use_semgraph is enabled but no semantic teacher nodes (semgraph=) were given")
    depth_at_gt = _resize_to(out.depth, (gt_depth.shape[-2], gt_depth.shape[-1]))
    terms: dict[str, torch.Tensor] = {}
    weights: dict[str, float] = {}
    if cfg.use_silog:
        terms["silog"] = silog_loss(depth_at_gt, gt_depth, mask, cfg.variance_focus)
        weights["silog"] = cfg.w_silog
    if cfg.use_bins:
        terms["bins"] = bin_centre_chamfer(out.centres, gt_depth, mask)
        weights["bins"] = cfg.w_bins
    if cfg.use_ckd:
        assert teacher is not None
        terms.update(_ckd_terms(out, gt_depth, mask, teacher, cfg, readout))
        weights["ckd"] = cfg.w_ckd
        weights["ckd_centres"] = cfg.w_ckd * cfg.w_ckd_centres
    if cfg.use_vrkd:
        assert teacher is not None and pairs is not None
        terms["vrkd"] = vrkd_loss(out.features, teacher.features, pairs, cfg.vrkd_grid, cfg.tau_vrkd,
                                  bands if cfg.vrkd_region == "overlap" else None)
        weights["vrkd"] = cfg.w_vrkd
    if cfg.use_dense_kd:
        assert teacher is not None
        terms["dense_kd"] = dense_kd_loss(depth_at_gt, teacher.inv_depth, gt_depth, mask,
                                          cfg.dense_kd_variance_focus, max_depth=cfg.dense_kd_max_depth)
        weights["dense_kd"] = cfg.w_dense_kd
    terms.update(_geometric_terms(depth_at_gt, mask, pairs, K, T_base_cam, cfg))
    weights.update(xview=cfg.w_xview, ground=cfg.w_ground)
    if cfg.use_semgraph:
        assert semgraph is not None
        terms["semgraph"] = semgraph.module(out.features, semgraph.teacher_nodes)
        weights["semgraph"] = cfg.w_semgraph
    # a photometric-only run switches every term here off: its total is the trainer's photometric terms alone
    total = sum((weights[name] * value for name, value in terms.items()), out.depth.new_zeros(()))
    terms["total"] = total
    return terms
