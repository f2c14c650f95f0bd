"""SEARCH keys answered by the storage's index (:class:`IIndexSearch`).

A search program's keys on flags, sizes, internal dates, sequence numbers,
UIDs and MODSEQs, and AND/OR/NOT of them, need nothing the index lacks.
When the selected mailbox declares :class:`~mailsrv.interfaces.IIndexSearch`,
:func:`plan` turns that part of the program into
:mod:`mailsrv.criteria` (sequence numbers, ``$`` and ``\\Recent`` become the
UIDs they name in this session's view) and :func:`scan` asks the storage
for the UIDs matching it, in slices of the view, so ``SEARCH UNSEEN`` over
100,000 messages is a few queries and no metadata object per message.  The
rest of the program (headers, text, ...) is compiled on its own and run by
the usual passes (:mod:`mailsrv.imap.searching`) over those candidates only.

HEADER, SUBJECT, FROM, TO, CC and BCC keys among a top-level AND go to a
mailbox that also declares :class:`~mailsrv.interfaces.ICachedSearch`:
it finds the needle in each message's cached decoded, case-folded field
(:func:`mailsrv.imap.content.folded_values`) with one query per slice, and
only messages whose value is not cached yet are worked out here (then
cached for the next search).

The answer is the plain matcher's: the candidates are intersected with the
view (a message another session added is not in it yet; one it expunged but
this session was not told of is in the view but no longer in the index, so
neither path reports it), and the residual program decides the rest.
"""

from __future__ import annotations

import datetime
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast, overload

import attrs
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from mailsrv import criteria
from mailsrv.imap import content
from mailsrv.imap.budget import CommandBudget
from mailsrv.imap.output import ResponseWriter
from mailsrv.imap.pacing import Pacer
from mailsrv.imap.search_syntax import SearchKey
from mailsrv.imap.selected import SelectedMailbox
from mailsrv.imap.syntax import SequenceSet
from mailsrv.imap.uidmap import UidMap, runs
from mailsrv.interfaces import ICachedSearch, IIndexSearch, IMailbox, IMessage

if TYPE_CHECKING:
    from mailsrv.imap.searching import Program

__all__ = ["Folded", "Numbered", "Plan", "plan", "scan", "split"]

#: Messages of the view one index query covers: the reactor gets a turn
#: between slices, so a search of a huge mailbox does not hold it.
SLICE = 25_000

_ALL = SearchKey("ALL")

#: ``(mailbox, program, batch) -> Deferred of (seq, uid) hits``
Matcher = Callable[
    [IMailbox, "Program", Sequence[tuple[int, IMessage]]], "defer.Deferred[list[tuple[int, int]]]"
]
#: ``(key, view, charset, now) -> Program``
Compiler = Callable[
    [SearchKey, SelectedMailbox, "str | None", "datetime.datetime | None"], "Program"
]


@attrs.frozen
class Folded:
    """A HEADER or address key the storage's cache answers
    (:class:`~mailsrv.interfaces.ICachedSearch`)."""

    name: str  # the field, upper-cased
    address: bool  # FROM, TO, CC or BCC: matched in the address texts
    needle: bytes  # case folded, UTF-8; never holds LF

    @property
    def kind(self) -> str:
        return content.folded_kind(self.name, self.address)

    def test(self, value: bytes) -> bool:
        """The key on one message's folded value (as the storage tests it)."""
        return self.needle in value if self.needle else bool(value)


@attrs.frozen
class Plan:
    """What the index answers, and the program for what it cannot."""

    #: None: no index key (the folded keys alone choose the candidates).
    pushed: criteria.Criterion | None
    #: None: the index and the cache answer the whole program.
    rest: Program | None
    folded: tuple[Folded, ...] = ()


def _uid_ranges(ranges: Sequence[tuple[int, int]]) -> criteria.UidIn:
    return criteria.UidIn(tuple((low, high) for low, high in ranges if low <= high))


def _sequence_set(key: SearchKey, view: SelectedMailbox) -> criteria.Criterion:
    sequence_set = cast(SequenceSet, key.args[0])
    if sequence_set.saved:
        # "$" names messages, whether used as SEQ or UID (RFC 5182 2.1).
        return _uid_ranges(view.saved.ranges())
    if key.op == "UID":
        return _uid_ranges(sequence_set.resolve(view.map.last_uid))
    # Sequence numbers name the view's messages; UIDs ascend with them, so
    # seq low..high are the view's UIDs from uid(low) to uid(high).  The
    # candidates are intersected with the view afterwards.
    spans = []
    for low, high in sequence_set.resolve(view.exists):
        low, high = max(low, 1), min(high, view.exists)
        if low <= high:
            spans.append((view.map.uid(low), view.map.uid(high)))
    return _uid_ranges(spans)


def _flag(key: SearchKey, view: SelectedMailbox) -> criteria.Criterion:
    name, present = cast(str, key.args[0]), bool(key.args[1])
    test: criteria.Criterion
    if name == "\\Recent":
        # Session state, never stored: the UIDs this session holds as recent.
        test = _uid_ranges(runs(sorted(view.recent)))
    else:
        test = criteria.Flag(name)
    return test if present else criteria.Not(test)


def _combined(key: SearchKey, view: SelectedMailbox) -> criteria.Criterion | None:
    parts = [to_criterion(cast(SearchKey, k), view) for k in key.args]
    if any(p is None for p in parts):
        return None
    found = tuple(cast(criteria.Criterion, p) for p in parts)
    if key.op == "NOT":
        return criteria.Not(found[0])
    return criteria.And(found) if key.op == "AND" else criteria.Or(found)


def _day(key: SearchKey, view: SelectedMailbox) -> criteria.Criterion:
    op = cast(Literal["BEFORE", "ON", "SINCE"], key.op)
    return criteria.InternalDay(op, cast(datetime.date, key.args[0]))


#: Search key op -> its criteria; the ops not here need more than the index.
_CONVERTERS: dict[str, Callable[[SearchKey, SelectedMailbox], criteria.Criterion | None]] = {
    **dict.fromkeys(("AND", "OR", "NOT"), _combined),
    "ALL": lambda key, view: criteria.And(()),
    "FLAG": _flag,
    "SEQ": _sequence_set,
    "UID": _sequence_set,
    "LARGER": lambda key, view: criteria.Larger(cast(int, key.args[0])),
    "SMALLER": lambda key, view: criteria.Smaller(cast(int, key.args[0])),
    **dict.fromkeys(("BEFORE", "ON", "SINCE"), _day),
    "MODSEQ": lambda key, view: criteria.ModseqAtLeast(cast(int, key.args[0])),
}


def to_criterion(key: SearchKey, view: SelectedMailbox) -> criteria.Criterion | None:
    """``key`` as index criteria, or None if some part needs more than the index."""
    convert = _CONVERTERS.get(key.op)
    return None if convert is None else convert(key, view)


def to_folded(key: SearchKey, charset: str | None) -> Folded | None:
    """``key`` as a test on a cached folded field, if it is a HEADER or
    address key whose needle holds no LF (the folded value separates a
    field's occurrences with LF, so such a needle is left to the matcher)."""
    if key.op not in ("HEADER", "ADDRESS"):
        return None
    from mailsrv.imap.searching import needle_of  # searching imports this module

    needle = needle_of(key.args[1], charset)
    if "\n" in needle:
        return None
    # The matcher's str needle and folded value, as UTF-8: a substring of
    # one is a substring of the other (UTF-8 is self-synchronising).
    return Folded(cast(str, key.args[0]), key.op == "ADDRESS", needle.encode("utf-8"))


def split(
    key: SearchKey, view: SelectedMailbox, charset: str | None = None, cached: bool = False
) -> tuple[criteria.Criterion | None, SearchKey, tuple[Folded, ...]]:
    """The index's part of ``key``, the rest (``ALL`` when nothing is
    left) and, with ``cached``, the keys the cache answers: a top-level
    AND is split by its keys; any other key goes whole."""
    keys = key.args if key.op == "AND" else (key,)
    pushed: list[criteria.Criterion] = []
    folded: list[Folded] = []
    rest: list[SearchKey] = []
    for part in keys:
        part = cast(SearchKey, part)
        found = to_criterion(part, view)
        if found is not None:
            pushed.append(found)
            continue
        test = to_folded(part, charset) if cached else None
        if test is not None:
            folded.append(test)
        else:
            rest.append(part)
    if not pushed and not folded:
        return None, key, ()
    left = _ALL if not rest else rest[0] if len(rest) == 1 else SearchKey("AND", tuple(rest))
    if not pushed:
        return None, left, tuple(folded)
    return (pushed[0] if len(pushed) == 1 else criteria.And(tuple(pushed))), left, tuple(folded)


def plan(
    view: SelectedMailbox, mailbox: IMailbox, program: Program, compile_key: Compiler
) -> Plan | None:
    """How to run ``program`` with the index's help; None when the mailbox
    cannot answer criteria or no part of the program is for it.  The rest
    is compiled by ``compile_key`` with the program's charset and clock."""
    if program.source is None or not IIndexSearch.providedBy(mailbox):
        return None
    key, charset, now = program.source
    pushed, rest, folded = split(key, view, charset, ICachedSearch.providedBy(mailbox))
    if pushed is None and not folded:
        return None
    return Plan(pushed, None if rest == _ALL else compile_key(rest, view, charset, now), folded)


class Numbered(Sequence[tuple[int, int]]):
    """``(seq, uid)`` pairs kept as two lists, so the hits of an index-only
    search (30,000 for ``SEARCH UNSEEN`` on 100,000 messages) cost no tuple
    each: a caller wanting one side takes :attr:`seqs` or :attr:`uids`."""

    __slots__ = ("seqs", "uids")

    def __init__(self, seqs: list[int], uids: list[int]) -> None:
        self.seqs = seqs
        self.uids = uids

    def __len__(self) -> int:
        return len(self.seqs)

    @overload
    def __getitem__(self, index: int) -> tuple[int, int]: ...

    @overload
    def __getitem__(self, index: slice) -> Numbered: ...

    def __getitem__(self, index: int | slice) -> tuple[int, int] | Numbered:
        if isinstance(index, slice):
            return Numbered(self.seqs[index], self.uids[index])
        return self.seqs[index], self.uids[index]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.seqs, self.uids, strict=True)


def _numbered(
    view_runs: Sequence[tuple[int, int, int]], starts: Sequence[int], uids: Sequence[int]
) -> Numbered:
    """``(seq, uid)`` of the ascending ``uids`` that are in the view, whose
    runs are ``(first uid, last uid, messages before the run)``."""
    out = Numbered([], [])
    if not uids:
        return out
    run = max(bisect_right(starts, uids[0]) - 1, 0)
    last = uids[-1]
    while run < len(view_runs) and view_runs[run][0] <= last:
        first, end, before = view_runs[run]
        i, j = bisect_left(uids, first), bisect_right(uids, end)
        if i < j:
            shift = before + 1 - first
            if i == 0 and j == len(uids) and not out.uids:
                # One run holds them all (the usual case): no copy, and
                # where sequence numbers are the UIDs, one list for both.
                whole = list(uids) if not isinstance(uids, list) else uids
                return Numbered(whole if not shift else list(map(shift.__add__, whole)), whole)
            part = uids[i:j]
            out.seqs.extend(map(shift.__add__, part))  # in C
            out.uids.extend(part)
        run += 1
    return out


def _runs_of(uid_map: UidMap) -> list[tuple[int, int, int]]:
    found = []
    before = 0
    for first, end in uid_map.ranges():
        found.append((first, end, before))
        before += end - first + 1
    return found


@defer.inlineCallbacks
def _candidates(
    mailbox: IMailbox,
    chosen: Plan,
    low: int,
    high: int,
    clock: IReactorTime,
    pacer: Pacer,
    budget: CommandBudget | None,
) -> Generator[defer.Deferred[Any], Any, Sequence[int]]:
    """The index's and the cache's answer among UIDs ``low..high``."""
    found: Sequence[int] | None = None
    if chosen.pushed is not None:
        sliced = criteria.And((criteria.UidIn(((low, high),)), chosen.pushed))
        found = yield defer.maybeDeferred(IIndexSearch(mailbox).search_index, sliced)
    for test in chosen.folded:
        if found is not None and not found:
            break
        matched = yield _folded_matches(mailbox, test, low, high, found, clock, pacer, budget)
        found = matched if found is None else sorted(set(found).intersection(matched))
    return found or ()


@defer.inlineCallbacks
def _folded_matches(
    mailbox: IMailbox,
    test: Folded,
    low: int,
    high: int,
    within: Sequence[int] | None,
    clock: IReactorTime,
    pacer: Pacer,
    budget: CommandBudget | None,
) -> Generator[defer.Deferred[Any], Any, list[int]]:
    """UIDs ``low..high`` whose field matches ``test``: the cache's answer,
    and the messages it holds no value for worked out here in paced
    batches (their files are read once; the values are cached).  With
    ``within`` (the candidates the other keys left), only those are
    worked out: ``SEARCH 1:10 FROM x`` reads no other header."""
    matched: Sequence[int]
    missing: Sequence[int]
    matched, missing = yield defer.maybeDeferred(
        ICachedSearch(mailbox).search_cached, test.kind, test.needle, low, high
    )
    if within is not None and missing:
        candidates = set(within)
        missing = [uid for uid in missing if uid in candidates]
    if not missing:
        return list(matched)
    hits = list(matched)
    start = 0
    while start < len(missing):
        if start:
            yield task.deferLater(clock, 0, lambda: None)
        size = max(pacer.next_size(), 1)
        chunk = missing[start : start + size]
        start += size
        if budget is not None:
            budget.check()
        values = yield content.folded_values(mailbox, chunk, test.name, test.address)
        hits.extend(uid for uid, value in values.items() if test.test(value))
        pacer.done(len(chunk))
    hits.sort()
    return hits


@defer.inlineCallbacks
def scan(
    view: SelectedMailbox,
    mailbox: IMailbox,
    program: Program,
    chosen: Plan,
    clock: IReactorTime,
    writer: ResponseWriter,
    found: Callable[[Sequence[tuple[int, int]]], defer.Deferred[None] | None],
    metadata: dict[int, IMessage] | None,
    matches: Matcher,
    batch_size: int,
) -> Generator[defer.Deferred[Any], Any, bool]:
    """:func:`mailsrv.imap.searching._scan`'s work with the index's help:
    feed the hits to ``found`` as they come; False if the connection went.
    Between index slices and between batches of candidates the reactor
    gets a turn, as in the plain scan."""
    view_runs = _runs_of(view.map)
    starts = [first for first, _, _ in view_runs]
    exists = view.exists
    need_messages = chosen.rest is not None or metadata is not None or program.modseqs is not None
    budget = program.budget
    pacer = Pacer(batch_size, budget)
    for low in range(1, exists + 1, SLICE):
        if low > 1:
            yield task.deferLater(clock, 0, lambda: None)
        if budget is not None:
            budget.check()
        high = min(low + SLICE - 1, exists)
        uids = yield _candidates(
            mailbox, chosen, view.map.uid(low), view.map.uid(high), clock, pacer, budget
        )
        pairs = _numbered(view_runs, starts, uids)
        start = 0
        while start < len(pairs) or not start:
            if start:
                yield task.deferLater(clock, 0, lambda: None)
            size = pacer.next_size() if need_messages else len(pairs)
            batch = pairs[start : start + size]
            start += max(size, 1)
            if need_messages and batch:
                batch = yield _decide(mailbox, program, chosen.rest, batch, metadata, matches)
                pacer.done(size)
            pending = found(batch)
            if pending is not None:
                yield pending
            if writer.closed:
                return False
    return True


@defer.inlineCallbacks
def _decide(
    mailbox: IMailbox,
    program: Program,
    rest: Program | None,
    chunk: Sequence[tuple[int, int]],
    metadata: dict[int, IMessage] | None,
    matches: Matcher,
) -> Generator[defer.Deferred[Any], Any, list[tuple[int, int]]]:
    """The candidates of ``chunk`` the residual program accepts, with the
    metadata and MODSEQs the caller asked for noted as the plain scan does."""
    seq_of = dict((uid, seq) for seq, uid in chunk)
    messages: Sequence[IMessage] = yield defer.maybeDeferred(mailbox.fetch, list(seq_of))
    batch = [(seq_of[m.uid], m) for m in messages if m.uid in seq_of]
    if rest is None:
        hits = [(seq, m.uid) for seq, m in batch]
    else:
        hits = yield matches(mailbox, rest, batch)
    if metadata is not None and hits:
        wanted = {uid for _, uid in hits}
        metadata.update((m.uid, m) for _, m in batch if m.uid in wanted)
    if program.modseqs is not None:
        program.modseqs.note(hits, batch)
    return hits
