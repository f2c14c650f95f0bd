"""The MIME structure of a message, with byte-exact offsets.

A message is parsed once (:func:`parse`) into a :class:`MessageStructure`, a
tree of :class:`Part` values that records, for every MIME part, where its
header block and body lie in the message file.  A part or its header is
then served by slicing the file (:func:`read_range`) instead of
re-serializing, and the structure is small enough for the storage index to
cache (:meth:`MessageStructure.to_bytes`).

Conventions, decided once:

* Offsets and sizes are octets of the file exactly as storage hands it out
  (wire form, CRLF line ends), so every size reported for a message or a
  part agrees with the octets served.  A bare LF is accepted as a line end
  wherever CRLF is; sizes then count the octets actually present (nothing
  is converted).
* A header block *includes* its terminating blank line.  A part without a
  blank line is all header with an empty body at its end.
* The CRLF before a multipart boundary delimiter belongs to the delimiter
  (RFC 2046 5.1.1), so it is not part of the preceding body.  A delimiter
  line belongs to the innermost open multipart with that boundary, so a
  multipart nested in one with the same boundary gets its own parts (as
  Dovecot reads such mail).
* Header values are kept as sent (unfolded, outer whitespace trimmed),
  decoded as Latin-1 so every octet survives and can be given back as
  the same octets.  Parameters (RFC 2231) and encoded words (RFC 2047) are
  left as sent; :mod:`mailsrv.mime.decoding` decodes for searching.
* Nothing here raises on malformed mail: missing or wrong boundaries,
  garbage Content-Type, 8-bit headers, absurd lines and empty messages all
  give a sensible structure.  Nesting deeper than :data:`MAX_DEPTH` is
  treated as an opaque leaf, and a multipart met after :data:`MAX_PARTS`
  parts keeps the parts it has: the rest of its body is not split.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import IO, Any, NamedTuple, TypeAlias

import attrs

from mailsrv.mime.fields import (
    Params,
    ends_with_blank_line,
    find_param,
    first_token,
    header_end,
    parse_content_type,
    parse_disposition,
    parse_language,
    split_fields,
)

__all__ = [
    "ENVELOPE_FIELDS",
    "FORMAT_VERSION",
    "MAX_DEPTH",
    "MAX_PARTS",
    "MessageStructure",
    "Part",
    "Source",
    "find_part",
    "parse",
    "read_range",
]

#: Multipart/message nesting beyond this depth is not looked into.
MAX_DEPTH = 100
#: Body parts of multiparts in one message beyond which no more are made:
#: a part costs tens of microseconds to parse and render and a few hundred
#: octets of memory, and a 64 MiB message could hold millions of empty
#: ones (minutes of CPU, gigabytes, on every FETCH BODYSTRUCTURE).
MAX_PARTS = 10000

#: The model's version: bumped whenever the cached structure or anything
#: worked out from it (the IMAP ENVELOPE and BODYSTRUCTURE rendered from it,
#: search texts) changes, so that nothing cached by an older model is
#: served (see :mod:`mailsrv.imap.content`).
FORMAT_VERSION = 2

#: Where a message is read from: a binary file object or its octets.
Source: TypeAlias = "IO[bytes] | bytes | bytearray | memoryview"

#: The header fields recorded for every part that is a message (the root
#: and each message/rfc822 part), in the order of IMAP's ENVELOPE (RFC 3501
#: 7.4.2), which is also their order in the cached structure.
ENVELOPE_FIELDS = (
    "date",
    "subject",
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "in-reply-to",
    "message-id",
)

_MIME_FIELDS = frozenset(
    {
        "content-type",
        "content-transfer-encoding",
        "content-id",
        "content-description",
        "content-disposition",
        "content-language",
        "content-location",
        "content-md5",
    }
)


@attrs.frozen
class Part:
    """One MIME entity: a header block and a body, located in the file.

    ``children`` holds the parts of a multipart; ``message`` the embedded
    message of a message/rfc822 part (its header starts at ``body_offset``).
    ``envelope_fields`` holds the raw envelope header values (in
    :data:`ENVELOPE_FIELDS` order) for parts that are messages: the root and
    every embedded message.  ``encoding`` is as sent, ``"7bit"`` by default.
    """

    header_offset: int
    header_size: int
    body_offset: int
    body_size: int
    lines: int
    type: str = "text"
    subtype: str = "plain"
    params: Params = ()
    id: str | None = None
    description: str | None = None
    encoding: str = "7bit"
    md5: str | None = None
    disposition: tuple[str, Params] | None = None
    language: tuple[str, ...] = ()
    location: str | None = None
    envelope_fields: tuple[str | None, ...] | None = None
    children: tuple[Part, ...] = ()
    message: Part | None = None

    @property
    def is_text(self) -> bool:
        return self.type.lower() == "text"

    def param(self, name: str) -> str | None:
        """The first parameter of this name (case-insensitive), as sent."""
        return find_param(self.params, name)

    def walk(self) -> Iterator[Part]:
        """This part and every part below it, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()
        if self.message is not None:
            yield from self.message.walk()


@attrs.frozen
class MessageStructure:
    """A parsed message: its size in octets and its root part."""

    size: int
    root: Part

    def to_bytes(self) -> bytes:
        """A compact JSON form for the storage cache (kind ``structure``)."""
        data = [FORMAT_VERSION, self.size, _part_to_list(self.root)]
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> MessageStructure:
        """Rebuild from :meth:`to_bytes`; ``ValueError`` if the data is not
        a structure of this format version (the caller then reparses)."""
        try:
            version, size, root = json.loads(data.decode("utf-8"))
            if version != FORMAT_VERSION or not isinstance(size, int):
                raise ValueError(f"unsupported structure format {version!r}")
            return cls(size, _part_from_list(root, 0))
        except (TypeError, KeyError, IndexError, UnicodeDecodeError, RecursionError) as exc:
            raise ValueError(f"corrupt cached structure: {exc}") from None


def _part_to_list(part: Part) -> list[Any]:
    return [
        part.header_offset,
        part.header_size,
        part.body_offset,
        part.body_size,
        part.lines,
        part.type,
        part.subtype,
        [list(p) for p in part.params],
        part.id,
        part.description,
        part.encoding,
        part.md5,
        None
        if part.disposition is None
        else [part.disposition[0], [list(p) for p in part.disposition[1]]],
        list(part.language),
        part.location,
        None if part.envelope_fields is None else list(part.envelope_fields),
        [_part_to_list(c) for c in part.children],
        None if part.message is None else _part_to_list(part.message),
    ]


def _pairs(value: Any) -> Params:
    return tuple((str(name), str(val)) for name, val in value)


def _part_from_list(data: list[Any], depth: int) -> Part:
    if depth > MAX_DEPTH + 1:
        raise ValueError("structure nested too deeply")
    (hoff, hsize, boff, bsize, lines, typ, sub, params, id_, desc, enc, md5, disp, lang, loc) = (
        data[:15]
    )
    env, children, message = data[15:18]
    for number in (hoff, hsize, boff, bsize, lines):
        if not isinstance(number, int):
            raise ValueError("corrupt cached structure: offsets must be integers")
    return Part(
        hoff,
        hsize,
        boff,
        bsize,
        lines,
        str(typ),
        str(sub),
        _pairs(params),
        id_,
        desc,
        str(enc),
        md5,
        None if disp is None else (str(disp[0]), _pairs(disp[1])),
        tuple(str(x) for x in lang),
        loc,
        None if env is None else tuple(env),
        tuple(_part_from_list(c, depth + 1) for c in children),
        None if message is None else _part_from_list(message, depth + 1),
    )


def _read_all(source: Source) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, (bytearray, memoryview)):
        return bytes(source)
    return source.read()


def parse(source: Source) -> MessageStructure:
    """Parse a message (a binary file object read from its current position,
    or bytes) into its structure.

    The message is held in memory once; every scan after that is a C-level
    ``find``/``count`` over it, so a 50 MB message costs linear time.
    """
    data = _read_all(source)
    root, _ = _parse_entity(_Delimiters(data), 0, ("text", "plain"), 0, True, ())
    return MessageStructure(len(data), root)


def _line_count(data: bytes, start: int, end: int) -> int:
    """Body lines as IMAP reports them: line ends in the body.  An
    unterminated last line (before a boundary's CRLF) is not counted,
    which is what Dovecot reports too."""
    return data.count(b"\n", start, end)


class _Stop(NamedTuple):
    """Where an entity ends: the delimiter line after it, or the end of the
    message (``level`` -1).  ``level`` indexes the stack of open multipart
    delimiters (outermost first) the line belongs to."""

    offset: int
    line_end: int
    level: int
    close: bool


class _Delimiters:
    """Finds the boundary delimiter lines of one message (RFC 2046 5.1.1).

    A line belongs to the innermost open multipart whose delimiter it is, so
    a multipart nested in one with the same boundary (Outlook Express for
    Mac wrote those) owns the lines up to its close delimiter, as Dovecot
    parses them.  The next line found is remembered per boundary, so each
    boundary's lines are searched for once over the message, however deep
    the nesting.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._next: dict[bytes, tuple[int, int, int, bool]] = {}
        #: Body parts made so far (bounded by :data:`MAX_PARTS`).
        self.parts = 0

    def find(self, delimiter: bytes, pos: int) -> tuple[int, int, bool]:
        """``(offset, line end, close)`` of the first delimiter line of
        ``delimiter`` at or after ``pos`` (offset -1: none).

        A delimiter line is ``--boundary`` (``--boundary--`` to close) at
        the start of a line, followed only by white space."""
        known = self._next.get(delimiter)
        if known is not None and known[0] <= pos and (known[1] < 0 or known[1] >= pos):
            return known[1:]
        data = self.data
        search = pos
        while True:
            found = data.find(delimiter, search)
            if found < 0:
                result = (-1, -1, False)
                break
            after = found + len(delimiter)
            if found == 0 or data[found - 1] == 0x0A:
                eol = data.find(b"\n", after)
                rest = data[after : len(data) if eol < 0 else eol]
                close = rest.startswith(b"--")
                if not (rest[2:] if close else rest).strip(b" \t\r"):
                    result = (found, len(data) if eol < 0 else eol + 1, close)
                    break
            search = after
        self._next[delimiter] = (pos, *result)
        return result

    def next_stop(self, pos: int, stack: Sequence[bytes]) -> _Stop:
        """The first delimiter line at or after ``pos`` of the open
        multiparts ``stack`` (outermost first); the innermost wins a line
        two of them share."""
        size = len(self.data)
        best = _Stop(size, size, -1, False)
        for level in range(len(stack) - 1, -1, -1):
            offset, line_end, close = self.find(stack[level], pos)
            if 0 <= offset < best.offset:
                best = _Stop(offset, line_end, level, close)
        return best


def _content_end(data: bytes, start: int, stop: _Stop) -> int:
    """Where what lies between ``start`` and ``stop`` ends: the line end
    before a delimiter belongs to the delimiter (RFC 2046 5.1.1)."""
    end = stop.offset
    if stop.level >= 0 and end > start and data[end - 1] == 0x0A:
        end -= 1
        if end > start and data[end - 1] == 0x0D:
            end -= 1
    return end


def _parse_entity(
    scan: _Delimiters,
    start: int,
    default: tuple[str, str],
    depth: int,
    is_message: bool,
    stack: tuple[bytes, ...],
) -> tuple[Part, _Stop]:
    """The entity at ``start`` and the stop that ends it: the first
    delimiter line of an enclosing multipart (``stack``) that none of its
    own multiparts claims, or the end of the message."""
    data = scan.data
    stop = scan.next_stop(start, stack)
    if stop.offset == start and 0 <= stop.level < len(stack) - 1:
        # Empty, and its parent ends too: the line end it follows belongs to
        # the delimiter, so it sits before that, at the end of its parent.
        start = _content_end(data, start - 2, stop)
    body_start = header_end(data, start, _content_end(data, start, stop))
    first = _header_values(data[start:body_start], is_message)
    typ, sub, params = _content_type(first.get("content-type"), default)
    encoding = first_token(first.get("content-transfer-encoding")) or "7bit"
    kind = (typ.lower(), sub.lower())
    children: tuple[Part, ...] = ()
    message: Part | None = None
    identity = encoding.lower() in ("7bit", "8bit", "binary")
    if depth >= MAX_DEPTH and (kind[0] == "multipart" or kind == ("message", "rfc822")):
        # Too deep to look into: an opaque leaf, so no recursion bomb.
        typ, sub = "application", "octet-stream"
    elif kind[0] == "multipart":
        body_start, children, stop = _multipart_body(
            scan, start, body_start, stop, params, kind[1] == "digest", depth, stack
        )
    elif kind == ("message", "rfc822") and identity:
        message, stop = _parse_entity(scan, body_start, ("text", "plain"), depth + 1, True, stack)

    end = _content_end(data, body_start, stop)
    disposition = parse_disposition(first.get("content-disposition"))
    part = Part(
        header_offset=start,
        header_size=body_start - start,
        body_offset=body_start,
        body_size=end - body_start,
        lines=_line_count(data, body_start, end),
        type=typ,
        subtype=sub,
        params=params,
        id=first.get("content-id"),
        description=first.get("content-description"),
        encoding=encoding,
        md5=first.get("content-md5"),
        disposition=disposition,
        language=parse_language(first.get("content-language")),
        location=first.get("content-location"),
        envelope_fields=tuple(first.get(n) for n in ENVELOPE_FIELDS) if is_message else None,
        children=children,
        message=message,
    )
    return part, stop


def _header_values(block: bytes, is_message: bool) -> dict[str, str]:
    """The MIME fields of a header block and, for a message, its envelope
    fields: name -> unfolded value."""
    first: dict[str, str] = {}
    for name, _raw, value in split_fields(block):
        # MIME fields: the first occurrence counts; envelope fields: the
        # last (as Dovecot does; RFC 5322 allows one of each).
        if name in _MIME_FIELDS and name not in first:
            first[name] = value.decode("latin-1")
        elif is_message and name in ENVELOPE_FIELDS:
            first[name] = value.decode("latin-1")
    return first


def _content_type(value: str | None, default: tuple[str, str]) -> tuple[str, str, Params]:
    """Type, subtype and parameters from a Content-Type value, or the
    context's default when it is missing or invalid (RFC 2045 5.2)."""
    content_type = parse_content_type(value)
    if content_type is None:
        typ, sub = default
        return typ, sub, (("charset", "us-ascii"),) if default == ("text", "plain") else ()
    typ, sub, params = content_type
    if typ.lower() == "text" and find_param(params, "charset") is None:
        # RFC 2045 5.2: text without a charset is US-ASCII; say so.
        params = (*params, ("charset", "us-ascii"))
    return typ, sub, params


def _multipart_body(
    scan: _Delimiters,
    start: int,
    body_start: int,
    stop: _Stop,
    params: Params,
    digest: bool,
    depth: int,
    stack: tuple[bytes, ...],
) -> tuple[int, tuple[Part, ...], _Stop]:
    """The body of the multipart whose header starts at ``start``: where
    the body starts, its parts, and the stop that ends the multipart."""
    data = scan.data
    children: tuple[Part, ...] = ()
    boundary = find_param(params, "boundary")
    if boundary:
        delimiter = b"--" + boundary.encode("latin-1")
        opened = ends_with_blank_line(data[start:body_start])
        if not opened and stop.level >= 0:
            own_start = _body_at_own_delimiter(scan, start, stop, delimiter)
            if own_start is not None:
                body_start, opened = own_start, True
        if opened:
            child_default = ("message", "rfc822") if digest else ("text", "plain")
            children, stop = _parse_parts(
                scan, body_start, child_default, depth, (*stack, delimiter)
            )
    if not children:
        # No (usable) boundary: the whole body is one text part with an
        # empty MIME header, so the multipart still has its part 1.
        end = _content_end(data, body_start, stop)
        children = (
            Part(
                body_start,
                0,
                body_start,
                end - body_start,
                _line_count(data, body_start, end),
                params=(("charset", "us-ascii"),),
            ),
        )
    return body_start, children, stop


def _body_at_own_delimiter(
    scan: _Delimiters, start: int, stop: _Stop, delimiter: bytes
) -> int | None:
    """Where the body starts if the header's blank line is the line end
    just before ``stop``, taken as a delimiter's (RFC 2046 5.1.1), else None.

    That is so when the stop line is this multipart's own first delimiter
    (innermost wins): the line end is the header's, and a body without
    preamble starts with its dash-boundary, no CRLF before it.
    """
    data = scan.data
    whole = header_end(data, start, stop.offset)
    own = scan.find(delimiter, stop.offset)[0] == stop.offset
    if own and whole == stop.offset and ends_with_blank_line(data[start:whole]):
        return whole
    return None


def _parse_parts(
    scan: _Delimiters,
    body_start: int,
    default: tuple[str, str],
    depth: int,
    stack: tuple[bytes, ...],
) -> tuple[tuple[Part, ...], _Stop]:
    """The body parts of the multipart whose delimiter is ``stack[-1]``,
    and the stop that ends the multipart.

    The preamble and epilogue are left out of the parts; after the close
    delimiter the multipart runs on (its epilogue) to the next delimiter of
    an enclosing one.  A missing close delimiter ends the last part where
    an enclosing delimiter or the message ends.
    """
    own = len(stack) - 1
    delimiter = scan.next_stop(body_start, stack)
    if delimiter.level != own:
        return (), delimiter
    parts: list[Part] = []
    while not delimiter.close:
        if scan.parts >= MAX_PARTS:
            # Enough parts: the rest of this multipart is not split.
            return tuple(parts), _after_close(scan, delimiter.line_end, stack)
        scan.parts += 1
        part, delimiter = _parse_entity(scan, delimiter.line_end, default, depth + 1, False, stack)
        parts.append(part)
        if delimiter.level != own:
            return tuple(parts), delimiter
    return tuple(parts), scan.next_stop(delimiter.line_end, stack[:own])


def _after_close(scan: _Delimiters, pos: int, stack: tuple[bytes, ...]) -> _Stop:
    """The stop that ends the multipart of delimiter ``stack[-1]`` from
    ``pos`` on, skipping its own delimiter lines at C speed: the first
    delimiter line of an enclosing multipart, unless its own close
    delimiter comes first (then the first enclosing one after that, as
    :func:`_parse_parts` ends a multipart)."""
    own = len(stack) - 1
    enclosing = scan.next_stop(pos, stack[:own])
    close = _close_line(scan.data, stack[own], pos, enclosing.offset)
    if close is None:
        return enclosing
    return scan.next_stop(close, stack[:own])


def _close_line(data: bytes, delimiter: bytes, pos: int, before: int) -> int | None:
    """The end of the first close delimiter line (``--boundary--`` at a
    line's start, then only white space) between ``pos`` and ``before``."""
    marker = delimiter + b"--"
    search = pos
    while True:
        found = data.find(marker, search, before)
        if found < 0:
            return None
        search = found + len(marker)
        if found == 0 or data[found - 1] == 0x0A:
            eol = data.find(b"\n", search)
            if not data[search : len(data) if eol < 0 else eol].strip(b" \t\r"):
                return len(data) if eol < 0 else eol + 1


# ---------------------------------------------------------------------------
# Finding and reading parts
# ---------------------------------------------------------------------------


def find_part(structure: MessageStructure, part: Sequence[int]) -> Part | None:
    """The part that dotted part numbers (``(2, 1)`` for 2.1) name, or
    None if there is none.

    The numbering is the usual MIME one (RFC 3501 6.4.5 spells it out): a
    non-multipart message has only part 1, its own body; the parts of a
    message/rfc822 part are those of the message it encloses.
    """
    message = structure.root
    node: Part | None = None
    for number in part:
        if node is not None:
            if node.children:
                message = node
            elif node.message is not None:
                message = node.message
            else:
                return None
        if message.children:
            if not 1 <= number <= len(message.children):
                return None
            node = message.children[number - 1]
        elif number == 1:
            node = message
        else:
            return None
    return node


def read_range(source: Source, offset: int, length: int) -> bytes:
    """``length`` octets at ``offset`` of a file object or bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[offset : offset + length])
    source.seek(offset)
    return source.read(length)
