"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every artifact this package writes (checkpoints, ONNX models, TensorRT engines,
their JSON sidecars) is written to a temporary file beside the target and then
renamed over it. A write that fails part way (disk full, killed process) leaves
the previous file untouched and no temporary behind, so a failure loses nothing.
One helper for the whole package, so that guarantee is implemented once.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class AtomicWriteError(OSError):
    """Writing a file failed (disk full, no permission); the previous file, if any, is unchanged.

    An OSError subclass, so callers that already handle OSError keep working;
    its message names the target path, not the temporary file the OS saw.
    """

    def __init__(self, path: Path, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.path = path

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.strerror}; the previous file (if any) is unchanged"


def temporary_sibling(path: Path) -> Path:
    """``DIR/NAME.tmp<pid>``: same folder (so the rename is atomic), unique per process."""
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path for a writer that takes a file name; rename it onto ``path`` on success.

    The parent folder is created. If the block raises, the temporary file is
    removed and ``path`` keeps its old content (or stays absent); an OSError
    raised in the block (the writer's) comes out as :class:`AtomicWriteError`
    naming ``path``.
    """
    target = Path(path)
    tmp = temporary_sibling(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        tmp.replace(target)
    except AtomicWriteError:
        raise
    except OSError as exc:
        raise AtomicWriteError(target, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, flushed to disk before the rename."""
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` onto ``dst`` atomically."""
    with atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)
