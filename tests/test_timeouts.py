"""Slow clients are logged out: IMAP and POP3 over loopback TCP, with a
``task.Clock`` driving the servers' timers.

The idle timer restarts on complete command lines and on progress of a
literal, never on a partial line; before login there is also an overall
deadline (``timeouts.login``), which bounds a NOOP loop, a SASL exchange and
a TLS handshake alike.  Each test waits until the server has read the bytes
it sent before moving the clock, so no test depends on real time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IAddress
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest

from mailsrv.auth.realm import MailRealm
from mailsrv.imap.protocol import IMAP4ServerFactory
from mailsrv.policy import SessionPolicy
from mailsrv.pop3.server import POP3Factory
from mailsrv.storage.memory import MemoryStorage
from mailsrv.tls import generate_self_signed

#: The start of a TLS ClientHello (record header, handshake header): what a
#: client stuck in, or trickling, its handshake has sent.
CLIENT_HELLO_START = bytes.fromhex("1603010200010001fc0303") + b"\x00" * 32


class Peer(protocol.Protocol):
    """The client side: collects what the server sends."""

    def __init__(self) -> None:
        self.buffer = b""
        self.lost: defer.Deferred[None] = defer.Deferred()
        self._waiting: list[tuple[Callable[[bytes], bool], defer.Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        for waiter in list(self._waiting):
            if waiter[0](self.buffer):
                self._waiting.remove(waiter)
                waiter[1].callback(self.buffer)

    def connectionLost(self, reason: Any = None) -> None:
        for _, d in self._waiting:
            d.errback(AssertionError(f"connection closed; got {self.buffer!r}"))
        self._waiting = []
        self.lost.callback(None)

    def until(self, text: bytes, count: int = 1) -> defer.Deferred[bytes]:
        """Everything received, once ``text`` has come ``count`` times."""
        d: defer.Deferred[bytes] = defer.Deferred()

        def ready(buffer: bytes) -> bool:
            return buffer.count(text) >= count

        if ready(self.buffer):
            d.callback(self.buffer)
        else:
            self._waiting.append((ready, d))
        return d

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Counted:
    """What a server session has read so far, and a way to wait for it."""

    def __init__(self) -> None:
        self.received = 0
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._waiting: list[tuple[int, defer.Deferred[None]]] = []
        self.disconnecting: Callable[[], bool] = lambda: False

    def end(self) -> None:
        if not self.ended.called:
            self.ended.callback(None)
        for _, d in self._waiting:
            d.errback(AssertionError(f"session ended after {self.received} octets"))
        self._waiting = []

    def got(self, count: int) -> None:
        self.received += count
        for waiter in list(self._waiting):
            if self.received >= waiter[0]:
                self._waiting.remove(waiter)
                waiter[1].callback(None)

    def reached(self, total: int) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if self.received >= total:
            d.callback(None)
        else:
            self._waiting.append((total, d))
        return d


def counting(factory: Any, sessions: list[Counted]) -> Any:
    """``factory`` whose sessions report every byte they are handed (after
    TLS, if any) and their end."""
    build = factory.buildProtocol

    def build_protocol(addr: IAddress | None) -> Any:
        server = build(addr)
        counted = Counted()
        sessions.append(counted)
        data_received, connection_lost = server.dataReceived, server.connectionLost

        def on_data(data: bytes) -> None:
            counted.got(len(data))
            data_received(data)

        def on_lost(reason: Any = None) -> None:
            connection_lost(reason)
            counted.end()

        server.dataReceived = on_data
        server.connectionLost = on_lost
        counted.disconnecting = lambda: bool(server.transport.disconnecting)
        return server

    factory.buildProtocol = build_protocol
    return factory


class TimeoutTestCase(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.clock = Clock()
        storage = MemoryStorage()
        checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret")
        self.portal = Portal(MailRealm(storage), [checker])
        self.sessions: list[Counted] = []
        self.peers: list[Peer] = []
        self.tls_context: Any = None

    def make_tls_context(self) -> Any:
        from twisted.internet import ssl

        directory = self.mktemp()
        cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        generate_self_signed(cert, key, "localhost")
        with open(cert, "rb") as c, open(key, "rb") as k:
            return ssl.PrivateCertificate.loadPEM(c.read() + k.read()).options()

    def listen(self, factory: Any, implicit_tls: bool = False) -> None:
        listening = counting(factory, self.sessions)
        if implicit_tls:
            listening = TLSMemoryBIOFactory(self.tls_context, False, listening)
        self.port: Any = reactor.listenTCP(0, listening, interface="127.0.0.1")
        self.addCleanup(self.stop)

    async def stop(self) -> None:
        for peer in self.peers:
            transport: Any = peer.transport  # a TCP transport
            if transport is not None and transport.connected:
                transport.abortConnection()
            await peer.lost
        for session in self.sessions:
            await session.ended
        await self.port.stopListening()

    async def connect(self) -> Peer:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        peer: Peer = await connectProtocol(endpoint, Peer())
        self.peers.append(peer)
        return peer

    async def feed(self, peer: Peer, data: bytes, session: int = -1) -> None:
        """Send ``data`` and wait until the server session has read it."""
        counted = self.sessions[session]
        total = counted.received + len(data)
        peer.send(data)
        await counted.reached(total)

    async def trickle(self, peer: Peer, data: bytes, every: float) -> None:
        """One byte every ``every`` seconds of the server's clock."""
        for byte in data:
            self.assertFalse(self.sessions[-1].disconnecting(), f"closed at {self.clock.seconds()}")
            await self.feed(peer, bytes([byte]))
            self.clock.advance(every)

    async def closed_with(self, peer: Peer, goodbye: bytes) -> None:
        """The server has closed the connection after saying ``goodbye``."""
        self.assertTrue(self.sessions[-1].disconnecting(), f"open at {self.clock.seconds()}")
        await peer.lost
        self.assertIn(goodbye, peer.buffer)


class IMAPTimeoutTests(TimeoutTestCase):
    def imap(self, implicit_tls: bool = False, **policy: Any) -> None:
        settings: dict[str, Any] = {
            "failure_delay": 0.0,
            "plaintext": "always",
            "imap_timeout_unauthenticated": 60.0,
            "login_timeout": 3600.0,
            "tls_context": self.tls_context,
        }
        settings.update(policy)
        factory = IMAP4ServerFactory(
            self.portal, SessionPolicy(**settings), implicit_tls=implicit_tls, clock=self.clock
        )
        self.listen(factory, implicit_tls)

    async def greeted(self) -> Peer:
        peer = await self.connect()
        await peer.until(b"\r\n")
        return peer

    async def test_trickled_line_does_not_hold_off_autologout(self) -> None:
        """One byte every 10 seconds is no activity: logged out 60 s after
        the greeting, halfway through ``a NOOP``."""
        self.imap()
        peer = await self.greeted()
        await self.trickle(peer, b"a NOOP", every=10)
        self.assertEqual(self.clock.seconds(), 60)
        await self.closed_with(peer, b"* BYE Autologout; idle for too long\r\n")

    async def test_complete_commands_restart_the_timer(self) -> None:
        self.imap()
        peer = await self.greeted()
        for tag in range(5):
            self.clock.advance(59)
            await self.feed(peer, b"%d NOOP\r\n" % tag)
            await peer.until(b"%d OK" % tag)
        self.clock.advance(59)
        self.assertFalse(self.sessions[-1].disconnecting())
        self.clock.advance(1)
        await self.closed_with(peer, b"* BYE Autologout")

    async def test_noop_loop_before_login_meets_the_login_deadline(self) -> None:
        self.imap(login_timeout=120.0)
        peer = await self.greeted()
        for tag in range(3):  # at 0, 50 and 100 seconds
            await self.feed(peer, b"%d NOOP\r\n" % tag)
            await peer.until(b"%d OK" % tag)
            self.clock.advance(50 if tag < 2 else 19.9)
        self.assertFalse(self.sessions[-1].disconnecting())
        self.clock.advance(0.1)
        await self.closed_with(peer, b"* BYE Too long without logging in\r\n")

    async def test_sasl_exchange_meets_the_login_deadline(self) -> None:
        """AUTHENTICATE answered and cancelled every 30 s counts as no
        failure, so only the deadline ends it."""
        self.imap(login_timeout=120.0)
        peer = await self.greeted()
        for tag in range(3):  # at 0, 30 and 60 seconds
            await self.feed(peer, b"%d AUTHENTICATE PLAIN\r\n" % tag)
            await peer.until(b"+ \r\n", tag + 1)
            self.clock.advance(15)
            await self.feed(peer, b"*\r\n")
            await peer.until(b"%d BAD" % tag)
            self.clock.advance(15)
        await self.feed(peer, b"3 AUTHENTICATE PLAIN\r\n")
        await peer.until(b"+ \r\n", 4)
        self.clock.advance(29.9)
        self.assertFalse(self.sessions[-1].disconnecting())
        self.clock.advance(0.1)  # 120 s, with a challenge unanswered
        await self.closed_with(peer, b"* BYE Too long without logging in\r\n")

    async def test_login_ends_the_deadline(self) -> None:
        self.imap(login_timeout=120.0, imap_timeout_authenticated=1800.0)
        peer = await self.greeted()
        self.clock.advance(50)
        await self.feed(peer, b"n NOOP\r\n")
        await peer.until(b"n OK")
        self.clock.advance(50)
        await self.feed(peer, b"a LOGIN joe secret\r\n")
        await peer.until(b"a OK")
        for tag in range(3):
            self.clock.advance(1000)
            await self.feed(peer, b"%d NOOP\r\n" % tag)
            await peer.until(b"%d OK" % tag)
        self.clock.advance(1799)
        self.assertFalse(self.sessions[-1].disconnecting())
        self.clock.advance(1)
        await self.closed_with(peer, b"* BYE Autologout; idle for too long\r\n")

    async def test_trickled_line_after_login(self) -> None:
        self.imap(imap_timeout_authenticated=1800.0)
        peer = await self.greeted()
        await self.feed(peer, b"a LOGIN joe secret\r\n")
        await peer.until(b"a OK")
        await self.trickle(peer, b"b S", every=600)
        self.assertEqual(self.clock.seconds(), 1800)
        await self.closed_with(peer, b"* BYE Autologout; idle for too long\r\n")

    async def test_steady_literal_of_a_long_append_is_not_cut_off(self) -> None:
        """Progress on a literal is activity: ten pieces, each within the
        timeout, take far longer than the timeout in all."""
        self.imap(imap_timeout_authenticated=1800.0)
        peer = await self.greeted()
        await self.feed(peer, b"a LOGIN joe secret\r\n")
        await peer.until(b"a OK")
        piece = b"Subject: big\r\n" + b"x" * 99984 + b"\r\n"
        await self.feed(peer, b"b APPEND INBOX {%d}\r\n" % (len(piece) * 10))
        await peer.until(b"+ ")
        for _ in range(10):
            self.clock.advance(1500)
            await self.feed(peer, piece)
        self.clock.advance(1500)
        await self.feed(peer, b"\r\n")
        await peer.until(b"b OK [APPENDUID")
        self.assertFalse(self.sessions[-1].disconnecting())

    async def test_stalled_tls_handshake_is_closed(self) -> None:
        """Implicit TLS: the client starts its handshake and never ends it."""
        self.tls_context = self.make_tls_context()
        self.imap(implicit_tls=True, login_timeout=120.0)
        peer = await self.connect()
        peer.send(CLIENT_HELLO_START[:5])  # never reaches IMAP: no wait possible
        for _ in range(12):
            self.clock.advance(10)
        await peer.lost  # aborted: the goodbye cannot pass an unfinished handshake

    async def test_trickled_starttls_handshake_is_closed(self) -> None:
        self.tls_context = self.make_tls_context()
        self.imap(login_timeout=120.0)
        peer = await self.greeted()
        await self.feed(peer, b"a STARTTLS\r\n")
        await peer.until(b"a OK")
        peer.send(CLIENT_HELLO_START[:8])
        for _ in range(12):
            self.clock.advance(10)
        await peer.lost


class POP3TimeoutTests(TimeoutTestCase):
    def pop3(self, **policy: Any) -> None:
        settings: dict[str, Any] = {
            "failure_delay": 0.0,
            "plaintext": "always",
            "pop3_timeout": 600.0,
            "login_timeout": 3600.0,
            "tls_context": self.tls_context,
        }
        settings.update(policy)
        factory = POP3Factory(self.portal, SessionPolicy(**settings), clock=self.clock)
        self.listen(factory)

    async def greeted(self) -> Peer:
        peer = await self.connect()
        await peer.until(b"\r\n")
        return peer

    async def test_trickled_line_does_not_hold_off_autologout(self) -> None:
        self.pop3()
        peer = await self.greeted()
        await self.trickle(peer, b"USER j", every=100)
        await self.closed_with(peer, b"-ERR Disconnected for inactivity.\r\n")
        self.assertEqual(self.clock.seconds(), 600)

    async def test_capa_loop_before_login_meets_the_login_deadline(self) -> None:
        self.pop3(login_timeout=300.0)
        peer = await self.greeted()
        for turn in range(2):  # at 0 and 100 seconds
            await self.feed(peer, b"CAPA\r\n")
            await peer.until(b"\r\n.\r\n", turn + 1)
            self.clock.advance(100)
        await self.feed(peer, b"AUTH PLAIN\r\n")  # a SASL exchange left open
        await peer.until(b"+ ")
        self.clock.advance(99.9)
        self.assertFalse(self.sessions[-1].disconnecting())
        self.clock.advance(0.1)
        await self.closed_with(peer, b"-ERR Disconnected: too long without logging in.\r\n")

    async def test_login_ends_the_deadline(self) -> None:
        self.pop3(login_timeout=300.0)
        peer = await self.greeted()
        self.clock.advance(200)
        await self.feed(peer, b"USER joe\r\nPASS secret\r\n")
        await peer.until(b"+OK Logged in")
        for turn in range(3):
            self.clock.advance(500)
            await self.feed(peer, b"STAT\r\n")
            await peer.until(b"+OK 0 0\r\n", turn + 1)
        self.clock.advance(599)
        self.assertFalse(self.sessions[-1].disconnecting())
        self.clock.advance(1)
        await self.closed_with(peer, b"-ERR Disconnected for inactivity.\r\n")

    async def test_trickled_stls_handshake_is_closed(self) -> None:
        self.tls_context = self.make_tls_context()
        self.pop3(login_timeout=300.0)
        peer = await self.greeted()
        await self.feed(peer, b"STLS\r\n")
        await peer.until(b"+OK Begin TLS")
        peer.send(CLIENT_HELLO_START[:8])
        for _ in range(40):
            self.clock.advance(10)
        await peer.lost


class LoginDeadlineConfigTests(unittest.TestCase):
    def test_timeouts_login(self) -> None:
        from mailsrv.config import load_config
        from mailsrv.errors import ConfigError

        path = os.path.abspath(self.mktemp())
        listen = '[imap]\nlisten = ["tcp:1143"]\n[users]\ncreate_if_missing = true\n'
        with open(path, "w") as f:
            f.write(listen)
        self.assertEqual(SessionPolicy.from_config(load_config(path)).login_timeout, 120.0)
        with open(path, "w") as f:
            f.write(listen + "[timeouts]\nlogin = 30\n")
        self.assertEqual(SessionPolicy.from_config(load_config(path)).login_timeout, 30.0)
        with open(path, "w") as f:
            f.write(listen + "[timeouts]\nlogin = 2\n")
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual((e.path, e.key), (path, "timeouts.login"))
        self.assertIn("at least 5", e.reason)
