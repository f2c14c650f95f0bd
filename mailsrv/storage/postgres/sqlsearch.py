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

from mailsrv.criteria import Criterion, InternalDay
from mailsrv.storage import sqlcriteria
from mailsrv.storage.postgres.schema import FLAG_BITS
from mailsrv.storage.sqlcriteria import Sql

__all__ = ["search_cached", "search_index"]


def _midnight(day: datetime.date, zone: datetime.tzinfo) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time(), tzinfo=zone)


class _Postgres:
    """The schema in PostgreSQL's words (:class:`sqlcriteria.Dialect`)."""

    marker = "%s"
    true: Sql = ("TRUE", ())
    false: Sql = ("FALSE", ())

    def __init__(self, zone: datetime.tzinfo) -> None:
        self._zone = zone

    def flag(self, name: str) -> Sql:
        bit = FLAG_BITS.get(name)
        if bit is not None:
            return "flags & %s <> 0", (bit,)
        return "%s = ANY(keywords)", (name,)

    def not_flag(self, name: str) -> Sql | None:
        return None

    def day(self, criterion: InternalDay) -> Sql:
        # The local date is before D exactly when the instant is before D's
        # first instant (local midnight), which keeps the column's index usable.
        try:
            start = _midnight(criterion.day, self._zone)
        except OverflowError:  # pragma: no cover - dates IMAP cannot name
            return self.false
        if criterion.op == "BEFORE":
            return "internal_date < %s", (start,)
        if criterion.op == "SINCE" or criterion.day == datetime.date.max:
            return "internal_date >= %s", (start,)
        end = _midnight(criterion.day + datetime.timedelta(days=1), self._zone)
        return "(internal_date >= %s AND internal_date < %s)", (start, end)

    def uid_ranges(self, ranges: tuple[tuple[int, int], ...]) -> Sql:
        return (
            "EXISTS (SELECT 1 FROM unnest(%s::bigint[], %s::bigint[]) AS r(lo, hi) "
            "WHERE uid BETWEEN r.lo AND r.hi)",
            ([low for low, _ in ranges], [high for _, high in ranges]),
        )


def where(criterion: Criterion, zone: datetime.tzinfo) -> Sql:
    """The SQL condition on ``messages`` and its parameters."""
    return sqlcriteria.where(criterion, _Postgres(zone))


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


def search_cached(
    conn: Any, user: str, mailbox_id: int, kind: str, needle: bytes, low: int, high: int
) -> tuple[list[int], list[int]]:
    """:meth:`~mailsrv.interfaces.ICachedSearch.search_cached`: one joined
    scan of the messages in the range; ``position`` compares octets."""
    test = "length(c.value) > 0" if not needle else "position(%s::bytea in c.value) > 0"
    args: tuple[object, ...] = (kind, user, mailbox_id, low, high) + ((needle,) if needle else ())
    cursor = conn.execute(
        "SELECT m.uid, c.value IS NULL FROM messages AS m LEFT JOIN message_cache AS c "
        "ON c.user_name = m.user_name AND c.mailbox_id = m.mailbox_id AND c.uid = m.uid "
        "AND c.kind = %s WHERE m.user_name = %s AND m.mailbox_id = %s "
        f"AND m.uid BETWEEN %s AND %s AND (c.value IS NULL OR {test}) ORDER BY m.uid",
        args,
    )
    matched: list[int] = []
    missing: list[int] = []
    for uid, absent in cursor:
        (missing if absent else matched).append(int(uid))
    return matched, missing
