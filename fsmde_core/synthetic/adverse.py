"""Camera effects of the adverse conditions (:mod:`fsmde_core.synthetic.weather`), vectorised numpy.

Everything works on the renderer's linear radiance, channel-first ``(3, H*W)``
float32 (flat pixel = row * W + col), before the tone curve, because that is
where the physics is linear: light adds, fog mixes, blur averages photons and
sensor noise depends on the photon count. The ground truth (depth, labels)
is never touched.

* artificial light: spot lights (street lamps: downward cones; headlights:
  forward cones) with inverse-square falloff and Lambert's cosine, from the
  per-pixel 3D hit points and normals the ray cast already has; the lamps
  themselves glow (emissive discs). No occlusion test: a lamp behind a thin
  object still lights what is behind it - the price of one pass per lamp.
* wet ground: darker albedo and a Fresnel (Schlick) sheen of the sky, strong
  at grazing angles as on a real wet road.
* motion blur: per-pixel image motion of the static world over the exposure
  (from depth and the camera poses at its start and end), averaged over a
  few taps along it; moving cars are blurred as if static.
* rain: short oriented streaks (splatted bilinearly), drops on the lens
  (discs of a box-blurred image, kept for 2 s), and a veil (contrast loss).
* sensor: Poisson-Gaussian noise (shot + read) at the condition's gain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fsmde_core import semantics as sem
from fsmde_core.camera import CameraModel
from fsmde_core.synthetic.shading import Surface, dot3
from fsmde_core.synthetic.world import Material, World

f32 = np.float32

STREET_LAMP_RGB = (1.0, 0.78, 0.5)  # warm (sodium / 3000 K LED)
STREET_LAMP_INTENSITY = 8.0  # radiant intensity in the cone (linear units * m^2): ~0.16 irradiance 7 m below
HEADLIGHT_RGB = (1.0, 0.97, 0.9)
HEADLIGHT_INTENSITY = 150.0  # ~0.4 irradiance 20 m ahead
EGO_LAMPS_BASE = ((3.7, 0.75, 0.65), (3.7, -0.75, 0.65))  # ego headlights in base_link (x forward, y left)
_LAMP_HEAD_H = np.array([0.25, 0.35, 0.08])  # half extents of the street lamps' heads (world._street_furniture)
_SKY_DEPTH = 1.0e4  # depth used for the image motion of the sky (rotation only, in effect)


@dataclass
class Lamps:
    """Point lights with a cone and an emissive disc.

    Attributes:
        pos: (M, 3) world positions.
        axis: (M, 3) unit directions of the cones (also where the glowing face looks).
        cos_inner, cos_outer: (M,) full intensity inside ``cos_inner``, none beyond ``cos_outer``.
        rgb: (M, 3) radiant intensity (0 = a lamp that only glows, e.g. a tail light).
        glow_rgb: (M, 3) emitted radiance of the lamp's face.
        glow_radius: (M,) radius of the glowing disc (m).
    """

    pos: np.ndarray
    axis: np.ndarray
    cos_inner: np.ndarray
    cos_outer: np.ndarray
    rgb: np.ndarray
    glow_rgb: np.ndarray
    glow_radius: np.ndarray

    @classmethod
    def empty(cls) -> Lamps:
        z = np.zeros((0, 3))
        return cls(z, z, np.zeros(0), np.zeros(0), z, z, np.zeros(0))

    def concat(self, other: Lamps) -> Lamps:
        return Lamps(*(np.concatenate([a, b]) for a, b in zip(self._parts(), other._parts(), strict=True)))

    def _parts(self) -> tuple[np.ndarray, ...]:
        return (self.pos, self.axis, self.cos_inner, self.cos_outer, self.rgb, self.glow_rgb, self.glow_radius)

    def within(self, origin: np.ndarray, radius: float) -> Lamps:
        keep = np.sum((self.pos - origin) ** 2, axis=1) < radius * radius
        return Lamps(*(a[keep] for a in self._parts()))


def _lamps(pos: np.ndarray, axis: np.ndarray, half_angles_deg: tuple[float, float], rgb: np.ndarray,
           glow: np.ndarray, radius: float) -> Lamps:
    m = pos.shape[0]
    axis = axis / np.linalg.norm(axis, axis=1, keepdims=True)
    return Lamps(pos, axis, np.full(m, np.cos(np.radians(half_angles_deg[0]))),
                 np.full(m, np.cos(np.radians(half_angles_deg[1]))), np.broadcast_to(rgb, (m, 3)).copy(),
                 np.broadcast_to(glow, (m, 3)).copy(), np.full(m, radius))


def street_lamps(world: World, scale: float) -> Lamps:
    """The lamps under the heads of the street's lamp posts (downward cones, warm)."""
    st = world.static
    heads = (st.box_mat == Material.METAL) & np.all(np.isclose(st.box_h, _LAMP_HEAD_H), axis=1)
    pos = st.box_c[heads] - np.array([0.0, 0.0, _LAMP_HEAD_H[2] + 0.01])
    down = np.tile([0.0, 0.0, -1.0], (pos.shape[0], 1))
    col = np.array(STREET_LAMP_RGB)
    return _lamps(pos, down, (45.0, 75.0), col * STREET_LAMP_INTENSITY * scale, col * 4.0, 0.4)


def vehicle_lamps(world: World, t: float, T_odom_base: np.ndarray, scale: float) -> Lamps:
    """Headlights (forward cones) and tail lights (red glow) of the moving cars and the ego car at ``t``.

    Parked cars have their lights off. A moving car's body is its lowest paint box;
    it faces +s when it drives along the road (or follows the ego car), -s otherwise.
    """
    tr, road = world.traffic, world.road
    body = (tr.mat == Material.CAR_PAINT) & (tr.z[:, 0] < 0.4)
    s = tr.s0[body] + tr.v[body] * t + np.where(tr.follow[body], float(world.ego.s(t)), 0.0) + tr.dx[body]
    sign = np.where(tr.v[body] < 0, -1.0, 1.0)
    hl, hw, lane, z0 = tr.half_len[body], tr.half_wid[body], tr.l[body], tr.z[body, 0]
    yaw = road.heading(s) + np.where(sign < 0, np.pi, 0.0)
    fwd = np.column_stack([np.cos(yaw), np.sin(yaw), np.full(yaw.size, -0.05)])
    head, tail = [], []
    for side in (-0.7, 0.7):
        for ends, out in ((hl + 0.03, head), (-(hl + 0.03), tail)):
            xy = road.point(s + sign * ends, lane + side * hw)
            out.append(np.column_stack([xy, z0 + 0.4]))
    head_pos, tail_pos = np.concatenate(head), np.concatenate(tail)
    fwd2 = np.concatenate([fwd, fwd])
    white = np.array(HEADLIGHT_RGB)
    lamps = _lamps(head_pos, fwd2, (10.0, 28.0), white * HEADLIGHT_INTENSITY * scale, white * 8.0, 0.13)
    lamps = lamps.concat(_lamps(tail_pos, -fwd2, (10.0, 28.0), np.zeros(3), np.array([2.0, 0.08, 0.04]), 0.11))
    ego = np.array([T_odom_base[:3, :3] @ np.array(p) + T_odom_base[:3, 3] for p in EGO_LAMPS_BASE])
    ego_axis = np.tile(T_odom_base[:3, :3] @ np.array([1.0, 0.0, -0.04]), (2, 1))
    return lamps.concat(_lamps(ego, ego_axis, (10.0, 28.0), white * HEADLIGHT_INTENSITY * scale, white * 8.0, 0.13))


def artificial_light(surf: Surface, origin: np.ndarray, lamps: Lamps, beta: float) -> np.ndarray:
    """(3, N) radiance the lamps add to the hit pixels (reflected light + glowing faces).

    Per lamp: E = I * cone(angle) * max(0, n.l) / d^2 * exp(-beta d) (light scattered out
    on the way), reflected with the pixel's albedo; the camera-side extinction is left
    to the caller, as for sunlight.
    """
    out = np.zeros_like(surf.albedo)
    for j in range(lamps.pos.shape[0]):
        rel = (lamps.pos[j] - origin).astype(np.float32)[:, None]
        dl = rel - surf.P
        d2 = np.maximum(dot3(dl, dl), f32(0.04))
        d = np.sqrt(d2)
        axis = lamps.axis[j].astype(np.float32)
        if lamps.rgb[j].any():
            cos_beam = -dot3(dl, axis) / d
            lo, hi = f32(lamps.cos_outer[j]), f32(lamps.cos_inner[j])
            cone = np.clip((cos_beam - lo) / (hi - lo), f32(0.0), f32(1.0)) ** 2
            ndl = np.maximum(dot3(surf.normal, dl) / d, f32(0.0))
            e = cone * ndl / d2
            if beta > 0:
                e *= np.exp(-f32(beta) * d)
            out += surf.albedo * (lamps.rgb[j].astype(np.float32)[:, None] * e)
        r = f32(lamps.glow_radius[j])
        face = (d < r) & (dot3(surf.normal, axis) > f32(0.3))
        if face.any():
            disc = (f32(1.0) - d2[face] / (r * r)).clip(0, 1)
            out[:, face] += lamps.glow_rgb[j].astype(np.float32)[:, None] * disc
    return out


def wet_ground(surf: Surface, wet: float) -> None:
    """Wet road, markings and sidewalk, in place: darker albedo (water fills the pores) and a
    Fresnel sheen (Schlick, water n = 1.33: 2 % head-on, ~100 % at grazing) through ``gloss``."""
    ground = np.isin(surf.label, (sem.ROAD, sem.LANE_MARKING, sem.SIDEWALK))
    if not ground.any():
        return
    surf.albedo[:, ground] *= f32(1.0 - 0.45 * wet)
    cos_v = np.abs(surf.P[2, ground]) / surf.rng[ground]
    fresnel = f32(0.02) + f32(0.98) * (f32(1.0) - cos_v) ** 5
    surf.gloss[ground] += f32(wet) * fresnel / f32(0.6)  # radiance() reflects 0.6 * gloss of the horizon


def image_motion(model: CameraModel, dirs: np.ndarray, depth: np.ndarray, T0: np.ndarray,
                 T1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H*W,) x and y pixel motion of the static world between camera poses ``T0`` and ``T1``.

    ``dirs`` (3, H, W) are the camera's rays (unit z) and ``depth`` (H, W) its depth; the
    sky is treated as very far away (it moves only with the camera's rotation).
    """
    H, W = depth.shape
    z = np.where(np.isfinite(depth), depth, f32(_SKY_DEPTH)).astype(np.float64).ravel()
    Xc = dirs.reshape(3, -1).astype(np.float64) * z
    R = T1[:3, :3].T @ T0[:3, :3]
    t = T1[:3, :3].T @ (T0[:3, 3] - T1[:3, 3])
    uv1, _ = model.project((R @ Xc + t[:, None]).T)
    u0 = np.tile(np.arange(W, dtype=np.float64), H)
    v0 = np.repeat(np.arange(H, dtype=np.float64), W)
    fu = np.nan_to_num(uv1[:, 0] - u0, nan=0.0, posinf=0.0, neginf=0.0)
    fv = np.nan_to_num(uv1[:, 1] - v0, nan=0.0, posinf=0.0, neginf=0.0)
    return fu.astype(np.float32), fv.astype(np.float32)


def motion_blur(rad: np.ndarray, H: int, W: int, fu: np.ndarray, fv: np.ndarray, max_taps: int = 9) -> np.ndarray:
    """Average of taps along each pixel's motion, centred on it (the exposure straddles the stamp)."""
    reach = float(np.max(np.hypot(fu, fv))) if fu.size else 0.0
    taps = int(np.clip(np.ceil(reach), 1, max_taps))
    if taps == 1:
        return rad
    col = np.tile(np.arange(W, dtype=np.float32), H)
    row = np.repeat(np.arange(H, dtype=np.float32), W)
    out = np.zeros_like(rad)
    for a in np.linspace(-0.5, 0.5, taps, dtype=np.float32):
        c = np.clip(np.rint(col + a * fu), 0, W - 1).astype(np.int64)
        r = np.clip(np.rint(row + a * fv), 0, H - 1).astype(np.int64)
        out += np.take(rad, r * W + c, axis=1)
    return out / f32(taps)


def rain_streaks(rad: np.ndarray, H: int, W: int, per_10k: float, wind: float, colour: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Falling drops seen during the exposure: short, bright-ish, nearly vertical lines (tilted by the wind).

    Each streak is sampled along its length and splatted bilinearly into a coverage map;
    the pixels are mixed towards ``colour`` (the diffuse sky light a drop refracts).
    """
    n = round(per_10k * H * W / 1e4)
    if n == 0:
        return rad
    x0, y0 = rng.uniform(0, W, n), rng.uniform(-0.1 * H, H, n)
    length = rng.uniform(0.03, 0.12, n) * H
    ang = wind + rng.normal(0.0, 0.04, n)
    alpha = rng.uniform(0.15, 0.4, n)
    samples = max(2, int(np.ceil(0.12 * H)))
    s = np.linspace(0.0, 1.0, samples)[None, :] * length[:, None]
    x = (x0[:, None] + np.sin(ang)[:, None] * s).ravel()
    y = (y0[:, None] + np.cos(ang)[:, None] * s).ravel()
    w = np.repeat(alpha * length / samples, samples)
    cover = np.zeros(H * W)
    xf, yf = np.floor(x), np.floor(y)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        cx, cy = xf + dx, yf + dy
        wb = w * (1 - np.abs(x - cx)) * (1 - np.abs(y - cy))
        ok = (cx >= 0) & (cx < W) & (cy >= 0) & (cy < H)
        cover += np.bincount((cy[ok] * W + cx[ok]).astype(np.int64), weights=wb[ok], minlength=H * W)
    a = np.clip(cover, 0.0, 0.6).astype(np.float32)
    return rad + (colour.astype(np.float32)[:, None] - rad) * a


def _box_blur(img: np.ndarray, H: int, W: int, r: int) -> np.ndarray:
    """Separable box blur of (3, H*W) with radius ``r`` (edges clamped), by cumulative sums."""
    im = img.reshape(3, H, W)
    pad = np.pad(im, ((0, 0), (r + 1, r), (0, 0)), mode="edge").cumsum(axis=1, dtype=np.float64)
    im = (pad[:, 2 * r + 1 :] - pad[:, : -(2 * r + 1)]) / (2 * r + 1)
    pad = np.pad(im, ((0, 0), (0, 0), (r + 1, r)), mode="edge").cumsum(axis=2)
    im = (pad[:, :, 2 * r + 1 :] - pad[:, :, : -(2 * r + 1)]) / (2 * r + 1)
    return im.reshape(3, -1).astype(np.float32)


def lens_droplets(rad: np.ndarray, H: int, W: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Water drops on the lens: out-of-focus discs through which the scene is a blurred smear."""
    if count <= 0:
        return rad
    blurred = _box_blur(rad, H, W, max(1, int(0.04 * H)))
    cx, cy = rng.uniform(0, W, count), rng.uniform(0, H, count)
    radius = rng.uniform(0.04, 0.1, count) * H
    xs = np.arange(W, dtype=np.float32)[None, :]
    ys = np.arange(H, dtype=np.float32)[:, None]
    mask = np.zeros((H, W), np.float32)
    for k in range(count):
        d = np.sqrt((xs - f32(cx[k])) ** 2 + (ys - f32(cy[k])) ** 2) / f32(radius[k])
        mask = np.maximum(mask, np.clip((f32(1.0) - d) * f32(4.0), 0, 1))
    return rad + (blurred * f32(1.05) - rad) * mask.ravel()


def veil(rad: np.ndarray, share: float) -> np.ndarray:
    """Contrast loss: light scattered in the air and on a wet windscreen spreads the image's mean over it."""
    if share <= 0:
        return rad
    return rad * f32(1.0 - share) + rad.mean(axis=1, keepdims=True) * f32(share)


def sensor_noise(x: np.ndarray, gain: float, full_well: float, read_e: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson-Gaussian noise on the linear signal ``x`` (1.0 = ``full_well`` electrons at gain 1).

    At gain g a signal x collected x * full_well / g electrons: shot noise grows as the
    square root of that count and read noise is fixed in electrons, so in units of x the
    variance is x g / full_well + (read_e g / full_well)^2 (normal approximation).
    """
    if full_well <= 0:
        return x
    per_e = f32(gain / full_well)
    sigma = np.sqrt(np.maximum(x, f32(0.0)) * per_e + (f32(read_e) * per_e) ** 2)
    return np.maximum(x + sigma * rng.standard_normal(x.shape, dtype=np.float32), f32(0.0))
