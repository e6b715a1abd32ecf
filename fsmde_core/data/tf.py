"""Transform trees built from ``/tf_static`` and ``/tf`` (no tf2 needed).

tf2 stores each frame with exactly one parent; a lookup between two frames
walks both up to their common root and composes the chain. Real robots publish
camera optical frames several hops below ``base_link`` (base_link ->
sensor mount -> camera_link -> camera_optical_frame), so a lookup must compose,
not expect a direct edge. Frame ids are normalised without a leading ``/``
(tf2 strips it too).

:class:`TransformBuffer` is the time-varying half: every ``/tf`` edge as a
track of stamped samples, interpolated like tf2 does (translation linearly,
rotation by slerp). It is what motion compensation of a rolling LiDAR sweep
needs: the ego pose at each point's firing time and at each image's stamp.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from fsmde_core.messages.stamps import stamp_to_ns
from fsmde_core.rig import make_transform, quaternion_to_matrix, quaternions_to_matrices

log = logging.getLogger(__name__)


class TfLookupError(KeyError):
    """Two frames are not connected in the tree (or a frame is unknown)."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


def normalise_frame(frame_id: str) -> str:
    return frame_id.lstrip("/")


def transform_stamped_to_matrix(ts) -> np.ndarray:
    """``geometry_msgs/TransformStamped`` -> 4x4 parent <- child transform."""
    t = ts.transform.translation
    q = ts.transform.rotation
    quat = np.array([q.x, q.y, q.z, q.w], dtype=np.float64)
    trans = np.array([t.x, t.y, t.z], dtype=np.float64)
    if not (np.all(np.isfinite(quat)) and np.all(np.isfinite(trans))) or np.linalg.norm(quat) < 1e-6:
        raise ValueError(f"invalid transform {ts.header.frame_id} -> {ts.child_frame_id}")
    return make_transform(quaternion_to_matrix(quat), trans)


class TfTree:
    """Parent pointers with the transform to each child: ``T_parent_child``."""

    def __init__(self) -> None:
        self._parent: dict[str, tuple[str, np.ndarray]] = {}

    # ------------------------------------------------------------- building
    def add(self, parent: str, child: str, T_parent_child: np.ndarray) -> None:
        """Add (or replace, as tf2 does on re-publication) the edge parent -> child."""
        parent, child = normalise_frame(parent), normalise_frame(child)
        if parent == child:
            raise ValueError(f"transform from frame {child!r} to itself")
        old = self._parent.get(child)
        if old is not None and old[0] != parent:
            log.warning("frame %r re-parented from %r to %r in tf_static", child, old[0], parent)
        self._parent[child] = (parent, np.asarray(T_parent_child, dtype=np.float64))

    def add_message(self, msg) -> int:
        """Add every transform of a ``tf2_msgs/TFMessage``; returns how many were usable."""
        n = 0
        for ts in msg.transforms:
            try:
                self.add(ts.header.frame_id, ts.child_frame_id, transform_stamped_to_matrix(ts))
                n += 1
            except ValueError as exc:
                log.warning("tf_static: skipping %s", exc)
        return n

    @classmethod
    def from_messages(cls, msgs: Iterable) -> TfTree:
        tree = cls()
        for m in msgs:
            tree.add_message(m)
        return tree

    # -------------------------------------------------------------- queries
    def __len__(self) -> int:
        return len(self._parent)

    @property
    def frames(self) -> set[str]:
        return set(self._parent) | {p for p, _ in self._parent.values()}

    @property
    def edges(self) -> list[tuple[str, str]]:
        """(parent, child) pairs, sorted for stable reports."""
        return sorted((p, c) for c, (p, _) in self._parent.items())

    def _to_root(self, frame: str) -> tuple[str, np.ndarray]:
        """(root frame, T_root_frame) by walking parent pointers."""
        T = np.eye(4)
        seen = {frame}
        cur = frame
        while cur in self._parent:
            parent, T_pc = self._parent[cur]
            T = T_pc @ T
            if parent in seen:
                raise TfLookupError(f"tf_static has a cycle through frame {parent!r}")
            seen.add(parent)
            cur = parent
        return cur, T

    def parent(self, frame: str) -> tuple[str, np.ndarray] | None:
        """(parent frame, ``T_parent_frame``) of ``frame``, None for a root or unknown frame."""
        return self._parent.get(normalise_frame(frame))

    def can_transform(self, target: str, source: str) -> bool:
        try:
            self.lookup(target, source)
        except TfLookupError:
            return False
        return True

    def lookup(self, target: str, source: str) -> np.ndarray:
        """``T_target_source``: maps points in ``source`` coordinates into ``target``."""
        target, source = normalise_frame(target), normalise_frame(source)
        known = self.frames
        for f in (target, source):
            if f not in known:
                raise TfLookupError(f"frame {f!r} is not in tf_static (frames: {sorted(known)})")
        root_t, T_rt = self._to_root(target)
        root_s, T_rs = self._to_root(source)
        if root_t != root_s:
            raise TfLookupError(
                f"frame {source!r} is not connected to {target!r} in tf_static "
                f"({source!r} hangs under root {root_s!r}, {target!r} under {root_t!r})"
            )
        return np.linalg.inv(T_rt) @ T_rs


# --------------------------------------------------------------- /tf over time
FIXED_FRAMES = ("odom", "map")  # REP 105 world-fixed frames, the smooth one (odom) first
DEFAULT_TOLERANCE_NS = 20_000_000  # clamp lookups at most one 50 Hz odometry period beyond the data
DEFAULT_MAX_GAP_NS = 500_000_000  # no interpolation across a hole in /tf longer than this


def quaternion_slerp(q0: np.ndarray, q1: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Spherical linear interpolation of (N, 4) unit quaternions (x, y, z, w) at (N,) ``alpha`` in [0, 1].

    A small vectorised slerp instead of scipy's ``Slerp``: scipy is not a
    dependency of the data layer (and is not installed in the project venv),
    and ``Slerp`` takes one key-frame sequence per call, where every point of
    a sweep needs its own pair. Takes the short way (q and -q are one
    rotation) and falls back to normalised lerp for nearly equal rotations,
    where ``sin(theta)`` would divide by ~0.
    """
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    a = np.asarray(alpha, dtype=np.float64)[..., None]
    dot = np.sum(q0 * q1, axis=-1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)
    dot = np.abs(dot)
    near = dot > 0.9995
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    sin_t = np.where(near, 1.0, np.sin(theta))
    w0 = np.where(near, 1.0 - a, np.sin((1.0 - a) * theta) / sin_t)
    w1 = np.where(near, a, np.sin(a * theta) / sin_t)
    q = w0 * q0 + w1 * q1
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


@dataclass
class TransformTrack:
    """One /tf edge over time: sorted unique stamps (ns), translations (M, 3), unit quaternions (M, 4)."""

    stamps: np.ndarray
    translation: np.ndarray
    rotation: np.ndarray

    @property
    def span_ns(self) -> tuple[int, int]:
        return int(self.stamps[0]), int(self.stamps[-1])

    def interpolate(
        self, stamps_ns: np.ndarray, tolerance_ns: int = DEFAULT_TOLERANCE_NS, max_gap_ns: int = DEFAULT_MAX_GAP_NS
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4, 4) ``T_parent_child`` at ``stamps_ns`` and (N,) bool: usable.

        Stamps within ``tolerance_ns`` outside the track are clamped to its
        first/last sample; farther ones, and stamps inside a gap longer than
        ``max_gap_ns``, are not usable (their transform is still the clamped one).
        """
        t = np.asarray(stamps_ns, dtype=np.int64)
        s = self.stamps
        valid = (t >= s[0] - tolerance_ns) & (t <= s[-1] + tolerance_ns)
        T = np.tile(np.eye(4), (t.size, 1, 1))
        if s.size == 1:
            T[:, :3, :3] = quaternions_to_matrices(self.rotation[:1])
            T[:, :3, 3] = self.translation[0]
            return T, valid
        i = np.clip(np.searchsorted(s, t, side="right") - 1, 0, s.size - 2)
        span = s[i + 1] - s[i]
        alpha = np.clip((t - s[i]).astype(np.float64) / span, 0.0, 1.0)
        inside = (t > s[0]) & (t < s[-1])
        valid &= ~inside | (span <= max_gap_ns)
        T[:, :3, 3] = self.translation[i] + alpha[:, None] * (self.translation[i + 1] - self.translation[i])
        T[:, :3, :3] = quaternions_to_matrices(quaternion_slerp(self.rotation[i], self.rotation[i + 1], alpha))
        return T, valid


class TransformBuffer:
    """Every ``/tf`` edge as a :class:`TransformTrack`; chains through ``/tf_static`` edges too.

    Samples are collected with :meth:`add` / :meth:`add_message` (any order;
    a repeated stamp keeps the last sample, as tf2 does) and sorted on first use.
    """

    def __init__(self) -> None:
        self._samples: dict[tuple[str, str], list[tuple[int, np.ndarray, np.ndarray]]] = {}
        self._tracks: dict[tuple[str, str], TransformTrack] | None = None

    def add(self, parent: str, child: str, stamp_ns: int, translation: np.ndarray, rotation_xyzw: np.ndarray) -> None:
        parent, child = normalise_frame(parent), normalise_frame(child)
        q = np.asarray(rotation_xyzw, dtype=np.float64)
        tr = np.asarray(translation, dtype=np.float64)
        if parent == child or not (np.all(np.isfinite(q)) and np.all(np.isfinite(tr))) or np.linalg.norm(q) < 1e-6:
            raise ValueError(f"invalid transform {parent} -> {child} at {stamp_ns}")
        self._samples.setdefault((parent, child), []).append((int(stamp_ns), tr, q / np.linalg.norm(q)))
        self._tracks = None

    def add_message(self, msg) -> int:
        """Add every transform of a ``tf2_msgs/TFMessage``; returns how many were usable."""
        n = 0
        for ts in msg.transforms:
            t, q = ts.transform.translation, ts.transform.rotation
            stamp = stamp_to_ns(ts.header.stamp)
            try:
                self.add(ts.header.frame_id, ts.child_frame_id, stamp, [t.x, t.y, t.z], [q.x, q.y, q.z, q.w])
                n += 1
            except ValueError as exc:
                log.warning("tf: skipping %s", exc)
        return n

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def tracks(self) -> dict[tuple[str, str], TransformTrack]:
        """(parent, child) -> track, built once after the last :meth:`add`."""
        if self._tracks is None:
            self._tracks = {edge: _track(samples) for edge, samples in self._samples.items()}
        return self._tracks

    def parent(self, frame: str) -> str | None:
        """The /tf parent of ``frame`` (the most recently sampled one if it was re-parented)."""
        frame = normalise_frame(frame)
        parents = [(tr.stamps[-1], p) for (p, c), tr in self.tracks.items() if c == frame]
        return max(parents)[1] if parents else None

    def chain_to_fixed(self, base: str, static: TfTree | None = None) -> list[tuple[str, str, bool]] | None:
        """Edges ``(parent, child, dynamic)`` from the nearest fixed frame (odom, else map) down to ``base``.

        Walks up from ``base`` through /tf edges (and /tf_static ones where a
        frame has no /tf parent) until a frame named in :data:`FIXED_FRAMES`.
        None when no fixed frame is reached or the chain has no /tf edge (then
        nothing in it moves and there is nothing to compensate).
        """
        edges: list[tuple[str, str, bool]] = []
        cur, seen = normalise_frame(base), {normalise_frame(base)}
        while cur not in FIXED_FRAMES:
            parent = self.parent(cur)
            dynamic = parent is not None
            if parent is None and static is not None and static.parent(cur) is not None:
                parent = static.parent(cur)[0]
            if parent is None or parent in seen:
                return None
            edges.append((parent, cur, dynamic))
            seen.add(parent)
            cur = parent
        return edges[::-1] if any(d for _, _, d in edges) else None

    def lookup_chain(
        self,
        chain: list[tuple[str, str, bool]],
        stamps_ns: np.ndarray,
        static: TfTree | None = None,
        tolerance_ns: int = DEFAULT_TOLERANCE_NS,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4, 4) ``T_fixed_base`` along ``chain`` (from :meth:`chain_to_fixed`) at each stamp, and usable."""
        t = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
        T = np.tile(np.eye(4), (t.size, 1, 1))
        valid = np.ones(t.size, dtype=bool)
        for parent, child, dynamic in chain:
            if dynamic:
                T_edge, ok = self.tracks[(parent, child)].interpolate(t, tolerance_ns)
                T = T @ T_edge
                valid &= ok
            else:
                T = T @ static.lookup(parent, child)
        return T, valid


def _track(samples: list[tuple[int, np.ndarray, np.ndarray]]) -> TransformTrack:
    """Sorted, de-duplicated (last wins) samples of one edge; slerp picks the short way, so q and -q may mix."""
    stamps = np.array([s for s, _, _ in samples], dtype=np.int64)
    order = np.argsort(stamps, kind="stable")
    stamps = stamps[order]
    last = np.append(stamps[1:] != stamps[:-1], True)  # the last of equal stamps
    order, stamps = order[last], stamps[last]
    trans = np.stack([samples[i][1] for i in order])
    quat = np.stack([samples[i][2] for i in order])
    return TransformTrack(stamps, trans, quat)
