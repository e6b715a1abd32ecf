"""SIGINT / SIGTERM as a request to stop, not as an exception or a context shutdown.

Why not rclpy's own handlers: they shut the rclpy context down the moment the
signal arrives, while the inference worker may be publishing, so the worker's
publish fails ("publisher's context is invalid"). And Python's default SIGINT
handler raises KeyboardInterrupt wherever the main thread is, so a second
interrupt (``timeout -s INT``, supervisors) breaks the cleanup of the first or
kills the exiting process. Here a signal only sets an event; the node's main
loop polls it, then stops the worker, destroys the node and only then shuts
the context down.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Set by SIGINT / SIGTERM (any number of times); :attr:`received` names the first signal."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: str | None = None

    def is_set(self) -> bool:
        return self.event.is_set()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
        self.event.set()


@contextmanager
def stop_signals() -> Iterator[StopRequest]:
    """Inside: SIGINT / SIGTERM set the yielded :class:`StopRequest`. After: they are ignored.

    For process entry points only (elsewhere than the main thread nothing is installed: the caller
    stops the node by shutting its context down). Ignored afterwards because the process is exiting then, and
    CPython resets Python-level handlers to the default (kill) during interpreter teardown: a
    second interrupt in that window would turn a clean exit into death by signal (exit -2).
    """
    stop = StopRequest()
    installed = threading.current_thread() is threading.main_thread()  # signal.signal works only there
    for sig in STOP_SIGNALS if installed else ():
        signal.signal(sig, stop._handle)
    try:
        yield stop
    finally:
        for sig in STOP_SIGNALS if installed else ():
            signal.signal(sig, signal.SIG_IGN)
