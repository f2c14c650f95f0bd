"""What was said on each connection: the session transcripts a test reads.

:class:`RecordingFactory` wraps a protocol factory; every connection it
builds records the bytes in both directions as they pass (inside TLS, so the
transcript is plaintext after STARTTLS too) into a :class:`Transcript`, and
the factory keeps the open connections so the server can close them when
it stops.
"""

from __future__ import annotations

import threading
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

__all__ = ["Exchange", "RecordingFactory", "Transcript"]

CLIENT = "C"
SERVER = "S"


@attrs.frozen
class Exchange:
    """Bytes that went one way: ``"C"`` from the client, ``"S"`` from the server."""

    direction: str
    data: bytes


class Transcript:
    """One connection's conversation, in order (appended as it happens)."""

    def __init__(self, protocol: str, number: int) -> None:
        self.protocol = protocol
        #: 1 for the first connection to this protocol's listener, and so on.
        self.number = number
        self.exchanges: list[Exchange] = []
        self.closed = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Transcript {self.protocol} #{self.number} {state}>"

    def _add(self, direction: str, data: bytes) -> None:
        with self._lock:
            last = self.exchanges[-1] if self.exchanges else None
            if last is not None and last.direction == direction:
                self.exchanges[-1] = Exchange(direction, last.data + data)
            else:
                self.exchanges.append(Exchange(direction, data))

    def sent_by(self, direction: str) -> bytes:
        with self._lock:
            return b"".join(e.data for e in self.exchanges if e.direction == direction)

    @property
    def client_bytes(self) -> bytes:
        """Everything the client sent."""
        return self.sent_by(CLIENT)

    @property
    def server_bytes(self) -> bytes:
        """Everything the server sent."""
        return self.sent_by(SERVER)

    def lines(self) -> list[tuple[str, bytes]]:
        """``(direction, line)`` pairs, each line without its CRLF (a literal's
        bytes come as the lines they contain)."""
        with self._lock:
            exchanges = list(self.exchanges)
        result: list[tuple[str, bytes]] = []
        for exchange in exchanges:
            for line in exchange.data.split(b"\r\n"):
                if line:
                    result.append((exchange.direction, line))
        return result

    def commands(self) -> list[str]:
        """The command names the client sent, upper-case, in order: for IMAP
        the word(s) after the tag (``UID FETCH``), for POP3 the first word.
        Lines that are no command (literal data, SASL answers, IDLE's DONE)
        may appear as well when they look like one."""
        names: list[str] = []
        for direction, line in self.lines():
            if direction != CLIENT:
                continue
            words = line.decode("utf-8", "replace").split()
            if self.protocol == "IMAP":
                if len(words) < 2:
                    continue
                name = words[1].upper()
                if name == "UID" and len(words) > 2:
                    name += " " + words[2].upper()
                names.append(name)
            elif words:
                names.append(words[0].upper())
        return names

    def text(self) -> str:
        """The conversation as ``C: ...`` / ``S: ...`` lines, for failure messages."""
        return "\n".join(
            f"{direction}: {line.decode('utf-8', 'replace')}" for direction, line in self.lines()
        )


class _Recorder(ProtocolWrapper):
    factory: RecordingFactory

    def __init__(self, factory: Any, wrapped: Any, transcript: Transcript) -> None:
        super().__init__(factory, wrapped)
        self.transcript = transcript
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.transcript._add(CLIENT, data)
        super().dataReceived(data)  # type: ignore[no-untyped-call,unused-ignore]

    def write(self, data: bytes) -> None:
        self.transcript._add(SERVER, data)
        super().write(data)  # type: ignore[no-untyped-call,unused-ignore]

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def startTLS(self, context: Any, normal: bool = True) -> None:
        """STARTTLS/STLS on the TCP transport, flushing on the server's reactor.

        Twisted's TCP ``startTLS`` makes a TLS layer whose small writes
        wait for the next turn of the *global* reactor; a server on a
        reactor of its own (the background-thread mode) would never send
        them.  Pointing that one clock at this server's reactor is the whole fix.
        """
        transport: Any = self.transport
        transport.startTLS(context, normal)
        aggregator: Any = getattr(transport.protocol, "_aggregator", None)
        if self.factory.clock is not None and hasattr(aggregator, "_clock"):
            aggregator._clock = self.factory.clock

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.transcript.closed = True
        try:
            super().connectionLost(reason)  # type: ignore[no-untyped-call,unused-ignore]
        finally:
            self.lost.callback(None)


class RecordingFactory(WrappingFactory):
    """Wraps ``factory``; keeps a :class:`Transcript` per connection."""

    protocol = _Recorder
    noisy = False

    def __init__(
        self,
        wrapped: Factory,
        protocol_name: str,
        transcripts: list[Transcript] | None = None,
        clock: Any = None,
    ) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call,unused-ignore]
        self.protocol_name = protocol_name
        #: The reactor the server runs on (None: the global one).
        self.clock = clock
        #: Shared by the factories of one server (a protocol's plain and TLS
        #: listeners number their connections together).
        self.transcripts: list[Transcript] = transcripts if transcripts is not None else []
        self.open: set[_Recorder] = set()

    def buildProtocol(self, addr: IAddress | None) -> Any:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        number = 1 + sum(t.protocol == self.protocol_name for t in self.transcripts)
        transcript = Transcript(self.protocol_name, number)
        self.transcripts.append(transcript)
        recorder = _Recorder(self, wrapped, transcript)
        self.open.add(recorder)
        recorder.lost.addBoth(lambda _: self.open.discard(recorder))
        return recorder

    def registerProtocol(self, p: Any) -> None:
        """The wrapper keeps its own set (:attr:`open`)."""

    def unregisterProtocol(self, p: Any) -> None:
        """See :meth:`registerProtocol`."""
