"""Relative camera poses and depth-based image warping (inverse warping, monodepth2 style).

Why inverse warping: the loss lives on the *target* image's pixels, so each
target pixel is lifted with its predicted depth, moved into the source camera
and projected there; the source image is then sampled (bilinear) at that
spot. Gradients reach the depth through the sampling grid.

Conventions: poses are 4x4, ``T_a_b`` maps points in frame b to frame a;
camera frames are REP 103 optical frames; ``K`` is pinhole at the image size
with pixel centres at integer coordinates. Lens distortion is ignored: the
synthetic rigs and the nuScenes images are rectified (D = 0), and a distorted
rig would only blur the warp near the image edges.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (the universal torch idiom)

from fsmde_core.distill.geometric import MIN_Z, _optical_rays, _strided_pixels

#: Pixels may land this far (px) outside the outer pixel centres and still count as inside: float rounding of
#: K^-1 and K puts an identity warp's border pixels at -1e-6 px (the border padding samples the edge there).
EDGE_TOL = 1e-3


def invert_rigid(T: torch.Tensor) -> torch.Tensor:
    """(..., 4, 4) rigid transforms -> their inverses in closed form (R^T, -R^T t).

    Exact for rigid transforms and cheaper and better conditioned than a general
    matrix inverse when translations are large (odometry in kilometres).
    """
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    out = torch.zeros_like(T)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1.0
    return out


def relative_camera_poses(
    T_odom_base_src: torch.Tensor, T_base_cam_src: torch.Tensor,
    T_odom_base_tgt: torch.Tensor, T_base_cam_tgt: torch.Tensor,
) -> torch.Tensor:
    """T_srccam_tgtcam = inv(T_odom_base_src @ T_base_cam_src) @ (T_odom_base_tgt @ T_base_cam_tgt), (..., 4, 4).

    Odometry coordinates can be kilometres from the origin, where float32 keeps
    only millimetres and the frame-to-frame motion is a few decimetres. So the
    composition runs in float64 and *relative to the target base pose*: both
    odometry poses are shifted by the target's translation before the product,
    so the large numbers cancel exactly before anything is multiplied. The
    result (a small relative pose) is returned as float32.
    """
    src = T_odom_base_src.to(torch.float64)
    tgt = T_odom_base_tgt.to(torch.float64)
    origin = tgt[..., :3, 3:].clone()
    src = src.clone()
    tgt = tgt.clone()
    src[..., :3, 3:] -= origin
    tgt[..., :3, 3:] -= origin
    base_src_base_tgt = invert_rigid(src) @ tgt
    cam_src = T_base_cam_src.to(torch.float64)
    cam_tgt = T_base_cam_tgt.to(torch.float64)
    return (invert_rigid(cam_src) @ base_src_base_tgt @ cam_tgt).to(torch.float32)


def _check_warp_inputs(depth: torch.Tensor, K_tgt: torch.Tensor, K_src: torch.Tensor, T: torch.Tensor) -> None:
    """One clear line when the shapes of a warp's inputs disagree."""
    if depth.dim() != 4 or depth.shape[1] != 1:
        raise ValueError(f"depth must be (B, 1, H, W), got {tuple(depth.shape)}")
    b = depth.shape[0]
    for name, x, shape in (("K_tgt", K_tgt, (b, 3, 3)), ("K_src", K_src, (b, 3, 3)), ("T_src_tgt", T, (b, 4, 4))):
        if tuple(x.shape) != shape:
            raise ValueError(f"{name} must be {shape} to match depth's batch, got {tuple(x.shape)}")


def sampling_grid(
    depth_tgt: torch.Tensor, K_tgt: torch.Tensor, K_src: torch.Tensor, T_src_tgt: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each target pixel lands in the source image -> (grid (B, H, W, 2) in [-1, 1], valid (B, 1, H, W)).

    valid: the point is in front of the source camera (z > MIN_Z) and lands
    inside the image (between the outer pixel centres, so all four bilinear
    neighbours exist). Invalid pixels get grid 0 (finite, no gradient).
    """
    _check_warp_inputs(depth_tgt, K_tgt, K_src, T_src_tgt)
    b, _, h, w = depth_tgt.shape
    dtype = depth_tgt.dtype
    K_tgt, K_src, T = K_tgt.to(dtype), K_src.to(dtype), T_src_tgt.to(dtype)
    rays = _optical_rays(K_tgt, _strided_pixels(h, w, 1, depth_tgt))  # (B, HW, 3), unit optical z
    pts = rays * depth_tgt.reshape(b, -1, 1)
    pts_src = pts @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]
    z = pts_src[..., 2]
    in_front = torch.isfinite(z) & (z > MIN_Z)
    z_safe = torch.where(in_front, z, torch.ones_like(z))
    pts_safe = torch.where(in_front.unsqueeze(-1), pts_src, torch.ones_like(pts_src))
    uv = (pts_safe @ K_src.transpose(1, 2))[..., :2] / z_safe.unsqueeze(-1)
    u, v = uv[..., 0], uv[..., 1]
    inside = in_front & (u >= -EDGE_TOL) & (u <= w - 1 + EDGE_TOL) & (v >= -EDGE_TOL) & (v <= h - 1 + EDGE_TOL)
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=dtype, device=depth_tgt.device)
    grid = torch.where(inside.unsqueeze(-1), uv * scale - 1.0, torch.zeros_like(uv))
    return grid.reshape(b, h, w, 2), inside.reshape(b, 1, h, w)


def sample_with_grid(src: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear (B, C, H, W) at a :func:`sampling_grid` grid (pixel centres at integers: align_corners)."""
    return F.grid_sample(src, grid.to(src.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def warp_image(
    src: torch.Tensor, depth_tgt: torch.Tensor, K_tgt: torch.Tensor, K_src: torch.Tensor, T_src_tgt: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The source image seen from the target camera through the target's depth -> (warped, valid).

    Args:
        src: (B, C, H, W) source images (any channels: RGB, log-diffuse, ...).
        depth_tgt: (B, 1, H, W) target depth in metres along the optical axis (finite, > 0), at ``src``'s size.
        K_tgt, K_src: (B, 3, 3) intrinsics of the target and source cameras at this size.
        T_src_tgt: (B, 4, 4) target camera frame -> source camera frame.

    Returns:
        warped (B, C, H, W) and valid (B, 1, H, W) bool: in front of the source
        camera (z > 0.1 m) and inside its image. Invalid pixels hold border samples; ignore them.
    """
    if src.dim() != 4 or src.shape[0] != depth_tgt.shape[0] or src.shape[-2:] != depth_tgt.shape[-2:]:
        raise ValueError(f"src {tuple(src.shape)} must be (B, C, H, W) matching depth {tuple(depth_tgt.shape)}")
    grid, valid = sampling_grid(depth_tgt, K_tgt, K_src, T_src_tgt)
    return sample_with_grid(src, grid), valid
