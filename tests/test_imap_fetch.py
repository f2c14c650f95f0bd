"""FETCH (mailsrv.imap.fetching, fetch_items) and output that waits for a slow client.

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

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mailsrv.imap import fetch_items
from mailsrv.imap.output import ResponseWriter
from mailsrv.imap.protocol import IMAP4Server
from mailsrv.mime.structure import MessageStructure, Part
from mailsrv.policy import SessionPolicy
from mailsrv.storage.memory import MemoryMailbox, MemoryStorage
from tests.imap_helpers import Client, ServerTestBase, in_process


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
        data: bytes = self.value()
        self.clear()
        self.pending = 0
        if self.producer_paused and self.producer is not None:
            self.producer_paused = False
            self.producer.resumeProducing()
        return data


def _session(messages: int, limit: int) -> tuple[IMAP4Server, BufferingTransport, task.Clock]:
    """A logged-in session with INBOX (``messages`` messages) selected."""
    clock = task.Clock()
    storage = MemoryStorage()
    for n in range(messages):
        storage.deliver("joe", b"message %d\r\n" % n, flags=["\\Seen"] if n % 3 else [])
    transport = BufferingTransport(limit)
    server, _ = in_process(storage, clock=clock, transport=transport)
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
            # Paused with at most one write (32 short responses, or one
            # long one) past the limit buffered.
            self.assertLessEqual(transport.pending, limit + 32 * 50)
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
        d = fetch_items.write_literal(writer, io.BytesIO(data), len(data), chunk_size=8192)
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
        d = fetch_items.write_literal(writer, io.BytesIO(b"0123456789"), 4, offset=3)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(transport.value(), b"{4}\r\n3456")

    def test_short_file_is_padded_to_the_promised_length(self) -> None:
        writer, transport = self.make_writer(1 << 20)
        d = fetch_items.write_literal(writer, io.BytesIO(b"abc"), 6)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(transport.value(), b"{6}\r\nabc   ")
        self.flushLoggedErrors()


class TcpBackPressureTests(ServerTestBase):
    """Over real TCP: a client that stops reading stops the FETCH."""

    policy = SessionPolicy(failure_delay=0.0)

    @defer.inlineCallbacks
    def test_fetch_pauses_while_client_does_not_read(self) -> Any:
        count = 20_000
        for n in range(count):
            self.deliver(b"m%d\r\n" % n)
        creator = protocol.ClientCreator(reactor, Client)
        client = yield creator.connectTCP("127.0.0.1", self.port.getHost().port)
        self.clients.append(client)
        yield client.until(b"\r\n")
        yield client.command("L", "LOGIN joe secret")
        yield client.command("S", "SELECT INBOX")
        server = self.factory.sessions[-1]
        transport: Any = server.transport  # the TCP transport's buffers
        # A small kernel send buffer: the client's receive window (not read
        # from) and this fill long before the ~1.2 MB response is written.
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
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
        most = transport.bufferSize + 32 * 60  # the buffer's limit and one batch's lines
        self.assertLess(len(transport.dataBuffer) + transport._tempDataLen, most)
        for _ in range(50):
            # Let the reactor run. The kernel may still take a little (the
            # client's receive buffer grows by itself), which resumes the
            # writer for a few lines; the transport's buffer stays bounded
            # and nothing is written while the writer is paused.
            yield task.deferLater(reactor, 0, lambda: None)
            self.assertLess(len(transport.dataBuffer) + transport._tempDataLen, most)
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        client.transport.resumeProducing()
        response = yield client.until_tagged("f")
        self.assertEqual(fetch_writes_while_paused, [])
        lines = response.split(b"\r\n")[:-1]
        self.assertEqual(len(lines), count + 1)
        self.assertEqual(
            lines[-2], b"* %d FETCH (UID %d RFC822.SIZE 8 FLAGS (\\Recent))" % (count, count)
        )
        self.assertEqual(lines[-1], b"f OK FETCH completed")


# ---------------------------------------------------------------------------
# Each FETCH item on the wire (the corpus-wide comparison with Dovecot is in
# tests/test_imap_golden.py)
# ---------------------------------------------------------------------------

MIXED = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: parts\r\n"
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n'
    b"\r\n"
    b"--b\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"caf=C3=A9\r\n"
    b"--b\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAECAw==\r\n"
    b"--b\r\n"
    b"Content-Type: application/x-thing\r\n"
    b"Content-Transfer-Encoding: x-uuencode\r\n"
    b"\r\n"
    b"begin 644 x\r\n"
    b"--b--\r\n"
)


#: A multipart/alternative nested in a multipart/mixed with the same boundary,
#: as Outlook Express for Mac wrote them (also tests/corpus/72-*.eml, whose
#: answers Dovecot recorded).
SAME_BOUNDARY = (
    b"From: Alice Example <alice@example.org>\r\n"
    b"Subject: One boundary, no preambles\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=same\r\n"
    b"\r\n"
    b"--same\r\n"
    b"Content-Type: multipart/alternative; boundary=same\r\n"
    b"\r\n"
    b"--same\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"Plain text.\r\n"
    b"--same\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<p>HTML text.</p>\r\n"
    b"--same--\r\n"
    b"\r\n"
    b"--same\r\n"
    b"Content-Type: text/plain; name=second.txt\r\n"
    b"\r\n"
    b"Second part.\r\n"
    b"--same--\r\n"
)


class FetchItemTests(ServerTestBase):
    """Every FETCH item of RFC 3501 6.4.5 and RFC 3516 as a client sees it."""

    def setUp(self) -> None:
        super().setUp()
        self.uid = self.deliver(MIXED)

    @defer.inlineCallbacks
    def open(self, command: str = "SELECT") -> Any:
        client = yield self.login()
        response = yield client.command("S", f"{command} INBOX")
        self.assertIn(b"S OK", response)
        return client

    @defer.inlineCallbacks
    def test_header_text_and_parts(self) -> Any:
        client = yield self.open()
        header_size = MIXED.index(b"\r\n\r\n") + 4
        response = yield client.command("a", "FETCH 1 (BODY.PEEK[HEADER] BODY.PEEK[1])")
        self.assertEqual(
            response,
            b"* 1 FETCH (BODY[HEADER] {%d}\r\n" % header_size
            + MIXED[:header_size]
            + b" BODY[1] {9}\r\ncaf=C3=A9)\r\na OK FETCH completed\r\n",
        )
        response = yield client.command("b", "FETCH 1 (BODY.PEEK[TEXT]<0.3> BODY.PEEK[2.MIME])")
        mime = (
            b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        )
        self.assertEqual(
            response,
            b"* 1 FETCH (BODY[TEXT]<0> {3}\r\n--b BODY[2.MIME] {%d}\r\n" % len(mime)
            + mime
            + b")\r\nb OK FETCH completed\r\n",
        )

    @defer.inlineCallbacks
    def test_partial_fetches(self) -> Any:
        client = yield self.open()
        size = len(MIXED)
        response = yield client.command("a", f"FETCH 1 (BODY.PEEK[]<{size - 4}.100>)")
        self.assertEqual(
            response,
            b"* 1 FETCH (BODY[]<%d> {4}\r\n--\r\n)\r\na OK FETCH completed\r\n" % (size - 4),
        )
        # RFC 3501 6.4.5: a start beyond the end gives an empty string.
        response = yield client.command("b", f"FETCH 1 (BODY.PEEK[]<{size + 10}.5>)")
        self.assertEqual(
            response,
            b"* 1 FETCH (BODY[]<%d> {0}\r\n)\r\nb OK FETCH completed\r\n" % (size + 10),
        )
        response = yield client.command("c", "FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)]<2.5>)")
        self.assertEqual(
            response,
            b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)]<2> {5}\r\nbject)\r\n"
            b"c OK FETCH completed\r\n",
        )

    @defer.inlineCallbacks
    def test_header_fields_and_not(self) -> Any:
        client = yield self.open()
        opened = self.count_opens()
        for _ in range(2):  # the second answer comes from the cache
            response = yield client.command(
                "a", "FETCH 1 (BODY.PEEK[HEADER.FIELDS (subject message-id X-NONE)])"
            )
            self.assertEqual(
                response,
                b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT MESSAGE-ID X-NONE)] {48}\r\n"
                b"Subject: parts\r\nMessage-ID: <m1@example.org>\r\n\r\n)\r\n"
                b"a OK FETCH completed\r\n",
            )
        self.assertEqual(opened, [self.uid])  # read once, then served from the cache
        response = yield client.command(
            "b", "FETCH 1 (BODY.PEEK[HEADER.FIELDS.NOT (FROM TO DATE MIME-VERSION CONTENT-TYPE)])"
        )
        self.assertIn(
            b" {48}\r\nSubject: parts\r\nMessage-ID: <m1@example.org>\r\n\r\n)\r\n", response
        )

    @defer.inlineCallbacks
    def test_header_field_names_are_echoed_as_astrings(self) -> Any:
        """Names with ")", '"', "]" or a literal's braces are quoted in the
        item name: written bare they ended the item early, and the rest of
        the response was garbage to a client (found by the session fuzzer)."""
        client = yield self.open()
        response = yield client.command(
            "a", r'FETCH 1 (BODY.PEEK[HEADER.FIELDS ("a)b" "x]" "y[" "{3}" "q\"" ok)])'
        )
        self.assertEqual(
            response,
            b'* 1 FETCH (BODY[HEADER.FIELDS ("A)B" "X]" "Y[" "{3}" "Q\\"" OK)] {2}\r\n\r\n)\r\n'
            b"a OK FETCH completed\r\n",
        )

    def count_opens(self) -> list[int]:
        """UIDs whose file the server opens from now on."""
        opened: list[int] = []
        real_open = MemoryMailbox.open

        def open_(mailbox: MemoryMailbox, uid: int) -> Any:
            opened.append(uid)
            return real_open(mailbox, uid)

        self.patch(MemoryMailbox, "open", open_)
        return opened

    @defer.inlineCallbacks
    def test_structure_items_come_from_the_cache(self) -> Any:
        client = yield self.open()
        opened = self.count_opens()
        first = yield client.command("a", "FETCH 1 (ENVELOPE BODYSTRUCTURE BODY)")
        self.assertEqual(opened, [self.uid])  # parsed once
        second = yield client.command("a", "FETCH 1 (ENVELOPE BODYSTRUCTURE BODY)")
        self.assertEqual(second, first)
        self.assertEqual(opened, [self.uid])  # and never opened again

    @defer.inlineCallbacks
    def test_missing_section_is_nil(self) -> Any:
        client = yield self.open()
        response = yield client.command("a", "FETCH 1 (BODY.PEEK[4] BODY.PEEK[1.HEADER] UID)")
        self.assertEqual(
            response,
            b"* 1 FETCH (BODY[4] NIL BODY[1.HEADER] NIL UID 1)\r\na OK FETCH completed\r\n",
        )

    @defer.inlineCallbacks
    def test_rfc822_items(self) -> Any:
        client = yield self.open()
        header_size = MIXED.index(b"\r\n\r\n") + 4
        response = yield client.command("a", "FETCH 1 (RFC822.HEADER RFC822.SIZE)")
        self.assertEqual(
            response,
            b"* 1 FETCH (RFC822.HEADER {%d}\r\n" % header_size
            + MIXED[:header_size]
            + b" RFC822.SIZE %d)\r\na OK FETCH completed\r\n" % len(MIXED),
        )
        # RFC822.HEADER peeks; RFC822.TEXT sets \Seen and says so.
        response = yield client.command("b", "FETCH 1 RFC822.TEXT")
        text = MIXED[header_size:]
        self.assertEqual(
            response,
            b"* 1 FETCH (RFC822.TEXT {%d}\r\n" % len(text)
            + text
            + b" FLAGS (\\Recent \\Seen))\r\nb OK FETCH completed\r\n",
        )
        response = yield client.command("c", "FETCH 1 (FLAGS RFC822)")
        self.assertEqual(
            response,
            b"* 1 FETCH (FLAGS (\\Recent \\Seen) RFC822 {%d}\r\n" % len(MIXED)
            + MIXED
            + b")\r\nc OK FETCH completed\r\n",
        )

    @defer.inlineCallbacks
    def test_body_fetch_sets_seen_once_and_peek_does_not(self) -> Any:
        client = yield self.open()
        response = yield client.command("a", "FETCH 1 (BODY.PEEK[1] BINARY.PEEK[1] FLAGS)")
        self.assertIn(b"FLAGS (\\Recent))", response)
        response = yield client.command("b", "FETCH 1 (FLAGS BODY[1])")
        self.assertEqual(
            response,
            b"* 1 FETCH (FLAGS (\\Recent \\Seen) BODY[1] {9}\r\ncaf=C3=A9)\r\n"
            b"b OK FETCH completed\r\n",
        )
        # Already seen: no FLAGS added, and no untagged FETCH for our own change.
        response = yield client.command("c", "FETCH 1 BODY[1]")
        self.assertEqual(
            response, b"* 1 FETCH (BODY[1] {9}\r\ncaf=C3=A9)\r\nc OK FETCH completed\r\n"
        )
        response = yield client.command("d", "NOOP")
        self.assertEqual(response, b"d OK NOOP completed\r\n")
        inbox = self.inbox
        self.assertIn("\\Seen", inbox.fetch([self.uid])[0].flags)

    @defer.inlineCallbacks
    def test_examine_never_sets_seen(self) -> Any:
        client = yield self.open("EXAMINE")
        response = yield client.command("a", "FETCH 1 (BODY[1] RFC822.TEXT BINARY[1])")
        self.assertNotIn(b"FLAGS", response)
        self.assertTrue(response.endswith(b"a OK FETCH completed\r\n"), response)
        inbox = self.inbox
        self.assertEqual(inbox.fetch([self.uid])[0].flags, frozenset())

    @defer.inlineCallbacks
    def test_binary(self) -> Any:
        client = yield self.open()
        response = yield client.command(
            "a", "FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1] BINARY.PEEK[2]<1.2> BINARY.SIZE[2])"
        )
        # Decoded parts travel as literal8; a NUL only can (RFC 3516 4.3).
        self.assertEqual(
            response,
            b"* 1 FETCH (BINARY[1] ~{5}\r\ncaf\xc3\xa9 BINARY.SIZE[1] 5 "
            b"BINARY[2]<1> ~{2}\r\n\x01\x02 BINARY.SIZE[2] 4)\r\na OK FETCH completed\r\n",
        )
        response = yield client.command("b", "FETCH 1 (UID BINARY.PEEK[3])")
        self.assertEqual(
            response,
            b"b NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding in a BINARY part\r\n",
        )
        response = yield client.command("c", "FETCH 1 BINARY.SIZE[3]")
        self.assertTrue(response.startswith(b"c NO [UNKNOWN-CTE]"), response)
        response = yield client.command("d", "FETCH 1 (BINARY.SIZE[9] BINARY.PEEK[9])")
        self.assertEqual(
            response, b"* 1 FETCH (BINARY.SIZE[9] 0 BINARY[9] NIL)\r\nd OK FETCH completed\r\n"
        )
        response = yield client.command("e", "FETCH 1 BINARY[1.MIME]")
        self.assertTrue(response.startswith(b"e BAD"), response)

    @defer.inlineCallbacks
    def test_binary_append_keeps_every_octet(self) -> Any:
        client = yield self.open()
        data = b"Subject: nul\r\n\r\nA\x00B\r\n"
        client.send(b"a APPEND INBOX ~{%d}\r\n" % len(data))
        yield client.until(b"+ ")
        client.send(data + b"\r\n")
        response = yield client.until_tagged("a")
        self.assertIn(b"a OK [APPENDUID ", response)
        response = yield client.command("b", "FETCH 2 (BINARY.PEEK[1] RFC822.SIZE)")
        self.assertEqual(
            response,
            b"* 2 FETCH (BINARY[1] ~{5}\r\nA\x00B\r\n RFC822.SIZE %d)\r\n" % len(data)
            + b"b OK FETCH completed\r\n",
        )

    @defer.inlineCallbacks
    def test_structure_items_and_macros(self) -> Any:
        client = yield self.open()
        response = yield client.command("a", "FETCH 1 (ENVELOPE BODY)")
        self.assertEqual(
            response,
            b'* 1 FETCH (ENVELOPE ("Mon, 7 Feb 1994 21:52:25 -0800" "parts" '
            b'(("Alice" NIL "alice" "example.org")) (("Alice" NIL "alice" "example.org")) '
            b'(("Alice" NIL "alice" "example.org")) ((NIL NIL "bob" "example.net")) '
            b'NIL NIL NIL "<m1@example.org>") '
            b'BODY (("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 9 0)'
            b'("application" "octet-stream" NIL NIL NIL "base64" 8)'
            b'("application" "x-thing" NIL NIL NIL "x-uuencode" 11) "mixed"))\r\n'
            b"a OK FETCH completed\r\n",
        )
        response = yield client.command("b", "FETCH 1 BODYSTRUCTURE")
        self.assertIn(b' "mixed" ("boundary" "b") NIL NIL NIL))\r\n', response)
        for macro, items in (
            ("FAST", [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"]),
            ("ALL", [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE"]),
            ("FULL", [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY"]),
        ):
            response = yield client.command("m", f"FETCH 1 {macro}")
            names = re.findall(rb"(?<=[( ])([A-Z][A-Z0-9.]+) (?=[(\"0-9])", response)
            self.assertEqual([n for n in names if n in items], items, (macro, response))
            self.assertNotIn(b"\\Seen", response)

    @defer.inlineCallbacks
    def test_big_body_streams_in_pieces(self) -> Any:
        body = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 3000
        uid = self.deliver(body)
        streamed: list[int] = []
        real_write_literal = fetch_items.write_literal

        def spy(writer: Any, source: Any, length: int, offset: int = 0) -> Any:
            streamed.append(length)
            return real_write_literal(writer, source, length, offset, chunk_size=4096)

        self.patch(fetch_items, "write_literal", spy)
        client = yield self.open()
        response = yield client.command("a", f"UID FETCH {uid} (BODY.PEEK[TEXT]<1000.200000>)")
        text = body[body.index(b"\r\n\r\n") + 4 :]
        self.assertEqual(
            response,
            b"* 2 FETCH (BODY[TEXT]<1000> {200000}\r\n"
            + text[1000:201000]
            + b" UID %d)\r\na OK FETCH completed\r\n" % uid,
        )
        # Streamed from the file in pieces, not read whole into the response.
        self.assertEqual(streamed, [200000])

    @defer.inlineCallbacks
    def test_expunged_by_another_session(self) -> Any:
        client = yield self.open()
        other = yield self.open()
        response = yield other.command("a", "STORE 1 +FLAGS.SILENT (\\Deleted)")
        response = yield other.command("b", "EXPUNGE")
        self.assertIn(b"* 1 EXPUNGE", response)
        # RFC 2180 4.1.1 / RFC 5530: the message is gone; say so, keep the seq.
        response = yield client.command("c", "FETCH 1 (UID BODY.PEEK[])")
        self.assertEqual(response, b"c OK [EXPUNGEISSUED] Some messages were already expunged\r\n")
        response = yield client.command("d", "NOOP")
        self.assertIn(b"* 1 EXPUNGE\r\n", response)

    @defer.inlineCallbacks
    def test_unknown_modifiers_are_refused(self) -> Any:
        client = yield self.open()
        response = yield client.command("a", "FETCH 1 (FLAGS) (PARTIAL 1:2)")
        self.assertEqual(response, b"a BAD FETCH modifier PARTIAL is not supported\r\n")
        response = yield client.command("b", "FETCH 1 (FLAGS) (CHANGEDSINCE x)")
        self.assertTrue(response.startswith(b"b BAD"), response)

    @defer.inlineCallbacks
    def test_same_item_twice(self) -> Any:
        """An item asked for twice is answered twice (clients do this)."""
        client = yield self.open()
        response = yield client.command(
            "a",
            "FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)] ENVELOPE "
            "BODY.PEEK[HEADER.FIELDS (SUBJECT)] ENVELOPE)",
        )
        self.assertEqual(response.count(b"BODY[HEADER.FIELDS (SUBJECT)] {18}"), 2)
        self.assertEqual(response.count(b"ENVELOPE ("), 2)
        self.assertTrue(response.endswith(b"a OK FETCH completed\r\n"), response)

    @defer.inlineCallbacks
    def test_nested_multipart_with_the_outer_boundary(self) -> Any:
        # Outlook Express for Mac reused the outer boundary for the inner
        # multipart/alternative: the delimiter lines up to the inner close
        # delimiter are the inner one's, so its text is part 1.1 (the
        # structure Dovecot gives).
        self.deliver(SAME_BOUNDARY)
        client = yield self.open()
        response = yield client.command(
            "a", "FETCH 2 (BODYSTRUCTURE BODY.PEEK[1.1] BODY.PEEK[1.MIME] BODY.PEEK[2])"
        )
        self.assertEqual(
            response,
            b'* 2 FETCH (BODYSTRUCTURE ((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" '
            b'11 0 NIL NIL NIL NIL)("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 17 0 '
            b'NIL NIL NIL NIL) "alternative" ("boundary" "same") NIL NIL NIL)("text" "plain" '
            b'("name" "second.txt" "charset" "us-ascii") NIL NIL "7bit" 12 0 NIL NIL NIL NIL) '
            b'"mixed" ("boundary" "same") NIL NIL NIL) '
            b"BODY[1.1] {11}\r\nPlain text. "
            b"BODY[1.MIME] {54}\r\nContent-Type: multipart/alternative; boundary=same\r\n\r\n "
            b"BODY[2] {12}\r\nSecond part.)\r\n"
            b"a OK FETCH completed\r\n",
        )

    @defer.inlineCallbacks
    def test_comments_are_no_addresses_in_the_envelope(self) -> Any:
        # RFC 5322 3.2.2: "(foo)" in an empty group is no member; comments in
        # or beside an angle-addr name nothing.
        self.storage.deliver(
            "joe",
            b"From: <user-from (comment)@ (comment) domain.org>\r\n"
            b"Reply-To: <alice@example.org> (Alice)\r\n"
            b"To: (nobody in particular)\r\n"
            b"Cc: group:;, group2: (foo) ;\r\n"
            b"Subject: Comments that are no addresses\r\n"
            b"\r\n"
            b"Hi.\r\n",
        )
        client = yield self.open()
        response = yield client.command("a", "FETCH 2 ENVELOPE")
        self.assertEqual(
            response,
            b"* 2 FETCH (ENVELOPE (NIL "
            b'"Comments that are no addresses" ((NIL NIL "user-from" "domain.org")) '
            b'((NIL NIL "user-from" "domain.org")) ((NIL NIL "alice" "example.org")) NIL '
            b'((NIL NIL "group" NIL)(NIL NIL NIL NIL)(NIL NIL "group2" NIL)(NIL NIL NIL NIL)) '
            b"NIL NIL NIL))\r\n"
            b"a OK FETCH completed\r\n",
        )

    @defer.inlineCallbacks
    def test_nothing_cached_by_an_older_model_is_served(self) -> Any:
        # What a server before the model's last change left in the cache: a
        # structure of the old format and rendered values under the old kinds,
        # all wrong for this message.  They must be worked out again.
        data = SAME_BOUNDARY
        uid = self.deliver(data)
        inbox = self.inbox
        header = data.index(b"\r\n\r\n") + 4
        single = MessageStructure(len(data), Part(0, header, header, len(data) - header, 0))
        # Format 1: what servers before the fix for same-boundary multiparts
        # cached, as a wrong single-part reading of this message.
        old = b"[1," + single.to_bytes().split(b",", 1)[1]
        inbox.set_cached(uid, "structure", old)
        inbox.set_cached(uid, "bodystructure", b'("text" "plain" NIL NIL NIL "7bit" 1 0)')
        inbox.set_cached(uid, "envelope", b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)")
        client = yield self.open()
        response = yield client.command("a", "FETCH 2 (BODY.PEEK[1.1] BODYSTRUCTURE ENVELOPE)")
        self.assertIn(b"BODY[1.1] {11}\r\nPlain text. ", response)
        self.assertIn(b' "mixed" ("boundary" "same") NIL NIL NIL) ', response)
        self.assertIn(b'ENVELOPE (NIL "One boundary, no preambles" (("Alice Example"', response)
        self.assertTrue(response.endswith(b"a OK FETCH completed\r\n"), response)

    @defer.inlineCallbacks
    def test_binary_body_is_the_whole_body(self) -> Any:
        # Content-Transfer-Encoding: binary is no encoding to undo: BINARY[1]
        # of a single-part message is its whole body (RFC 3501 6.4.5 part 1,
        # RFC 3516 4.2), trailing line ends included, as Dovecot answers.
        client = yield self.open()
        data = b"Subject: binary\r\nContent-Transfer-Encoding: binary\r\n\r\n -\xff\r\n\r\n\r\n"
        client.send(b"a APPEND INBOX ~{%d}\r\n" % len(data))
        yield client.until(b"+ ")
        client.send(data + b"\r\n")
        response = yield client.until_tagged("a")
        self.assertIn(b"a OK [APPENDUID ", response)
        response = yield client.command("b", "FETCH 2 (BINARY.SIZE[1] BINARY.PEEK[1])")
        self.assertEqual(
            response,
            b"* 2 FETCH (BINARY.SIZE[1] 9 BINARY[1] {9}\r\n -\xff\r\n\r\n\r\n)\r\n"
            b"b OK FETCH completed\r\n",
        )
