"""Opening rosbag2 recordings with ``rosbags`` and turning its failures into :class:`BagError`.

``rosbags`` raises a zoo of exceptions on damaged files (its own ReaderError,
sqlite3.DatabaseError, struct.error, zstd errors, ...). Users need one answer:
which bag, what is wrong, what to try. These wrappers give it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from fsmde_core.data.errors import BagError
from fsmde_core.messages import MalformedMessageError, header_stamp_ns, stamp_to_ns

log = logging.getLogger(__name__)

_STORAGE_SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}
_CORRUPT_HINT = (
    "the file may be truncated or corrupt (a recorder that was killed leaves such files; "
    "`ros2 bag reindex` can sometimes recover them)"
)


@dataclass(frozen=True)
class TopicSummary:
    msgtype: str
    count: int


def check_bag_path(path: Path) -> str:
    """Validate that ``path`` looks like a rosbag2 recording; return its storage id."""
    if not path.exists():
        raise BagError(path, None, "does not exist")
    if path.is_dir():
        meta = path / "metadata.yaml"
        if not meta.is_file():
            raise BagError(path, None, "not a rosbag2 directory (no metadata.yaml); "
                           "if the recorder crashed, `ros2 bag reindex` can rebuild it")
        files = sorted(p.suffix for p in path.iterdir() if p.suffix in (*_STORAGE_SUFFIXES, ".zstd"))
        return _STORAGE_SUFFIXES.get(files[0], "?") if files else "?"
    if path.suffix == ".bag":
        raise BagError(path, None, "is a ROS 1 bag; convert it with `rosbags-convert` first")
    if path.suffix not in _STORAGE_SUFFIXES:
        raise BagError(path, None,
                       f"not a rosbag2 directory or storage file (.mcap/.db3), got {path.suffix!r}")
    return _STORAGE_SUFFIXES[path.suffix]


@contextmanager
def open_bag(path: str | Path) -> Iterator[AnyReader]:
    """Open one rosbag2 recording (directory, or a bare .mcap/.db3) for reading."""
    path = Path(path)
    check_bag_path(path)
    reader = AnyReader([path], default_typestore=get_typestore(Stores.LATEST))
    try:
        reader.open()
    except Exception as exc:  # rosbags raises many types on damaged files
        raise BagError(path, None, f"cannot open ({type(exc).__name__}: {exc}); {_CORRUPT_HINT}") from exc
    try:
        yield reader
    finally:
        try:
            reader.close()
        except Exception as exc:  # closing a damaged file must not mask the real error
            log.debug("closing %s failed: %s", path, exc)


def topic_table(reader: AnyReader) -> dict[str, TopicSummary]:
    """Topic -> (type, message count) from the bag's metadata (no message is read)."""
    return {
        name: TopicSummary(info.msgtype or "?", int(info.msgcount))
        for name, info in sorted(reader.topics.items())
    }


def iter_raw(
    reader: AnyReader, bag: Path, topics: Collection[str]
) -> Iterator[tuple[str, str, int, bytes]]:
    """(topic, msgtype, log time ns, raw CDR) for ``topics``, in log-time order.

    A failure inside the storage layer (truncated chunk, corrupt page) becomes
    a :class:`BagError` naming the bag and the last topic read successfully.
    """
    wanted = set(topics)
    conns = [c for c in reader.connections if c.topic in wanted]
    if not conns:
        return
    last_topic: str | None = None
    it = reader.messages(connections=conns)
    while True:
        try:
            conn, log_ns, raw = next(it)
        except StopIteration:
            return
        except Exception as exc:  # storage-level damage surfaces as arbitrary exceptions
            where = f" after a message on {last_topic}" if last_topic else ""
            raise BagError(bag, last_topic, f"reading failed{where} ({type(exc).__name__}: {exc}); "
                           f"{_CORRUPT_HINT}") from exc
        last_topic = conn.topic
        yield conn.topic, conn.msgtype, int(log_ns), raw


def deserialize(reader: AnyReader, raw: bytes, msgtype: str, topic: str):
    """CDR -> message object; a payload that does not parse is one malformed message."""
    try:
        return reader.deserialize(raw, msgtype)
    except Exception as exc:  # SerdeError/AnyReaderError/struct.error/IndexError on garbage
        raise MalformedMessageError(f"topic {topic}: cannot deserialise {msgtype} ({exc})") from exc


def message_stamp_ns(reader: AnyReader, raw: bytes, msgtype: str, topic: str) -> int:
    """``header.stamp`` of a message that starts with a Header, read from the bytes when they are plain
    CDR (no deserialisation of megabytes of pixels), else by deserialising; MalformedMessageError if neither."""
    stamp = header_stamp_ns(raw)
    if stamp is None:
        stamp = stamp_to_ns(deserialize(reader, raw, msgtype, topic).header.stamp)
    return stamp
