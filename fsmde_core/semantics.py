"""The semantic class table of the package (ROS-free), and pictures of label maps.

The synthetic world (:mod:`fsmde_core.synthetic`) labels every camera pixel
with one of these classes (``/synthetic_gt/<camera>/labels``, mono8), so a
segmentation model can be trained on it and a depth teacher can be bridged
with one (issue 10). The table is deliberately Cityscapes-like - road,
sidewalk, building, pole, sign, vegetation, terrain, sky, person, vehicle -
so the classes mean what a user of a real segmentation model expects; lane
markings get a class of their own because the synthetic world draws them and
they are where monocular depth models see the ground plane.

Ids are stable (a bag recorded today must read the same tomorrow): append new
classes, never renumber. ``VOID`` (255) marks pixels without a label (the
"ignore index" of a segmentation loss), e.g. a camera without a label message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SemanticClass:
    """One class: its id in label maps, a snake_case name and a display colour (RGB 0-255)."""

    id: int
    name: str
    colour: tuple[int, int, int]
    description: str


SKY = 0
ROAD = 1
LANE_MARKING = 2
SIDEWALK = 3
TERRAIN = 4
BUILDING = 5
VEHICLE = 6
POLE = 7
TRAFFIC_SIGN = 8
VEGETATION = 9
PERSON = 10
OTHER = 11
VOID = 255

#: The class table, in id order (``CLASSES[i].id == i``). Colours follow Cityscapes where it has the class.
CLASSES: tuple[SemanticClass, ...] = (
    SemanticClass(SKY, "sky", (70, 130, 180), "no surface along the ray (depth +Inf)"),
    SemanticClass(ROAD, "road", (128, 64, 128), "asphalt between the kerbs, parking strips included"),
    SemanticClass(LANE_MARKING, "lane_marking", (255, 255, 255), "painted lines and zebra crossings"),
    SemanticClass(SIDEWALK, "sidewalk", (244, 35, 232), "raised sidewalk, kerb stones and kerb faces"),
    SemanticClass(TERRAIN, "terrain", (152, 251, 152), "the verge beyond the sidewalk (grass, soil)"),
    SemanticClass(BUILDING, "building", (70, 70, 70), "facades and roofs"),
    SemanticClass(VEHICLE, "vehicle", (0, 0, 142), "cars, vans, trucks (parked or moving), glass included"),
    SemanticClass(POLE, "pole", (153, 153, 153), "street-light posts, arms and heads; sign posts"),
    SemanticClass(TRAFFIC_SIGN, "traffic_sign", (220, 220, 0), "sign plates"),
    SemanticClass(VEGETATION, "vegetation", (107, 142, 35), "trees: trunks and crowns"),
    SemanticClass(PERSON, "person", (220, 20, 60), "pedestrians"),
    SemanticClass(OTHER, "other", (111, 74, 0), "a surface none of the classes above describes"),
)
NUM_CLASSES = len(CLASSES)
VOID_COLOUR = (0, 0, 0)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)


def class_id(name: str) -> int:
    """Id of the class called ``name``; ValueError naming the valid names otherwise."""
    for c in CLASSES:
        if c.name == name:
            return c.id
    raise ValueError(f"unknown semantic class {name!r}; classes: {', '.join(CLASS_NAMES)}")


def palette() -> np.ndarray:
    """(256, 3) uint8 colour of every possible label value: table colours, VOID black, unknown ids magenta.

    Magenta (not black) for ids outside the table, so a corrupt label map is
    visible in a picture instead of passing for void.
    """
    lut = np.full((256, 3), (255, 0, 255), dtype=np.uint8)
    lut[VOID] = VOID_COLOUR
    for c in CLASSES:
        lut[c.id] = c.colour
    return lut


def colourise(labels: np.ndarray) -> np.ndarray:
    """(..., H, W) uint8 label map(s) -> (..., H, W, 3) uint8 RGB picture (one table lookup, no loops)."""
    labels = np.asarray(labels)
    if labels.dtype != np.uint8:
        raise ValueError(f"label maps must be uint8, got {labels.dtype}")
    return palette()[labels]


def table_markdown() -> str:
    """The class table as a Markdown table (id, name, meaning) - what README.md shows."""
    rows = ["| id | name | meaning |", "|---:|---|---|"]
    rows += [f"| {c.id} | `{c.name}` | {c.description} |" for c in CLASSES]
    rows.append(f"| {VOID} | `void` | no label (ignore index) |")
    return "\n".join(rows)


__all__ = [
    "BUILDING",
    "CLASSES",
    "CLASS_NAMES",
    "LANE_MARKING",
    "NUM_CLASSES",
    "OTHER",
    "PERSON",
    "POLE",
    "ROAD",
    "SIDEWALK",
    "SKY",
    "TERRAIN",
    "TRAFFIC_SIGN",
    "VEGETATION",
    "VEHICLE",
    "VOID",
    "SemanticClass",
    "class_id",
    "colourise",
    "palette",
    "table_markdown",
]
