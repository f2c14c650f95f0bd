"""Results as a whole: SORT and ESORT (RFC 5256, 5267 3), SEARCH and SORT
contexts (RFC 5267 4: PARTIAL, CONTEXT, UPDATE), and THREAD's matches.

:func:`matches` runs a search program and, with criteria, sorts what it
found (:mod:`mailsrv.imap.sorting`); :func:`answer` writes a plain
``* SORT`` response or an ESEARCH one (MIN, MAX, COUNT, ALL, PARTIAL, and
SAVE's ``$``), and registers an :class:`UpdateContext` for UPDATE.

UPDATE contexts live in the session's selected view
(:attr:`mailsrv.imap.selected.SelectedMailbox.watcher` is a
:class:`Contexts`): when the view turns queued changes into responses it
asks the contexts first which results lose expunged messages (REMOVEFROM
goes out before the EXPUNGE, RFC 5267 4.3.4), and after EXISTS and FETCH
re-runs the program over the new and changed messages (ADDTO after the
EXISTS, 4.3.3).  A SEARCH context reports position 0 in mailbox order; a
SORT context the positions in its order, kept by inserting with the same
comparison the sort used.
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from mailsrv.imap import sorting
from mailsrv.imap.budget import CommandBudget, check_content_keys
from mailsrv.imap.output import Done, ResponseWriter, bad, no
from mailsrv.imap.search_syntax import SearchKey, partial_range
from mailsrv.imap.searching import (
    CHARSETS,
    NotImplementedKey,
    Program,
    collect,
    compile_key,
    matches_of,
)
from mailsrv.imap.selected import SelectedMailbox, UidMap
from mailsrv.imap.sortcache import no_collection, store_of
from mailsrv.imap.syntax import SequenceSet
from mailsrv.interfaces import IMessage

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["MAX_CONTEXTS", "Contexts", "Query", "UpdateContext", "answer", "matches"]

#: UPDATE contexts one session may have at once; one more is refused with
#: ``NO [NOUPDATE]`` (RFC 5267 4.3.1 asks for at least one).
MAX_CONTEXTS = 8
#: Bytes of a ``* SORT`` or ``* THREAD`` line written at once.
_BYTES_PER_WRITE = 16384

Hits = list[tuple[int, int]]


@attrs.frozen
class Query:
    """A searching command: SEARCH or SORT with its RETURN options."""

    tag: str
    uid: bool
    key: SearchKey
    charset: str | None
    #: None: SEARCH, in mailbox order.
    criteria: tuple[sorting.Criterion, ...] | None = None
    #: None: a plain SORT (``* SORT`` response); else the RETURN options.
    options: tuple[str, ...] | None = None

    @property
    def update(self) -> bool:
        return self.options is not None and "UPDATE" in self.options


def check_charset(charset: str | None) -> None:
    if charset not in (None, *CHARSETS):
        raise no(f"Charset {charset} is not supported", f"BADCHARSET ({' '.join(CHARSETS)})")


def compile_program(key: SearchKey, view: SelectedMailbox, charset: str | None) -> Program:
    """The program, or the NO/BAD SEARCH gives for keys not offered."""
    try:
        return compile_key(key, view, charset)
    except NotImplementedKey as e:
        if str(e) == "MODSEQ":
            raise bad("SEARCH MODSEQ needs CONDSTORE, which is not offered") from None
        raise no(f"SEARCH {e} is not supported", "CANNOT") from None


def pin_sequence_numbers(key: SearchKey, view: SelectedMailbox) -> SearchKey:
    """``key`` with sequence sets turned into the UIDs they name now: an
    UPDATE context keeps the messages its numbers named when the command
    was received (RFC 5267 4.3, RFC 3501 errata)."""
    if key.op == "SEQ":
        sequence_set = key.args[0]
        assert isinstance(sequence_set, SequenceSet)
        if sequence_set.saved:
            return key
        ranges: list[tuple[int, int]] = []
        for low, high in sequence_set.resolve(view.exists):
            for _, uid in view.map.by_seq(low, high):
                if ranges and ranges[-1][1] == uid - 1:
                    ranges[-1] = (ranges[-1][0], uid)  # runs, not one range per UID
                else:
                    ranges.append((uid, uid))
        # No UID is 0, so an empty set matches nothing.
        return SearchKey("UID", (SequenceSet(tuple(ranges) or ((0, 0),)),))
    if key.op in ("AND", "OR", "NOT"):
        return SearchKey(
            key.op,
            tuple(pin_sequence_numbers(k, view) for k in key.args),  # type: ignore[arg-type]
        )
    return key


@defer.inlineCallbacks
def matches(
    session: Session,
    program: Program,
    key: SearchKey,
    criteria: Sequence[sorting.Criterion] | None,
    extra_columns: frozenset[str] = frozenset(),
) -> Generator[defer.Deferred[Any], Any, tuple[Hits, sorting.Keys] | None]:
    """What the program matches as ``(seq, uid)``, sorted by ``criteria``
    (mailbox order when None), and the key columns loaded for them (also
    ``extra_columns``: THREAD's).  None if the connection went."""
    view = session.view()
    writer, clock = session.output(), session.clock
    check_content_keys(key, session.policy.max_search_content_keys)
    program.budget = CommandBudget(session.policy.command_cpu_seconds)
    known: dict[int, IMessage] | None = None
    if key.op == "ALL":
        with no_collection():
            hits: Hits | None = list(view.map.by_seq(1, view.exists))
    else:
        known = {}
        hits = yield collect(view, view.mailbox, program, writer, clock, known)
    if hits is None:
        return None
    columns = sorting.needs(criteria or ()) | extra_columns
    keys = sorting.Keys()
    if columns:
        uids = [uid for _, uid in hits]
        loaded = yield sorting.load_keys(view.mailbox, uids, columns, clock, writer, known)
        if loaded is None:
            return None
        keys = loaded
        store_of(view.mailbox).trim(view.map)
    if criteria:
        with no_collection():
            hits = sorting.sort_hits(hits, criteria, keys)
    return hits, keys


def response_data(numbers: Sequence[int]) -> bytes:
    """Numbers separated by spaces, as SORT's response carries them."""
    return " ".join(map(str, numbers)).encode("ascii")


def write_line(writer: ResponseWriter, head: bytes, data: bytes) -> defer.Deferred[None]:
    """``head`` and ``data`` (a SORT or THREAD response of maybe 100,000
    numbers) written in pieces while the client reads."""

    @defer.inlineCallbacks
    def write() -> Generator[defer.Deferred[Any], Any, None]:
        writer.write(head + b" " if data else head)
        for start in range(0, len(data), _BYTES_PER_WRITE):
            if writer.paused:
                yield writer.ready()
            writer.write(data[start : start + _BYTES_PER_WRITE])
        writer.write(b"\r\n")

    return write()


def esearch(tag: str, uid: bool, numbers: Sequence[int], options: Sequence[str]) -> bytes:
    """The ESEARCH response (RFC 4731, RFC 5267) for ``numbers`` in the
    requested order: MIN and MAX are the first and last of that order."""
    reported = set(options) - {"SAVE", "CONTEXT", "UPDATE"}
    if not options:
        reported = {"ALL"}
    parts = [b'* ESEARCH (TAG "%s")' % tag.encode("ascii")]
    if uid:
        parts.append(b"UID")
    if numbers and "MIN" in reported:
        parts.append(b"MIN %d" % numbers[0])
    if numbers and "MAX" in reported:
        parts.append(b"MAX %d" % numbers[-1])
    if "COUNT" in reported:
        parts.append(b"COUNT %d" % len(numbers))
    if numbers and "ALL" in reported:
        parts.append(b"ALL " + sorting.sequence_set(numbers))
    span = partial_range(tuple(options))
    if span is not None:
        low, high = span
        piece = numbers[low - 1 : high]
        # RFC 5267 4.4: the range asked for, and NIL past the end.
        shown = sorting.sequence_set(piece) if piece else b"NIL"
        parts.append(b"PARTIAL (%d:%d %s)" % (low, high, shown))
    return b" ".join(parts) + b"\r\n"


def saved(uids: Sequence[int], options: Sequence[str]) -> list[int]:
    """``$`` for SAVE (RFC 5182 2.4): with only MIN and/or MAX beside it,
    just those messages; otherwise all found, in mailbox order."""
    chosen = set(options)
    if uids and not chosen & {"ALL", "COUNT"} and chosen & {"MIN", "MAX"}:
        ends = set()
        if "MIN" in chosen:
            ends.add(uids[0])
        if "MAX" in chosen:
            ends.add(uids[-1])
        return sorted(ends)
    return sorted(uids)


@defer.inlineCallbacks
def _plain_sort(
    session: Session, query: Query, key: SearchKey, program: Program
) -> Generator[defer.Deferred[Any], Any, Done]:
    """``* SORT``.  A SORT of the whole mailbox asked again with no message
    come or gone has the answer it had (keys never change for a UID); with
    a few come or gone, the last order is changed rather than made anew."""
    view = session.view()
    writer = session.output()
    question = ("SORT", query.uid, query.criteria)
    whole = key.op == "ALL"
    store = store_of(view.mailbox)
    fingerprint = view.map.fingerprint()
    order: list[int] | None = None
    if whole:
        data = store.remembered(question, view.map)
        if data is not None:
            yield write_line(writer, b"* SORT", data)
            return Done(text="SORT completed")
        order = yield _changed_order(session, question, query.criteria or ())
    if order is None:
        found = yield matches(session, program, key, query.criteria)
        if found is None:
            return Done("NO", "Connection lost")
        hits, keys = found
        numbers = [uid if query.uid else seq for seq, uid in hits]
        complete = keys.complete
        if whole:
            order = [uid for _, uid in hits]
    else:
        numbers = order if query.uid else _sequence_numbers(view.map, order)
        complete = True
    data = response_data(numbers)
    if whole and complete and view.map.fingerprint() == fingerprint:
        store.remember(question, fingerprint, data, order or (), view.map)
    yield write_line(writer, b"* SORT", data)
    return Done(text="SORT completed")


#: New messages put in the last order one by one; beyond, all is sorted anew.
_INSERTED_AT_MOST = 500


@defer.inlineCallbacks
def _changed_order(
    session: Session, question: Any, criteria: Sequence[sorting.Criterion]
) -> Generator[defer.Deferred[Any], Any, list[int] | None]:
    """The whole view's UIDs in the criteria's order, from the last order
    remembered for ``question``: expunged UIDs left out, new ones (above
    all it had) inserted.  None when there is none, too much is new, or a
    key is missing (then the caller sorts everything)."""
    view = session.view()
    store = store_of(view.mailbox)
    remembered = store.orders.get(question)
    if remembered is None:
        return None
    before, previous = remembered
    last = before.last_uid
    new = [
        uid
        for low, high in view.map.ranges()
        if high > last
        for uid in range(max(low, last + 1), high + 1)
    ]
    if len(new) > _INSERTED_AT_MOST:
        return None
    keys = yield sorting.load_keys(
        view.mailbox, new, sorting.needs(criteria), session.clock, session.output()
    )
    if keys is None or not keys.complete or store.orders.get(question) is not remembered:
        return None
    grown = before.copy()
    grown.extend(new)
    if grown.fingerprint() == view.map.fingerprint():
        kept = list(previous)  # nothing expunged: every UID stays
    else:
        with no_collection():
            present = set(view.map)
            kept = [uid for uid in previous if uid in present]
        if len(kept) + len(new) != len(view.map):
            return None  # the view has a UID the last order lacked
    try:
        return sorting.insert_sorted(kept, new, criteria, keys)
    except KeyError:
        return None  # a value was trimmed meanwhile


def _sequence_numbers(uids: UidMap, order: Sequence[int]) -> list[int]:
    ranges = uids.ranges()
    if len(ranges) == 1:
        # One run of UIDs (nothing expunged inside it): arithmetic.
        shift = ranges[0][0] - 1
        return [uid - shift for uid in order]
    seq = dict(zip(uids, range(1, len(uids) + 1), strict=True))
    return [seq[uid] for uid in order]


@defer.inlineCallbacks
def answer(session: Session, query: Query, verb: str) -> Generator[defer.Deferred[Any], Any, Done]:
    """Run a SORT, or a SEARCH with RFC 5267 options, and answer it."""
    check_charset(query.charset)
    view = session.view()
    if query.update:
        contexts = Contexts.of(view, session.clock)
        if query.tag in contexts.active:
            raise bad(f"Tag reuse: {query.tag} already has an UPDATE context (RFC 5267 4.3)")
    key = pin_sequence_numbers(query.key, view) if query.update else query.key
    program = compile_program(key, view, query.charset)
    if query.options is None:
        plain: Done = yield _plain_sort(session, query, key, program)
        return plain
    found = yield matches(session, program, key, query.criteria)
    if found is None:
        return Done("NO", "Connection lost")
    hits, keys = found
    numbers = [uid if query.uid else seq for seq, uid in hits]
    writer = session.output()
    done = Done(text=f"{verb} completed")
    if "SAVE" in query.options:
        view.saved = UidMap(saved([uid for _, uid in hits], query.options))
    reported = set(query.options) - {"SAVE", "CONTEXT", "UPDATE"}
    if reported or "SAVE" not in query.options:
        writer.write(esearch(query.tag, query.uid, numbers, query.options))
    if query.update:
        contexts = Contexts.of(view, session.clock)
        if len(contexts.active) >= MAX_CONTEXTS:
            writer.write(b'* NO [NOUPDATE "%s"] Too many contexts\r\n' % query.tag.encode())
        else:
            context = UpdateContext(query.tag, query.uid, program, query.criteria, keys)
            context.start([uid for _, uid in hits])
            contexts.active[query.tag] = context
    return done


class UpdateContext:
    """One UPDATE context: the program and the result it keeps current."""

    def __init__(
        self,
        tag: str,
        uid: bool,
        program: Program,
        criteria: Sequence[sorting.Criterion] | None,
        keys: sorting.Keys,
    ) -> None:
        self.tag = tag
        self.uid = uid
        self.program = program
        self.criteria = tuple(criteria) if criteria else None
        self.keys = keys
        #: The result's UIDs, in the requested order.
        self.order: list[int] = []
        self.members: set[int] = set()

    def start(self, uids: Sequence[int]) -> None:
        self.order = list(uids)
        self.members = set(uids)

    def _sort_key(self) -> Any:
        """The sort's comparison as a key for bisecting the order."""
        criteria = self.criteria or ()
        values = [(sorting.key_function(c.key, self.keys), c.reverse) for c in criteria]

        def compare(a: int, b: int) -> int:
            for value, reverse in values:
                x, y = value(a), value(b)
                if x != y:
                    result = -1 if x < y else 1
                    return -result if reverse else result
            return -1 if a < b else (1 if a > b else 0)

        return functools.cmp_to_key(compare)

    def _number(self, view: SelectedMailbox, uid: int) -> int:
        return uid if self.uid else (view.map.seq(uid) or 0)

    def remove(self, view: SelectedMailbox, gone: Sequence[int]) -> bytes:
        """REMOVEFROM for ``gone`` (members), numbered as the view has them now."""
        pairs: list[bytes] = []
        if self.criteria is None:
            numbers = sorted(self._number(view, uid) for uid in gone)
            pairs.append(b"0 " + sorting.sequence_set(numbers))
        else:
            for uid in sorted(gone, key=self.order.index):
                position = self.order.index(uid) + 1
                pairs.append(b"%d %d" % (position, self._number(view, uid)))
                self.order.pop(position - 1)
        if self.criteria is None:
            dropped = set(gone)
            self.order = [u for u in self.order if u not in dropped]
        self.members.difference_update(gone)
        return self._line(b"REMOVEFROM", pairs)

    def add(self, view: SelectedMailbox, new: Sequence[int]) -> bytes:
        """ADDTO for ``new`` (not members), numbered as the view has them now."""
        pairs: list[bytes] = []
        self.members.update(new)
        if self.criteria is None:
            self.order = sorted(self.order + list(new))
            numbers = sorted(self._number(view, uid) for uid in new)
            pairs.append(b"0 " + sorting.sequence_set(numbers))
        else:
            key = self._sort_key()
            for uid in sorted(new):
                position = bisect_left(self.order, key(uid), key=key)
                self.order.insert(position, uid)
                pairs.append(b"%d %d" % (position + 1, self._number(view, uid)))
        return self._line(b"ADDTO", pairs)

    def _line(self, item: bytes, pairs: list[bytes]) -> bytes:
        uid = b" UID" if self.uid else b""
        tag = self.tag.encode("ascii")
        return b'* ESEARCH (TAG "%s")%s %s (%s)\r\n' % (tag, uid, item, b" ".join(pairs))


class Contexts:
    """A view's UPDATE contexts, told of its changes (the view's watcher)."""

    def __init__(self, view: SelectedMailbox, clock: IReactorTime) -> None:
        self.view = view
        self.clock = clock
        self.active: dict[str, UpdateContext] = {}

    @classmethod
    def of(cls, view: SelectedMailbox, clock: IReactorTime) -> Contexts:
        """The view's contexts, made on first use."""
        watcher = view.watcher
        if not isinstance(watcher, Contexts):
            watcher = cls(view, clock)
            view.watcher = watcher
        return watcher

    def expunging(self, uids: set[int]) -> list[bytes]:
        """REMOVEFROM for messages about to be announced expunged, while
        their sequence numbers are still valid (RFC 5267 4.3.4)."""
        lines = []
        for context in self.active.values():
            gone = [uid for uid in uids if uid in context.members]
            if gone:
                lines.append(context.remove(self.view, gone))
        return lines

    def changed(self, uids: Sequence[int]) -> defer.Deferred[list[bytes]]:
        """ADDTO/REMOVEFROM for new messages and changed flags."""
        if not self.active or not uids:
            return defer.succeed([])
        return self._changed(list(uids))

    @defer.inlineCallbacks
    def _changed(self, uids: list[int]) -> Generator[defer.Deferred[Any], Any, list[bytes]]:
        view = self.view
        messages: Sequence[IMessage] = yield defer.maybeDeferred(view.mailbox.fetch, uids)
        batch = sorted((seq, m) for m in messages if (seq := view.map.seq(m.uid)) is not None)
        lines: list[bytes] = []
        for context in list(self.active.values()):
            hits = yield matches_of(view.mailbox, context.program, batch)
            now = {uid for _, uid in hits}
            checked = {m.uid for _, m in batch}
            gone = [uid for uid in checked - now if uid in context.members]
            if gone:
                lines.append(context.remove(view, gone))
            new = sorted(uid for uid in now if uid not in context.members)
            if new:
                if context.criteria is not None:
                    loaded = yield sorting.load_keys(
                        view.mailbox, new, sorting.needs(context.criteria), self.clock, _OPEN
                    )
                    if loaded is not None:
                        context.keys.update(loaded)
                lines.append(context.add(view, new))
        return lines


class _Open:
    """The writer :func:`sorting.load_keys` checks between batches: updates
    are computed whether or not a command is writing."""

    closed = False


_OPEN: Any = _Open()
