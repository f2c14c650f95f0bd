"""FETCH: turning a parsed FETCH command into streamed ``* n FETCH`` responses.

The entry point is :func:`fetch`.  It walks the requested messages in
batches of :data:`BATCH` (one ``IMailbox.fetch`` call per batch, never a
list of the whole set), writes one response per message through the
session's :class:`~mailsrv.imap.output.ResponseWriter`, and waits whenever
the writer is paused because the client is not reading.  Between batches it
gives the reactor a turn so one huge FETCH does not stall other sessions.

Each item is answered by an *item handler* looked up by the item's name in
:data:`HANDLERS`::

    handler(request, attribute, message, response) -> None | Deferred[None]

A handler adds its item's text with :meth:`FetchResponse.item`.  One that
streams (a big ``BODY[]``) calls :meth:`FetchResponse.begin_item` with the
item's name and a space, then writes the value itself, for instance with
:func:`write_literal`, and returns the Deferred of that work.  Items whose
name has no handler are refused with ``NO [CANNOT]`` before anything is
written.

Today the handlers answer what the index knows (FLAGS, UID, RFC822.SIZE,
INTERNALDATE); issue 5 adds the body items here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import IO, Any

import attrs
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from mailsrv import log
from mailsrv.imap import grammar
from mailsrv.imap.output import Done, ResponseWriter, bad, no
from mailsrv.imap.selected import SelectedMailbox
from mailsrv.interfaces import IMailbox, IMessage

__all__ = [
    "BATCH",
    "CHUNK",
    "HANDLERS",
    "FetchRequest",
    "FetchResponse",
    "fetch",
    "fetch_messages",
    "write_literal",
]

_log = log.get_logger(__name__)

#: Messages whose metadata is read from storage in one call.
BATCH = 500
#: Octets of a literal read from its file and written in one piece.
CHUNK = 64 * 1024


@attrs.define
class FetchRequest:
    """What every item handler of one FETCH may need."""

    view: SelectedMailbox
    mailbox: IMailbox
    writer: ResponseWriter
    clock: IReactorTime
    attributes: tuple[grammar.FetchAttribute, ...]
    uid: bool = False


class FetchResponse:
    """One message's ``* seq FETCH (...)`` response, written item by item.

    Small items are collected and written with the closing parenthesis;
    :meth:`begin_item` writes what is collected so a handler can stream.
    """

    __slots__ = ("_parts", "_started", "_writer")

    def __init__(self, writer: ResponseWriter, seq: int) -> None:
        self._writer = writer
        self._parts: list[bytes] = [b"* %d FETCH (" % seq]
        self._started = False

    def item(self, data: bytes) -> None:
        """Add one complete item (``b"UID 7"``)."""
        if self._started:
            self._parts.append(b" ")
        self._parts.append(data)
        self._started = True

    def begin_item(self, prefix: bytes) -> None:
        """Start an item whose value the handler writes itself: everything so
        far and ``prefix`` (e.g. ``b"BODY[] "``) go to the writer now."""
        self.item(prefix)
        self._writer.write(b"".join(self._parts))
        self._parts = []

    def end(self) -> None:
        self._parts.append(b")\r\n")
        self._writer.write(b"".join(self._parts))
        self._parts = []


_Handler = Callable[
    [FetchRequest, grammar.FetchAttribute, IMessage, FetchResponse], "defer.Deferred[None] | None"
]


def _flags(
    request: FetchRequest, attribute: grammar.FetchAttribute, message: IMessage, out: FetchResponse
) -> None:
    flags = request.view.flags_with_recent(message.uid, message.flags)
    out.item(b"FLAGS " + grammar.flag_list(flags))


def _uid(
    request: FetchRequest, attribute: grammar.FetchAttribute, message: IMessage, out: FetchResponse
) -> None:
    out.item(b"UID %d" % message.uid)


def _size(
    request: FetchRequest, attribute: grammar.FetchAttribute, message: IMessage, out: FetchResponse
) -> None:
    out.item(b"RFC822.SIZE %d" % message.size)


def _internal_date(
    request: FetchRequest, attribute: grammar.FetchAttribute, message: IMessage, out: FetchResponse
) -> None:
    date = grammar.format_date_time(message.internal_date)
    out.item(b'INTERNALDATE "' + date.encode("ascii") + b'"')


#: Item name (:attr:`grammar.FetchAttribute.name`) -> handler.
HANDLERS: dict[str, _Handler] = {
    "FLAGS": _flags,
    "UID": _uid,
    "RFC822.SIZE": _size,
    "INTERNALDATE": _internal_date,
}


def fetch(
    view: SelectedMailbox,
    mailbox: IMailbox,
    command: grammar.Fetch,
    writer: ResponseWriter,
    clock: IReactorTime,
) -> defer.Deferred[Done]:
    """Answer a FETCH (or UID FETCH) command; fires with its completion.

    Raises (in the Deferred) :class:`~mailsrv.imap.output.CommandError` for
    items not implemented, modifiers and bad sequence numbers.
    """
    return defer.maybeDeferred(_check_and_run, view, mailbox, command, writer, clock)


def _check_and_run(
    view: SelectedMailbox,
    mailbox: IMailbox,
    command: grammar.Fetch,
    writer: ResponseWriter,
    clock: IReactorTime,
) -> defer.Deferred[Done]:
    unsupported = [a for a in command.attributes if a.name not in HANDLERS]
    if unsupported:
        name = unsupported[0].response_name()
        raise no(f"FETCH {name} is not implemented yet", "CANNOT")
    if command.modifiers:
        raise bad(f"FETCH modifier {command.modifiers[0][0]} is not supported")
    try:
        messages = view.resolve(command.sequence_set, command.uid)
    except ValueError as e:
        raise bad(str(e)) from None
    request = FetchRequest(view, mailbox, writer, clock, command.attributes, command.uid)
    d = fetch_messages(request, messages)

    def done(missing: int) -> Done:
        if missing:
            return Done("NO", "Some messages no longer exist", "EXPUNGEISSUED")
        return Done(text="FETCH completed")

    return d.addCallback(done)


@defer.inlineCallbacks
def fetch_messages(
    request: FetchRequest, messages: Iterable[tuple[int, int]]
) -> Generator[defer.Deferred[Any], Any, int]:
    """Write the responses for ``(seq, uid)`` pairs; fire with how many of
    them were gone from storage (expunged by another session meanwhile).

    STORE uses this too for its ``FETCH (FLAGS)`` answers.
    """
    writer = request.writer
    pairs = iter(messages)
    missing = 0
    first = True
    while True:
        chunk = list(itertools.islice(pairs, BATCH))
        if not chunk:
            return missing
        if not first:
            # A long FETCH gives other sessions a turn between batches.
            yield task.deferLater(request.clock, 0, lambda: None)
        first = False
        if writer.closed:
            return missing
        seq_of = {uid: seq for seq, uid in chunk}
        found: Sequence[IMessage] = yield defer.maybeDeferred(
            request.mailbox.fetch, [uid for _, uid in chunk]
        )
        missing += len(chunk) - len(found)
        for message in found:
            seq = seq_of.get(message.uid)
            if seq is None:
                continue
            response = FetchResponse(writer, seq)
            for attribute in request.attributes:
                pending = HANDLERS[attribute.name](request, attribute, message, response)
                if pending is not None:
                    yield pending
            response.end()
            if writer.paused:
                yield writer.ready()
            if writer.closed:
                return missing


@defer.inlineCallbacks
def write_literal(
    writer: ResponseWriter,
    source: IO[bytes],
    length: int,
    offset: int = 0,
    chunk_size: int = CHUNK,
) -> Generator[defer.Deferred[Any], Any, None]:
    """Write ``{length}`` CRLF and ``length`` octets of ``source`` from ``offset``.

    The file is read and written in chunks of ``chunk_size``, waiting while
    the client is not reading, so a 50 MB ``BODY[]`` never sits in memory.
    The literal's length is promised before its data, so a file that turns
    out shorter (truncated behind our back) is padded with spaces to keep
    the protocol in step, and the fact is logged.  The caller closes
    ``source``.
    """
    writer.write(b"{%d}\r\n" % length)
    if offset:
        source.seek(offset)
    remaining = length
    while remaining > 0:
        if writer.paused:
            yield writer.ready()
        if writer.closed:
            return
        data = source.read(min(chunk_size, remaining))
        if not data:
            _log.warn(
                "IMAP: message file shorter than its size; padding {count} octets",
                count=remaining,
            )
            while remaining > 0:
                pad = min(chunk_size, remaining)
                writer.write(b" " * pad)
                remaining -= pad
                if writer.paused:
                    yield writer.ready()
            return
        writer.write(data)
        remaining -= len(data)
