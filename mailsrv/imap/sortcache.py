"""SORT's and THREAD's keys, kept in the process per mailbox as columns.

A warm SORT on a large mailbox must not decode one cached record per
message each time (docs/performance.md, SORT and THREAD): this module keeps,
per mailbox object, one dict per key (a *column*: ``{uid: value}``) filled
once from the storage's cache (:func:`mailsrv.imap.content.sort_records`)
or the index, and reads it on every later command.

Nothing needs invalidating when the mailbox changes: every value here is a
function of the message's bytes, its INTERNALDATE or its size, none of which
may change for a UID while the UIDVALIDITY stays (RFC 3501 2.3.1.1), and
flags are never kept here (the search program reads them from the index
each time).  So:

* new messages (APPEND, COPY, another process's delivery) are simply missing
  from the columns and loaded on first use, batch by batch;
* expunged messages leave entries no answer asks for; a column that
  outgrows the mailbox by an eighth is rebuilt with the view's UIDs only, so
  memory follows the mailbox (:meth:`SortKeyStore.trim`);
* a new UIDVALIDITY drops the whole store.

Beside the columns, the store remembers the last answers to whole-mailbox
SORT and THREAD commands with the view's UIDs they were given over (asked
again with none come or gone, the answer is the same), and for SORT the
order of UIDs, which :mod:`mailsrv.imap.contexts` changes for a few new or
expunged messages instead of sorting everything again.

Only the columns a command needs are filled: SORT (DATE) keeps one float
per message, SORT (SUBJECT) one string (equal subjects share one object);
THREAD adds a tuple of msg-ids.  The store lives as long as the mailbox
object: on Maildir that is shared by all of the process's sessions while
any has the folder open.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import sys
import weakref
from array import array
from collections.abc import Callable, Generator, Hashable, Iterable, Iterator, Sequence
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from mailsrv.imap import content
from mailsrv.imap.output import ResponseWriter
from mailsrv.imap.pacing import Pacer
from mailsrv.imap.selected import UidMap
from mailsrv.imap.sortkeys import SortRecord
from mailsrv.interfaces import IMailbox, IMessage, maybe_deferred

__all__ = [
    "ANSWERS_KEPT",
    "BATCH",
    "COLUMNS",
    "INDEX_COLUMNS",
    "RECORD_COLUMNS",
    "Keys",
    "SortKeyStore",
    "load_keys",
    "no_collection",
    "store_of",
]

#: Messages whose keys are read from storage at once.
BATCH = 500
#: Whole-mailbox answers remembered per mailbox (each one is about 6 bytes
#: per message: a SORT or THREAD of 100,000 messages is some 600 KB).
ANSWERS_KEPT = 4

#: Columns worked out from the message's header (its sort record).  ``sent``
#: is RFC 5256 2.2's sent date, with the INTERNALDATE already put in where
#: the Date header is missing or unreadable; ``thread`` is
#: ``(message_id, references, reply)`` for THREAD.
RECORD_COLUMNS = frozenset(
    {"sent", "subject", "from", "to", "cc", "displayfrom", "displayto", "thread"}
)
#: Columns read from the index: INTERNALDATE (seconds) and size.
INDEX_COLUMNS = frozenset({"arrival", "size"})
COLUMNS = RECORD_COLUMNS | INDEX_COLUMNS

_TEXT = {
    "subject": "subject",
    "from": "from_",
    "to": "to",
    "cc": "cc",
    "displayfrom": "display_from",
    "displayto": "display_to",
}


@contextlib.contextmanager
def no_collection() -> Iterator[None]:
    """Python's cyclic garbage collector held off while a command builds
    100,000 small objects it will keep (THREAD's nodes): each few hundred
    new objects would start a collection, and the older generations'
    collections walk the whole heap, which doubled THREAD's time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class SortKeyStore:
    """One mailbox's columns, for one UIDVALIDITY."""

    __slots__ = ("__weakref__", "answers", "columns", "orders", "uidvalidity")

    def __init__(self, uidvalidity: int) -> None:
        self.uidvalidity = uidvalidity
        self.columns: dict[str, dict[int, Any]] = {}
        #: The last answers to whole-mailbox commands: what was asked ->
        #: (the view's UIDs, the response's data).
        self.answers: dict[Hashable, tuple[bytes, bytes]] = {}
        #: The same SORTs' orders, as UIDs: a SORT after a few new or
        #: expunged messages changes the last order rather than sorting
        #: the whole mailbox again.
        self.orders: dict[Hashable, tuple[UidMap, array[int]]] = {}

    def remembered(self, question: Hashable, uids: UidMap) -> bytes | None:
        """The data answered to ``question`` over exactly these UIDs, if
        it is among the last :data:`ANSWERS_KEPT` answers."""
        found = self.answers.get(question)
        if found is None or found[0] != uids.fingerprint():
            return None
        return found[1]

    def remember(
        self,
        question: Hashable,
        fingerprint: bytes,
        data: bytes,
        order: Sequence[int] = (),
        uids: UidMap | None = None,
    ) -> None:
        """Keep an answer given over the UIDs of ``fingerprint``
        (:meth:`UidMap.fingerprint`, taken before the command read them),
        and for a SORT its order of those UIDs (``uids``)."""
        self.answers.pop(question, None)
        self.orders.pop(question, None)
        self.answers[question] = (fingerprint, data)
        if order and uids is not None:
            self.orders[question] = (uids.copy(), array("I", order))
        while len(self.answers) > ANSWERS_KEPT:
            oldest = next(iter(self.answers))
            del self.answers[oldest]
            self.orders.pop(oldest, None)

    def column(self, name: str) -> dict[int, Any]:
        found = self.columns.get(name)
        if found is None:
            found = self.columns[name] = {}
        return found

    def trim(self, uids: UidMap) -> None:
        """Drop the entries of messages no longer in ``uids`` (the view's)
        once a column has an eighth more entries than that.  Columns are
        replaced, not changed, so a :class:`Keys` handed out keeps its values."""
        limit = len(uids) + len(uids) // 8 + 64
        for name, column in list(self.columns.items()):
            if len(column) > limit:
                self.columns[name] = {u: v for u, v in column.items() if uids.seq(u) is not None}


_stores: weakref.WeakKeyDictionary[Any, SortKeyStore] = weakref.WeakKeyDictionary()


def store_of(mailbox: IMailbox) -> SortKeyStore:
    """The mailbox object's store, new when the UIDVALIDITY changed."""
    uidvalidity = mailbox.uidvalidity
    store = _stores.get(mailbox)
    if store is None or store.uidvalidity != uidvalidity:
        store = _stores[mailbox] = SortKeyStore(uidvalidity)
    return store


class Keys:
    """The columns a command loaded, by name; a column not loaded is empty."""

    __slots__ = ("columns", "complete")

    def __init__(self, columns: dict[str, dict[int, Any]] | None = None) -> None:
        self.columns = dict(columns or {})
        #: False when a message's record could not be read (its file went
        #: meanwhile): the answer used a stand-in and is not remembered.
        self.complete = True

    def column(self, name: str) -> dict[int, Any]:
        return self.columns.get(name) or {}

    def update(self, other: Keys) -> None:
        """Take ``other``'s values (an UPDATE context's new messages)."""
        for name, values in other.columns.items():
            mine = self.columns.get(name)
            if mine is None:
                self.columns[name] = values
            elif mine is not values:
                merged = dict(mine)
                merged.update(values)
                self.columns[name] = merged

    def sent(self, uid: int) -> float:
        """RFC 5256 2.2: the Date header's time, else the INTERNALDATE (0
        for a message whose file and index row are both gone)."""
        value: float | None = self.column("sent").get(uid)
        if value is None:
            arrival: float = self.column("arrival").get(uid, 0.0)
            return arrival
        return value

    def text(self, name: str, uid: int) -> str:
        value: str = self.column(name).get(uid, "")
        return value

    def thread(self, uid: int) -> tuple[str, tuple[str, ...], bool]:
        value: tuple[str, tuple[str, ...], bool] = self.column("thread").get(uid, _NO_THREAD)
        return value


_NO_THREAD: tuple[str, tuple[str, ...], bool] = ("", (), False)


def _intern(text: str) -> str:
    # Equal subjects and addresses share one object; a msg-id is the same
    # object in its message's entry and in its replies' references.
    return sys.intern(text) if text else ""


def _fill(columns: dict[str, dict[int, Any]], uid: int, record: SortRecord) -> bool:
    """Put one record's values in the columns; False when ``sent`` still
    needs the INTERNALDATE."""
    dated = True
    for name, column in columns.items():
        if name == "sent":
            if record.date is None:
                dated = False
            else:
                column[uid] = float(record.date)
        elif name == "thread":
            references = tuple(_intern(r) for r in record.references)
            column[uid] = (_intern(record.message_id), references, record.reply)
        else:
            column[uid] = _intern(getattr(record, _TEXT[name]))
    return dated


def load_keys(
    mailbox: IMailbox,
    uids: Sequence[int],
    names: Iterable[str],
    clock: IReactorTime,
    writer: ResponseWriter,
    known: dict[int, IMessage] | None = None,
) -> defer.Deferred[Keys | None]:
    """The columns ``names`` for ``uids``, loading what the mailbox's store
    lacks (``known``: metadata SEARCH already read).  None if the
    connection went meanwhile."""
    return _Loader(mailbox, uids, frozenset(names), known or {}).run(_Pause(clock, writer))


class _Loader:
    """One :func:`load_keys`: records first, then the index, then dates."""

    def __init__(
        self,
        mailbox: IMailbox,
        uids: Sequence[int],
        wanted: frozenset[str],
        known: dict[int, IMessage],
    ) -> None:
        self.mailbox = mailbox
        self.uids = uids
        self.wanted = wanted
        self.known = known
        store = store_of(mailbox)
        # The columns are taken once: if :meth:`SortKeyStore.trim` replaces
        # one between batches, this command goes on with the one it has.
        self.arrival, self.size = store.column("arrival"), store.column("size")
        self.keys = Keys({n: store.column(n) for n in wanted})
        if "sent" in wanted:
            # The INTERNALDATE is what ``sent`` falls back on (RFC 5256 2.2).
            self.keys.columns["arrival"] = self.arrival
        self.record_columns = {n: self.keys.columns[n] for n in wanted & RECORD_COLUMNS}
        #: Records without a usable Date, and messages whose record could
        #: not be read (the file went): both need the INTERNALDATE now.
        self.dateless: list[int] = []
        self.unread: list[int] = []

    @defer.inlineCallbacks
    def run(self, pause: _Pause) -> Generator[defer.Deferred[Any], Any, Keys | None]:
        missing = _missing(self.uids, self.record_columns.values())
        complete = yield _load(missing, pause, self._records_into)
        if complete:
            complete = yield _load(self._index_needed(), pause, self._fetch_into)
        if not complete:
            return None
        self.keys.complete = not self.unread
        if "sent" in self.wanted:
            sent = self.keys.columns["sent"]
            for uid in self.dateless:
                if uid in self.arrival:
                    sent[uid] = self.arrival[uid]
        return self.keys

    def _records_into(self, chunk: list[int]) -> defer.Deferred[None]:
        d: defer.Deferred[dict[int, SortRecord]] = content.sort_records(self.mailbox, chunk)

        def fill(records: dict[int, SortRecord]) -> None:
            for uid in chunk:
                record = records.get(uid)
                if record is None:
                    self.unread.append(uid)  # nothing kept: tried again next time
                elif not _fill(self.record_columns, uid, record):
                    self.dateless.append(uid)

        return d.addCallback(fill)

    def _index_needed(self) -> list[int]:
        """UIDs to fetch from the index; those SEARCH read are added now."""
        need = set(self.dateless + self.unread) if "sent" in self.wanted else set()
        for name in self.wanted & INDEX_COLUMNS:
            column = self.keys.columns[name]
            need.update(u for u in self.uids if u not in column)
        fetched: list[int] = []
        for uid in sorted(need):
            message = self.known.get(uid)
            if message is None:
                fetched.append(uid)
            else:
                self._add(message)
        return fetched

    def _fetch_into(self, chunk: list[int]) -> defer.Deferred[None]:
        d: defer.Deferred[Sequence[IMessage]] = maybe_deferred(self.mailbox.fetch, chunk)

        def add(messages: Sequence[IMessage]) -> None:
            for message in messages:
                self._add(message)

        return d.addCallback(add)

    def _add(self, message: IMessage) -> None:
        self.arrival[message.uid] = message.internal_date.timestamp()
        self.size[message.uid] = message.size


def _missing(uids: Sequence[int], columns: Iterable[dict[int, Any]]) -> list[int]:
    """The UIDs some column lacks, in the order given."""
    columns = list(columns)
    if not columns:
        return []
    if len(columns) == 1:
        only = columns[0]
        return [u for u in uids if u not in only]
    return [u for u in uids if any(u not in c for c in columns)]


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
    """Load in batches of at most :data:`BATCH`, sized by what they cost
    (:class:`~mailsrv.imap.pacing.Pacer`): records worked out from the
    files take a millisecond or more each, and 500 at once held the
    reactor most of a second (bench/pathological.py, sort-subject)."""
    iterator = iter(uids)
    pacer = Pacer(BATCH)
    while True:
        going = yield pause.wait()
        if not going:
            return False
        chunk = list(itertools.islice(iterator, pacer.next_size()))
        if not chunk:
            return True
        yield load(chunk)
        pacer.done(len(chunk))
