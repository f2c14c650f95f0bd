"""What QRESYNC needs of the Maildir backend beyond the shared contract:
the expunge log's retention and floor, an index rebuilt from the files
answering for what it cannot know, and MODSEQs that never go back across a
restart or a rebuild (docs/maildir.md, "The expunge log")."""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
from collections.abc import Sequence

from mailsrv.interfaces import DELETED, SEEN, StoreMode
from mailsrv.storage.maildir import MaildirMailbox, index
from mailsrv.storage.maildir.recovery import read_floor
from tests.maildir_case import MaildirTestCase

INDEX = "mailsrv-index.sqlite"


def listed(uids: Sequence[int] | None) -> list[int] | None:
    """``uids`` as a list, None kept (the log no longer reaches back)."""
    return None if uids is None else list(uids)


class ExpungeLogTests(MaildirTestCase):
    def seeded(self, count: int) -> tuple[MaildirMailbox, list[int]]:
        inbox = self.inbox()
        uids = [inbox.append(io.BytesIO(b"Subject: %d\r\n\r\n" % n)) for n in range(count)]
        return inbox, uids

    def expunge(self, inbox: MaildirMailbox, uids: list[int]) -> int:
        """Expunge ``uids`` at once; the MODSEQ it took."""
        inbox.store(uids, [DELETED], StoreMode.ADD)
        self.assertEqual(list(inbox.expunge()), uids)
        return inbox.highest_modseq

    def meta(self, key: str) -> object:
        db = sqlite3.connect(os.path.join(self.root, INDEX))
        try:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else row[0]
        finally:
            db.close()

    def log_rows(self) -> list[tuple[int, int]]:
        db = sqlite3.connect(os.path.join(self.root, INDEX))
        try:
            return [tuple(r) for r in db.execute("SELECT uid, modseq FROM expunged ORDER BY uid")]
        finally:
            db.close()

    def test_the_log_keeps_its_limit(self) -> None:
        """Beyond EXPUNGE_LOG_LIMIT entries the oldest go, whole MODSEQs at
        a time; the floor rises to the highest dropped, and answers below
        it are every missing UID."""
        self.patch(index, "EXPUNGE_LOG_LIMIT", 3)
        inbox, uids = self.seeded(10)
        start = inbox.highest_modseq
        modseqs = [self.expunge(inbox, [uid]) for uid in uids[:5]]
        self.assertEqual(self.log_rows(), [(uids[n], modseqs[n]) for n in (2, 3, 4)])
        self.assertEqual(self.meta("expunged_floor"), modseqs[1])
        self.assertEqual(self.meta("expunged_rows"), 3)
        self.assertEqual(listed(inbox.vanished_since(modseqs[1])), uids[2:5])
        self.assertIsNone(inbox.vanished_since(modseqs[1] - 1))
        self.assertIsNone(inbox.vanished_since(start))
        self.assertEqual(list(inbox.expunged_since(start)), uids[:5])
        # Four at once, over the limit: the whole MODSEQ goes.
        last = self.expunge(inbox, uids[5:9])
        self.assertEqual(self.log_rows(), [])
        self.assertEqual(self.meta("expunged_floor"), last)
        self.assertEqual(listed(inbox.vanished_since(last)), [])
        self.assertIsNone(inbox.vanished_since(last - 1))
        self.assertEqual(list(inbox.expunged_since(0)), uids[:9])
        self.assertEqual(list(inbox.uids()), uids[9:])

    def test_an_index_from_before_the_limit(self) -> None:
        """An index made before the log was counted (no floor, no count)
        counts it at its next expunge and keeps an exact log."""
        inbox, uids = self.seeded(3)
        first = self.expunge(inbox, uids[:1])
        db = sqlite3.connect(os.path.join(self.root, INDEX))
        db.execute("DELETE FROM meta WHERE key IN ('expunged_floor', 'expunged_rows')")
        db.commit()
        db.close()
        inbox = self.inbox()
        self.expunge(inbox, uids[1:2])
        self.assertEqual(self.meta("expunged_rows"), 2)
        self.assertEqual(listed(inbox.vanished_since(0)), uids[:2])
        self.assertEqual(listed(inbox.vanished_since(first)), uids[1:2])


class RebuiltIndexTests(MaildirTestCase):
    def drop_index(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            path = os.path.join(self.root, INDEX + suffix)
            if os.path.exists(path):
                os.unlink(path)

    def test_a_rebuilt_index_knows_it_forgot(self) -> None:
        """Rebuilt from the files: every MODSEQ above any handed out, so
        every message counts as changed since what a client holds; the
        expunges before the rebuild are unknown to its log (None), and
        ``expunged_since`` answers with every missing UID."""
        inbox = self.inbox()
        uids = [inbox.append(io.BytesIO(b"Subject: %d\r\n\r\n" % n)) for n in range(4)]
        inbox.store([uids[1]], [DELETED], StoreMode.ADD)
        inbox.expunge()
        inbox.store([uids[3]], [SEEN], StoreMode.ADD)
        seen = inbox.highest_modseq
        self.drop_index()
        again = self.inbox()
        self.assertGreater(again.highest_modseq, seen)
        self.assertEqual(list(again.changed_uids(seen)), [uids[0], uids[2], uids[3]])
        self.assertIsNone(again.vanished_since(seen))
        self.assertEqual(list(again.expunged_since(seen)), [uids[1]])
        # From the rebuild on, the log is exact again.
        rebuilt = again.highest_modseq
        again.store([uids[0]], [DELETED], StoreMode.ADD)
        again.expunge()
        self.assertEqual(listed(again.vanished_since(rebuilt)), [uids[0]])

    def test_modseqs_never_go_back(self) -> None:
        """Across a restart the index keeps HIGHESTMODSEQ; an index put back
        from an older copy (its HIGHESTMODSEQ below the floor kept in
        ``mailsrv-lock``) is rebuilt above everything handed out."""
        inbox = self.inbox()
        uid = inbox.append(io.BytesIO(b"Subject: 1\r\n\r\n"))
        inbox.close()
        old = os.path.join(self.base, "old-index")
        shutil.copyfile(os.path.join(self.root, INDEX), old)
        inbox = self.inbox()
        for flag in (SEEN, DELETED, "$Later"):
            inbox.store([uid], [flag], StoreMode.ADD)
        handed_out = inbox.highest_modseq
        inbox.close()
        self.assertEqual(self.inbox().highest_modseq, handed_out)
        with open(os.path.join(self.root, "mailsrv-lock"), "rb") as lock:
            self.assertEqual(read_floor(lock.fileno()), handed_out)
        self.drop_index()
        shutil.copyfile(old, os.path.join(self.root, INDEX))
        again = self.inbox()
        self.assertGreater(again.highest_modseq, handed_out)
        self.assertEqual(list(again.changed_uids(handed_out)), [uid])
        self.assertEqual(again.fetch([uid])[0].flags, frozenset({SEEN, DELETED, "$Later"}))


class UidCacheTests(MaildirTestCase):
    def test_flag_changes_keep_the_uid_list(self) -> None:
        """The UID runs a SELECT reads are kept across flag changes, by this
        process or another (a reconnect after 10 STOREs does not reread
        100,000 UIDs), and read again once messages come or go, from
        whichever process (new ones only: those above the last run)."""
        inbox = self.inbox()
        uids = [inbox.append(io.BytesIO(b"Subject: %d\r\n\r\n" % n)) for n in range(4)]
        reads: list[int] = []
        real = index.Index.uid_runs

        def counted(db: index.Index, above: int = 0) -> list[tuple[int, int]]:
            reads.append(above)
            return real(db, above)

        self.patch(index.Index, "uid_runs", counted)
        first = inbox.uid_runs()
        self.assertEqual(list(inbox.uids()), uids)
        other = self.inbox()  # another process's view of the same folder
        other.store(uids[:2], [SEEN], StoreMode.ADD)
        inbox.store(uids[2:], ["$Later"], StoreMode.ADD)
        self.assertIs(inbox.uid_runs(), first)
        self.assertEqual(reads, [0])
        other.store([uids[0]], [DELETED], StoreMode.ADD)
        other.expunge()
        self.assertEqual(list(inbox.uids()), uids[1:])
        added = other.append(io.BytesIO(b"Subject: new\r\n\r\n"))
        self.assertEqual(list(inbox.uids()), [*uids[1:], added])
        self.assertEqual(inbox.uid_runs(), [(uids[1], added)])
        self.assertEqual(reads, [0, 0, uids[-1]])
