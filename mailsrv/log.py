"""Logging through twisted.logger, with the level and format the configuration sets.

mailsrv code gets its loggers from :func:`get_logger`; they publish through
one filter whose level ``[logging] level`` sets, so ``debug`` traces appear
only when asked for and everything else still reaches twistd's log file.

``[logging] format = "json"`` writes one JSON object per line instead of
twistd's text lines, to the same place (``--logfile`` or standard output):
twistd's file observers are replaced by ones that format each event with
:func:`format_json`, and the file itself stays twistd's, so ``SIGUSR1``
rotation and the ``SIGHUP`` reopen work the same in both formats.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Callable, Iterable
from typing import Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsJSON,
    formatEvent,
    globalLogBeginner,
    globalLogPublisher,
    textFileLogObserver,
)

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])

# Event keys a protocol session puts in its log events (``_log.info("...",
# session=..., protocol="imap", ...)``).  JSON logs carry each as a field
# of the same name; text logs show what the message's format names.
#: str: the session's id, unique within one daemon's life (:func:`new_session_id`).
SESSION = "session"
#: str: "imap", "pop3" or "lmtp".
PROTOCOL = "protocol"
#: str: the client's address, "203.0.113.5:51234", "[2001:db8::1]:51234" or "unix".
REMOTE = "remote"
#: str: the logged-in user (IMAP, POP3) or the recipient's user (LMTP).
USER = "user"
#: str: the command's name: "SELECT", "RETR", "DATA".
COMMAND = "command"
#: str: its outcome: "OK"/"NO"/"BAD", "+OK"/"-ERR", an SMTP reply code "250 2.0.0".
RESULT = "result"
#: float: seconds the command took.
DURATION = "duration"

SESSION_KEYS = (SESSION, PROTOCOL, REMOTE, USER, COMMAND, RESULT, DURATION)

#: Keys of events from twisted.python.log (the legacy API) that the
#: formatted message already holds.
_LEGACY_KEYS = frozenset({"message", "format", "time", "isError", "why", "failure", "printed"})

FORMATS = ("text", "json")
_format = "text"
_debug = False


def get_logger(namespace: str) -> Logger:
    """A logger for ``namespace`` (use the module's ``__name__``)."""
    return Logger(namespace=namespace, observer=_observer)


def set_level(level: str) -> None:
    """Set the lowest level mailsrv logs: debug, info, warn or error."""
    global _debug
    _predicate.setLogLevelForNamespace("mailsrv", LogLevel.levelWithName(level))
    _debug = level == "debug"


def debug_enabled() -> bool:
    """Whether debug lines are logged: work done only for them (a protocol
    line made loggable) can be skipped otherwise."""
    return _debug


def new_session_id() -> str:
    """A short random id for one connection, to find its lines in the log."""
    return secrets.token_hex(6)


def format_remote(address: Any) -> str:
    """An IAddress as the ``remote`` field: host:port, [v6]:port or "unix"."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return "unix" if address is not None else "unknown"


def _plain(value: Any) -> Any:
    """A value as JSON shows it: numbers, strings, booleans and None stay;
    anything else is its text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def format_json(event: dict[str, Any]) -> str | None:
    """One event as a line of JSON: ``timestamp`` (ISO 8601, UTC),
    ``level``, ``namespace``, ``message`` (the text a text log shows), then
    the event's own fields (:data:`SESSION_KEYS` among them) and, for a
    failure, its ``traceback``.  Serialised by twisted.logger's
    :func:`~twisted.logger.eventAsJSON`.
    """
    level = event.get("log_level")
    when = datetime.datetime.fromtimestamp(event.get("log_time", 0), datetime.UTC)
    record: dict[str, Any] = {
        "timestamp": when.isoformat(timespec="milliseconds"),
        "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS or key in record:
            continue
        if key == "system" and value == "-":
            continue
        record[key] = _plain(value)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:
            record["traceback"] = repr(failure)
    return eventAsJSON(record) + "\n"


class JSONFileLogObserver(FileLogObserver):
    """twisted.logger's file observer writing :func:`format_json` lines."""

    def __init__(self, out_file: Any) -> None:
        super().__init__(out_file, format_json)


def _text_observer(out_file: Any) -> FileLogObserver:
    """The observer twistd itself logs through (``textFileLogObserver``)."""
    return textFileLogObserver(out_file)


def _convert(observer: ILogObserver, fmt: str) -> ILogObserver:
    """``observer`` writing in ``fmt``: a new observer over the same file
    for a file observer in the other format, otherwise itself."""
    if not isinstance(observer, FileLogObserver):
        return observer
    out_file = getattr(observer, "_outFile", None)
    if out_file is None:
        return observer
    is_json = isinstance(observer, JSONFileLogObserver)
    if fmt == "json" and not is_json:
        return JSONFileLogObserver(out_file)
    if fmt == "text" and is_json:
        return _text_observer(out_file)
    return observer


def set_format(fmt: str) -> int:
    """Write every later line in ``fmt`` ("text" or "json"); return how many
    file observers (twistd's ``--logfile`` or standard output) now write it.

    Observers that are not files (``--syslog``) are left as they are.
    Before twistd has begun logging (the plugin's ``makeService``), the
    observers it is about to start are converted as they start, so even
    its first line ("twistd ... starting up") is in the chosen format.
    """
    global _format
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}")
    _format = fmt
    converted = 0
    publisher_observers: list[ILogObserver] = list(getattr(globalLogPublisher, "_observers", ()))
    for observer in publisher_observers:
        new = _convert(observer, fmt)
        if new is not observer:
            globalLogPublisher.removeObserver(observer)
            globalLogPublisher.addObserver(new)
        if isinstance(new, FileLogObserver):
            converted += 1
    if fmt == "json" and getattr(globalLogBeginner, "_temporaryObserver", None) is not None:
        _convert_when_logging_begins()
    return converted


def current_format() -> str:
    return _format


def _convert_when_logging_begins() -> None:
    """Have the observers twistd hands to ``beginLoggingTo`` (once
    ``makeService`` has returned) write in the configured format from their
    first line; the wrapper removes itself at that call."""
    if "beginLoggingTo" in vars(globalLogBeginner):
        return  # already waiting
    original: Callable[..., None] = globalLogBeginner.beginLoggingTo

    def begin(observers: Iterable[ILogObserver], *args: Any, **kwargs: Any) -> None:
        del globalLogBeginner.beginLoggingTo  # back to the class's method
        original([_convert(o, _format) for o in observers], *args, **kwargs)

    globalLogBeginner.beginLoggingTo = begin  # type: ignore[method-assign]


def call_each(logger: Logger, what: str, *steps: Callable[[], object]) -> None:
    """Call every step in order, logging what one raises instead of raising.

    For cleanup that must happen in full (a closed connection giving back
    its connection-limit slots, its lock and its avatar): one failing step
    must never skip the steps after it.
    """
    for step in steps:
        try:
            step()
        except Exception:
            name = getattr(step, "__name__", repr(step))
            logger.failure("{what}: cleanup step {step} failed", what=what, step=name)
