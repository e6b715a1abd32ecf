"""Procedural surround world rendered into rosbag2 recordings (tests, demo, benchmarks).

Modules:
    world     the street (road, buildings, traffic, light) and the ego drive, from a seed
    raycast   vectorised ray casting against its analytic primitives, with culling
    shading   materials, filtered textures, sun/sky lighting, haze
    render    camera (RGB + exact depth) and spinning-LiDAR sensors
    weather   adverse conditions (night, dusk, fog, rain): parameters, lighting, mixes, LiDAR degradation
    adverse   their camera effects on the linear radiance (lights, wet road, blur, rain, sensor noise)
    specular  reflective materials (--reflective): windows, glossy paint, glass facades, puddles; mirror rays
    messages  ROS 2 messages serialised with rosbags' types
    writer    the bag: timing, QoS, log-time ordering; ``generate_bag`` and ``fsmde synth``

``generate_bag``, ``add_synth_arguments`` and ``run_synth`` are re-exported
here, imported on first use so that ``import fsmde_core.synthetic.world``
stays free of rosbags and Pillow.
"""

from __future__ import annotations

_WRITER_API = ("generate_bag", "add_synth_arguments", "run_synth")

__all__ = list(_WRITER_API)


def __getattr__(name: str) -> object:
    if name in _WRITER_API:
        from fsmde_core.synthetic import writer

        return getattr(writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
