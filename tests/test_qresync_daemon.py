"""QRESYNC across a real daemon's death: a client that synchronised, a
daemon killed with SIGKILL while the client had not heard of the latest
changes (or killed inside a STORE, or restarted on a rebuilt index), and
the client's reconnection: VANISHED (EARLIER) and the changed FETCHes must
be exactly what happened, and HIGHESTMODSEQ must never go back.

The client is tests/qresync_client.py, which follows RFC 7162 section 6
and knows nothing of the server.
"""

from __future__ import annotations

import os
import re

from tests.qresync_client import MailboxCache, QresyncClient
from tests.test_maildir_crash import INDEX, DaemonCrashTestCase

_VANISHED = re.compile(rb"^\* VANISHED \(EARLIER\) (.*)$")
_FETCH_UID = re.compile(rb"^\* \d+ FETCH \(.*\bUID (\d+)\b")
_HIGHEST = re.compile(rb"\[HIGHESTMODSEQ (\d+)\]")


class QresyncRestartTests(DaemonCrashTestCase):
    def client(self) -> QresyncClient:
        client = QresyncClient("127.0.0.1", self.port, "alice", "pw")
        self.addCleanup(client.close)
        return client

    def truth(self) -> MailboxCache:
        """The server's state, as a fresh client's full synchronisation sees it."""
        fresh = self.client()
        cache = MailboxCache()
        fresh.resync("INBOX", cache)
        fresh.close()
        return cache

    def seed(self, count: int) -> None:
        admin = self.login()
        for n in range(1, count + 1):
            self.appenduid(admin, "INBOX", f"m{n}")

    def change(self, *commands: tuple[str, ...]) -> None:
        """Changes made by another client (imaplib), by UID."""
        other = self.login()
        self.select(other, "INBOX")
        for command in commands:
            status, data = other.uid(*command)
            self.assertEqual(status, "OK", (command, data))

    def reported(self, lines: list[bytes]) -> tuple[str, list[int], int]:
        """VANISHED (EARLIER)'s set, the UIDs FETCH reported, HIGHESTMODSEQ."""
        vanished = [m.group(1).decode() for m in map(_VANISHED.match, lines) if m]
        fetched = [int(m.group(1)) for m in map(_FETCH_UID.match, lines) if m]
        highest = [int(m.group(1)) for m in map(_HIGHEST.search, lines) if m]
        self.assertEqual(len(vanished) <= 1 and len(highest), 1, lines)
        return (vanished[0] if vanished else ""), fetched, highest[0]

    def test_killed_between_changes_and_resync(self) -> None:
        """The daemon dies (SIGKILL) after other clients changed flags,
        expunged and added mail, before the client heard of any of it; the
        restarted daemon tells the client exactly that, from what it kept
        on disk (MODSEQs, the expunge log)."""
        daemon = self.start()
        self.seed(12)
        client = self.client()
        cache = MailboxCache()
        client.resync("INBOX", cache)
        before = cache.highest_modseq
        self.assertEqual(sorted(cache.flags), list(range(1, 13)))
        self.change(
            ("STORE", "3", "+FLAGS", "(\\Seen)"),
            ("STORE", "5,9", "+FLAGS", "(\\Flagged $Later)"),
            ("STORE", "7,8,11", "+FLAGS", "(\\Deleted)"),
            ("EXPUNGE", "7:8"),
        )
        self.appenduid(self.login(), "INBOX", "m13")
        self.kill(daemon)
        self.start()
        again = self.client()
        lines = again.resync("INBOX", cache)
        vanished, fetched, highest = self.reported(lines)
        self.assertEqual(vanished, "7:8")
        self.assertEqual(fetched, [3, 5, 9, 11])
        self.assertGreater(highest, before)
        self.assertEqual(cache, self.truth())
        self.assertEqual(sorted(cache.flags), [1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13])
        # Nothing new: a second reconnection has nothing to say.
        lines = self.client().resync("INBOX", cache)
        self.assertEqual(self.reported(lines), ("", [], cache.highest_modseq))

    def test_killed_inside_a_store(self) -> None:
        """Killed after a STORE renamed the file but before the index
        recorded it: the restarted daemon finds the new flags in the file
        name and gives them a MODSEQ above anything handed out, so the
        client learns of them."""
        first = self.start()
        self.seed(4)
        first.stop()
        first.process.wait(timeout=30)
        daemon = self.start(crash_at="store-renamed")
        client = self.client()
        cache = MailboxCache()
        client.resync("INBOX", cache)
        before = cache.highest_modseq
        other = self.login()
        self.select(other, "INBOX")
        try:
            other.uid("STORE", "2", "+FLAGS", "(\\Answered)")
        except Exception:  # the daemon died mid-command, as intended
            pass
        self.died(daemon)
        self.start()
        lines = self.client().resync("INBOX", cache)
        vanished, fetched, highest = self.reported(lines)
        self.assertEqual((vanished, fetched), ("", [2]))
        self.assertGreater(highest, before)
        self.assertEqual(cache.flags[2], frozenset({"\\Answered"}))
        self.assertEqual(cache, self.truth())

    def test_rebuilt_index(self) -> None:
        """The index is lost while the daemon is down: the rebuilt one never
        hands out a HIGHESTMODSEQ below one the client saw; every message
        counts as changed (correct, if costly), and the expunges the log
        no longer knows are worked out from the UIDs still there."""
        daemon = self.start()
        self.seed(6)
        client = self.client()
        cache = MailboxCache()
        client.resync("INBOX", cache)
        before = cache.highest_modseq
        self.change(("STORE", "2,4", "+FLAGS", "(\\Deleted)"), ("EXPUNGE", "2,4"))
        self.change(("STORE", "6", "+FLAGS", "(\\Seen)"))
        daemon.stop()
        daemon.process.wait(timeout=30)
        for suffix in ("", "-wal", "-shm"):
            path = self.path(INDEX) + suffix
            if os.path.exists(path):
                os.unlink(path)
        self.start()
        lines = self.client().resync("INBOX", cache)
        vanished, fetched, highest = self.reported(lines)
        self.assertEqual(vanished, "2,4")
        self.assertEqual(fetched, [1, 3, 5, 6])
        self.assertGreater(highest, before)
        self.assertEqual(cache, self.truth())
