"""Geometric metric-scale terms: what a calibrated surround rig knows that one camera does not.

Why: the student's metric scale is its weak link (per-image scale errors).
Two facts of the rig constrain scale without LiDAR:

* **cross-view consistency** — adjacent cameras see the same surfaces, and the
  extrinsics fix the baseline between them, so camera i's depth, moved into
  camera j, must agree with camera j's depth there;
* **ground plane** — every camera's height and attitude above the road are
  known, so a pixel whose ray meets the road has a known metric depth.

Both are pinhole: K at the depth map's size; plumb_bob distortion (``D``) is
ignored (the training cache's synthetic and rectified rigs have D = 0; a
distorted rig would bias the rays near the image edges, not the scale).
Depth maps are (B, 1, H, W) metres along the optical axis, ``T_base_cam``
(B, 4, 4) camera optical frame -> base_link (REP 103: x forward, y left, z up).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (the universal torch idiom)

from fsmde_core.distill.masked import EPS, mean_over_images, region_mask

#: Points closer than this to the target camera's optical plane are not compared (behind or grazing).
MIN_Z = 0.1
#: The occlusion gate follows the residuals' spread: ``max(gate, GATE_SPREAD * median |r|)`` per pair.
GATE_SPREAD = 3.0
#: Histogram of the ground residuals that finds each image's road peak: bin width and range (log units).
MODE_BIN = 0.05
MODE_RANGE = 3.0
#: A histogram peak counts as the road's candidate when it holds this fraction of the largest peak.
ROAD_PEAK_FRACTION = 0.25
#: An image enters the ground term only with at least this many candidate pixels near its road peak.
MIN_GROUND_PIXELS = 16


def _strided_pixels(height: int, width: int, stride: int, like: torch.Tensor) -> torch.Tensor:
    """(N, 3) homogeneous pixel centres (u, v, 1) of every ``stride``-th row and column, row-major."""
    v, u = torch.meshgrid(torch.arange(0, height, stride, dtype=like.dtype, device=like.device),
                          torch.arange(0, width, stride, dtype=like.dtype, device=like.device), indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1), torch.ones_like(u).reshape(-1)], dim=1)


def _strided(x: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, 1, H, W) -> (B, N) values at :func:`_strided_pixels` (same order)."""
    return x[:, 0, ::stride, ::stride].reshape(x.shape[0], -1)


def _optical_rays(K: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) intrinsics, (N, 3) pixels -> (B, N, 3) rays with unit optical z (depth * ray = point)."""
    return pixels @ torch.linalg.inv(K).transpose(1, 2)


def _check_geometry(depth: torch.Tensor, K: torch.Tensor, T_base_cam: torch.Tensor) -> None:
    """One clear line when the calibration tensors do not match the depth batch."""
    b = depth.shape[0]
    if depth.dim() != 4 or depth.shape[1] != 1:
        raise ValueError(f"depth must be (B, 1, H, W), got {tuple(depth.shape)}")
    if tuple(K.shape) != (b, 3, 3):
        raise ValueError(f"K must be (B, 3, 3) with B={b}, got {tuple(K.shape)}")
    if tuple(T_base_cam.shape) != (b, 4, 4):
        raise ValueError(f"T_base_cam must be (B, 4, 4) with B={b}, got {tuple(T_base_cam.shape)}")


def _as_directed_pairs(pairs: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """(P, 2) adjacent pairs -> (2P, 2) source -> target pairs, both directions of each."""
    p = torch.as_tensor(pairs, dtype=torch.long, device=device).reshape(-1, 2)
    if p.numel() and (int(p.min()) < 0 or int(p.max()) >= batch):
        raise ValueError(f"pair indices must be in [0, {batch}), got range [{int(p.min())}, {int(p.max())}]")
    return torch.cat([p, p.flip(1)])


def _sample_at(x: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear (P, 1, H, W) at (P, N, 2) pixel coordinates (pixel centres at integers) -> (P, N)."""
    h, w = x.shape[-2:]
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=uv.dtype, device=uv.device)
    grid = (uv * scale - 1.0).unsqueeze(1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)[:, 0, 0]


def _project_into_targets(
    depth: torch.Tensor, K: torch.Tensor, T_base_cam: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
    stride: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Strided source pixels -> (depth z in the target, target pixel uv, lands in front and inside), (2P, N[, 2]).

    Source pixel -> point (K_i^-1, its depth) -> target frame (T_j^-1 T_i) -> target pixel (K_j).
    uv is zeroed where the point does not land inside (finite coordinates for grid_sample).
    """
    h, w = depth.shape[-2:]
    pixels = _strided_pixels(h, w, stride, depth)
    d_src = _strided(depth, stride).index_select(0, src)
    pts = _optical_rays(K.index_select(0, src), pixels) * d_src.unsqueeze(-1)
    T = torch.linalg.inv(T_base_cam.index_select(0, dst)) @ T_base_cam.index_select(0, src)
    pts_dst = pts @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]
    z = pts_dst[..., 2]
    in_front = z > MIN_Z
    uvw = pts_dst @ K.index_select(0, dst).transpose(1, 2)
    uv = uvw[..., :2] / torch.where(in_front, z, torch.ones_like(z)).unsqueeze(-1)
    inside = in_front & (uv[..., 0] >= 0) & (uv[..., 0] <= w - 1) & (uv[..., 1] >= 0) & (uv[..., 1] <= h - 1)
    return z, torch.where(inside.unsqueeze(-1), uv, torch.zeros_like(uv)), inside


def cross_view_residuals(
    depth: torch.Tensor, K: torch.Tensor, T_base_cam: torch.Tensor, pairs: torch.Tensor,
    valid: torch.Tensor, stride: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log z_ij - log d_j for the strided pixels of every directed pair -> (residual, comparable), (2P, N).

    z_ij is the point's depth in j (:func:`_project_into_targets`), d_j j's
    depth sampled there (bilinear). Comparable: source pixel valid, the point
    in front of j, inside j's image and on valid pixels of j (all four
    bilinear neighbours).
    """
    directed = _as_directed_pairs(pairs, depth.shape[0], depth.device)
    src, dst = directed[:, 0], directed[:, 1]
    z, uv, inside = _project_into_targets(depth, K, T_base_cam, src, dst, stride)
    d_dst = _sample_at(depth.index_select(0, dst), uv)
    valid_dst = _sample_at(valid.to(depth.dtype).index_select(0, dst), uv) > 1.0 - 1e-3
    comparable = inside & valid_dst & _strided(valid, stride).index_select(0, src)
    z_safe = torch.where(comparable, z, torch.ones_like(z)).clamp_min(EPS)
    d_safe = torch.where(comparable, d_dst, torch.ones_like(d_dst)).clamp_min(EPS)
    return torch.log(z_safe) - torch.log(d_safe), comparable


def cross_view_loss(
    depth: torch.Tensor, K: torch.Tensor, T_base_cam: torch.Tensor, pairs: torch.Tensor,
    mask: torch.Tensor | None = None, stride: int = 4, gate: float = 0.1,
) -> torch.Tensor:
    """Cross-view depth consistency of adjacent cameras, occlusion-aware, in log space.

    For both directions of each pair, the residual r = log z_ij - log d_j of
    every comparable strided pixel (:func:`cross_view_residuals`); the loss is
    mean |r| over the kept pixels of each directed pair, then over pairs that
    kept any.

    Occlusion, one-sided on purpose: a point seen by i but hidden in j lies
    *behind* j's surface (z_ij > d_j, r > 0) — never in front of it. So only
    positive residuals beyond the pair's gate ``max(gate, 3 * median|r|)``
    (median detached) are dropped as occluded; negative ones always count
    (a point in front of what j sees is a real contradiction). The gate
    follows the median so a whole-image scale error, which shifts every
    residual of a pair alike, is never mistaken for occlusion; ``gate`` (log
    units, 0.1 = 10 %) is the floor when the views already agree. The L1
    penalty bounds the pull of bilinear samples that straddle a depth edge.

    Args:
        depth: (B, 1, H, W) metres (> 0), K at this size.
        K: (B, 3, 3) intrinsics; T_base_cam: (B, 4, 4) optical -> base_link.
        pairs: (P, 2) adjacent pairs of batch indices (each used in both directions).
        mask: optional (B, 1, H, W) bool, True = may enter the loss (ego pixels False).
        stride: compare every ``stride``-th row and column of the source (cost).
        gate: occlusion gate floor in log units.
    """
    _check_geometry(depth, K, T_base_cam)
    if stride < 1 or gate <= 0:
        raise ValueError(f"cross_view_loss needs stride >= 1 and gate > 0, got {stride}, {gate}")
    valid = region_mask(mask, depth)
    r, comparable = cross_view_residuals(depth, K.to(depth.dtype), T_base_cam.to(depth.dtype), pairs, valid, stride)
    if r.shape[0] == 0:
        return depth.sum() * 0.0
    abs_r = r.detach().abs()
    median = torch.where(comparable, abs_r, torch.full_like(abs_r, float("nan"))).nanmedian(dim=1).values
    pair_gate = torch.clamp(GATE_SPREAD * torch.nan_to_num(median, nan=0.0), min=gate)
    kept = comparable & (r.detach() <= pair_gate.unsqueeze(1))
    count = kept.sum(1)
    per_pair = torch.where(kept, r.abs(), torch.zeros_like(r)).sum(1) / count.clamp_min(1).to(r.dtype)
    return mean_over_images(per_pair, count > 0)


def ground_plane_hits(
    K: torch.Tensor, T_base_cam: torch.Tensor, height: int, width: int, stride: int, ground_z: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each strided pixel's ray meets the plane z = ``ground_z`` (base_link) -> (depth, lateral), (B, N).

    depth: optical depth of the hit, +Inf where the ray does not go down to the
    plane (above the horizon, or the camera is not above the plane); rays have
    unit optical z, so the ray parameter at the plane is the depth itself.
    lateral: the hit's base_link y (left of the vehicle's centre line), NaN without a hit.
    """
    pixels = _strided_pixels(height, width, stride, K)
    rays_base = _optical_rays(K, pixels) @ T_base_cam[:, :3, :3].transpose(1, 2)
    drop = (ground_z - T_base_cam[:, 2, 3]).unsqueeze(1)  # < 0 for a camera above the plane
    down = rays_base[..., 2]
    hits = (down < -EPS) & (drop < 0)
    t = drop / torch.where(hits, down, -torch.ones_like(down))
    lateral = T_base_cam[:, 1, 3].unsqueeze(1) + t * rays_base[..., 1]
    nan = torch.full_like(t, float("nan"))
    return torch.where(hits, t, torch.full_like(t, float("inf"))), torch.where(hits, lateral, nan)


def _road_peak_of_rows(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B,) the road's residual per row: the highest-valued peak of a histogram of the valid values.

    Histogram MODE_BIN wide over [-MODE_RANGE, MODE_RANGE], smoothed [1, 2, 1];
    a peak is a local maximum holding at least ROAD_PEAK_FRACTION of the
    largest one. The highest such peak, not the largest: whatever stands on
    the road is closer than the plane (lower residual), so a truck filling
    the lane ahead makes a bigger peak than the road's — but a lower one.
    A histogram rather than a median for the same reason: the median walks
    into that tail.
    """
    nbins = round(2 * MODE_RANGE / MODE_BIN)
    idx = ((x.clamp(-MODE_RANGE, MODE_RANGE - 1e-6) + MODE_RANGE) / MODE_BIN).long().clamp(0, nbins - 1)
    hist = torch.zeros(x.shape[0], nbins, dtype=x.dtype, device=x.device)
    hist.scatter_add_(1, idx, valid.to(x.dtype))
    kernel = torch.tensor([[[1.0, 2.0, 1.0]]], dtype=x.dtype, device=x.device)
    smooth = F.conv1d(hist.unsqueeze(1), kernel, padding=1)[:, 0]
    padded = F.pad(smooth, (1, 1), value=-1.0)
    local_max = (smooth >= padded[:, :-2]) & (smooth >= padded[:, 2:])
    peak = local_max & (smooth >= ROAD_PEAK_FRACTION * smooth.amax(1, keepdim=True)) & (smooth > 0)
    bins = torch.arange(nbins, device=x.device).expand_as(peak)
    highest = torch.where(peak, bins, torch.full_like(bins, -1)).amax(1).clamp_min(0)
    return (highest.to(x.dtype) + 0.5) * MODE_BIN - MODE_RANGE


def ground_scale_loss(
    depth: torch.Tensor, K: torch.Tensor, T_base_cam: torch.Tensor, mask: torch.Tensor | None = None,
    ground_z: float = 0.0, max_depth: float = 20.0, half_width: float = 1.5, band: float = 0.1, stride: int = 4,
) -> torch.Tensor:
    """Per-image metric scale from the road plane: |mean log(D / D_plane)| over the road's pixels.

    Candidates: strided valid pixels whose ray meets the plane within
    ``max_depth`` metres and within ``half_width`` metres of the vehicle's
    centre line — the vehicle drives on road, so its own lane is road, while
    beside it a raised sidewalk (15 cm is -10 % depth from 1.5 m) can fill a
    side camera's whole lower image and would become that image's "road".
    Their residual g = log D - log D_plane is the image's log scale error on
    the road; anything standing on the road (cars, people, kerbs, walls) is
    closer than the plane, so its g is lower. The road is therefore taken as
    the pixels within ``band`` of the highest substantial peak of g
    (:func:`_road_peak_of_rows`, detached), and the per-image scale s = mean g over them is penalised as
    |s|: a SCALE term — objects off the peak get no gradient, so they are not
    flattened into the road. Images with fewer than MIN_GROUND_PIXELS road
    pixels (road hidden or out of view) are left out; cross-view consistency
    carries the scale to them.

    Args:
        depth: (B, 1, H, W) metres (> 0), K at this size.
        K: (B, 3, 3); T_base_cam: (B, 4, 4) optical -> base_link.
        mask: optional (B, 1, H, W) bool, True = may enter the loss.
        ground_z: the road plane's height in base_link (0 when base_link is on the ground).
        max_depth: farthest plane depth used (attitude errors grow with range).
        half_width: lateral reach (m) of the road corridor around the vehicle's centre line.
        band: half width of the road's residual band around its peak (log units).
        stride: every ``stride``-th row and column.
    """
    _check_geometry(depth, K, T_base_cam)
    if stride < 1 or band <= 0 or max_depth <= 0 or half_width <= 0:
        raise ValueError("ground_scale_loss needs stride >= 1 and band, max_depth, half_width > 0; got "
                         f"{stride}, {band}, {max_depth}, {half_width}")
    h, w = depth.shape[-2:]
    plane, lateral = ground_plane_hits(K.to(depth.dtype), T_base_cam.to(depth.dtype), h, w, stride, ground_z)
    candidate = (plane <= max_depth) & (lateral.abs() <= half_width) & _strided(region_mask(mask, depth), stride)
    one = torch.ones_like(plane)
    g = torch.log(torch.where(candidate, _strided(depth, stride), one).clamp_min(EPS)) \
        - torch.log(torch.where(candidate, plane, one))
    peak = _road_peak_of_rows(g.detach(), candidate)
    road = candidate & ((g.detach() - peak.unsqueeze(1)).abs() <= band)
    count = road.sum(1)
    scale = torch.where(road, g, torch.zeros_like(g)).sum(1) / count.clamp_min(1).to(g.dtype)
    return mean_over_images(scale.abs(), count >= MIN_GROUND_PIXELS)
