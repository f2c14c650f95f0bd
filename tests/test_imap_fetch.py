"""FETCH (mailsrv.imap.fetch) and output that waits for a slow client.

The flow-control tests use a transport that behaves like TCP's: it pauses
its registered producer when more than ``limit`` octets are waiting and
resumes it when the test "drains" them, which is what a client that stops
reading does to a real socket.
"""

from __future__ import annotations

import io
import re
import socket
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mailsrv.auth.realm import MailRealm
from mailsrv.imap import fetch
from mailsrv.imap.output import ResponseWriter
from mailsrv.imap.server import IMAP4Server, IMAP4ServerFactory
from mailsrv.policy import SessionPolicy
from tests.test_imap_server import Client, FakeStorage, ServerTestBase


class BufferingTransport(StringTransport):
    """A StringTransport whose send buffer "fills" at ``limit`` octets."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.pending = 0
        self.writes_while_paused = 0
        self.producer_paused = False

    def write(self, data: bytes) -> None:
        if self.producer_paused and not re.match(rb"[A-Za-z]+ (OK|NO|BAD) ", data):
            # Only a command's short tagged completion may follow a pause.
            self.writes_while_paused += 1
        super().write(data)
        self.pending += len(data)
        if self.pending > self.limit and not self.producer_paused and self.producer is not None:
            self.producer_paused = True
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        """The client reads everything; the producer may go on."""
        data = self.value()
        self.clear()
        self.pending = 0
        if self.producer_paused and self.producer is not None:
            self.producer_paused = False
            self.producer.resumeProducing()
        return data


def _session(messages: int, limit: int) -> tuple[IMAP4Server, BufferingTransport, task.Clock]:
    """A logged-in session with INBOX (``messages`` messages) selected."""
    clock = task.Clock()
    storage = FakeStorage()
    inbox = storage.account("joe").mailboxes["INBOX"]  # type: ignore[attr-defined]
    for n in range(messages):
        inbox.add(b"message %d\r\n" % n, ["\\Seen"] if n % 3 else [])
    checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret")
    portal = Portal(MailRealm(storage), [checker])
    policy = SessionPolicy(failure_delay=0.0, plaintext="always")
    server = IMAP4ServerFactory(portal, policy, clock=clock).buildProtocol(None)
    transport = BufferingTransport(limit)
    server.makeConnection(transport)
    server.dataReceived(b"L LOGIN joe secret\r\nS SELECT INBOX\r\n")
    assert b"S OK [READ-WRITE]" in transport.value(), transport.value()
    transport.drain()
    return server, transport, clock


class FlowControlTests(SynchronousTestCase):
    def test_writer_is_registered_as_streaming_producer(self) -> None:
        server, transport, _ = _session(1, 1 << 20)
        self.assertIsInstance(transport.producer, ResponseWriter)
        self.assertTrue(transport.streaming)
        server.dataReceived(b"Z LOGOUT\r\n")
        # Unregistered before closing: a registered producer keeps TCP open.
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.disconnecting)

    def test_fetch_stops_while_the_client_is_not_reading(self) -> None:
        count = 1800
        limit = 4096
        server, transport, clock = _session(count, limit)
        server.dataReceived(b"f FETCH 1:* (UID FLAGS)\r\n")
        received = b""
        rounds = 0
        while not received.endswith(b"f OK FETCH completed\r\n"):
            rounds += 1
            self.assertLess(rounds, 10_000)
            # Paused with at most one response past the limit buffered.
            self.assertLessEqual(transport.pending, limit + 100)
            received += transport.drain()
            clock.advance(0)  # the turn the FETCH gives others between batches
        self.assertGreater(rounds, 10)
        self.assertEqual(transport.writes_while_paused, 0)
        lines = received.split(b"\r\n")[:-1]
        self.assertEqual(len(lines), count + 1)
        for seq in (1, 2, 900, count):
            flags = b"\\Recent" if (seq - 1) % 3 == 0 else b"\\Recent \\Seen"
            self.assertEqual(lines[seq - 1], b"* %d FETCH (UID %d FLAGS (%s))" % (seq, seq, flags))

    def test_search_result_waits_too(self) -> None:
        count = 5000
        server, transport, clock = _session(count, 1024)
        server.dataReceived(b"s SEARCH ALL\r\n")
        received = b""
        rounds = 0
        while not received.endswith(b"s OK SEARCH completed\r\n"):
            rounds += 1
            self.assertLess(rounds, 1000)
            received += transport.drain()
            clock.advance(0)
        self.assertGreater(rounds, 1)
        self.assertEqual(transport.writes_while_paused, 0)
        expected = b"* SEARCH " + b" ".join(b"%d" % n for n in range(1, count + 1)) + b"\r\n"
        self.assertEqual(received, expected + b"s OK SEARCH completed\r\n")

    def test_pipelined_commands_wait_while_answers_are_not_read(self) -> None:
        # A client that pipelines thousands of commands without reading the
        # answers: the server stops reading commands (rather than refusing
        # them) once its output is blocked, so answers cannot pile up.
        count = 3000
        server, transport, _clock = _session(1, 2048)
        server.dataReceived(b"".join(b"n%d NOOP\r\n" % n for n in range(count)))
        self.assertTrue(transport.producer_paused)
        self.assertEqual(transport.producerState, "paused")  # reading stopped
        self.assertLessEqual(transport.pending, 2048 + 100)
        received = b""
        rounds = 0
        while transport.producerState == "paused" or transport.value():
            rounds += 1
            self.assertLess(rounds, 1000)
            self.assertLessEqual(transport.pending, 2048 + 100)
            received += transport.drain()
        self.assertGreater(rounds, 10)
        self.assertEqual(transport.writes_while_paused, 0)
        expected = b"".join(b"n%d OK NOOP completed\r\n" % n for n in range(count))
        self.assertEqual(received, expected)

    def test_lost_connection_ends_a_paused_fetch(self) -> None:
        server, transport, clock = _session(2000, 1024)
        server.dataReceived(b"f FETCH 1:* (UID)\r\n")
        self.assertTrue(transport.producer_paused)
        server.connectionLost(None)
        clock.advance(0)
        self.assertEqual(clock.getDelayedCalls(), [])


class WriteLiteralTests(SynchronousTestCase):
    def make_writer(self, limit: int) -> tuple[ResponseWriter, BufferingTransport]:
        transport = BufferingTransport(limit)
        return ResponseWriter(transport), transport

    def test_large_literal_in_chunks_waiting_for_the_client(self) -> None:
        writer, transport = self.make_writer(10_000)
        data = bytes(range(256)) * 1200  # 307,200 octets
        results: list[object] = []
        d = fetch.write_literal(writer, io.BytesIO(data), len(data), chunk_size=8192)
        d.addBoth(results.append)
        received = b""
        rounds = 0
        while not results:
            rounds += 1
            self.assertLessEqual(transport.pending, 10_000 + 8192)
            received += transport.drain()
        received += transport.drain()
        self.assertGreater(rounds, 10)
        self.assertEqual(results, [None])
        self.assertEqual(received, b"{307200}\r\n" + data)

    def test_slice_from_an_offset(self) -> None:
        writer, transport = self.make_writer(1 << 20)
        d = fetch.write_literal(writer, io.BytesIO(b"0123456789"), 4, offset=3)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(transport.value(), b"{4}\r\n3456")

    def test_short_file_is_padded_to_the_promised_length(self) -> None:
        writer, transport = self.make_writer(1 << 20)
        d = fetch.write_literal(writer, io.BytesIO(b"abc"), 6)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(transport.value(), b"{6}\r\nabc   ")
        self.flushLoggedErrors()


class TcpBackPressureTests(ServerTestBase):
    """Over real TCP: a client that stops reading stops the FETCH."""

    policy = SessionPolicy(failure_delay=0.0)

    @defer.inlineCallbacks
    def test_fetch_pauses_while_client_does_not_read(self) -> Any:
        count = 20_000
        inbox = self.account().mailboxes["INBOX"]
        for n in range(count):
            inbox.add(b"m%d\r\n" % n)
        creator = protocol.ClientCreator(reactor, Client)
        client = yield creator.connectTCP("127.0.0.1", self.port.getHost().port)
        self.clients.append(client)
        yield client.until(b"\r\n")
        yield client.command("L", "LOGIN joe secret")
        yield client.command("S", "SELECT INBOX")
        server = self.factory.sessions[-1]
        # A small kernel send buffer: the client's receive window (not read
        # from) and this fill long before the ~1.2 MB response is written.
        server.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        writer = server._output
        assert writer is not None
        paused: defer.Deferred[None] = defer.Deferred()
        original_pause = writer.pauseProducing
        fetch_writes_while_paused = []
        original_write = writer.write

        def pause() -> None:
            original_pause()
            if not paused.called:
                paused.callback(None)

        def write(data: bytes) -> None:
            if writer.paused and b" FETCH (" in data:
                fetch_writes_while_paused.append(data)
            original_write(data)

        writer.pauseProducing = pause  # type: ignore[method-assign]
        writer.write = write  # type: ignore[method-assign]
        client.transport.pauseProducing()
        client.send(b"f FETCH 1:* (UID RFC822.SIZE FLAGS)\r\n")
        yield paused
        buffered = len(server.transport.dataBuffer) + server.transport._tempDataLen
        for _ in range(50):  # let the reactor run: nothing more may be produced
            yield task.deferLater(reactor, 0, lambda: None)
        self.assertEqual(len(server.transport.dataBuffer) + server.transport._tempDataLen, buffered)
        self.assertLess(buffered, server.transport.bufferSize + 200)
        server.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        client.transport.resumeProducing()
        response = yield client.until_tagged("f")
        self.assertEqual(fetch_writes_while_paused, [])
        lines = response.split(b"\r\n")[:-1]
        self.assertEqual(len(lines), count + 1)
        self.assertEqual(
            lines[-2], b"* %d FETCH (UID %d RFC822.SIZE 8 FLAGS (\\Recent))" % (count, count)
        )
        self.assertEqual(lines[-1], b"f OK FETCH completed")
