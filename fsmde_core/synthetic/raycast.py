"""Vectorised ray casting against the street's analytic primitives.

A sensor is a fixed grid of rays in its own frame (:class:`RayGrid`): a
pinhole camera's rays have unit Z (so the ray parameter *is* the depth along
the optical axis, REP 118) and a spinning LiDAR's rays are unit vectors (the
parameter is the range). Only the pose changes between frames, so the grid is
built once.

Casting one frame:

1. rotate the rays into world orientation (origin = sensor position);
2. intersect the ground for every ray (road at z = 0, raised sidewalks with
   kerb faces, analytically);
3. for every primitive, bound the pixels it can cover (the projection of its
   hull box, clipped at the near plane; azimuth sectors for the LiDAR), skip
   it when its nearest possible depth is behind everything already in those
   pixels (front-to-back order), else intersect exactly on that sub-grid and
   keep the nearer hit (a z-buffer).

All per-ray arithmetic is float32 relative to the sensor origin (positions
far from the world origin keep millimetre precision); per-object arithmetic
is float64. Everything is elementwise, so results are bitwise reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fsmde_core.camera import CameraModel
from fsmde_core.synthetic.world import DRAW_DISTANCE, Primitives, Road, box_corners

SKY = -1
GROUND = 0
KERB = 1
FIRST_OBJECT = 2  # hit id of primitive k is FIRST_OBJECT + k (boxes, cylinders, spheres)

_NEAR = 0.05
# the 12 edges of a box whose corners are indexed sx*4 + sy*2 + sz (see world.box_corners)
_EDGES = np.array([(i, i | bit) for bit in (1, 2, 4) for i in range(8) if not i & bit])

f32 = np.float32


@dataclass
class RayGrid:
    """The constant rays of one sensor.

    Attributes:
        dirs: (3, H, W) float32 ray directions in the sensor frame.
        spherical: False = pinhole (unit-Z rays, culling by projection),
            True = spinning LiDAR (unit rays, culling by azimuth sector).
        pixel_angle: angular size of one cell (rad): a surface at parameter
            t covers about ``t * pixel_angle`` metres (texture filtering).
        col_lo, col_hi, row_lo, row_hi: pinhole: bounds of x/z per column and
            y/z per row (works for distorted rays too).
        az0, az_step: spherical: azimuth of column 0 and the (negative =
            clockwise) step between columns, in the sensor frame.
    """

    dirs: np.ndarray
    spherical: bool
    pixel_angle: float
    col_lo: np.ndarray | None = None
    col_hi: np.ndarray | None = None
    row_lo: np.ndarray | None = None
    row_hi: np.ndarray | None = None
    az0: float = 0.0
    az_step: float = 0.0
    col0: int = 0
    full_width: int = 0

    def columns(self, c0: int, c1: int) -> RayGrid:
        """Columns ``[c0, c1)`` of a spinning-LiDAR grid as a grid of their own.

        A rolling sweep casts each azimuth chunk from its own pose; the sub-grid
        culls in the full grid's column numbering (``col0``, ``full_width``) so a
        primitive is only drawn on the chunk's columns it can cover.
        """
        if not self.spherical:
            raise ValueError("column chunks are only defined for spinning-LiDAR grids")
        W = self.full_width or self.shape[1]
        if not 0 <= c0 < c1 <= self.shape[1]:
            raise ValueError(f"column chunk [{c0}, {c1}) outside 0..{self.shape[1]}")
        return RayGrid(
            dirs=np.ascontiguousarray(self.dirs[:, :, c0:c1]),
            spherical=True,
            pixel_angle=self.pixel_angle,
            az0=self.az0 + c0 * self.az_step,
            az_step=self.az_step,
            col0=self.col0 + c0,
            full_width=W,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.dirs.shape[1]), int(self.dirs.shape[2])

    @classmethod
    def pinhole(cls, model: CameraModel) -> RayGrid:
        rays = model.pixel_rays()  # (H, W, 3) unit Z, undistorted
        xn, yn = rays[..., 0].astype(np.float64), rays[..., 1].astype(np.float64)
        return cls(
            dirs=np.ascontiguousarray(np.moveaxis(rays, -1, 0)).astype(np.float32),
            spherical=False,
            pixel_angle=1.0 / min(model.fx, model.fy),
            col_lo=xn.min(axis=0),
            col_hi=xn.max(axis=0),
            row_lo=yn.min(axis=1),
            row_hi=yn.max(axis=1),
        )

    @classmethod
    def lidar(cls, elevations_deg: np.ndarray, n_azimuth: int, az0_deg: float = 180.0) -> RayGrid:
        """Rows = beams (ring 0 = lowest), columns = firing order, clockwise from ``az0``."""
        el = np.radians(np.asarray(elevations_deg, dtype=np.float64))
        step = -2 * np.pi / n_azimuth
        az = np.radians(az0_deg) + step * np.arange(n_azimuth)
        d = np.stack(
            [
                np.cos(el)[:, None] * np.cos(az)[None],
                np.cos(el)[:, None] * np.sin(az)[None],
                np.repeat(np.sin(el)[:, None], n_azimuth, axis=1),
            ]
        )
        return cls(
            dirs=d.astype(np.float32),
            spherical=True,
            pixel_angle=abs(step),
            az0=float(np.radians(az0_deg)),
            az_step=step,
        )

    # ----------------------------------------------------------- culling
    def cull(self, corners: np.ndarray, hull_dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sub-grids that each hull (corners in the sensor frame, (N, 8, 3)) can cover.

        Returns:
            rects: (N, 2, 4) int ``[r0, r1, c0, c1]`` half-open; the second
                rectangle is non-empty only for LiDAR sectors that wrap around.
            lower: (N,) lower bound of the ray parameter over the hull
                (depth for pinhole, range for LiDAR).
            visible: (N,) bool.
        """
        if self.spherical:
            return self._cull_spherical(corners, hull_dist)
        return self._cull_pinhole(corners)

    def _cull_pinhole(self, P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = P.shape[0]
        H, W = self.shape
        z = P[..., 2]
        a, b = P[:, _EDGES[:, 0]], P[:, _EDGES[:, 1]]
        za, zb = a[..., 2], b[..., 2]
        cross = (za > _NEAR) != (zb > _NEAR)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(cross, (_NEAR - za) / (zb - za), 0.0)
        Q = a + s[..., None] * (b - a)
        pts = np.concatenate([P, Q], axis=1)
        valid = np.concatenate([z > _NEAR, cross], axis=1)
        zz = np.where(valid, pts[..., 2], 1.0)
        xn, yn = pts[..., 0] / zz, pts[..., 1] / zz
        inf = np.inf
        X0, X1 = np.where(valid, xn, inf).min(1), np.where(valid, xn, -inf).max(1)
        Y0, Y1 = np.where(valid, yn, inf).min(1), np.where(valid, yn, -inf).max(1)
        # one pixel of margin: a hull thinner than a pixel may fall between two rays whose float32
        # hits still graze it
        m = self.pixel_angle
        X0, X1, Y0, Y1 = X0 - m, X1 + m, Y0 - m, Y1 + m
        lower = np.where(valid, pts[..., 2], inf).min(1)
        cols = (self.col_hi[None] >= X0[:, None]) & (self.col_lo[None] <= X1[:, None])
        rows = (self.row_hi[None] >= Y0[:, None]) & (self.row_lo[None] <= Y1[:, None])
        visible = valid.any(1) & cols.any(1) & rows.any(1)
        rects = np.zeros((n, 2, 4), dtype=np.int64)
        rects[:, 0, 0] = rows.argmax(1)
        rects[:, 0, 1] = H - rows[:, ::-1].argmax(1)
        rects[:, 0, 2] = cols.argmax(1)
        rects[:, 0, 3] = W - cols[:, ::-1].argmax(1)
        return rects, lower, visible

    def _cull_spherical(self, P: np.ndarray, hull_dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = P.shape[0]
        H, w_own = self.shape
        W = self.full_width or w_own
        az0 = self.az0 - self.col0 * self.az_step  # column 0 of the full grid
        centre = P.mean(axis=1)
        az_c = np.arctan2(centre[:, 1], centre[:, 0])
        rel = np.angle(np.exp(1j * (np.arctan2(P[..., 1], P[..., 0]) - az_c[:, None])))
        lo, hi = az_c + rel.min(1), az_c + rel.max(1)
        # columns c have azimuth az0 + c * step (step < 0): larger azimuth = smaller column
        c_start = np.floor((hi - az0) / self.az_step).astype(np.int64) - 1
        c_stop = np.ceil((lo - az0) / self.az_step).astype(np.int64) + 2
        # a hull containing the sensor's vertical axis surrounds it: every column
        full = (hull_dist <= 0.0) | (rel.max(1) - rel.min(1) > np.pi * 0.95) | (c_stop - c_start >= W)
        c_start = np.where(full, 0, c_start)
        c_stop = np.where(full, W, c_stop)
        start = np.mod(c_start, W)
        stop = start + (c_stop - c_start)
        rects = np.zeros((n, 2, 4), dtype=np.int64)
        rects[:, :, 1] = H
        rects[:, 0, 2] = start
        rects[:, 0, 3] = np.minimum(stop, W)
        wrap = stop > W
        rects[:, 1, 2] = 0
        rects[:, 1, 3] = np.where(wrap, stop - W, 0)
        if self.full_width:  # a chunk: keep the part of each rectangle on its columns, in its numbering
            lo_c = np.clip(rects[:, :, 2], self.col0, self.col0 + w_own) - self.col0
            hi_c = np.clip(rects[:, :, 3], self.col0, self.col0 + w_own) - self.col0
            rects[:, :, 2], rects[:, :, 3] = lo_c, np.maximum(hi_c, lo_c)
        return rects, np.maximum(hull_dist, 0.0), np.ones(n, dtype=bool)


def hull_distance(origin: np.ndarray, c: np.ndarray, h: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Euclidean distance from ``origin`` to each yaw-rotated box (0 inside, exact outside)."""
    p = origin[None, :] - c
    cy, sy = np.cos(yaw), np.sin(yaw)
    local = np.column_stack([cy * p[:, 0] + sy * p[:, 1], -sy * p[:, 0] + cy * p[:, 1], p[:, 2]])
    q = np.maximum(np.abs(local) - h, 0.0)
    return np.sqrt((q * q).sum(1))


# ------------------------------------------------------------ intersections
Arr = np.ndarray | np.float32  # a per-ray array, or one float32 shared by all rays


# Origins and directions broadcast: primary rays share one origin (scalars)
# and vary in direction; shadow rays vary in origin and share the sun
# direction. Every function returns the ray parameter, +inf on a miss.
def _box_slab(
    Dx: Arr, Dy: Arr, iDz: Arr, px: Arr, py: Arr, pz: Arr, hx: Arr, hy: Arr, hz: Arr, cyaw: Arr, syaw: Arr,
) -> tuple[np.ndarray, np.ndarray]:
    """Entry and exit ray parameters (tn, tf) of the slab test in the box frame."""
    lx = cyaw * px + syaw * py
    ly = cyaw * py - syaw * px
    dx = cyaw * Dx + syaw * Dy
    dy = cyaw * Dy - syaw * Dx
    ix, iy = f32(1.0) / dx, f32(1.0) / dy
    a, b = (-hx - lx) * ix, (hx - lx) * ix
    tn, tf = np.minimum(a, b), np.maximum(a, b)
    a, b = (-hy - ly) * iy, (hy - ly) * iy
    tn, tf = np.maximum(tn, np.minimum(a, b)), np.minimum(tf, np.maximum(a, b))
    a, b = (-hz - pz) * iDz, (hz - pz) * iDz
    return np.maximum(tn, np.minimum(a, b)), np.minimum(tf, np.maximum(a, b))


def hit_box(
    Dx: Arr,
    Dy: Arr,
    Dz: Arr,
    iDz: Arr,
    px: Arr,
    py: Arr,
    pz: Arr,
    hx: Arr,
    hy: Arr,
    hz: Arr,
    cyaw: Arr,
    syaw: Arr,
    t_min: float = 0.0,
) -> np.ndarray:
    """Slab test in the box frame; ``p`` = ray origin minus box centre (world axes)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        tn, tf = _box_slab(Dx, Dy, iDz, px, py, pz, hx, hy, hz, cyaw, syaw)
        return np.where((tn <= tf) & (tn > t_min), tn, f32(np.inf))


def hit_box_any(
    Dx: Arr,
    Dy: Arr,
    Dz: Arr,
    iDz: Arr,
    px: Arr,
    py: Arr,
    pz: Arr,
    hx: Arr,
    hy: Arr,
    hz: Arr,
    cyaw: Arr,
    syaw: Arr,
    t_min: float = 1e-3,
) -> np.ndarray:
    """Shadow test: does the ray meet the box anywhere ahead (origin inside counts)?"""
    with np.errstate(divide="ignore", invalid="ignore"):
        tn, tf = _box_slab(Dx, Dy, iDz, px, py, pz, hx, hy, hz, cyaw, syaw)
        return (tn <= tf) & (tf > t_min)


def hit_cylinder(
    Dx: Arr,
    Dy: Arr,
    Dz: Arr,
    iDz: Arr,
    Dxy2: Arr,
    px: Arr,
    py: Arr,
    pz: Arr,
    z0: Arr,
    z1: Arr,
    r: Arr,
    t_min: float = 0.0,
) -> np.ndarray:
    """Vertical cylinder (side + top cap); ``p`` = origin minus axis point (x, y), origin z.

    The discriminant is formed from the axis's perpendicular distance to the
    ray (a cross product) rather than ``b^2 - a c``, which cancels
    catastrophically in float32 for thin, distant poles.
    """
    b = px * Dx + py * Dy
    cross = px * Dy - py * Dx
    with np.errstate(divide="ignore", invalid="ignore"):
        h2 = r * r - cross * cross / Dxy2  # r^2 - (distance of the axis from the ray)^2
        t = (-b - np.sqrt(np.maximum(h2 * Dxy2, f32(0.0)))) / Dxy2
        z = pz + t * Dz
        side = np.where((h2 >= 0) & (t > t_min) & (z >= z0) & (z <= z1), t, f32(np.inf))
        tc = (z1 - pz) * iDz
        xc, yc = px + tc * Dx, py + tc * Dy
        cap = np.where((tc > t_min) & (xc * xc + yc * yc <= r * r), tc, f32(np.inf))
    return np.minimum(side, cap)


def hit_sphere(Dx: Arr, Dy: Arr, Dz: Arr, DD: Arr, px: Arr, py: Arr, pz: Arr, r: Arr, t_min: float = 0.0) -> np.ndarray:
    """Sphere; ``p`` = origin minus centre, ``DD`` = |D|^2 (cross-product discriminant, as above)."""
    b = px * Dx + py * Dy + pz * Dz
    cx, cy, cz = py * Dz - pz * Dy, pz * Dx - px * Dz, px * Dy - py * Dx
    with np.errstate(invalid="ignore"):
        h2 = r * r - (cx * cx + cy * cy + cz * cz) / DD
        t = (-b - np.sqrt(np.maximum(h2 * DD, f32(0.0)))) / DD
    return np.where((h2 >= 0) & (t > t_min), t, f32(np.inf))


# ---------------------------------------------------------------- casting
@dataclass
class Hits:
    """Result of casting one sensor grid at one pose.

    Attributes:
        t: (H, W) float32 ray parameter of the nearest hit, +inf = nothing.
        obj: (H, W) int32 hit id: SKY, GROUND, KERB or FIRST_OBJECT + k.
        D: (3, H, W) float32 ray directions in world axes (origin-relative).
        origin: (3,) float64 sensor position in the world.
        prims: the primitives that ids FIRST_OBJECT + k refer to.
    """

    t: np.ndarray
    obj: np.ndarray
    D: np.ndarray
    origin: np.ndarray
    prims: Primitives


def rotate_rays(grid: RayGrid, R: np.ndarray) -> np.ndarray:
    """(3, H, W) sensor rays -> world axes (elementwise, no BLAS: bitwise reproducible)."""
    d = grid.dirs
    Rf = R.astype(np.float32)
    return np.stack([Rf[i, 0] * d[0] + Rf[i, 1] * d[1] + Rf[i, 2] * d[2] for i in range(3)])


def ground_hits(road: Road, origin: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Road (z = 0), raised sidewalks (z = kerb height) and kerb faces between them."""
    Dx, Dy, Dz = D
    kh, W = f32(road.kerb_height), f32(road.half_width)
    oz = f32(origin[2])
    if road.kappa == 0.0:
        base = (f32(origin[1]), None)
    else:  # offsets to the circle centre, in float64 before the cast
        c = road.centre()
        base = (f32(origin[0] - c[0]), f32(origin[1] - c[1]))
    R = f32(road.radius) if road.kappa != 0.0 else None

    def lateral_abs(t: np.ndarray) -> np.ndarray:
        if R is None:
            return np.abs(base[0] + t * Dy)
        vx, vy = base[0] + t * Dx, base[1] + t * Dy
        return np.abs(R - np.sign(R) * np.sqrt(vx * vx + vy * vy))

    with np.errstate(divide="ignore", invalid="ignore"):
        down = Dz < 0
        iDz = f32(1.0) / Dz
        t1 = np.where(down, (kh - oz) * iDz, f32(np.inf))
        t0 = np.where(down, -oz * iDz, f32(np.inf))
        l1, l0 = lateral_abs(np.where(down, t1, 0)), lateral_abs(np.where(down, t0, 0))
        top = l1 >= W
        road_ = l0 < W
        frac = np.clip((W - l1) / (l0 - l1), 0, 1)
        t_kerb = t1 + frac * (t0 - t1)
    t = np.where(top, t1, np.where(road_, t0, t_kerb)).astype(np.float32)
    obj = np.where(down, np.where(~top & ~road_, KERB, GROUND), SKY).astype(np.int32)
    t[~down] = np.inf
    return t, obj


def cast(
    grid: RayGrid,
    T_world_sensor: np.ndarray,
    prims: Primitives,
    road: Road,
    max_t: float = DRAW_DISTANCE,
    clip: bool = False,
) -> Hits:
    """Nearest surface along every ray of ``grid`` at pose ``T_world_sensor``.

    Primitives farther than ``max_t`` are not drawn (the ground always is: its
    far part near the horizon is real geometry). ``clip`` turns every hit
    beyond ``max_t`` into no-hit, as a range-limited LiDAR sees it.
    """
    R, origin = T_world_sensor[:3, :3], T_world_sensor[:3, 3].astype(np.float64)
    D = rotate_rays(grid, R)
    t, obj = ground_hits(road, origin, D)
    Dx, Dy, Dz = D
    with np.errstate(divide="ignore"):
        iDz = f32(1.0) / Dz
    DD = Dx * Dx + Dy * Dy + Dz * Dz
    Dxy2 = Dx * Dx + Dy * Dy

    if prims.n:
        c, h, yaw = prims.hulls()
        corners = box_corners(c, h, yaw)
        corners_sensor = (corners - origin) @ R  # row-vector form of R^T (p - o)
        dist = hull_distance(origin, c, h, yaw)
        rects, lower, visible = grid.cull(corners_sensor, dist)
        # empty rectangles (a LiDAR chunk's columns miss the hull) would draw nothing: skip them early
        covers = ((rects[:, :, 1] > rects[:, :, 0]) & (rects[:, :, 3] > rects[:, :, 2])).any(axis=1)
        keep = visible & (lower < max_t) & covers
        for k in np.nonzero(keep)[0][np.argsort(lower[keep], kind="stable")]:
            _draw(int(k), rects[k], float(lower[k]), prims, origin, t, obj, Dx, Dy, Dz, iDz, DD, Dxy2)
    if clip:
        far = t > max_t
        t[far] = np.inf
        obj[far] = SKY
    return Hits(t=t, obj=obj, D=D, origin=origin, prims=prims)


def _draw(k, rects, lower, prims, origin, t, obj, Dx, Dy, Dz, iDz, DD, Dxy2) -> None:
    """Intersect primitive ``k`` on its sub-grid(s) and update the z-buffer in place."""
    nb, nc = prims.n_box, prims.n_cyl
    for r0, r1, c0, c1 in rects:
        if r1 <= r0 or c1 <= c0:
            continue
        sl = (slice(r0, r1), slice(c0, c1))
        zb = t[sl]
        if lower >= zb.max():
            continue  # entirely behind what is already drawn there
        if k < nb:
            p = origin - prims.box_c[k]
            hx, hy, hz = prims.box_h[k]
            th = hit_box(
                Dx[sl],
                Dy[sl],
                Dz[sl],
                iDz[sl],
                f32(p[0]),
                f32(p[1]),
                f32(p[2]),
                f32(hx),
                f32(hy),
                f32(hz),
                f32(np.cos(prims.box_yaw[k])),
                f32(np.sin(prims.box_yaw[k])),
            )
        elif k < nb + nc:
            j = k - nb
            p = origin[:2] - prims.cyl_xy[j]
            z0, z1 = prims.cyl_z[j]
            th = hit_cylinder(
                Dx[sl],
                Dy[sl],
                Dz[sl],
                iDz[sl],
                Dxy2[sl],
                f32(p[0]),
                f32(p[1]),
                f32(origin[2]),
                f32(z0),
                f32(z1),
                f32(prims.cyl_r[j]),
            )
        else:
            j = k - nb - nc
            p = origin - prims.sph_c[j]
            th = hit_sphere(Dx[sl], Dy[sl], Dz[sl], DD[sl], f32(p[0]), f32(p[1]), f32(p[2]), f32(prims.sph_r[j]))
        closer = th < zb
        np.copyto(zb, th, where=closer)
        np.copyto(obj[sl], np.int32(FIRST_OBJECT + k), where=closer)


# ---------------------------------------------------------------- shadows
def shadow_mask(grid: RayGrid, hits: Hits, T_world_sensor: np.ndarray, sun: np.ndarray, road: Road) -> np.ndarray:
    """(H, W) bool: ground/kerb pixels whose path to the sun is blocked by a primitive.

    Only the ground receives cast shadows (objects shade themselves through
    their normals); a caster's shadow lies inside the box spanned by its hull
    and the hull's projection onto the ground along the sun, so only the
    pixels of that box are tested.
    """
    H, W = grid.shape
    shadow = np.zeros((H, W), dtype=bool)
    prims = hits.prims
    if not prims.n or sun[2] <= 0.05:
        return shadow
    receiver = (hits.obj == GROUND) | (hits.obj == KERB)
    c, h, yaw = prims.hulls()
    corners = box_corners(c, h, yaw)
    # shadow footprint: hull corners pushed along -sun to the ground plane
    proj = corners[..., :2] - corners[..., 2:3] / sun[2] * sun[None, None, :2]
    cy, sy = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    rel = proj - c[:, None, :2]
    u, v = cy * rel[..., 0] + sy * rel[..., 1], -sy * rel[..., 0] + cy * rel[..., 1]
    u0, u1 = np.minimum(u.min(1), -h[:, 0]), np.maximum(u.max(1), h[:, 0])
    v0, v1 = np.minimum(v.min(1), -h[:, 1]), np.maximum(v.max(1), h[:, 1])
    sc = np.column_stack(
        [
            c[:, 0] + cy[:, 0] * (u0 + u1) / 2 - sy[:, 0] * (v0 + v1) / 2,
            c[:, 1] + sy[:, 0] * (u0 + u1) / 2 + cy[:, 0] * (v0 + v1) / 2,
            np.full(len(c), 0.5 * road.kerb_height),
        ]
    )
    sh = np.column_stack([(u1 - u0) / 2, (v1 - v0) / 2, np.full(len(c), 0.5 * road.kerb_height + 0.05)])
    R, origin = T_world_sensor[:3, :3], hits.origin
    region = box_corners(sc, sh, yaw)
    rects, _, visible = grid.cull((region - origin) @ R, hull_distance(origin, sc, sh, yaw))
    S = [f32(v) for v in sun]
    iSz = f32(1.0) / S[2]
    Dxy2 = S[0] * S[0] + S[1] * S[1]
    nb, nc = prims.n_box, prims.n_cyl
    P = hits.D * np.where(receiver, hits.t, 0)[None]  # receiver points relative to the origin
    for k in np.nonzero(visible)[0]:
        for r0, r1, c0, c1 in rects[k]:
            if r1 <= r0 or c1 <= c0:
                continue
            sl = (slice(r0, r1), slice(c0, c1))
            rec = receiver[sl]
            if not rec.any():
                continue
            Px, Py, Pz = P[0][sl], P[1][sl], P[2][sl]
            if k < nb:
                d = origin - prims.box_c[k]
                hx, hy, hz = prims.box_h[k]
                blocked = hit_box_any(
                    S[0],
                    S[1],
                    S[2],
                    iSz,
                    Px + f32(d[0]),
                    Py + f32(d[1]),
                    Pz + f32(d[2]),
                    f32(hx),
                    f32(hy),
                    f32(hz),
                    f32(np.cos(prims.box_yaw[k])),
                    f32(np.sin(prims.box_yaw[k])),
                )
            elif k < nb + nc:
                j = k - nb
                d = origin[:2] - prims.cyl_xy[j]
                z0, z1 = prims.cyl_z[j]
                blocked = np.isfinite(
                    hit_cylinder(
                        S[0],
                        S[1],
                        S[2],
                        iSz,
                        Dxy2,
                        Px + f32(d[0]),
                        Py + f32(d[1]),
                        Pz + f32(origin[2]),
                        f32(z0),
                        f32(z1),
                        f32(prims.cyl_r[j]),
                        t_min=1e-3,
                    )
                )
            else:
                j = k - nb - nc
                d = origin - prims.sph_c[j]
                blocked = np.isfinite(
                    hit_sphere(
                        S[0],
                        S[1],
                        S[2],
                        f32(1.0),
                        Px + f32(d[0]),
                        Py + f32(d[1]),
                        Pz + f32(d[2]),
                        f32(prims.sph_r[j]),
                        t_min=1e-3,
                    )
                )
            shadow[sl] |= blocked & rec
    return shadow


# ------------------------------------------------------------ mirror rays
def trace_rays(
    origin: np.ndarray,
    P: np.ndarray,
    D: np.ndarray,
    group: np.ndarray,
    prims: Primitives,
    road: Road,
    max_t: float = DRAW_DISTANCE,
    tile: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit along rays with origins of their own: ``origin + P`` (P (3, n) float32) along unit ``D``.

    Mirror rays (:mod:`fsmde_core.synthetic.specular`) start on the surfaces the
    camera sees, not at one sensor, so the pixel-grid culling of :func:`cast` does
    not apply. Rays come in groups (``group`` (n,), the hit id of the mirror they
    leave); each group's rays start within a small sphere and point into a cone,
    so a primitive is only intersected with a group whose cone can reach its hull
    sphere. A group never meets its own primitive (every primitive is convex).
    ``tile`` (n,) (e.g. the image tile of each ray's pixel) splits groups further:
    smaller groups have tighter cones, so fewer rays are tested per primitive.

    Returns (t (n,) float32 distance along the ray, +inf = nothing within ``max_t``;
    hit id (n,) int32, SKY = nothing).
    """
    O = P.astype(np.float64) + origin[:, None]
    t, obj = ground_hits(road, O, D)
    if prims.n:
        c, h, yaw = prims.hulls()
        near = np.flatnonzero(hull_distance(origin, c, h, yaw) < max_t)
        radius = np.sqrt((h[near] ** 2).sum(1))
        key = group.astype(np.int64) << 32
        if tile is not None:
            key |= tile.astype(np.int64)
        reach, inv = _cone_reach(P, D, key, c[near] - origin, radius, near)
        order = np.argsort(inv, kind="stable")  # rays grouped: group g is order[start[g]:start[g] + count[g]]
        count = np.bincount(inv, minlength=reach.shape[0])
        start = np.concatenate([[0], np.cumsum(count)[:-1]])
        for col in np.flatnonzero(reach.any(axis=0)):  # one exact test per target, on every ray that may reach it
            groups = np.flatnonzero(reach[:, col])
            n_g = count[groups]
            offsets = np.repeat(start[groups] - np.concatenate([[0], np.cumsum(n_g)[:-1]]), n_g)
            rays = order[offsets + np.arange(int(n_g.sum()))]
            _trace_one(int(near[col]), rays, prims, origin, P, D, t, obj)
    far = t > max_t
    t[far] = np.inf
    obj[far] = SKY
    return t, obj


def _cone_reach(P: np.ndarray, D: np.ndarray, group: np.ndarray, centre: np.ndarray, radius: np.ndarray,
                ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(G, T) bool: a ray of group g can reach the hull sphere of target t (conservative cone test).

    Each group's rays start within a sphere around their centroid and point into a
    cone around their mean direction; a target is reachable when its sphere, grown
    by the start sphere, meets that cone. A group never reaches its own primitive.
    Also returns each ray's group row (n,).
    """
    keys, inv, count = np.unique(group, return_inverse=True, return_counts=True)
    G = count.size
    P64, D64 = P.astype(np.float64), D.astype(np.float64)
    src = np.stack([np.bincount(inv, P64[i], G) for i in range(3)], axis=1) / count[:, None]
    src_r = np.zeros(G)
    np.maximum.at(src_r, inv, np.sqrt(((P64.T - src[inv]) ** 2).sum(1)))
    axis = np.stack([np.bincount(inv, D64[i], G) for i in range(3)], axis=1)
    axis /= np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), 1e-12)
    cos_min = np.ones(G)
    np.minimum.at(cos_min, inv, (axis[inv] * D64.T).sum(1))
    half = np.arccos(np.clip(cos_min, -1.0, 1.0))
    v = centre[None] - src[:, None]  # (G, T, 3)
    dist = np.sqrt((v * v).sum(-1))
    grow = radius[None] + src_r[:, None] + 1e-3
    with np.errstate(invalid="ignore", divide="ignore"):
        ang = np.arccos(np.clip((v * axis[:, None]).sum(-1) / dist, -1.0, 1.0))
        slack = np.arcsin(np.clip(grow / dist, 0.0, 1.0))
    reach = (dist <= grow) | (ang - slack <= half[:, None])
    own = (keys >> 32) - FIRST_OBJECT
    reach &= ids[None] != own[:, None]
    return reach, inv


def _trace_one(k: int, rays: np.ndarray, prims: Primitives, origin: np.ndarray, P: np.ndarray, D: np.ndarray,
               t: np.ndarray, obj: np.ndarray) -> None:
    """Intersect primitive ``k`` with the rays ``rays`` (per-ray origins) and keep the nearer hits."""
    nb, nc = prims.n_box, prims.n_cyl
    Px, Py, Pz = P[0, rays], P[1, rays], P[2, rays]
    Dx, Dy, Dz = D[0, rays], D[1, rays], D[2, rays]
    with np.errstate(divide="ignore"):
        iDz = f32(1.0) / Dz
    if k < nb:
        d = origin - prims.box_c[k]
        hx, hy, hz = prims.box_h[k]
        th = hit_box(Dx, Dy, Dz, iDz, Px + f32(d[0]), Py + f32(d[1]), Pz + f32(d[2]), f32(hx), f32(hy), f32(hz),
                     f32(np.cos(prims.box_yaw[k])), f32(np.sin(prims.box_yaw[k])), t_min=1e-3)
    elif k < nb + nc:
        j = k - nb
        d = origin[:2] - prims.cyl_xy[j]
        z0, z1 = prims.cyl_z[j]
        th = hit_cylinder(Dx, Dy, Dz, iDz, Dx * Dx + Dy * Dy, Px + f32(d[0]), Py + f32(d[1]), Pz + f32(origin[2]),
                          f32(z0), f32(z1), f32(prims.cyl_r[j]), t_min=1e-3)
    else:
        j = k - nb - nc
        d = origin - prims.sph_c[j]
        th = hit_sphere(Dx, Dy, Dz, f32(1.0), Px + f32(d[0]), Py + f32(d[1]), Pz + f32(d[2]), f32(prims.sph_r[j]),
                        t_min=1e-3)
    cur = t[rays]
    closer = th < cur
    if closer.any():
        t[rays] = np.where(closer, th, cur)
        obj[rays] = np.where(closer, np.int32(FIRST_OBJECT + k), obj[rays])
