"""A static transform tree built from ``/tf_static`` (no tf2 needed).

tf2 stores each frame with exactly one parent; a lookup between two frames
walks both up to their common root and composes the chain. Real robots publish
camera optical frames several hops below ``base_link`` (base_link ->
sensor mount -> camera_link -> camera_optical_frame), so a lookup must compose,
not expect a direct edge. Frame ids are normalised without a leading ``/``
(tf2 strips it too).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from fsmde_core.rig import make_transform, quaternion_to_matrix

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
