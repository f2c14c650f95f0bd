"""SEARCH keys of the extensions beside RFC 3501's: WITHIN (RFC 5032),
SAVEDATE (RFC 8514) and OBJECTID (RFC 8474, in :mod:`mailsrv.imap.objectid`).

Compilers in the form :mod:`mailsrv.imap.searching` takes: ``(op, args,
context) -> predicate``, merged into its table.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from mailsrv.imap import objectid
from mailsrv.interfaces import IMessage

if TYPE_CHECKING:
    from mailsrv.imap.searching import Predicate, SearchContent, _Context

__all__ = ["COMPILERS"]


def _within(op: str, args: tuple[object, ...], context: _Context) -> Predicate:
    """RFC 5032: OLDER n is an internal date more than n seconds before the
    server's current time, YOUNGER n one at most n seconds before it (both
    instants, so time zones do not matter)."""
    limit = context.now - datetime.timedelta(seconds=cast(int, args[0]))
    if op == "OLDER":
        return lambda seq, m, c: m.internal_date < limit
    return lambda seq, m, c: m.internal_date >= limit


def _saved_day(m: IMessage) -> datetime.date:
    """The save date's calendar day (RFC 8514 4.3: "disregarding time and
    timezone", so in the zone it is kept in); the internal date's for a
    message whose save date is unknown, as for storage without them."""
    saved: datetime.datetime | None = m.save_date
    return (saved if saved is not None else m.internal_date).date()


def _saved(op: str, args: tuple[object, ...], context: _Context) -> Predicate:
    day = cast(datetime.date, args[0])
    tests: dict[str, Callable[[datetime.date], bool]] = {
        "SAVEDBEFORE": lambda saved: saved < day,
        "SAVEDON": lambda saved: saved == day,
        "SAVEDSINCE": lambda saved: saved >= day,
    }
    test = tests[op]

    def predicate(seq: int, m: IMessage, c: SearchContent) -> bool:
        return test(_saved_day(m))

    return predicate


def _savedate_supported(op: str, args: tuple[object, ...], context: _Context) -> Predicate:
    """Every backend keeps save dates (RFC 8514 4.3): every message."""
    return lambda seq, m, c: True


COMPILERS: dict[str, Callable[[str, tuple[object, ...], _Context], Predicate]] = {
    "OLDER": _within,
    "YOUNGER": _within,
    **dict.fromkeys(("SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"), _saved),
    "SAVEDATESUPPORTED": _savedate_supported,
    **objectid.SEARCH_KEYS,
}
