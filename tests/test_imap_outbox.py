"""IMAP answers through the Outbox (mailsrv.imap.output, mailsrv.writing), over real TCP.

A turn's answers are held and handed to the kernel in one ``send``; what the
kernel does not take goes to the transport.  The octets a client receives
must be those the old path (the transport's own buffer) writes: each test
compares them with an in-process session over a StringTransport, which is
not a socket and so is written through as before.
"""

from __future__ import annotations

import zlib
from typing import Any

from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.task import Clock

from mailsrv import writing
from mailsrv.imap.protocol import IMAP4Server
from mailsrv.policy import SessionPolicy
from tests.imap_helpers import (
    Client,
    RecordingFactory,
    ServerTestBase,
    bare_storage,
    deliver,
    in_process,
    tls_options,
)
from tests.test_imap_compress import DeflateClient


def small(n: int) -> bytes:
    return b"From: a@example.org\r\nSubject: %d\r\n\r\nHello %d\r\n" % (n, n)


def old_path(messages: list[bytes], commands: bytes) -> bytes:
    """What a selected session writes for ``commands`` through a transport
    that is not a socket (no Outbox: every write goes to the transport)."""
    storage = bare_storage("joe")
    for message in messages:
        deliver(storage, message)
    clock = Clock()
    server, transport = in_process(storage, clock=clock)
    server.dataReceived(b"L LOGIN joe secret\r\nS SELECT INBOX\r\n")
    assert b"S OK [READ-WRITE]" in transport.value(), transport.value()
    transport.clear()
    server.dataReceived(commands)
    last = commands.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1].split(b" ", 1)[0] + b" OK "
    for _ in range(10_000):  # the turns a FETCH gives others between batches
        if last in transport.value():
            break
        clock.advance(0)
    data: bytes = transport.value()
    assert data.endswith(b"\r\n") and last in data, data[-200:]
    return data


class Sends:
    """Spies on :func:`mailsrv.writing.write_now` (each call one ``send``
    at most) and on a session's turns (its ``dataReceived`` calls)."""

    def __init__(self, test: ServerTestBase, server: IMAP4Server) -> None:
        self.data: list[bytes] = []
        #: Calls that found the transport empty and left part of it there.
        self.partial = 0
        self.turns = 0
        write_now, received = writing.write_now, server.dataReceived

        def spy(transport: Any, data: bytes) -> None:
            if not hasattr(transport, "dataBuffer"):  # old_path's StringTransport
                write_now(transport, data)
                return
            self.data.append(data)
            empty = not (transport._tempDataLen or transport.dataBuffer)
            write_now(transport, data)
            if empty and (transport._tempDataLen or transport.dataBuffer):
                self.partial += 1

        def turn(data: bytes) -> None:
            self.turns += 1
            received(data)

        test.patch(writing, "write_now", spy)
        test.patch(server, "dataReceived", turn)


class OutboxTests(ServerTestBase):
    timeout = 60

    @defer.inlineCallbacks
    def pipelined(self, fetch: bytes, store: bytes) -> Any:
        """Five rounds of NOOP, FETCH ``fetch`` and STORE ``store`` sent at
        once to a session on five messages; the octets it received (checked
        equal to the old path's) and the :class:`Sends` seen meanwhile."""
        messages = [small(n) for n in range(5)]
        for message in messages:
            self.deliver(message)
        client = yield self.selected()
        commands = b"".join(
            b"n%d NOOP\r\nf%d FETCH %d %s\r\ns%d STORE %d %s\r\n" % (n, n, n, fetch, n, n, store)
            for n in range(1, 6)
        )
        expected = old_path(messages, commands)
        sends = Sends(self, self.factory.sessions[0])
        client.send(commands)
        received = yield client.until_tagged("s5")
        self.assertEqual(received, expected)
        return received, sends

    @defer.inlineCallbacks
    def test_pipelined_answers_in_order(self) -> Any:
        """Pipelined commands, some answered in a later turn (a FETCH of
        bodies gives other sessions a turn): every answer in order, each
        octet sent once, the first turn's by one send."""
        received, sends = yield self.pipelined(b"(UID FLAGS BODY[])", b"-FLAGS (\\Seen)")
        # What the turns sent at once is a part of the answers, in order
        # (answers a later turn brings go through the transport).
        self.assertTrue(sends.data)
        self.assertEqual(received[: len(sends.data[0])], sends.data[0])
        # At most one send a turn: later turns' answers join in the transport.
        self.assertLessEqual(len(sends.data), sends.turns, sends.data)

    @defer.inlineCallbacks
    def test_a_turn_is_one_send(self) -> Any:
        """Commands answered as they are read: one send per turn, however
        many answers it wrote."""
        received, sends = yield self.pipelined(b"(UID FLAGS)", b"+FLAGS (\\Seen)")
        # (TCP decides in how many reads, and so turns, the commands arrive.)
        self.assertGreaterEqual(len(sends.data), 1)
        self.assertLessEqual(len(sends.data), sends.turns, sends.data)
        self.assertEqual(b"".join(sends.data), received)

    @defer.inlineCallbacks
    def test_large_fetch_to_a_client_that_does_not_read(self) -> Any:
        """6 MB of FETCH answers to a client that stops reading: the kernel
        takes part of a send, the transport queues the rest and pauses the
        FETCH; every octet arrives, in order, once the client reads."""
        messages = [
            b"Subject: %d\r\n\r\n" % n + (b"%05d" % n + b"y" * 70 + b"\r\n") * 4000
            for n in range(20)
        ]
        for message in messages:
            self.deliver(message)
        client = yield self.selected()
        server = self.factory.sessions[0]
        sends = Sends(self, server)
        output: Any = server._output
        paused: defer.Deferred[None] = defer.Deferred()
        pause = output.pauseProducing

        def pausing() -> None:
            pause()
            if not paused.called:
                paused.callback(None)

        self.patch(output, "pauseProducing", pausing)
        client.transport.pauseProducing()  # the client stops reading
        command = b"F FETCH 1:* (UID BODY.PEEK[])\r\n"
        client.send(command)
        yield paused  # the transport's buffer is full: the FETCH waits
        self.assertGreaterEqual(sends.partial, 1)
        client.transport.resumeProducing()
        received = yield client.until_tagged("F")
        self.assertEqual(received, old_path(messages, command))

    @defer.inlineCallbacks
    def test_literal_continuation_and_logout_after_held_answers(self) -> Any:
        client = yield self.login()
        message = small(1)
        client.send(b"a NOOP\r\nb APPEND INBOX {%d}\r\n" % len(message))
        # The "+" is sent in the turn that asked for the literal.
        self.assertEqual(
            (yield client.until(b"+ ")), b"a OK NOOP completed\r\n+ Ready for literal data\r\n"
        )
        client.send(message + b"\r\nc NOOP\r\nz LOGOUT\r\n")
        yield client.lost  # everything written before the close arrives
        self.assertRegex(client.buffer, rb"^b OK \[APPENDUID \d+ 1\] APPEND completed\r\n")
        self.assertTrue(
            client.buffer.endswith(
                b"\r\nc OK NOOP completed\r\n* BYE mailsrv logging out\r\nz OK LOGOUT completed\r\n"
            ),
            client.buffer,
        )
        self.assertEqual(self.contents(), {1: message})

    @defer.inlineCallbacks
    def test_compress_after_held_answers(self) -> Any:
        """The tagged OK of COMPRESS goes uncompressed after the answers
        held before it, the answers after it compressed (RFC 4978 3)."""
        messages = [small(n) for n in range(2)]
        for message in messages:
            self.deliver(message)
        creator = protocol.ClientCreator(reactor, DeflateClient)
        client = yield creator.connectTCP("127.0.0.1", self.port.getHost().port)
        self.clients.append(client)
        yield client.until(b"\r\n")
        yield client.command("L", "LOGIN joe secret")
        deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
        after = b"x NOOP\r\ny FETCH 1:2 (BODY.PEEK[])\r\n"
        client.send(
            b"S SELECT INBOX\r\nn NOOP\r\nc COMPRESS DEFLATE\r\n"
            + deflater.compress(after)
            + deflater.flush(zlib.Z_SYNC_FLUSH)
        )
        clear = yield client.until_tagged("c")
        self.assertRegex(clear, rb"S OK \[READ-WRITE\] SELECT completed\r\nn OK NOOP completed\r\n")
        self.assertTrue(clear.endswith(b"n OK NOOP completed\r\nc OK DEFLATE active\r\n"))
        rest, client.buffer = client.buffer, b""
        client.start()
        client.dataReceived(rest)  # compressed octets that came with the OK
        compressed = yield client.until_tagged("y")
        self.assertEqual(compressed, old_path(messages, after))


class StartTLSTests(ServerTestBase):
    timeout = 60

    def make_factory(self) -> RecordingFactory:
        policy = SessionPolicy(failure_delay=0.0, tls_context=tls_options(self.mktemp()))
        return RecordingFactory(self.portal, policy)

    @defer.inlineCallbacks
    def test_starttls_after_held_answers(self) -> Any:
        """The answers held before STARTTLS, its OK included, go in the
        clear before TLS starts (RFC 3501 6.2.1); nothing else does."""
        client: Client = yield self.connect()
        client.send(b"a NOOP\r\nb NOOP\r\nt STARTTLS\r\n")
        clear = yield client.until_tagged("t")
        self.assertEqual(
            clear,
            b"a OK NOOP completed\r\nb OK NOOP completed\r\nt OK Begin TLS negotiation now\r\n",
        )
        self.assertEqual(client.buffer, b"")
        client.transport.startTLS(ssl.CertificateOptions(verify=False))  # type: ignore[union-attr]
        response = yield client.command("L", "LOGIN joe secret")
        self.assertTrue(response.startswith(b"L OK [CAPABILITY IMAP4rev1 "), response)
        self.assertTrue(self.factory.sessions[0].session.guard.secure)
