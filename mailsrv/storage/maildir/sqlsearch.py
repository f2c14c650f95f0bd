"""Search criteria (:mod:`mailsrv.criteria`) as one SQL query on the index.

:meth:`MaildirMailbox.search_index` answers with the UIDs of one
``SELECT uid FROM messages WHERE ...``: flags are letters in the ``info``
column, the internal date is ``mtime_ns`` (whole seconds, in UTC, as
:func:`~mailsrv.storage.maildir.layout.ns_datetime` reads it), so no row
becomes a Python object.  Every translation must give exactly what
:func:`mailsrv.criteria.matches` gives over ``fetch``'s answer.
"""

from __future__ import annotations

import datetime

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
from mailsrv.storage.maildir.keywords import FLAG_LETTERS, KeywordTable

__all__ = ["where"]

#: SQLite's integers are 64-bit: bounds beyond them make a test constant.
_LOW, _HIGH = -(2**63), 2**63 - 1
#: UID ranges beyond this many are tested by one table-valued lookup.
_RANGES_INLINE = 32
_NS = 1_000_000_000
_EPOCH = datetime.date(1970, 1, 1)

_TRUE = ("1", ())
_FALSE = ("0", ())


def _at_least(column: str, bound: int) -> tuple[str, tuple[int, ...]]:
    """``column >= bound`` for any Python int."""
    if bound <= _LOW:
        return _TRUE
    if bound > _HIGH:
        return _FALSE
    return f"{column} >= ?", (bound,)


def _below(column: str, bound: int) -> tuple[str, tuple[int, ...]]:
    """``column < bound`` for any Python int."""
    if bound > _HIGH:
        return _TRUE
    if bound <= _LOW:
        return _FALSE
    return f"{column} < ?", (bound,)


def _day(criterion: InternalDay) -> tuple[str, tuple[int, ...]]:
    # The internal date is mtime_ns // 10**9 seconds in UTC; its day is
    # before D exactly when mtime_ns < D's midnight in ns (floor division
    # keeps the order), so no conversion runs per row.
    start = (criterion.day - _EPOCH).days * 86400 * _NS
    if criterion.op == "BEFORE":
        return _below("mtime_ns", start)
    if criterion.op == "SINCE":
        return _at_least("mtime_ns", start)
    low_sql, low_args = _at_least("mtime_ns", start)
    high_sql, high_args = _below("mtime_ns", start + 86400 * _NS)
    return f"({low_sql} AND {high_sql})", low_args + high_args


def _uids(ranges: tuple[tuple[int, int], ...]) -> tuple[str, tuple[object, ...]]:
    if not ranges:
        return _FALSE
    if len(ranges) <= _RANGES_INLINE:
        parts = " OR ".join("uid BETWEEN ? AND ?" for _ in ranges)
        return f"({parts})", tuple(n for pair in ranges for n in pair)
    # Many ranges (a scattered saved result or \\Recent set): one JSON
    # array of pairs, joined by SQLite itself rather than one OR per range.
    pairs = "[" + ",".join(f"[{low},{high}]" for low, high in ranges) + "]"
    return (
        "EXISTS (SELECT 1 FROM json_each(?) AS r WHERE uid BETWEEN "
        "r.value ->> 0 AND r.value ->> 1)",
        (pairs,),
    )


def _flag(name: str, keywords: KeywordTable) -> tuple[str, tuple[object, ...]]:
    letter = FLAG_LETTERS.get(name)
    letters = [letter] if letter is not None else keywords.letters_of(name)
    if not letters:
        return _FALSE
    tests = " OR ".join("instr(info, ?) > 0" for _ in letters)
    return f"({tests})", tuple(letters)


def where(criterion: Criterion, keywords: KeywordTable) -> tuple[str, tuple[object, ...]]:
    """The SQL condition on ``messages`` and its parameters."""
    if isinstance(criterion, And | Or):
        if not criterion.parts:
            return _TRUE if isinstance(criterion, And) else _FALSE
        joiner = " AND " if isinstance(criterion, And) else " OR "
        parts = [where(part, keywords) for part in criterion.parts]
        sql = joiner.join(text for text, _ in parts)
        return f"({sql})", tuple(arg for _, args in parts for arg in args)
    if isinstance(criterion, Not):
        if isinstance(criterion.part, Flag) and criterion.part.name in FLAG_LETTERS:
            # A literal, exactly as the partial index messages_unseen says it.
            return f"instr(info, '{FLAG_LETTERS[criterion.part.name]}') = 0", ()
        sql, args = where(criterion.part, keywords)
        return f"(NOT {sql})", args
    if isinstance(criterion, Flag):
        return _flag(criterion.name, keywords)
    if isinstance(criterion, Larger):
        return _at_least("size", criterion.size + 1)
    if isinstance(criterion, Smaller):
        return _below("size", criterion.size)
    if isinstance(criterion, UidIn):
        return _uids(criterion.ranges)
    if isinstance(criterion, ModseqAtLeast):
        return _at_least("modseq", criterion.value)
    return _day(criterion)
