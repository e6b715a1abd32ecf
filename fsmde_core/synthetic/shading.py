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

Layout: hit pixels are flattened, sorted by surface kind (so each material
is one contiguous slice, no masks or scatters per material) and stored
channel-first, ``(3, N)`` float32: numpy broadcasts a per-pixel weight over
colour channels fastest that way. Everything is elementwise, hence
deterministic.

Every hit pixel also gets its semantic class (:mod:`fsmde_core.semantics`)
from what the shader already knows - the primitive's material, the ground's
zone (road / sidewalk / verge) and the lane paint's coverage - so labels agree
with the picture and the depth by construction, at the cost of one lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fsmde_core import semantics as sem
from fsmde_core.synthetic.raycast import FIRST_OBJECT, GROUND, KERB, Hits
from fsmde_core.synthetic.world import Lighting, Material, Road, World

if TYPE_CHECKING:
    from fsmde_core.synthetic.specular import Specular

f32 = np.float32


# ---------------------------------------------------------------- textures
class NoiseTexture:
    """A seeded, tileable 1/f noise tile with a mip chain, sampled bilinearly.

    ``sample(u, v, footprint)`` takes coordinates and footprint in texels and
    returns values with mean ~0.5; the mip level follows the footprint, so
    distant surfaces get the tile's local average instead of aliasing.
    """

    def __init__(self, rng: np.random.Generator, size: int = 256, beta: float = 0.9) -> None:
        if size & (size - 1):
            raise ValueError(f"noise tile size must be a power of two, got {size}")
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
        self.scales = (1.0 / self.sizes[0] * self.sizes).astype(np.float32)
        self.n_levels = len(levels)

    def sample(self, u: np.ndarray, v: np.ndarray, footprint: np.ndarray) -> np.ndarray:
        level = np.clip(np.log2(np.maximum(footprint, f32(1.0))).astype(np.int64), 0, self.n_levels - 1)
        mask = self.sizes[level] - 1
        scale = self.scales[level]
        uu, vv = u * scale, v * scale
        x0, y0 = np.floor(uu), np.floor(vv)
        fx, fy = uu - x0, vv - y0
        xi, yi = x0.astype(np.int64) & mask, y0.astype(np.int64) & mask
        xj, yj = (xi + 1) & mask, (yi + 1) & mask
        row_i = self.offsets[level] + yi * (mask + 1)
        row_j = self.offsets[level] + yj * (mask + 1)
        a = self.atlas
        top = np.take(a, row_i + xi) * (1 - fx) + np.take(a, row_i + xj) * fx
        bot = np.take(a, row_j + xi) * (1 - fx) + np.take(a, row_j + xj) * fx
        return (top * (1 - fy) + bot * fy).astype(np.float32, copy=False)


def pulse(x: np.ndarray, period: float | np.ndarray, duty: float | np.ndarray, fw: np.ndarray) -> np.ndarray:
    """Coverage of a periodic stripe pattern (``duty`` of each period is on), box-filtered over ``fw``."""
    p = np.asarray(period, dtype=np.float32)
    on = np.asarray(duty, dtype=np.float32) * p
    x = np.mod(x, p * f32(64.0))  # periodic: keeps float32 precision for the difference below
    w = np.maximum(fw, p * f32(1e-3))

    def integral(y: np.ndarray) -> np.ndarray:
        k = np.floor(y / p)
        return k * on + np.minimum(y - k * p, on)

    return np.clip((integral(x + w / 2) - integral(x - w / 2)) / w, f32(0.0), f32(1.0))


def band(x: np.ndarray, lo: float | np.ndarray, hi: float | np.ndarray, fw: np.ndarray) -> np.ndarray:
    """Coverage of the single interval [lo, hi], box-filtered over ``fw``."""
    w = np.maximum(fw, f32(1e-4))
    return np.clip((np.minimum(x + w / 2, hi) - np.maximum(x - w / 2, lo)) / w, f32(0.0), f32(1.0))


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


def rgb(*c: float) -> np.ndarray:
    """A colour constant shaped (3, 1) to broadcast against (3, N)."""
    return np.array(c, dtype=np.float32).reshape(3, 1)


def mix(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Blend colours (3, N) or (3, 1) by per-pixel weights (N,)."""
    return a + (b - a) * w


def dot3(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel dot product of (3, N) arrays (or a (3,)/(3, 1) constant): no BLAS, which is slow here."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


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
# Sort keys of hit pixels: one contiguous slice per surface kind and material.
_K_GROUND, _K_KERB, _K_BOX, _K_CYL, _K_SPH = 0, 1, 2, 16, 32
_N_KEYS = 48


@dataclass
class Surface:
    """Hit pixels of one cast, flattened and grouped by surface kind.

    Attributes:
        index: (N,) flat pixel indices of the hits (grouped, not ascending).
        P: (3, N) float32 hit points relative to the sensor origin.
        rng: (N,) float32 Euclidean range from the sensor.
        normal: (3, N) float32 unit normals (world).
        albedo: (3, N) float32 linear albedo.
        gloss: (N,) float32 share of sky reflection (glass, paint).
        label: (N,) uint8 semantic class (:mod:`fsmde_core.semantics`).
        mirror: (N,) float32 weight of the mirror reflection (:mod:`fsmde_core.synthetic.specular`),
            None when the world has no reflective materials.
    """

    index: np.ndarray
    P: np.ndarray
    rng: np.ndarray
    normal: np.ndarray
    albedo: np.ndarray
    gloss: np.ndarray
    label: np.ndarray
    mirror: np.ndarray | None = None


def _material_classes() -> np.ndarray:
    """Lookup table material value -> semantic class; materials not listed are ``OTHER``."""
    classes = {
        Material.BUILDING: sem.BUILDING,
        Material.CAR_PAINT: sem.VEHICLE,
        Material.CAR_GLASS: sem.VEHICLE,
        Material.METAL: sem.POLE,  # lamp posts with their arms and heads, sign posts
        Material.BARK: sem.VEGETATION,
        Material.FOLIAGE: sem.VEGETATION,
        Material.CLOTH: sem.PERSON,
        Material.SKIN: sem.PERSON,
        Material.SIGN: sem.TRAFFIC_SIGN,
    }
    lut = np.full(max(Material) + 1, sem.OTHER, dtype=np.uint8)
    for m, c in classes.items():
        lut[m] = c
    return lut


MATERIAL_CLASS = _material_classes()
#: A road pixel is ``LANE_MARKING`` when paint covers at least this share of its footprint.
MARKING_COVERAGE = 0.5


@dataclass
class _Group:
    """One contiguous slice of hit pixels, with what every material function needs."""

    world: World
    tex: Textures
    hits: Hits
    W: np.ndarray  # (3, n) float32 world coordinates
    D: np.ndarray  # (3, n) ray directions (world axes)
    fw: np.ndarray  # (n,) pixel footprint (m)
    k: np.ndarray  # (n,) primitive index (objects only)
    spec: Specular | None = None  # reflective materials (fsmde synth --reflective)


def surface(world: World, hits: Hits, tex: Textures, pixel_angle: float, spec: Specular | None = None) -> Surface:
    """Normals and albedo of every hit pixel; with ``spec``, also the weight of each pixel's mirror reflection."""
    obj_flat = hits.obj.ravel()
    hit = np.flatnonzero(obj_flat >= 0)
    obj = np.take(obj_flat, hit)
    prims = hits.prims
    mats = prims.materials()
    k_all = obj - FIRST_OBJECT
    kind_base = np.select(
        [obj == GROUND, obj == KERB, k_all < prims.n_box, k_all < prims.n_box + prims.n_cyl],
        [_K_GROUND, _K_KERB, _K_BOX, _K_CYL],
        _K_SPH,
    )
    mat = np.take(mats, np.maximum(k_all, 0)) if mats.size else np.zeros_like(k_all)
    key = (kind_base + np.where(obj >= FIRST_OBJECT, mat, 0)).astype(np.uint8)
    order = np.argsort(key, kind="stable")
    index = np.take(hit, order)
    key = np.take(key, order)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(key, minlength=_N_KEYS))])

    t = np.take(hits.t.ravel(), index)
    D = np.take(hits.D.reshape(3, -1), index, axis=1)
    P = D * t
    rng = np.sqrt(dot3(P, P))
    fw = rng * f32(pixel_angle)
    Wc = (P.astype(np.float64) + hits.origin[:, None]).astype(np.float32)
    kk = np.take(k_all, order)
    n = index.size
    normal = np.zeros((3, n), np.float32)
    albedo = np.zeros((3, n), np.float32)
    gloss = np.zeros(n, np.float32)
    label = np.empty(n, np.uint8)
    mirror = None if spec is None else np.zeros(n, np.float32)

    def group(lo: int, hi: int) -> _Group:
        return _Group(world, tex, hits, Wc[:, lo:hi], D[:, lo:hi], fw[lo:hi], kk[lo:hi], spec)

    def run(lo: int, hi: int, fn) -> None:
        if hi > lo:
            normal[:, lo:hi], albedo[:, lo:hi], gloss[lo:hi] = fn(group(lo, hi))

    g0, g1 = bounds[_K_GROUND], bounds[_K_GROUND + 1]
    if g1 > g0:  # the ground also says which zone / paint each pixel is on
        normal[:, g0:g1], albedo[:, g0:g1], gloss[g0:g1], label[g0:g1] = _ground(group(g0, g1))
        if spec is not None:
            mirror[g0:g1] = _puddles(group(g0, g1), label[g0:g1], albedo[:, g0:g1], gloss[g0:g1])
    run(bounds[_K_KERB], bounds[_K_KERB + 1], _kerb)
    label[bounds[_K_KERB] : bounds[_K_KERB + 1]] = sem.SIDEWALK
    b0, b1 = bounds[_K_BOX], bounds[_K_CYL]
    if b1 > b0:
        box_out = _boxes(group(b0, b1), bounds[_K_BOX : _K_CYL + 1] - b0)
        normal[:, b0:b1], albedo[:, b0:b1], gloss[b0:b1] = box_out[:3]
        if spec is not None:
            mirror[b0:b1] = box_out[3]
    run(bounds[_K_CYL], bounds[_K_SPH], _cylinders)
    run(bounds[_K_SPH], bounds[_N_KEYS], _spheres)
    o0 = bounds[_K_BOX]
    if n > o0 and mats.size:
        label[o0:] = np.take(MATERIAL_CLASS, np.take(mats, kk[o0:]))
    return Surface(index=index, P=P, rng=rng, normal=normal, albedo=albedo, gloss=gloss, label=label, mirror=mirror)


def _up(n: int) -> np.ndarray:
    out = np.zeros((3, n), np.float32)
    out[2] = 1.0
    return out


def _ground(g: _Group) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normal, albedo, gloss and semantic class (road / lane marking / sidewalk / terrain) of ground hits."""
    road = g.world.road
    x, y = g.W[0], g.W[1]
    s, l = road.to_sl(x, y)
    # grazing views stretch the footprint along the view direction
    cos_i = np.maximum(np.abs(g.D[2]) / np.sqrt(dot3(g.D, g.D)), f32(0.08))
    fws = g.fw / cos_i
    al = np.abs(l)
    grain = g.tex.fine.sample(x * f32(20.0), y * f32(20.0), fws * f32(20.0))  # 5 cm texels
    patch = g.tex.coarse.sample(x * f32(0.8) + f32(37.0), y * f32(0.8), fws * f32(0.8))
    # three zones by lateral offset: road, sidewalk, verge (each computed on its pixels only)
    zone = np.where(al < f32(road.half_width), 0, np.where(al < f32(road.half_width + road.sidewalk_width), 1, 2))
    order = np.argsort(zone.astype(np.uint8), kind="stable")
    b = np.concatenate([[0], np.cumsum(np.bincount(zone, minlength=3))])
    s, l, al, grain, patch, fws = (np.take(a, order) for a in (s, l, al, grain, patch, fws))
    out = np.empty((3, s.size), np.float32)
    r, w, v = slice(b[0], b[1]), slice(b[1], b[2]), slice(b[2], b[3])
    cls = np.repeat(np.array([sem.ROAD, sem.SIDEWALK, sem.TERRAIN], np.uint8), np.diff(b))
    out[:, r], paint = _asphalt(road, s[r], l[r], grain[r], patch[r], fws[r])
    cls[r][paint >= f32(MARKING_COVERAGE)] = sem.LANE_MARKING
    out[:, w] = _sidewalk(road, s[w], al[w], grain[w], patch[w], fws[w])
    gv = np.clip(patch[v] * f32(1.6) - f32(0.3), 0, 1)
    out[:, v] = mix(rgb(0.07, 0.15, 0.04), rgb(0.20, 0.16, 0.10), gv) * (f32(0.7) + f32(0.6) * grain[v])
    albedo = np.empty_like(out)
    albedo[:, order] = out
    label = np.empty_like(cls)
    label[order] = cls
    return _up(s.size), albedo, np.zeros(s.size, np.float32), label


def _puddles(g: _Group, label: np.ndarray, albedo: np.ndarray, gloss: np.ndarray) -> np.ndarray:
    """Puddles on the road, in place on the ground's albedo (wet, darker) and gloss; returns the mirror weight."""
    from fsmde_core.synthetic.specular import water_weight

    mirror = np.zeros(label.size, np.float32)
    on_road = np.flatnonzero((label == sem.ROAD) | (label == sem.LANE_MARKING))
    if not on_road.size:
        return mirror
    s, l = g.world.road.to_sl(np.take(g.W[0], on_road), np.take(g.W[1], on_road))
    cover = g.spec.puddle_cover(s, l, np.take(g.fw, on_road))
    wet = np.flatnonzero(cover > 0)
    if not wet.size:
        return mirror
    idx, c = on_road[wet], cover[wet]
    D = np.take(g.D, idx, axis=1)
    cos_v = np.abs(D[2]) / np.sqrt(dot3(D, D))
    albedo[:, idx] *= f32(1.0) - f32(0.5) * c  # water fills the pores: darker
    gloss[idx] *= f32(1.0) - c
    mirror[idx] = c * water_weight(cos_v)
    return mirror


def _asphalt(road: Road, s, l, grain, patch, fw) -> tuple[np.ndarray, np.ndarray]:
    """Asphalt albedo (3, n) and the share of each pixel's footprint covered by paint (n,)."""
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
        cw = road.crosswalks.astype(np.float32)
        nearest = cw[np.clip(np.searchsorted(cw, s), 1, cw.size) - 1]
        nxt = cw[np.clip(np.searchsorted(cw, s), 0, cw.size - 1)]
        d = np.minimum(np.abs(s - nearest), np.abs(s - nxt))
        zebra = band(d, f32(-2.0), f32(2.0), fw) * pulse(l + f32(50.0), 1.1, 0.5, fw)
        white = np.maximum(white, zebra * band(al, f32(-1.0), f32(road.half_width - 0.3), fw))
    wear = f32(0.75) + f32(0.25) * grain
    col = mix(base, rgb(0.62, 0.62, 0.6) * wear, white)
    return mix(col, rgb(0.6, 0.45, 0.06) * wear, yellow), np.maximum(white, yellow)


def _sidewalk(road: Road, s, al, grain, patch, fw) -> np.ndarray:
    tile = f32(0.75) if road.sidewalk_width < 3 else f32(1.0)
    joints = np.maximum(pulse(s, tile, 0.04, fw), pulse(al - f32(road.half_width), tile, 0.04, fw))
    base = f32(0.3) * (f32(0.8) + f32(0.4) * grain) * (f32(0.9) + f32(0.2) * patch) * (1 - f32(0.45) * joints)
    kerb_stone = band(al, f32(road.half_width), f32(road.half_width + 0.25), fw)
    base = base + (f32(0.42) - base) * kerb_stone
    return rgb(1.0, 0.98, 0.95) * base


def _kerb(g: _Group) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    road = g.world.road
    s, l = road.to_sl(g.W[0], g.W[1])
    th = s * f32(road.kappa)
    sg = -np.sign(l)  # kerb faces look back at the road: along -sign(l) * road-left
    normal = np.stack([-np.sin(th) * sg, np.cos(th) * sg, np.zeros_like(s)])
    grain = g.tex.fine.sample(s * f32(20.0), g.W[2] * f32(20.0), g.fw * f32(20.0))
    alb = f32(0.38) * (f32(0.8) + f32(0.4) * grain)
    return normal.astype(np.float32), np.stack([alb, alb, alb]), np.zeros(s.size, np.float32)


def _boxes(g: _Group, mat_bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Normal, albedo, gloss of box hits; and with reflective materials the mirror weight (else None)."""
    prims = g.hits.prims
    k = g.k
    c = prims.box_c.T.astype(np.float32)
    h_all = prims.box_h.T.astype(np.float32)
    yaw = np.take(prims.box_yaw.astype(np.float32), k)
    cy, sy = np.cos(yaw), np.sin(yaw)
    rx, ry = g.W[0] - np.take(c[0], k), g.W[1] - np.take(c[1], k)
    local = np.stack([cy * rx + sy * ry, cy * ry - sy * rx, g.W[2] - np.take(c[2], k)])
    h = np.take(h_all, k, axis=1)
    q = np.abs(local) / h
    axis = np.where(q[0] >= q[1], np.where(q[0] >= q[2], 0, 2), np.where(q[1] >= q[2], 1, 2))
    sign = np.sign(np.choose(axis, local)).astype(np.float32)
    nlx, nly, nlz = (axis == 0) * sign, (axis == 1) * sign, (axis == 2) * sign
    normal = np.stack([cy * nlx - sy * nly, sy * nlx + cy * nly, nlz]).astype(np.float32)
    # horizontal coordinate across the face (0 at one edge), and its half width
    u = np.where(axis == 0, local[1] + h[1], local[0] + h[0])
    half_u = np.where(axis == 0, h[1], h[0])
    col = np.take(prims.box_col.T.astype(np.float32), k, axis=1)
    par = np.take(prims.box_par.T.astype(np.float32), k, axis=1)
    albedo = col.copy()
    gloss = np.zeros(k.size, np.float32)
    gloss_of = {Material.METAL: 0.1}
    glass_cover = coat_cover = None
    if g.spec is not None:  # mirror glass and clear coat shares of each pixel (material functions fill them)
        glass_cover, coat_cover = np.zeros(k.size, np.float32), np.zeros(k.size, np.float32)
    for m, fn in (
        (Material.BUILDING, _facade),
        (Material.CAR_PAINT, _paint),
        (Material.CAR_GLASS, _glass),
        (Material.SIGN, _sign),
    ):
        sl = slice(mat_bounds[m], mat_bounds[m + 1])
        if sl.stop > sl.start:
            res = fn(
                g,
                col[:, sl],
                par[:, sl],
                axis[sl],
                u[sl],
                half_u[sl],
                g.W[2, sl],
                local[:, sl],
                h[:, sl],
                g.fw[sl],
                k[sl],
            )
            albedo[:, sl], gloss[sl] = res[:2]
            if glass_cover is not None and len(res) == 4:
                glass_cover[sl], coat_cover[sl] = res[2], res[3]
    for m, v in gloss_of.items():
        gloss[mat_bounds[m] : mat_bounds[m + 1]] = f32(v)
    if glass_cover is None:
        return normal, albedo, gloss, None
    from fsmde_core.synthetic.specular import glass_weight, paint_weight

    cos_v = np.abs(dot3(g.D, normal)) / np.sqrt(dot3(g.D, g.D))
    gloss *= np.clip(f32(1.0) - glass_cover - coat_cover, 0.0, 1.0)  # the traced mirror replaces the sky sheen
    return normal, albedo, gloss, glass_cover * glass_weight(cos_v) + coat_cover * paint_weight(cos_v)


# Box materials share one signature: colours/params (3|4, n), face axis (0/1 = side, 2 = top),
# face coordinate u and its half width, height z, box-local hit point and half extents, footprint,
# primitive index. Each returns (albedo (3, n), gloss (n,)).
def _facade(
    g: _Group,
    col: np.ndarray,
    par: np.ndarray,
    axis: np.ndarray,
    u: np.ndarray,
    half_u: np.ndarray,
    z: np.ndarray,
    local: np.ndarray,
    h: np.ndarray,
    fw: np.ndarray,
    k: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    floor_h, period, fu, fv = par
    curtain = None
    if g.spec is not None:  # glass buildings: a curtain wall, glass between thin mullions and spandrels
        curtain = g.spec.glass_building(floor_h)
        fu, fv = np.where(curtain, f32(0.9), fu), np.where(curtain, f32(0.8), fv)
    side = axis != 2
    kf = k.astype(np.float32)
    grain = g.tex.fine.sample(u * f32(8.0), z * f32(8.0) + kf * f32(31.0), fw * f32(8.0))
    stain = g.tex.coarse.sample(u * f32(0.5) + kf * f32(17.0), z * f32(0.5), fw * f32(0.5))
    wall = col * ((f32(0.8) + f32(0.3) * grain) * (f32(0.85) + f32(0.3) * stain))
    # a column of windows every ``period`` metres (centred on the face), one row per floor;
    # shop windows on the ground floor of some buildings
    width = f32(2.0) * half_u
    win_u = pulse(u - f32(0.5) * (width - np.floor(width / period) * period), period, fu, fw)
    win_v = pulse(z - f32(0.9), floor_h, fv, fw) * band(z, floor_h, 2 * h[2] - f32(0.6), fw)
    shop = band(z, f32(0.5), floor_h - f32(0.5), fw) * pulse(u, period * f32(2.0), f32(0.8), fw) * (period < 2.6)
    window = np.maximum(win_u * win_v, shop) * side
    cell = hash01(np.floor(u / period), np.floor(z / floor_h), k)
    glass = rgb(0.03, 0.035, 0.05) + rgb(0.05, 0.05, 0.06) * cell
    lit = ((cell > f32(0.93)) & (z > floor_h)).astype(np.float32)
    glass = mix(glass, rgb(0.5, 0.42, 0.28), lit)
    wall = wall * (1 - pulse(z, floor_h, 0.06, fw) * side * f32(0.25))  # floor cornices
    roof = (axis == 2).astype(np.float32)
    wall = mix(wall, (f32(0.18) + f32(0.1) * grain) * np.ones((3, 1), np.float32), roof)
    if curtain is None:
        return mix(wall, glass, window), f32(0.35) * window
    mirror = window * curtain
    glass = mix(glass, rgb(0.02, 0.03, 0.035), curtain.astype(np.float32))  # tinted, no lit rooms behind
    return mix(wall, glass, window), f32(0.35) * window, mirror, np.zeros_like(mirror)


def _paint(
    g: _Group,
    col: np.ndarray,
    par: np.ndarray,
    axis: np.ndarray,
    u: np.ndarray,
    half_u: np.ndarray,
    z: np.ndarray,
    local: np.ndarray,
    h: np.ndarray,
    fw: np.ndarray,
    k: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    dark = band(z, f32(-1.0), f32(0.42), fw)  # bumpers, sills
    out = mix(col, col * f32(0.25), dark)
    # wheels on the long sides: tyres are dark discs near the ends of the body
    wx = np.abs(local[0]) - h[0] * f32(0.68)
    r = np.sqrt(wx * wx + (z - f32(0.34)) ** 2)
    tyre = band(r, f32(-1.0), f32(0.34), fw) * (axis == 1) * (par[1] < 0.5)
    out = mix(out, rgb(0.03, 0.03, 0.03), tyre)
    if g.spec is None:
        return out, f32(0.12) * (1 - tyre)
    coat = (1 - tyre) * g.spec.glossy_car(par[0])
    return out, f32(0.12) * (1 - tyre), np.zeros_like(coat), coat


def _glass(
    g: _Group,
    col: np.ndarray,
    par: np.ndarray,
    axis: np.ndarray,
    u: np.ndarray,
    half_u: np.ndarray,
    z: np.ndarray,
    local: np.ndarray,
    h: np.ndarray,
    fw: np.ndarray,
    k: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    roof = (axis == 2).astype(np.float32)
    pillar = 1 - band(u, f32(0.12), 2 * half_u - f32(0.12), fw)
    frame = np.maximum(pillar, roof)
    out = mix(rgb(0.03, 0.035, 0.045), col, frame)
    gloss = np.where(roof > 0, f32(0.1), f32(0.45) * (1 - pillar))
    if g.spec is None:
        return out, gloss
    return out, gloss, 1 - frame, frame * g.spec.glossy_car(par[0])


def _sign(
    g: _Group,
    col: np.ndarray,
    par: np.ndarray,
    axis: np.ndarray,
    u: np.ndarray,
    half_u: np.ndarray,
    z: np.ndarray,
    local: np.ndarray,
    h: np.ndarray,
    fw: np.ndarray,
    k: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    face = (axis == 0).astype(np.float32)
    inner = band(u, f32(0.06), 2 * half_u - f32(0.06), fw) * band(local[2], -h[2] + f32(0.06), h[2] - f32(0.06), fw)
    out = mix(rgb(0.3, 0.3, 0.3), mix(rgb(0.75, 0.75, 0.75), col, inner), face)
    return out, np.zeros(k.size, np.float32)


def _cylinders(g: _Group) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prims = g.hits.prims
    j = g.k - prims.n_box
    x, y = (
        np.take(prims.cyl_xy[:, 0].astype(np.float32), j),
        np.take(prims.cyl_xy[:, 1].astype(np.float32), j),
    )
    z0, z1 = (
        np.take(prims.cyl_z[:, 0].astype(np.float32), j),
        np.take(prims.cyl_z[:, 1].astype(np.float32), j),
    )
    r = np.take(prims.cyl_r.astype(np.float32), j)
    dx, dy = g.W[0] - x, g.W[1] - y
    cap = (g.W[2] >= z1 - f32(1e-3)).astype(np.float32)
    normal = np.stack([dx / r * (1 - cap), dy / r * (1 - cap), cap])
    mat = np.take(prims.cyl_mat, j)
    col = np.take(prims.cyl_col.T.astype(np.float32), j, axis=1)
    ang = np.arctan2(dy, dx) * r
    grain = g.tex.fine.sample(ang * f32(30.0), g.W[2] * f32(4.0) + j.astype(np.float32) * f32(13.0), g.fw * f32(30.0))
    albedo = col * (f32(0.75) + f32(0.5) * grain)
    legs = band(g.W[2] - z0, f32(-1.0), f32(0.45) * (z1 - z0), g.fw) * (mat == Material.CLOTH)
    albedo = mix(albedo, albedo[::-1] * f32(0.5) + f32(0.02), legs)
    gloss = np.where(mat == Material.METAL, f32(0.1), f32(0.0))
    return normal.astype(np.float32), albedo, gloss


def _spheres(g: _Group) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prims = g.hits.prims
    j = g.k - prims.n_box - prims.n_cyl
    c = np.take(prims.sph_c.T.astype(np.float32), j, axis=1)
    r = np.take(prims.sph_r.astype(np.float32), j)
    d = (g.W - c) / r
    normal = d / np.sqrt(dot3(d, d))
    col = np.take(prims.sph_col.T.astype(np.float32), j, axis=1)
    leafy = (np.take(prims.sph_mat, j) == Material.FOLIAGE).astype(np.float32)
    jf = j.astype(np.float32)
    leaves = g.tex.fine.sample((g.W[0] + g.W[1]) * f32(12.0) + jf * 7, g.W[2] * f32(12.0), g.fw * f32(12.0))
    clumps = g.tex.coarse.sample(normal[0] * f32(6.0) + jf, normal[1] * f32(6.0) + normal[2] * 6, g.fw)
    shade = 1 + leafy * ((f32(0.35) + f32(1.1) * leaves) * (f32(0.6) + f32(0.8) * clumps) - 1)
    # bumpy leaves: perturb the normal so a crown is not a smooth ball
    bump = (np.stack([leaves, clumps, leaves * clumps]) - f32(0.4)) * f32(1.2) * leafy
    normal = normal + bump
    normal = normal / np.sqrt(dot3(normal, normal))
    return normal.astype(np.float32), col * shade, np.zeros(j.size, np.float32)


# ---------------------------------------------------------------- lighting
def sky_colour(lighting: Lighting, D: np.ndarray, origin: np.ndarray, tex: Textures, pixel_angle: float) -> np.ndarray:
    """(3, N) linear sky radiance for world ray directions ``D`` (3, N): gradient, sun glow, clouds."""
    d = D / np.sqrt(dot3(D, D))
    e = np.clip(d[2], 0.0, 1.0)
    sky = mix(
        lighting.horizon_rgb.astype(np.float32)[:, None],
        lighting.zenith_rgb.astype(np.float32)[:, None],
        e ** f32(0.55),
    )
    cos_sun = dot3(d, lighting.sun_dir.astype(np.float32))
    glow = np.exp((cos_sun - f32(1.0)) * f32(40.0)) * f32(0.35) + np.exp((cos_sun - f32(1.0)) * f32(2000.0)) * 3
    sky = sky + glow * (lighting.sun_rgb.astype(np.float32)[:, None] / f32(3.0))
    if lighting.cloud_cover > 0.02:  # a cloud deck 1.5 km up
        ez = np.maximum(d[2], f32(0.02))
        tc = f32(1500.0) / ez
        cu = (f32(origin[0]) + tc * d[0]) * f32(0.12)
        cv = (f32(origin[1]) + tc * d[1]) * f32(0.12)
        n = tex.coarse.sample(cu, cv, tc * f32(pixel_angle) / ez * f32(0.12))
        cover = np.clip((n - (f32(1.0) - f32(lighting.cloud_cover) * f32(0.7))) * f32(6.0), 0, 1)
        cover = cover * np.clip(d[2] * f32(8.0), 0, 1)
        cloud = (lighting.horizon_rgb.astype(np.float32) * f32(1.1))[:, None] * (f32(0.8) + f32(0.4) * n)
        sky = mix(sky, cloud, cover)
    return sky.astype(np.float32)


def radiance(world: World, surf: Surface, shadow: np.ndarray) -> np.ndarray:
    """(3, N) linear radiance of hit pixels: sun (Lambert, shadowed) + sky hemisphere + reflection + haze."""
    L = world.lighting
    ndl = np.clip(dot3(surf.normal, L.sun_dir.astype(np.float32)), 0.0, 1.0) * ~shadow
    hemi = f32(0.55) + f32(0.45) * surf.normal[2]
    light = L.sun_rgb.astype(np.float32)[:, None] * ndl + L.sky_rgb.astype(np.float32)[:, None] * hemi
    rad = surf.albedo * light + L.horizon_rgb.astype(np.float32)[:, None] * (surf.gloss * f32(0.6))
    fog = np.exp(-surf.rng / f32(L.fog_distance))
    return (rad * fog + L.haze_rgb.astype(np.float32)[:, None] * (1 - fog)).astype(np.float32)


def tonemap(rgb_linear: np.ndarray, exposure: float) -> np.ndarray:
    """Filmic-ish response + sRGB-like gamma, in [0, 1]."""
    x = 1 - np.exp(-rgb_linear * f32(exposure))
    return np.power(np.clip(x, 0, 1), f32(1 / 2.2))
