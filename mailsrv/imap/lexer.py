"""The IMAP lexer: a cursor over one framed command's segments.

The framer (:mod:`mailsrv.imap.framer`) splits the byte stream into a
command's *segments*: the text of each line (without CRLF, still ending in
its ``{n}`` marker when a literal follows) and each literal's payload.  A
:class:`Reader` reads tokens across them: tags, atoms, numbers, quoted
strings, literals, astrings and nstrings (RFC 3501 section 9).  Anything
malformed raises :class:`ParseError` with a message fit for
``tag BAD <message>``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import IO, TypeAlias

import attrs

__all__ = [
    "ASTRING_CHARS",
    "ATOM_CHARS",
    "LIST_CHARS",
    "MAX_NUMBER",
    "MAX_NUMBER64",
    "MAX_STRING",
    "TAG_CHARS",
    "LiteralFile",
    "ParseError",
    "Reader",
    "Segment",
    "literal_marker",
    "peek_command",
]


class ParseError(Exception):
    """The command is malformed; the server answers ``tag BAD <message>``.

    ``tag`` is the command's tag when it could be read (None: answer ``*``);
    ``code`` an optional response code such as ``TOOBIG``.
    """

    def __init__(self, message: str, tag: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.tag = tag
        self.code = code


@attrs.frozen
class LiteralFile:
    """A literal the framing layer spooled to a file instead of memory.

    Only APPEND's message literal may be one; the file is positioned at 0.
    """

    file: IO[bytes]
    size: int


#: A command as framed: line texts and literal payloads, in wire order.
Segment: TypeAlias = "bytes | LiteralFile"

LITERAL_MARKER = re.compile(rb"(~?)\{(\d{1,20})(\+?)\}\Z")

# RFC 3501 atom-specials: ( ) { SP CTL % * " \ ]  (CTL includes DEL and <0x20).
ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0x20)) | {0x7F}
ATOM_CHARS = frozenset(range(0x21, 0x7F)) - ATOM_SPECIALS
ASTRING_CHARS = ATOM_CHARS | {ord("]")}
LIST_CHARS = ATOM_CHARS | {ord("%"), ord("*"), ord("]")}
TAG_CHARS = ASTRING_CHARS - {ord("+")}

#: The longest quoted string or small literal we will turn into a value;
#: bigger strings outside APPEND are a client error, not a memory cost.
MAX_STRING = 1 << 20
#: Sequence numbers and UIDs are 32-bit (RFC 3501 nz-number, uniqueid).
MAX_NUMBER = 0xFFFFFFFF
#: The largest number64 (RFC 9051 9): 2^63 - 1.
MAX_NUMBER64 = 2**63 - 1


def literal_marker(line: bytes) -> tuple[int, bool, bool] | None:
    """The literal announced at the end of ``line``: ``(size, non_sync, binary)``.

    ``{n}`` is synchronizing, ``{n+}`` is LITERAL+ (RFC 7888), ``~{n}`` a
    literal8 (RFC 3516).  None when the line ends the command.
    """
    match = LITERAL_MARKER.search(line)
    if match is None:
        return None
    return int(match.group(2)), bool(match.group(3)), bool(match.group(1))


def peek_command(line: bytes) -> tuple[str, str] | None:
    """Tag and upper-cased command name of a command's first line, cheaply.

    A ``UID`` prefix is folded in (``"UID FETCH"``).  The framing layer uses
    this to pick limits for literals before the command is complete.
    """
    parts = line.split(b" ", 3)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        return None
    try:
        tag = parts[0].decode("ascii")
        name = parts[1].decode("ascii").upper()
        if name == "UID" and len(parts) > 2:
            name = "UID " + parts[2].decode("ascii").upper()
    except UnicodeDecodeError:
        return None
    return tag, name


class Reader:
    """Reads tokens across the segments of one framed command."""

    def __init__(self, segments: Sequence[Segment], max_depth: int) -> None:
        if not segments or not isinstance(segments[0], bytes):
            raise ParseError("empty command")
        self.segments = segments
        self.index = 0
        self.line: bytes = segments[0]
        self.pos = 0
        self.max_depth = max_depth
        self.tag: str | None = None
        #: The session enabled UTF-8 (RFC 6855 3): quoted strings must be
        #: valid UTF-8, and mailbox names are UTF-8, not modified UTF-7.
        self.utf8 = False

    # -- low level -------------------------------------------------------

    def error(self, message: str, code: str | None = None) -> ParseError:
        return ParseError(message, self.tag, code)

    def peek(self) -> int | None:
        """The next byte of the current line, None at its end."""
        if self.pos < len(self.line):
            return self.line[self.pos]
        return None

    def at_end(self) -> bool:
        return self.pos >= len(self.line) and self.index == len(self.segments) - 1

    def expect(self, char: bytes) -> None:
        if self.line[self.pos : self.pos + 1] != char:
            found = self.describe_here()
            raise self.error(f"expected {char.decode()!r}, found {found}")
        self.pos += 1

    def accept(self, char: bytes) -> bool:
        if self.line[self.pos : self.pos + 1] == char:
            self.pos += 1
            return True
        return False

    def space(self) -> None:
        if self.peek() != 0x20:
            raise self.error(f"expected a space, found {self.describe_here()}")
        self.pos += 1

    def end(self) -> None:
        if not self.at_end():
            raise self.error(f"unexpected {self.describe_here()} after the arguments")

    def describe_here(self) -> str:
        if self.pos >= len(self.line):
            if self.index < len(self.segments) - 1:
                return "a literal"
            return "end of line"
        chunk = self.line[self.pos : self.pos + 12]
        return repr(chunk.decode("ascii", "replace"))

    def run(self, allowed: frozenset[int], what: str) -> bytes:
        start = self.pos
        line = self.line
        end = len(line)
        pos = start
        while pos < end and line[pos] in allowed:
            pos += 1
        if pos == start:
            raise self.error(f"expected {what}, found {self.describe_here()}")
        self.pos = pos
        return line[start:pos]

    def atom(self, what: str = "an atom") -> str:
        return self.run(ATOM_CHARS, what).decode("ascii")

    def number(self, what: str = "a number", nonzero: bool = False) -> int:
        start = self.pos
        while self.pos < len(self.line) and 0x30 <= self.line[self.pos] <= 0x39:
            self.pos += 1
        digits = self.line[start : self.pos]
        if not digits:
            raise self.error(f"expected {what}, found {self.describe_here()}")
        if len(digits) > 20:
            raise self.error(f"{what} is too large")
        value = int(digits)
        if nonzero and value == 0:
            raise self.error(f"{what} must not be zero")
        return value

    def number64(self, what: str, nonzero: bool = False) -> int:
        """RFC 9051's number64 (appendix E item 1): sizes and offsets may
        exceed 32 bits; IMAP4rev1 clients never send such values."""
        value = self.number(what, nonzero)
        if value > MAX_NUMBER64:
            raise self.error(f"{what} is larger than {MAX_NUMBER64}")
        return value

    def number32(self, what: str, nonzero: bool = False) -> int:
        value = self.number(what, nonzero)
        if value > MAX_NUMBER:
            raise self.error(f"{what} is larger than 4294967295")
        return value

    # -- strings -----------------------------------------------------------

    def literal(self) -> bytes | LiteralFile:
        """A literal: the marker must end the line; its payload is the next
        segment, and reading continues in the line after it."""
        match = LITERAL_MARKER.match(self.line, self.pos)
        if match is None or match.end() != len(self.line):
            raise self.error("malformed literal (expected {n} at the end of the line)")
        if self.index + 2 >= len(self.segments):
            raise self.error("literal data missing")
        payload = self.segments[self.index + 1]
        size = int(match.group(2))
        if isinstance(payload, bytes):
            if len(payload) != size:
                raise self.error("literal length does not match its data")
        elif payload.size != size:
            raise self.error("literal length does not match its data")
        nxt = self.segments[self.index + 2]
        if not isinstance(nxt, bytes):
            raise self.error("two literals in a row")
        self.index += 2
        self.line = nxt
        self.pos = 0
        return payload

    def _small(self, payload: bytes | LiteralFile) -> bytes:
        if isinstance(payload, LiteralFile):
            raise self.error("string literal too long", "TOOBIG")
        return payload

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        line = self.line
        pos = self.pos
        end = len(line)
        while True:
            if pos >= end:
                raise self.error("unterminated quoted string")
            char = line[pos]
            if char == 0x22:  # closing quote
                self.pos = pos + 1
                if self.utf8 and not out.isascii():
                    try:
                        out.decode("utf-8")
                    except UnicodeDecodeError:
                        # RFC 6855 3: 8-bit octets that are not UTF-8 are BAD.
                        raise self.error("quoted string is not valid UTF-8") from None
                return bytes(out)
            if char == 0x5C:  # backslash escapes only \ and "
                if pos + 1 >= end or line[pos + 1] not in (0x22, 0x5C):
                    raise self.error('invalid escape in quoted string (only \\\\ and \\")')
                out.append(line[pos + 1])
                pos += 2
            elif char in (0x0D, 0x0A, 0x00):
                raise self.error("CR, LF or NUL in quoted string")
            else:
                out.append(char)
                pos += 1
            if len(out) > MAX_STRING:
                raise self.error("quoted string too long", "TOOBIG")

    def string(self, what: str = "a string") -> bytes:
        char = self.peek()
        if char == 0x22:
            return self.quoted()
        if char == 0x7B:  # {
            return self._small(self.literal())
        raise self.error(f"expected {what}, found {self.describe_here()}")

    def astring(self, what: str = "a string") -> bytes:
        char = self.peek()
        if char in (0x22, 0x7B):
            return self.string(what)
        return self.run(ASTRING_CHARS, what)

    def nstring(self, what: str = "a string") -> bytes | None:
        if self.keyword_ahead(b"NIL"):
            self.pos += 3
            return None
        return self.string(what)

    def keyword_ahead(self, word: bytes) -> bool:
        chunk = self.line[self.pos : self.pos + len(word)]
        if chunk.upper() != word:
            return False
        after = self.line[self.pos + len(word) : self.pos + len(word) + 1]
        return not after or after[0] not in ASTRING_CHARS
