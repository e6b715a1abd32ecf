"""A ray-cast room with a smooth 3D texture: images and depth of any pinhole camera pose, for the warp tests.

Why ray-cast: every camera of the room sees the same surfaces with the same
colours (the texture is a function of the 3D point), so a warp through the
true depth and pose must reproduce the target up to bilinear interpolation of
a smooth texture; the numbers asserted follow from the geometry, not from the
code under test. The world frame is an optical frame (x right, y down, z
forward); the camera sits inside the convex room, so the first plane a ray
meets is the visible surface.
"""

from __future__ import annotations

import math

import torch

W, H = 64, 48
#: Room planes n . X = d (inward normals not needed: the nearest positive hit is the surface).
PLANES = [((1.0, 0.0, 0.0), -5.0), ((1.0, 0.0, 0.0), 5.0), ((0.0, 1.0, 0.0), -4.0), ((0.0, 1.0, 0.0), 1.5),
          ((0.0, 0.0, 1.0), -3.0), ((0.0, 0.0, 1.0), 9.0)]
#: Wave vectors (rad/m) of the texture per channel: wavelengths of 2-4 m, several pixels even on the far wall.
WAVES = [((2.1, 0.7, 1.3), (0.4, -1.9, 0.8)), ((-1.2, 1.8, 0.9), (1.6, 0.5, -1.4)),
         ((0.9, -1.1, 2.0), (-1.7, -0.6, 1.1))]


def intrinsics(width: int = W, height: int = H, hfov_deg: float = 90.0) -> torch.Tensor:
    """(3, 3) square-pixel pinhole, principal point at the centre (pixel centres at integers), float64."""
    f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return torch.tensor([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]],
                        dtype=torch.float64)


def rotation(yaw: float = 0.0, pitch: float = 0.0) -> torch.Tensor:
    """(3, 3) float64: a turn about the optical y axis (yaw, rad) then about x (pitch)."""
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    Ry = torch.tensor([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]], dtype=torch.float64)
    Rx = torch.tensor([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]], dtype=torch.float64)
    return Ry @ Rx


def pose(R: torch.Tensor, t: tuple[float, float, float]) -> torch.Tensor:
    """(4, 4) float64 rigid transform from a rotation and a translation."""
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = R
    T[:3, 3] = torch.tensor(t, dtype=torch.float64)
    return T


def texture(points: torch.Tensor) -> torch.Tensor:
    """(..., 3) world points -> (..., 3) colours in [0.1, 0.9]."""
    chans = []
    for k1, k2 in WAVES:
        a = points @ torch.tensor(k1, dtype=points.dtype)
        b = points @ torch.tensor(k2, dtype=points.dtype)
        chans.append(0.5 + 0.2 * torch.sin(a) + 0.2 * torch.cos(b))
    return torch.stack(chans, -1)


def render(T_world_cam: torch.Tensor, K: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Image (3, H, W) float32 and optical depth (1, H, W) float32 of the room seen from ``T_world_cam``."""
    K = intrinsics() if K is None else K
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1)
    rays_cam = pix @ torch.linalg.inv(K).T  # unit optical z: the ray parameter is the depth
    rays = rays_cam @ T_world_cam[:3, :3].T
    origin = T_world_cam[:3, 3]
    best = torch.full((H, W), float("inf"), dtype=torch.float64)
    for n, d in PLANES:
        n_t = torch.tensor(n, dtype=torch.float64)
        denom = rays @ n_t
        lam = (d - origin @ n_t) / torch.where(denom.abs() > 1e-12, denom, torch.full_like(denom, 1e-12))
        best = torch.where((lam > 1e-6) & (lam < best), lam, best)
    points = origin + best.unsqueeze(-1) * rays
    image = texture(points).permute(2, 0, 1)
    return image.float(), best.unsqueeze(0).float()


def pair(T_world_src: torch.Tensor) -> dict[str, torch.Tensor]:
    """Target at the world origin, source at ``T_world_src``: images, depth, K and T_src_tgt with a batch dim."""
    tgt, depth = render(torch.eye(4, dtype=torch.float64))
    src, _ = render(T_world_src)
    K = intrinsics().float()
    return {"target": tgt[None], "source": src[None], "depth": depth[None], "K": K[None],
            "T_src_tgt": torch.linalg.inv(T_world_src).float()[None]}


#: A source camera 0.4 m right, 5 cm up, 0.3 m ahead, turned 4 deg: parallax of several pixels.
SOURCE_POSE = pose(rotation(math.radians(4.0), math.radians(-1.0)), (0.4, -0.05, 0.3))


# --- a three-camera rig driving through the room ------------------------------------------------------------

RING = [(1, 2), (0, 0), (0, 0)]  # camera 0 between 1 and 2; 1 and 2 see only camera 0's overlap band
YAWS = (0.0, math.radians(55.0), math.radians(-55.0))
POSITIONS = ((0.0, 0.0, 1.0), (0.7, 0.05, 0.7), (-0.7, -0.05, 0.7))  # baselines of ~0.75 m like a car's rig


def rig_extrinsics(n: int = 3) -> torch.Tensor:
    """(N, 4, 4) float64 camera -> base: the base frame is an optical-like frame 1 m behind the front camera."""
    return torch.stack([pose(rotation(YAWS[k]), POSITIONS[k]) for k in range(n)])


def rig_odom(z: float, yaw: float = 0.0) -> torch.Tensor:
    """(4, 4) float64 base -> odometry (= the room's world frame, shifted 1 m back)."""
    return pose(rotation(yaw), (0.05 * z, 0.0, z - 1.0))


def room_batch(times: tuple[float, float, float] = (-0.3, 0.0, 0.35)) -> dict[str, torch.Tensor]:
    """S=1 set of N=3 cameras at t with prev/next sets, rendered in the room; depth of the current set too."""
    cams = rig_extrinsics()
    sets = []
    for z in times:
        T_odom = rig_odom(z, 0.2 * z)
        imgs, depths = zip(*(render(T_odom @ cams[k]) for k in range(3)), strict=True)
        sets.append((torch.stack(imgs), torch.stack(depths), T_odom.expand(3, 4, 4)))
    K = intrinsics().float().expand(3, 3, 3)
    one = torch.tensor([True])
    return {"images": sets[1][0][None], "depth": sets[1][1][None], "K": K[None], "T_base_cam": cams.float()[None],
            "T_odom_base": sets[1][2][None], "has_odom": one,
            "prev_images": sets[0][0][None], "prev_T_odom_base": sets[0][2][None], "has_prev": one,
            "next_images": sets[2][0][None], "next_T_odom_base": sets[2][2][None], "has_next": one}
