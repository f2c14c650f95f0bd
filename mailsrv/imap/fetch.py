"""FETCH: turning a parsed FETCH command into streamed ``* n FETCH`` responses.

The entry point is :func:`fetch`.  It walks the requested messages in
batches of :data:`BATCH` (one ``IMailbox.fetch`` call per batch, never a
list of the whole set), gathers what the batch's items need in a few bulk
calls (parsed structures and HEADER.FIELDS values come from the storage
cache through :mod:`mailsrv.imap.content`), writes one response per
message through the session's :class:`~mailsrv.imap.output.ResponseWriter`,
and waits whenever the writer is paused because the client is not reading.
Between batches it gives the reactor a turn so one huge FETCH does not
stall other sessions.

Each item is answered by an *item handler* looked up by the item's name in
:data:`HANDLERS`::

    handler(request, attribute, message, response) -> None | Deferred[None]

``message`` is a :class:`FetchMessage`: the index metadata plus whatever the
batch loaded for it (structure, header fields, an open file).  A handler
adds its item's text with :meth:`FetchResponse.item`.  One that streams (a
big ``BODY[]``) calls :meth:`FetchResponse.begin_item` with the item's name
and a space, then writes the value itself with :func:`write_literal`, and
returns the Deferred of that work.

Body items are served by slicing the message file at the offsets the parsed
structure records (:mod:`mailsrv.message`), never by re-serializing, so a
50 MB ``BODY[]`` streams from disk in :data:`CHUNK` pieces.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import IO, Any

import attrs
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from mailsrv import log, message
from mailsrv.errors import NoSuchMessage
from mailsrv.imap import content, grammar, response
from mailsrv.imap.fetch_syntax import FetchAttribute
from mailsrv.imap.output import Done, ResponseWriter, bad
from mailsrv.imap.pacing import Pacer
from mailsrv.imap.selected import SelectedMailbox
from mailsrv.imap.syntax import format_date_time
from mailsrv.interfaces import SEEN, IMailbox, IMessage, StoreMode, StoreResult

__all__ = [
    "BATCH",
    "CHUNK",
    "HANDLERS",
    "FetchMessage",
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
#: Literals up to this size are read whole and written with the response.
_INLINE = 16 * 1024


class UnknownEncoding(Exception):
    """BINARY of a part whose Content-Transfer-Encoding we cannot undo."""


@attrs.define
class FetchRequest:
    """What every item handler of one FETCH may need."""

    view: SelectedMailbox
    mailbox: IMailbox
    writer: ResponseWriter
    clock: IReactorTime
    attributes: tuple[FetchAttribute, ...]
    uid: bool = False
    #: Whether a BINARY item is asked for (worked out once, not per message).
    has_binary: bool = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.has_binary = any(a.name in ("BINARY", "BINARY.SIZE") for a in self.attributes)


@attrs.define
class FetchMessage:
    """One message being answered: its metadata and what was loaded for it.

    ``structure`` is set when an item needs it; ``fields`` holds
    HEADER.FIELDS values keyed by the attribute, ``binary`` the decoded
    BINARY and BINARY.SIZE values, ``rendered`` the ENVELOPE, BODY and
    BODYSTRUCTURE values by cache kind; ``file`` is the open
    message, when an item reads from it (closed after the response).
    ``flags_changed`` is set when this FETCH set ``\\Seen``.
    """

    info: IMessage
    structure: message.MessageStructure | None = None
    fields: dict[FetchAttribute, bytes] = attrs.Factory(dict)
    binary: dict[FetchAttribute, bytes | int | None] = attrs.Factory(dict)
    rendered: dict[str, bytes] = attrs.Factory(dict)
    file: IO[bytes] | None = None
    flags_changed: bool = False

    @property
    def uid(self) -> int:
        return int(self.info.uid)

    def need_structure(self) -> message.MessageStructure:
        assert self.structure is not None, "the batch loads structures first"
        return self.structure

    def need_file(self) -> IO[bytes]:
        assert self.file is not None, "the batch opens files first"
        return self.file


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
    [FetchRequest, FetchAttribute, FetchMessage, FetchResponse],
    "defer.Deferred[None] | None",
]


# ---------------------------------------------------------------------------
# What each item needs
# ---------------------------------------------------------------------------


def _is_root_fields(attribute: FetchAttribute) -> bool:
    """BODY[HEADER.FIELDS (...)] of the whole message: served from the
    content cache without the structure."""
    section = attribute.section
    return (
        attribute.name == "BODY"
        and section is not None
        and not section.part
        and section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT")
    )


def _rendered_kind(attribute: FetchAttribute) -> str | None:
    """The content cache kind of ENVELOPE, BODY and BODYSTRUCTURE."""
    if attribute.name in ("ENVELOPE", "BODYSTRUCTURE"):
        return attribute.name.lower()
    if attribute.name == "BODY" and attribute.section is None:
        return "body"
    return None


def _needs_structure(attribute: FetchAttribute) -> bool:
    name, section = attribute.name, attribute.section
    if name in ("RFC822.HEADER", "RFC822.TEXT"):
        return True
    if name == "BODY":
        if section is None:
            return False  # the BODY structure item comes rendered
        return bool(section.part or section.text) and not _is_root_fields(attribute)
    if name in ("BINARY", "BINARY.SIZE"):
        return bool(attribute.section and attribute.section.part)
    return False


def _needs_file(attribute: FetchAttribute) -> bool:
    name = attribute.name
    if name in ("RFC822", "RFC822.HEADER", "RFC822.TEXT", "BINARY"):
        return True
    if name == "BINARY.SIZE":
        return True  # decoded sizes come from decoding (identity parts aside)
    return name == "BODY" and attribute.section is not None and not _is_root_fields(attribute)


def _sets_seen(attribute: FetchAttribute) -> bool:
    """RFC 3501 6.4.5: BODY[...], BINARY[...], RFC822 and RFC822.TEXT set
    \\Seen; the .PEEK forms and RFC822.HEADER do not."""
    if attribute.name in ("RFC822", "RFC822.TEXT"):
        return True
    return (
        attribute.name in ("BODY", "BINARY")
        and attribute.section is not None
        and not (attribute.peek)
    )


# ---------------------------------------------------------------------------
# Item handlers
# ---------------------------------------------------------------------------


#: Rendered ``FLAGS (...)`` items by flag set: a mailbox has few distinct
#: combinations, and FETCH 1:* FLAGS renders one per message.
_FLAG_ITEMS: dict[frozenset[str], bytes] = {}


def flags_item(flags: frozenset[str]) -> bytes:
    """``FLAGS (...)`` for a flag set, memoized (bounded)."""
    item = _FLAG_ITEMS.get(flags)
    if item is None:
        item = b"FLAGS " + response.flag_list(flags)
        if len(_FLAG_ITEMS) < 4096:
            _FLAG_ITEMS[flags] = item
    return item


def _render_flags(view: SelectedMailbox, m: IMessage) -> bytes:
    return flags_item(view.flags_with_recent(m.uid, m.flags))


def _render_uid(view: SelectedMailbox, m: IMessage) -> bytes:
    return b"UID %d" % m.uid


def _render_size(view: SelectedMailbox, m: IMessage) -> bytes:
    return b"RFC822.SIZE %d" % m.size


def _render_internal_date(view: SelectedMailbox, m: IMessage) -> bytes:
    return b'INTERNALDATE "%s"' % format_date_time(m.internal_date).encode("ascii")


#: Items the index answers alone, by name: one renderer each, used by the
#: per-message path and by the batched first-sync path alike.
_INDEX_ITEMS: dict[str, Callable[[SelectedMailbox, IMessage], bytes]] = {
    "FLAGS": _render_flags,
    "UID": _render_uid,
    "RFC822.SIZE": _render_size,
    "INTERNALDATE": _render_internal_date,
}


def _index_handler(render: Callable[[SelectedMailbox, IMessage], bytes]) -> _Handler:
    def handler(
        request: FetchRequest,
        attribute: FetchAttribute,
        msg: FetchMessage,
        out: FetchResponse,
    ) -> None:
        out.item(render(request.view, msg.info))

    return handler


def _rendered(
    request: FetchRequest, attribute: FetchAttribute, msg: FetchMessage, out: FetchResponse
) -> None:
    """ENVELOPE, BODY and BODYSTRUCTURE, rendered once and cached."""
    kind = _rendered_kind(attribute)
    assert kind is not None
    out.item(attribute.name.encode("ascii") + b" " + msg.rendered[kind])


_IDENTITY = frozenset({"7bit", "8bit", "binary"})


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def _clip(length: int, partial: tuple[int, int] | None) -> tuple[int, int]:
    """``(skip, count)`` of a partial fetch over ``length`` octets: a start
    beyond the end gives nothing (RFC 3501 6.4.5)."""
    if partial is None:
        return 0, length
    origin, octets = partial
    if origin >= length:
        return length, 0
    return origin, min(octets, length - origin)


def _section_bytes_or_range(
    attribute: FetchAttribute, msg: FetchMessage
) -> bytes | tuple[int, int] | None:
    """What BODY[section] names: bytes (filtered header fields), an
    ``(offset, length)`` range of the file, or None if there is no such
    section in this message."""
    section = attribute.section
    assert section is not None
    if attribute in msg.fields:
        return msg.fields[attribute]
    if not section.part and section.text is None:
        return (0, msg.info.size)
    structure = msg.need_structure()
    if section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        return message.header_fields(
            structure,
            msg.need_file(),
            section.fields,
            section.text == "HEADER.FIELDS.NOT",
            section.part,
        )
    return message.section_range(structure, section.part, section.text, section.fields)


def _write_body(
    out: FetchResponse,
    writer: ResponseWriter,
    name: bytes,
    value: bytes | tuple[int, int] | None,
    partial: tuple[int, int] | None,
    msg: FetchMessage,
) -> defer.Deferred[None] | None:
    if partial is not None:
        name += b"<%d>" % partial[0]
    if value is None:
        out.item(name + b" NIL")
        return None
    if isinstance(value, bytes):
        skip, count = _clip(len(value), partial)
        out.item(name + b" " + _literal(value[skip : skip + count]))
        return None
    offset, length = value
    skip, count = _clip(length, partial)
    source = msg.need_file()
    if count <= _INLINE:
        data = message.read_range(source, offset + skip, count)
        if len(data) < count:
            data += b" " * (count - len(data))  # see write_literal
        out.item(name + b" " + _literal(data))
        return None
    out.begin_item(name + b" ")
    return write_literal(writer, source, count, offset + skip)


def _body_section(
    request: FetchRequest, attribute: FetchAttribute, msg: FetchMessage, out: FetchResponse
) -> defer.Deferred[None] | None:
    if attribute.section is None:
        _rendered(request, attribute, msg, out)
        return None
    name = b"BODY[" + str(attribute.section).encode("ascii") + b"]"
    value = _section_bytes_or_range(attribute, msg)
    return _write_body(out, request.writer, name, value, attribute.partial, msg)


def _rfc822(
    request: FetchRequest, attribute: FetchAttribute, msg: FetchMessage, out: FetchResponse
) -> defer.Deferred[None] | None:
    """RFC822, RFC822.HEADER and RFC822.TEXT: BODY[], BODY.PEEK[HEADER] and
    BODY[TEXT] under their old names (RFC 3501 6.4.5)."""
    value: tuple[int, int]
    if attribute.name == "RFC822":
        value = (0, msg.info.size)
    else:
        root = msg.need_structure().root
        if attribute.name == "RFC822.HEADER":
            value = (root.header_offset, root.header_size)
        else:
            value = (root.body_offset, root.body_size)
    name = attribute.name.encode("ascii")
    return _write_body(out, request.writer, name, value, None, msg)


def _binary_value(attribute: FetchAttribute, msg: FetchMessage) -> bytes | None:
    """BINARY[section]: the decoded part, None for a part the message lacks;
    raises :class:`UnknownEncoding`."""
    section = attribute.section
    assert section is not None
    if not section.part:
        return message.read_range(msg.need_file(), 0, msg.info.size)
    structure = msg.need_structure()
    if message.find_part(structure, section.part) is None:
        return None
    decoded = message.decode_part(structure, msg.need_file(), section.part)
    if decoded is None:
        raise UnknownEncoding()
    return decoded


def _binary_size_value(attribute: FetchAttribute, msg: FetchMessage) -> int:
    """BINARY.SIZE[section]; raises :class:`UnknownEncoding`."""
    section = attribute.section
    assert section is not None
    if not section.part:
        return int(msg.info.size)
    structure = msg.need_structure()
    if message.find_part(structure, section.part) is None:
        return 0
    size = message.binary_size(structure, msg.need_file(), section.part)
    if size is None:
        raise UnknownEncoding()
    return size


def _decode_binary(attributes: Sequence[FetchAttribute], msg: FetchMessage) -> bool:
    """Work out the message's BINARY and BINARY.SIZE values before anything
    is written for it; False if a part's encoding is unknown (RFC 3516 4.3:
    the command fails with [UNKNOWN-CTE], so no half response is sent)."""
    try:
        for attribute in attributes:
            if attribute.name == "BINARY":
                msg.binary[attribute] = _binary_value(attribute, msg)
            elif attribute.name == "BINARY.SIZE":
                msg.binary[attribute] = _binary_size_value(attribute, msg)
    except UnknownEncoding:
        return False
    return True


def _binary(
    request: FetchRequest, attribute: FetchAttribute, msg: FetchMessage, out: FetchResponse
) -> None:
    assert attribute.section is not None
    name = b"BINARY[" + str(attribute.section).encode("ascii") + b"]"
    if attribute.partial is not None:
        name += b"<%d>" % attribute.partial[0]
    value = msg.binary[attribute]
    if value is None:
        out.item(name + b" NIL")
        return
    assert isinstance(value, bytes)
    skip, count = _clip(len(value), attribute.partial)
    data = value[skip : skip + count]
    # RFC 3516 4.3 lets the server choose literal8; like Dovecot, use it
    # for every decoded part (and for NULs, which a literal cannot carry).
    structure = msg.structure
    part = None if structure is None else message.find_part(structure, attribute.section.part)
    decoded = part is not None and not part.children and part.message is None
    decoded = decoded and part is not None and part.encoding.lower() not in _IDENTITY
    marker = b"~" if decoded or b"\x00" in data else b""
    out.item(name + b" " + marker + b"{%d}\r\n" % len(data) + data)


def _binary_size(
    request: FetchRequest, attribute: FetchAttribute, msg: FetchMessage, out: FetchResponse
) -> None:
    assert attribute.section is not None
    name = b"BINARY.SIZE[" + str(attribute.section).encode("ascii") + b"]"
    out.item(name + b" %d" % int(msg.binary[attribute] or 0))


#: Item name (:attr:`FetchAttribute.name`) -> handler.
HANDLERS: dict[str, _Handler] = {
    **{name: _index_handler(render) for name, render in _INDEX_ITEMS.items()},
    "ENVELOPE": _rendered,
    "BODYSTRUCTURE": _rendered,
    "BODY": _body_section,
    "RFC822": _rfc822,
    "RFC822.HEADER": _rfc822,
    "RFC822.TEXT": _rfc822,
    "BINARY": _binary,
    "BINARY.SIZE": _binary_size,
}


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


def fetch(
    view: SelectedMailbox,
    mailbox: IMailbox,
    command: grammar.Fetch,
    writer: ResponseWriter,
    clock: IReactorTime,
) -> defer.Deferred[Done]:
    """Answer a FETCH (or UID FETCH) command; fires with its completion.

    Raises (in the Deferred) :class:`~mailsrv.imap.output.CommandError` for
    modifiers and bad sequence numbers.
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
        # MODSEQ parses (RFC 7162) but CONDSTORE is not offered.
        raise bad(f"FETCH {unsupported[0].response_name()} is not supported")
    if command.modifiers:
        raise bad(f"FETCH modifier {command.modifiers[0][0]} is not supported")
    try:
        messages = view.resolve(command.sequence_set, command.uid)
    except ValueError as e:
        raise bad(str(e)) from None
    request = FetchRequest(view, mailbox, writer, clock, command.attributes, command.uid)
    d = fetch_messages(request, messages)

    def done(outcome: _Outcome) -> Done:
        if outcome.unknown_cte:
            return Done("NO", "Unknown Content-Transfer-Encoding in a BINARY part", "UNKNOWN-CTE")
        if outcome.missing:
            # RFC 5530 3 (its example is an OK) and RFC 2180 4.1: answer
            # what still exists; the client learns the rest at its next
            # NOOP.  A NO here makes clients such as imaplib give up on
            # the whole FETCH, as Dovecot's OK does not.
            return Done(text="Some messages were already expunged", code="EXPUNGEISSUED")
        return Done(text="FETCH completed")

    return d.addCallback(done)


@attrs.define
class _Outcome:
    missing: int = 0
    unknown_cte: bool = False


@defer.inlineCallbacks
def _set_seen(
    request: FetchRequest, found: Sequence[IMessage]
) -> Generator[defer.Deferred[Any], Any, dict[int, IMessage]]:
    """Set \\Seen on the batch's unseen messages; their new metadata by UID."""
    unseen = [m.uid for m in found if SEEN not in m.flags]
    if not unseen:
        return {}
    result: StoreResult = yield defer.maybeDeferred(
        request.mailbox.store, unseen, [SEEN], StoreMode.ADD, None
    )
    # Our own responses carry the new flags; no untagged FETCH for them later.
    request.view.forget_flags(result.updated)
    return {m.uid: m for m in result.updated}


@defer.inlineCallbacks
def _load(
    request: FetchRequest, found: Sequence[IMessage]
) -> Generator[defer.Deferred[Any], Any, list[FetchMessage]]:
    """What the batch's items need, in bulk: new flags, structures, cached
    header fields."""
    attributes = request.attributes
    changed: dict[int, IMessage] = {}
    if not request.view.readonly and any(_sets_seen(a) for a in attributes):
        changed = yield _set_seen(request, found)
    batch = [FetchMessage(changed.get(m.uid, m), flags_changed=m.uid in changed) for m in found]
    uids = [m.uid for m in batch]
    if any(_needs_structure(a) for a in attributes):
        structures = yield content.structures(request.mailbox, uids)
        for m in batch:
            m.structure = structures.get(m.uid)
    for kind in {k for k in map(_rendered_kind, attributes) if k is not None}:
        values = yield content.rendered(request.mailbox, uids, kind)
        for m in batch:
            value = values.get(m.uid)
            if value is not None:
                m.rendered[kind] = value
    root_fields = [a for a in attributes if _is_root_fields(a)]
    for attribute in root_fields:
        assert attribute.section is not None
        values = yield content.header_fields(
            request.mailbox,
            uids,
            attribute.section.fields,
            attribute.section.text == "HEADER.FIELDS.NOT",
        )
        for m in batch:
            value = values.get(m.uid)
            if value is not None:
                m.fields[attribute] = value
    # Keep the messages for which everything was found (the rest were
    # expunged meanwhile, and the caller counts them as missing).
    kinds = len({k for k in map(_rendered_kind, attributes) if k is not None})
    structure = any(_needs_structure(a) for a in attributes)
    return [
        m
        for m in batch
        if len(m.rendered) == kinds
        and len(m.fields) == len(set(root_fields))
        and (m.structure is not None or not structure)
    ]


#: Index-only responses joined into one write (a few KB).
_LINES_PER_WRITE = 32


@defer.inlineCallbacks
def _fetch_index_only(
    request: FetchRequest, messages: Iterable[tuple[int, int]]
) -> Generator[defer.Deferred[Any], Any, _Outcome]:
    """The first-sync path (FLAGS, UID, RFC822.SIZE, INTERNALDATE only): one
    write per batch of 500 responses, no object per message."""
    writer = request.writer
    view = request.view
    renderers = [_INDEX_ITEMS[a.name] for a in request.attributes]
    shows_flags = any(a.name == "FLAGS" for a in request.attributes)
    pairs = iter(messages)
    outcome = _Outcome()
    first = True
    while True:
        chunk = list(itertools.islice(pairs, BATCH))
        if not chunk:
            return outcome
        if not first:
            yield task.deferLater(request.clock, 0, lambda: None)
        first = False
        if writer.closed:
            return outcome
        seq_of = dict((uid, seq) for seq, uid in chunk)
        found = request.mailbox.fetch(list(seq_of))
        if isinstance(found, defer.Deferred):
            found = yield found
        if shows_flags:
            telling = _tell_keywords(request, found)
            if telling is not None:
                yield telling
        lines = []
        written = 0
        for m in found:
            seq = seq_of.get(m.uid)
            if seq is None:
                continue
            items = b" ".join([render(view, m) for render in renderers])
            lines.append(b"* %d FETCH (%s)\r\n" % (seq, items))
            if len(lines) == _LINES_PER_WRITE:
                # Small writes keep a paused client's backlog to a few KB.
                written += len(lines)
                writer.write(b"".join(lines))
                lines = []
                if writer.paused:
                    yield writer.ready()
                if writer.closed:
                    return outcome
        written += len(lines)
        outcome.missing += len(chunk) - written
        writer.write(b"".join(lines))
        if writer.paused:
            yield writer.ready()


@defer.inlineCallbacks
def fetch_messages(
    request: FetchRequest, messages: Iterable[tuple[int, int]]
) -> Generator[defer.Deferred[Any], Any, _Outcome]:
    """Write the responses for ``(seq, uid)`` pairs; fire with an outcome
    telling how many of them were gone from storage (expunged by another
    session meanwhile) and whether a BINARY item met an unknown encoding.

    STORE uses this too for its ``FETCH (FLAGS)`` answers.
    """
    writer = request.writer
    attributes = request.attributes
    if all(a.name in _INDEX_ITEMS for a in attributes):
        outcome = yield _fetch_index_only(request, messages)
        return outcome
    wants_file = any(_needs_file(a) for a in attributes)
    shows_flags = any(a.name == "FLAGS" for a in attributes)
    pairs = iter(messages)
    outcome = _Outcome()
    first = True
    pacer = Pacer(BATCH)
    while True:
        if not first:
            # A long FETCH gives other sessions a turn between batches.
            yield task.deferLater(request.clock, 0, lambda: None)
        chunk = list(itertools.islice(pairs, pacer.next_size()))
        if not chunk:
            return outcome
        first = False
        if writer.closed:
            return outcome
        seq_of = {uid: seq for seq, uid in chunk}
        found: Sequence[IMessage] = yield defer.maybeDeferred(
            request.mailbox.fetch, [uid for _, uid in chunk]
        )
        found = [m for m in found if m.uid in seq_of]
        batch = yield _load(request, found)
        outcome.missing += len(chunk) - len(batch)
        telling = _tell_keywords(request, [m.info for m in batch if shows_flags or m.flags_changed])
        if telling is not None:
            yield telling
        for msg in batch:
            if wants_file:
                try:
                    opened = request.mailbox.open(msg.uid)
                    if isinstance(opened, defer.Deferred):
                        opened = yield opened
                except NoSuchMessage:
                    outcome.missing += 1
                    continue
                msg.file = opened
            try:
                written = _respond(request, msg, seq_of[msg.uid], shows_flags)
                if isinstance(written, defer.Deferred):
                    written = yield written
            finally:
                if msg.file is not None:
                    msg.file.close()
                    msg.file = None
            if not written:
                outcome.unknown_cte = True
            if writer.paused:
                pacer.done(1)  # the wait for the client is not our cost
                yield writer.ready()
                pacer.next_size()
            if writer.closed:
                return outcome
        pacer.done(len(chunk))


def _tell_keywords(request: FetchRequest, shown: Iterable[IMessage]) -> defer.Deferred[None] | None:
    """Send FLAGS and PERMANENTFLAGS again before responses that show a
    keyword the session was not told about (RFC 3501 7.2.6: another session
    or a delivery may have just defined it).  None when every keyword is
    known, which is the common case and costs no storage call."""
    view = request.view
    new = view.unannounced(m.flags for m in shown)
    if not new:
        return None
    return view.announce_keywords(new).addCallback(request.writer.write)


def _respond(
    request: FetchRequest, msg: FetchMessage, seq: int, shows_flags: bool
) -> bool | defer.Deferred[bool]:
    """Write one message's response; False if a BINARY item cannot be
    decoded, in which case nothing was written for the message (RFC 3516
    4.3 fails the command with [UNKNOWN-CTE]).

    Synchronous (no Deferred, no generator per message: a 100,000-message
    FETCH FLAGS pays for neither) unless an item streams its value.
    """
    attributes = request.attributes
    if request.has_binary and not _decode_binary(attributes, msg):
        return False
    response = FetchResponse(request.writer, seq)
    for index, attribute in enumerate(attributes):
        pending = HANDLERS[attribute.name](request, attribute, msg, response)
        if pending is not None:
            return _respond_rest(request, msg, response, index + 1, pending, shows_flags)
    _end_response(request, msg, response, shows_flags)
    return True


@defer.inlineCallbacks
def _respond_rest(
    request: FetchRequest,
    msg: FetchMessage,
    response: FetchResponse,
    start: int,
    pending: defer.Deferred[None],
    shows_flags: bool,
) -> Generator[defer.Deferred[Any], Any, bool]:
    """The rest of a response after an item that streams."""
    yield pending
    for attribute in request.attributes[start:]:
        more = HANDLERS[attribute.name](request, attribute, msg, response)
        if more is not None:
            yield more
    _end_response(request, msg, response, shows_flags)
    return True


def _end_response(
    request: FetchRequest, msg: FetchMessage, response: FetchResponse, shows_flags: bool
) -> None:
    if msg.flags_changed and not shows_flags:
        # RFC 3501 6.4.5: the implicitly set \Seen SHOULD be reported.
        response.item(_render_flags(request.view, msg.info))
    response.end()


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
