"""Sans-I/O framing of POP3 command lines: bytes in, events out.

Feed what the connection received to :meth:`LineFramer.receive`, then take
events with :meth:`LineFramer.next_event` until it gives None: a command
line (``bytes``, without its line end) or :data:`LINE_TOO_LONG`.  The
events are the same however the bytes were split into packets.

Lines end with CRLF, or a bare LF from lenient clients (RFC 1939 3 asks for
CRLF; being lenient here costs nothing).  A line longer than the limit is
one :data:`LINE_TOO_LONG` event, reported as soon as it is known to be too
long, and the rest of it up to its line end is skipped: the server answers
it with one ``-ERR`` and the commands after it still run.  (Twisted's
``LineOnlyReceiver`` instead drops the rest of the packet with it, taking
pipelined commands along.)

Events wait here until the session takes them, one command at a time
(RFC 2449 6.6 PIPELINING): :attr:`LineFramer.pending` tells the adapter
when to stop reading.  Nothing here does I/O or knows of Twisted.
"""

from __future__ import annotations

from collections import deque
from typing import Final, final

__all__ = ["LINE_TOO_LONG", "Event", "LineFramer", "LineTooLong"]

_CR: Final = 13


@final
class LineTooLong:
    """The event for a line over the limit (use :data:`LINE_TOO_LONG`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "LINE_TOO_LONG"


#: The one :class:`LineTooLong` event.
LINE_TOO_LONG: Final = LineTooLong()

#: What :meth:`LineFramer.next_event` gives: a command line or LINE_TOO_LONG.
Event = bytes | LineTooLong


class LineFramer:
    """Splits a byte stream into command lines of at most ``max_length``
    octets (line end not counted)."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self._partial = bytearray()  # the start of a line still without its end
        self._skipping = False  # inside a line already reported too long
        self._events: deque[Event] = deque()

    @property
    def pending(self) -> int:
        """Events received and not taken yet."""
        return len(self._events)

    def next_event(self) -> Event | None:
        """The oldest event not taken yet, or None."""
        return self._events.popleft() if self._events else None

    def clear(self) -> None:
        """Forget everything not taken yet, events and partial line alike
        (STLS: what arrived before the handshake must not run, RFC 2595 3.1)."""
        self._events.clear()
        self._partial.clear()
        self._skipping = False

    def receive(self, data: bytes) -> bool:
        """Take the next bytes of the stream.

        Returns whether a command line ended in ``data`` (one that the
        session will be handed, too long or not): the session's idle timer
        counts whole commands, never bytes.  The end of a line whose
        :data:`LINE_TOO_LONG` was already reported from an earlier packet
        does not count.
        """
        if self._partial:
            self._partial += data
            buffer: bytes | bytearray = self._partial
        else:
            buffer = data
        ended = False
        events = self._events
        limit = self.max_length
        start, size = 0, len(buffer)
        while start < size:
            newline = buffer.find(b"\n", start)
            if newline < 0:
                if not self._skipping and self._too_long(size - start, buffer[-1]):
                    events.append(LINE_TOO_LONG)
                    self._skipping = True
                if self._skipping:
                    start = size
                break
            if self._skipping:
                self._skipping = False
            else:
                end = newline
                if end > start and buffer[end - 1] == _CR:
                    end -= 1
                events.append(bytes(buffer[start:end]) if end - start <= limit else LINE_TOO_LONG)
                ended = True
            start = newline + 1
        if buffer is self._partial:
            del self._partial[:start]
        elif start < size:
            self._partial += data[start:]
        return ended

    def _too_long(self, octets: int, last: int) -> bool:
        """Is an unfinished line of ``octets`` (ending in ``last``) too long
        already?  A final CR may be the start of its CRLF."""
        limit = self.max_length
        return octets > limit + 1 or (octets == limit + 1 and last != _CR)
