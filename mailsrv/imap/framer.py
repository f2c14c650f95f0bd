"""The IMAP command framer: bytes in, events out, no I/O.

In the manner of h11, a :class:`Framer` is fed whatever arrived
(:meth:`Framer.receive`) and asked for what it makes of it
(:meth:`Framer.next_event`), one event at a time, which gives the session
the chance to change the framer's state between two events (an IDLE that
wants its ``DONE`` line, a literal it refuses).  It knows nothing of
Twisted or of the session, and its events are the same however the bytes
were split on the way:

:class:`FramedCommand`
    A complete command: its *segments*, the text of each line (without
    CRLF, still ending in its ``{n}`` marker when a literal follows) and
    each literal's payload (:class:`~mailsrv.imap.lexer.LiteralFile` when
    it was spooled to a file).  The receiver owns the segments and closes
    the spooled ones (:func:`close_segments`).
:class:`LiteralNeeded`
    A line ended in ``{n}``, ``{n+}`` (LITERAL+, RFC 7888) or ``~{n}``
    (literal8, RFC 3516).  The session must answer before asking for the
    next event: :meth:`Framer.accept_literal` (into memory, or spooled to a
    temporary file for APPEND) or :meth:`Framer.refuse_literal`; after a
    refused non-synchronizing literal, whose octets come anyway, they and
    the rest of that command are read and dropped.
:class:`ContinuationLine`
    The line after :meth:`Framer.expect_continuation` (IDLE's ``DONE``, a
    SASL response), taken as it is.
:class:`LineTooLong`
    A line longer than the limit: the command it belonged to is dropped,
    the rest of the line is skipped up to its CRLF, and framing goes on.

:attr:`Framer.progress` counts what restarts the idle timer: each complete
line and each piece of literal as it is read.  A partial line is no
progress (RFC 3501 5.4 counts commands), nor is an over-long line.

Memory stays bounded: a line is held up to the limit, a literal kept in
memory only when the session accepts it so (it checks the command's size),
and an APPEND literal spooled goes to disk past :data:`SPOOL_MEMORY`.
"""

from __future__ import annotations

import enum
import tempfile
from collections.abc import Iterable
from typing import IO, Final

import attrs

from mailsrv.imap.lexer import LiteralFile, Segment, literal_marker, peek_command

__all__ = [
    "NEED_DATA",
    "SPOOL_MEMORY",
    "ContinuationLine",
    "Event",
    "FramedCommand",
    "Framer",
    "LineTooLong",
    "LiteralNeeded",
    "NeedData",
    "close_segments",
]

#: A spooled literal stays in memory up to this size, then moves to disk.
SPOOL_MEMORY = 256 * 1024
#: How much of an over-long line's start is searched for its tag.
_TAG_WINDOW = 200


# The events are plain attrs classes, not frozen ones: one is made per
# command, and a frozen class costs three times as much to build.


@attrs.define
class FramedCommand:
    """A complete command's segments, in wire order."""

    segments: tuple[Segment, ...]


@attrs.define
class LiteralNeeded:
    """A literal was announced; answer with accept_literal or refuse_literal.

    ``tag`` and ``command`` (upper-cased, ``UID`` folded in) are read from
    the command's first line when they can be; ``command_size`` is what
    the command holds in memory so far, ``spooled`` whether one of its
    literals went to a file and ``spooled_size`` how much went to files.
    """

    size: int
    synchronizing: bool
    binary: bool
    tag: str | None
    command: str | None
    command_size: int
    spooled: bool
    spooled_size: int = 0


@attrs.define
class ContinuationLine:
    """The line that answers a continuation request."""

    line: bytes


@attrs.define
class LineTooLong:
    """A line over the limit was dropped with its command; ``tag`` is the
    command's tag when it could be read."""

    tag: str | None


class NeedData(enum.Enum):
    """No event until more bytes arrive."""

    NEED_DATA = "need data"


NEED_DATA: Final = NeedData.NEED_DATA

Event = FramedCommand | LiteralNeeded | ContinuationLine | LineTooLong | NeedData


class _Mode(enum.Enum):
    """Where the next octets go."""

    LINE = "a line"
    DECIDING = "waiting for the session's answer to a literal"
    LITERAL = "a literal's payload, kept"
    DROPPING = "a refused literal's payload, dropped"
    SKIPPING = "the rest of a command whose literal was dropped"
    OVERLONG = "the rest of an over-long line, dropped"


@attrs.define
class _Literal:
    """The literal being read; ``sink`` None when it is dropped."""

    size: int
    remaining: int
    sink: bytearray | IO[bytes] | None


def close_segments(segments: Iterable[Segment]) -> None:
    """Close the spooled literals among ``segments``."""
    for segment in segments:
        if isinstance(segment, LiteralFile):
            segment.file.close()


class Framer:
    """Frames one connection's byte stream into IMAP command events.

    ``max_line`` bounds each line (without its CRLF).
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        #: Complete lines and pieces of literals read so far.
        self.progress = 0
        self._buffer = bytearray()
        self._start = 0  # the first unread octet of _buffer
        self._scanned = 0  # no CRLF starts before this offset of _buffer
        self._mode = _Mode.LINE
        self._continuation = False
        self._segments: list[Segment] = []
        self._command_size = 0
        self._announced: LiteralNeeded | None = None
        self._literal: _Literal | None = None
        self._after_cr = False  # OVERLONG: the last octet dropped was a CR

    # -- input ----------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Add octets as they arrived."""
        if not data:
            return
        if self._start:
            # Read octets go now, so the buffer holds at most one partial
            # line (or literal piece) plus what arrived while the session
            # was busy, and growing it costs no copy of what is kept.
            del self._buffer[: self._start]
            self._scanned = max(0, self._scanned - self._start)
            self._start = 0
        self._buffer += data

    def expect_continuation(self) -> None:
        """Take the next line as a continuation (IDLE's DONE, a SASL answer)."""
        self._continuation = True

    def accept_literal(self, spool: bool = False) -> None:
        """Read the announced literal into memory, or (``spool``) into a
        temporary file that moves to disk past :data:`SPOOL_MEMORY`."""
        announced = self._take_announced()
        sink: bytearray | IO[bytes] = (
            tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY, prefix="mailsrv-append-")
            if spool
            else bytearray()
        )
        self._literal = _Literal(announced.size, announced.size, sink)
        self._mode = _Mode.LITERAL

    def refuse_literal(self) -> None:
        """Drop the command being framed.  A synchronizing literal is not
        sent by a client that was refused; a non-synchronizing one comes
        anyway and is read and dropped, with the rest of its command."""
        announced = self._take_announced()
        self._drop_command()
        if announced.synchronizing:
            self._mode = _Mode.LINE
        else:
            self._literal = _Literal(announced.size, announced.size, None)
            self._mode = _Mode.DROPPING

    def take_unread(self) -> bytes:
        """Hand back the octets received and not framed yet (COMPRESS: they
        came after the command and are compressed, so they must go through
        the inflater first)."""
        unread = bytes(self._buffer[self._start :])
        self._buffer, self._start, self._scanned = bytearray(), 0, 0
        return unread

    def clear(self) -> None:
        """Forget everything not yet framed (STARTTLS: what was pipelined
        after it in plaintext must not be acted upon)."""
        self.close()
        self._buffer, self._start, self._scanned = bytearray(), 0, 0
        self._mode = _Mode.LINE
        self._continuation = False
        self._announced = None
        self._after_cr = False

    def close(self) -> None:
        """Close the spooled files of the command being framed."""
        self._drop_command()
        literal, self._literal = self._literal, None
        if (
            literal is not None
            and literal.sink is not None
            and not isinstance(literal.sink, bytearray)
        ):
            literal.sink.close()

    # -- output ---------------------------------------------------------------

    def next_event(self) -> Event:
        """The next event, or :data:`NEED_DATA`."""
        while True:
            mode = self._mode
            if mode is _Mode.LINE or mode is _Mode.SKIPPING:
                event = self._line()
            elif mode is _Mode.LITERAL or mode is _Mode.DROPPING:
                event = self._literal_data()
            elif mode is _Mode.OVERLONG:
                event = self._overlong()
            else:
                raise RuntimeError("a literal was announced: accept or refuse it first")
            if event is not None:
                return event

    def _line(self) -> Event | None:
        buffer, start = self._buffer, self._start
        end = buffer.find(b"\r\n", max(start, self._scanned))
        if end < 0:
            if len(buffer) - start < self.max_line + 2:
                self._scanned = max(start, len(buffer) - 1)
                return NEED_DATA
            # No end in sight and already too long: drop what came.
            tag = self._tag(bytes(buffer[start : start + _TAG_WINDOW]))
            self._after_cr = buffer.endswith(b"\r")
            self._start = len(buffer)
            self._mode = _Mode.OVERLONG
            return self._too_long(tag)
        line = bytes(buffer[start:end])
        self._start = end + 2
        if len(line) > self.max_line:
            self._mode = _Mode.LINE
            return self._too_long(self._tag(line[:_TAG_WINDOW]))
        self.progress += 1
        if self._continuation:
            self._continuation = False
            return ContinuationLine(line)
        marker = literal_marker(line)
        if self._mode is _Mode.SKIPPING:
            if marker is not None and marker[1]:
                # RFC 7888: a refused command's next literal+ comes anyway.
                self._literal = _Literal(marker[0], marker[0], None)
                self._mode = _Mode.DROPPING
            else:
                self._mode = _Mode.LINE
            return None
        self._segments.append(line)
        self._command_size += len(line)
        if marker is None:
            segments = tuple(self._segments)
            self._segments = []
            self._command_size = 0
            return FramedCommand(segments)
        size, non_sync, binary = marker
        first = self._segments[0]
        assert isinstance(first, bytes)
        peeked = peek_command(first)
        self._announced = LiteralNeeded(
            size=size,
            synchronizing=not non_sync,
            binary=binary,
            tag=peeked[0] if peeked else None,
            command=peeked[1] if peeked else None,
            command_size=self._command_size,
            spooled=any(isinstance(s, LiteralFile) for s in self._segments),
            spooled_size=sum(s.size for s in self._segments if isinstance(s, LiteralFile)),
        )
        self._mode = _Mode.DECIDING
        return self._announced

    def _literal_data(self) -> Event | None:
        literal = self._literal
        assert literal is not None
        if literal.remaining:
            take = min(literal.remaining, len(self._buffer) - self._start)
            if not take:
                return NEED_DATA
            self.progress += 1
            if literal.sink is not None:
                chunk = self._buffer[self._start : self._start + take]
                if isinstance(literal.sink, bytearray):
                    literal.sink += chunk
                else:
                    literal.sink.write(chunk)
            self._start += take
            literal.remaining -= take
            if literal.remaining:
                return NEED_DATA
        self._literal = None
        if literal.sink is None:
            self._mode = _Mode.SKIPPING
        elif isinstance(literal.sink, bytearray):
            self._segments.append(bytes(literal.sink))
            self._command_size += literal.size
            self._mode = _Mode.LINE
        else:
            literal.sink.seek(0)
            self._segments.append(LiteralFile(literal.sink, literal.size))
            self._mode = _Mode.LINE
        return None

    def _overlong(self) -> Event | None:
        buffer, start = self._buffer, self._start
        if start >= len(buffer):
            return NEED_DATA
        if self._after_cr and buffer[start] == 0x0A:  # the CR ended the last piece
            end = start - 1
        else:
            end = buffer.find(b"\r\n", start)
            if end < 0:
                self._after_cr = buffer.endswith(b"\r")
                self._start = len(buffer)
                return NEED_DATA
        self._after_cr = False
        self._start = end + 2
        self._mode = _Mode.LINE
        return None

    # -- helpers --------------------------------------------------------------

    def _too_long(self, tag: str | None) -> LineTooLong:
        self._drop_command()
        self._continuation = False
        return LineTooLong(tag)

    def _tag(self, line_start: bytes) -> str | None:
        """The tag of the command being framed (its first line's, if it has
        one already), as far as ``line_start`` tells."""
        first = self._segments[0] if self._segments else line_start
        assert isinstance(first, bytes)
        peeked = peek_command(first[:_TAG_WINDOW])
        return peeked[0] if peeked else None

    def _take_announced(self) -> LiteralNeeded:
        announced, self._announced = self._announced, None
        if announced is None or self._mode is not _Mode.DECIDING:
            raise RuntimeError("no literal is waiting for an answer")
        return announced

    def _drop_command(self) -> None:
        segments, self._segments = self._segments, []
        self._command_size = 0
        close_segments(segments)
