"""Camera and LiDAR sensors of the synthetic rig.

A :class:`CameraRenderer` turns one vehicle pose into an 8-bit RGB image and
its exact depth (metres along the optical Z axis, +Inf = sky, REP 117/118);
a :class:`LidarRenderer` turns one pose into an organised multi-beam sweep.
Both reuse the same ray caster, so LiDAR points and rendered depth agree by
construction up to the LiDAR's range noise: the ground truth is consistent
across sensors, as it must be for a test of projection code.

Per-camera photometric differences of a real rig (exposure, vignetting,
sensor noise) are fixed per camera and seed; noise is drawn per frame from a
generator keyed on (seed, frame, camera), so renders are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fsmde_core.rig import Rig, RigCamera
from fsmde_core.synthetic.raycast import SKY, RayGrid, cast, shadow_mask
from fsmde_core.synthetic.shading import Textures, radiance, sky_colour, surface, tonemap
from fsmde_core.synthetic.world import Primitives, World

f32 = np.float32
_NOISE_SLACK = 65536


@dataclass
class CameraFrame:
    """One rendered image: ``rgb`` (H, W, 3) uint8 and ``depth`` (H, W) float32 (+Inf = sky)."""

    rgb: np.ndarray
    depth: np.ndarray


class CameraRenderer:
    """Renders one rig camera; rays, vignetting and exposure are fixed at construction."""

    def __init__(self, cam: RigCamera, index: int, world: World, textures: Textures, shadows: bool = True) -> None:
        self.cam = cam
        self.index = index
        self.world = world
        self.textures = textures
        self.shadows = shadows
        self.grid = RayGrid.pinhole(cam.model)
        m = cam.model
        H, W = m.height, m.width
        # vignetting: cos^4-like falloff in normalised image radius, mild as in automotive lenses
        xn = (np.arange(W, dtype=np.float32) - f32(m.cx)) / f32(W / 2)
        yn = (np.arange(H, dtype=np.float32) - f32(m.cy)) / f32(W / 2)
        r2 = xn[None, :] ** 2 + yn[:, None] ** 2
        rng = np.random.default_rng(np.random.SeedSequence([world.seed, 0xCA, index]))
        self.vignette = (f32(1.0) - f32(rng.uniform(0.12, 0.25)) * r2).reshape(1, -1).astype(np.float32)
        self.exposure = float(rng.uniform(0.9, 1.1))
        # sensor noise (in 8-bit levels): a bank drawn once, read at a per-frame random offset,
        # costs an addition instead of drawing 3 H W normals every frame
        sigma = float(rng.uniform(0.6, 1.6))
        self._noise = rng.standard_normal(3 * H * W + _NOISE_SLACK, dtype=np.float32) * f32(sigma)

    def render(self, T_odom_base: np.ndarray, prims: Primitives, frame: int) -> CameraFrame:
        m = self.cam.model
        H, W = m.height, m.width
        T = T_odom_base @ self.cam.T_base_cam
        hits = cast(self.grid, T, prims, self.world.road)
        surf = surface(self.world, hits, self.textures, self.grid.pixel_angle)
        if self.shadows:
            shadow = shadow_mask(self.grid, hits, T, self.world.lighting.sun_dir, self.world.road).ravel()
        else:
            shadow = np.zeros(H * W, dtype=bool)
        rad = np.empty((3, H * W), dtype=np.float32)
        sky = np.flatnonzero(hits.obj.ravel() == SKY)
        rad[:, sky] = sky_colour(
            self.world.lighting,
            np.take(hits.D.reshape(3, -1), sky, axis=1),
            hits.origin,
            self.textures,
            self.grid.pixel_angle,
        )
        rad[:, surf.index] = radiance(self.world, surf, np.take(shadow, surf.index))
        rgb = tonemap(rad * self.vignette, self.exposure) * f32(255.0)
        pick = np.random.default_rng(np.random.SeedSequence([self.world.seed, frame, self.index, 0x4015E]))
        start = int(pick.integers(0, _NOISE_SLACK))
        rgb += self._noise[start : start + rgb.size].reshape(rgb.shape)
        rgb8 = np.clip(np.rint(rgb), 0, 255).astype(np.uint8).T.reshape(H, W, 3)
        return CameraFrame(rgb=rgb8, depth=hits.t)


# ------------------------------------------------------------------ LiDAR
POINT_DTYPE = np.dtype(
    {
        "names": ["x", "y", "z", "intensity", "ring", "t"],
        "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<f4"],
        "offsets": [0, 4, 8, 12, 16, 20],
        "itemsize": 24,
    }
)


@dataclass(frozen=True)
class LidarSpec:
    """A spinning multi-beam LiDAR (HDL-32E-like by default).

    Attributes:
        beams: number of lasers (rows of the organised cloud, ring 0 = lowest).
        elevation_deg: (min, max) beam elevation, beams evenly spaced.
        azimuth_steps: firings per revolution (columns).
        period_s: revolution period; ``t`` of a column = its firing time after the stamp.
        max_range: no return beyond this range (m).
        range_noise: 1-sigma range noise (m).
        dropout: probability that a return is lost.
    """

    beams: int = 32
    elevation_deg: tuple[float, float] = (-25.0, 10.0)
    azimuth_steps: int = 1000
    period_s: float = 0.1
    max_range: float = 120.0
    range_noise: float = 0.01
    dropout: float = 0.005


class LidarRenderer:
    """Casts one sweep from the pose at its stamp.

    The sweep is delivered *motion-compensated to header.stamp*: every point is
    where the surface is in the sensor frame at the stamp (as DDAD/nuScenes
    clouds are); ``t`` still carries each column's nominal firing time, as
    drivers keep it after deskewing. No-return beams are NaN (organised cloud).
    """

    def __init__(self, rig: Rig, world: World, textures: Textures, spec: LidarSpec | None = None) -> None:
        self.rig = rig
        self.world = world
        self.textures = textures
        self.spec = spec or LidarSpec(max_range=min(float(rig.max_depth), 120.0))
        sp = self.spec
        self.elevations = np.linspace(sp.elevation_deg[0], sp.elevation_deg[1], sp.beams)
        self.grid = RayGrid.lidar(self.elevations, sp.azimuth_steps)
        self.ring = np.repeat(np.arange(sp.beams, dtype=np.uint16)[:, None], sp.azimuth_steps, axis=1)
        self.t_col = np.broadcast_to(
            (np.arange(sp.azimuth_steps) * (sp.period_s / sp.azimuth_steps)).astype(np.float32)[None],
            (sp.beams, sp.azimuth_steps),
        )

    def sweep(self, T_odom_base: np.ndarray, prims: Primitives, frame: int) -> np.ndarray:
        """(beams, azimuth_steps) structured array of :data:`POINT_DTYPE`."""
        sp = self.spec
        T = T_odom_base @ self.rig.T_base_lidar
        hits = cast(self.grid, T, prims, self.world.road, max_t=sp.max_range, clip=True)
        surf = surface(self.world, hits, self.textures, self.grid.pixel_angle)
        rng = np.random.default_rng(np.random.SeedSequence([self.world.seed, frame, 0x11DA2]))
        H, W = self.grid.shape
        rng_m = np.full(H * W, np.nan, dtype=np.float32)
        intensity = np.zeros(H * W, dtype=np.float32)
        d = surf.P / surf.rng
        cos_i = np.abs(d[0] * surf.normal[0] + d[1] * surf.normal[1] + d[2] * surf.normal[2])
        refl = surf.albedo.mean(0)
        intensity[surf.index] = np.clip(f32(255.0) * refl * (f32(0.3) + f32(0.7) * cos_i) * f32(1.6), 0, 255)
        rng_m[surf.index] = surf.rng + rng.standard_normal(surf.index.size, dtype=np.float32) * f32(sp.range_noise)
        lost = rng.random(H * W) < sp.dropout
        rng_m[lost] = np.nan
        intensity[lost | ~np.isfinite(rng_m)] = 0.0
        rng_m = rng_m.reshape(H, W)
        out = np.zeros((H, W), dtype=POINT_DTYPE)
        for i, name in enumerate("xyz"):
            out[name] = rng_m * self.grid.dirs[i]  # unit rays in the sensor frame
        out["intensity"] = intensity.reshape(H, W)
        out["ring"] = self.ring
        out["t"] = self.t_col
        return out
