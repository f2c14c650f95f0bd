"""SEARCH: evaluating a parsed search program over the selected mailbox.

The entry point is :func:`search`.  The program (a tree of
:class:`~mailsrv.imap.grammar.SearchKey`) is first compiled by
:func:`compile_key` into a predicate over ``(seq, message)``, where
``message`` is the index metadata (:class:`~mailsrv.interfaces.IMessage`).
Keys the compiler cannot answer raise :class:`NotImplementedKey`, which
becomes ``NO [CANNOT]`` before any message is read.  The mailbox is then
scanned in batches of :data:`BATCH` and the hits are streamed out as one
``* SEARCH`` line, written in pieces through the session's writer.

Today the predicates use only the index (flags, sizes, internal dates,
sequence numbers and UIDs); issue 5 adds the header, body and SENT* keys
here (they need the message contents).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Sequence
from typing import Any, cast

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from mailsrv.imap import grammar
from mailsrv.imap.output import Done, ResponseWriter, no
from mailsrv.imap.selected import SelectedMailbox
from mailsrv.interfaces import IMailbox, IMessage

__all__ = ["BATCH", "NotImplementedKey", "Predicate", "compile_key", "search"]

#: Messages whose metadata is read from storage in one call.
BATCH = 500
#: Hits collected before a piece of the ``* SEARCH`` line is written.
_HITS_PER_WRITE = 2000

#: A compiled search key: ``(seq, message) -> matches``.
Predicate = Callable[[int, IMessage], bool]

CHARSETS = ("US-ASCII", "UTF-8")


class NotImplementedKey(Exception):
    """A search key that cannot be evaluated (yet); its op is the message."""


def search(
    view: SelectedMailbox,
    mailbox: IMailbox,
    command: grammar.Search,
    writer: ResponseWriter,
    clock: IReactorTime,
) -> defer.Deferred[Done]:
    """Answer a SEARCH (or UID SEARCH) command; fires with its completion.

    Raises (in the Deferred) :class:`~mailsrv.imap.output.CommandError` for
    unsupported charsets, return options and keys.
    """
    return defer.maybeDeferred(_check_and_run, view, mailbox, command, writer, clock)


def _check_and_run(
    view: SelectedMailbox,
    mailbox: IMailbox,
    command: grammar.Search,
    writer: ResponseWriter,
    clock: IReactorTime,
) -> defer.Deferred[Done]:
    if command.return_options is not None:
        raise no("ESEARCH (SEARCH RETURN) is not supported yet", "CANNOT")
    if command.charset not in (None, *CHARSETS):
        raise no(
            f"Charset {command.charset} is not supported", f"BADCHARSET ({' '.join(CHARSETS)})"
        )
    try:
        predicate = compile_key(command.key, view)
    except NotImplementedKey as e:
        raise no(f"SEARCH {e} is not implemented yet", "CANNOT") from None
    return _run(view, mailbox, predicate, command.uid, writer, clock)


@defer.inlineCallbacks
def _run(
    view: SelectedMailbox,
    mailbox: IMailbox,
    predicate: Predicate,
    uid: bool,
    writer: ResponseWriter,
    clock: IReactorTime,
) -> Generator[defer.Deferred[Any], Any, Done]:
    pairs = view.map.by_seq(1, view.exists)
    hits: list[bytes] = [b"* SEARCH"]
    first = True
    while True:
        chunk = list(itertools.islice(pairs, BATCH))
        if not chunk:
            break
        if not first:
            yield task.deferLater(clock, 0, lambda: None)
        first = False
        seq_of = {u: seq for seq, u in chunk}
        found: Sequence[IMessage] = yield defer.maybeDeferred(mailbox.fetch, [u for _, u in chunk])
        for message in found:
            seq = seq_of.get(message.uid)
            if seq is not None and predicate(seq, message):
                hits.append(b" %d" % (message.uid if uid else seq))
        if len(hits) >= _HITS_PER_WRITE:
            writer.write(b"".join(hits))
            hits = []
            if writer.paused:
                yield writer.ready()
        if writer.closed:
            return Done("NO", "Connection lost")
    hits.append(b"\r\n")
    writer.write(b"".join(hits))
    return Done(text="SEARCH completed")


def _in_ranges(ranges: list[tuple[int, int]]) -> Callable[[int], bool]:
    def test(n: int) -> bool:
        return any(low <= n <= high for low, high in ranges)

    return test


def compile_key(key: grammar.SearchKey, view: SelectedMailbox) -> Predicate:
    """A SEARCH key as a test over index metadata.

    Raises :class:`NotImplementedKey` for keys that need message contents.
    """
    op, args = key.op, key.args
    if op == "ALL":
        return lambda seq, m: True
    if op == "AND":
        parts = [compile_key(cast(grammar.SearchKey, k), view) for k in args]
        return lambda seq, m: all(p(seq, m) for p in parts)
    if op == "OR":
        left = compile_key(cast(grammar.SearchKey, args[0]), view)
        right = compile_key(cast(grammar.SearchKey, args[1]), view)
        return lambda seq, m: left(seq, m) or right(seq, m)
    if op == "NOT":
        inner = compile_key(cast(grammar.SearchKey, args[0]), view)
        return lambda seq, m: not inner(seq, m)
    if op == "FLAG":
        flag, present = cast(str, args[0]), bool(args[1])
        if flag == "\\Recent":
            return lambda seq, m: (m.uid in view.recent) == present
        return lambda seq, m: (flag in m.flags) == present
    if op == "SEQ":
        seq_test = _in_ranges(cast(grammar.SequenceSet, args[0]).resolve(view.exists))
        return lambda seq, m: seq_test(seq)
    if op == "UID":
        uid_test = _in_ranges(cast(grammar.SequenceSet, args[0]).resolve(view.map.last_uid))
        return lambda seq, m: uid_test(m.uid)
    if op == "LARGER":
        larger = cast(int, args[0])
        return lambda seq, m: m.size > larger
    if op == "SMALLER":
        smaller = cast(int, args[0])
        return lambda seq, m: m.size < smaller
    if op in ("BEFORE", "ON", "SINCE"):
        day = args[0]
        if op == "BEFORE":
            return lambda seq, m: m.internal_date.date() < day
        if op == "ON":
            return lambda seq, m: m.internal_date.date() == day
        return lambda seq, m: m.internal_date.date() >= day
    raise NotImplementedKey(op)
