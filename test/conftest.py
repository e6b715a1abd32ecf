"""Shared test fixtures: camera names, the tiny student, small rigs and the small bags several modules read.

Why: the same six names, the same tiny network and the same two-frame recording
were written out in many test modules and drifted apart in small ways. Each
lives here once; a module that needs something different on purpose (another
size, a broken bag) says so with the factory's arguments or keeps its own
fixture. Markers and pytest settings stay in ``pyproject.toml``.

Session-scoped bags are shared by every module that asks for them: treat them
as read-only (write outputs under ``tmp_path``, never into the bag).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fsmde_core.names import SURROUND_CAMERAS
from fsmde_core.rig import Rig, preset

if TYPE_CHECKING:  # torch and rosbags load only in the modules that use these fixtures
    from bagfactory import WrittenBag

    from fsmde_core.models.student import StudentConfig

#: Size of the shared synthetic recording (``synthetic_bag``): the ddad preset rendered small.
SYNTHETIC_BAG_SIZE = (160, 96)  # width, height


# ------------------------------------------------------------------ plain factories
# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def camera_names() -> list[str]:
    """The six surround camera names in ring order (a fresh list: tests may slice or extend it)."""
    return list(SURROUND_CAMERAS)


@pytest.fixture(scope="session")
def student_config() -> Callable[..., StudentConfig]:
    """Factory ``student_config(height, width, **overrides)`` of the tiny student's config."""
    from tiny_students import tiny_student_config  # torch: only for the tests that ask

    return tiny_student_config


@pytest.fixture(scope="session")
def saved_student(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory ``saved_student(height, width, camera_names=..., seed=0, rig=None, **overrides)``: a fresh run dir.

    Every call writes a new directory, so a module may export into or copy from its own run freely.
    """

    from tiny_students import save_tiny_student, tiny_student_config

    def make(height: int, width: int, camera_names: Sequence[str] = SURROUND_CAMERAS, seed: int = 0,
             rig: str | None = None, **overrides: object) -> Path:
        cfg = tiny_student_config(height, width, **overrides)
        return save_tiny_student(tmp_path_factory.mktemp("student"), cfg, camera_names, seed, rig)

    return make


@pytest.fixture(scope="session")
def surround_rig() -> Callable[..., Rig]:
    """Factory ``surround_rig(name="ddad", width=160, height=96)``: a freshly built preset rig per call.

    Fresh because tests edit rigs (resize a camera, hang a mask) and compare identities.
    """

    def make(name: str = "ddad", width: int | None = 160, height: int | None = 96) -> Rig:
        return preset(name, width, height)

    return make


@pytest.fixture(scope="session")
def small_bag(tmp_path_factory: pytest.TempPathFactory) -> WrittenBag:
    """The bag factory's complete default recording (64x48, 2 frames, sqlite3, no dense ground truth)."""
    from bagfactory import BagSpec, write_bag

    return write_bag(tmp_path_factory.mktemp("small_bag") / "bag", BagSpec(n_frames=2))


@pytest.fixture(scope="session")
def synthetic_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``fsmde synth``'s ddad world, 3 frames at 160x96 (seed 0): images, LiDAR, TF and dense ground truth."""
    from fsmde_core.synthetic.writer import generate_bag

    out = tmp_path_factory.mktemp("synthetic_bag") / "ddad"
    width, height = SYNTHETIC_BAG_SIZE
    generate_bag("ddad", frames=3, seed=0, out=out, width=width, height=height, progress=False, workers=1)
    return out
