"""Header blocks and the structured MIME fields in them.

A header block is kept as sent; these functions find where it ends, split
it into fields (unfolded values decoded as Latin-1 so every octet
survives), pick fields by name, and read the structured fields MIME
defines: Content-Type and Content-Disposition with their parameters,
Content-Transfer-Encoding and Content-Language (RFC 2045 5.1, RFC 2183,
RFC 3282).  Parameters are left as sent (no RFC 2231 joining), and nothing
here raises on malformed input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, TypeAlias

__all__ = [
    "Params",
    "ends_with_blank_line",
    "filter_fields",
    "find_param",
    "first_token",
    "header_end",
    "parse_content_type",
    "parse_disposition",
    "parse_language",
    "raw_fields",
    "read_comment",
    "read_header",
    "read_quoted",
    "split_fields",
]

#: ``(name, value)`` pairs as sent, in order.
Params: TypeAlias = tuple[tuple[str, str], ...]


def header_end(data: bytes, start: int, end: int) -> int:
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


def ends_with_blank_line(block: bytes) -> bool:
    """Whether a header block ends with its blank line (or is one)."""
    return block in (b"\r\n", b"\n") or block.endswith((b"\n\r\n", b"\n\n"))


def split_fields(block: bytes) -> list[tuple[str, bytes, bytes]]:
    """Split a header block into ``(lower name, raw field, unfolded value)``.

    ``raw field`` keeps the field's own octets and line ends.  Lines that
    are neither fields nor their continuations (a continuation at the very
    start, a line without a colon) come out with the name ``""``: no field
    name matches them, but :func:`filter_fields` with ``negate`` keeps them.
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
                self.pos = read_comment(text, self.pos)[1]
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
            value, self.pos = read_quoted(self.text, self.pos)
            return value
        start = self.pos
        text = self.text
        # Tolerate unquoted values carrying tspecials (common in the wild):
        # take everything up to the next ';' or whitespace.
        while self.pos < len(text) and text[self.pos] not in "; \t\r\n":
            self.pos += 1
        return text[start : self.pos]


def read_comment(text: str, pos: int) -> tuple[str, int]:
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


def read_quoted(text: str, pos: int) -> tuple[str, int]:
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


def parse_content_type(value: str | None) -> tuple[str, str, Params] | None:
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


def parse_disposition(value: str | None) -> tuple[str, Params] | None:
    if value is None:
        return None
    scanner = _Scanner(value)
    scanner.skip_cfws()
    kind = scanner.token()
    if not kind:
        return None
    return kind, _parameters(scanner)


def first_token(value: str | None) -> str | None:
    if value is None:
        return None
    scanner = _Scanner(value)
    scanner.skip_cfws()
    return scanner.token() or None


def parse_language(value: str | None) -> tuple[str, ...]:
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


def find_param(params: Params, name: str) -> str | None:
    """The first parameter of this name (case-insensitive), as sent."""
    lowered = name.lower()
    for key, value in params:
        if key.lower() == lowered:
            return value
    return None


# ---------------------------------------------------------------------------
# Reading and picking fields
# ---------------------------------------------------------------------------

#: Octets read at a time while looking for the end of a message header.
_HEADER_CHUNK = 16 * 1024


def read_header(source: IO[bytes]) -> bytes:
    """The message's own header block, blank line included, read from the
    start of a file without reading the body: picking header fields needs
    no parse of a message with a large attachment.

    Agrees with :func:`header_end` on where the block ends."""
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
    """The fields of a header block named in ``names`` (``negate``: those
    not named, nameless lines included), as sent and in order, then the
    blank line if the block has one.

    A last field without a line end gets CRLF; a block without its blank
    line (a headers-only message) gets none.  Names are case-insensitive.
    """
    wanted = {n.lower() for n in names}
    out = []
    for name, raw, _ in split_fields(block):
        if (name in wanted) != negate and (name or negate):
            out.append(raw if raw.endswith(b"\n") else raw + b"\r\n")
    if block.endswith((b"\n\r\n", b"\n\n")) or block in (b"\r\n", b"\n"):
        out.append(b"\r\n")
    return b"".join(out)


def raw_fields(block: bytes, name: str) -> list[bytes]:
    """The unfolded values (as sent) of every field ``name`` in a header block."""
    lowered = name.lower()
    return [value for field, _, value in split_fields(block) if field == lowered]
