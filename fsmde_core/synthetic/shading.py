"""Materials, textures and lighting of the procedural street.

Appearance is what a depth network learns from, so the street carries the
cues real images have: texture gradients (asphalt grain, paving joints,
facade windows shrink with distance), lane markings, Lambertian sun + sky
light, cast shadows on the ground, aerial perspective (haze grows with
distance), vignetting and sensor noise.

Textures are filtered by the pixel footprint (a mip-mapped noise tile and
box-filtered stripe patterns), so far surfaces do not alias into noise: a
network then cannot read depth off aliasing artefacts that real lenses never
produce.

Everything here works on flat arrays of hit pixels (``Surface``), float32,
elementwise, hence deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fsmde_core.synthetic.raycast import FIRST_OBJECT, GROUND, KERB, Hits
from fsmde_core.synthetic.world import Lighting, Material, Road, World

f32 = np.float32


# ---------------------------------------------------------------- textures
class NoiseTexture:
    """A seeded, tileable 1/f noise tile with a mip chain, sampled bilinearly.

    ``sample(u, v, footprint)`` takes coordinates and footprint in texels and
    returns values with mean ~0.5; the mip level follows the footprint, so
    distant surfaces get the tile's local average instead of aliasing.
    """

    def __init__(self, rng: np.random.Generator, size: int = 256, beta: float = 0.9) -> None:
        white = rng.standard_normal((size, size))
        fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
        amp = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / size) ** beta
        amp[0, 0] = 0.0
        n = np.real(np.fft.ifft2(np.fft.fft2(white) * amp))
        n = np.clip(0.5 + 0.17 * (n - n.mean()) / n.std(), 0.0, 1.0)
        levels, offsets, sizes = [], [], []
        off, cur = 0, n
        while True:
            levels.append(cur.astype(np.float32).ravel())
            offsets.append(off)
            sizes.append(cur.shape[0])
            off += cur.size
            if cur.shape[0] == 1:
                break
            cur = 0.25 * (cur[0::2, 0::2] + cur[1::2, 0::2] + cur[0::2, 1::2] + cur[1::2, 1::2])
        self.atlas = np.concatenate(levels)
        self.offsets = np.array(offsets, dtype=np.int64)
        self.sizes = np.array(sizes, dtype=np.int64)
        self.n_levels = len(levels)

    def sample(self, u: np.ndarray, v: np.ndarray, footprint: np.ndarray) -> np.ndarray:
        level = np.clip(np.floor(np.log2(np.maximum(footprint, f32(1.0)))), 0, self.n_levels - 1).astype(np.int64)
        size = self.sizes[level]
        scale = (f32(1.0) / np.exp2(level)).astype(np.float32)
        uu, vv = u * scale, v * scale
        x0, y0 = np.floor(uu), np.floor(vv)
        fx, fy = (uu - x0).astype(np.float32), (vv - y0).astype(np.float32)
        xi, yi = np.mod(x0.astype(np.int64), size), np.mod(y0.astype(np.int64), size)
        xj, yj = np.mod(xi + 1, size), np.mod(yi + 1, size)
        base = self.offsets[level]
        a = self.atlas
        top = a[base + yi * size + xi] * (1 - fx) + a[base + yi * size + xj] * fx
        bot = a[base + yj * size + xi] * (1 - fx) + a[base + yj * size + xj] * fx
        return top * (1 - fy) + bot * fy


def pulse(x: np.ndarray, period: float | np.ndarray, duty: float | np.ndarray, fw: np.ndarray) -> np.ndarray:
    """Coverage of a periodic stripe pattern (``duty`` of each period is on), box-filtered over ``fw``."""
    p = np.asarray(period, dtype=np.float32)
    on = np.asarray(duty, dtype=np.float32) * p
    x = np.mod(x, p * f32(64.0))  # periodic: keep float32 precision for the difference below
    w = np.maximum(fw, p * f32(1e-3))

    def integral(y):
        k = np.floor(y / p)
        return k * on + np.minimum(y - k * p, on)

    return np.clip((integral(x + w / 2) - integral(x - w / 2)) / w, 0.0, 1.0)


def band(x: np.ndarray, lo: float | np.ndarray, hi: float | np.ndarray, fw: np.ndarray) -> np.ndarray:
    """Coverage of the single interval [lo, hi], box-filtered over ``fw``."""
    w = np.maximum(fw, f32(1e-4))
    return np.clip((np.minimum(x + w / 2, hi) - np.maximum(x - w / 2, lo)) / w, 0.0, 1.0)


def hash01(*keys: np.ndarray) -> np.ndarray:
    """Integer hash of integer arrays -> float32 uniform in [0, 1) (deterministic, stateless)."""
    h = np.zeros(np.broadcast(*keys).shape, dtype=np.uint32)
    for i, k in enumerate(keys):
        ki = np.asarray(k).astype(np.int64).astype(np.uint32)
        h ^= ki * np.uint32((0x9E3779B1 + 0x7F4A7C15 * i) & 0xFFFFFFFF)
        h = (h ^ (h >> np.uint32(15))) * np.uint32(0x2C1B3C6D)
        h ^= h >> np.uint32(12)
    h = (h ^ (h >> np.uint32(16))) * np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return (h >> np.uint32(8)).astype(np.float32) / f32(1 << 24)


def mix(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-row blend of colours (N, 3) by weights (N,)."""
    return a + (b - a) * w[:, None]


@dataclass
class Textures:
    """The world's texture tiles (seeded with the world)."""

    fine: NoiseTexture
    coarse: NoiseTexture

    @classmethod
    def for_world(cls, world: World) -> Textures:
        rng = np.random.default_rng(np.random.SeedSequence([world.seed, 0x7E47]))
        return cls(fine=NoiseTexture(rng, 256, 0.6), coarse=NoiseTexture(rng, 256, 1.2))


# ---------------------------------------------------------------- surfaces
@dataclass
class Surface:
    """Hit pixels of one cast, flattened.

    Attributes:
        index: (N,) flat pixel indices of the hits.
        P: (N, 3) float32 hit points relative to the sensor origin.
        rng: (N,) float32 Euclidean range from the sensor.
        normal: (N, 3) float32 unit normals (world).
        albedo: (N, 3) float32 linear albedo.
        gloss: (N,) float32 share of sky reflection (glass, paint).
    """

    index: np.ndarray
    P: np.ndarray
    rng: np.ndarray
    normal: np.ndarray
    albedo: np.ndarray
    gloss: np.ndarray


def surface(world: World, hits: Hits, tex: Textures, pixel_angle: float) -> Surface:
    """Normals and albedo of every hit pixel."""
    obj_flat = hits.obj.ravel()
    index = np.flatnonzero(obj_flat >= 0)
    obj = obj_flat[index]
    t = hits.t.ravel()[index]
    D = hits.D.reshape(3, -1)[:, index].T
    P = D * t[:, None]
    rng = np.sqrt((P * P).sum(1))
    fw = rng * f32(pixel_angle)
    n = index.size
    normal = np.zeros((n, 3), np.float32)
    albedo = np.zeros((n, 3), np.float32)
    gloss = np.zeros(n, np.float32)
    W = world_xy(hits.origin, P)
    ctx = _Ctx(world, tex, hits, P, W, fw, D)
    for sel, fn in ((obj == GROUND, _ground), (obj == KERB, _kerb)):
        if sel.any():
            normal[sel], albedo[sel] = fn(ctx, sel)
    prims = hits.prims
    k = obj - FIRST_OBJECT
    for sel, fn in ((obj >= FIRST_OBJECT) & (k < prims.n_box), _boxes),\
                   (((k >= prims.n_box) & (k < prims.n_box + prims.n_cyl)), _cylinders),\
                   ((k >= prims.n_box + prims.n_cyl), _spheres):
        if sel.any():
            normal[sel], albedo[sel], gloss[sel] = fn(ctx, sel, k[sel])
    return Surface(index=index, P=P, rng=rng, normal=normal, albedo=albedo, gloss=gloss)


def world_xy(origin: np.ndarray, P: np.ndarray) -> np.ndarray:
    """(N, 3) float32 world coordinates of origin-relative points."""
    return (P.astype(np.float64) + origin[None]).astype(np.float32)


@dataclass
class _Ctx:
    world: World
    tex: Textures
    hits: Hits
    P: np.ndarray
    W: np.ndarray
    fw: np.ndarray
    D: np.ndarray


def _up(n: int) -> np.ndarray:
    out = np.zeros((n, 3), np.float32)
    out[:, 2] = 1.0
    return out


def _ground(ctx: _Ctx, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    road = ctx.world.road
    Wp = ctx.W[sel]
    x, y = Wp[:, 0], Wp[:, 1]
    s, l = road.to_sl(x, y)
    fw = ctx.fw[sel]
    # grazing views stretch the footprint along the view direction
    cos_i = np.maximum(np.abs(ctx.D[sel, 2]) / np.sqrt((ctx.D[sel] ** 2).sum(1)), f32(0.08))
    fws = fw / cos_i
    al = np.abs(l)
    grain = ctx.tex.fine.sample(x * f32(20.0), y * f32(20.0), fws * f32(20.0))  # 5 cm texels
    patch = ctx.tex.coarse.sample(x * f32(0.8) + f32(37.0), y * f32(0.8), fws * f32(0.8))
    out = np.empty((s.size, 3), np.float32)
    on_road = al < f32(road.half_width)
    out[on_road] = _asphalt(road, s[on_road], l[on_road], grain[on_road], patch[on_road], fws[on_road])
    walk = ~on_road & (al < f32(road.half_width + road.sidewalk_width))
    out[walk] = _sidewalk(road, s[walk], al[walk], grain[walk], patch[walk], fws[walk])
    verge = ~on_road & ~walk
    g = patch[verge] * f32(1.6) - f32(0.3)
    grass = np.array([0.07, 0.15, 0.04], np.float32)
    dirt = np.array([0.20, 0.16, 0.10], np.float32)
    out[verge] = mix(np.broadcast_to(grass, (g.size, 3)), np.broadcast_to(dirt, (g.size, 3)),
                     np.clip(g, 0, 1)) * (f32(0.7) + f32(0.6) * grain[verge])[:, None]
    return _up(s.size), out


def _asphalt(road: Road, s, l, grain, patch, fw) -> np.ndarray:
    base = f32(0.085) * (f32(0.7) + f32(0.6) * grain) * (f32(0.8) + f32(0.4) * patch)
    lw, lanes = f32(road.lane_width), road.lanes_per_dir
    al = np.abs(l)
    white = np.zeros_like(al)
    yellow = band(al, f32(0.06), f32(0.18), fw)  # double centre line
    for k in range(1, lanes):  # dashed dividers between same-direction lanes: 3 m on, 6 m off
        white = np.maximum(white, band(al, k * lw - f32(0.07), k * lw + f32(0.07), fw) * pulse(s, 9.0, 1 / 3, fw))
    edge = lanes * lw - (f32(0.0) if road.parking_width > 0 else f32(0.35))
    white = np.maximum(white, band(al, edge - f32(0.08), edge + f32(0.08), fw))
    if road.crosswalks.size:
        near = np.abs(s[:, None] - road.crosswalks[None].astype(np.float32)).min(1)
        zebra = band(near, f32(-2.0), f32(2.0), fw) * pulse(l + f32(50.0), 1.1, 0.5, fw)
        zebra *= band(al, f32(-1.0), f32(road.half_width - 0.3), fw)
        white = np.maximum(white, zebra)
    col = np.repeat(base[:, None], 3, axis=1)
    wear = f32(0.75) + f32(0.25) * grain
    col = mix(col, np.array([0.62, 0.62, 0.6], np.float32) * wear[:, None], white)
    return mix(col, np.array([0.6, 0.45, 0.06], np.float32) * wear[:, None], yellow)


def _sidewalk(road: Road, s, al, grain, patch, fw) -> np.ndarray:
    tile = f32(0.75) if road.sidewalk_width < 3 else f32(1.0)
    joints = np.maximum(pulse(s, tile, 0.04, fw), pulse(al - f32(road.half_width), tile, 0.04, fw))
    base = f32(0.3) * (f32(0.8) + f32(0.4) * grain) * (f32(0.9) + f32(0.2) * patch) * (1 - f32(0.45) * joints)
    kerb_stone = band(al, f32(road.half_width), f32(road.half_width + 0.25), fw)
    base = base + (f32(0.42) - base) * kerb_stone
    return np.repeat(base[:, None], 3, axis=1) * np.array([1.0, 0.98, 0.95], np.float32)


def _kerb(ctx: _Ctx, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    road = ctx.world.road
    Wp = ctx.W[sel]
    s, l = road.to_sl(Wp[:, 0], Wp[:, 1])
    th = (s * f32(road.kappa)).astype(np.float32)
    left = np.stack([-np.sin(th), np.cos(th)], axis=1)  # road-left unit vector
    normal = np.zeros((s.size, 3), np.float32)
    normal[:, :2] = -np.sign(l)[:, None] * left  # kerb faces look back at the road
    grain = ctx.tex.fine.sample(Wp[:, 0] * f32(20.0), Wp[:, 2] * f32(20.0) + Wp[:, 1] * f32(20.0), ctx.fw[sel] * 20)
    return normal, np.repeat((f32(0.38) * (f32(0.8) + f32(0.4) * grain))[:, None], 3, axis=1)


def _boxes(ctx: _Ctx, sel: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prims = ctx.hits.prims
    c = prims.box_c[k].astype(np.float32)
    h = prims.box_h[k].astype(np.float32)
    yaw = prims.box_yaw[k].astype(np.float32)
    Wp = ctx.W[sel]
    cy, sy = np.cos(yaw), np.sin(yaw)
    rx, ry = Wp[:, 0] - c[:, 0], Wp[:, 1] - c[:, 1]
    local = np.stack([cy * rx + sy * ry, -sy * rx + cy * ry, Wp[:, 2] - c[:, 2]], axis=1)
    q = np.abs(local) / h
    axis = q.argmax(1)
    sign = np.sign(local[np.arange(k.size), axis]).astype(np.float32)
    nl = np.zeros((k.size, 3), np.float32)
    nl[np.arange(k.size), axis] = sign
    normal = np.stack([cy * nl[:, 0] - sy * nl[:, 1], sy * nl[:, 0] + cy * nl[:, 1], nl[:, 2]], axis=1)
    # horizontal coordinate across the face (0 at the face's left edge), height above ground
    u = np.where(axis == 0, local[:, 1] + h[:, 1], local[:, 0] + h[:, 0])
    half_u = np.where(axis == 0, h[:, 1], h[:, 0])
    z = Wp[:, 2]
    fw = ctx.fw[sel]
    mat = prims.box_mat[k]
    col = prims.box_col[k].astype(np.float32)
    par = prims.box_par[k].astype(np.float32)
    albedo = col.copy()
    gloss = np.zeros(k.size, np.float32)
    for m, fn in ((Material.BUILDING, _facade), (Material.CAR_PAINT, _paint), (Material.CAR_GLASS, _glass),
                  (Material.SIGN, _sign)):
        s2 = mat == m
        if s2.any():
            albedo[s2], gloss[s2] = fn(ctx, col[s2], par[s2], axis[s2], u[s2], half_u[s2], z[s2],
                                       local[s2], h[s2], fw[s2], k[s2])
    metal = mat == Material.METAL
    albedo[metal] = col[metal]
    gloss[metal] = f32(0.1)
    return normal, albedo, gloss


def _facade(ctx, col, par, axis, u, half_u, z, local, h, fw, k):
    floor_h, period, fu, fv = par[:, 0], par[:, 1], par[:, 2], par[:, 3]
    side = axis != 2
    grain = ctx.tex.fine.sample(u * f32(8.0), z * f32(8.0) + k.astype(np.float32) * f32(31.0), fw * 8)
    stain = ctx.tex.coarse.sample(u * f32(0.5) + k.astype(np.float32) * f32(17.0), z * f32(0.5), fw * f32(0.5))
    wall = col * ((f32(0.8) + f32(0.3) * grain) * (f32(0.85) + f32(0.3) * stain))[:, None]
    # a column of windows every ``period`` metres, one row per floor; shop windows on the ground floor
    win_u = pulse(u - f32(0.5) * (f32(2.0) * half_u - np.floor(f32(2.0) * half_u / period) * period),
                  period, fu, fw)
    upper = z > floor_h
    win_v = pulse(z - f32(0.9), floor_h, fv, fw) * band(z, floor_h, f32(1e4), fw)
    shop = band(z, f32(0.5), floor_h - f32(0.5), fw) * pulse(u, period * f32(2.0), f32(0.8), fw) * (par[:, 1] < 2.6)
    window = np.where(side, np.maximum(win_u * win_v * band(z, f32(0), 2 * h[:, 2] - f32(0.6), fw), shop), 0)
    cell = hash01(np.floor(u / period), np.floor(z / floor_h), k)
    glass = np.stack([f32(0.03) + f32(0.05) * cell, f32(0.035) + f32(0.05) * cell, f32(0.05) + f32(0.06) * cell], 1)
    lit = (cell > f32(0.93)) & upper
    glass[lit] = np.array([0.5, 0.42, 0.28], np.float32)
    cornice = pulse(z, floor_h, 0.06, fw) * side * f32(0.25)
    wall = wall * (1 - cornice)[:, None]
    roof = axis == 2
    wall[roof] = (f32(0.18) + f32(0.1) * grain[roof])[:, None] * np.ones(3, np.float32)
    return mix(wall, glass, window), f32(0.35) * window


def _paint(ctx, col, par, axis, u, half_u, z, local, h, fw, k):
    dark = band(z, f32(-1.0), f32(0.42), fw)  # bumpers, sills
    out = mix(col, col * f32(0.25), dark)
    # wheels on the long sides: tyres are dark discs near the ends of the body
    long_side = axis == 1
    wx = np.abs(local[:, 0]) - h[:, 0] * f32(0.68)
    r = np.sqrt(wx * wx + (z - f32(0.34)) ** 2)
    tyre = band(r, f32(-1.0), f32(0.34), fw) * long_side * (par[:, 1] < 0.5)
    out = mix(out, np.full_like(out, 0.03), tyre)
    return out, f32(0.12) * (1 - tyre)


def _glass(ctx, col, par, axis, u, half_u, z, local, h, fw, k):
    roof = axis == 2
    pillar = 1 - band(u, f32(0.12), 2 * half_u - f32(0.12), fw)
    glass = np.broadcast_to(np.array([0.03, 0.035, 0.045], np.float32), col.shape)
    out = mix(glass, col, np.maximum(pillar, roof.astype(np.float32)))
    return out, np.where(roof, f32(0.1), f32(0.45) * (1 - pillar))


def _sign(ctx, col, par, axis, u, half_u, z, local, h, fw, k):
    face = axis == 0
    border = 1 - band(u, f32(0.06), 2 * half_u - f32(0.06), fw) * band(local[:, 2], -h[:, 2] + f32(0.06),
                                                                      h[:, 2] - f32(0.06), fw)
    white = np.full_like(col, 0.75)
    out = np.where(face[:, None], mix(col, white, border), np.full_like(col, 0.3))
    return out, np.zeros(col.shape[0], np.float32)


def _cylinders(ctx: _Ctx, sel: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prims = ctx.hits.prims
    j = k - prims.n_box
    xy = prims.cyl_xy[j].astype(np.float32)
    z0, z1 = prims.cyl_z[j, 0].astype(np.float32), prims.cyl_z[j, 1].astype(np.float32)
    r = prims.cyl_r[j].astype(np.float32)
    Wp = ctx.W[sel]
    dx, dy = Wp[:, 0] - xy[:, 0], Wp[:, 1] - xy[:, 1]
    cap = Wp[:, 2] >= z1 - f32(1e-3)
    normal = np.stack([dx / r, dy / r, np.zeros_like(r)], axis=1)
    normal[cap] = np.array([0, 0, 1], np.float32)
    mat = prims.cyl_mat[j]
    col = prims.cyl_col[j].astype(np.float32)
    ang = np.arctan2(dy, dx) * r
    grain = ctx.tex.fine.sample(ang * f32(30.0), Wp[:, 2] * f32(4.0) + j.astype(np.float32) * 13, ctx.fw[sel] * 30)
    albedo = col * (f32(0.75) + f32(0.5) * grain)[:, None]
    cloth = mat == Material.CLOTH
    legs = band(Wp[:, 2] - z0, f32(-1.0), f32(0.45) * (z1 - z0), ctx.fw[sel]) * cloth
    albedo = mix(albedo, albedo[:, [2, 1, 0]] * f32(0.5) + f32(0.02), legs)
    gloss = np.where(mat == Material.METAL, f32(0.1), f32(0.0))
    return normal, albedo, gloss


def _spheres(ctx: _Ctx, sel: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prims = ctx.hits.prims
    j = k - prims.n_box - prims.n_cyl
    c = prims.sph_c[j].astype(np.float32)
    r = prims.sph_r[j].astype(np.float32)
    Wp = ctx.W[sel]
    d = (Wp - c) / r[:, None]
    normal = d / np.sqrt((d * d).sum(1, keepdims=True))
    col = prims.sph_col[j].astype(np.float32)
    leafy = prims.sph_mat[j] == Material.FOLIAGE
    fw = ctx.fw[sel]
    jf = j.astype(np.float32)
    leaves = ctx.tex.fine.sample((Wp[:, 0] + Wp[:, 1]) * f32(12.0) + jf * 7, Wp[:, 2] * f32(12.0), fw * 12)
    clumps = ctx.tex.coarse.sample(normal[:, 0] * f32(6.0) + jf, normal[:, 1] * f32(6.0) + normal[:, 2] * 6, fw)
    shade = np.where(leafy, (f32(0.35) + f32(1.1) * leaves) * (f32(0.6) + f32(0.8) * clumps), f32(1.0))
    if leafy.any():  # bumpy leaves: perturb the normal so the crown is not a smooth ball
        bump = (np.stack([leaves, clumps, leaves * clumps], axis=1) - f32(0.4)) * f32(1.2)
        normal = np.where(leafy[:, None], normal + bump, normal)
        normal /= np.sqrt((normal * normal).sum(1, keepdims=True))
    return normal, col * shade[:, None], np.zeros(k.size, np.float32)


# ---------------------------------------------------------------- lighting
def sky_colour(lighting: Lighting, D: np.ndarray, origin: np.ndarray, tex: Textures,
               pixel_angle: float) -> np.ndarray:
    """(N, 3) linear sky radiance for world ray directions ``D`` (N, 3): gradient, sun glow, clouds."""
    d = D / np.sqrt((D * D).sum(1, keepdims=True))
    e = np.clip(d[:, 2], 0.0, 1.0)
    w = e ** f32(0.55)
    sky = mix(np.broadcast_to(lighting.horizon_rgb.astype(np.float32), d.shape),
              np.broadcast_to(lighting.zenith_rgb.astype(np.float32), d.shape), w)
    cos_sun = d @ lighting.sun_dir.astype(np.float32)
    glow = np.exp((cos_sun - f32(1.0)) * f32(40.0)) * f32(0.35) + np.exp((cos_sun - f32(1.0)) * f32(2000.0)) * 3
    sky = sky + glow[:, None] * lighting.sun_rgb.astype(np.float32)[None] / f32(3.0)
    if lighting.cloud_cover > 0.02:  # a cloud deck 1.5 km up
        h = f32(1500.0)
        ez = np.maximum(d[:, 2], f32(0.02))
        tc = h / ez
        cu = (f32(origin[0]) + tc * d[:, 0]) * f32(0.12)
        cv = (f32(origin[1]) + tc * d[:, 1]) * f32(0.12)
        n = tex.coarse.sample(cu, cv, tc * f32(pixel_angle) / ez * f32(0.12))
        cover = np.clip((n - (f32(1.0) - f32(lighting.cloud_cover) * f32(0.7))) * f32(6.0), 0, 1)
        cover *= np.clip(d[:, 2] * f32(8.0), 0, 1)
        cloud = (lighting.horizon_rgb.astype(np.float32) * f32(1.1))[None] * (f32(0.8) + f32(0.4) * n)[:, None]
        sky = mix(sky, cloud, cover)
    return sky


def radiance(world: World, surf: Surface, shadow: np.ndarray) -> np.ndarray:
    """(N, 3) linear radiance of hit pixels: sun (Lambert, shadowed) + sky hemisphere + reflection + haze."""
    L = world.lighting
    sun = L.sun_dir.astype(np.float32)
    ndl = np.clip(surf.normal @ sun, 0.0, 1.0) * (~shadow).astype(np.float32)
    hemi = f32(0.55) + f32(0.45) * surf.normal[:, 2]
    light = ndl[:, None] * L.sun_rgb.astype(np.float32)[None] + hemi[:, None] * L.sky_rgb.astype(np.float32)[None]
    rad = surf.albedo * light + surf.gloss[:, None] * L.horizon_rgb.astype(np.float32)[None] * f32(0.6)
    fog = np.exp(-surf.rng / f32(L.fog_distance))[:, None]
    return rad * fog + L.haze_rgb.astype(np.float32)[None] * (1 - fog)


def tonemap(rgb_linear: np.ndarray, exposure: float) -> np.ndarray:
    """Filmic-ish response + sRGB-like gamma, in [0, 1]."""
    x = 1 - np.exp(-rgb_linear * f32(exposure))
    return np.power(np.clip(x, 0, 1), f32(1 / 2.2))
