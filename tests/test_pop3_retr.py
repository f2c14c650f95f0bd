"""RETR of a small message in one write: the same octets as the streamed path.

A message up to :data:`mailsrv.pop3.transaction.WHOLE_MESSAGE` octets is read
whole and sent with its status line and terminator in one write; anything
larger (or a file longer than its listed size) is streamed as before.  Each
test compares what a client receives against the streamed path (the one every
RETR took before), forced by setting ``WHOLE_MESSAGE`` below any size.
"""

from __future__ import annotations

import io
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from mailsrv.pop3 import transaction
from tests.pop3_helpers import Fixture, Session, TCPServer, TLSStringTransport

LIMIT = transaction.WHOLE_MESSAGE

#: Messages whose byte-stuffing and line ends are easy to get wrong (RFC 1939 3).
TRICKY = [
    # A dot on the very first line: stuffed although no LF precedes it.
    b".first line starts with a dot\r\n\r\nbody\r\n",
    # Dot-only lines, double dots, and no final line end (one is added).
    b"Subject: dots\r\n\r\n.\r\n..\r\n. \r\nend without CRLF",
    # Bare LFs (stored in wire form: CRLF); a dot after one is stuffed too.
    b"Subject: bare\n\n.after a bare LF\nlast\n",
    b"Subject: mixed\r\n\r\nline\n.dot\r\n.",
    # An 8-bit header: downgraded for a client that did not send UTF8 (RFC 6858).
    b"Subject: caf\xc3\xa9\r\nFrom: J\xc3\xb6rg <j@example.org>\r\n\r\n.body\r\n",
    # Just under, at and just over the size read whole, dots at the edges.
    b"Subject: edge\r\n\r\n" + b".x\r\n" * ((LIMIT - 17) // 4) + b"." * ((LIMIT - 17) % 4),
    b"Subject: edge\r\n\r\n" + b".x\r\n" * ((LIMIT - 16) // 4) + b"." * ((LIMIT - 16) % 4),
    b"Subject: edge\r\n\r\n" + b".x\r\n" * ((LIMIT + 4 - 17) // 4) + b"\r\n.",
]


class CountingTransport(TLSStringTransport):
    """Counts the writes a response took."""

    writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def session_with(test: unittest.SynchronousTestCase, messages: list[bytes], **kw: Any) -> Session:
    fixture = Fixture(test, mail={"bob": messages})
    session = Session(fixture, **kw)
    session.login("bob")
    return session


class WholeRetrTests(unittest.SynchronousTestCase):
    def retr_both_ways(self, messages: list[bytes], command: bytes = b"RETR") -> list[bytes]:
        """Each message's RETR answer, checked equal to the streamed path's."""
        whole = session_with(self, messages)
        answers = [whole.command(command + b" %d" % n) for n in range(1, len(messages) + 1)]
        self.patch(transaction, "WHOLE_MESSAGE", -1)
        streamed = session_with(self, messages)
        for n, answer in enumerate(answers, 1):
            self.assertEqual(answer, streamed.command(command + b" %d" % n), f"message {n}")
        return answers

    def test_tricky_messages(self) -> None:
        answers = self.retr_both_ways(TRICKY)
        self.assertEqual(
            answers[0],
            b"+OK %d octets\r\n..first line starts with a dot\r\n\r\nbody\r\n.\r\n"
            % len(TRICKY[0]),
        )
        self.assertEqual(
            answers[1],
            b"+OK %d octets\r\nSubject: dots\r\n\r\n..\r\n...\r\n.. \r\nend without CRLF\r\n.\r\n"
            % len(TRICKY[1]),
        )
        self.assertEqual(
            answers[2],
            b"+OK 41 octets\r\nSubject: bare\r\n\r\n..after a bare LF\r\nlast\r\n.\r\n",
        )
        self.assertTrue(answers[4].startswith(b"+OK "))
        self.assertTrue(answers[4].isascii(), answers[4])  # downgraded, its size announced
        sent = answers[4][answers[4].index(b"\n") + 1 : -3]
        self.assertEqual(int(answers[4].split()[1]), len(sent.replace(b"\n..", b"\n.")))

    def test_utf8_client_gets_the_stored_header(self) -> None:
        fixture = Fixture(self, mail={"bob": [TRICKY[4]]})
        session = Session(fixture)
        self.assertEqual(session.command("UTF8")[:3], b"+OK")
        session.login("bob")
        self.assertEqual(
            session.command("RETR 1"),
            b"+OK %d octets\r\n" % len(TRICKY[4]) + TRICKY[4].replace(b"\n.", b"\n..") + b".\r\n",
        )

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.sampled_from([b"", b".", b"..", b"a", b".a", b"a.", b"\xc3\xa9", b" ."]),
            max_size=12,
        ),
        st.lists(st.sampled_from([b"\r\n", b"\n"]), min_size=12, max_size=12),
        st.booleans(),
    )
    def test_any_lines(self, lines: list[bytes], ends: list[bytes], final: bool) -> None:
        """Whatever the lines and line ends, the octets are the streamed path's."""
        body = b"".join(line + end for line, end in zip(lines, ends, strict=False))
        if not final and body:
            body = body[: -len(ends[len(lines) - 1])]
        message = b"Subject: any\r\n\r\n" + body
        self.retr_both_ways([message])

    def test_top_is_unchanged(self) -> None:
        self.retr_both_ways(TRICKY[:3], b"TOP")

    def test_small_retr_is_one_write(self) -> None:
        """The status line, the message and the terminator go out in one
        write (the streamed path made three)."""
        transport = CountingTransport()
        session = session_with(self, [TRICKY[1]], transport=transport)
        before = transport.writes
        self.assertTrue(session.command("RETR 1").endswith(b"end without CRLF\r\n.\r\n"))
        self.assertEqual(transport.writes - before, 1)

    def test_file_longer_than_listed_is_sent_whole(self) -> None:
        """A file that is longer than its listed size is streamed from what
        was read on: every octet still goes out, in order."""
        extra = b"".join(b".line %d\r\n" % n for n in range(20000))  # well over LIMIT
        message = b"Subject: grows\r\n\r\nshort\r\n"
        answers = []
        for limit in (LIMIT, -1):
            self.patch(transaction, "WHOLE_MESSAGE", limit)
            fixture = Fixture(self, mail={"bob": [message]})
            fixture.faults.reader = lambda data: io.BytesIO(data + extra)
            session = Session(fixture)
            session.login("bob")
            answers.append(session.command("RETR 1"))
        self.assertEqual(answers[0], answers[1])
        self.assertTrue(answers[0].endswith(b"\r\n..line 19999\r\n.\r\n"))

    def test_read_error_answers_as_before(self) -> None:
        """A message file that cannot be read: nothing of it was sent, the
        answer is the one the streamed path gave, and the session goes on."""

        class Unreadable(io.BytesIO):
            def read(self, size: int | None = -1) -> bytes:
                raise OSError("I/O error")

        answers = []
        for limit in (LIMIT, -1):
            self.patch(transaction, "WHOLE_MESSAGE", limit)
            fixture = Fixture(self, mail={"bob": [TRICKY[0]]})
            fixture.faults.reader = Unreadable
            session = Session(fixture)
            session.login("bob")
            answers.append(session.send(b"RETR 1\r\nNOOP\r\n"))
        self.assertEqual(answers[0], answers[1])
        self.assertEqual(answers[0], b"-ERR [SYS/TEMP] Internal server error.\r\n+OK\r\n")
        self.flushLoggedErrors(OSError)


class WholeRetrOverTCPTests(unittest.TestCase):
    timeout = 20

    async def retr_all(self, messages: list[bytes]) -> list[bytes]:
        server = TCPServer(self, Fixture(self, mail={"bob": messages}))
        client = await server.login("bob")
        client.send(b"".join(b"RETR %d\r\n" % n for n in range(1, len(messages) + 1)))
        return [await client.response() for _ in messages]

    async def test_same_octets_on_the_wire(self) -> None:
        """Pipelined RETRs over a socket: the client receives exactly what
        the streamed path sent."""
        whole = await self.retr_all(TRICKY)
        self.patch(transaction, "WHOLE_MESSAGE", -1)
        streamed = await self.retr_all(TRICKY)
        self.assertEqual(whole, streamed)
        self.assertEqual(
            whole[2], b"+OK 41 octets\r\nSubject: bare\r\n\r\n..after a bare LF\r\nlast\r\n.\r\n"
        )
