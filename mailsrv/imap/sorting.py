"""SORT's engine (RFC 5256, RFC 5957): ordering SEARCH's matches.

The matches come from :func:`mailsrv.imap.searching.collect` (or, for a
program that is ``ALL``, straight from the view: no message is looked at).
What the criteria compare comes from two places, each loaded only when a
criterion needs it, a batch at a time with a reactor turn between batches:

* :func:`mailsrv.imap.content.sort_records`, cached per message: sent date,
  base subject, first addresses, display names (and THREAD's msg-ids);
* the index (:meth:`IMailbox.fetch`): INTERNALDATE for ARRIVAL and for
  DATE when a message has no usable Date header (RFC 5256 2.2), and the
  size for SIZE.

Sorting is Python's stable sort, once per criterion from the last to the
first, starting from mailbox order: equal keys keep the order of the
criteria after them and, last of all, of sequence numbers, the implicit
final criterion; ``REVERSE`` reverses only its own criterion (RFC 5256
BASE.6.4.SORT), which a stable ``reverse=True`` sort does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any

import attrs
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from mailsrv.imap import content
from mailsrv.imap.output import ResponseWriter
from mailsrv.imap.sortkeys import SortRecord
from mailsrv.interfaces import IMailbox, IMessage, maybe_deferred

__all__ = [
    "BATCH",
    "KEYS",
    "Criterion",
    "Keys",
    "load_keys",
    "sequence_set",
    "sort_hits",
]

#: Messages whose keys are read from storage at once.
BATCH = 500

#: Sort keys: RFC 5256's and RFC 5957's DISPLAYFROM and DISPLAYTO.
KEYS = frozenset(
    {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}
)
#: Keys read from the sort record rather than the index alone.
_RECORD_KEYS = KEYS - {"ARRIVAL", "SIZE"}

_EMPTY = SortRecord(None, "")


@attrs.frozen
class Criterion:
    """One sort criterion: a key of :data:`KEYS`, maybe reversed."""

    key: str
    reverse: bool = False


@attrs.define
class Keys:
    """What was loaded for a set of messages, by UID."""

    records: dict[int, SortRecord] = attrs.Factory(dict)
    arrival: dict[int, float] = attrs.Factory(dict)
    size: dict[int, int] = attrs.Factory(dict)

    def record(self, uid: int) -> SortRecord:
        return self.records.get(uid, _EMPTY)

    def add_message(self, message: IMessage) -> None:
        self.arrival[message.uid] = message.internal_date.timestamp()
        self.size[message.uid] = message.size

    def update(self, other: Keys) -> None:
        self.records.update(other.records)
        self.arrival.update(other.arrival)
        self.size.update(other.size)

    def sent(self, uid: int) -> float:
        """RFC 5256 2.2: the Date header's time, else the INTERNALDATE."""
        date = self.record(uid).date
        return self.arrival.get(uid, 0.0) if date is None else float(date)


def _batches(uids: Sequence[int]) -> Iterable[list[int]]:
    iterator = iter(uids)
    while chunk := list(itertools.islice(iterator, BATCH)):
        yield chunk


def load_keys(
    mailbox: IMailbox,
    uids: Sequence[int],
    records: bool,
    index: bool,
    clock: IReactorTime,
    writer: ResponseWriter,
    known: dict[int, IMessage] | None = None,
) -> defer.Deferred[Keys | None]:
    """Load sort records (``records``) and, if ``index`` or if a record
    lacks a sent date, arrival times and sizes; ``known`` holds metadata
    SEARCH already read.  None if the connection went meanwhile."""
    keys = Keys()
    pause = _Pause(clock, writer)

    def index_part(complete: bool) -> defer.Deferred[bool] | bool:
        if not complete:
            return False
        need = list(uids) if index else [u for u in uids if keys.record(u).date is None]
        missing = []
        for uid in need:
            message = (known or {}).get(uid)
            if message is None:
                missing.append(uid)
            else:
                keys.add_message(message)
        return _load(missing, pause, lambda chunk: _fetch_into(mailbox, chunk, keys))

    d = _load(uids if records else (), pause, lambda chunk: _records_into(mailbox, chunk, keys))
    d.addCallback(index_part)
    return d.addCallback(lambda complete: keys if complete else None)


class _Pause:
    """A reactor turn between batches (not before the first one), so other
    sessions are served while a whole mailbox's keys load."""

    def __init__(self, clock: IReactorTime, writer: ResponseWriter) -> None:
        self.clock = clock
        self.writer = writer
        self.first = True

    def wait(self) -> defer.Deferred[bool]:
        """Fires False if the connection went."""
        if self.first:
            self.first = False
            return defer.succeed(True)
        d: defer.Deferred[None] = task.deferLater(self.clock, 0, lambda: None)
        return d.addCallback(lambda _: not self.writer.closed)


@defer.inlineCallbacks
def _load(
    uids: Sequence[int],
    pause: _Pause,
    load: Callable[[list[int]], defer.Deferred[None]],
) -> Generator[defer.Deferred[Any], Any, bool]:
    for chunk in _batches(uids):
        going = yield pause.wait()
        if not going:
            return False
        yield load(chunk)
    return True


def _records_into(mailbox: IMailbox, chunk: list[int], keys: Keys) -> defer.Deferred[None]:
    d: defer.Deferred[dict[int, SortRecord]] = content.sort_records(mailbox, chunk)
    return d.addCallback(keys.records.update)


def _fetch_into(mailbox: IMailbox, chunk: list[int], keys: Keys) -> defer.Deferred[None]:
    d: defer.Deferred[Sequence[IMessage]] = maybe_deferred(mailbox.fetch, chunk)

    def add(messages: Sequence[IMessage]) -> None:
        for message in messages:
            keys.add_message(message)

    return d.addCallback(add)


def needs(criteria: Sequence[Criterion]) -> tuple[bool, bool]:
    """``(records, index)``: what :func:`load_keys` must load for these."""
    names = {c.key for c in criteria}
    return bool(names & _RECORD_KEYS), bool(names & {"ARRIVAL", "SIZE"})


def key_function(key: str, keys: Keys) -> Callable[[int], Any]:
    """The value a criterion compares, by UID."""
    if key == "ARRIVAL":
        return lambda uid: keys.arrival.get(uid, 0.0)
    if key == "SIZE":
        return lambda uid: keys.size.get(uid, 0)
    if key == "DATE":
        return keys.sent
    attribute = {
        "SUBJECT": "subject",
        "FROM": "from_",
        "TO": "to",
        "CC": "cc",
        "DISPLAYFROM": "display_from",
        "DISPLAYTO": "display_to",
    }[key]
    records = keys.records
    return lambda uid: getattr(records.get(uid, _EMPTY), attribute)


def sort_hits(
    hits: Sequence[tuple[int, int]], criteria: Sequence[Criterion], keys: Keys
) -> list[tuple[int, int]]:
    """``hits`` (``(seq, uid)`` in mailbox order) in the criteria's order."""
    order = list(hits)
    for criterion in reversed(criteria):
        value = key_function(criterion.key, keys)
        order.sort(key=lambda hit: value(hit[1]), reverse=criterion.reverse)
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
