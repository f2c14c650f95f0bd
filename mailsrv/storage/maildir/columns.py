"""``IMessageColumns`` from the index: a run of UIDs' metadata as columns.

``FETCH 1:* (FLAGS)`` over 100,000 messages spent half its time having the
``sqlite3`` module build a tuple, a string and ints per row.  Here SQLite
joins each column of a UID run into one string (:meth:`Index.column_texts`)
and Python splits it: the per-message work stays in C.
"""

from __future__ import annotations

from mailsrv.interfaces import COLUMN_NAMES, MessageColumns
from mailsrv.storage.maildir.index import Index
from mailsrv.storage.maildir.keywords import KeywordTable

__all__ = ["message_columns"]


def message_columns(
    db: Index, keywords: KeywordTable, first: int, last: int, names: frozenset[str]
) -> MessageColumns | None:
    """The ``names`` columns of UIDs ``first`` to ``last``; None unless
    every one of them is in the index.  Flags are keyed by the info letters
    (the keyword table's memo gives each distinct string's set once)."""
    wanted = sorted(names & COLUMN_NAMES)
    count, texts = db.column_texts(first, last, wanted)
    if last < first or count != last - first + 1:
        return None
    values = dict(zip(wanted, texts, strict=True))
    flags: list[str] = []
    flag_sets: dict[object, frozenset[str]] = {}
    if "flags" in values:
        flags = _split(values["flags"])
        flag_sets = {info: keywords.flags(info) for info in set(flags)}
    return MessageColumns(
        first,
        count,
        flags,
        flag_sets,
        dates=_numbers(values.get("dates")),
        sizes=_numbers(values.get("sizes")),
        modseqs=_numbers(values.get("modseqs")),
    )


def _split(text: str | None) -> list[str]:
    return [] if text is None else text.split("/")


def _numbers(text: str | None) -> list[int]:
    return list(map(int, _split(text)))
