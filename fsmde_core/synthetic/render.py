"""Camera and LiDAR sensors of the synthetic rig.

A :class:`CameraRenderer` turns one vehicle pose into an 8-bit RGB image,
its exact depth (metres along the optical Z axis, +Inf = sky, REP 117/118)
and its semantic labels (:mod:`fsmde_core.semantics`, from the same hits: the
sky label is exactly where the depth is +Inf);
a :class:`LidarRenderer` turns one pose into an organised multi-beam sweep.
Both reuse the same ray caster, so LiDAR points and rendered depth agree by
construction up to the LiDAR's range noise: the ground truth is consistent
across sensors, as it must be for a test of projection code.

Per-camera photometric differences of a real rig (exposure, vignetting,
sensor noise) are fixed per camera and seed; noise is drawn per frame from a
generator keyed on (seed, frame, camera), so renders are reproducible.

An adverse :class:`~fsmde_core.synthetic.weather.Weather` (night, dusk, fog,
rain) adds its effects (:mod:`fsmde_core.synthetic.adverse`) to the linear
radiance and the LiDAR ranges; the depth and labels are those of the clear
world, and with the clear weather nothing in the render path changes.

With reflective materials (:class:`~fsmde_core.synthetic.specular.Specular`,
``fsmde synth --reflective``) mirror rays are traced from car windows and paint,
glass facades and puddles and mixed into the radiance by their Fresnel weight; the
frame then also carries the reflective mask. Depth and labels stay those of the
surface (not of what it reflects), byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from fsmde_core import semantics as sem
from fsmde_core.rig import Rig, RigCamera
from fsmde_core.synthetic import adverse
from fsmde_core.synthetic.raycast import SKY, Hits, RayGrid, cast, shadow_mask
from fsmde_core.synthetic.shading import Surface, Textures, radiance, sky_colour, surface, tonemap
from fsmde_core.synthetic.specular import MASK_WEIGHT, MIN_WEIGHT, Specular, reflected_radiance
from fsmde_core.synthetic.weather import Weather, degrade_lidar
from fsmde_core.synthetic.world import WORLD_MARGIN, Primitives, World

f32 = np.float32
_NOISE_SLACK = 65536
_TILE = 16  # mirror rays are culled in groups of one mirror's pixels in one 16x16 image tile


@dataclass
class CameraFrame:
    """One rendered image: ``rgb`` (H, W, 3) uint8, ``depth`` (H, W) float32 (+Inf = sky),
    ``labels`` (H, W) uint8 semantic classes (:mod:`fsmde_core.semantics`) and, with reflective
    materials, ``reflective`` (H, W) bool (reflection weight above ``specular.MASK_WEIGHT``)."""

    rgb: np.ndarray
    depth: np.ndarray
    labels: np.ndarray
    reflective: np.ndarray | None = None


class CameraRenderer:
    """Renders one rig camera; rays, vignetting and exposure are fixed at construction."""

    def __init__(self, cam: RigCamera, index: int, world: World, textures: Textures, shadows: bool = True,
                 weather: Weather | None = None, specular: Specular | None = None) -> None:
        self.cam = cam
        self.specular = specular
        self.index = index
        self.world = world
        self.textures = textures
        self.shadows = shadows
        self.weather = weather if weather is not None and not weather.is_clear else None
        w = self.weather
        self.street_lamps = adverse.street_lamps(world, w.light_scale) if w and w.street_lights else None
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

    def render(self, T_odom_base: np.ndarray, prims: Primitives, frame: int, t: float = 0.0) -> CameraFrame:
        """One image at pose ``T_odom_base`` (world time ``t``: lights of moving cars, ego motion blur)."""
        m = self.cam.model
        H, W = m.height, m.width
        T = T_odom_base @ self.cam.T_base_cam
        hits = cast(self.grid, T, prims, self.world.road)
        surf = surface(self.world, hits, self.textures, self.grid.pixel_angle, self.specular)
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
        if self.weather is not None and self.weather.wet > 0:
            adverse.wet_ground(surf, self.weather.wet)
        rad[:, surf.index] = radiance(self.world, surf, np.take(shadow, surf.index))
        reflective = None if self.specular is None else self._mirrors(rad, hits, surf)
        if self.weather is None:
            rgb = tonemap(rad * self.vignette, self.exposure) * f32(255.0)
        else:
            rgb = self._adverse(rad, hits, surf, T_odom_base, frame, t)
        pick = np.random.default_rng(np.random.SeedSequence([self.world.seed, frame, self.index, 0x4015E]))
        start = int(pick.integers(0, _NOISE_SLACK))
        rgb += self._noise[start : start + rgb.size].reshape(rgb.shape)
        rgb8 = np.clip(np.rint(rgb), 0, 255).astype(np.uint8).T.reshape(H, W, 3)
        return CameraFrame(rgb=rgb8, depth=hits.t, labels=pixel_labels(surf, H, W), reflective=reflective)

    def _mirrors(self, rad: np.ndarray, hits: Hits, surf: Surface) -> np.ndarray:
        """Mix the traced reflections into ``rad`` (3, H*W) in place; returns the (H, W) reflective mask."""
        H, W = self.cam.model.height, self.cam.model.width
        sel = np.flatnonzero(surf.mirror > f32(MIN_WEIGHT))
        mask = np.zeros(H * W, dtype=bool)
        if sel.size:
            pix = np.take(surf.index, sel)
            seen = reflected_radiance(self.world, self.textures, hits, np.take(surf.P, sel, axis=1),
                                      np.take(surf.normal, sel, axis=1), np.take(hits.obj.ravel(), pix),
                                      self.grid.pixel_angle, (pix // W) // _TILE * W + (pix % W) // _TILE)
            w = np.take(surf.mirror, sel)
            diffuse = np.take(rad, pix, axis=1)
            rad[:, pix] = diffuse + (seen - diffuse) * w
            mask[pix] = w > f32(MASK_WEIGHT)
        return mask.reshape(H, W)

    def _adverse(self, rad: np.ndarray, hits: Hits, surf: Surface, T_odom_base: np.ndarray, frame: int,
                 t: float) -> np.ndarray:
        """Lights, blur, rain and sensor noise of the weather on the linear radiance -> 0-255 float image."""
        w, world, m = self.weather, self.world, self.cam.model
        H, W = m.height, m.width
        rng = np.random.default_rng(np.random.SeedSequence([world.seed, frame, self.index, 0xADE5]))
        lamps = adverse.Lamps.empty()
        if w.headlights:
            lamps = lamps.concat(adverse.vehicle_lamps(world, t, T_odom_base, w.light_scale))
        if self.street_lamps is not None:
            lamps = lamps.concat(self.street_lamps)
        lamps = lamps.within(hits.origin, 150.0)
        if lamps.pos.shape[0]:
            extra = adverse.artificial_light(surf, hits.origin, lamps, w.fog_beta)
            rad[:, surf.index] += extra * np.exp(-surf.rng / f32(world.lighting.fog_distance))
        if w.exposure_s > 0:
            half = 0.5 * w.exposure_s
            T0 = world.ego_pose(t - half) @ self.cam.T_base_cam
            T1 = world.ego_pose(t + half) @ self.cam.T_base_cam
            fu, fv = adverse.image_motion(m, self.grid.dirs, hits.t, T0, T1)
            rad = adverse.motion_blur(rad, H, W, fu, fv)
        if w.streaks > 0:
            rad = adverse.rain_streaks(rad, H, W, w.streaks, w.wind, world.lighting.horizon_rgb * 1.6, rng)
        rad = adverse.veil(rad, w.veil)
        if w.droplets:  # drops stay on the lens for 2 s
            drops = np.random.default_rng(np.random.SeedSequence([world.seed, frame // 20, self.index, 0xD209]))
            rad = adverse.lens_droplets(rad, H, W, w.droplets, drops)
        x = rad * self.vignette * f32(self.exposure * w.gain)
        x = adverse.sensor_noise(x, w.gain, w.full_well, w.read_noise_e, rng)
        return tonemap(x, 1.0) * f32(255.0)


def pixel_labels(surf: Surface, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 label map of a camera cast: every pixel without a hit is sky, the rest say what they hit."""
    labels = np.full(height * width, sem.SKY, dtype=np.uint8)
    labels[surf.index] = surf.label
    return labels.reshape(height, width)


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
        start_azimuth_deg: azimuth (sensor frame, CCW from +x) of column 0; the
            beam turns clockwise from there, as Velodyne/Hesai heads do.
        rolling_chunks: 0 = the whole sweep from the pose at its stamp (a
            deskewed cloud); K > 0 = a raw rolling sweep cast in K azimuth
            chunks, each from the pose at its own firing time.
    """

    beams: int = 32
    elevation_deg: tuple[float, float] = (-25.0, 10.0)
    azimuth_steps: int = 1000
    period_s: float = 0.1
    max_range: float = 120.0
    range_noise: float = 0.01
    dropout: float = 0.005
    start_azimuth_deg: float = 180.0
    rolling_chunks: int = 0


def camera_azimuths(rig: Rig) -> np.ndarray:
    """(n_cam,) azimuth (rad, LiDAR frame, CCW from +x) of each camera's optical axis."""
    R_lidar_base = rig.T_base_lidar[:3, :3].T
    z = np.stack([R_lidar_base @ c.T_base_cam[:3, 2] for c in rig.cameras])
    return np.arctan2(z[:, 1], z[:, 0])


def sweep_start_azimuth_deg(azimuths: np.ndarray) -> float:
    """Where a triggering LiDAR's sweep starts: the middle of the widest gap between camera axes.

    No camera then fires right at the start or end of a revolution, so each
    camera's trigger falls inside the sweep that carries its stamp (the
    published one) and the rig's stamps spread over (n-1)/n of a revolution.
    """
    a = np.sort(np.mod(azimuths, 2 * np.pi))
    gaps = np.diff(np.concatenate([a, a[:1] + 2 * np.pi]))
    k = int(np.argmax(gaps))
    return float(np.degrees(np.mod(a[k] + gaps[k] / 2, 2 * np.pi)))


def trigger_phases_s(azimuths: np.ndarray, spec: LidarSpec) -> np.ndarray:
    """(n_cam,) seconds after the sweep start at which the clockwise beam passes each camera's axis."""
    turn = np.mod(np.radians(spec.start_azimuth_deg) - azimuths, 2 * np.pi)
    return turn / (2 * np.pi) * spec.period_s


class LidarRenderer:
    """Casts one sweep of a spinning LiDAR.

    With ``rolling_chunks == 0`` the sweep is delivered *motion-compensated to
    header.stamp*: every point is where the surface is in the sensor frame at
    the stamp (as DDAD/nuScenes clouds are), and ``t`` is 0 for every point (the
    time the geometry refers to). With ``rolling_chunks = K`` it is a raw sweep:
    the columns are cast in K azimuth chunks, each from the ego pose (and
    traffic) at the chunk's mid firing time, and ``t`` is each column's firing
    time after the stamp (so ``t`` and the geometry agree within half a chunk,
    0.5 ms at 20 Hz and K = 50). No-return beams are NaN (organised cloud).
    """

    def __init__(self, rig: Rig, world: World, textures: Textures, spec: LidarSpec | None = None,
                 weather: Weather | None = None) -> None:
        self.rig = rig
        self.world = world
        self.textures = textures
        self.weather = weather if weather is not None and not weather.is_clear else None
        self.spec = spec or LidarSpec(max_range=min(float(rig.max_depth), 120.0))
        sp = self.spec
        self.elevations = np.linspace(sp.elevation_deg[0], sp.elevation_deg[1], sp.beams)
        self.grid = RayGrid.lidar(self.elevations, sp.azimuth_steps, az0_deg=sp.start_azimuth_deg)
        self.ring = np.repeat(np.arange(sp.beams, dtype=np.uint16)[:, None], sp.azimuth_steps, axis=1)
        # firing time of each column after the stamp; a deskewed sweep refers every point to the stamp
        firing = np.arange(sp.azimuth_steps) * (sp.period_s / sp.azimuth_steps)
        self.firing_s = firing
        self.t_col = np.broadcast_to(
            (firing if sp.rolling_chunks else np.zeros_like(firing)).astype(np.float32)[None],
            (sp.beams, sp.azimuth_steps),
        )

    def sweep_at(self, t0: float, frame: int) -> np.ndarray:
        """The sweep that starts at world time ``t0`` (s), deskewed or rolling as the spec says."""
        if not self.spec.rolling_chunks:
            return self.sweep(self.world.ego_pose(t0), self.world.primitives_at(t0), frame)
        return self._rolling_sweep(t0, frame)

    def sweep(self, T_odom_base: np.ndarray, prims: Primitives, frame: int) -> np.ndarray:
        """(beams, azimuth_steps) structured array of :data:`POINT_DTYPE`, all from one pose."""
        sp = self.spec
        T = T_odom_base @ self.rig.T_base_lidar
        hits = cast(self.grid, T, prims, self.world.road, max_t=sp.max_range, clip=True)
        surf = surface(self.world, hits, self.textures, self.grid.pixel_angle)
        rng = np.random.default_rng(np.random.SeedSequence([self.world.seed, frame, 0x11DA2]))
        H, W = self.grid.shape
        rng_m = np.full(H * W, np.nan, dtype=np.float32)
        intensity = np.zeros(H * W, dtype=np.float32)
        intensity[surf.index] = _intensity(surf)
        rng_m[surf.index] = surf.rng + rng.standard_normal(surf.index.size, dtype=np.float32) * f32(sp.range_noise)
        lost = rng.random(H * W) < sp.dropout
        self._degrade(rng_m, intensity, frame)
        return self._points(rng_m, intensity, lost)

    def _rolling_sweep(self, t0: float, frame: int) -> np.ndarray:
        """A raw sweep: azimuth chunk k is cast from the ego pose and traffic at its own mid firing time."""
        sp, world = self.spec, self.world
        H, W = self.grid.shape
        rng_m = np.full((H, W), np.nan, dtype=np.float32)
        intensity = np.zeros((H, W), dtype=np.float32)
        edges = np.linspace(0, W, sp.rolling_chunks + 1).round().astype(np.int64)
        # static objects do not move during the sweep: select them once over the distance it covers
        lo = float(world.ego.s(t0)) - WORLD_MARGIN
        hi = float(world.ego.s(t0 + sp.period_s)) + WORLD_MARGIN
        static = world.static.near(lo, hi)
        for c0, c1 in pairwise(edges.tolist()):
            t = t0 + 0.5 * (self.firing_s[c0] + self.firing_s[c1 - 1])
            prims = static.concat(world.traffic.at(world.road, world.ego, t).near(lo, hi))
            sub = self.grid.columns(c0, c1)
            hits = cast(sub, world.ego_pose(t) @ self.rig.T_base_lidar, prims, world.road,
                        max_t=sp.max_range, clip=True)
            surf = surface(world, hits, self.textures, sub.pixel_angle)
            r_chunk = np.full(H * (c1 - c0), np.nan, dtype=np.float32)
            i_chunk = np.zeros(H * (c1 - c0), dtype=np.float32)
            r_chunk[surf.index] = surf.rng
            i_chunk[surf.index] = _intensity(surf)
            rng_m[:, c0:c1] = r_chunk.reshape(H, -1)
            intensity[:, c0:c1] = i_chunk.reshape(H, -1)
        rng = np.random.default_rng(np.random.SeedSequence([world.seed, frame, 0x11DA2, 0x2011]))
        rng_m += rng.standard_normal((H, W), dtype=np.float32) * f32(sp.range_noise)  # NaN stays NaN
        lost = rng.random((H, W)) < sp.dropout
        rng_m, intensity = rng_m.ravel(), intensity.ravel()
        self._degrade(rng_m, intensity, frame)
        return self._points(rng_m, intensity, lost.ravel())

    def _degrade(self, rng_m: np.ndarray, intensity: np.ndarray, frame: int) -> None:
        """The weather's range loss, dropouts and near returns (own random stream: clear draws unchanged)."""
        if self.weather is None:
            return
        rng = np.random.default_rng(np.random.SeedSequence([self.world.seed, frame, 0x11DA2, 0xADE5]))
        degrade_lidar(rng_m, intensity, self.weather, rng)

    def _points(self, rng_m: np.ndarray, intensity: np.ndarray, lost: np.ndarray) -> np.ndarray:
        """Ranges and intensities (flat, NaN = no return) -> the organised cloud."""
        H, W = self.grid.shape
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


def _intensity(surf: Surface) -> np.ndarray:
    """LiDAR return intensity (0-255) from albedo and incidence angle."""
    d = surf.P / surf.rng
    cos_i = np.abs(d[0] * surf.normal[0] + d[1] * surf.normal[1] + d[2] * surf.normal[2])
    refl = surf.albedo.mean(0)
    return np.clip(f32(255.0) * refl * (f32(0.3) + f32(0.7) * cos_i) * f32(1.6), 0, 255)
