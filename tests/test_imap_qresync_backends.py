"""CONDSTORE and QRESYNC with several sessions at once, over each backend
(memory, Maildir, PostgreSQL), where MODSEQs are whatever the backend hands
out: the tests read them from the answers and check how they relate.

tests/test_imap_condstore.py and tests/test_imap_qresync.py pin the bytes
over the memory backend; tests/test_qresync_daemon.py kills a real daemon.
"""

from __future__ import annotations

import io
import re
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from mailsrv.interfaces import IStorage
from tests.test_imap_backends import MESSAGE, InMemory, InPostgres, _BackendBase

_HIGHEST = re.compile(rb"\[HIGHESTMODSEQ (\d+)\]")
_VALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_FETCH = re.compile(rb"\* (\d+) FETCH \(UID (\d+) MODSEQ \((\d+)\) FLAGS \(([^)]*)\)\)")
_QRESYNC_FETCH = re.compile(rb"\* (\d+) FETCH \(UID (\d+) FLAGS \(([^)]*)\) MODSEQ \((\d+)\)\)")


def highest(response: bytes) -> int:
    found = _HIGHEST.findall(response)
    assert found, response
    return int(found[-1])


class _QresyncScenarios(_BackendBase):
    @defer.inlineCallbacks
    def qresync(self, select: str | None = "INBOX") -> Any:
        client = yield self.session(None)
        response = yield client.command("E", "ENABLE QRESYNC")
        assert response == b"* ENABLED QRESYNC\r\nE OK ENABLE completed\r\n", response
        if select is not None:
            yield client.command("S", f"SELECT {select}")
        return client

    @defer.inlineCallbacks
    def seeded(self, count: int) -> Any:
        first = yield self.session(None)  # creates the account
        yield first.command("Z", "LOGOUT")
        for n in range(1, count + 1):
            yield self.deliver(n)

    @defer.inlineCallbacks
    def test_resync_after_three_sessions_changed_things(self) -> Any:
        """A client notes HIGHESTMODSEQ and goes; a plain session and a
        CONDSTORE one change flags (one conditionally, one conflicting)
        and expunge; the client comes back and hears exactly that, while
        the sessions still open hear it their own way."""
        t: Any = self
        yield self.seeded(6)
        away = yield self.qresync(None)
        response = yield away.command("a", "SELECT INBOX")
        known = highest(response)
        validity = int(_VALIDITY.search(response).group(1))  # type: ignore[union-attr]
        yield away.command("b", "LOGOUT")
        plain = yield self.session()
        cond = yield self.session(None)
        response = yield cond.command("c", "SELECT INBOX (CONDSTORE)")
        t.assertEqual(highest(response), known)
        yield plain.command("p1", "STORE 2 +FLAGS (\\Seen)")
        # 5 is unchanged since "known": the conditional STORE goes through;
        # 2 is not, and is left alone and named.
        response = yield cond.command(
            "c1", f"UID STORE 2,5 (UNCHANGEDSINCE {known}) +FLAGS (\\Flagged)"
        )
        t.assertRegex(
            response,
            rb"\* 2 FETCH \(UID 2 MODSEQ \(\d+\) FLAGS \(\\Seen\)\)\r\n"
            rb"\* 5 FETCH \(UID 5 MODSEQ \(\d+\) FLAGS \(\\Flagged\)\)\r\n"
            rb"\* 2 FETCH \(UID 2 MODSEQ \(\d+\) FLAGS \(\\Seen\)\)\r\n"
            rb"c1 OK \[MODIFIED 2\] Conditional STORE failed for some messages\r\n$",
        )
        yield plain.command("p2", "STORE 4 +FLAGS (\\Deleted)")
        response = yield plain.command("p3", "EXPUNGE")
        t.assertIn(b"* 4 EXPUNGE\r\n", response)
        response = yield cond.command("c2", "NOOP")
        t.assertRegex(response, rb"\* 4 FETCH \(UID 4 MODSEQ|\* 4 EXPUNGE\r\n")
        t.assertIn(b"* 4 EXPUNGE\r\n", response)
        yield self.deliver(7)
        back = yield self.qresync(None)
        response = yield back.command("d", f"SELECT INBOX (QRESYNC ({validity} {known} 1:6))")
        t.assertIn(b"* 6 EXISTS\r\n", response)
        t.assertIn(b"* VANISHED (EARLIER) 4\r\n", response)
        changed = {int(m[1]): m[2] for m in _QRESYNC_FETCH.findall(response)}
        t.assertEqual(changed, {2: b"\\Seen", 5: b"\\Flagged"})
        modseqs = [int(m[3]) for m in _QRESYNC_FETCH.findall(response)]
        t.assertTrue(all(known < m <= highest(response) for m in modseqs), response)
        # The new message is not among the known UIDs: EXISTS told of it.
        response = yield back.command("e", "UID FETCH 7:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
        t.assertRegex(response, rb"^\* 6 FETCH \(FLAGS \([^)]*\) UID 7 MODSEQ \(\d+\)\)\r\n")
        # The plain session expunges; the QRESYNC one hears VANISHED, the
        # CONDSTORE one EXPUNGE, both with UID and MODSEQ on flag updates.
        yield plain.command("p4", "STORE 1 +FLAGS (\\Deleted)")
        yield plain.command("p5", "EXPUNGE")
        response = yield back.command("f", "NOOP")
        t.assertEqual(response, b"* VANISHED 1\r\nf OK NOOP completed\r\n")
        response = yield cond.command("g", "NOOP")
        t.assertTrue(response.startswith(b"* 1 EXPUNGE\r\n* 5 EXISTS\r\n"), response)
        # And the first session's HIGHESTMODSEQ now covers all of it.
        response = yield back.command("h", "STATUS INBOX (HIGHESTMODSEQ)")
        now = int(re.search(rb"HIGHESTMODSEQ (\d+)\)", response).group(1))  # type: ignore[union-attr]
        response = yield back.command("i", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {now} VANISHED)")
        t.assertEqual(response, b"i OK FETCH completed\r\n")

    @defer.inlineCallbacks
    def test_expunge_in_qresync_session(self) -> Any:
        """EXPUNGE answers VANISHED and a HIGHESTMODSEQ that a later
        CHANGEDSINCE with it finds nothing above."""
        t: Any = self
        yield self.seeded(3)
        client = yield self.qresync()
        yield client.command("a", "STORE 1,3 +FLAGS.SILENT (\\Deleted)")
        response = yield client.command("b", "EXPUNGE")
        t.assertRegex(
            response, rb"^\* VANISHED 1,3\r\nb OK \[HIGHESTMODSEQ \d+\] EXPUNGE completed\r\n$"
        )
        after = highest(response)
        response = yield client.command(
            "c", f"UID FETCH 1:3 (FLAGS) (CHANGEDSINCE {after} VANISHED)"
        )
        t.assertEqual(response, b"c OK FETCH completed\r\n")
        response = yield client.command(
            "d", f"UID FETCH 1:3 (FLAGS) (CHANGEDSINCE {after - 1} VANISHED)"
        )
        t.assertEqual(response, b"* VANISHED (EARLIER) 1,3\r\nd OK FETCH completed\r\n")


class MemoryQresyncTests(InMemory, _QresyncScenarios, TestCase):
    """The scenarios over the memory backend."""


class MaildirQresyncTests(_QresyncScenarios, TestCase):
    def make_storage(self) -> IStorage:
        from mailsrv.storage.maildir import MaildirStorage

        self.template = self.mktemp() + "/{user}"
        return MaildirStorage(self.template)

    def deliver(self, number: int) -> None:
        """As ``mailsrv deliver`` does: another storage object, as another
        process would (the daemon's hears of it at its next look)."""
        from mailsrv.storage.deliver import deliver
        from mailsrv.storage.maildir import MaildirStorage

        outsider = MaildirStorage(self.template)
        deliver(outsider.account("joe"), io.BytesIO(MESSAGE % (number, number)))


class PostgresQresyncTests(InPostgres, _QresyncScenarios, TestCase):
    """The scenarios over the PostgreSQL backend."""
