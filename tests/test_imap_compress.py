"""COMPRESS=DEFLATE (RFC 4978) over real sockets, with zlib on the client's side.

The client here compresses its commands and decompresses the server's answers
with the standard library's zlib, as a real client does: raw DEFLATE, a sync
flush after each burst.  imaplib (which has no COMPRESS) is given the same
layer over its socket, over STARTTLS, to show compression after TLS.
"""

from __future__ import annotations

import imaplib
import ssl
import zlib
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, protocol, reactor, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase
from typing_extensions import Buffer

from mailsrv.auth.realm import MailRealm
from mailsrv.imap.compress import CorruptStream, Deflater, Inflater
from mailsrv.policy import SessionPolicy
from mailsrv.storage.memory import MemoryStorage
from tests.helpers import log_events
from tests.imap_helpers import Client, RecordingFactory, ServerTestBase, tls_options

MESSAGE = b"From: a@example.org\r\nSubject: hello\r\n\r\nHello there\r\n"


class DeflateClient(Client):
    """The test client, compressing both ways once :meth:`start` is called."""

    def __init__(self) -> None:
        super().__init__()
        self.inflater: Any = None
        self.deflater: Any = None
        self.compressed_received = 0

    def start(self) -> None:
        self.inflater = zlib.decompressobj(-15)
        self.deflater = zlib.compressobj(6, zlib.DEFLATED, -15)

    def dataReceived(self, data: bytes) -> None:
        if self.inflater is not None:
            self.compressed_received += len(data)
            data = self.inflater.decompress(data)
        super().dataReceived(data)

    def send(self, data: bytes) -> None:
        if self.deflater is not None:
            data = self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
        super().send(data)

    def send_raw(self, data: bytes) -> None:
        """Octets as they are, compressed or not."""
        super().send(data)


class CompressTests(ServerTestBase):
    @defer.inlineCallbacks
    def compressed(self) -> Any:
        creator = protocol.ClientCreator(reactor, DeflateClient)
        client = yield creator.connectTCP("127.0.0.1", self.port.getHost().port)
        self.clients.append(client)
        yield client.until(b"\r\n")
        response = yield client.command("L", "LOGIN joe secret")
        self.assertIn(b" COMPRESS=DEFLATE", response)
        response = yield client.command("Z", "COMPRESS DEFLATE")
        self.assertEqual(response, b"Z OK DEFLATE active\r\n")  # sent uncompressed
        client.start()
        return client

    @defer.inlineCallbacks
    def test_a_compressed_session_pipelines(self) -> Any:
        for n in range(3):
            self.deliver(MESSAGE.replace(b"hello", b"hello %d" % n))
        client = yield self.compressed()
        # Three commands in one compressed burst: each answered, in order.
        client.send(b"a SELECT INBOX\r\nb FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n")
        client.send(b"c NOOP\r\n")
        response = yield client.until_tagged("c")
        self.assertIn(b"* 3 EXISTS\r\n", response)
        self.assertIn(b"a OK [READ-WRITE] SELECT completed\r\n", response)
        self.assertIn(b"Subject: hello 2\r\n", response)
        self.assertIn(b"b OK FETCH completed\r\nc OK NOOP completed\r\n", response)
        self.assertGreater(client.compressed_received, 0)
        # A literal the client compresses (APPEND), stored as sent.
        response = yield client.command("d", b"APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE)
        self.assertIn(b"d OK [APPENDUID ", response)
        self.assertEqual(self.contents()[4], MESSAGE)
        response = yield client.command("e", "LOGOUT")
        self.assertEqual(response, b"* BYE mailsrv logging out\r\ne OK LOGOUT completed\r\n")
        yield client.lost

    @defer.inlineCallbacks
    def test_idle_pushes_arrive_compressed(self) -> Any:
        client = yield self.compressed()
        yield client.command("a", "SELECT INBOX")
        client.send(b"b IDLE\r\n")
        yield client.until(b"+ idling")
        # The push is flushed at once: the client sees it without sending.
        self.deliver(MESSAGE)
        response = yield client.until(b"EXISTS")
        self.assertEqual(response, b"* 1 EXISTS\r\n")
        client.send(b"DONE\r\n")
        response = yield client.until_tagged("b")
        self.assertIn(b"b OK IDLE terminated\r\n", response)

    @defer.inlineCallbacks
    def test_compress_twice_is_refused(self) -> Any:
        client = yield self.compressed()
        response = yield client.command("a", "COMPRESS DEFLATE")
        self.assertEqual(response, b"a NO [COMPRESSIONACTIVE] DEFLATE is already active\r\n")
        response = yield client.command("b", "NOOP")
        self.assertEqual(response, b"b OK NOOP completed\r\n")

    @defer.inlineCallbacks
    def test_bad_arguments_and_state(self) -> Any:
        client = yield self.connect()
        response = yield client.command("a", "COMPRESS DEFLATE")
        self.assertEqual(response, b"a BAD COMPRESS is not allowed in not authenticated state\r\n")
        response = yield client.command("b", "CAPABILITY")
        self.assertNotIn(b"COMPRESS", response)
        yield client.command("c", "LOGIN joe secret")
        response = yield client.command("d", "COMPRESS GZIP")
        self.assertEqual(
            response, b"d BAD Unknown compression mechanism GZIP; only DEFLATE is offered\r\n"
        )
        response = yield client.command("e", "NOOP")  # still uncompressed
        self.assertEqual(response, b"e OK NOOP completed\r\n")

    @defer.inlineCallbacks
    def test_corrupt_stream_ends_the_session_with_bye(self) -> Any:
        events = log_events(self)
        client = yield self.compressed()
        yield client.command("a", "NOOP")
        # 0xff: a block of the reserved type 3, which no DEFLATE stream has.
        client.send_raw(b"\xff\xff\xff\xff")
        yield client.lost
        self.assertEqual(client.buffer, b"* BYE Corrupt compressed data received\r\n")
        messages = [e.get("log_format", "") for e in events]
        self.assertIn(
            "IMAP: closing the session of {user}: corrupt compressed input: {reason}", messages
        )
        self.flushLoggedErrors()
        self.assertFalse([e for e in events if e.get("log_failure") is not None])

    @defer.inlineCallbacks
    def test_ended_stream_ends_the_session_with_bye(self) -> Any:
        client = yield self.compressed()
        # The client ends its stream (a final block): RFC 4978 has no way
        # back to plain text, so nothing after it can be read.
        client.send_raw(client.deflater.compress(b"a NOOP\r\n") + client.deflater.flush())
        yield client.lost
        self.assertEqual(client.buffer, b"* BYE Corrupt compressed data received\r\n")

    @defer.inlineCallbacks
    def test_a_bomb_is_framed_in_pieces(self) -> Any:
        """A few KiB that inflate to 20 MB: a line too long, answered BAD
        [TOOBIG] as in plain text, and the session goes on."""
        client = yield self.compressed()
        client.send(b"a NOOP " + b"x" * 20_000_000 + b"\r\n")
        response = yield client.until_tagged("a")
        self.assertEqual(response, b"a BAD Line too long\r\n".replace(b"BAD", b"BAD [TOOBIG]"))
        response = yield client.command("b", "NOOP")
        self.assertEqual(response, b"b OK NOOP completed\r\n")


class CompressedImaplib(imaplib.IMAP4):
    """imaplib with RFC 4978 added over its socket (imaplib has no COMPRESS)."""

    def compress(self) -> Any:
        result = self._simple_command("COMPRESS", "DEFLATE")
        if result[0] == "OK":
            self._deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
            self._inflater = zlib.decompressobj(-15)
            self._plain = b""
        return result

    def send(self, data: Buffer) -> None:
        deflater = getattr(self, "_deflater", None)
        if deflater is not None:
            data = deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH)
        super().send(data)

    def _fill(self, wanted: int) -> None:
        while len(self._plain) < wanted:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise imaplib.IMAP4.abort("connection closed")
            self._plain += self._inflater.decompress(chunk)

    def read(self, size: int) -> bytes:
        if getattr(self, "_inflater", None) is None:
            return super().read(size)
        self._fill(size)
        data, self._plain = self._plain[:size], self._plain[size:]
        return data

    def readline(self) -> bytes:
        if getattr(self, "_inflater", None) is None:
            return super().readline()
        while b"\n" not in self._plain:
            self._fill(len(self._plain) + 1)
        end = self._plain.index(b"\n") + 1
        line, self._plain = self._plain[:end], self._plain[end:]
        return line


class ImaplibCompressTests(TestCase):
    """imaplib over STARTTLS, then COMPRESS: compression inside TLS."""

    def setUp(self) -> None:
        if "COMPRESS" not in imaplib.Commands:  # imaplib refuses commands it does not know
            imaplib.Commands["COMPRESS"] = ("AUTH", "SELECTED")
            self.addCleanup(imaplib.Commands.pop, "COMPRESS", None)
        self.storage = MemoryStorage()
        checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret")
        portal = Portal(MailRealm(self.storage), [checker])
        policy = SessionPolicy(failure_delay=0.0, tls_context=tls_options(self.mktemp()))
        self.factory = RecordingFactory(portal, policy)
        self.port: Any = reactor.listenTCP(0, self.factory, interface="127.0.0.1")

    def tearDown(self) -> Any:
        # A Deferred, which trial waits for (typed Any: unittest's is None).
        return self._tear_down()

    @defer.inlineCallbacks
    def _tear_down(self) -> Any:
        yield defer.gatherResults(self.factory.lost)
        yield self.port.stopListening()

    @defer.inlineCallbacks
    def test_starttls_login_compress(self) -> Any:
        self.storage.deliver("joe", MESSAGE, "INBOX", (), None)
        port = self.port.getHost().port
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

        def session() -> Any:
            client = CompressedImaplib("127.0.0.1", port)
            try:
                client.starttls(context)
                client.login("joe", "secret")
                compress = client.compress()
                client.select("INBOX")
                fetched = client.fetch("1", "(BODY.PEEK[])")
                again = client._simple_command("COMPRESS", "DEFLATE")
                return compress, fetched, again, client.untagged_responses
            finally:
                client.logout()

        compress, fetched, again, _ = yield threads.deferToThread(session)
        self.assertEqual(compress, ("OK", [b"DEFLATE active"]))
        self.assertEqual(fetched[0], "OK")
        self.assertEqual(fetched[1][0][1], MESSAGE)
        self.assertEqual(again[0], "NO")
        self.assertTrue(self.factory.sessions[0].session.guard.secure)


class CodecTests(SynchronousTestCase):
    """The sans-I/O halves, against zlib as a client uses it."""

    def test_round_trip_with_sync_flushes(self) -> None:
        deflater = Deflater()
        client = zlib.decompressobj(-15)
        first = deflater.compress(b"* 1 EXISTS\r\n") + deflater.flush()
        self.assertEqual(client.decompress(first), b"* 1 EXISTS\r\n")
        self.assertEqual(deflater.flush(), b"")  # nothing pending: nothing sent
        second = deflater.compress(b"a OK done\r\n") + deflater.flush()
        self.assertEqual(client.decompress(second), b"a OK done\r\n")

    def test_inflate_in_bounded_pieces(self) -> None:
        sender = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = sender.compress(b"y" * 1_000_000) + sender.flush(zlib.Z_SYNC_FLUSH)
        inflater = Inflater()
        # Arriving a byte at a time, or all at once: same result, in pieces.
        for i in range(len(data)):
            inflater.receive(data[i : i + 1])
        pieces = []
        while True:
            piece = inflater.inflate(65536)
            if not piece:
                break
            self.assertLessEqual(len(piece), 65536)
            pieces.append(piece)
        self.assertEqual(b"".join(pieces), b"y" * 1_000_000)

    def test_corrupt_input(self) -> None:
        inflater = Inflater()
        inflater.receive(b"\xff\xff")
        self.assertRaises(CorruptStream, inflater.inflate)
