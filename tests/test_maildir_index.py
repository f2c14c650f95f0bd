"""Maildir++ index and UID list: what survives a restart, a lost or damaged
index, a reindex by another process and a compaction."""

from __future__ import annotations

import io
import os
import sqlite3

from twisted.internet import defer

from mailsrv import criteria
from mailsrv.interfaces import (
    StoreMode,
)
from mailsrv.storage.maildir import MaildirMailbox, reindex
from mailsrv.storage.maildir.keywords import KeywordTable
from mailsrv.storage.maildir.sqlsearch import where
from tests.maildir_case import MESSAGE, MESSAGE_CRLF, MaildirTestCase, Recorder


class PersistenceTests(MaildirTestCase):
    def fill(self) -> tuple[MaildirMailbox, list[int]]:
        inbox = self.inbox()
        uids = [inbox.append(io.BytesIO(MESSAGE + str(i).encode())) for i in range(5)]
        inbox.store(uids[:2], ["\\Deleted"], StoreMode.ADD)
        inbox.expunge()
        inbox.store([uids[2]], ["\\Seen", "custom"], StoreMode.ADD)
        return inbox, uids

    def assertSame(self, inbox: MaildirMailbox, uids: list[int], validity: int) -> None:
        self.assertEqual(inbox.uidvalidity, validity)
        self.assertEqual(list(inbox.uids()), uids[2:])
        self.assertEqual(inbox.fetch([uids[2]])[0].flags, frozenset({"\\Seen", "custom"}))
        self.assertEqual(self.read(inbox, uids[3]), MESSAGE_CRLF + b"3")
        new = inbox.append(io.BytesIO(MESSAGE))
        self.assertEqual(new, uids[-1] + 1)

    def test_restart(self) -> None:
        inbox, uids = self.fill()
        validity = inbox.uidvalidity
        self.assertSame(self.inbox(), uids, validity)
        status = self.storage().account("alice").status("INBOX")
        assert not isinstance(status, defer.Deferred)
        self.assertEqual(status.messages, 4)

    def test_reindex(self) -> None:
        inbox, uids = self.fill()
        validity = inbox.uidvalidity
        counts = reindex(self.account())
        self.assertEqual(counts["INBOX"], 3)
        self.assertEqual(counts["Sent"], 0)
        self.assertSame(self.inbox(), uids, validity)

    def test_index_deleted(self) -> None:
        inbox, uids = self.fill()
        validity = inbox.uidvalidity
        modseq = inbox.highest_modseq
        del inbox
        for suffix in ("", "-wal", "-shm"):
            path = os.path.join(self.root, "mailsrv-index.sqlite" + suffix)
            if os.path.exists(path):
                os.unlink(path)
        fresh = self.inbox()
        self.assertGreater(fresh.highest_modseq, modseq)
        self.assertSame(fresh, uids, validity)

    def test_index_garbage(self) -> None:
        inbox, uids = self.fill()
        validity = inbox.uidvalidity
        del inbox
        for suffix in ("-wal", "-shm"):
            path = os.path.join(self.root, "mailsrv-index.sqlite" + suffix)
            if os.path.exists(path):
                os.unlink(path)
        with open(os.path.join(self.root, "mailsrv-index.sqlite"), "wb") as handle:
            handle.write(b"this is not a database\n" * 100)
        self.assertSame(self.inbox(), uids, validity)

    def test_index_wrong_schema(self) -> None:
        inbox, uids = self.fill()
        validity = inbox.uidvalidity
        db = sqlite3.connect(os.path.join(self.root, "mailsrv-index.sqlite"))
        db.execute("DROP TABLE messages")
        db.commit()
        db.close()
        del inbox
        self.assertSame(self.storage().account("alice").open_mailbox("INBOX"), uids, validity)

    def test_uidlist_deleted(self) -> None:
        inbox, uids = self.fill()
        validity = inbox.uidvalidity
        del inbox
        os.unlink(os.path.join(self.root, "mailsrv-uidlist"))
        self.assertSame(self.inbox(), uids, validity)

    def test_expunged_uid_not_reused_after_index_loss(self) -> None:
        inbox = self.inbox()
        first = inbox.append(io.BytesIO(MESSAGE))
        last = inbox.append(io.BytesIO(MESSAGE))
        inbox.store([last], ["\\Deleted"], StoreMode.ADD)
        inbox.expunge()
        del inbox
        os.unlink(os.path.join(self.root, "mailsrv-index.sqlite"))
        fresh = self.inbox()
        self.assertEqual(fresh.uids(), (first,))
        self.assertGreater(fresh.append(io.BytesIO(MESSAGE)), last)

    def test_reindex_by_another_process(self) -> None:
        daemon = self.inbox()
        recorder = Recorder()
        daemon.add_listener(recorder)
        first = daemon.append(io.BytesIO(MESSAGE))
        reindex(self.storage().account("alice"))  # "mailsrv reindex alice"
        second = daemon.append(io.BytesIO(MESSAGE))
        self.assertEqual(second, first + 1)
        # The daemon wrote to the new index file, not the one it had open.
        db = sqlite3.connect(os.path.join(self.root, "mailsrv-index.sqlite"))
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT uid FROM messages").fetchall(), [(first,), (second,)])
        self.assertEqual(daemon.uids(), (first, second))
        self.assertEqual(self.inbox().uids(), (first, second))
        daemon.check()
        self.assertEqual(recorder.added, [first, second])

    def test_uidvalidity_differs_after_recreate(self) -> None:
        account = self.account()
        account.create_mailbox("box")
        first = account.open_mailbox("box").uidvalidity
        account.delete_mailbox("box")
        account.create_mailbox("box")
        self.assertNotEqual(account.open_mailbox("box").uidvalidity, first)

    def test_uidlist_compacted(self) -> None:
        inbox = self.inbox()
        uids = [inbox.append(io.BytesIO(b"x")) for i in range(1100)]
        inbox.store(uids[:-1], ["\\Deleted"], StoreMode.ADD)
        inbox.expunge()
        with open(os.path.join(self.root, "mailsrv-uidlist")) as handle:
            lines = handle.read().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertIn(f"N{uids[-1] + 1}", lines[0])
        del inbox
        os.unlink(os.path.join(self.root, "mailsrv-index.sqlite"))
        fresh = self.inbox()
        self.assertEqual(fresh.uids(), (uids[-1],))
        self.assertEqual(fresh.append(io.BytesIO(b"y")), uids[-1] + 1)


class UnseenIndexTests(MaildirTestCase):
    """Schema 3's index of unseen messages, which SEARCH UNSEEN reads."""

    def plan(self) -> str:
        unseen = criteria.And((criteria.UidIn(((1, 10),)), criteria.Not(criteria.Flag("\\Seen"))))
        condition, args = where(unseen, KeywordTable(os.path.join(self.root, "none")))
        db = sqlite3.connect(os.path.join(self.root, "mailsrv-index.sqlite"))
        try:
            rows = db.execute(
                f"EXPLAIN QUERY PLAN SELECT uid FROM messages WHERE {condition}", args
            )
            return " ".join(str(row[-1]) for row in rows)
        finally:
            db.close()

    def test_search_unseen_reads_the_index(self) -> None:
        inbox = self.inbox()
        uids = [inbox.append(io.BytesIO(MESSAGE + str(i).encode())) for i in range(4)]
        inbox.store(uids[::2], ["\\Seen"], StoreMode.ADD)
        self.assertIn("messages_unseen", self.plan())
        self.assertEqual(list(inbox.search_index(_unseen())), uids[1::2])

    def test_search_flagged_reads_its_index(self) -> None:
        """Schema 4's indexes of the system flags: SEEN, FLAGGED, ANSWERED,
        DELETED and DRAFT read only the messages that have them."""
        inbox = self.inbox()
        uids = [inbox.append(io.BytesIO(MESSAGE + str(i).encode())) for i in range(6)]
        inbox.store(uids[1::3], ["\\Flagged", "\\Deleted"], StoreMode.ADD)
        inbox.store(uids[::2], ["\\Answered", "\\Draft"], StoreMode.ADD)
        inbox.store(uids[:2], ["\\Seen"], StoreMode.ADD)
        table = KeywordTable(os.path.join(self.root, "none"))
        db = sqlite3.connect(os.path.join(self.root, "mailsrv-index.sqlite"))
        self.addCleanup(db.close)
        for flag, name, expected in (
            ("\\Seen", "seen", uids[:2]),
            ("\\Flagged", "flagged", uids[1::3]),
            ("\\Answered", "answered", uids[::2]),
            ("\\Deleted", "deleted", uids[1::3]),
            ("\\Draft", "draft", uids[::2]),
        ):
            test = criteria.And((criteria.UidIn(((1, 10),)), criteria.Flag(flag)))
            condition, args = where(test, table)
            rows = db.execute(
                f"EXPLAIN QUERY PLAN SELECT uid FROM messages WHERE {condition}", args
            )
            self.assertIn(f"messages_{name}", " ".join(str(row[-1]) for row in rows))
            self.assertEqual(list(inbox.search_index(criteria.Flag(flag))), expected)
        # UNSEEN UNDELETED: the unseen messages, less the few deleted ones,
        # with no row read.
        test = criteria.And((_unseen(), criteria.Not(criteria.Flag("\\Deleted"))))
        condition, args = where(test, table)
        rows = db.execute(f"EXPLAIN QUERY PLAN SELECT uid FROM messages WHERE {condition}", args)
        plan = " ".join(str(row[-1]) for row in rows)
        self.assertIn("messages_unseen", plan)
        self.assertIn("messages_deleted", plan)
        unseen = set(inbox.search_index(_unseen()))
        self.assertEqual(
            list(inbox.search_index(test)), [u for u in uids if u in unseen and u not in uids[1::3]]
        )

    def test_schema_2_upgraded_in_place(self) -> None:
        inbox = self.inbox()
        uids = [inbox.append(io.BytesIO(MESSAGE + str(i).encode())) for i in range(3)]
        inbox.store([uids[0]], ["\\Seen"], StoreMode.ADD)
        validity = inbox.uidvalidity
        del inbox
        db = sqlite3.connect(os.path.join(self.root, "mailsrv-index.sqlite"))
        db.execute("DROP INDEX messages_unseen")
        db.execute("UPDATE meta SET value = 2 WHERE key = 'schema'")
        db.commit()
        db.close()
        inbox = self.inbox()
        self.assertEqual(inbox.uidvalidity, validity)
        self.assertEqual(list(inbox.search_index(_unseen())), uids[1:])
        self.assertIn("messages_unseen", self.plan())


def _unseen() -> criteria.Criterion:
    return criteria.Not(criteria.Flag("\\Seen"))
