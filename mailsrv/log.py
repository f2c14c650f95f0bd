"""Logging through twisted.logger, with the level set by the configuration.

mailsrv code gets its loggers from :func:`get_logger`; they publish through
one filter whose level ``[logging] level`` sets, so ``debug`` traces appear
only when asked for and everything else still reaches twistd's log file.
"""

from __future__ import annotations

from collections.abc import Callable

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
