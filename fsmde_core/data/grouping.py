"""A message of a bag, kept undecoded with its stamps.

Grouping camera messages into capture instants is done by the one
synchronizer of the project, :class:`fsmde_core.sync.ApproximateTimeSynchronizer`
(phase-corrected, shared with the ROS node); this module only keeps the record
type the bag reader passes around.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Stamped(Generic[T]):
    """``item`` with its ``header.stamp`` (capture time) and log time (receive time), ns."""

    stamp_ns: int
    log_ns: int
    item: T
