"""SIGTERM and SIGINT during a search: the trial in training stops at once, a storage write never.

:class:`_StopSignals` is installed around the whole loop; the loop reads ``requested`` between
steps, training runs inside :meth:`_StopSignals.training`, and a trial's report writes inside
:meth:`_StopSignals.writing`. A SIGTERM is delivered again once the search has cleaned up, when the
program had left SIGTERM to its default (it ends the program, as it would have without lrsearch).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class _StopSignals:
    """SIGTERM and SIGINT during a search: the trial in training is interrupted at once; anywhere
    else (a storage write, a sweep, asking for a trial, a wait for the database) the loop stops at
    its next step, so no write is cut in half and no trial is left RUNNING. More signals change
    nothing: a KeyboardInterrupt raised outside training (as a second Ctrl-C once did) can land
    between a trial's creation and its first heartbeat, or in the cleanup, and leave it RUNNING.

    On leaving, the previous handlers come back, and a SIGTERM received is sent again where the
    previous SIGTERM handler was the default one: a program that runs a search in-process ends on
    SIGTERM as it would have without it (a ``timeout`` around a test suite must stop it).

    Installed from the main thread only (elsewhere signals cannot be handled); without it,
    KeyboardInterrupt is handled where it lands, as best as can be.
    """

    def __init__(self) -> None:
        self.requested = False
        self.received: set[int] = set()
        self._training = False
        self._woken = threading.Event()

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGTERM, signal.SIGINT)
        previous = {s: signal.getsignal(s) for s in signals}
        for s in signals:
            signal.signal(s, self._handle)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
            if signal.SIGTERM in self.received and previous[signal.SIGTERM] in (
                signal.SIG_DFL,
                None,
            ):
                signal.raise_signal(signal.SIGTERM)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.received.add(signum)
        self._woken.set()
        # The interrupt may land where Python swallows it (a weakref callback, a __del__): then
        # the trial's next report raises it again (`writing`).
        if self._training:
            self._training = False  # once: a signal more must not interrupt the interrupt
            raise KeyboardInterrupt

    @contextmanager
    def training(self) -> Iterator[None]:
        """Where a signal interrupts at once."""
        if self.requested:
            raise KeyboardInterrupt
        self._training = True
        try:
            yield
        finally:
            self._training = False

    @contextmanager
    def writing(self) -> Iterator[None]:
        """A storage write inside training: a signal waits for it, then interrupts."""
        was = self._training
        self._training = False
        try:
            yield
        finally:
            self._training = was
        if was and self.requested:
            raise KeyboardInterrupt

    def wait(self, seconds: float) -> None:
        """Sleep, woken early by a signal."""
        self._woken.wait(seconds)
