"""Logging through twisted.logger, with the level set by the configuration.

mailsrv code gets its loggers from :func:`get_logger`; they publish through
one filter whose level ``[logging] level`` sets, so ``debug`` traces appear
only when asked for and everything else still reaches twistd's log file.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])


def get_logger(namespace: str) -> Logger:
    """A logger for ``namespace`` (use the module's ``__name__``)."""
    return Logger(namespace=namespace, observer=_observer)


def set_level(level: str) -> None:
    """Set the lowest level mailsrv logs: debug, info, warn or error."""
    _predicate.setLogLevelForNamespace("mailsrv", LogLevel.levelWithName(level))
