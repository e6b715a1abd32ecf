"""Cross-view calibration health: is one camera's extrinsic off (bumped mount, wrong calibration)?

Adjacent cameras see the same surfaces in their overlap. Projecting one camera's
depth into its neighbour with the calibrated extrinsics and comparing it with the
neighbour's own depth (:func:`fsmde_core.metrics.directional_consistency`, the
metric ``fsmde eval`` reports; reused here, not copied) gives a per-pair mean
relative depth difference. A rotated camera breaks the consistency of *both* pairs
it belongs to, while the pairs between the other cameras stay as they were.

What separates a bumped camera from model noise (measured on the synthetic DDAD
rig at 96x64, 12 instants of one drive of seed 3, stride 2, with the renderer's
exact depth as in ``test/test_calib_health.py``, and with that depth times a
synthetic error field standing in for a model):

* exact (ground-truth) depth: pair errors 0.007-0.019 with the right extrinsics;
  camera 2 rotated by 1 degree about an oblique axis lifts its pairs to 0.022 and
  0.045 (2 degrees: 0.035 and 0.084); the other four pairs do not move;
* model-like error (smooth multiplicative field, 8 % per camera): every pair sits at
  0.09-0.10 and varies by 0.02 from set to set; a 2 degree bump adds +0.004 and
  +0.030 to its two pairs. With per-pixel noise of 10 % the pairs are 0.115-0.122
  (set-to-set spread 0.003-0.006) and the same bump adds +0.002 / +0.023.

So the *level* of a pair says little (it is the model's error in the overlap) and
one set is too noisy; what a bump changes is (1) the pair's value relative to its
own long-run baseline, and (2) only the two pairs of one camera. The monitor
therefore keeps a running mean (EMA) per pair, freezes a baseline from the first
``baseline_sets`` updates, and flags camera ``c`` only when BOTH of its pairs
exceed their reference by ``min_excess`` and by ``rel_excess`` of it. The reference
is the pair's own baseline once it exists; before that (a wrong extrinsic from the
start has no clean baseline) it is the median of the pairs that do not involve
``c``. A change shared by every pair (a tunnel, the model struggling in rain) moves
the references of all cameras alike and flags none, because a camera is flagged
only when its excess stands out against the other pairs' excess too.

Limits: a pair whose overlap holds only road and sky during the drive barely
sees a rotation (flat ground at one depth per image row is nearly unchanged by a
yaw): with the same 1.5 degree knock, four of the six DDAD cameras are flagged on
this 4 s drive, back_right and front_right are not (their shared pair moved
0.008 -> 0.010). With model error of ~10 % a 1 degree knock is below what the
running means resolve; 2 degrees are seen on the more structured pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fsmde_core.rig import Rig

__all__ = ["CrossViewMonitor", "PairHealth"]


@dataclass
class PairHealth:
    """Running cross-view consistency of one adjacent camera pair (names, not indices)."""

    cameras: tuple[str, str]
    last: float = math.nan
    running: float = math.nan
    baseline: float = math.nan
    updates: int = 0
    _baseline_sum: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.cameras[0]}-{self.cameras[1]}"


class CrossViewMonitor:
    """Per adjacent pair: running cross-view depth consistency; flags a camera whose two pairs degrade.

    Args:
        pairs: adjacent camera pairs by name (e.g. from ``Rig.adjacent_pairs``).
        stride: pixel subsampling of the source depth (cost ~ 1/stride^2).
        alpha: EMA gain of the running value per update.
        baseline_sets: updates averaged into each pair's frozen baseline.
        min_sets: updates a pair needs before it can contribute to a verdict.
        min_excess / rel_excess: how far above its reference (absolute, and as a
            fraction of the reference) a pair must be to count as degraded.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], stride: int = 4, alpha: float = 0.1,
                 baseline_sets: int = 30, min_sets: int = 5, min_excess: float = 0.01,
                 rel_excess: float = 0.5) -> None:
        if stride < 1 or not 0 < alpha <= 1 or baseline_sets < 1 or min_sets < 1:
            raise ValueError(f"need stride >= 1, 0 < alpha <= 1, baseline_sets >= 1, min_sets >= 1; got "
                             f"{stride}, {alpha}, {baseline_sets}, {min_sets}")
        self.pairs = [PairHealth((a, b)) for a, b in pairs]
        self.stride, self.alpha = stride, alpha
        self.baseline_sets, self.min_sets = baseline_sets, min_sets
        self.min_excess, self.rel_excess = min_excess, rel_excess

    @classmethod
    def for_rig(cls, rig: Rig, **kwargs) -> CrossViewMonitor:
        """Monitor the rig's adjacency ring (the pairs ``fsmde eval`` uses)."""
        names = rig.names
        return cls([(names[i], names[j]) for i, j in rig.adjacent_pairs()], **kwargs)

    # ------------------------------------------------------------ updates
    def update(self, depths: np.ndarray, rig: Rig) -> int:
        """Add one set: ``depths`` (N, H, W) for ``rig``'s cameras in its order (any subset of the
        monitored cameras; pairs with a camera missing are skipped). Returns the pairs updated."""
        from fsmde_core.metrics import OCCLUSION_REL_DIFF, directional_consistency

        index = {name: k for k, name in enumerate(rig.names)}
        if len(depths) != len(rig.cameras):
            raise ValueError(f"{len(depths)} depth maps for a rig of {len(rig.cameras)} cameras")
        updated = 0
        for pair in self.pairs:
            a, b = (index.get(n) for n in pair.cameras)
            if a is None or b is None:
                continue
            errs = [directional_consistency(depths[s], depths[d], rig.cameras[s], rig.cameras[d],
                                            max_rel=OCCLUSION_REL_DIFF, stride=self.stride)[0]
                    for s, d in ((a, b), (b, a))]
            finite = [e for e in errs if math.isfinite(e)]
            if finite:
                self._add(pair, float(np.mean(finite)))
                updated += 1
        return updated

    def _add(self, pair: PairHealth, value: float) -> None:
        pair.last = value
        pair.running = value if pair.updates == 0 else (1 - self.alpha) * pair.running + self.alpha * value
        pair.updates += 1
        if pair.updates <= self.baseline_sets:
            pair._baseline_sum += value
            if pair.updates == self.baseline_sets:
                pair.baseline = pair._baseline_sum / self.baseline_sets

    # ------------------------------------------------------------ verdict
    def _ready(self, pair: PairHealth) -> bool:
        return pair.updates >= self.min_sets and math.isfinite(pair.running)

    def _excess(self, pair: PairHealth, camera: str) -> float | None:
        """How far ``pair`` is above its reference (own baseline, else the other cameras' pairs)."""
        if not self._ready(pair):
            return None
        ref = pair.baseline
        if not math.isfinite(ref):
            others = [p.running for p in self.pairs if camera not in p.cameras and self._ready(p)]
            if not others:
                return None
            ref = float(np.median(others))
        excess = pair.running - ref
        return excess if excess >= max(self.min_excess, self.rel_excess * ref) else 0.0

    def suspects(self) -> list[str]:
        """Cameras whose consistency with BOTH neighbours degraded (see the module doc for why)."""
        cameras = sorted({n for p in self.pairs for n in p.cameras})
        out = []
        for cam in cameras:
            mine = [p for p in self.pairs if cam in p.cameras]
            if len(mine) < 2:
                continue
            excess = [self._excess(p, cam) for p in mine]
            if any(e is None or e <= 0 for e in excess):
                continue
            others = [p for p in self.pairs if cam not in p.cameras and self._ready(p)]
            other_excess = [max(p.running - p.baseline, 0.0) if math.isfinite(p.baseline) else 0.0
                            for p in others]
            if others and min(excess) <= 2 * max(other_excess):  # everyone degraded: not this camera
                continue
            out.append(cam)
        return out

    def values(self) -> dict[str, str]:
        """Diagnostics key/values: per pair the running value, its baseline and the last set's value."""
        def f(x: float) -> str:
            return f"{x:.4f}" if math.isfinite(x) else "n/a"

        out = {}
        for p in self.pairs:
            out[f"cross_view_{p.name}"] = f(p.running)
            out[f"cross_view_{p.name}_baseline"] = f(p.baseline)
            out[f"cross_view_{p.name}_last"] = f(p.last)
            out[f"cross_view_{p.name}_sets"] = str(p.updates)
        return out
