"""The procedural street: road geometry, ego trajectory, objects and lighting.

Everything is drawn from ``numpy.random.Generator`` streams keyed on the
user's seed (one per category of object), so a seed names one world exactly
(bitwise-identical renders) and a longer drive only appends to it.

World frame = ``odom`` (REP 105): z up, the ground at z = 0, the road starts
at the origin heading +x and curves with a constant signed curvature (0 =
straight). Positions along the road use *road coordinates* ``(s, l)``: arc
length along the centre line and lateral offset to the left. Traffic drives
on the right (ego lanes at ``l < 0``, oncoming lanes at ``l > 0``).

Objects are analytic primitives a ray caster intersects exactly: yaw-only
boxes (buildings, vehicles, lamp arms, signs), vertical cylinders (trunks,
poles, pedestrians) and spheres (tree crowns, heads). Each primitive also has
a *hull box* (the box itself, or a box around the cylinder/sphere) that the
renderer uses for culling.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from enum import IntEnum

import numpy as np

FRAME_PERIOD_S = 0.1  # 10 Hz rig, like DDAD and nuScenes keyframes
MAX_SPEED = 40.0  # m/s; a constant-speed drive (``make_world(speed=...)``) must stay on the generated road
DRAW_DISTANCE = 350.0  # objects farther than this from a sensor are not drawn (m)
WORLD_MARGIN = DRAW_DISTANCE + 50.0  # road length generated before/after the drive (m)


class Material(IntEnum):
    """Surface kinds; the shader and the LiDAR reflectivity switch on these."""

    BUILDING = 1
    CAR_PAINT = 2
    CAR_GLASS = 3
    METAL = 4
    BARK = 5
    FOLIAGE = 6
    CLOTH = 7
    SKIN = 8
    SIGN = 9


# ------------------------------------------------------------------- road
@dataclass(frozen=True)
class Road:
    """Cross-section and centre line of the street.

    Attributes:
        kappa: signed curvature of the centre line (1/m); > 0 curves left.
        lanes_per_dir: driving lanes in each direction.
        lane_width: width of one lane (m).
        parking_width: parking strip between the outer lane and the kerb (0 = none).
        sidewalk_width: raised sidewalk beyond the kerb (m).
        kerb_height: height of the sidewalk above the road (m).
        crosswalks: arc lengths of zebra crossings (m).
    """

    kappa: float
    lanes_per_dir: int
    lane_width: float
    parking_width: float
    sidewalk_width: float
    kerb_height: float
    crosswalks: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def half_width(self) -> float:
        """Lateral distance from the centre line to the kerb face (m)."""
        return self.lanes_per_dir * self.lane_width + self.parking_width

    @property
    def radius(self) -> float:
        return 1.0 / self.kappa if self.kappa != 0.0 else np.inf

    def centre(self) -> np.ndarray:
        """Centre of the circle the road follows (only meaningful when curved)."""
        return np.array([0.0, self.radius])

    def heading(self, s: np.ndarray | float) -> np.ndarray:
        """Yaw (rad, CCW from +x) of the centre line's tangent at arc length ``s``."""
        return np.asarray(s, dtype=np.float64) * self.kappa

    def point(self, s: np.ndarray | float, l: np.ndarray | float) -> np.ndarray:
        """World (x, y) of road coordinates ``(s, l)``; shape ``(..., 2)``."""
        s = np.asarray(s, dtype=np.float64)
        l = np.asarray(l, dtype=np.float64)
        if self.kappa == 0.0:
            return np.stack(np.broadcast_arrays(s, l), axis=-1)
        R = self.radius
        th = s * self.kappa
        return np.stack([(R - l) * np.sin(th), R - (R - l) * np.cos(th)], axis=-1)

    def lateral(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Lateral offset ``l`` of world points (vectorised, keeps the input dtype)."""
        if self.kappa == 0.0:
            return y
        R = self.radius
        r = np.sqrt(x * x + (y - y.dtype.type(R)) ** 2)
        return (R - np.sign(R) * r).astype(y.dtype, copy=False)

    def to_sl(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Road coordinates ``(s, l)`` of world points (within half a turn of the start)."""
        if self.kappa == 0.0:
            return x, y
        R = self.radius
        sg = np.sign(R)
        vx, vy = x, y - y.dtype.type(R)
        th = np.arctan2(sg * vx, -sg * vy)
        return (th * y.dtype.type(R)).astype(y.dtype, copy=False), self.lateral(x, y)


# ------------------------------------------------------------ ego motion
@dataclass(frozen=True)
class EgoMotion:
    """Smooth drive along one lane: speed ``v0 + amp * sin(omega t)`` (5-12 m/s),
    a slow lateral sway inside the lane and small suspension pitch/roll.

    ``t`` is seconds since the first frame; base_link is on the ground (z = 0).
    """

    lane_l: float
    v0: float
    amp: float
    omega: float
    sway_amp: float
    sway_omega: float
    sway_phase: float
    pitch_amp: float
    roll_amp: float
    bounce_omega: float

    def s(self, t: np.ndarray | float) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        return self.v0 * t + self.amp * (1.0 - np.cos(self.omega * t)) / self.omega

    def speed(self, t: np.ndarray | float) -> np.ndarray:
        return self.v0 + self.amp * np.sin(self.omega * np.asarray(t, dtype=np.float64))

    def pose(self, road: Road, t: float) -> np.ndarray:
        """4x4 ``T_odom_base`` at time ``t``."""
        s = float(self.s(t))
        sway = self.sway_amp * np.sin(self.sway_omega * t + self.sway_phase)
        dsway_dt = self.sway_amp * self.sway_omega * np.cos(self.sway_omega * t + self.sway_phase)
        xy = road.point(s, self.lane_l + sway)
        yaw = float(road.heading(s)) + np.arctan2(dsway_dt, float(self.speed(t)))
        pitch = self.pitch_amp * np.sin(self.bounce_omega * t)
        roll = self.roll_amp * np.sin(1.37 * self.bounce_omega * t + 0.5)
        cy, sy = np.cos(yaw), np.sin(yaw)
        cp, sp = np.cos(pitch), np.sin(pitch)
        cr, sr = np.cos(roll), np.sin(roll)
        Rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
        Ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
        Rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
        T = np.eye(4)
        T[:3, :3] = Rz @ Ry @ Rx
        T[:2, 3] = xy
        return T


# --------------------------------------------------------------- objects
@dataclass
class Primitives:
    """A set of analytic primitives at one instant (world frame, float64).

    Boxes: centre, half extents, yaw. Cylinders (vertical): centre xy,
    [z0, z1], radius. Spheres: centre, radius. Each has a material, a linear
    albedo colour and four texture parameters (meaning depends on material).
    ``*_s`` is the arc length of the primitive along the road (for fast
    range selection).
    """

    box_c: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    box_h: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    box_yaw: np.ndarray = field(default_factory=lambda: np.zeros(0))
    box_mat: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    box_col: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    box_par: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    box_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cyl_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    cyl_z: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    cyl_r: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cyl_mat: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    cyl_col: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    cyl_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sph_c: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    sph_r: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sph_mat: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    sph_col: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    sph_s: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def n_box(self) -> int:
        return int(self.box_c.shape[0])

    @property
    def n_cyl(self) -> int:
        return int(self.cyl_r.shape[0])

    @property
    def n_sph(self) -> int:
        return int(self.sph_r.shape[0])

    @property
    def n(self) -> int:
        return self.n_box + self.n_cyl + self.n_sph

    def concat(self, other: Primitives) -> Primitives:
        return Primitives(
            **{f.name: np.concatenate([getattr(self, f.name), getattr(other, f.name)]) for f in fields(self)}
        )

    def select(self, box: np.ndarray, cyl: np.ndarray, sph: np.ndarray) -> Primitives:
        """Subset by per-kind index arrays (or boolean masks)."""
        out = {}
        for f in fields(self):
            idx = box if f.name.startswith("box") else cyl if f.name.startswith("cyl") else sph
            out[f.name] = getattr(self, f.name)[idx]
        return Primitives(**out)

    def near(self, s_lo: float, s_hi: float) -> Primitives:
        """Primitives whose road position lies in ``[s_lo, s_hi]``."""
        return self.select(*(((a >= s_lo) & (a <= s_hi)) for a in (self.box_s, self.cyl_s, self.sph_s)))

    def hulls(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hull boxes of every primitive, in global order boxes, cylinders, spheres.

        Returns centre (N, 3), half extents (N, 3), yaw (N,).
        """
        cyl_c = np.column_stack([self.cyl_xy, self.cyl_z.mean(axis=1)]) if self.n_cyl else np.zeros((0, 3))
        cyl_h = (
            np.column_stack([self.cyl_r, self.cyl_r, 0.5 * (self.cyl_z[:, 1] - self.cyl_z[:, 0])])
            if self.n_cyl
            else np.zeros((0, 3))
        )
        sph_h = np.repeat(self.sph_r[:, None], 3, axis=1)
        c = np.concatenate([self.box_c, cyl_c, self.sph_c])
        h = np.concatenate([self.box_h, cyl_h, sph_h])
        yaw = np.concatenate([self.box_yaw, np.zeros(self.n_cyl + self.n_sph)])
        return c, h, yaw

    def materials(self) -> np.ndarray:
        return np.concatenate([self.box_mat, self.cyl_mat, self.sph_mat]).astype(np.int32)

    def colours(self) -> np.ndarray:
        return np.concatenate([self.box_col, self.cyl_col, self.sph_col]).astype(np.float32)


def box_corners(c: np.ndarray, h: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """(N, 8, 3) corners of yaw-rotated boxes."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    local = signs[None] * h[:, None, :]
    cy, sy = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    x = cy * local[..., 0] - sy * local[..., 1]
    y = sy * local[..., 0] + cy * local[..., 1]
    return np.stack([x, y, local[..., 2]], axis=-1) + c[:, None, :]


@dataclass
class _Builder:
    """Accumulates primitives while the generator walks along the road."""

    box: list[tuple] = field(default_factory=list)
    cyl: list[tuple] = field(default_factory=list)
    sph: list[tuple] = field(default_factory=list)

    def add_box(self, c, h, yaw, mat, col, par=(0.0, 0.0, 0.0, 0.0), s=0.0) -> None:
        self.box.append((tuple(c), tuple(h), yaw, int(mat), tuple(col), tuple(par), s))

    def add_cyl(self, xy, z0, z1, r, mat, col, s=0.0) -> None:
        self.cyl.append((tuple(xy), (z0, z1), r, int(mat), tuple(col), s))

    def add_sph(self, c, r, mat, col, s=0.0) -> None:
        self.sph.append((tuple(c), r, int(mat), tuple(col), s))

    def build(self) -> Primitives:
        def col(rows, i, shape):
            return np.array([r[i] for r in rows], dtype=np.float64).reshape(shape)

        nb, nc, ns = len(self.box), len(self.cyl), len(self.sph)
        return Primitives(
            box_c=col(self.box, 0, (nb, 3)),
            box_h=col(self.box, 1, (nb, 3)),
            box_yaw=col(self.box, 2, (nb,)),
            box_mat=col(self.box, 3, (nb,)).astype(np.int32),
            box_col=col(self.box, 4, (nb, 3)),
            box_par=col(self.box, 5, (nb, 4)),
            box_s=col(self.box, 6, (nb,)),
            cyl_xy=col(self.cyl, 0, (nc, 2)),
            cyl_z=col(self.cyl, 1, (nc, 2)),
            cyl_r=col(self.cyl, 2, (nc,)),
            cyl_mat=col(self.cyl, 3, (nc,)).astype(np.int32),
            cyl_col=col(self.cyl, 4, (nc, 3)),
            cyl_s=col(self.cyl, 5, (nc,)),
            sph_c=col(self.sph, 0, (ns, 3)),
            sph_r=col(self.sph, 1, (ns,)),
            sph_mat=col(self.sph, 2, (ns,)).astype(np.int32),
            sph_col=col(self.sph, 3, (ns, 3)),
            sph_s=col(self.sph, 4, (ns,)),
        )


@dataclass
class Traffic:
    """Vehicles that move along their lane: ``s(t) = s0 + v t (+ ego s(t) if follow)``.

    Each vehicle is two boxes (body + cabin/cargo) described in its own
    road-aligned frame: ``dx`` shifts a box along the heading, ``z`` is its
    vertical extent.
    """

    s0: np.ndarray
    v: np.ndarray
    follow: np.ndarray  # bool: keeps a fixed gap to the ego vehicle (lead/follower car)
    l: np.ndarray
    dx: np.ndarray
    half_len: np.ndarray
    half_wid: np.ndarray
    z: np.ndarray  # (N, 2)
    mat: np.ndarray
    col: np.ndarray
    par: np.ndarray

    def at(self, road: Road, ego: EgoMotion, t: float) -> Primitives:
        s = self.s0 + self.v * t + np.where(self.follow, float(ego.s(t)), 0.0) + self.dx
        xy = road.point(s, self.l)
        zc = self.z.mean(axis=1)
        return Primitives(
            box_c=np.column_stack([xy, zc]),
            box_h=np.column_stack([self.half_len, self.half_wid, 0.5 * (self.z[:, 1] - self.z[:, 0])]),
            box_yaw=road.heading(s),
            box_mat=self.mat,
            box_col=self.col,
            box_par=self.par,
            box_s=s,
        )


@dataclass(frozen=True)
class Lighting:
    """Sun, sky and haze: shading is a depth cue, so they vary per seed."""

    sun_dir: np.ndarray  # unit vector towards the sun (world)
    sun_rgb: np.ndarray
    sky_rgb: np.ndarray  # ambient sky light
    zenith_rgb: np.ndarray
    horizon_rgb: np.ndarray
    haze_rgb: np.ndarray
    fog_distance: float  # aerial perspective e-folding distance (m)
    cloud_cover: float  # 0..1


@dataclass
class World:
    """One procedural street and a drive along it."""

    seed: int
    road: Road
    ego: EgoMotion
    lighting: Lighting
    static: Primitives
    traffic: Traffic
    duration_s: float

    def ego_pose(self, t: float) -> np.ndarray:
        """4x4 ``T_odom_base`` at ``t`` seconds after the first frame."""
        return self.ego.pose(self.road, t)

    def primitives_at(self, t: float, s_window: float = WORLD_MARGIN) -> Primitives:
        """Everything within ``s_window`` of the ego's road position at time ``t``."""
        s_ego = float(self.ego.s(t))
        lo, hi = s_ego - s_window, s_ego + s_window
        return self.static.near(lo, hi).concat(self.traffic.at(self.road, self.ego, t).near(lo, hi))


# ------------------------------------------------------------- generation
_FACADES = np.array(
    [
        [0.55, 0.47, 0.36],
        [0.45, 0.20, 0.14],
        [0.40, 0.40, 0.42],
        [0.70, 0.68, 0.64],
        [0.22, 0.22, 0.24],
        [0.60, 0.50, 0.25],
        [0.30, 0.35, 0.42],
        [0.60, 0.42, 0.40],
        [0.35, 0.42, 0.32],
        [0.52, 0.30, 0.20],
    ]
)
_PAINTS = np.array(
    [
        [0.70, 0.70, 0.70],
        [0.05, 0.05, 0.05],
        [0.35, 0.36, 0.38],
        [0.55, 0.05, 0.04],
        [0.05, 0.12, 0.40],
        [0.75, 0.75, 0.72],
        [0.10, 0.25, 0.12],
        [0.60, 0.45, 0.08],
        [0.25, 0.10, 0.05],
        [0.20, 0.35, 0.55],
    ]
)
_CLOTHES = np.array(
    [
        [0.05, 0.05, 0.08],
        [0.30, 0.05, 0.05],
        [0.08, 0.12, 0.30],
        [0.45, 0.42, 0.35],
        [0.50, 0.50, 0.50],
        [0.10, 0.25, 0.10],
    ]
)
_SIGNS = np.array([[0.60, 0.04, 0.03], [0.03, 0.12, 0.55], [0.75, 0.75, 0.72], [0.70, 0.55, 0.02]])


def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float = 0.12) -> np.ndarray:
    return np.clip(palette[rng.integers(len(palette))] * rng.uniform(1 - jitter, 1 + jitter, 3), 0.01, 0.9)


def _stream(seed: int, *tags: int) -> np.random.Generator:
    """An independent random stream per (seed, category): a longer drive only appends objects."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *tags]))


def _make_road(rng: np.random.Generator, s_span: float) -> Road:
    if rng.random() < 0.35:
        kappa = 0.0
    else:  # gentle: radius 350-2500 m, and never more than ~140 deg over the generated span
        kappa = float(rng.choice([-1, 1]) * min(rng.uniform(1 / 2500, 1 / 350), 2.4 / s_span))
    lanes = int(rng.choice([1, 2]))
    parking = float(rng.uniform(2.0, 2.5)) if rng.random() < 0.65 else 0.0
    return Road(
        kappa=kappa,
        lanes_per_dir=lanes,
        lane_width=float(rng.uniform(3.2, 3.7)),
        parking_width=parking,
        sidewalk_width=float(rng.uniform(2.2, 4.5)),
        kerb_height=float(rng.uniform(0.12, 0.18)),
    )


def _crosswalks(seed: int, s_lo: float, s_hi: float) -> np.ndarray:
    walk = _stream(seed, 0xC055)
    cross, s = [], s_lo + walk.uniform(20, 200)
    while s < s_hi:
        cross.append(s)
        s += walk.uniform(120, 400)
    return np.array(cross)


def _make_ego(rng: np.random.Generator, road: Road) -> EgoMotion:
    lane = int(rng.integers(road.lanes_per_dir))
    v0 = float(rng.uniform(6.5, 10.0))
    amp = float(rng.uniform(0.0, min(2.0, v0 - 5.2, 11.8 - v0)))
    return EgoMotion(
        lane_l=-road.lane_width * (lane + 0.5),  # lane 0 is next to the centre line
        v0=v0,
        amp=amp,
        omega=2 * np.pi / float(rng.uniform(8.0, 20.0)),
        sway_amp=float(rng.uniform(0.0, 0.2)),
        sway_omega=2 * np.pi / float(rng.uniform(6.0, 15.0)),
        sway_phase=float(rng.uniform(0, 2 * np.pi)),
        pitch_amp=float(np.radians(rng.uniform(0.1, 0.5))),
        roll_amp=float(np.radians(rng.uniform(0.1, 0.4))),
        bounce_omega=2 * np.pi * float(rng.uniform(0.6, 1.4)),
    )


def _make_lighting(rng: np.random.Generator) -> Lighting:
    elev = np.radians(rng.uniform(18, 65))
    az = rng.uniform(-np.pi, np.pi)
    sun = np.array([np.cos(elev) * np.cos(az), np.cos(elev) * np.sin(az), np.sin(elev)])
    warm = rng.uniform(0.0, 1.0) * (1.0 - np.sin(elev))  # low sun = warmer light
    sun_rgb = np.array([1.0, 0.93 - 0.1 * warm, 0.85 - 0.25 * warm]) * rng.uniform(2.4, 3.2)
    overcast = float(rng.uniform(0.0, 0.8))
    sun_rgb = sun_rgb * (1.0 - 0.6 * overcast)
    zenith = np.array([0.18, 0.32, 0.65]) * (1 - overcast) + np.array([0.55, 0.57, 0.6]) * overcast
    horizon = np.array([0.68, 0.75, 0.85]) * (1 - overcast) + np.array([0.75, 0.76, 0.78]) * overcast
    return Lighting(
        sun_dir=sun,
        sun_rgb=sun_rgb,
        sky_rgb=np.array([0.42, 0.48, 0.6]) * (0.8 + 0.6 * overcast),
        zenith_rgb=zenith,
        horizon_rgb=horizon,
        haze_rgb=horizon * rng.uniform(0.85, 1.0),
        fog_distance=float(rng.uniform(500.0, 1600.0)),
        cloud_cover=float(np.clip(overcast + rng.uniform(0, 0.4), 0, 1)),
    )


def _vehicle_parts(rng: np.random.Generator, kind: str) -> list[tuple]:
    """Boxes of one vehicle in its own frame: (dx, half_len, half_wid, z0, z1, mat, col, par)."""
    paint = _pick(rng, _PAINTS, 0.08)
    par = (float(rng.random()), 0.0, 0.0, 0.0)
    if kind == "car":
        L, W = rng.uniform(3.9, 4.9), rng.uniform(1.7, 1.9)
        z_body, z_top = rng.uniform(0.95, 1.05), rng.uniform(1.40, 1.60)
        cab_len = L * rng.uniform(0.45, 0.6)
        return [
            (0.0, L / 2, W / 2, 0.22, z_body, Material.CAR_PAINT, paint, par),
            (-L * 0.08, cab_len / 2, W / 2 * 0.9, z_body, z_top, Material.CAR_GLASS, paint, par),
        ]
    if kind == "van":
        L, W, H = rng.uniform(4.8, 6.0), rng.uniform(1.9, 2.1), rng.uniform(2.2, 2.7)
        return [
            (0.0, L / 2, W / 2, 0.3, 1.2, Material.CAR_PAINT, paint, par),
            (-L * 0.1, L * 0.4, W / 2 * 0.97, 1.2, H, Material.CAR_PAINT, paint, (par[0], 1.0, 0.0, 0.0)),
            (L * 0.38, L * 0.1, W / 2 * 0.95, 1.2, H * 0.85, Material.CAR_GLASS, paint, par),
        ]
    L, W, H = rng.uniform(8.0, 12.0), rng.uniform(2.4, 2.55), rng.uniform(3.0, 3.5)
    return [
        (0.0, L / 2, W / 2, 0.35, 1.1, Material.CAR_PAINT, paint, par),
        (-0.6, L / 2 - 0.6, W / 2, 1.1, H, Material.CAR_PAINT, paint, (par[0], 1.0, 0.0, 0.0)),
        (L / 2 - 0.6, 0.6, W / 2, 1.1, H * 0.9, Material.CAR_GLASS, paint, par),
    ]


def _vehicle_kind(rng: np.random.Generator, heavy: float = 0.08) -> str:
    u = rng.random()
    return "car" if u < 0.82 - heavy else "van" if u < 1.0 - heavy else "truck"


def _vehicle_length(parts: list[tuple]) -> float:
    return max(dx + hl for dx, hl, *_ in parts) - min(dx - hl for dx, hl, *_ in parts)


def _buildings(b: _Builder, seed: int, road: Road, s_lo: float, s_hi: float) -> None:
    density = _stream(seed, 0xB1D6).uniform(0.0, 1.0)  # 0 = suburb (low, spaced), 1 = downtown (street walls)
    for side in (-1.0, 1.0):
        rng = _stream(seed, 0xB1D6, int(side > 0))
        base_setback = rng.uniform(0.5, 2.0 + 6.0 * (1 - density))
        s = s_lo
        while s < s_hi:
            width = rng.uniform(8.0, 30.0) if rng.random() > 0.15 else rng.uniform(30.0, 55.0)
            depth = rng.uniform(8.0, 25.0)
            height = float(np.clip(rng.lognormal(np.log(6.0 + 18.0 * density), 0.45), 3.5, 60.0))
            setback = base_setback + rng.uniform(0.0, 3.0)
            sc = s + width / 2
            l_c = side * (road.half_width + road.sidewalk_width + setback + depth / 2)
            xy = road.point(sc, l_c)
            par = (
                rng.uniform(2.8, 3.8),
                rng.uniform(1.8, 3.6),
                rng.uniform(0.3, 0.75),
                rng.uniform(0.35, 0.7),
            )
            colour = _pick(rng, _FACADES)
            b.add_box(
                (xy[0], xy[1], height / 2),
                (width / 2, depth / 2, height / 2),
                float(road.heading(sc)) + rng.uniform(-0.03, 0.03),
                Material.BUILDING,
                colour,
                par,
                sc,
            )
            gap = rng.uniform(2.0, 15.0) if rng.random() < 0.55 - 0.45 * density else rng.uniform(0.0, 0.6)
            s += width + gap


def _street_furniture(b: _Builder, seed: int, road: Road, s_lo: float, s_hi: float) -> None:
    """Trees, lamp posts, signs and pedestrians on the sidewalks."""
    kh, W, sw = road.kerb_height, road.half_width, road.sidewalk_width
    rng = _stream(seed, 0xF0A1)
    p_tree = rng.uniform(0.0, 0.9)
    p_ped = rng.uniform(0.0, 0.5)
    grey = np.array([0.32, 0.33, 0.35])
    for side in (-1.0, 1.0):
        rng = _stream(seed, 0xF0A1, int(side > 0), 1)
        s = s_lo + rng.uniform(0, 10)
        while s < s_hi:  # trees
            if rng.random() < p_tree:
                l = side * (W + sw * rng.uniform(0.55, 0.8))
                xy = road.point(s, l)
                trunk_h, trunk_r = rng.uniform(2.5, 4.5), rng.uniform(0.1, 0.22)
                crown_r = rng.uniform(1.2, min(3.0, 0.6 * sw + 1.0))
                bark = np.array([0.22, 0.16, 0.11]) * rng.uniform(0.8, 1.2)
                leaf = np.array([rng.uniform(0.06, 0.16), rng.uniform(0.18, 0.32), rng.uniform(0.04, 0.1)])
                b.add_cyl(xy, kh, kh + trunk_h + crown_r * 0.5, trunk_r, Material.BARK, bark, s)
                b.add_sph((xy[0], xy[1], kh + trunk_h + crown_r * 0.6), crown_r, Material.FOLIAGE, leaf, s)
            s += rng.uniform(6.0, 14.0)
        rng = _stream(seed, 0xF0A1, int(side > 0), 2)
        s = s_lo + rng.uniform(0, 20)
        while s < s_hi:  # lamp posts with an arm over the road
            l = side * (W + 0.45)
            xy = road.point(s, l)
            h, arm = rng.uniform(6.0, 9.0), rng.uniform(1.2, 2.4)
            b.add_cyl(xy, kh, kh + h, 0.09, Material.METAL, grey, s)
            arm_xy = road.point(s, l - side * arm / 2)
            yaw = float(road.heading(s))
            b.add_box((arm_xy[0], arm_xy[1], kh + h - 0.05), (0.06, arm / 2, 0.05), yaw, Material.METAL, grey, s=s)
            head_xy = road.point(s, l - side * (arm - 0.3))
            b.add_box(
                (head_xy[0], head_xy[1], kh + h - 0.15),
                (0.25, 0.35, 0.08),
                yaw,
                Material.METAL,
                grey * 0.6,
                s=s,
            )
            s += rng.uniform(20.0, 40.0)
        rng = _stream(seed, 0xF0A1, int(side > 0), 3)
        s = s_lo + rng.uniform(0, 40)
        while s < s_hi:  # traffic signs facing oncoming traffic on that side
            l = side * (W + 0.35)
            xy = road.point(s, l)
            h = rng.uniform(2.2, 2.8)
            b.add_cyl(xy, kh, kh + h, 0.04, Material.METAL, grey, s)
            yaw = float(road.heading(s))
            off = road.point(s + 0.06 * side, l)
            b.add_box(
                (off[0], off[1], kh + h - 0.3),
                (0.02, 0.35, 0.35),
                yaw,
                Material.SIGN,
                _pick(rng, _SIGNS, 0.05),
                s=s,
            )
            s += rng.uniform(30.0, 90.0)
        rng = _stream(seed, 0xF0A1, int(side > 0), 4)
        s = s_lo + rng.uniform(0, 8)
        while s < s_hi:  # pedestrians standing on the sidewalk
            if rng.random() < p_ped:
                l = side * (W + sw * rng.uniform(0.15, 0.9))
                xy = road.point(s, l)
                h = rng.uniform(1.05, 1.3)
                b.add_cyl(xy, kh, kh + h, rng.uniform(0.18, 0.25), Material.CLOTH, _pick(rng, _CLOTHES), s)
                skin = np.array([0.55, 0.4, 0.3]) * rng.uniform(0.4, 1.1)
                b.add_sph((xy[0], xy[1], kh + h + 0.2), 0.12, Material.SKIN, skin, s)
            s += rng.uniform(3.0, 9.0)


def _parked_cars(b: _Builder, seed: int, road: Road, s_lo: float, s_hi: float) -> None:
    if road.parking_width <= 0:
        return
    occupancy = _stream(seed, 0xCA25).uniform(0.3, 0.95)
    for side in (-1.0, 1.0):
        rng = _stream(seed, 0xCA25, int(side > 0))
        l = side * (road.half_width - road.parking_width / 2 - rng.uniform(0.0, 0.15))
        s = s_lo + rng.uniform(0, 5)
        while s < s_hi:
            parts = _vehicle_parts(rng, _vehicle_kind(rng, heavy=0.03))
            length = _vehicle_length(parts)
            if rng.random() < occupancy:
                sc = s + length / 2
                flip = 1.0 if side < 0 else -1.0  # parked in the direction of traffic
                for dx, hl, hw, z0, z1, mat, col, par in parts:
                    xy = road.point(sc + flip * dx, l)
                    b.add_box(
                        (xy[0], xy[1], (z0 + z1) / 2),
                        (hl, hw, (z1 - z0) / 2),
                        float(road.heading(sc + flip * dx)),
                        mat,
                        col,
                        par,
                        sc,
                    )
            s += length + rng.uniform(0.8, 2.5) + (rng.uniform(4, 12) if rng.random() < 0.2 else 0.0)


def _traffic(seed: int, road: Road, ego: EgoMotion, s_lo: float, s_hi: float, duration: float) -> Traffic:
    rows: list[tuple] = []

    def add(parts: list[tuple], s0: float, v: float, follow: bool, l: float, direction: float) -> None:
        for dx, hl, hw, z0, z1, mat, col, par in parts:
            rows.append((s0, v, follow, l, direction * dx, hl, hw, z0, z1, int(mat), tuple(col), tuple(par)))

    rng = _stream(seed, 0x7AF)
    busy = rng.uniform(0.2, 1.0)
    for direction in (1.0, -1.0):
        for lane in range(road.lanes_per_dir):
            l = -direction * road.lane_width * (lane + 0.5)
            v = direction * rng.uniform(6.0, 13.0)
            if direction > 0 and abs(l - ego.lane_l) < 1e-6:
                continue  # the ego lane gets a lead/follow car below
            # vehicle k is at s0_k + v t; it must cover [s_ego(t) - margin, s_ego(t) + margin] for t in
            # [0, duration]: walk forward from s_lo and (for same-direction lanes) backward from s_lo,
            # each with its own stream, so a longer drive only appends vehicles
            ups = (s_hi + max(-v, 0.0) * duration, 1.0)
            downs = (s_lo - max(v, 0.0) * duration, -1.0)
            for limit, step in (ups, downs):
                walk = _stream(seed, 0x7AF, int(direction > 0), lane, int(step > 0))
                s = s_lo + step * (walk.uniform(0, 20) + (0.0 if step > 0 else 16.0))
                while (s < limit) if step > 0 else (s > limit):
                    parts = _vehicle_parts(walk, _vehicle_kind(walk))
                    add(parts, s, v, False, l, direction)
                    s += step * (_vehicle_length(parts) + walk.uniform(8.0, 25.0) + walk.exponential(60.0 / busy))
    for sign, p in ((1.0, 0.55), (-1.0, 0.35)):  # a car ahead / behind in the ego lane
        if rng.random() < p:
            parts = _vehicle_parts(rng, _vehicle_kind(rng, heavy=0.1))
            gap = rng.uniform(9.0, 30.0) + _vehicle_length(parts) / 2 + 2.0
            add(parts, sign * gap, 0.0, True, ego.lane_l, 1.0)
    if not rows:
        z = np.zeros(0)
        return Traffic(
            z,
            z,
            z.astype(bool),
            z,
            z,
            z,
            z,
            np.zeros((0, 2)),
            z.astype(np.int32),
            np.zeros((0, 3)),
            np.zeros((0, 4)),
        )
    cols = list(zip(*rows, strict=True))
    return Traffic(
        s0=np.array(cols[0]),
        v=np.array(cols[1]),
        follow=np.array(cols[2], bool),
        l=np.array(cols[3]),
        dx=np.array(cols[4]),
        half_len=np.array(cols[5]),
        half_wid=np.array(cols[6]),
        z=np.column_stack([cols[7], cols[8]]),
        mat=np.array(cols[9], np.int32),
        col=np.array(cols[10], np.float64),
        par=np.array(cols[11], np.float64),
    )


def with_constant_speed(ego: EgoMotion, speed: float) -> EgoMotion:
    """The same drive at a constant ``speed`` (m/s); 0 = a parked car (no sway, the suspension still bounces).

    Tests of motion compensation need a known, often higher speed than the
    seed's 5-12 m/s; everything else about the world stays as the seed made it.
    """
    if not (np.isfinite(speed) and 0.0 <= speed <= MAX_SPEED):
        raise ValueError(f"speed must be in [0, {MAX_SPEED:g}] m/s, got {speed}")
    return replace(ego, v0=float(speed), amp=0.0, sway_amp=ego.sway_amp if speed > 0 else 0.0)


def make_world(seed: int, duration_s: float, speed: float | None = None) -> World:
    """Generate the street for a drive of ``duration_s`` seconds, deterministically from ``seed``.

    Every category of object has its own random stream and is laid out by
    walking along the road from a fixed start, so drives of different
    lengths with one seed share their beginning (up to one minute of driving;
    longer drives get a gentler curve so that the road never turns back).
    ``speed`` (m/s) replaces the seed's varying 5-12 m/s by a constant speed
    (the random draws are unchanged, so the street is the same).
    """
    rng = _stream(seed, 0x5EED)
    s_lo = -WORLD_MARGIN
    span_speed = 12.0 if speed is None else max(12.0, float(speed))
    road = _make_road(rng, s_span=span_speed * max(duration_s, 60.0) + 2 * WORLD_MARGIN)
    ego = _make_ego(rng, road)
    if speed is not None:
        ego = with_constant_speed(ego, speed)
    lighting = _make_lighting(rng)
    s_hi = float(ego.s(duration_s)) + WORLD_MARGIN
    road = replace(road, crosswalks=_crosswalks(seed, s_lo, s_hi))
    b = _Builder()
    _buildings(b, seed, road, s_lo, s_hi)
    _street_furniture(b, seed, road, s_lo, s_hi)
    _parked_cars(b, seed, road, s_lo, s_hi)
    traffic = _traffic(seed, road, ego, s_lo, s_hi, duration_s)
    return World(
        seed=int(seed),
        road=road,
        ego=ego,
        lighting=lighting,
        static=b.build(),
        traffic=traffic,
        duration_s=float(duration_s),
    )


__all__ = [
    "DRAW_DISTANCE",
    "FRAME_PERIOD_S",
    "EgoMotion",
    "Lighting",
    "Material",
    "Primitives",
    "Road",
    "Traffic",
    "World",
    "box_corners",
    "make_world",
    "with_constant_speed",
]
