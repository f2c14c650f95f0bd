"""FETCH items: what each item needs and how it is written.

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
structure records (:mod:`mailsrv.mime.structure`), never by re-serializing, so a
50 MB ``BODY[]`` streams from disk in :data:`CHUNK` pieces.  The batches
that feed the handlers are :mod:`mailsrv.imap.fetching`'s.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import IO, Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from mailsrv import log
from mailsrv.imap import response
from mailsrv.imap.budget import CommandBudget
from mailsrv.imap.fetch_syntax import FetchAttribute
from mailsrv.imap.output import ResponseWriter
from mailsrv.imap.sections import header_fields, section_range
from mailsrv.imap.selected import SelectedMailbox
from mailsrv.imap.syntax import format_date_time
from mailsrv.interfaces import IMailbox, IMessage
from mailsrv.mime.decoding import decode_part, decoded_size
from mailsrv.mime.structure import MessageStructure, find_part, read_range

__all__ = [
    "CHUNK",
    "HANDLERS",
    "INDEX_ITEMS",
    "FetchMessage",
    "FetchRequest",
    "FetchResponse",
    "UnknownEncoding",
    "decode_binary",
    "flags_item",
    "is_root_fields",
    "needs_file",
    "needs_structure",
    "render_flags",
    "render_modseq",
    "rendered_kind",
    "sets_seen",
    "write_literal",
]

#: The namespace its log lines have always carried (this was fetch.py).
_log = log.get_logger("mailsrv.imap.fetch")

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
    #: The command's CPU budget (:mod:`mailsrv.imap.budget`); None: unbounded.
    budget: CommandBudget | None = None
    #: Worked out once, not per message: whether a BINARY item is asked
    #: for, whether an item reads the message file, whether FLAGS is shown.
    has_binary: bool = attrs.field(init=False)
    wants_file: bool = attrs.field(init=False)
    shows_flags: bool = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.has_binary = any(a.name in ("BINARY", "BINARY.SIZE") for a in self.attributes)
        self.wants_file = any(needs_file(a) for a in self.attributes)
        self.shows_flags = any(a.name == "FLAGS" for a in self.attributes)

    def tell_keywords(self, flag_sets: Iterable[frozenset[str]]) -> defer.Deferred[None] | None:
        """Send FLAGS and PERMANENTFLAGS again before responses that show a
        keyword the session was not told about (RFC 3501 7.2.6: another
        session or a delivery may have just defined it).  None when every
        keyword is known, which is the common case and costs no storage call."""
        new = self.view.unannounced(flag_sets)
        if not new:
            return None
        return self.view.announce_keywords(new).addCallback(self.writer.write)


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
    structure: MessageStructure | None = None
    fields: dict[FetchAttribute, bytes] = attrs.Factory(dict)
    binary: dict[FetchAttribute, bytes | int | None] = attrs.Factory(dict)
    rendered: dict[str, bytes] = attrs.Factory(dict)
    file: IO[bytes] | None = None
    flags_changed: bool = False
    #: PREVIEW's text (UTF-8); None when LAZY found none ready.
    preview: bytes | None = None
    #: EMAILID and THREADID, by item name (RFC 8474).
    ids: dict[str, str] = attrs.Factory(dict)

    @property
    def uid(self) -> int:
        return int(self.info.uid)

    def need_structure(self) -> MessageStructure:
        assert self.structure is not None, "the batch loads structures first"
        return self.structure

    def need_file(self) -> IO[bytes]:
        assert self.file is not None, "the batch opens files first"
        return self.file

    def close_file(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


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


def is_root_fields(attribute: FetchAttribute) -> bool:
    """BODY[HEADER.FIELDS (...)] of the whole message: served from the
    content cache without the structure."""
    section = attribute.section
    return (
        attribute.name == "BODY"
        and section is not None
        and not section.part
        and section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT")
    )


def rendered_kind(attribute: FetchAttribute) -> str | None:
    """The content cache kind of ENVELOPE, BODY and BODYSTRUCTURE."""
    if attribute.name in ("ENVELOPE", "BODYSTRUCTURE"):
        return attribute.name.lower()
    if attribute.name == "BODY" and attribute.section is None:
        return "body"
    return None


def needs_structure(attribute: FetchAttribute) -> bool:
    name, section = attribute.name, attribute.section
    if name in ("RFC822.HEADER", "RFC822.TEXT"):
        return True
    if name == "BODY":
        if section is None:
            return False  # the BODY structure item comes rendered
        return bool(section.part or section.text) and not is_root_fields(attribute)
    if name in ("BINARY", "BINARY.SIZE"):
        return bool(attribute.section and attribute.section.part)
    return False


def needs_file(attribute: FetchAttribute) -> bool:
    name = attribute.name
    if name in ("RFC822", "RFC822.HEADER", "RFC822.TEXT", "BINARY"):
        return True
    if name == "BINARY.SIZE":
        return True  # decoded sizes come from decoding (identity parts aside)
    return name == "BODY" and attribute.section is not None and not is_root_fields(attribute)


def sets_seen(attribute: FetchAttribute) -> bool:
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


def render_flags(view: SelectedMailbox, m: IMessage) -> bytes:
    return flags_item(view.flags_with_recent(m.uid, m.flags))


def _render_uid(view: SelectedMailbox, m: IMessage) -> bytes:
    return b"UID %d" % m.uid


def _render_size(view: SelectedMailbox, m: IMessage) -> bytes:
    return b"RFC822.SIZE %d" % m.size


def _render_internal_date(view: SelectedMailbox, m: IMessage) -> bytes:
    return b'INTERNALDATE "%s"' % format_date_time(m.internal_date).encode("ascii")


def render_modseq(view: SelectedMailbox, m: IMessage) -> bytes:
    """RFC 7162 3.1.4.2."""
    return b"MODSEQ (%d)" % m.modseq


def _render_save_date(view: SelectedMailbox, m: IMessage) -> bytes:
    """RFC 8514 4.2; NIL for a message whose save date is not known."""
    saved: datetime.datetime | None = m.save_date
    if saved is None:
        return b"SAVEDATE NIL"
    return b'SAVEDATE "%s"' % format_date_time(saved).encode("ascii")


#: Items the index answers alone, by name: one renderer each, used by the
#: per-message path and by the batched first-sync path alike.
INDEX_ITEMS: dict[str, Callable[[SelectedMailbox, IMessage], bytes]] = {
    "FLAGS": render_flags,
    "UID": _render_uid,
    "RFC822.SIZE": _render_size,
    "INTERNALDATE": _render_internal_date,
    "MODSEQ": render_modseq,
    "SAVEDATE": _render_save_date,
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
    kind = rendered_kind(attribute)
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
        return header_fields(
            structure,
            msg.need_file(),
            section.fields,
            section.text == "HEADER.FIELDS.NOT",
            section.part,
        )
    return section_range(structure, section.part, section.text)


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
        data = read_range(source, offset + skip, count)
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
        return read_range(msg.need_file(), 0, msg.info.size)
    structure = msg.need_structure()
    if find_part(structure, section.part) is None:
        return None
    decoded = decode_part(structure, msg.need_file(), section.part)
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
    if find_part(structure, section.part) is None:
        return 0
    size = decoded_size(structure, msg.need_file(), section.part)
    if size is None:
        raise UnknownEncoding()
    return size


def decode_binary(attributes: Sequence[FetchAttribute], msg: FetchMessage) -> bool:
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
    part = None if structure is None else find_part(structure, attribute.section.part)
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


def _preview(
    request: FetchRequest, attribute: FetchAttribute, msg: FetchMessage, out: FetchResponse
) -> None:
    """RFC 8970 3.2: the text, "" when there is none to show, and NIL only
    for PREVIEW (LAZY) when it was not ready (never without LAZY)."""
    if msg.preview is None:
        assert attribute.lazy, "the batch computes previews unless all are LAZY"
        out.item(b"PREVIEW NIL")
    else:
        out.item(b"PREVIEW " + response.string(msg.preview))


def _object_id(
    request: FetchRequest, attribute: FetchAttribute, msg: FetchMessage, out: FetchResponse
) -> None:
    """RFC 8474 5.3: ``EMAILID (M...)``, ``THREADID (T...)``."""
    out.item(b"%s (%s)" % (attribute.name.encode("ascii"), msg.ids[attribute.name].encode("ascii")))


#: Item name (:attr:`FetchAttribute.name`) -> handler.
HANDLERS: dict[str, _Handler] = {
    **{name: _index_handler(render) for name, render in INDEX_ITEMS.items()},
    "ENVELOPE": _rendered,
    "BODYSTRUCTURE": _rendered,
    "BODY": _body_section,
    "RFC822": _rfc822,
    "RFC822.HEADER": _rfc822,
    "RFC822.TEXT": _rfc822,
    "BINARY": _binary,
    "BINARY.SIZE": _binary_size,
    "PREVIEW": _preview,
    "EMAILID": _object_id,
    "THREADID": _object_id,
}


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
