"""OBJECTID, SAVEDATE and PREVIEW across a real daemon's death (SIGKILL)
and an index rebuild: what RFC 8474 says must stay the same stays the same
(MAILBOXID, EMAILID, THREADID), and what the index alone keeps (save dates,
cached previews) is served again after the restart."""

from __future__ import annotations

import imaplib
import re

from tests.test_maildir_crash import DaemonCrashTestCase

_IDS = re.compile(
    rb"\((?=.*EMAILID \((M\w+)\))(?=.*THREADID \((T\w+)\))(?=.*SAVEDATE (NIL|\"[^\"]+\"))"
)


class ObjectIdRestartTests(DaemonCrashTestCase):
    def answers(self, client: imaplib.IMAP4) -> tuple[bytes, list[tuple[bytes, ...]], bytes]:
        """The MAILBOXID of Work, and of each of its messages (EMAILID,
        THREADID, SAVEDATE), and their previews as LAZY gives them."""
        status, data = client.status("Work", "(MAILBOXID)")
        self.assertEqual(status, "OK", data)
        assert isinstance(data[0], bytes)
        mailbox = re.search(rb"MAILBOXID \((\w+)\)", data[0])
        assert mailbox is not None, data
        self.select(client, "Work")
        selected = client.response("MAILBOXID")[1][0]
        self.assertEqual(selected, b"(" + mailbox.group(1) + b")")
        status, data = client.fetch("1:*", "(EMAILID THREADID SAVEDATE)")
        self.assertEqual(status, "OK", data)
        ids = []
        for line in data:
            assert isinstance(line, bytes)
            found = _IDS.search(line)
            assert found is not None, line
            ids.append(found.groups())
        status, data = client.fetch("1:*", "(PREVIEW (LAZY))")
        self.assertEqual(status, "OK", data)
        return mailbox.group(1), ids, b" ".join(d for d in data if isinstance(d, bytes))

    def test_killed_and_reindexed(self) -> None:
        daemon = self.start()
        admin = self.login()
        self.assertEqual(admin.create("Work")[0], "OK")
        for subject in ("first", "second"):
            self.appenduid(admin, "Work", subject)
        self.select(admin, "Work")
        status, data = admin.fetch("1:*", "(PREVIEW)")
        self.assertEqual(status, "OK", data)
        before = self.answers(admin)
        self.assertEqual(len(before[1]), 2)
        self.assertNotIn(b"NIL", before[2])
        self.assertNotEqual(before[1][0][0], before[1][1][0])
        self.kill(daemon)

        daemon = self.start()
        self.assertEqual(self.answers(self.login()), before)
        self.kill(daemon)

        # A rebuilt index: the IDs are the same; the save dates and the
        # cached previews were the index's alone.
        reindexed = self.run_mailsrv("reindex", "alice")
        self.assertEqual(reindexed.returncode, 0, reindexed.stderr)
        self.start()
        mailbox, ids, previews = self.answers(self.login())
        self.assertEqual(mailbox, before[0])
        self.assertEqual([i[:2] for i in ids], [i[:2] for i in before[1]])
        self.assertEqual([i[2] for i in ids], [b"NIL", b"NIL"])
        self.assertEqual(previews.count(b"PREVIEW NIL"), 2, previews)
