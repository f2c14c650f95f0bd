"""What every IMAP command handler shares: its completion and its output.

:class:`Done` is a command's tagged completion; handlers return it (or a
Deferred firing with it) and raise :class:`CommandError` for a tagged NO or
BAD.  :class:`ResponseWriter` is the one way bytes reach the client: it is
registered on the transport as a streaming producer, so when the client
stops reading and the transport's buffer fills, :attr:`ResponseWriter.paused`
turns true and :meth:`ResponseWriter.ready` hands out a Deferred that fires
once the buffer has drained.  Long responses (FETCH over many messages, big
literals, SEARCH results) wait on it between pieces, which keeps a
session's memory bounded however slow its client is.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

from mailsrv.imap.compress import Deflater

__all__ = ["LINES_PER_WRITE", "CommandError", "Done", "ResponseWriter", "bad", "no", "write_lines"]


@attrs.frozen
class Done:
    """A command's tagged completion, and what to do after writing it."""

    status: str = "OK"
    text: str = "completed"
    code: str | None = None
    bye: str | None = None  # write "* BYE" after the tagged answer and close
    after: Callable[[], None] | None = None


class CommandError(Exception):
    """Ends a command with a tagged NO or BAD (and an optional code)."""

    def __init__(self, status: str, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.code = code


def no(text: str, code: str | None = None) -> CommandError:
    return CommandError("NO", text, code)


def bad(text: str, code: str | None = None) -> CommandError:
    return CommandError("BAD", text, code)


@implementer(IPushProducer)
class ResponseWriter:
    """Writes a session's responses, pausing work while the client lags.

    The transport calls :meth:`pauseProducing` when its send buffer is full
    and :meth:`resumeProducing` when it has drained; writers of long
    responses check :attr:`paused` between pieces and wait on :meth:`ready`.
    :meth:`close` unregisters the producer (a transport with a registered
    producer does not close) and is called before ``loseConnection``.

    After :meth:`compress` (COMPRESS=DEFLATE) everything written goes
    through a :class:`~mailsrv.imap.compress.Deflater`, and the end of each
    burst of writes (the reactor turn they were made in) is marked by a
    sync flush: a response is never held back in zlib's buffer while the
    client waits for it (an IDLE push, a tagged answer, a ``+``).
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.paused = False
        self.closed = False
        #: Told of every write (the session's probe counts the octets).
        self.observe: Callable[[bytes], None] | None = None
        self._waiters: list[defer.Deferred[None]] = []
        self._deflater: Deflater | None = None
        self._clock: IReactorTime | None = None
        self._flush_call: IDelayedCall | None = None
        transport.registerProducer(self, True)

    @property
    def compressing(self) -> bool:
        return self._deflater is not None

    def compress(self, deflater: Deflater, clock: IReactorTime) -> None:
        """Compress all that is written from now on; ``clock`` schedules
        the flush at the end of each burst."""
        self._deflater, self._clock = deflater, clock

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        if self.observe is not None:
            # Before compression (COMPRESS=DEFLATE): the lines the debug log
            # shows, and the octets the metrics count, are the IMAP text.
            self.observe(data)
        if self._deflater is not None:
            data = self._deflater.compress(data)
            if self._flush_call is None:
                assert self._clock is not None
                self._flush_call = self._clock.callLater(0, self.flush)
            if not data:
                return
        self.transport.write(data)

    def flush(self) -> None:
        """Send what the deflater holds (the end of a burst)."""
        self._cancel_flush()
        if self._deflater is not None and not self.closed:
            data = self._deflater.flush()
            if data:
                self.transport.write(data)

    def ready(self) -> defer.Deferred[None]:
        """Fires when the client can take more (at once if it can now).

        It also fires when the connection is gone; check :attr:`closed`.
        """
        if not self.paused or self.closed:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        return d

    def _release(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    # -- IPushProducer (called by the transport) --------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._release()

    def stopProducing(self) -> None:
        self.closed = True
        self.paused = False
        self._cancel_flush()
        self._release()

    def _cancel_flush(self) -> None:
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()

    # -- ours ----------------------------------------------------------------

    def close(self) -> None:
        """No more output: unregister from the transport, wake any waiter."""
        if not self.closed:
            self.flush()  # the last words (a BYE) before the close
            self.closed = True
            self.paused = False
            try:
                self.transport.unregisterProducer()
            except Exception:  # already gone with the connection
                pass
            self._release()


#: Responses joined into one write by :func:`write_lines`: a few KB, so a
#: client that stops reading leaves a small backlog.
LINES_PER_WRITE = 32


@defer.inlineCallbacks
def write_lines(
    writer: ResponseWriter, lines: list[bytes]
) -> Generator[defer.Deferred[None], None, bool]:
    """Write a batch's responses a few at a time, waiting while the client
    does not read (a batch with no lines waits all the same); False once
    the connection is gone."""
    for start in range(0, max(len(lines), 1), LINES_PER_WRITE):
        writer.write(b"".join(lines[start : start + LINES_PER_WRITE]))
        if writer.paused:
            yield writer.ready()
        if writer.closed:
            return False
    return True
