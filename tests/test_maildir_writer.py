"""A real daemon keeps answering while one of its writes waits for the
folder lock that another process holds (as a second worker or ``mailsrv
deliver`` holds it): the write waits in a thread, not on the reactor; and
what the writer thread changed is what the sessions are told, also after
``mailsrv reindex`` replaced the index."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import time

from twisted.trial.unittest import SkipTest

from mailsrv.storage.maildir import MaildirStorage
from tests.helpers import read_line
from tests.test_maildir_crash import DaemonCrashTestCase

LOCK = "mailsrv-lock"
DEADLINE = 30.0


class Connection:
    """A blocking IMAP connection that reads whole response lines."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        read_line(self.sock)  # greeting

    def send(self, line: bytes) -> None:
        self.sock.sendall(line + b"\r\n")

    def until_tagged(self, tag: bytes) -> list[bytes]:
        """Every line up to and including ``tag``'s answer; a socket timeout
        (the deadline) if it does not come."""
        lines: list[bytes] = []
        while True:
            line = read_line(self.sock)
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def command(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text)
        return self.until_tagged(tag)

    def close(self) -> None:
        self.sock.close()


def waiting_on(path: str) -> bool:
    """Whether some process waits for an flock of ``path`` (/proc/locks
    lists waiters with ``->``)."""
    inode = os.stat(path).st_ino
    with open("/proc/locks") as locks:
        for line in locks:
            fields = line.split()
            if len(fields) > 5 and fields[1] == "->" and fields[6].endswith(f":{inode}"):
                return True
    return False


class WriterTestCase(DaemonCrashTestCase):
    """A daemon of one process (both sessions on one reactor), its writer
    thread on or off as :attr:`threaded` says."""

    threaded = True

    def config_sections(self) -> dict[str, dict[str, object]]:
        sections = super().config_sections()
        sections["server"]["workers"] = 1
        sections["storage"] = {"threaded_writes": self.threaded}
        return sections

    def connect(self) -> Connection:
        connection = Connection(self.port)
        self.addCleanup(connection.close)
        self.assertTrue(connection.command(b"l", b"LOGIN alice pw")[-1].startswith(b"l OK"))
        self.assertTrue(connection.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK"))
        return connection

    def until_waiting_on_lock(self, failure: str) -> None:
        """Wait (polling /proc/locks, with a deadline) until some process
        waits for the folder lock the test holds; fail with ``failure``."""
        deadline = time.monotonic() + DEADLINE
        while not waiting_on(self.path(LOCK)):
            self.assertLess(time.monotonic(), deadline, failure)
            time.sleep(0.01)


class WriteWaitsOffReactorTests(WriterTestCase):
    def setUp(self) -> None:
        if not os.path.exists("/proc/locks"):
            raise SkipTest("needs /proc/locks to see the daemon wait for the lock")
        super().setUp()

    def test_reads_answered_while_a_store_waits_for_the_lock(self) -> None:
        self.start()
        client = self.login()
        self.appenduid(client, "INBOX", "first")
        writer, reader = self.connect(), self.connect()
        lock = os.open(self.path(LOCK), os.O_RDWR)
        self.addCleanup(os.close, lock)
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process's write under way
        try:
            writer.send(b"w STORE 1 +FLAGS (\\Flagged)")
            self.until_waiting_on_lock("the STORE never waited for the lock")
            # The STORE waits for the lock: the same process answers others.
            answer = reader.command(b"r", b"FETCH 1 (FLAGS)")
            self.assertTrue(answer[-1].startswith(b"r OK"), answer)
            self.assertNotIn(b"\\Flagged", b"".join(answer))
            other = self.connect()
            self.assertTrue(other.command(b"x", b"LOGOUT")[-1].startswith(b"x OK"))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        stored = writer.until_tagged(b"w")
        self.assertTrue(stored[-1].startswith(b"w OK"), stored)
        self.assertIn(b"\\Flagged", b"".join(stored))
        seen = reader.command(b"n", b"NOOP")
        self.assertIn(b"\\Flagged", b"".join(seen))

    def test_reads_answered_while_an_append_waits_for_the_lock(self) -> None:
        self.start()
        writer, reader = self.connect(), self.connect()
        lock = os.open(self.path(LOCK), os.O_RDWR)
        self.addCleanup(os.close, lock)
        body = b"Subject: late\r\n\r\nbody\r\n"
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            writer.send(b"a APPEND INBOX {%d+}\r\n" % len(body) + body)
            self.until_waiting_on_lock("the APPEND never waited for the lock")
            answer = reader.command(b"r", b"STATUS Sent (MESSAGES)")
            self.assertTrue(answer[-1].startswith(b"r OK"), answer)
            # Nothing acknowledged, nothing shown: the message is not in cur/.
            self.assertEqual(os.listdir(self.path("cur")), [])
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        appended = writer.until_tagged(b"a")
        self.assertTrue(appended[-1].startswith(b"a OK [APPENDUID"), appended)
        self.assertEqual(len(os.listdir(self.path("cur"))), 1)
        seen = reader.command(b"n", b"NOOP")
        self.assertIn(b"* 1 EXISTS\r\n", seen)

    def test_noop_and_status_answered_while_another_process_holds_the_lock(self) -> None:
        """The holder records its own change; nothing outside changed new/
        or cur/, so there is nothing for the NOOP to wait for."""
        # A Maildir nobody changed for a while: its directories' times are
        # old enough to be trusted, so a NOOP has nothing to list.
        MaildirStorage(os.path.join(self.dir, "mail", "{user}", "Maildir")).account("alice")
        for name in ("cur", "new", "tmp"):
            os.utime(self.path(name), (time.time() - 3600, time.time() - 3600))
        self.start()
        reader = self.connect()
        lock = os.open(self.path(LOCK), os.O_RDWR)
        self.addCleanup(os.close, lock)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            answer = reader.command(b"n", b"NOOP")
            self.assertTrue(answer[-1].startswith(b"n OK"), answer)
            answer = reader.command(b"t", b"STATUS INBOX (MESSAGES)")
            self.assertIn(b"* STATUS INBOX (MESSAGES 0)\r\n", answer)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

    def test_noop_waits_for_the_lock_to_see_an_outside_delivery(self) -> None:
        """A file another program put in new/ while the lock is held is
        picked up by the NOOP once the lock is free, not missed."""
        self.start()
        reader = self.connect()
        lock = os.open(self.path(LOCK), os.O_RDWR)
        self.addCleanup(os.close, lock)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(self.path("1.outside", "tmp"), "wb") as handle:
                handle.write(b"Subject: outside\n\nbody\n")
            os.rename(self.path("1.outside", "tmp"), self.path("1.outside", "new"))
            reader.send(b"n NOOP")
            self.until_waiting_on_lock("the NOOP never waited for the lock")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        answer = reader.until_tagged(b"n")
        self.assertIn(b"* 1 EXISTS\r\n", answer)

    def test_appends_committed_together_are_durable_with_their_uids(self) -> None:
        """APPENDs queued while the lock is taken are placed together once
        it is free; each answered OK survives a SIGKILL with its UID."""
        daemon = self.start()
        writers = [self.connect() for _ in range(3)]
        lock = os.open(self.path(LOCK), os.O_RDWR)
        self.addCleanup(os.close, lock)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for number, writer in enumerate(writers):
                body = b"Subject: m%d\r\n\r\nbody\r\n" % number
                writer.send(b"a APPEND INBOX {%d+}\r\n" % len(body) + body)
            self.until_waiting_on_lock("no APPEND waited for the lock")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        given: dict[int, str] = {}
        for number, writer in enumerate(writers):
            answer = writer.until_tagged(b"a")[-1]
            match = re.match(rb"a OK \[APPENDUID \d+ (\d+)\]", answer)
            assert match is not None, answer
            given[int(match.group(1))] = f"m{number}"
        self.assertEqual(sorted(given), [1, 2, 3])
        self.kill(daemon)
        self.start()
        found = self.contents(self.login(), "INBOX")
        self.assertEqual({uid: subject for uid, (subject, _) in found.items()}, given)


class ReplacedIndexTests(WriterTestCase):
    """``mailsrv reindex`` puts a new index file in place of the one the
    daemon has open; what the daemon answers and announces follows it."""

    def test_writes_after_a_reindex_are_answered_and_kept(self) -> None:
        """``mailsrv reindex`` puts a new index file in place of the one the
        daemon has open.  The writer thread writes to the new one; the
        answers and the session's view must come from it too: a STORE
        answered with the flags it set, an APPEND's message in the view (so
        a UID STORE and EXPUNGE of it act), and what was answered OK still
        there after a SIGKILL."""
        daemon = self.start()
        self.appenduid(self.login(), "INBOX", "first")
        session = self.connect()
        reindexed = self.run_mailsrv("reindex", "alice")
        self.assertEqual(reindexed.returncode, 0, reindexed.stderr)
        stored = session.command(b"s", b"UID STORE 1 +FLAGS (\\Flagged)")
        self.assertTrue(stored[-1].startswith(b"s OK"), stored)
        self.assertRegex(b"".join(stored), rb"\* 1 FETCH \(UID 1 FLAGS \([^)]*\\Flagged")
        body = b"Subject: second\r\n\r\nbody\r\n"
        appended = session.command(b"a", b"APPEND INBOX {%d+}\r\n" % len(body) + body)
        self.assertTrue(appended[-1].startswith(b"a OK [APPENDUID"), appended)
        self.assertIn(b"* 2 EXISTS\r\n", appended)
        deleted = session.command(b"d", b"UID STORE 2 +FLAGS.SILENT (\\Deleted)")
        self.assertTrue(deleted[-1].startswith(b"d OK"), deleted)
        expunged = session.command(b"e", b"EXPUNGE")
        self.assertEqual(expunged, [b"* 2 EXPUNGE\r\n", b"e OK EXPUNGE completed\r\n"])
        self.kill(daemon)
        self.start()
        found = self.contents(self.login(), "INBOX")
        self.assertEqual(list(found), [1])
        self.assertIn("\\Flagged", found[1][1])

    def test_a_delivery_just_before_a_reindex_reaches_the_session(self) -> None:
        """A message another process added, then the index replaced before
        the daemon read it (the daemon stopped with SIGSTOP meanwhile, so
        both happen between two of its looks): the session is still told of
        the message, so its UID STORE and EXPUNGE act on it, and the
        EXPUNGE answered OK holds after a SIGKILL."""
        daemon = self.start()
        self.appenduid(self.login(), "INBOX", "first")
        session = self.connect()
        os.kill(daemon.process.pid, signal.SIGSTOP)
        try:
            delivered = self.run_mailsrv("deliver", "alice", stdin=b"Subject: second\n\nbody\n")
            self.assertEqual(delivered.returncode, 0, delivered.stderr)
            reindexed = self.run_mailsrv("reindex", "alice")
            self.assertEqual(reindexed.returncode, 0, reindexed.stderr)
        finally:
            os.kill(daemon.process.pid, signal.SIGCONT)
        noop = session.command(b"n", b"NOOP")
        self.assertIn(b"* 2 EXISTS\r\n", noop)
        deleted = session.command(b"d", b"UID STORE 2 +FLAGS (\\Deleted)")
        self.assertRegex(b"".join(deleted), rb"\* 2 FETCH \(UID 2 FLAGS \([^)]*\\Deleted")
        expunged = session.command(b"e", b"EXPUNGE")
        self.assertEqual(expunged, [b"* 2 EXPUNGE\r\n", b"e OK EXPUNGE completed\r\n"])
        self.kill(daemon)
        self.start()
        self.assertEqual(list(self.contents(self.login(), "INBOX")), [1])


class ReplacedIndexWithoutWriterTests(ReplacedIndexTests):
    """The same with ``threaded_writes = false``: writes on the reactor."""

    threaded = False
