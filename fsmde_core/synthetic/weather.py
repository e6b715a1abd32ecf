"""Adverse conditions of the synthetic world: what night, dusk, fog and rain change, per seed.

A condition is a :class:`Weather` (the sensor and atmosphere parameters the
renderers read) plus a replaced :class:`~fsmde_core.synthetic.world.Lighting`;
the street, the drive and therefore every ground-truth depth and label stay
exactly those of the clear world of the same seed. Parameters vary a little
per seed (fog density, sensor gain, sun elevation at dusk...), drawn from
their own random stream so the clear world's draws are untouched and
``clear`` renders stay bitwise identical to a world without conditions.

What each models (and its limits) is documented on :func:`weather_for`; the
camera effects live in :mod:`fsmde_core.synthetic.adverse`, the LiDAR's in
:func:`degrade_lidar`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from fsmde_core.synthetic.world import Lighting, World

CONDITIONS = ("clear", "night", "fog", "rain", "dusk")
CONDITION_KEY = "fsmde.condition"  # bag metadata custom data: the synthetic world's condition (absent = clear)
_STREAM = 0xADE5  # random stream of the conditions' per-seed parameters
_MIX_STREAM = 0xC0DE  # random stream that draws a bag's condition from a mix

f32 = np.float32


@dataclass(frozen=True)
class Weather:
    """Sensor and atmosphere parameters of one condition (``clear`` = all effects off).

    Attributes:
        name: one of :data:`CONDITIONS`.
        fog_beta: visible-band extinction coefficient (1/m); Koschmieder transmission exp(-beta d).
        airlight_rgb: linear colour that scattering drives distant surfaces (and the sky) towards.
        gain: sensor gain on top of the camera's exposure (auto-exposure in low light).
        full_well: electrons at linear signal 1.0 and base gain; 0 = no shot/read noise.
        read_noise_e: read noise (electrons, 1 sigma).
        exposure_s: exposure time; ego motion during it blurs the image (0 = none).
        headlights: ego and moving cars have their lights on.
        street_lights: the street lamps are on.
        light_scale: brightness of artificial lights relative to their night intensity.
        wet: 0..1 wetness of the ground (darker albedo, Fresnel sheen).
        streaks: rain streaks per 10 000 pixels.
        wind: tilt of the rain streaks from vertical (rad).
        droplets: water drops on each lens (blurred discs).
        veil: share of the image replaced by its mean (contrast loss from scattered light).
        lidar_beta: extinction at the LiDAR's wavelength (1/m); returns are lost with range.
        lidar_dropout: extra random dropouts (rain drops on the window, absorption).
        lidar_backscatter: probability per beam of a spurious return at 1-5 m.
    """

    name: str
    fog_beta: float = 0.0
    airlight_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)
    gain: float = 1.0
    full_well: float = 0.0
    read_noise_e: float = 0.0
    exposure_s: float = 0.0
    headlights: bool = False
    street_lights: bool = False
    light_scale: float = 1.0
    wet: float = 0.0
    streaks: float = 0.0
    wind: float = 0.0
    droplets: int = 0
    veil: float = 0.0
    lidar_beta: float = 0.0
    lidar_dropout: float = 0.0
    lidar_backscatter: float = 0.0

    @property
    def is_clear(self) -> bool:
        return self.name == "clear"

    @property
    def visibility_m(self) -> float:
        """Meteorological visibility (5 % contrast threshold: 3 / beta); inf without fog."""
        return 3.0 / self.fog_beta if self.fog_beta > 0 else math.inf


def check_condition(name: str) -> str:
    """``name`` if it is a known condition, else ValueError listing them."""
    if name not in CONDITIONS:
        raise ValueError(f"unknown condition {name!r} (choose from {', '.join(CONDITIONS)})")
    return name


def weather_for(condition: str, seed: int) -> Weather:
    """The parameters of ``condition`` for the world of ``seed``.

    * ``night``: no sun, a faint city-glow sky; street lamps (downward cones) and the
      headlights of the ego and moving cars (forward cones), inverse-square falloff, no
      occlusion of artificial light (light can leak through thin objects); gain 2.5-4x with
      shot + read noise; 25-40 ms exposure -> motion blur.
    * ``dusk``: the sun 2-6 deg above the horizon, warm and dim (long shadows), lights on
      but weak against the sky, gain 1.2-1.6 with mild noise, short blur.
    * ``fog``: Koschmieder attenuation towards a grey airlight, visibility 65-200 m, the
      sky = airlight; LiDAR range loss and backscatter near returns.
    * ``rain``: overcast, light haze, wet ground (darker, Fresnel sheen of the sky),
      streaks, drops on the lens, contrast loss, 20 ms blur; LiDAR dropouts and a few
      spurious near returns. Falling drops are not in the LiDAR or the depth (ground truth
      is the scene's surfaces).
    """
    check_condition(condition)
    if condition == "clear":
        return Weather("clear")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM, CONDITIONS.index(condition)]))
    u = rng.uniform
    if condition == "night":
        return Weather("night", gain=u(2.5, 4.0), full_well=4000.0, read_noise_e=6.0, exposure_s=u(0.025, 0.04),
                       headlights=True, street_lights=True, light_scale=u(0.8, 1.2))
    if condition == "dusk":
        return Weather("dusk", gain=u(1.2, 1.6), full_well=4000.0, read_noise_e=4.0, exposure_s=u(0.006, 0.012),
                       headlights=True, street_lights=True, light_scale=0.6)
    if condition == "fog":
        beta = u(0.015, 0.045)
        grey = u(0.75, 0.95)
        return Weather("fog", fog_beta=beta, airlight_rgb=(0.60 * grey, 0.62 * grey, 0.65 * grey), gain=1.3,
                       full_well=4000.0, read_noise_e=4.0, exposure_s=0.008, headlights=True, light_scale=0.5,
                       lidar_beta=0.8 * beta, lidar_backscatter=0.4 * beta)
    beta = u(0.003, 0.008)
    return Weather("rain", fog_beta=beta, airlight_rgb=(0.42, 0.44, 0.47), gain=1.6, full_well=4000.0,
                   read_noise_e=4.0, exposure_s=0.02, headlights=True, light_scale=0.5, wet=u(0.7, 1.0),
                   streaks=u(15.0, 30.0), wind=u(-0.25, 0.25), droplets=int(rng.integers(2, 6)), veil=u(0.08, 0.15),
                   lidar_beta=0.002, lidar_dropout=0.02, lidar_backscatter=0.002)


def _sun_at(azimuth_of: np.ndarray, elevation_deg: float) -> np.ndarray:
    """A unit sun direction with the azimuth of ``azimuth_of`` at ``elevation_deg``."""
    az = math.atan2(float(azimuth_of[1]), float(azimuth_of[0]))
    el = math.radians(elevation_deg)
    return np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])


def condition_lighting(base: Lighting, weather: Weather, seed: int) -> Lighting:
    """The seed's lighting as ``weather`` changes it (``clear``: ``base`` itself)."""
    if weather.is_clear:
        return base
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM, 0x11647]))
    a = np.array(weather.airlight_rgb)
    if weather.name == "night":  # a moon, a dark sky with a sodium glow at the horizon
        return replace(base, sun_dir=_sun_at(base.sun_dir, 35.0), sun_rgb=np.array([0.010, 0.012, 0.016]),
                       sky_rgb=np.array([0.0020, 0.0022, 0.0030]), zenith_rgb=np.array([0.0006, 0.0008, 0.0016]),
                       horizon_rgb=np.array([0.0060, 0.0045, 0.0030]), haze_rgb=np.array([0.0036, 0.0027, 0.0018]))
    if weather.name == "dusk":
        horizon = np.array([0.75, 0.42, 0.25]) * 0.7
        return replace(base, sun_dir=_sun_at(base.sun_dir, float(rng.uniform(2.0, 6.0))),
                       sun_rgb=np.array([1.0, 0.5, 0.22]) * float(rng.uniform(0.8, 1.2)),
                       sky_rgb=np.array([0.12, 0.11, 0.14]), zenith_rgb=np.array([0.08, 0.10, 0.22]),
                       horizon_rgb=horizon, haze_rgb=horizon * 0.9, cloud_cover=min(base.cloud_cover, 0.5))
    if weather.name == "fog":  # the sun is a dim disc, the light is diffuse, the sky is the airlight
        return replace(base, sun_rgb=base.sun_rgb * 0.15, sky_rgb=a * 0.9, zenith_rgb=a, horizon_rgb=a, haze_rgb=a,
                       fog_distance=1.0 / weather.fog_beta, cloud_cover=0.0)
    return replace(base, sun_rgb=base.sun_rgb * 0.1, sky_rgb=np.array([0.35, 0.37, 0.42]),  # rain: overcast
                   zenith_rgb=np.array([0.42, 0.43, 0.46]), horizon_rgb=np.array([0.50, 0.51, 0.53]), haze_rgb=a,
                   fog_distance=1.0 / weather.fog_beta, cloud_cover=1.0)


def apply_condition(world: World, condition: str) -> tuple[World, Weather]:
    """The same street and drive under ``condition``: (world with its lighting, the weather)."""
    weather = weather_for(condition, world.seed)
    if weather.is_clear:
        return world, weather
    return replace(world, lighting=condition_lighting(world.lighting, weather, world.seed)), weather


# -------------------------------------------------------------- mixes
def parse_condition_mix(spec: str) -> dict[str, float]:
    """``"clear=0.5,night=0.25,fog=0.25"`` -> normalised weights; ValueError naming the bad part."""
    weights: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not name:
            raise ValueError(f"condition mix {spec!r}: expected NAME=WEIGHT items, got {part!r}")
        if name not in CONDITIONS:
            known = ", ".join(CONDITIONS)
            raise ValueError(f"condition mix {spec!r}: unknown condition {name!r} (choose from {known})")
        if name in weights:
            raise ValueError(f"condition mix {spec!r}: {name!r} given twice")
        try:
            w = float(value)
        except ValueError:
            raise ValueError(f"condition mix {spec!r}: weight of {name!r} is not a number: {value!r}") from None
        if not (math.isfinite(w) and w >= 0.0):
            raise ValueError(f"condition mix {spec!r}: weight of {name!r} must be >= 0, got {value!r}")
        weights[name] = w
    total = sum(weights.values())
    if total <= 0.0:
        raise ValueError(f"condition mix {spec!r}: the weights sum to 0")
    return {k: weights[k] / total for k in CONDITIONS if k in weights}


def condition_from_mix(mix: dict[str, float], seed: int) -> str:
    """The condition of the world ``seed`` drawn from ``mix``: deterministic, so a set of bags with
    consecutive seeds mixes conditions in the given proportions (in expectation)."""
    u = float(np.random.default_rng(np.random.SeedSequence([int(seed), _MIX_STREAM])).random())
    acc = 0.0
    names = [k for k in CONDITIONS if mix.get(k, 0.0) > 0.0]
    for name in names:
        acc += mix[name]
        if u < acc:
            return name
    return names[-1]


def bag_condition(bag: str | Path) -> str | None:
    """The condition a synthetic bag was rendered under (its metadata.yaml), None if it does not say.

    Synthetic bags written before conditions existed are clear; a real recording
    has no condition (None): evaluation groups it on its own.
    """
    meta = Path(bag) / "metadata.yaml" if Path(bag).is_dir() else Path(bag).parent / "metadata.yaml"
    try:
        info = yaml.safe_load(meta.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    custom = (info.get("rosbag2_bagfile_information") or {}).get("custom_data") or {}
    if CONDITION_KEY in custom:
        return str(custom[CONDITION_KEY])
    return "clear" if "fsmde.synthetic" in custom else None


# --------------------------------------------------------------- LiDAR
_LINK_MARGIN = 1.0  # two-way extinction (nepers) the LiDAR's link budget absorbs before returns drop out


def degrade_lidar(rng_m: np.ndarray, intensity: np.ndarray, weather: Weather, rng: np.random.Generator) -> None:
    """Fog/rain on one sweep, in place on flat ranges (NaN = no return) and intensities.

    Extinction weakens a return by exp(-2 beta r) (there and back); once that exceeds
    the link margin the return is lost with probability 1 - exp(-(2 beta r - margin)),
    so far returns go first. Backscatter from droplets near the sensor gives a few
    spurious returns at 1-5 m (weak), in front of whatever the beam would have hit.
    """
    n = rng_m.size
    lost = rng.random(n) < weather.lidar_dropout
    if weather.lidar_beta > 0.0:
        with np.errstate(invalid="ignore"):
            two_way = f32(2.0 * weather.lidar_beta) * rng_m
            p_keep = np.exp(-np.maximum(two_way - f32(_LINK_MARGIN), f32(0.0)))
            lost |= rng.random(n, dtype=np.float32) > p_keep  # NaN compares False: no return stays none
            intensity *= np.exp(-np.nan_to_num(two_way))
    rng_m[lost] = np.nan
    near = rng.uniform(1.0, 5.0, n).astype(np.float32)
    spurious = rng.random(n) < weather.lidar_backscatter
    spurious &= ~(rng_m <= near)  # a surface nearer than the droplet cloud still answers first
    rng_m[spurious] = near[spurious]
    intensity[spurious] = rng.uniform(1.0, 8.0, int(spurious.sum())).astype(np.float32)
