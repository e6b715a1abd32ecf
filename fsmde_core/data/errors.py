"""The error raised when a recording as a whole cannot be used as asked.

:class:`BagError`: bag missing or corrupt, a topic missing, an unsupported
encoding, calibration that does not match the images. Fatal: training on
half-understood data is worse than stopping, so the message names the bag and
the topic to fix. One broken message is not a BagError but a
:class:`fsmde_core.messages.MalformedMessageError`: the reader skips it,
warns and counts it.
"""

from __future__ import annotations

from pathlib import Path


class BagError(ValueError):
    """A rosbag2 recording cannot be read as a surround dataset.

    Attributes:
        bag: the bag path the problem is in.
        topic: the topic at fault, or None when the problem is the bag itself.
        detail: the problem, without the bag/topic prefix.
    """

    def __init__(self, bag: str | Path, topic: str | None, detail: str) -> None:
        self.bag = Path(bag)
        self.topic = topic
        self.detail = detail
        where = f"bag {self.bag}" + (f", topic {topic}" if topic else "")
        super().__init__(f"{where}: {detail}")

