"""Rig pose network: one ego motion per surround set, for bags without usable /tf odometry.

Why one motion per set (FSM, VFDepth): the cameras are bolted to one body, so
between two frames they all move by the same base motion, seen through each
camera's extrinsics. Each camera predicts its own 6-DoF motion from its
(target, source) pair with a small shared CNN; the motion is moved into the
base frame exactly (T_base_cam @ T_cam @ inv(T_base_cam), which rotates the
axis-angle vector by the camera's rotation) and the base-frame axis-angles
and translations are averaged over the cameras. The average is a rig
constraint (one camera looking at a moving truck is outvoted) and, because
the extrinsics are metric, ties the translation to metric scale through the
spatial photometric terms.

Outputs start near identity (x0.01, as monodepth2's pose decoder) so the
first steps warp with almost no motion instead of a random one.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

#: Scale of the raw network output (monodepth2): small motions at init, the layers learn the range.
OUTPUT_SCALE = 0.01
#: Below this rotation angle (rad) Rodrigues' coefficients use their Taylor series (no 0/0).
SMALL_ANGLE = 1e-4
#: ImageNet-ish normalisation of the [0, 1] input images.
MEAN, STD = 0.45, 0.225


def skew(w: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrices [w]x."""
    zero = torch.zeros_like(w[..., 0])
    x, y, z = w.unbind(-1)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*w.shape[:-1], 3, 3)


def axis_angle_to_matrix(w: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle (angle = norm, radians) -> (..., 3, 3) rotations (Rodrigues).

    R = I + a [w]x + b [w]x^2 with a = sin t / t, b = (1 - cos t) / t^2; small
    angles take the series of a and b so the value and gradient stay finite at 0.
    """
    theta2 = (w * w).sum(-1, keepdim=True).unsqueeze(-1)
    small = theta2 < SMALL_ANGLE**2
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta2), theta2))
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta * theta))
    k = skew(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def pose_from_vector(w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle and (..., 3) translation -> (..., 4, 4) rigid transforms."""
    top = torch.cat([axis_angle_to_matrix(w), t.unsqueeze(-1)], -1)
    bottom = torch.zeros(*w.shape[:-1], 1, 4, dtype=w.dtype, device=w.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], -2)


def camera_motion_in_base(w_cam: torch.Tensor, t_cam: torch.Tensor, T_base_cam: torch.Tensor) -> tuple:
    """A camera-frame motion (axis-angle, translation) -> the same motion in the base frame, (..., 3) each.

    T_base_cam @ T_cam @ inv(T_base_cam): the rotation is R_bc R_c R_bc^T,
    whose axis-angle is R_bc w_c; the translation R_bc t_c + t_bc - R_b t_bc.
    """
    R_bc = T_base_cam[..., :3, :3]
    t_bc = T_base_cam[..., :3, 3]
    w_base = (R_bc @ w_cam.unsqueeze(-1)).squeeze(-1)
    R_base = axis_angle_to_matrix(w_base)
    t_base = (R_bc @ t_cam.unsqueeze(-1)).squeeze(-1) + t_bc - (R_base @ t_bc.unsqueeze(-1)).squeeze(-1)
    return w_base, t_base


class RigPoseNet(nn.Module):
    """(target, source) surround sets -> base(t_src) <- base(t_tgt) per set, (S, 4, 4).

    A few strided convolutions on each camera's 6-channel pair (weights shared
    by the cameras), global average pooling, 6 numbers (axis-angle,
    translation in metres) x OUTPUT_SCALE per camera: the camera's motion
    T_srccam_tgtcam; moved into the base frame and averaged over the cameras.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        chans = [6, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for cin, cout in itertools.pairwise(chans):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Conv2d(chans[-1], 6, 1)

    def camera_motions(self, target: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, N, 3, H, W) pairs -> each camera's (axis-angle, translation), (S, N, 3) each, camera frame."""
        s, n = target.shape[:2]
        pair = torch.cat([target, source], 2).reshape(s * n, 6, *target.shape[-2:])
        out = self.head(self.encoder((pair - MEAN) / STD)).mean((2, 3)) * OUTPUT_SCALE
        out = out.reshape(s, n, 6)
        return out[..., :3], out[..., 3:]

    def forward(self, target: torch.Tensor, source: torch.Tensor, T_base_cam: torch.Tensor) -> torch.Tensor:
        """(S, N, 3, H, W) target and source sets, (S, N, 4, 4) extrinsics -> (S, 4, 4) base(t_src) <- base(t_tgt)."""
        if target.dim() != 5 or target.shape != source.shape or target.shape[2] != 3:
            raise ValueError(f"RigPoseNet needs equal (S, N, 3, H, W) target and source, got "
                             f"{tuple(target.shape)} and {tuple(source.shape)}")
        if tuple(T_base_cam.shape) != (*target.shape[:2], 4, 4):
            raise ValueError(f"T_base_cam must be {(*target.shape[:2], 4, 4)}, got {tuple(T_base_cam.shape)}")
        w_cam, t_cam = self.camera_motions(target, source)
        w_base, t_base = camera_motion_in_base(w_cam, t_cam, T_base_cam.to(w_cam.dtype))
        return pose_from_vector(w_base.mean(1), t_base.mean(1))
