"""Nagle's algorithm is off on every TCP connection the protocols serve.

With it on, a small answer written before the previous one is acknowledged
waits for the client's delayed ACK (40 ms on Linux): every pipelined round
trip and every IDLE push paid it.  Each test connects over a real socket
and reads the option on the server's accepted socket, as built by the
service's own listener wiring (implicit TLS, the PROXY header reader).
"""

from __future__ import annotations

import os
import socket
from typing import Any, cast

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.interfaces import IAddress, IReactorUNIX
from twisted.internet.protocol import Factory
from twisted.protocols.policies import ProtocolWrapper
from twisted.trial import unittest

from mailsrv.auth.realm import MailRealm
from mailsrv.config import Listener
from mailsrv.policy import SessionPolicy
from mailsrv.proxy import ProxyFactory, ProxyNetworks, parse_networks
from mailsrv.service import protocol_factory
from mailsrv.storage.memory import MemoryStorage
from tests.helpers import make_tls_context


class Greeted(protocol.Protocol):
    """The client: fires ``greeting`` with the server's first line."""

    def __init__(self, first: bytes = b"") -> None:
        self.first = first
        self.buffer = b""
        self.greeting: defer.Deferred[bytes] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        if self.first:
            assert self.transport is not None
            self.transport.write(self.first)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n" in self.buffer and not self.greeting.called:
            self.greeting.callback(self.buffer)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.greeting.called:
            self.greeting.errback(AssertionError(f"closed after {self.buffer!r}"))
        self.lost.callback(None)


def server_socket(server: protocol.Protocol) -> socket.socket:
    """The accepted socket under ``server``'s transport (beneath any TLS or
    PROXY wrapper)."""
    transport: Any = server.transport
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    sock: socket.socket = transport.getHandle()
    return sock


class NoDelayTests(unittest.TestCase):
    timeout = 30  # a server that fails to greet fails the test, not hangs it

    def setUp(self) -> None:
        storage = MemoryStorage()
        storage.account("joe")
        checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret")
        self.portal = Portal(MailRealm(storage), [checker])
        self.storage = storage
        tls_context, _cert = make_tls_context(self.mktemp())
        self.policy = SessionPolicy(tls_context=tls_context)

    def factory(self, name: str, implicit_tls: bool = False) -> Factory[Any]:
        listener = Listener(name, "tcp:0", implicit_tls, f"{name}.listen[0]")
        return protocol_factory(
            listener, self.portal, self.policy, storage=self.storage, users=lambda _: None
        )

    def record(self, factory: Factory[Any]) -> list[protocol.Protocol]:
        """The protocols the innermost factory under ``factory`` builds; the
        test ends only once each has seen its connection closed."""
        inner: Any = factory
        while hasattr(inner, "wrappedFactory"):
            inner = inner.wrappedFactory
        built: list[protocol.Protocol] = []
        build = inner.buildProtocol

        def recording(addr: IAddress) -> protocol.Protocol:
            server: protocol.Protocol = build(addr)
            lost: defer.Deferred[None] = defer.Deferred()
            connection_lost = server.connectionLost

            def closed(reason: Any = None) -> None:
                try:
                    connection_lost(reason)
                finally:
                    lost.callback(None)

            server.connectionLost = closed  # type: ignore[method-assign]
            self.addCleanup(lambda: lost)
            built.append(server)
            return server

        inner.buildProtocol = recording
        return built

    @defer.inlineCallbacks
    def greeted(self, factory: Factory[Any], *, tls: bool = False, first: bytes = b"") -> Any:
        """Connect over loopback TCP; the server's protocol, once it greeted."""
        built = self.record(factory)
        # Twisted types listenTCP's factory as a ServerFactory; any will do.
        port: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        creator = protocol.ClientCreator(reactor, Greeted, first)
        number = port.getHost().port
        if tls:
            client = yield creator.connectSSL("127.0.0.1", number, ssl.CertificateOptions())
        else:
            client = yield creator.connectTCP("127.0.0.1", number)
        self.addCleanup(lambda: client.lost)
        self.addCleanup(client.transport.loseConnection)
        yield client.greeting
        (server,) = built
        return server

    @defer.inlineCallbacks
    def assert_no_delay(self, factory: Factory[Any], **kwargs: Any) -> Any:
        server = yield self.greeted(factory, **kwargs)
        sock = server_socket(server)
        self.assertIn(sock.family, (socket.AF_INET, socket.AF_INET6))
        self.assertTrue(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def test_imap(self) -> Any:
        return self.assert_no_delay(self.factory("imap"))

    def test_imap_implicit_tls(self) -> Any:
        return self.assert_no_delay(self.factory("imap", implicit_tls=True), tls=True)

    def test_pop3(self) -> Any:
        return self.assert_no_delay(self.factory("pop3"))

    def test_pop3_implicit_tls(self) -> Any:
        return self.assert_no_delay(self.factory("pop3", implicit_tls=True), tls=True)

    def test_lmtp(self) -> Any:
        return self.assert_no_delay(self.factory("lmtp"))

    def test_imap_behind_a_proxy(self) -> Any:
        networks, _problem = parse_networks(["127.0.0.1"])
        factory = ProxyFactory(self.factory("imap"), ProxyNetworks(networks))
        header = b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 143\r\n"
        return self.assert_no_delay(factory, first=header)

    @defer.inlineCallbacks
    def test_lmtp_on_a_unix_socket(self) -> Any:
        # A Unix socket has no such option (setting it fails with
        # EOPNOTSUPP): the connection is served all the same.
        factory = self.factory("lmtp")
        built = self.record(factory)
        path = os.path.abspath(self.mktemp())
        port = cast(IReactorUNIX, reactor).listenUNIX(path, factory)
        self.addCleanup(port.stopListening)
        client = yield protocol.ClientCreator(reactor, Greeted).connectUNIX(path)
        self.addCleanup(lambda: client.lost)
        self.addCleanup(client.transport.loseConnection)
        greeting = yield client.greeting
        self.assertTrue(greeting.startswith(b"220 "), greeting)
        (server,) = built
        self.assertEqual(server_socket(server).family, socket.AF_UNIX)
