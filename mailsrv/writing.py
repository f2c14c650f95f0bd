"""Sending a reactor turn's answers at the end of the turn, not one loop later.

Twisted's TCP transport only buffers a write: the octets reach the kernel
when the reactor's next poll reports the socket writable, which for a
small command is one more trip around the event loop (a poll, the
dispatch through the logging context, ``doWrite``, and registering and
unregistering for writability) on top of the trip that read the command.
On a loaded server that second trip also waits behind every other ready
connection.  :func:`send_now`, called by a protocol once it has handled
what it received, runs the transport's own ``doWrite`` right away.

Only where that is exactly what the reactor would do next: a socket
transport (TLS started on it included, which writes its ciphertext into
the same buffer), connected, not closing, and no paused producer (whose
resumption from inside ``dataReceived`` would re-enter the protocol).
Whatever the kernel does not take stays buffered, registered for the
writable event as before; an error stays for the reactor to meet on that
event and close the connection as it always does.
"""

from __future__ import annotations

from twisted.internet.abstract import FileDescriptor

__all__ = ["Outbox", "idle_socket", "send_now", "write_now"]


def _open_socket(transport: object) -> bool:
    """Is ``transport`` a socket descriptor whose own ``doWrite`` sends,
    connected, not closing, with no paused producer (whose resumption from
    inside ``dataReceived`` would re-enter the protocol)?  Not a TLS wrapper
    protocol or a test's transport."""
    return (
        isinstance(transport, FileDescriptor)
        and type(transport).doWrite is FileDescriptor.doWrite
        and bool(transport.connected)
        and not transport.disconnecting
        and not transport.producerPaused
        and not getattr(transport, "_writeDisconnecting", False)
    )


def send_now(transport: object) -> None:
    """Hand what was written to ``transport`` in this turn to the kernel now."""
    if not _open_socket(transport):
        return
    assert isinstance(transport, FileDescriptor)
    if transport._tempDataLen or transport.dataBuffer:
        # None, or an error the reactor meets again on the writable event
        # (the descriptor stays registered for it while anything is unsent).
        transport.doWrite()


def idle_socket(transport: object) -> bool:
    """Would :func:`write_now` hand a write to ``transport`` to the kernel
    at once?  A plain TCP socket (not with TLS started: its ciphertext goes
    through the protocol) with nothing written and not yet sent, on which a
    ``send`` now is what the reactor would do on its next poll.  (Holding
    answers for one send is only worth it then.)"""
    if not _open_socket(transport):
        return False
    assert isinstance(transport, FileDescriptor)
    return (
        not getattr(transport, "TLS", True)
        and not (transport._tempDataLen or transport.dataBuffer)
        and not getattr(transport, "_writeDisconnected", False)
    )


def write_now(transport: object, data: bytes) -> None:
    """Write ``data`` to ``transport``, handing it to the kernel at once
    where nothing else is waiting to go.

    A transport's ``write`` registers the socket for the writable event and
    the next ``doWrite`` unregisters it again: two ``epoll_ctl`` calls and
    a trip through the reactor's bookkeeping for every answer, though the
    kernel almost always takes a small answer whole.  Here one ``send``
    does it; what the kernel does not take (a full socket buffer), and any
    error, goes to the transport's ``write`` as before, so the reactor
    sends the rest or meets the error on the writable event and closes
    the connection as it always does.
    """
    if not data:
        return
    if idle_socket(transport):
        assert isinstance(transport, FileDescriptor)
        try:
            sent: int = transport.socket.send(data)  # type: ignore[attr-defined]
        except OSError:
            sent = 0  # EAGAIN, or an error: the transport's write meets it
        if sent >= len(data):
            return
        data = data[sent:]
    transport.write(data)  # type: ignore[attr-defined]


class Outbox:
    """What a protocol writes, held while it handles what it received and
    sent in one :func:`write_now` at the end of that turn; written at once
    outside a turn (an answer a Deferred brought later).

    Pipelined commands answered in one turn still go out in one ``send``
    (with ``TCP_NODELAY``, one send per answer would be one packet per
    answer).  Anything else that touches the transport's output (a
    producer streaming a message, TLS starting, the connection closing)
    must :meth:`flush` first, so the octets stay in order; an abort
    :meth:`discard` s them, as the transport's abort drops its buffer.
    """

    __slots__ = ("_held", "held_octets", "transport")

    def __init__(self, transport: object) -> None:
        self.transport = transport
        self._held: list[bytes] | None = None
        #: Octets held since the turn began (or since the last flush).
        self.held_octets = 0

    @property
    def holding(self) -> bool:
        return self._held is not None

    def hold(self) -> bool:
        """A turn begins: keep what is written until :meth:`flush`.  False
        if already holding (the caller that began it flushes)."""
        if self._held is not None:
            return False
        self._held = []
        self.held_octets = 0
        return True

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            held.append(data)
            self.held_octets += len(data)
        else:
            write_now(self.transport, data)

    def flush(self) -> None:
        """Send what was held, and write at once from now on."""
        held, self._held = self._held, None
        self.held_octets = 0
        if held:
            write_now(self.transport, b"".join(held))

    def discard(self) -> None:
        """Forget what was held (the connection is being aborted)."""
        self._held = None
        self.held_octets = 0
