"""An answer reaches the socket in the reactor turn that read its command.

Each test hands the server protocol a command itself, outside the reactor,
and then, still without letting the reactor run, looks at the client's
socket: the answer must already be there (``mailsrv.writing.send_now``);
before, it sat in Twisted's buffer until the reactor's next writable event.
"""

from __future__ import annotations

import select
import socket
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest

from mailsrv.writing import send_now
from tests.imap_helpers import ServerTestBase
from tests.pop3_helpers import Fixture, TCPServer

#: How long the client's socket is watched for the answer (a deadline for a
#: condition: the answer is there at once, or the test fails).
DEADLINE = 5.0


def waiting(sock: socket.socket) -> bytes:
    """What the kernel holds for ``sock`` to read, left there for its protocol."""
    readable, _, _ = select.select([sock], [], [], DEADLINE)
    if not readable:
        return b""
    return sock.recv(65536, socket.MSG_PEEK)


class Quiet(protocol.Protocol):
    """A server protocol that writes only when the test says."""


class SendNowTests(unittest.TestCase):
    timeout = 20

    async def pair(self) -> tuple[Any, socket.socket]:
        """A server-side transport and the client's socket, connected."""
        servers: list[Quiet] = []

        def build(addr: Any) -> Quiet:
            servers.append(Quiet())
            return servers[-1]

        factory = protocol.ServerFactory()
        factory.buildProtocol = build  # type: ignore[method-assign]
        port: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        client: Any = await connectProtocol(endpoint, protocol.Protocol())
        while not servers:  # accepted on a later turn than the client connected
            await deferLater()
        server: Any = servers[0]
        self.addCleanup(server.transport.loseConnection)
        self.addCleanup(client.transport.loseConnection)
        return server.transport, client.transport.socket

    async def test_written_then_sent_now(self) -> None:
        transport, sock = await self.pair()
        transport.write(b"one ")
        transport.write(b"two\r\n")
        send_now(transport)
        self.assertEqual(waiting(sock), b"one two\r\n")

    async def test_nothing_written_nothing_sent(self) -> None:
        transport, sock = await self.pair()
        calls: list[None] = []
        self.patch(transport, "doWrite", lambda: calls.append(None))
        send_now(transport)
        self.assertEqual(calls, [])  # not even an empty doWrite
        readable, _, _ = select.select([sock], [], [], 0)
        self.assertEqual(readable, [])

    async def test_closing_transport_left_to_the_reactor(self) -> None:
        """A connection being closed is the reactor's to finish: its last
        octets and the close go out as before."""
        transport, sock = await self.pair()
        transport.write(b"bye\r\n")
        transport.loseConnection()
        send_now(transport)
        readable, _, _ = select.select([sock], [], [], 0)
        self.assertEqual(readable, [])

    def test_not_a_socket(self) -> None:
        send_now(object())  # a test's string transport, a TLS wrapper: nothing


async def deferLater() -> None:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(0, d.callback, None)
    await d


class POP3AnswerTests(unittest.TestCase):
    timeout = 20

    async def test_answer_sent_in_the_turn(self) -> None:
        fixture = Fixture(self)
        server = TCPServer(self, fixture)
        sessions: list[Any] = []
        build = server.factory.buildProtocol

        def keep(addr: Any) -> Any:
            sessions.append(build(addr))
            return sessions[-1]

        server.factory.buildProtocol = keep  # type: ignore[method-assign]
        client, _ = await server.connect()
        transport: Any = client.transport
        sessions[0].dataReceived(b"USER alice\r\nNOOP\r\n")
        self.assertEqual(
            waiting(transport.socket),
            b"+OK Send your password.\r\n-ERR NOOP is only valid after login.\r\n",
        )


class IMAPAnswerTests(ServerTestBase):
    async def test_answer_sent_in_the_turn(self) -> None:
        client = await self.connect()
        self.factory.sessions[0].dataReceived(b"a NOOP\r\n")
        self.assertEqual(waiting(client.transport.socket), b"a OK NOOP completed\r\n")
