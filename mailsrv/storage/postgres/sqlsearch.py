"""Search criteria (:mod:`mailsrv.criteria`) as one PostgreSQL query.

:meth:`PostgresMailbox.search_index` answers with the UIDs of one
``SELECT uid FROM messages WHERE ...``: system flags are bits of
``flags``, keywords elements of ``keywords``, and a calendar day is the
span of instants whose local date, in the time zone psycopg gives the
connection's ``timestamptz`` values in (``conn.info.timezone``), is that
day, so the answer is what :func:`mailsrv.criteria.matches` says of
``fetch``'s datetimes.
"""

from __future__ import annotations

import datetime
from typing import Any

from mailsrv.criteria import (
    And,
    Criterion,
    Flag,
    InternalDay,
    Larger,
    ModseqAtLeast,
    Not,
    Or,
    Smaller,
    UidIn,
)
from mailsrv.storage.postgres.schema import FLAG_BITS

__all__ = ["search_index"]

#: bigint's range: bounds beyond it make a test constant.
_LOW, _HIGH = -(2**63), 2**63 - 1
_RANGES_INLINE = 32
_TRUE: tuple[str, tuple[object, ...]] = ("TRUE", ())
_FALSE: tuple[str, tuple[object, ...]] = ("FALSE", ())


def _compare(column: str, op: str, bound: int) -> tuple[str, tuple[object, ...]]:
    """``column >= bound`` or ``column < bound`` for any Python int."""
    if op == ">=":
        if bound <= _LOW:
            return _TRUE
        return _FALSE if bound > _HIGH else (f"{column} >= %s", (bound,))
    if bound > _HIGH:
        return _TRUE
    return _FALSE if bound <= _LOW else (f"{column} < %s", (bound,))


def _midnight(day: datetime.date, zone: datetime.tzinfo) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time(), tzinfo=zone)


def _day(criterion: InternalDay, zone: datetime.tzinfo) -> tuple[str, tuple[object, ...]]:
    # The local date is before D exactly when the instant is before D's
    # first instant (local midnight), which keeps the column's index usable.
    try:
        start = _midnight(criterion.day, zone)
    except OverflowError:  # pragma: no cover - dates IMAP cannot name
        return _FALSE
    if criterion.op == "BEFORE":
        return "internal_date < %s", (start,)
    if criterion.op == "SINCE":
        return "internal_date >= %s", (start,)
    if criterion.day == datetime.date.max:
        return "internal_date >= %s", (start,)
    end = _midnight(criterion.day + datetime.timedelta(days=1), zone)
    return "(internal_date >= %s AND internal_date < %s)", (start, end)


def _uids(ranges: tuple[tuple[int, int], ...]) -> tuple[str, tuple[object, ...]]:
    if not ranges:
        return _FALSE
    if len(ranges) <= _RANGES_INLINE:
        parts = " OR ".join("uid BETWEEN %s AND %s" for _ in ranges)
        return f"({parts})", tuple(n for pair in ranges for n in pair)
    return (
        "EXISTS (SELECT 1 FROM unnest(%s::bigint[], %s::bigint[]) AS r(lo, hi) "
        "WHERE uid BETWEEN r.lo AND r.hi)",
        ([low for low, _ in ranges], [high for _, high in ranges]),
    )


def where(criterion: Criterion, zone: datetime.tzinfo) -> tuple[str, tuple[object, ...]]:
    """The SQL condition on ``messages`` and its parameters."""
    if isinstance(criterion, And | Or):
        if not criterion.parts:
            return _TRUE if isinstance(criterion, And) else _FALSE
        joiner = " AND " if isinstance(criterion, And) else " OR "
        parts = [where(part, zone) for part in criterion.parts]
        return f"({joiner.join(t for t, _ in parts)})", tuple(a for _, args in parts for a in args)
    if isinstance(criterion, Not):
        sql, args = where(criterion.part, zone)
        return f"(NOT {sql})", args
    if isinstance(criterion, Flag):
        bit = FLAG_BITS.get(criterion.name)
        if bit is not None:
            return "flags & %s <> 0", (bit,)
        return "%s = ANY(keywords)", (criterion.name,)
    if isinstance(criterion, Larger):
        return _compare("size", ">=", criterion.size + 1)
    if isinstance(criterion, Smaller):
        return _compare("size", "<", criterion.size)
    if isinstance(criterion, UidIn):
        return _uids(criterion.ranges)
    if isinstance(criterion, ModseqAtLeast):
        return _compare("modseq", ">=", criterion.value)
    return _day(criterion, zone)


def search_index(conn: Any, user: str, mailbox_id: int, criterion: Criterion) -> list[int]:
    """The UIDs, ascending, of the mailbox's messages matching ``criterion``."""
    condition, args = where(criterion, conn.info.timezone)
    with conn.cursor(binary=True) as cursor:
        cursor.execute(
            f"SELECT uid FROM messages WHERE user_name = %s AND mailbox_id = %s "
            f"AND {condition} ORDER BY uid",
            (user, mailbox_id, *args),
        )
        return [row[0] for row in cursor]
