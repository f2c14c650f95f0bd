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

__all__ = ["send_now"]


def send_now(transport: object) -> None:
    """Hand what was written to ``transport`` in this turn to the kernel now."""
    if (
        not isinstance(transport, FileDescriptor)
        or type(transport).doWrite is not FileDescriptor.doWrite
    ):
        return  # not a socket descriptor: a TLS wrapper protocol, a test's transport
    if (
        not transport.connected
        or not (transport._tempDataLen or transport.dataBuffer)  # nothing written
        or transport.disconnecting
        or transport.producerPaused
        or getattr(transport, "_writeDisconnecting", False)
    ):
        return
    # None, or an error the reactor meets again on the writable event (the
    # descriptor stays registered for it while anything is left unsent).
    transport.doWrite()
