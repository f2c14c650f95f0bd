"""IMAP responses as a client reads them, and commands as a client writes them.

The stress client (:mod:`tests.stress.client`) and the fuzz suites need an
IMAP reader that is not the server's own code, so that what the server
writes is checked against the grammar (RFC 3501 9) by something
independent: :class:`ResponseReader` frames the byte stream into
responses (a line, and the literals it announces), and :func:`parse`
turns one into a :class:`Response` of plain values:

* ``int`` for numbers, ``bytes`` for strings (quoted or literal),
  ``None`` for NIL, :class:`Atom` for any other atom (flags, FETCH item
  names with their ``[section]<origin>``), ``list`` for parenthesised lists.

Anything that is not IMAP raises :class:`WireError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import TypeAlias

import attrs

__all__ = [
    "Atom",
    "Response",
    "ResponseReader",
    "Value",
    "WireError",
    "astring",
    "parse",
    "parse_values",
    "quoted",
]


class WireError(Exception):
    """The server wrote something that is not IMAP."""


class Atom(str):
    """An atom as sent (flags, item names, keywords): not a string value."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Atom({str(self)!r})"


Value: TypeAlias = "int | bytes | Atom | list[Value] | None"

#: Status responses (RFC 3501 7.1): text, with an optional [code].
STATUS_WORDS = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})
_LITERAL_AT_END = re.compile(rb"~?\{(\d+)\}\Z")
_LITERAL = re.compile(rb"\{(\d+)\}\r\n")
#: What ends an atom in a response: SP, parentheses, quotes, CR/LF.  Brackets
#: and angle brackets are part of an atom (FETCH's BODY[1.MIME]<0>).
_ATOM_END = frozenset(b' ()"\r\n')
#: FETCH items whose "[section]" may hold spaces and parentheses.
_SECTIONED = frozenset({b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"})


@attrs.frozen
class Response:
    """One server response.

    ``kind`` is ``"+"`` (continuation request), ``"*"`` (untagged) or
    ``"tagged"``.  Status responses (tagged ones and ``* OK``/``NO``/
    ``BAD``/``BYE``/``PREAUTH``) have ``status``, ``code`` (the response
    code's words, parsed as values) and ``text``; other untagged responses
    have ``name`` (``FETCH``, ``FLAGS``...), ``number`` when a number comes
    first (``* 3 EXISTS``) and ``values``: what follows the name.
    """

    kind: str
    tag: str | None = None
    status: str | None = None
    code: tuple[Value, ...] | None = None
    text: str = ""
    number: int | None = None
    name: str | None = None
    values: tuple[Value, ...] = ()
    raw: bytes = b""

    @property
    def code_name(self) -> str | None:
        if not self.code:
            return None
        first = self.code[0]
        return str(first).upper() if isinstance(first, str) else None


class ResponseReader:
    """Frames a server's byte stream into complete responses (each line
    with the literals it announces), whatever the bytes' split."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._parts: list[bytes] = []
        self._literal = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add what arrived; the responses it completed, raw."""
        self._buffer += data
        done: list[bytes] = []
        while True:
            if self._literal:
                if len(self._buffer) < self._literal:
                    return done
                self._parts.append(bytes(self._buffer[: self._literal]))
                del self._buffer[: self._literal]
                self._literal = 0
                continue
            end = self._buffer.find(b"\r\n")
            if end < 0:
                return done
            line = bytes(self._buffer[: end + 2])
            del self._buffer[: end + 2]
            self._parts.append(line)
            match = _LITERAL_AT_END.search(line, 0, len(line) - 2)
            if match is not None and not line.startswith(b"+"):
                self._literal = int(match.group(1))
                continue
            done.append(b"".join(self._parts))
            self._parts = []

    @property
    def pending(self) -> bytes:
        """What was received and is not yet a complete response."""
        return b"".join(self._parts) + bytes(self._buffer)


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        #: Inside a response code, where "]" ends the code (elsewhere an
        #: astring may hold it: a mailbox named "]").
        self.in_code = False

    def fail(self, what: str) -> WireError:
        near = self.data[self.pos : self.pos + 30]
        return WireError(f"{what} at offset {self.pos} (near {near!r}) in {self.data[:200]!r}")

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def expect(self, token: bytes) -> None:
        if not self.data.startswith(token, self.pos):
            raise self.fail(f"expected {token!r}")
        self.pos += len(token)

    def at_crlf(self) -> bool:
        return self.data.startswith(b"\r\n", self.pos)

    def atom(self) -> bytes:
        """An atom.  After BODY, BINARY and their forms, ``[`` opens a
        section up to its ``]`` that may hold spaces, parentheses and
        quoted header field names (``BODY[HEADER.FIELDS (A "B)")]``);
        elsewhere ``[`` is an atom character like any other (a keyword or
        mailbox named ``[``)."""
        start, data = self.pos, self.data
        pos = start
        while pos < len(data):
            char = data[pos]
            if char == 0x5B and data[start:pos].upper() in _SECTIONED:
                pos = self._section_end(pos)
                continue
            if char in _ATOM_END or (char == 0x5D and self.in_code):
                break
            pos += 1
        if pos == start:
            raise self.fail("expected an atom")
        self.pos = pos
        return data[start:pos]

    def _section_end(self, pos: int) -> int:
        """Just after the ``]`` closing the section opened at ``pos``."""
        data = self.data
        pos += 1
        while pos < len(data):
            char = data[pos]
            if char == 0x5D:
                return pos + 1
            if char == 0x22:
                pos += 1
                while pos < len(data) and data[pos] != 0x22:
                    pos += 2 if data[pos] == 0x5C else 1
            elif char in (0x0D, 0x0A):
                break
            pos += 1
        raise self.fail("unterminated section")

    def value(self, depth: int = 0) -> Value:
        if depth > 200:
            raise self.fail("lists nested too deeply")
        char = self.peek()
        if char is None:
            raise self.fail("expected a value")
        if char == 0x28:  # (
            return self.parenthesized(depth)
        if char == 0x22:
            return self.quoted()
        if char == 0x7B or (char == 0x7E and self.data.startswith(b"~{", self.pos)):
            return self.literal()
        raw = self.atom()
        if raw.isdigit() and (raw == b"0" or not raw.startswith(b"0")):
            return int(raw)
        if raw.upper() == b"NIL":
            return None
        return Atom(raw.decode("utf-8", "surrogateescape"))

    def parenthesized(self, depth: int) -> list[Value]:
        self.pos += 1
        items: list[Value] = []
        if self.peek() == 0x29:
            self.pos += 1
            return items
        while True:
            items.append(self.value(depth + 1))
            char = self.peek()
            if char == 0x29:
                self.pos += 1
                return items
            if char == 0x28 and isinstance(items[-1], list):
                continue  # 1*body, 1*address: lists written without SP
            self.expect(b" ")

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        data = self.data
        while True:
            if self.pos >= len(data):
                raise self.fail("unterminated quoted string")
            char = data[self.pos]
            if char == 0x22:
                self.pos += 1
                return bytes(out)
            if char == 0x5C:
                nxt = data[self.pos + 1 : self.pos + 2]
                if nxt not in (b'"', b"\\"):
                    raise self.fail("bad escape in quoted string")
                out += nxt
                self.pos += 2
                continue
            if char in (0x0D, 0x0A, 0x00):
                raise self.fail("CR, LF or NUL in a quoted string")
            out.append(char)
            self.pos += 1

    def literal(self) -> bytes:
        if self.peek() == 0x7E:
            self.pos += 1
        match = _LITERAL.match(self.data, self.pos)
        if match is None:
            raise self.fail("malformed literal")
        size = int(match.group(1))
        start = match.end()
        if start + size > len(self.data):
            raise self.fail("literal data missing")
        self.pos = start + size
        return self.data[start : self.pos]

    def rest_of_line(self) -> bytes:
        end = self.data.find(b"\r\n", self.pos)
        if end < 0:
            raise self.fail("missing CRLF")
        text = self.data[self.pos : end]
        self.pos = end + 2
        return text


def _code(cursor: _Cursor) -> tuple[Value, ...]:
    """resp-text-code after its "[", up to and including "]"."""
    items: list[Value] = []
    cursor.in_code = True
    while True:
        char = cursor.peek()
        if char == 0x5D:
            cursor.pos += 1
            cursor.in_code = False
            return tuple(items)
        if char is None or char in (0x0D, 0x0A):
            raise cursor.fail("unterminated response code")
        if char == 0x20:
            cursor.pos += 1
            continue
        items.append(cursor.value())


def _status_text(cursor: _Cursor) -> tuple[tuple[Value, ...] | None, str]:
    code: tuple[Value, ...] | None = None
    if cursor.peek() == 0x5B:
        cursor.pos += 1
        code = _code(cursor)
        if cursor.peek() == 0x20:
            cursor.pos += 1
    text = cursor.rest_of_line()
    if b"\r" in text or b"\n" in text:
        raise cursor.fail("CR or LF in response text")
    return code, text.decode("utf-8", "replace")


def parse(raw: bytes) -> Response:
    """One complete response (as :class:`ResponseReader` gives them)."""
    cursor = _Cursor(raw)
    if raw.startswith(b"+"):
        cursor.pos = 1
        if cursor.peek() == 0x20:
            cursor.pos += 1
        line = cursor.rest_of_line()
        _end(cursor)
        return Response("+", text=line.decode("utf-8", "replace"), raw=raw)
    if raw.startswith(b"* "):
        cursor.pos = 2
        first = cursor.atom()
        if not cursor.at_crlf():
            cursor.expect(b" ")
        word = first.decode("ascii", "replace").upper()
        if word in STATUS_WORDS:
            code, text = _status_text(cursor)
            _end(cursor)
            return Response("*", status=word, code=code, text=text, raw=raw)
        number: int | None = None
        if first.isdigit():
            number = int(first)
            word = cursor.atom().decode("ascii", "replace").upper()
            if not cursor.at_crlf():
                cursor.expect(b" ")
        values = _values_to_end(cursor)
        return Response("*", number=number, name=word, values=values, raw=raw)
    space = raw.find(b" ")
    if space <= 0:
        raise cursor.fail("expected a tag")
    tag, cursor.pos = raw[:space], space + 1
    status = cursor.atom().decode("ascii", "replace").upper()
    if status not in ("OK", "NO", "BAD") or not tag.isascii() or b"\r" in tag:
        raise cursor.fail(f"tagged response with status {status!r}")
    cursor.expect(b" ")
    code, text = _status_text(cursor)
    _end(cursor)
    return Response("tagged", tag=tag.decode("ascii"), status=status, code=code, text=text, raw=raw)


def _values_to_end(cursor: _Cursor) -> tuple[Value, ...]:
    values: list[Value] = []
    while not cursor.at_crlf():
        values.append(cursor.value())
        if not cursor.at_crlf():
            cursor.expect(b" ")
    cursor.pos += 2
    _end(cursor)
    return tuple(values)


def _end(cursor: _Cursor) -> None:
    if cursor.pos != len(cursor.data):
        raise cursor.fail("data after the end of the response")


def parse_values(data: bytes) -> list[Value]:
    """Space-separated values up to the end of ``data`` (which may hold
    literals): what follows an untagged response's name."""
    return list(_values_to_end(_Cursor(data + b"\r\n")))


def responses(data: bytes) -> Iterator[Response]:
    """Every response in a complete stream of server output."""
    reader = ResponseReader()
    for raw in reader.feed(data):
        yield parse(raw)
    if reader.pending:
        raise WireError(f"incomplete response at the end: {reader.pending[:200]!r}")


# -- writing commands -----------------------------------------------------------------

_ATOM_SAFE = re.compile(rb"[!#$&'+,\-./0-9:;<=>?@A-Z^_`a-z|}~\[]+\Z")


def quoted(value: bytes | str) -> bytes:
    """A quoted string, or a literal when it cannot be quoted."""
    data = value.encode() if isinstance(value, str) else value
    if all(0x20 <= c < 0x7F for c in data) and len(data) < 1000:
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d+}\r\n" % len(data) + data


def astring(value: bytes | str) -> bytes:
    """An atom when it can be one (and is not NIL), else quoted/literal."""
    data = value.encode() if isinstance(value, str) else value
    if _ATOM_SAFE.match(data) and data.upper() != b"NIL":
        return data
    return quoted(data)


def find(values: Sequence[Value], name: str) -> Value:
    """In a FETCH response's item list, the value after item ``name``."""
    for i in range(0, len(values) - 1, 2):
        item = values[i]
        if isinstance(item, str) and item.upper() == name.upper():
            return values[i + 1]
    raise KeyError(name)
