"""Search criteria (:mod:`mailsrv.criteria`) as an SQL condition, for any SQL index.

The tree walk (AND, OR, NOT), sizes, MODSEQ and UID ranges are the same in
every SQL dialect but for the parameter marker and the constants; how a
flag, a calendar day and many UID ranges are tested depends on the schema
and the database, and a :class:`Dialect` says it.  Maildir's index
(SQLite) and PostgreSQL each give one (their ``sqlsearch`` modules).
Every translation must give exactly what :func:`mailsrv.criteria.matches`
gives over ``fetch``'s answer.
"""

from __future__ import annotations

from typing import Protocol

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

__all__ = ["Dialect", "Sql", "at_least", "below", "where"]

#: A condition and its parameters.
Sql = tuple[str, tuple[object, ...]]

#: 64-bit integers (SQLite's, PostgreSQL's bigint): bounds beyond them make
#: a test constant.
_LOW, _HIGH = -(2**63), 2**63 - 1
#: UID ranges beyond this many are left to :meth:`Dialect.uid_ranges`.
_RANGES_INLINE = 32


class Dialect(Protocol):
    """What one database and schema say differently."""

    #: The parameter marker (``?``, ``%s``).
    marker: str
    true: Sql
    false: Sql

    def flag(self, name: str) -> Sql:
        """The message has flag or keyword ``name``."""

    def not_flag(self, name: str) -> Sql | None:
        """The message lacks ``name``, where the dialect has a better form
        than ``NOT`` of :meth:`flag` (a partial index's own words)."""

    def day(self, criterion: InternalDay) -> Sql:
        """BEFORE, ON or SINCE a calendar day."""

    def uid_ranges(self, ranges: tuple[tuple[int, int], ...]) -> Sql:
        """The UID in one of many ``(low, high)`` ranges, in one lookup."""


def at_least(column: str, bound: int, dialect: Dialect) -> Sql:
    """``column >= bound`` for any Python int."""
    if bound <= _LOW:
        return dialect.true
    if bound > _HIGH:
        return dialect.false
    return f"{column} >= {dialect.marker}", (bound,)


def below(column: str, bound: int, dialect: Dialect) -> Sql:
    """``column < bound`` for any Python int."""
    if bound > _HIGH:
        return dialect.true
    if bound <= _LOW:
        return dialect.false
    return f"{column} < {dialect.marker}", (bound,)


def _uids(ranges: tuple[tuple[int, int], ...], dialect: Dialect) -> Sql:
    if not ranges:
        return dialect.false
    if len(ranges) > _RANGES_INLINE:
        return dialect.uid_ranges(ranges)
    between = f"uid BETWEEN {dialect.marker} AND {dialect.marker}"
    return f"({' OR '.join(between for _ in ranges)})", tuple(n for r in ranges for n in r)


def _joined(criterion: And | Or, dialect: Dialect) -> Sql:
    if not criterion.parts:
        return dialect.true if isinstance(criterion, And) else dialect.false
    joiner = " AND " if isinstance(criterion, And) else " OR "
    parts = [where(part, dialect) for part in criterion.parts]
    sql = joiner.join(text for text, _ in parts)
    return f"({sql})", tuple(arg for _, args in parts for arg in args)


def where(criterion: Criterion, dialect: Dialect) -> Sql:
    """The SQL condition on ``messages`` and its parameters."""
    if isinstance(criterion, And | Or):
        return _joined(criterion, dialect)
    if isinstance(criterion, Not):
        part = criterion.part
        lacking = dialect.not_flag(part.name) if isinstance(part, Flag) else None
        if lacking is not None:
            return lacking
        sql, args = where(part, dialect)
        return f"(NOT {sql})", args
    if isinstance(criterion, Flag):
        return dialect.flag(criterion.name)
    if isinstance(criterion, Larger):
        return at_least("size", criterion.size + 1, dialect)
    if isinstance(criterion, Smaller):
        return below("size", criterion.size, dialect)
    if isinstance(criterion, UidIn):
        return _uids(criterion.ranges, dialect)
    if isinstance(criterion, ModseqAtLeast):
        return at_least("modseq", criterion.value, dialect)
    return dialect.day(criterion)
