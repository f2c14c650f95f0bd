"""Workers log through their parent, which owns the log.

A worker writes each event it logs as one line of JSON to its standard
output (:class:`PipeObserver`); the parent reads the lines
(:class:`LogRelay`) and publishes the events again in its own log, marked
with the worker's number.  So there is one log file (twistd's
``--logfile`` or standard output), one place that reopens it on SIGHUP,
one ``[logging] format``, and lines from every worker in the order they
arrived.  The level filter is the worker's own (its ``[logging] level``),
applied before the line is written.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.logger import (
    ILogObserver,
    LogLevel,
    eventAsJSON,
    eventFromJSON,
    globalLogPublisher,
)
from zope.interface import implementer

__all__ = ["WORKER_KEY", "LogRelay", "PipeObserver"]

#: The event key (a JSON log field) naming the worker a line comes from.
WORKER_KEY = "worker"
#: A failure's traceback, as text: an exception object does not survive JSON.
_TRACEBACK_KEY = "worker_traceback"


@implementer(ILogObserver)
class PipeObserver:
    """A worker's log observer: one JSON line per event to ``fd``.

    Not a ``FileLogObserver``, so a reload's ``[logging] format`` (which
    converts those) leaves the pipe in JSON: the parent formats the lines.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __call__(self, event: dict[str, Any]) -> None:
        failure = event.get("log_failure")
        if failure is not None:
            event = dict(event)
            del event["log_failure"]
            try:
                event[_TRACEBACK_KEY] = failure.getTraceback()
            except Exception as e:  # pragma: no cover - a broken failure
                event[_TRACEBACK_KEY] = f"(no traceback: {e!r})"
        data = (eventAsJSON(event) + "\n").encode("utf-8")
        while data:
            written = os.write(self.fd, data)
            data = data[written:]


class _RemoteFailure:
    """What a worker's failure is in the parent: its traceback, as text,
    which is all log observers ask of a ``log_failure``."""

    def __init__(self, traceback: str) -> None:
        self.traceback = traceback

    def getTraceback(self, *args: Any, **kwargs: Any) -> str:
        return self.traceback

    def __str__(self) -> str:
        lines = self.traceback.strip().splitlines()
        return lines[-1] if lines else "(no traceback)"


class LogRelay:
    """The parent's reader of one worker's log lines.

    ``publish`` is the parent's log (the global publisher); lines that are
    not events (a traceback printed before logging began, on standard
    error) are published as they are, at ``level``.
    """

    def __init__(
        self, number: int, level: LogLevel = LogLevel.info, publish: Any = globalLogPublisher
    ) -> None:
        self.number = number
        self.level = level
        self.publish = publish
        self._partial = b""

    def feed(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            if line.strip():
                self._line(line)

    def flush(self) -> None:
        """The pipe closed: publish an unfinished last line."""
        partial, self._partial = self._partial, b""
        if partial.strip():
            self._line(partial)

    def _line(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        event: dict[str, Any] | None = None
        if text.startswith("{"):
            try:
                event = eventFromJSON(text)
            except ValueError:
                event = None
        if not isinstance(event, dict):
            event = {
                "log_namespace": "mailsrv.workers",
                "log_level": self.level,
                "log_format": "{line}",
                "line": text,
            }
        traceback = event.pop(_TRACEBACK_KEY, None)
        if isinstance(traceback, str):
            event["log_failure"] = _RemoteFailure(traceback)
        event[WORKER_KEY] = self.number
        event.setdefault("log_level", self.level)
        # What a text log shows in brackets: "[mailsrv.imap.server#info worker 2]".
        system = event.get("log_system")
        if system == "-":
            event["log_system"] = f"worker {self.number}"
        else:
            if not isinstance(system, str):
                level = event["log_level"]
                name = level.name if isinstance(level, type(LogLevel.info)) else "info"
                system = f"{event.get('log_namespace', '-')}#{name}"
            event["log_system"] = f"{system} worker {self.number}"
        self.publish(event)
