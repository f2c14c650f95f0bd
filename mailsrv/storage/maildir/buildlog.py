"""Progress of a long index build in the daemon's log.

Opening a 100,000-message Maildir for the first time (after a migration,
or with its index deleted) stats and sizes every file, and the first text
search indexes every message's text: each takes seconds to minutes in a
worker thread while the client waits. An operator watching the log sees
such a build start, advance every :data:`INTERVAL` seconds, and end;
builds of fewer than :data:`LOGGED` items are quick and say nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mailsrv.log import get_logger

__all__ = ["INTERVAL", "LOGGED", "BuildLog"]

# One namespace for the whole backend: log lines name it, not its modules.
log = get_logger("mailsrv.storage.maildir")

#: Builds of at least this many items are logged.
LOGGED = 1000
#: Seconds between two progress lines of one build.
INTERVAL = 10.0


class BuildLog:
    """The log lines of one build: ``total`` ``unit`` (files, messages)
    for the ``what`` (index of, full-text index) at ``path``.

    :param clock: seconds, for :meth:`step`'s interval (tests pass their own).
    """

    def __init__(
        self,
        what: str,
        path: str,
        total: int,
        unit: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.path, self.total, self.unit = what, path, total, unit
        self.active = total >= LOGGED
        self._clock = clock
        self._started = clock()
        self._next = self._started + INTERVAL
        if self.active:
            log.info(
                "{what} {path}: {total} {unit} to index",
                what=what,
                path=path,
                total=total,
                unit=unit,
            )

    def step(self, done: int) -> None:
        """``done`` of the items are finished; a line if the interval passed."""
        if not self.active:
            return
        now = self._clock()
        if now < self._next:
            return
        self._next = now + INTERVAL
        log.info(
            "{what} {path}: {done} of {total} {unit} indexed ({percent}%), {seconds:.0f} s so far",
            what=self.what,
            path=self.path,
            done=done,
            total=self.total,
            unit=self.unit,
            percent=done * 100 // max(self.total, 1),
            seconds=now - self._started,
        )

    def finished(self, done: int) -> None:
        """The build ended with ``done`` items finished."""
        if self.active:
            log.info(
                "{what} {path}: {done} {unit} indexed in {seconds:.1f} s",
                what=self.what,
                path=self.path,
                done=done,
                unit=self.unit,
                seconds=self._clock() - self._started,
            )
