"""Offline grouping of N camera streams into synchronised sets by ``header.stamp``.

A bag is read in log-time order, but log time is when the recorder received a
message: it carries transport jitter and differs per camera. The capture time
is ``header.stamp``. The grouper keeps a small queue per camera and pairs on
stamps only, so log-time jitter reorders nothing.

Rule (exact when the tolerance is below half the frame period, which holds for
any sane setting: 20 ms vs 33-100 ms periods): with every camera's oldest
queued stamp known, let ``t_max`` be the newest of them. A queued message older
than ``t_max - tol`` can never be within ``tol`` of that camera's messages
(stamps rise per camera), so it is dropped as part of an incomplete set.
When all heads are within ``tol`` they form a set.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Stamped(Generic[T]):
    stamp_ns: int
    log_ns: int
    item: T


@dataclass
class GrouperStats:
    """Counts of what did not make it into a set."""

    dropped: int = 0  # messages of incomplete sets
    out_of_order: int = 0  # stamp not newer than the camera's previous one
    dropped_stamps: list[int] = field(default_factory=list)

    def incomplete_sets(self, tol_ns: int) -> int:
        """Number of moments that lost at least one camera (dropped stamps clustered by ``tol``)."""
        if not self.dropped_stamps:
            return 0
        s = sorted(self.dropped_stamps)
        return 1 + sum(1 for a, b in itertools.pairwise(s) if b - a > tol_ns)


class StampGrouper(Generic[T]):
    """Groups one message per camera whose stamps lie within ``tol_ns``.

    Args:
        n_cameras: number of streams (indices 0..n-1).
        tol_ns: maximum spread of stamps within a set.
        horizon_ns: a queued message older than the newest stamp seen minus
            this is given up (bounds memory when a camera stops publishing).
    """

    def __init__(self, n_cameras: int, tol_ns: int, horizon_ns: int) -> None:
        self.tol_ns = int(tol_ns)
        self.horizon_ns = int(horizon_ns)
        self._queues: list[deque[Stamped[T]]] = [deque() for _ in range(n_cameras)]
        self._last: list[int | None] = [None] * n_cameras
        self.newest_ns: int | None = None
        self.stats = GrouperStats()

    def _drop(self, q: deque[Stamped[T]]) -> None:
        self.stats.dropped += 1
        self.stats.dropped_stamps.append(q.popleft().stamp_ns)

    def oldest_held_ns(self) -> int | None:
        heads = [q[0].stamp_ns for q in self._queues if q]
        return min(heads) if heads else None

    def push(self, cam: int, stamp_ns: int, log_ns: int, item: T) -> list[list[Stamped[T]]]:
        """Queue one message; return the sets it completes (oldest first)."""
        last = self._last[cam]
        if last is not None and stamp_ns <= last:
            self.stats.out_of_order += 1
            return []
        self._last[cam] = stamp_ns
        self._queues[cam].append(Stamped(stamp_ns, log_ns, item))
        self.newest_ns = stamp_ns if self.newest_ns is None else max(self.newest_ns, stamp_ns)
        sets = self._emit()
        self._expire()
        return sets

    def _emit(self) -> list[list[Stamped[T]]]:
        out: list[list[Stamped[T]]] = []
        while all(self._queues):
            t_max = max(q[0].stamp_ns for q in self._queues)
            stale = [q for q in self._queues if q[0].stamp_ns < t_max - self.tol_ns]
            if not stale:
                out.append([q.popleft() for q in self._queues])
                continue
            for q in stale:  # the next head may be newer than t_max: re-evaluate
                self._drop(q)
        return out

    def _expire(self) -> None:
        if self.newest_ns is None:
            return
        limit = self.newest_ns - self.horizon_ns
        for q in self._queues:
            while q and q[0].stamp_ns < limit:
                self._drop(q)

    def flush(self) -> None:
        """End of stream: whatever is still queued belongs to incomplete sets."""
        for q in self._queues:
            while q:
                self._drop(q)
