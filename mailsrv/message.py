"""The parsed message model: MIME structure with byte-exact offsets.

A message is parsed once (:func:`parse`) into a :class:`MessageStructure`, a
tree of :class:`Part` values that records, for every MIME part, where its
header block and body lie in the message file.  FETCH then serves any
``BODY[section]`` by slicing the file (:func:`section_range`) instead of
re-serializing, and the structure is small enough for the storage index to
cache (:meth:`MessageStructure.to_bytes`).

Conventions, decided once:

* Offsets and sizes are octets of the file exactly as storage hands it out
  (wire form, CRLF line ends), so RFC822.SIZE, BODY[] and partial fetches
  agree.  A bare LF is accepted as a line end wherever CRLF is; sizes then
  count the octets actually present (nothing is converted).
* A header block *includes* its terminating blank line, as RFC 3501's
  ``BODY[HEADER]`` does.  A part without a blank line is all header with an
  empty body at its end.
* The CRLF before a multipart boundary delimiter belongs to the delimiter
  (RFC 2046 5.1.1), so it is not part of the preceding body.  A delimiter
  line belongs to the innermost open multipart with that boundary, so a
  multipart nested in one with the same boundary gets its own parts (as
  Dovecot reads such mail).
* Header values are kept as sent (unfolded, outer whitespace trimmed),
  decoded as Latin-1 so every octet survives; IMAP answers them back as
  the same octets.  Parameters (RFC 2231) and encoded words (RFC 2047) are
  left as sent; :func:`decode_words` and :func:`text_parts` decode for
  SEARCH.
* Nothing here raises on malformed mail: missing or wrong boundaries,
  garbage Content-Type, 8-bit headers, absurd lines and empty messages all
  give a sensible structure.  Nesting deeper than :data:`MAX_DEPTH` is
  treated as an opaque leaf.

The IMAP values (:func:`envelope`, :func:`body_structure`) are nested Python
values: tuples for parenthesized lists, ``bytes`` for strings, ``None`` for
NIL, ``int`` for numbers.  :func:`render_envelope` and
:func:`render_body_structure` write them exactly as RFC 3501 section 9 spells
them (no space between the bodies of a multipart or the addresses of an
address list).
"""

from __future__ import annotations

import binascii
import codecs
import json
import re
from collections.abc import Iterator, Sequence
from typing import IO, Any, NamedTuple, TypeAlias

import attrs

#: Multipart/message nesting beyond this depth is not looked into.
MAX_DEPTH = 100

#: The model's version: bumped whenever the cached structure or anything
#: worked out from it (ENVELOPE, BODYSTRUCTURE, search texts) changes, so
#: that nothing cached by an older model is served (see
#: :mod:`mailsrv.imap.content`).
FORMAT_VERSION = 2

Params: TypeAlias = tuple[tuple[str, str], ...]
Source: TypeAlias = "IO[bytes] | bytes | bytearray | memoryview"
ImapValue: TypeAlias = "bytes | int | tuple[ImapValue, ...] | None"

#: Envelope header fields in RFC 3501 7.4.2 order.
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
_ADDRESS_SLOTS = range(2, 8)

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
        return _param(self.params, name)

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


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


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


def _header_end(data: bytes, start: int, end: int) -> int:
    """Where the header block starting at ``start`` ends (after its blank
    line), or ``end`` when there is no blank line."""
    if data.startswith(b"\r\n", start) and start + 2 <= end:
        return start + 2
    if data.startswith(b"\n", start) and start + 1 <= end:
        return start + 1
    crlf = data.find(b"\n\r\n", start, end)
    lf = data.find(b"\n\n", start, end)
    if crlf < 0 and lf < 0:
        return end
    if lf < 0 or (0 <= crlf < lf):
        return crlf + 3
    return lf + 2


def _ends_with_blank_line(block: bytes) -> bool:
    return block in (b"\r\n", b"\n") or block.endswith((b"\n\r\n", b"\n\n"))


def _fields(block: bytes) -> list[tuple[str, bytes, bytes]]:
    """Split a header block into ``(lower name, raw field, unfolded value)``.

    ``raw field`` keeps the field's own octets and line ends.  Lines that
    are neither fields nor their continuations (a continuation at the very
    start, a line without a colon) come out with the name ``""``: no field
    matches them, but HEADER.FIELDS.NOT keeps them, as Dovecot does.
    """
    out: list[tuple[str, bytes, bytes]] = []
    name: str | None = None
    raw: list[bytes] = []
    for line in block.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and name is not None:
            raw.append(line)
            continue
        if name is not None:
            out.append(_field(name, raw))
        colon = line.find(b":")
        if colon <= 0 or line[:1] in (b" ", b"\t"):
            name = None
            out.append(("", line, b""))
            continue
        name = line[:colon].rstrip(b" \t").decode("latin-1").lower()
        raw = [line]
    if name is not None:
        out.append(_field(name, raw))
    return out


def _field(name: str, raw: list[bytes]) -> tuple[str, bytes, bytes]:
    whole = b"".join(raw)
    value = whole[whole.index(b":") + 1 :]
    unfolded = value.replace(b"\r\n", b"").replace(b"\n", b"").replace(b"\r", b"")
    return name, whole, unfolded.strip(b" \t")


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
    body_start = _header_end(data, start, _content_end(data, start, stop))
    first: dict[str, str] = {}
    for name, _raw, value in _fields(data[start:body_start]):
        # MIME fields: the first occurrence counts; envelope fields: the
        # last (as Dovecot does; RFC 5322 allows one of each).
        if name in _MIME_FIELDS and name not in first:
            first[name] = value.decode("latin-1")
        elif is_message and name in ENVELOPE_FIELDS:
            first[name] = value.decode("latin-1")

    content_type = _content_type(first.get("content-type"))
    if content_type is None:
        typ, sub = default
        params: Params = (("charset", "us-ascii"),) if default == ("text", "plain") else ()
    else:
        typ, sub, params = content_type
        if typ.lower() == "text" and _param(params, "charset") is None:
            # RFC 2045 5.2: text without a charset is US-ASCII; say so.
            params = (*params, ("charset", "us-ascii"))
    encoding = _first_token(first.get("content-transfer-encoding")) or "7bit"
    kind = (typ.lower(), sub.lower())
    children: tuple[Part, ...] = ()
    message: Part | None = None
    identity = encoding.lower() in ("7bit", "8bit", "binary")
    if depth >= MAX_DEPTH and (kind[0] == "multipart" or kind == ("message", "rfc822")):
        # Too deep to look into: an opaque leaf, so no recursion bomb.
        typ, sub = "application", "octet-stream"
    elif kind[0] == "multipart":
        child_default = ("message", "rfc822") if kind[1] == "digest" else ("text", "plain")
        boundary = _param(params, "boundary")
        if boundary:
            delimiter = b"--" + boundary.encode("latin-1")
            opened = _ends_with_blank_line(data[start:body_start])
            if not opened and stop.level >= 0:
                # The header's blank line may be the line end just before the
                # stop, taken as a delimiter's (RFC 2046 5.1.1).  If the line
                # is this multipart's own first delimiter (innermost wins),
                # the line end is the header's: a body without preamble
                # starts with its dash-boundary, no CRLF before it.
                whole = _header_end(data, start, stop.offset)
                own = scan.find(delimiter, stop.offset)[0] == stop.offset
                if own and whole == stop.offset and _ends_with_blank_line(data[start:whole]):
                    body_start, opened = whole, True
            if opened:
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
    elif kind == ("message", "rfc822") and identity:
        message, stop = _parse_entity(scan, body_start, ("text", "plain"), depth + 1, True, stack)

    end = _content_end(data, body_start, stop)
    disposition = _disposition(first.get("content-disposition"))
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
        language=_language(first.get("content-language")),
        location=first.get("content-location"),
        envelope_fields=tuple(first.get(n) for n in ENVELOPE_FIELDS) if is_message else None,
        children=children,
        message=message,
    )
    return part, stop


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
        part, delimiter = _parse_entity(scan, delimiter.line_end, default, depth + 1, False, stack)
        parts.append(part)
        if delimiter.level != own:
            return tuple(parts), delimiter
    return tuple(parts), scan.next_stop(delimiter.line_end, stack[:own])


# ---------------------------------------------------------------------------
# Structured MIME fields (RFC 2045 5.1, RFC 2183, RFC 3282)
# ---------------------------------------------------------------------------

_TSPECIALS = frozenset('()<>@,;:\\"/[]?=')


class _Scanner:
    """A cursor over a structured header value that skips comments."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_cfws(self) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r\n":
                self.pos += 1
            elif char == "(":
                self.pos = _comment(text, self.pos)[1]
            else:
                break

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def token(self) -> str:
        start = self.pos
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in _TSPECIALS or char in " \t\r\n" or ord(char) < 0x20:
                break
            self.pos += 1
        return text[start : self.pos]

    def value(self) -> str:
        if self.peek() == '"':
            value, self.pos = _quoted(self.text, self.pos)
            return value
        start = self.pos
        text = self.text
        # Tolerate unquoted values carrying tspecials (common in the wild):
        # take everything up to the next ';' or whitespace.
        while self.pos < len(text) and text[self.pos] not in "; \t\r\n":
            self.pos += 1
        return text[start : self.pos]


def _comment(text: str, pos: int) -> tuple[str, int]:
    """A comment starting at ``text[pos] == '('``: its text and the end."""
    depth = 0
    out: list[str] = []
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
            continue
        if char == "(":
            depth += 1
            if depth > 1:
                out.append(char)
        elif char == ")":
            depth -= 1
            if depth == 0:
                return "".join(out), pos + 1
            out.append(char)
        else:
            out.append(char)
        pos += 1
    return "".join(out), pos


def _quoted(text: str, pos: int) -> tuple[str, int]:
    """A quoted string starting at ``text[pos] == '"'``: unescaped content
    and the end (an unterminated one runs to the end of the text)."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
            continue
        if char == '"':
            return "".join(out), pos + 1
        out.append(char)
        pos += 1
    return "".join(out), pos


def _parameters(scanner: _Scanner) -> Params:
    params: list[tuple[str, str]] = []
    text = scanner.text
    while True:
        scanner.skip_cfws()
        if scanner.pos >= len(text):
            break
        if scanner.peek() != ";":
            # Garbage between parameters: resynchronise at the next ';'.
            nxt = text.find(";", scanner.pos)
            if nxt < 0:
                break
            scanner.pos = nxt
        scanner.pos += 1
        scanner.skip_cfws()
        name = scanner.token()
        scanner.skip_cfws()
        if not name or scanner.peek() != "=":
            continue
        scanner.pos += 1
        scanner.skip_cfws()
        params.append((name, scanner.value()))
    return tuple(params)


def _content_type(value: str | None) -> tuple[str, str, Params] | None:
    """``type/subtype; params``, or None when missing or not of that shape
    (RFC 2045 5.2: then the default applies)."""
    if value is None:
        return None
    scanner = _Scanner(value)
    scanner.skip_cfws()
    typ = scanner.token()
    scanner.skip_cfws()
    if not typ or scanner.peek() != "/":
        return None
    scanner.pos += 1
    scanner.skip_cfws()
    sub = scanner.token()
    if not sub:
        return None
    return typ, sub, _parameters(scanner)


def _disposition(value: str | None) -> tuple[str, Params] | None:
    if value is None:
        return None
    scanner = _Scanner(value)
    scanner.skip_cfws()
    kind = scanner.token()
    if not kind:
        return None
    return kind, _parameters(scanner)


def _first_token(value: str | None) -> str | None:
    if value is None:
        return None
    scanner = _Scanner(value)
    scanner.skip_cfws()
    return scanner.token() or None


def _language(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    out: list[str] = []
    for item in value.split(","):
        scanner = _Scanner(item)
        scanner.skip_cfws()
        start = scanner.pos
        while scanner.pos < len(item) and item[scanner.pos] not in " \t(":
            scanner.pos += 1
        if scanner.pos > start:
            out.append(item[start : scanner.pos])
    return tuple(out)


def _param(params: Params, name: str) -> str | None:
    lowered = name.lower()
    for key, value in params:
        if key.lower() == lowered:
            return value
    return None


# ---------------------------------------------------------------------------
# Addresses (RFC 5322 3.4, with the obsolete forms of 4.4 tolerated)
# ---------------------------------------------------------------------------

_ADDRESS_SPECIALS = frozenset('()<>[]:;@\\,."')

# Token kinds.
_WORD, _QUOTED, _SPECIAL, _COMMENT, _LITERAL = range(5)


def _address_tokens(text: str) -> list[tuple[int, str]]:
    tokens: list[tuple[int, str]] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char in " \t\r\n":
            pos += 1
        elif char == "(":
            comment, pos = _comment(text, pos)
            tokens.append((_COMMENT, comment))
        elif char == '"':
            quoted, pos = _quoted(text, pos)
            tokens.append((_QUOTED, quoted))
        elif char == "[":
            close = text.find("]", pos)
            stop = len(text) if close < 0 else close + 1
            tokens.append((_LITERAL, text[pos:stop]))
            pos = stop
        elif char in _ADDRESS_SPECIALS:
            tokens.append((_SPECIAL, char))
            pos += 1
        else:
            start = pos
            while (
                pos < len(text)
                and text[pos] not in _ADDRESS_SPECIALS
                and text[pos] not in " \t\r\n"
            ):
                pos += 1
            tokens.append((_WORD, text[start:pos]))
    return tokens


Address: TypeAlias = tuple[bytes | None, bytes | None, bytes | None, bytes | None]


def _b(text: str | None) -> bytes | None:
    return None if text is None else text.encode("latin-1", "replace")


def _phrase(tokens: Sequence[tuple[int, str]]) -> str | None:
    """Display-name text: words joined by one space, quotes removed."""
    out = ""
    for kind, text in tokens:
        if kind == _COMMENT:
            continue
        if kind == _SPECIAL and text == ".":
            out += "."
            continue
        if kind == _SPECIAL:
            continue
        out = f"{out} {text}" if out else text
    return out or None


def _spec_text(tokens: Sequence[tuple[int, str]]) -> str:
    """A local part or domain as written, without comments or spaces."""
    out: list[str] = []
    for kind, text in tokens:
        if kind == _COMMENT:
            continue
        out.append(f'"{text}"' if kind == _QUOTED else text)
    return "".join(out)


def _mailbox(tokens: list[tuple[int, str]]) -> Address | None:
    """One mailbox (name-addr or addr-spec) from its tokens.

    Comments are no part of an address (RFC 5322 3.2.2): a list element of
    nothing but comments is an empty element (RFC 5322 4.4, obs-mbox-list
    and obs-group-list), not a mailbox, and a comment never names an
    angle-addr.  Only the old ``addr-spec (Full Name)`` form takes its name
    from a comment: the last one after the address starts, as Dovecot does.
    """
    first_word = next((i for i, (kind, _) in enumerate(tokens) if kind != _COMMENT), None)
    if first_word is None:
        return None
    angle = next((i for i, (k, t) in enumerate(tokens) if k == _SPECIAL and t == "<"), None)
    route: str | None = None
    if angle is not None:
        name = _phrase(tokens[:angle])
        close = next(
            (i for i, (k, t) in enumerate(tokens) if i > angle and k == _SPECIAL and t == ">"),
            len(tokens),
        )
        inner = [t for t in tokens[angle + 1 : close] if t[0] != _COMMENT]
        colon = next((i for i, (k, t) in enumerate(inner) if k == _SPECIAL and t == ":"), None)
        if colon is not None and inner and inner[0] == (_SPECIAL, "@"):
            route = _spec_text(inner[:colon]) or None
            inner = inner[colon + 1 :]
        spec = inner
    else:
        spec = [t for t in tokens if t[0] != _COMMENT]
        comments = [text for kind, text in tokens[first_word:] if kind == _COMMENT]
        name = (comments[-1].strip() or None) if comments else None
    at = max((i for i, (k, t) in enumerate(spec) if k == _SPECIAL and t == "@"), default=None)
    if at is None:
        local, domain = _spec_text(spec), None
    else:
        local, domain = _spec_text(spec[:at]), _spec_text(spec[at + 1 :])
    if not local and not domain and name is None:
        return None
    # A missing domain must not read as group syntax (host NIL): it is
    # filled in as Dovecot does, as is a missing local part.
    return (_b(name), _b(route), _b(local or "MISSING_MAILBOX"), _b(domain or "MISSING_DOMAIN"))


def parse_addresses(value: str | None) -> tuple[Address, ...] | None:
    """An RFC 5322 address list as IMAP envelope addresses (RFC 3501
    7.4.2), group start/end markers included; None when there are none."""
    if value is None:
        return None
    tokens = _address_tokens(value)
    out: list[Address] = []
    current: list[tuple[int, str]] = []
    in_group = False
    in_angle = False
    for token in tokens:
        kind, text = token
        if kind == _SPECIAL:
            if text == "<":
                in_angle = True
            elif text == ">":
                in_angle = False
            elif text == "," and not in_angle:
                address = _mailbox(current)
                if address is not None:
                    out.append(address)
                current = []
                continue
            elif text == ":" and not in_angle and not in_group:
                out.append((None, None, _b(_phrase(current) or ""), None))
                current = []
                in_group = True
                continue
            elif text == ";" and not in_angle and in_group:
                address = _mailbox(current)
                if address is not None:
                    out.append(address)
                current = []
                out.append((None, None, None, None))
                in_group = False
                continue
        current.append(token)
    address = _mailbox(current)
    if address is not None:
        out.append(address)
    if in_group:
        out.append((None, None, None, None))
    return tuple(out) or None


def address_text(value: str) -> str:
    """What SEARCH FROM, TO, CC and BCC look in for one address field:
    "the envelope structure's" field (RFC 3501 6.4.4), written out.

    Each mailbox is ``name <local@domain>`` (``<@route:local@domain>``; no
    name: ``<local@domain>``; a name that is not one atom is quoted), a
    group ``name: members;``, all joined by ``", "``, as Dovecot writes them
    for its search; encoded words are decoded.  Comments and folding white
    space are no part of an address (RFC 5322 3.2.2), so
    ``<user (comment)@ (comment) domain.org>`` reads ``<user@domain.org>``."""
    out: list[bytes] = []
    group: bytes | None = None
    members: list[bytes] = []
    for name, route, local, domain in parse_addresses(value) or ():
        if domain is None:
            if local is not None:  # a group starts
                group, members = local, []
            elif group is not None:  # the group ends
                out.append(
                    (group + b": " + b", ".join(members) if members else group + b":") + b";"
                )
                group = None
            continue
        spec = b"<" + (route + b":" if route else b"") + (local or b"") + b"@" + domain + b">"
        text = _display_name(name) + b" " + spec if name else spec
        (members if group is not None else out).append(text)
    return decode_words(b", ".join(out))


#: RFC 5322 3.2.3 atext, and 8-bit octets (RFC 6532 allows UTF-8 there).
_ATEXT = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-/=?^_`{|}~"
) | frozenset(range(0x80, 0x100))


def _display_name(name: bytes) -> bytes:
    """A display name as written in a header: quoted unless it is one atom
    (so ``"Bob Example" <bob@example.net>``, as Dovecot searches it)."""
    if all(octet in _ATEXT for octet in name):
        return name
    return b'"' + name.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


# ---------------------------------------------------------------------------
# IMAP values: ENVELOPE and BODYSTRUCTURE (RFC 3501 7.4.2, 9)
# ---------------------------------------------------------------------------


def _envelope_of(fields: tuple[str | None, ...] | None) -> tuple[ImapValue, ...]:
    values: list[str | None] = list(fields or (None,) * len(ENVELOPE_FIELDS))
    out: list[ImapValue] = []
    for index, raw in enumerate(values):
        if index in _ADDRESS_SLOTS:
            out.append(parse_addresses(raw))
        else:
            out.append(_b(raw))
    # Sender and Reply-To default to From when absent or empty.
    for slot in (3, 4):
        if out[slot] is None:
            out[slot] = out[2]
    return tuple(out)


def envelope(structure: MessageStructure) -> tuple[ImapValue, ...]:
    """The message's ENVELOPE as nested values."""
    return _envelope_of(structure.root.envelope_fields)


def _params_value(params: Params) -> ImapValue:
    if not params:
        return None
    flat: list[ImapValue] = []
    for name, value in params:
        flat.append(_b(name))
        flat.append(_b(value))
    return tuple(flat)


def _extension(part: Part) -> list[ImapValue]:
    disposition: ImapValue = None
    if part.disposition is not None:
        disposition = (_b(part.disposition[0]), _params_value(part.disposition[1]))
    language: ImapValue = tuple(_b(x) for x in part.language) if part.language else None
    return [disposition, language, _b(part.location)]


def _body_value(part: Part, extensible: bool) -> tuple[ImapValue, ...]:
    if part.children:
        multi: list[ImapValue] = [_body_value(c, extensible) for c in part.children]
        multi.append(_b(part.subtype))
        if extensible:
            multi.append(_params_value(part.params))
            multi.extend(_extension(part))
        return tuple(multi)
    out: list[ImapValue] = [
        _b(part.type),
        _b(part.subtype),
        _params_value(part.params),
        _b(part.id),
        _b(part.description),
        _b(part.encoding),
        part.body_size,
    ]
    if part.message is not None:
        out.append(_envelope_of(part.message.envelope_fields))
        out.append(_body_value(part.message, extensible))
        out.append(part.lines)
    elif part.type.lower() == "message" and part.subtype.lower() == "rfc822":
        # Not looked into (encoded, RFC 2046 5.2.1 forbids that): clients
        # parse "MESSAGE" "RFC822" as body-type-msg, so give an empty
        # envelope and body rather than break their parsers.
        empty = Part(
            part.body_offset,
            0,
            part.body_offset + part.body_size,
            0,
            0,
            params=(("charset", "us-ascii"),),
        )
        out.append(_envelope_of(None))
        out.append(_body_value(empty, extensible))
        out.append(part.lines)
    elif part.is_text:
        out.append(part.lines)
    if extensible:
        out.append(_b(part.md5))
        out.extend(_extension(part))
    return tuple(out)


def body_structure(structure: MessageStructure, extensible: bool) -> tuple[ImapValue, ...]:
    """BODYSTRUCTURE (``extensible``) or BODY as nested values."""
    return _body_value(structure.root, extensible)


def render_string(value: bytes | None) -> bytes:
    """An nstring: quoted when 7-bit and free of CR/LF/NUL and of the two
    characters that would need escaping, else a literal.

    A literal for ``"`` and ``\\`` is what Dovecot sends too, and it spares
    clients whose quoted-string parsers mishandle escapes."""
    if value is None:
        return b"NIL"
    if len(value) < 1024 and not value.translate(None, _QUOTABLE):
        return b'"' + value + b'"'
    return b"{%d}\r\n" % len(value) + value


#: Octets a quoted string may hold unescaped: printable 7-bit and space,
#: tab, minus ``"`` and ``\\``.
_QUOTABLE = bytes(c for c in range(0x01, 0x80) if c not in (0x0A, 0x0D, 0x22, 0x5C))


def render(value: ImapValue) -> bytes:
    """Generic rendering: lists with SP between items."""
    if value is None or isinstance(value, bytes):
        return render_string(value)
    if isinstance(value, int):
        return b"%d" % value
    return b"(" + b" ".join(render(v) for v in value) + b")"


def _render_addresses(value: ImapValue) -> bytes:
    if value is None or isinstance(value, (bytes, int)):
        return render(value)
    return b"(" + b"".join(render(a) for a in value) + b")"


def render_envelope(value: Sequence[ImapValue]) -> bytes:
    """ENVELOPE exactly as RFC 3501 9 writes it (``1*address``: no SP)."""
    items = [
        _render_addresses(v) if i in _ADDRESS_SLOTS else render(v) for i, v in enumerate(value)
    ]
    return b"(" + b" ".join(items) + b")"


def render_body_structure(value: Sequence[ImapValue]) -> bytes:
    """BODY/BODYSTRUCTURE exactly as RFC 3501 9 writes it (``1*body``)."""
    if value and isinstance(value[0], tuple):
        count = 0
        while count < len(value) and isinstance(value[count], tuple):
            count += 1
        bodies = b"".join(render_body_structure(v) for v in value[:count])  # type: ignore[arg-type]
        rest = [render(v) for v in value[count:]]
        return b"(" + b" ".join([bodies, *rest]) + b")"
    items: list[bytes] = []
    is_message = (
        len(value) >= 10
        and isinstance(value[0], bytes)
        and isinstance(value[1], bytes)
        and value[0].lower() == b"message"
        and value[1].lower() == b"rfc822"
        and isinstance(value[7], tuple)
    )
    for index, item in enumerate(value):
        if is_message and index == 7:
            items.append(render_envelope(item))  # type: ignore[arg-type]
        elif is_message and index == 8:
            items.append(render_body_structure(item))  # type: ignore[arg-type]
        else:
            items.append(render(item))
    return b"(" + b" ".join(items) + b")"


# ---------------------------------------------------------------------------
# Sections (RFC 3501 6.4.5)
# ---------------------------------------------------------------------------

def find_part(structure: MessageStructure, part: Sequence[int]) -> Part | None:
    """The part a section's part numbers name, or None if there is none.

    A non-multipart message has only part 1, its own body; the parts of a
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


def section_range(
    structure: MessageStructure,
    part: Sequence[int],
    kind: str | None,
) -> tuple[int, int] | None:
    """``(offset, length)`` of the octets a BODY[section] names, or None if
    the section does not exist in this message.

    ``kind`` is None (the part itself), HEADER, HEADER.FIELDS(.NOT) (the
    range of the header block to filter, see :func:`header_fields`), TEXT
    or MIME.  HEADER, TEXT and their kin with part numbers need a
    message/rfc822 part; MIME needs part numbers.
    """
    upper = None if kind is None else kind.upper()
    if not part:
        root = structure.root
        if upper is None:
            return (0, structure.size)
        if upper == "TEXT":
            return (root.body_offset, root.body_size)
        if upper in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            return (root.header_offset, root.header_size)
        return None
    node = find_part(structure, part)
    if node is None:
        return None
    if upper is None:
        return (node.body_offset, node.body_size)
    if upper == "MIME":
        return (node.header_offset, node.header_size)
    if node.message is None:
        return None
    if upper == "TEXT":
        return (node.message.body_offset, node.message.body_size)
    if upper in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        return (node.message.header_offset, node.message.header_size)
    return None


def read_range(source: Source, offset: int, length: int) -> bytes:
    """``length`` octets at ``offset`` of a file object or bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[offset : offset + length])
    source.seek(offset)
    return source.read(length)


def header_fields(
    structure: MessageStructure,
    source: Source,
    names: Sequence[str],
    negate: bool,
    part: Sequence[int] = (),
) -> bytes | None:
    """BODY[HEADER.FIELDS (names)] (or .NOT with ``negate``): the matching
    fields as sent, in message order, then the blank line (RFC 3501 6.4.5).

    A last field without a line end gets CRLF; the blank line is added only
    when the header has one (a headers-only message has none, and its
    BODY[HEADER] has none either).  None if the section names no header.
    """
    where = section_range(structure, part, "HEADER")
    if where is None:
        return None
    return filter_fields(read_range(source, *where), names, negate)


#: Octets read at a time while looking for the end of a message header.
_HEADER_CHUNK = 16 * 1024


def read_header(source: IO[bytes]) -> bytes:
    """The message's own header block (BODY[HEADER]) read from the start of
    a file, without reading the body: FETCH of chosen header fields and
    header SEARCH need no parse of a message with a large attachment.

    Agrees with :func:`parse` (``_header_end``) on where the block ends."""
    source.seek(0)
    data = bytearray()
    while True:
        chunk = source.read(_HEADER_CHUNK)
        if not chunk:
            return bytes(data)  # no blank line: all header
        # Only the last two octets already read can begin a blank line
        # that this chunk completes.
        start = max(len(data) - 2, 0)
        data += chunk
        if start == 0:
            for empty in (b"\r\n", b"\n"):
                if data.startswith(empty):
                    return empty
        crlf = data.find(b"\n\r\n", start)
        lf = data.find(b"\n\n", start)
        if crlf >= 0 and (lf < 0 or crlf < lf):
            return bytes(data[: crlf + 3])
        if lf >= 0:
            return bytes(data[: lf + 2])


def filter_fields(block: bytes, names: Sequence[str], negate: bool) -> bytes:
    """HEADER.FIELDS (``negate``: HEADER.FIELDS.NOT) applied to a header
    block, as :func:`header_fields` describes."""
    wanted = {n.lower() for n in names}
    out = []
    for name, raw, _ in _fields(block):
        if (name in wanted) != negate and (name or negate):
            out.append(raw if raw.endswith(b"\n") else raw + b"\r\n")
    if block.endswith((b"\n\r\n", b"\n\n")) or block in (b"\r\n", b"\n"):
        out.append(b"\r\n")
    return b"".join(out)


# ---------------------------------------------------------------------------
# Decoding: BINARY (RFC 3516) and SEARCH text
# ---------------------------------------------------------------------------

_BASE64_KEEP = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_BASE64_DROP = bytes(c for c in range(256) if c not in _BASE64_KEEP)


def decode_base64(data: bytes) -> bytes:
    """Lenient base64: ignore anything outside the alphabet, stop at the
    padding, and drop an incomplete final group rather than fail."""
    clean = data.translate(None, _BASE64_DROP)
    pad = clean.find(b"=")
    if pad >= 0:
        clean = clean[:pad]
    usable = len(clean) - len(clean) % 4
    tail = clean[usable:]
    out = binascii.a2b_base64(clean[:usable]) if usable else b""
    if len(tail) >= 2:
        out += binascii.a2b_base64(tail + b"=" * (4 - len(tail)))
    return out


_QP_TRAILING_SPACE = re.compile(rb"[ \t]+(?=\r?\n|$)")


def decode_quoted_printable(data: bytes) -> bytes:
    """Quoted-printable (RFC 2045 6.7), dropping transport padding; bad
    ``=`` sequences are kept as they are."""
    return binascii.a2b_qp(_QP_TRAILING_SPACE.sub(b"", data))


def _decode_body(encoding: str, body: bytes) -> bytes | None:
    lowered = encoding.lower()
    if lowered in ("7bit", "8bit", "binary", ""):
        return body
    if lowered == "base64":
        return decode_base64(body)
    if lowered == "quoted-printable":
        return decode_quoted_printable(body)
    return None


def decode_part(structure: MessageStructure, source: Source, part: Sequence[int]) -> bytes | None:
    """BINARY[part]: the part's body with its transfer encoding undone.

    None means the encoding is unknown (``[UNKNOWN-CTE]``, RFC 3516 4.3) or
    the part does not exist.  ``part == ()`` is the whole message as is.
    """
    if not part:
        return read_range(source, 0, structure.size)
    node = find_part(structure, part)
    if node is None:
        return None
    body = read_range(source, node.body_offset, node.body_size)
    if node.children or node.message is not None:
        return body
    return _decode_body(node.encoding, body)


def binary_size(structure: MessageStructure, source: Source, part: Sequence[int]) -> int | None:
    """BINARY.SIZE[part]: octets :func:`decode_part` would return."""
    if not part:
        return structure.size
    node = find_part(structure, part)
    if node is not None and node.encoding.lower() in ("7bit", "8bit", "binary"):
        return node.body_size
    decoded = decode_part(structure, source, part)
    return None if decoded is None else len(decoded)


def _codec(charset: str | None) -> str:
    """A Python codec for a MIME charset; unknown ones read as UTF-8 (with
    replacement), as does US-ASCII, whose 8-bit violators are usually UTF-8."""
    if not charset:
        return "utf-8"
    name = charset.strip().strip('"').lower()
    if name in ("us-ascii", "ascii", "unknown-8bit", "x-unknown"):
        return "utf-8"
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "utf-8"


def decode_text(data: bytes, charset: str | None) -> str:
    """Octets in a charset to text, never failing."""
    return data.decode(_codec(charset), "replace")


_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_WORD_GAP = re.compile(rb"^[ \t\r\n]*$")


def _raw_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def decode_words(value: bytes) -> str:
    """Decode RFC 2047 encoded words in an unfolded header value; whitespace
    between adjacent encoded words disappears (RFC 2047 6.2), bare 8-bit
    text is read as UTF-8 (else Windows-1252)."""
    out: list[str] = []
    pos = 0
    previous_encoded = False
    for match in _ENCODED_WORD.finditer(value):
        gap = value[pos : match.start()]
        if not (previous_encoded and _WORD_GAP.match(gap)):
            out.append(_raw_text(gap))
        charset = match.group(1).decode("ascii", "replace").split("*", 1)[0]
        text = match.group(3)
        if match.group(2) in b"bB":
            octets = decode_base64(text)
        else:
            octets = binascii.a2b_qp(text.replace(b"_", b" "), header=False)
        out.append(decode_text(octets, charset))
        pos = match.end()
        previous_encoded = True
    out.append(_raw_text(value[pos:]))
    return "".join(out)


def raw_fields(block: bytes, name: str) -> list[bytes]:
    """The unfolded values (as sent) of every field ``name`` in a header block."""
    lowered = name.lower()
    return [value for field, _, value in _fields(block) if field == lowered]


def decoded_header_text(block: bytes) -> str:
    """A whole header block as text for SEARCH TEXT: every field's name and
    RFC 2047-decoded value, one per line."""
    return "\n".join(
        f"{field}: {decode_words(value)}" for field, _, value in _fields(block) if field
    )


def text_parts(structure: MessageStructure, source: Source) -> Iterator[str]:
    """The decoded text of every text/* part, embedded messages included:
    transfer encoding undone, then the charset (errors replaced)."""
    for part in structure.root.walk():
        if part.children or part.message is not None or not part.is_text:
            continue
        body = read_range(source, part.body_offset, part.body_size)
        decoded = _decode_body(part.encoding, body)
        if decoded is None:
            decoded = body
        yield decode_text(decoded, part.param("charset"))
