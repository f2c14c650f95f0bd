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

from mailsrv.criteria import Criterion, InternalDay
from mailsrv.storage import sqlcriteria
from mailsrv.storage.maildir.keywords import FLAG_LETTERS, KeywordTable
from mailsrv.storage.sqlcriteria import Sql, at_least, below

__all__ = ["where"]

_NS = 1_000_000_000
_EPOCH = datetime.date(1970, 1, 1)


class _SQLite:
    """The index's schema in SQLite's words (:class:`sqlcriteria.Dialect`)."""

    marker = "?"
    true: Sql = ("1", ())
    false: Sql = ("0", ())

    def __init__(self, keywords: KeywordTable) -> None:
        self._keywords = keywords

    def flag(self, name: str) -> Sql:
        letter = FLAG_LETTERS.get(name)
        if letter is not None:
            # A literal, exactly as the partial indexes of the index say it.
            return f"instr(info, '{letter}') > 0", ()
        letters = self._keywords.letters_of(name)
        if not letters:
            return self.false
        tests = " OR ".join("instr(info, ?) > 0" for _ in letters)
        return f"({tests})", tuple(letters)

    def not_flag(self, name: str) -> Sql | None:
        letter = FLAG_LETTERS.get(name)
        if letter is None:
            return None
        if letter == "T":
            # Deleted messages are few (they are expunged): UNDELETED beside
            # another indexed key (UNSEEN UNDELETED) then probes the small
            # set from messages_deleted instead of reading each row.
            return "uid NOT IN (SELECT uid FROM messages WHERE instr(info, 'T') > 0)", ()
        # A literal, exactly as the partial index messages_unseen says it.
        return f"instr(info, '{letter}') = 0", ()

    def day(self, criterion: InternalDay) -> Sql:
        # The internal date is mtime_ns // 10**9 seconds in UTC; its day is
        # before D exactly when mtime_ns < D's midnight in ns (floor division
        # keeps the order), so no conversion runs per row.
        start = (criterion.day - _EPOCH).days * 86400 * _NS
        if criterion.op == "BEFORE":
            return below("mtime_ns", start, self)
        if criterion.op == "SINCE":
            return at_least("mtime_ns", start, self)
        low_sql, low_args = at_least("mtime_ns", start, self)
        high_sql, high_args = below("mtime_ns", start + 86400 * _NS, self)
        return f"({low_sql} AND {high_sql})", low_args + high_args

    def uid_ranges(self, ranges: tuple[tuple[int, int], ...]) -> Sql:
        # Many ranges (a scattered saved result or \\Recent set): one JSON
        # array of pairs, joined by SQLite itself rather than one OR per range.
        pairs = "[" + ",".join(f"[{low},{high}]" for low, high in ranges) + "]"
        return (
            "EXISTS (SELECT 1 FROM json_each(?) AS r WHERE uid BETWEEN "
            "r.value ->> 0 AND r.value ->> 1)",
            (pairs,),
        )


def where(criterion: Criterion, keywords: KeywordTable) -> Sql:
    """The SQL condition on ``messages`` and its parameters."""
    return sqlcriteria.where(criterion, _SQLite(keywords))
