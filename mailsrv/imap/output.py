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

Within a reactor turn that handles the client's input (:meth:`ResponseWriter.hold`
to :meth:`ResponseWriter.end_turn`) what is written is held and then given
to the kernel in one ``send`` (:class:`~mailsrv.writing.Outbox`): nothing
is buffered in the transport until the reactor's next poll when the socket
takes it all, so such an answer costs no ``epoll_ctl`` calls to register
and unregister the socket for writing.  Outside one (an answer a Deferred
brings, an IDLE push, the later batches of a long FETCH) writes go through
the transport as before, which joins a batch's many writes into one send.
What the kernel does not take goes to the transport, and its back-pressure
(the producer's pause) works as it did.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

from mailsrv import writing
from mailsrv.imap.compress import Deflater
from mailsrv.writing import Outbox

__all__ = [
    "HOLD_LIMIT",
    "LINES_PER_WRITE",
    "CommandError",
    "Done",
    "ResponseWriter",
    "bad",
    "no",
    "write_lines",
]

#: Octets held in a turn before they are sent anyway: a long FETCH answered
#: within one turn must meet the transport's back-pressure (the producer's
#: pause once its buffer is full) rather than pile up in memory.
HOLD_LIMIT = 16 * 1024


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
        self._out = Outbox(transport)
        self._aborted = False
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
        self._send(data)

    def _send(self, data: bytes) -> None:
        if self._aborted:
            return
        if not self._out.holding:
            # Outside a turn (an answer a Deferred brings, an IDLE push, the
            # next batch of a long FETCH): through the transport, whose
            # buffer joins a batch's many writes into one send at its poll.
            self.transport.write(data)
            return
        self._out.write(data)
        if self._out.held_octets >= HOLD_LIMIT:
            self.send_held()

    def flush(self) -> None:
        """Send what the deflater holds (the end of a burst)."""
        self._cancel_flush()
        if self._deflater is not None and not self.closed:
            data = self._deflater.flush()
            if data:
                self._send(data)

    def hold(self) -> bool:
        """A turn handling the client's input begins: hold what is written
        until :meth:`end_turn`.  False if a turn is already holding (its
        caller ends it)."""
        if (
            self._out.holding
            or self.closed
            or self._aborted
            or not writing.idle_socket(self.transport)
        ):
            return False  # (nothing gained where a write would not be sent at once)
        return self._out.hold()

    def send_held(self) -> None:
        """Send what is held now, and go on holding: before anything else
        touches the transport's output (TLS starting), or once the turn
        has written :data:`HOLD_LIMIT` octets."""
        holding = self._out.holding
        self._out.flush()
        # Where the kernel left some in the transport (or TLS started), the
        # rest of the turn writes through it, as before, so its buffer, and
        # the producer's pause, see every octet.
        if holding and writing.idle_socket(self.transport):
            self._out.hold()

    def end_turn(self) -> None:
        """The turn is over: send what it wrote, and write at once from now
        on (an answer a Deferred brings later, an IDLE push)."""
        self._out.flush()

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
        self._discard()  # the connection is gone: what is held cannot go
        self.closed = True
        self.paused = False
        self._cancel_flush()
        self._release()

    def _cancel_flush(self) -> None:
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()

    # -- ours ----------------------------------------------------------------

    def _discard(self) -> None:
        self._out.discard()

    def abort(self) -> None:
        """The connection is being aborted: what is held never goes, as the
        transport's abort drops what it buffered."""
        self._discard()
        self._aborted = True  # and nothing written from now on goes either

    def close(self) -> None:
        """No more output: unregister from the transport, wake any waiter."""
        if not self.closed:
            self.flush()  # the last words (a BYE) before the close
            self.end_turn()  # held ones too, before the transport closes
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
