"""POP3 wire details that need no I/O: message encoding for RETR and TOP.

A message goes out as a multi-line response (RFC 1939 3): every line that
starts with ``.`` gets another ``.`` in front, the last line ends with CRLF,
and ``.CRLF`` ends the response.  :class:`MessageEncoder` does this one chunk
at a time, so a 50 MB message is never held in memory, and for TOP it stops
after the header and the requested number of body lines.
"""

from __future__ import annotations

import re

__all__ = ["TERMINATOR", "MessageEncoder", "dot_stuff_line", "parse_number"]

#: Ends every multi-line response.
TERMINATOR = b".\r\n"

_DIGITS = re.compile(rb"[0-9]{1,10}")


def parse_number(arg: bytes) -> int | None:
    """A non-negative decimal argument, or None for anything else.

    Stricter than ``int()``: no sign, no whitespace, no underscores, no
    absurd lengths.
    """
    if not _DIGITS.fullmatch(arg):
        return None
    return int(arg)


def dot_stuff_line(line: bytes) -> bytes:
    """One line of a multi-line response (without its CRLF), byte-stuffed."""
    return b"." + line if line.startswith(b".") else line


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
            out = chunk.replace(b"\n.", b"\n..")
            if self._at_line_start and chunk.startswith(b"."):
                out = b"." + out
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
        return TERMINATOR if self._at_line_start else b"\r\n" + TERMINATOR
