"""POP3 TRANSACTION and UPDATE: STAT LIST UIDL RETR TOP DELE NOOP RSET LAST,
the commit at QUIT, and streaming big messages, over the memory backend.

(What IMAP sees of a POP3 session, and the same over Maildir, is in
tests/test_pop3_storage.py.)"""

from __future__ import annotations

import io

from twisted.trial import unittest

from mailsrv.errors import TemporaryFailure
from mailsrv.pop3.streaming import CHUNK_SIZE
from tests.pop3_helpers import (
    MESSAGE_1,
    MESSAGE_2,
    MESSAGE_3,
    Fixture,
    PausingTransport,
    Session,
    TCPServer,
    multiline,
    retr_body,
)


class TrackedReader(io.BytesIO):
    """A message file that remembers how much of it was read."""

    octets_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.octets_read += len(data)
        return data


def track_reads(fixture: Fixture) -> list[TrackedReader]:
    """The message files the server opens from now on."""
    readers: list[TrackedReader] = []

    def reader(data: bytes) -> TrackedReader:
        readers.append(TrackedReader(data))
        return readers[-1]

    fixture.faults.reader = reader
    return readers


class TransactionTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.fixture = Fixture(self)
        self.session = Session(self.fixture)
        self.session.login()
        self.sizes = [len(MESSAGE_1), len(MESSAGE_2), len(MESSAGE_3)]

    def cmd(self, line: str) -> bytes:
        return self.session.command(line)

    def test_stat(self) -> None:
        self.assertEqual(self.cmd("STAT"), b"+OK 3 %d\r\n" % sum(self.sizes))
        self.assertEqual(self.cmd("STAT 1"), b"-ERR This command takes no arguments.\r\n")

    def test_list(self) -> None:
        self.assertEqual(
            self.cmd("LIST"),
            multiline(
                b"+OK 3 messages (%d octets)" % sum(self.sizes),
                *(b"%d %d" % (i + 1, size) for i, size in enumerate(self.sizes)),
            ),
        )
        self.assertEqual(self.cmd("LIST 2"), b"+OK 2 %d\r\n" % self.sizes[1])

    def test_list_bad_numbers(self) -> None:
        for arg in ("0", "4", "99999999999", "-1", "+1", "x", "1.0", "0x1"):
            self.assertIn(
                self.cmd(f"LIST {arg}"),
                (b"-ERR No such message.\r\n", b"-ERR Invalid message number.\r\n"),
                arg,
            )
        self.assertEqual(self.cmd("LIST x"), b"-ERR Invalid message number.\r\n")
        self.assertEqual(self.cmd("LIST 4"), b"-ERR No such message.\r\n")
        self.assertEqual(self.cmd("LIST 1 2"), b"-ERR LIST takes at most one message number.\r\n")

    def test_uidl(self) -> None:
        """The storage's UID and UIDVALIDITY, as Dovecot writes them (%08X%08X)."""
        uidvalidity = self.fixture.inbox().uidvalidity
        ids = [b"%08X%08X" % (uid, uidvalidity) for uid in (1, 2, 3)]
        self.assertEqual(
            self.cmd("UIDL"),
            multiline(
                b"+OK Unique-ID listing follows",
                *(b"%d %s" % (i + 1, u) for i, u in enumerate(ids)),
            ),
        )
        self.assertEqual(self.cmd("UIDL 3"), b"+OK 3 " + ids[2] + b"\r\n")
        self.assertEqual(self.cmd("UIDL 4"), b"-ERR No such message.\r\n")
        self.assertEqual(self.cmd("UIDL 1 2"), b"-ERR UIDL takes at most one message number.\r\n")

    def test_retr_dot_stuffing(self) -> None:
        out = self.cmd("RETR 1")
        self.assertEqual(
            out,
            b"+OK %d octets\r\n" % len(MESSAGE_1)
            + b"From: a@example.org\r\nSubject: one\r\n\r\nHello\r\n"
            + b"..hidden dot\r\n...two dots\r\n.\r\n",
        )

    def test_retr_adds_missing_final_line_end(self) -> None:
        self.assertEqual(
            self.cmd("RETR 3"),
            b"+OK %d octets\r\n" % len(MESSAGE_3) + MESSAGE_3 + b"\r\n.\r\n",
        )

    def test_retr_bad_arguments(self) -> None:
        self.assertEqual(self.cmd("RETR"), b"-ERR RETR takes one message number.\r\n")
        self.assertEqual(self.cmd("RETR 1 2"), b"-ERR RETR takes one message number.\r\n")
        self.assertEqual(self.cmd("RETR 0"), b"-ERR No such message.\r\n")
        self.assertEqual(self.cmd("RETR one"), b"-ERR Invalid message number.\r\n")

    def test_top(self) -> None:
        self.assertEqual(
            self.cmd("TOP 1 0"),
            multiline(b"+OK Top of message follows", b"From: a@example.org", b"Subject: one", b""),
        )
        self.assertEqual(
            self.cmd("TOP 1 2"),
            multiline(
                b"+OK Top of message follows",
                b"From: a@example.org",
                b"Subject: one",
                b"",
                b"Hello",
                b"..hidden dot",
            ),
        )
        self.assertEqual(
            self.cmd("TOP 1 100"),
            b"+OK Top of message follows\r\n" + retr_body(MESSAGE_1) + b".\r\n",
        )
        self.assertEqual(
            self.cmd("TOP 3 5"), b"+OK Top of message follows\r\n" + MESSAGE_3 + b"\r\n.\r\n"
        )

    def test_top_bad_arguments(self) -> None:
        usage = b"-ERR TOP takes a message number and a number of lines.\r\n"
        self.assertEqual(self.cmd("TOP"), usage)
        self.assertEqual(self.cmd("TOP 1"), usage)
        self.assertEqual(self.cmd("TOP 1 2 3"), usage)
        self.assertEqual(self.cmd("TOP 1 -1"), b"-ERR Invalid number of lines.\r\n")
        self.assertEqual(self.cmd("TOP 1 x"), b"-ERR Invalid number of lines.\r\n")
        self.assertEqual(self.cmd("TOP 9 1"), b"-ERR No such message.\r\n")

    def test_dele(self) -> None:
        self.assertEqual(self.cmd("DELE 2"), b"+OK Message 2 marked for deletion.\r\n")
        for command in ("DELE 2", "RETR 2", "LIST 2", "TOP 2 0", "UIDL 2"):
            self.assertEqual(self.cmd(command), b"-ERR No such message.\r\n", command)
        self.assertEqual(self.cmd("STAT"), b"+OK 2 %d\r\n" % (self.sizes[0] + self.sizes[2]))
        listing = self.cmd("LIST")
        self.assertIn(b"\r\n1 %d\r\n3 %d\r\n.\r\n" % (self.sizes[0], self.sizes[2]), listing)
        self.assertNotIn(b"\r\n2 ", listing)
        self.assertNotIn(b"\r\n2 ", self.cmd("UIDL"))
        self.assertEqual(self.cmd("DELE"), b"-ERR DELE takes one message number.\r\n")
        self.assertEqual(self.fixture.uids(), [1, 2, 3])  # nothing happens before QUIT

    def test_rset(self) -> None:
        self.cmd("DELE 1")
        self.cmd("DELE 3")
        self.assertEqual(
            self.cmd("RSET"), b"+OK Maildrop has 3 messages (%d octets).\r\n" % sum(self.sizes)
        )
        self.assertEqual(self.cmd("LIST 1"), b"+OK 1 %d\r\n" % self.sizes[0])
        self.assertEqual(self.cmd("RSET x"), b"-ERR This command takes no arguments.\r\n")

    def test_noop(self) -> None:
        self.assertEqual(self.cmd("NOOP"), b"+OK\r\n")
        self.assertEqual(self.cmd("NOOP 1"), b"-ERR This command takes no arguments.\r\n")

    def test_last(self) -> None:
        self.assertEqual(self.cmd("LAST"), b"+OK 0\r\n")
        self.cmd("RETR 2")
        self.assertEqual(self.cmd("LAST"), b"+OK 2\r\n")
        self.cmd("TOP 1 0")
        self.assertEqual(self.cmd("LAST"), b"+OK 2\r\n")
        self.cmd("RSET")
        self.assertEqual(self.cmd("LAST"), b"+OK 0\r\n")
        self.assertEqual(self.cmd("LAST 1"), b"-ERR This command takes no arguments.\r\n")

    def test_quit_commits_deletions_and_seen(self) -> None:
        """RETR and a TOP that covered the whole message mark \\Seen; a partial TOP does not."""
        self.cmd("RETR 1")
        self.cmd("TOP 2 1")  # partial
        self.cmd("TOP 3 10")  # whole message
        self.cmd("DELE 2")
        self.assertEqual(self.cmd("QUIT"), b"+OK Logging out, 1 message deleted.\r\n")
        self.assertTrue(self.session.closed)
        self.assertEqual(self.fixture.uids(), [1, 3])
        self.assertEqual(self.fixture.seen(), [1, 3])
        self.assertFalse(self.fixture.locked())
        self.session.drop()
        self.assertEqual(self.fixture.faults.logouts["alice"], 1)

    def test_quit_without_changes(self) -> None:
        self.assertEqual(self.cmd("QUIT"), b"+OK Logging out, 0 messages deleted.\r\n")
        self.assertEqual(self.fixture.uids(), [1, 2, 3])
        self.assertEqual(self.fixture.seen(), [])
        self.assertFalse(self.fixture.locked())

    def test_rset_undeletes_before_quit(self) -> None:
        self.cmd("DELE 1")
        self.cmd("RSET")
        self.assertEqual(self.cmd("QUIT"), b"+OK Logging out, 0 messages deleted.\r\n")
        self.assertEqual(self.fixture.uids(), [1, 2, 3])

    def test_commit_failure(self) -> None:
        self.fixture.faults.commit_error = TemporaryFailure("disk full")
        self.cmd("DELE 1")
        self.assertEqual(
            self.cmd("QUIT"),
            b"-ERR [SYS/TEMP] Could not update the mailbox; no messages were deleted.\r\n",
        )
        self.assertTrue(self.session.closed)
        self.assertEqual(self.fixture.uids(), [1, 2, 3])
        self.assertFalse(self.fixture.locked())  # released, so the next login works

    def test_listing_fixed_at_login(self) -> None:
        """RFC 1939: a message arriving during the session is not shown."""
        self.fixture.deliver(b"Subject: late\r\n\r\nx\r\n")
        self.assertEqual(self.cmd("STAT"), b"+OK 3 %d\r\n" % sum(self.sizes))
        self.assertEqual(self.cmd("LIST 4"), b"-ERR No such message.\r\n")


class StreamingTests(unittest.SynchronousTestCase):
    def big_message(self, size: int) -> bytes:
        line = b".dot-started line of a big message, 64 characters long........\r\n"
        return b"Subject: big\r\n\r\n" + line * (size // len(line))

    def test_retr_streams_and_pauses(self) -> None:
        """A client that does not read pauses RETR: the message is read a
        chunk at a time, as the client takes it."""
        fixture = Fixture(self)
        message = self.big_message(4 * 1024 * 1024)
        fixture.deliver(message, "bob")
        readers = track_reads(fixture)
        transport = PausingTransport()
        session = Session(fixture, transport=transport)
        session.login("bob")
        out = session.send(b"RETR 1\r\nNOOP\r\n")
        self.assertEqual(readers[0].octets_read, CHUNK_SIZE)
        self.assertLessEqual(len(out), 2 * CHUNK_SIZE + 100)
        self.assertIsNotNone(transport.producer)
        received = [out]
        rounds = 0
        while transport.producer is not None:
            transport.producer.resumeProducing()
            chunk = session.output()
            self.assertLessEqual(len(chunk), 2 * CHUNK_SIZE)
            received.append(chunk)
            rounds += 1
        data = b"".join(received)
        self.assertGreater(rounds, 30)
        header = b"+OK %d octets\r\n" % len(message)
        self.assertEqual(data, header + retr_body(message) + b".\r\n+OK\r\n")

    def test_top_of_a_big_message_reads_little(self) -> None:
        fixture = Fixture(self)
        fixture.deliver(self.big_message(4 * 1024 * 1024), "bob")
        readers = track_reads(fixture)
        session = Session(fixture)
        session.login("bob")
        out = session.command("TOP 1 2")
        line = b"..dot-started line of a big message, 64 characters long........"
        self.assertEqual(
            out, multiline(b"+OK Top of message follows", b"Subject: big", b"", line, line)
        )
        self.assertEqual(readers[0].octets_read, CHUNK_SIZE)  # one chunk, of 4 MiB
        self.assertTrue(readers[0].closed)

    def test_connection_lost_mid_retr(self) -> None:
        fixture = Fixture(self)
        fixture.deliver(self.big_message(1024 * 1024), "bob")
        readers = track_reads(fixture)
        transport = PausingTransport()
        session = Session(fixture, transport=transport)
        session.login("bob")
        session.send(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
        session.drop()
        self.assertEqual(fixture.uids("bob"), [1])
        self.assertEqual(fixture.seen("bob"), [])
        self.assertFalse(fixture.locked("bob"))
        self.assertTrue(readers[0].closed)

    def test_read_error_mid_retr_aborts(self) -> None:
        """Half a message cannot be taken back: the connection is cut, no terminator sent."""

        class Broken(io.BytesIO):
            def read(self, size: int | None = -1) -> bytes:
                if self.tell() > 0:
                    raise OSError("I/O error")
                return super().read(size)

        fixture = Fixture(self)
        fixture.deliver(self.big_message(1024 * 1024), "bob")
        fixture.faults.reader = Broken
        session = Session(fixture)
        session.login("bob")
        out = session.send(b"RETR 1\r\nNOOP\r\n")
        self.assertFalse(out.endswith(b".\r\n"))
        self.assertNotIn(b"+OK\r\n", out[-10:])
        self.assertTrue(session.transport.disconnected or session.transport.disconnecting)
        self.flushLoggedErrors(OSError)


class StreamingOverTCPTests(unittest.TestCase):
    timeout = 20

    async def test_big_retr(self) -> None:
        fixture = Fixture(self)
        line = b"a line of text that is exactly sixty-four characters long......\r\n"
        message = b"Subject: big\r\n\r\n" + line * (8 * 1024 * 1024 // len(line))
        fixture.deliver(message, "bob")
        server = TCPServer(self, fixture)
        client, _ = await server.connect()
        await client.command(b"USER bob")
        await client.command(b"PASS hunter2")
        client.send(b"RETR 1\r\n")
        response = await client.response()
        self.assertEqual(response, b"+OK %d octets\r\n" % len(message) + message + b".\r\n")
