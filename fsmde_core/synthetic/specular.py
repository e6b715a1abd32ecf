"""Reflective (specular) materials of the synthetic street: ``fsmde synth --reflective``.

Self-supervised depth learns from the photometric consistency of views; that
assumes Lambertian surfaces, whose colour does not depend on where they are seen
from. Car paint, windows, glass facades and puddles break it: they show a mirror
image of the environment that moves with the viewer. This module makes such
surfaces (so a loss that handles them can be measured) and says where they are
(the ground-truth reflective mask).

What reflects, drawn from the world seed with streams of its own (the clear
world's draws stay untouched, so the street, the drive and the depth are those
of the bag without the flag):

* car windows, always: tinted glass in front of a dark interior, so most of what
  is seen is reflection (weight 0.4 + 0.6 Schlick(F0 = 0.04));
* the clear coat of some cars' paint ("glossy" cars): Schlick(F0 = 0.05) capped at
  0.3, so 5 % head-on to 30 % at grazing angles;
* the curtain wall of some buildings (glass facades): like car windows, between
  mullions and spandrels;
* a few puddles on the road: water, Schlick(F0 = 0.02), strong at grazing angles.

A reflective pixel's radiance is ``(1 - w) * diffuse + w * reflected``, where
``reflected`` is the shaded surface (or sky) that the mirror ray from the hit
point meets (one bounce, :func:`reflected_radiance`). Every mirror here is planar
(box faces, the flat road), the normal exact. The mask marks ``w > MASK_WEIGHT``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from fsmde_core.synthetic.raycast import SKY, Hits, trace_rays
from fsmde_core.synthetic.world import WORLD_MARGIN, Road, World

f32 = np.float32

REFLECTIVE_KEY = "fsmde.reflective"  # bag metadata custom data: "true" when rendered with --reflective
MASK_WEIGHT = 0.2  # a pixel is "reflective" in the GT mask when its reflection weight exceeds this
MIN_WEIGHT = 0.01  # below this weight the mirror ray is not traced (invisible)
REFLECT_RANGE = 250.0  # mirror rays meet nothing beyond this (m): the sky is reflected then
_STREAM = 0x5BEC  # random stream of the seed's reflective choices
_PUDDLE_STREAM = 0x9DD1
PUDDLE_MAX_HALF_LENGTH = 4.0  # m, along the road


@dataclass(frozen=True)
class Specular:
    """The seed's reflective choices.

    Attributes:
        seed: the world seed (salts the per-object choices).
        glossy_car_share: probability that a vehicle's paint has a mirror-like clear coat.
        glass_building_share: probability that a building has a glass curtain wall.
        puddle_s, puddle_l: (P,) puddle centres in road coordinates (sorted by s).
        puddle_a, puddle_b: (P,) half lengths along / across the road (m).
    """

    seed: int
    glossy_car_share: float
    glass_building_share: float
    puddle_s: np.ndarray
    puddle_l: np.ndarray
    puddle_a: np.ndarray
    puddle_b: np.ndarray

    @classmethod
    def for_world(cls, world: World) -> Specular:
        """The reflective materials of ``world``: own random streams, so the world itself is unchanged."""
        rng = np.random.default_rng(np.random.SeedSequence([world.seed, _STREAM]))
        glossy = float(rng.uniform(0.3, 0.7))
        glass = float(rng.uniform(0.15, 0.4))
        s_hi = float(world.ego.s(world.duration_s)) + WORLD_MARGIN
        s, l, a, b = _puddles(np.random.default_rng(np.random.SeedSequence([world.seed, _PUDDLE_STREAM])),
                              world.road, -WORLD_MARGIN, s_hi)
        return cls(world.seed, glossy, glass, s, l, a, b)

    def glossy_car(self, par0: np.ndarray) -> np.ndarray:
        """(n,) bool: the vehicle with texture parameter ``par0`` (one random number per vehicle) is glossy."""
        return _object_draw(par0, self.seed, 1) < f32(self.glossy_car_share)

    def glass_building(self, par0: np.ndarray) -> np.ndarray:
        """(n,) bool: the building with texture parameter ``par0`` (its random floor height) is a glass one."""
        return _object_draw(par0, self.seed, 2) < f32(self.glass_building_share)

    def puddle_cover(self, s: np.ndarray, l: np.ndarray, fw: np.ndarray) -> np.ndarray:
        """(n,) share of each road pixel (road coordinates, footprint ``fw`` m) covered by a puddle."""
        cover = np.zeros(s.shape, np.float32)
        if not self.puddle_s.size:
            return cover
        first = np.searchsorted(self.puddle_s, s - f32(PUDDLE_MAX_HALF_LENGTH))
        for j in range(3):  # puddles are tens of metres apart: at most a few can reach one pixel
            k = np.minimum(first + j, self.puddle_s.size - 1)
            ds = (s - np.take(self.puddle_s, k).astype(np.float32)) / np.take(self.puddle_a, k).astype(np.float32)
            dl = (l - np.take(self.puddle_l, k).astype(np.float32)) / np.take(self.puddle_b, k).astype(np.float32)
            d = np.sqrt(ds * ds + dl * dl)  # 1 on the rim
            edge = np.maximum(fw, f32(0.05)) / np.take(self.puddle_b, k).astype(np.float32)
            cover = np.maximum(cover, np.clip((f32(1.0) - d) / edge + f32(0.5), 0.0, 1.0))
        return cover


def _puddles(rng: np.random.Generator, road: Road, s_lo: float, s_hi: float) -> tuple[np.ndarray, ...]:
    """A few puddles on the road surface, every 12-60 m, kept off the kerb."""
    rows = []
    s = s_lo + rng.uniform(5.0, 60.0)
    while s < s_hi:
        a = rng.uniform(1.0, PUDDLE_MAX_HALF_LENGTH)
        b = rng.uniform(0.5, 1.6)
        l = rng.uniform(-road.half_width + b + 0.2, road.half_width - b - 0.2)
        rows.append((s, l, a, b))
        s += rng.uniform(12.0, 60.0)
    arr = np.array(rows, dtype=np.float64).reshape(-1, 4)
    return tuple(np.ascontiguousarray(arr[:, i]) for i in range(4))


def _object_draw(par0: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """A uniform [0, 1) number per object, stable across frames: a hash of its own random parameter."""
    from fsmde_core.synthetic.shading import hash01

    key = np.floor(np.asarray(par0, dtype=np.float64) * float(1 << 24)).astype(np.int64)
    return hash01(key, np.full_like(key, seed & 0x7FFFFFFF), np.full_like(key, salt))


# ---------------------------------------------------------------- Fresnel
def schlick(cos_v: np.ndarray, f0: float) -> np.ndarray:
    """Schlick's Fresnel reflectance for the cosine between the view ray and the normal."""
    return f32(f0) + f32(1.0 - f0) * (f32(1.0) - np.clip(cos_v, 0.0, 1.0)) ** 5


def glass_weight(cos_v: np.ndarray) -> np.ndarray:
    """Tinted window glass before a dark interior: mostly reflection, more at grazing angles."""
    return f32(0.4) + f32(0.6) * schlick(cos_v, 0.04)


def paint_weight(cos_v: np.ndarray) -> np.ndarray:
    """Clear-coated car paint: 5 % head-on, at most 30 %."""
    return np.minimum(schlick(cos_v, 0.05), f32(0.3))


def water_weight(cos_v: np.ndarray) -> np.ndarray:
    """A puddle: 2 % head-on, close to a mirror at grazing angles."""
    return schlick(cos_v, 0.02)


# ---------------------------------------------------------------- mirror rays
def reflected_radiance(world: World, textures: object, hits: Hits, P: np.ndarray, normal: np.ndarray,
                       mirror_obj: np.ndarray, pixel_angle: float, tile: np.ndarray | None = None) -> np.ndarray:
    """(3, n) linear radiance seen in the mirrors at camera-relative points ``P`` (3, n) with ``normal``.

    The mirror ray leaves each point along the view ray reflected about the normal;
    what it meets is shaded as the camera would see it (sun, sky light, haze over
    the whole path), without cast shadows or further bounces, and the sky where it
    meets nothing within :data:`REFLECT_RANGE`. ``mirror_obj`` (n,) is each point's hit id,
    so a mirror never reflects its own (convex) primitive; ``tile`` (n,) groups the rays for culling
    (:func:`~fsmde_core.synthetic.raycast.trace_rays`).
    """
    from fsmde_core.synthetic.shading import dot3, radiance, sky_colour, surface

    n = P.shape[1]
    dist = np.sqrt(dot3(P, P))
    d = P / dist
    r = d - f32(2.0) * dot3(d, normal) * normal
    r = (r / np.sqrt(dot3(r, r))).astype(np.float32)
    start = (P + normal * (f32(0.01) + f32(1e-4) * dist)).astype(np.float32)
    s, obj = trace_rays(hits.origin, start, r, mirror_obj, hits.prims, world.road, REFLECT_RANGE, tile)
    out = np.empty((3, n), np.float32)
    sky = np.flatnonzero(obj == SKY)
    if sky.size:
        out[:, sky] = sky_colour(world.lighting, np.take(r, sky, axis=1), hits.origin, textures, pixel_angle)
    seen = np.flatnonzero(obj != SKY)
    if seen.size:
        path = dist + s  # the mirror image lies this far along the folded ray
        X = start + r * np.where(obj != SKY, s, f32(0.0))  # hit points relative to the camera
        second = Hits(t=np.where(obj != SKY, path, f32(np.inf)).reshape(1, n).astype(np.float32),
                      obj=obj.reshape(1, n), D=(X / path).reshape(3, 1, n).astype(np.float32),
                      origin=hits.origin, prims=hits.prims)
        surf = surface(world, second, textures, pixel_angle)
        surf.rng = np.take(path, surf.index).astype(np.float32)  # haze over the whole folded path
        out[:, surf.index] = radiance(world, surf, np.zeros(surf.index.size, dtype=bool))
    return out


def bag_reflective(bag: str | Path) -> bool:
    """Whether a synthetic bag was rendered with reflective materials (its metadata.yaml says so)."""
    meta = Path(bag) / "metadata.yaml" if Path(bag).is_dir() else Path(bag).parent / "metadata.yaml"
    try:
        info = yaml.safe_load(meta.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    custom = (info.get("rosbag2_bagfile_information") or {}).get("custom_data") or {}
    return str(custom.get(REFLECTIVE_KEY, "")).lower() == "true"
