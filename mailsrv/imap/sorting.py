"""SORT's engine (RFC 5256, RFC 5957): ordering SEARCH's matches.

The matches come from :func:`mailsrv.imap.searching.collect` (or, for a
program that is ``ALL``, straight from the view: no message is looked at).
What the criteria compare are columns of :mod:`mailsrv.imap.sortcache`,
kept per mailbox in the process and filled, only for the keys a criterion
needs, from the cached sort records (sent date, base subject, first
addresses, display names) and from the index (INTERNALDATE for ARRIVAL and
for DATE when a message has no usable Date header, RFC 5256 2.2; the size
for SIZE).  A warm SORT reads one value per match from a dict and sorts.

Sorting is Python's stable sort, once per criterion from the last to the
first, starting from mailbox order: equal keys keep the order of the
criteria after them and, last of all, of sequence numbers, the implicit
final criterion; ``REVERSE`` reverses only its own criterion (RFC 5256
BASE.6.4.SORT), which a stable ``reverse=True`` sort does.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from mailsrv.imap.sortcache import Keys, load_keys

__all__ = [
    "COLUMN_OF",
    "KEYS",
    "Criterion",
    "Keys",
    "insert_sorted",
    "key_function",
    "load_keys",
    "needs",
    "sequence_set",
    "sort_hits",
    "strict_order_key",
]

#: Sort keys: RFC 5256's and RFC 5957's DISPLAYFROM and DISPLAYTO.
KEYS = frozenset(
    {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}
)
#: The :mod:`~mailsrv.imap.sortcache` column each key compares.
COLUMN_OF = {
    "ARRIVAL": "arrival",
    "CC": "cc",
    "DATE": "sent",
    "FROM": "from",
    "SIZE": "size",
    "SUBJECT": "subject",
    "TO": "to",
    "DISPLAYFROM": "displayfrom",
    "DISPLAYTO": "displayto",
}
_DEFAULT: dict[str, Any] = {"arrival": 0.0, "size": 0}


@attrs.frozen
class Criterion:
    """One sort criterion: a key of :data:`KEYS`, maybe reversed."""

    key: str
    reverse: bool = False


def needs(criteria: Sequence[Criterion]) -> frozenset[str]:
    """The columns :func:`~mailsrv.imap.sortcache.load_keys` must load."""
    return frozenset(COLUMN_OF[c.key] for c in criteria)


def key_function(key: str, keys: Keys) -> Callable[[int], Any]:
    """The value a criterion compares, by UID."""
    if key == "DATE":
        return keys.sent
    name = COLUMN_OF[key]
    get = keys.column(name).get
    default = _DEFAULT.get(name, "")
    return lambda uid: get(uid, default)


def _values(key: str, keys: Keys, uids: Sequence[int]) -> list[Any]:
    """What ``key`` compares for each of ``uids``, as :func:`key_function`
    gives it, read in one pass."""
    if key == "DATE":
        got: list[float | None] = [keys.column("sent").get(uid) for uid in uids]
        if None not in got:
            return got
        arrival = keys.column("arrival")
        return [arrival.get(u, 0.0) if v is None else v for u, v in zip(uids, got, strict=True)]
    name = COLUMN_OF[key]
    column, default = keys.column(name), _DEFAULT.get(name, "")
    return [column.get(uid, default) for uid in uids]


def sort_hits(
    hits: Sequence[tuple[int, int]], criteria: Sequence[Criterion], keys: Keys
) -> list[tuple[int, int]]:
    """``hits`` (``(seq, uid)`` in mailbox order) in the criteria's order:
    positions sorted by one list of values per criterion."""
    uids = [uid for _, uid in hits]
    order: Sequence[int] = range(len(hits))
    for criterion in reversed(criteria):
        values = _values(criterion.key, keys, uids)
        order = sorted(order, key=values.__getitem__, reverse=criterion.reverse)
    return [hits[i] for i in order]


def strict_order_key(criteria: Sequence[Criterion], keys: Keys) -> Callable[[int], Any]:
    """The criteria's comparison, with mailbox (UID) order last, as a key
    for :func:`bisect.bisect_left`.  Raises KeyError for a UID whose value
    was never loaded (no stand-in value may decide a position)."""
    columns: list[tuple[Any, bool]] = []
    for criterion in criteria:
        column: Any = keys.column(COLUMN_OF[criterion.key])
        if criterion.key == "DATE":
            column = _Sent(column, keys.column("arrival"))
        columns.append((column, criterion.reverse))

    def compare(a: int, b: int) -> int:
        for column, reverse in columns:
            x, y = column[a], column[b]
            if x != y:
                result = -1 if x < y else 1
                return -result if reverse else result
        return -1 if a < b else (1 if a > b else 0)

    return functools.cmp_to_key(compare)


class _Sent:
    """``sent``, else ``arrival`` (RFC 5256 2.2), as a mapping that raises
    KeyError when neither has the UID."""

    def __init__(self, sent: dict[int, float], arrival: dict[int, float]) -> None:
        self.sent = sent
        self.arrival = arrival

    def __getitem__(self, uid: int) -> float:
        value = self.sent.get(uid)
        return self.arrival[uid] if value is None else value


def insert_sorted(
    order: list[int], new: Sequence[int], criteria: Sequence[Criterion], keys: Keys
) -> list[int]:
    """``order`` (UIDs in the criteria's order) with ``new`` put in place,
    each where a full sort would put it.  KeyError as
    :func:`strict_order_key`."""
    key = strict_order_key(criteria, keys)
    for uid in new:
        order.insert(bisect.bisect_left(order, key(uid), key=key), uid)
    return order


def sequence_set(numbers: Iterable[int]) -> bytes:
    """Numbers in the order given as a sequence-set: only ascending runs of
    consecutive numbers become ranges (RFC 5267 3.2: ``12:10`` should not
    be used), so the order survives."""
    out: list[bytes] = []
    start = previous = -1
    for n in numbers:
        if n == previous + 1 and previous >= 0:
            previous = n
            continue
        if previous >= 0:
            out.append(b"%d" % start if start == previous else b"%d:%d" % (start, previous))
        start = previous = n
    if previous >= 0:
        out.append(b"%d" % start if start == previous else b"%d:%d" % (start, previous))
    return b",".join(out)
