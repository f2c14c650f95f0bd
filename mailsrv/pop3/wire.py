"""POP3 wire details that need no I/O: argument parsing, response lines,
and message encoding for RETR and TOP.

A message goes out as a multi-line response (RFC 1939 3): every line that
starts with ``.`` gets another ``.`` in front, the last line ends with CRLF,
and ``.CRLF`` ends the response.  :class:`MessageEncoder` does this one chunk
at a time, so a 50 MB message is never held in memory, and for TOP it stops
after the header and the requested number of body lines.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence

__all__ = [
    "MAX_STATUS_LINE",
    "TERMINATOR",
    "MessageEncoder",
    "decode_base64",
    "dot_stuff_line",
    "error_line",
    "is_hex",
    "loggable",
    "multiline",
    "ok_line",
    "parse_number",
    "stuff_message",
]

#: Ends every multi-line response.
TERMINATOR = b".\r\n"

#: Longest first line of a response, CRLF included (RFC 2449 4).
MAX_STATUS_LINE = 512

_HEX = re.compile(rb"[0-9A-Fa-f]+")


def parse_number(arg: bytes) -> int | None:
    """A non-negative decimal argument, or None for anything else.

    Stricter than ``int()``: no sign, no whitespace, no underscores, no
    absurd lengths.
    """
    if len(arg) > 10 or not arg.isdigit():  # bytes.isdigit: ASCII 0-9 only, not empty
        return None
    return int(arg)


def is_hex(data: bytes) -> bool:
    return _HEX.fullmatch(data) is not None


def decode_base64(data: bytes) -> bytes | None:
    """Strict base64 (no stray characters), or None if ``data`` is not."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def dot_stuff_line(line: bytes) -> bytes:
    """One line of a multi-line response (without its CRLF), byte-stuffed."""
    return b"." + line if line.startswith(b".") else line


def ok_line(text: str = "") -> bytes:
    """``+OK text`` with its CRLF."""
    return b"+OK " + text.encode("utf-8") + b"\r\n" if text else b"+OK\r\n"


def error_line(text: str, code: str | None = None) -> bytes:
    """``-ERR [code] text`` with its CRLF, cut to :data:`MAX_STATUS_LINE`.

    RFC 2449 4: a response's first line is at most 512 octets with its
    CRLF; a storage error naming a long path must not break a client.  The
    cut never splits a UTF-8 character.
    """
    prefix = f"-ERR [{code}] " if code else "-ERR "
    line = (prefix + text).encode("utf-8", "replace")
    if len(line) > MAX_STATUS_LINE - 2:
        line = line[: MAX_STATUS_LINE - 5].decode("utf-8", "ignore").encode("utf-8") + b"..."
    return line + b"\r\n"


def multiline(first: str, lines: Sequence[bytes]) -> bytes:
    """A whole multi-line response: ``+OK first``, the byte-stuffed lines,
    and the terminator."""
    status = b"+OK " + first.encode("utf-8") if first else b"+OK"
    body = b"".join(dot_stuff_line(line) + b"\r\n" for line in lines)
    return status + b"\r\n" + body + TERMINATOR


def _stuffed(chunk: bytes, at_line_start: bool) -> bytes:
    """``chunk`` byte-stuffed (RFC 1939 3: a line starting with "." gets
    another), ``at_line_start`` telling whether it begins a line."""
    out = chunk.replace(b"\n.", b"\n..")
    return b"." + out if at_line_start and chunk.startswith(b".") else out


def _ending(at_line_start: bool) -> bytes:
    """The end of a multi-line response: a CRLF if its last line lacked
    one, and the terminating ``.CRLF``."""
    return TERMINATOR if at_line_start else b"\r\n" + TERMINATOR


def stuff_message(data: bytes) -> bytes:
    """A whole message as the rest of a multi-line response: byte-stuffed,
    its last line ended if it was not, and the terminator; the octets a
    :class:`MessageEncoder` gives when fed it in one piece, in one pass."""
    return _stuffed(data, True) + _ending(not data or data.endswith(b"\n"))


def loggable(line: bytes) -> str:
    """A command line for the debug log, with secrets left out."""
    words = line.split(None, 1)
    if words and words[0].upper() == b"PASS":
        return "PASS ***"
    if words and words[0].upper() == b"APOP":
        # The digest is MD5(timestamp + password): a guessing attack's input.
        return " ".join(w.decode("ascii", "replace") for w in line.split()[:2]) + " ***"
    if words and words[0].upper() == b"AUTH":
        words = line.split()
        line = b" ".join(words[:2] + [b"***"] * (len(words) > 2))
    return line[:100].decode("ascii", "replace")


class MessageEncoder:
    """Byte-stuffs a message for RETR, or its header and first lines for TOP.

    Feed it the message in wire form (CRLF line ends) in chunks of any size
    and write what it returns; :meth:`finish` returns the end of the
    response.  ``body_lines`` (TOP) limits the body; once the limit is
    reached :attr:`done` is true and the caller can stop reading.
    :attr:`complete` tells afterwards whether the whole message was sent
    (TOP with enough lines counts as having read the message).
    """

    def __init__(self, body_lines: int | None = None) -> None:
        self._limit = body_lines
        self._at_line_start = True
        self._in_header = True
        self._line_head = b""  # first bytes of the current line (blank-line test)
        self.done = False
        self._truncated = False

    @property
    def complete(self) -> bool:
        return not self._truncated

    def feed(self, chunk: bytes) -> bytes:
        """The response bytes for the next chunk of the message."""
        if not chunk or self.done:
            return b""
        if self._limit is None:
            out = _stuffed(chunk, self._at_line_start)
            self._at_line_start = chunk.endswith(b"\n")
            return out
        return self._feed_limited(chunk)

    def _feed_limited(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        pos, end = 0, len(chunk)
        while pos < end:
            if self._at_line_start:
                if not self._in_header:
                    if self._limit == 0:
                        self.done = self._truncated = True
                        break
                    assert self._limit is not None
                    self._limit -= 1
                if chunk[pos : pos + 1] == b".":
                    out.append(b".")
                self._line_head = b""
                self._at_line_start = False
            newline = chunk.find(b"\n", pos)
            stop = end if newline < 0 else newline + 1
            piece = chunk[pos:stop]
            out.append(piece)
            if len(self._line_head) < 3:
                self._line_head = (self._line_head + piece)[:3]
            if newline >= 0:
                self._at_line_start = True
                if self._in_header and self._line_head in (b"\r\n", b"\n"):
                    self._in_header = False
            pos = stop
        return b"".join(out)

    def finish(self) -> bytes:
        """The end of the response: a CRLF if the message lacked a final one,
        and the terminating ``.CRLF``."""
        self.done = True
        return _ending(self._at_line_start)
