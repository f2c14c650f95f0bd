"""Maildir storage after damage: a broken index, a torn UID list, a failure
after a message file landed, and MOVE killed at every step.

Files are damaged the way a crash or a disk damages them, writers are
killed with SIGKILL (by a fault point, ``MAILSRV_CRASH_AT``, so at an exact
instant), and what is checked is what a client or an administrator sees
afterwards: the messages, their UIDs and flags, UIDVALIDITY, HIGHESTMODSEQ,
the files on disk and the log.  tests/test_maildir_crash.py does the same
with a real daemon over IMAP.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from typing import Any, cast

from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher

from mailsrv import cli
from mailsrv.interfaces import StoreMode
from mailsrv.storage.maildir import MaildirMailbox, MaildirStorage, reindex
from mailsrv.storage.maildir.index import Index
from tests.helpers import source_env
from tests.maildir_case import MaildirTestCase, Recorder

INDEX = "mailsrv-index.sqlite"
UIDLIST = "mailsrv-uidlist"
MESSAGE_ID = re.compile(rb"^Message-ID: (<[^>]+>)\r$", re.MULTILINE)

# A writer that is killed (SIGKILL) after its work, leaving the index's WAL
# behind as a crash does.  It prints the state a client saw as JSON.
KILLED_WRITER = r"""
import io, json, os, signal, sqlite3, sys
from mailsrv import cli
from mailsrv.interfaces import StoreMode
from mailsrv.storage.maildir import MaildirStorage

template, tag, count, checkpoint = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
inbox = MaildirStorage(template).account("alice").open_mailbox("INBOX")
uids = [
    inbox.append(io.BytesIO(b"Message-ID: <%s.%d@test>\r\n\r\nbody %d\r\n" % (tag.encode(), i, i)))
    for i in range(count)
]
if checkpoint == "yes":
    # Most pages into the database file, as SQLite's own checkpoints do.
    db = sqlite3.connect(os.path.join(inbox.path, "mailsrv-index.sqlite"))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
inbox.store(uids[: count // 4], ["\\Seen", "kept"], StoreMode.ADD)
inbox.store(uids[-count // 8 :], ["\\Deleted"], StoreMode.ADD)
inbox.expunge()
state = {
    "uidvalidity": inbox.uidvalidity,
    "modseq": inbox.highest_modseq,
    "uids": {str(m.uid): sorted(m.flags) for m in inbox.fetch(inbox.uids())},
}
sys.stdout.write(json.dumps(state) + "\n")
sys.stdout.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""

# Moves INBOX messages to Archive; run with MAILSRV_CRASH_AT to die inside.
MOVER = r"""
import sys
from mailsrv.storage.maildir import MaildirStorage

template, uids = sys.argv[1], [int(u) for u in sys.argv[2].split(",")]
account = MaildirStorage(template).account("alice")
inbox = account.open_mailbox("INBOX")
pairs = inbox.move(uids, account.open_mailbox("Archive"))
sys.stdout.write(repr(pairs) + "\n")
"""

# RENAME INBOX Old; run with MAILSRV_CRASH_AT to die inside.
RENAMER = r"""
import sys
from mailsrv.storage.maildir import MaildirStorage

MaildirStorage(sys.argv[1]).account("alice").rename_mailbox("INBOX", "Old")
"""

# Appends one message; run with MAILSRV_CRASH_AT=append-placed to die after
# the file is in cur/ and before the index knows it.
APPENDER = r"""
import io, sys
from mailsrv.storage.maildir import MaildirStorage

template, msgid = sys.argv[1], sys.argv[2]
inbox = MaildirStorage(template).account("alice").open_mailbox("INBOX")
inbox.append(io.BytesIO(b"Message-ID: %s\r\n\r\nbody\r\n" % msgid.encode()))
"""


class RecoveryTestCase(MaildirTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def warnings(self) -> list[str]:
        return [
            formatEvent(event)
            for event in self.events
            if event.get("log_level") == LogLevel.warn
            and event.get("log_namespace") == "mailsrv.storage.maildir"
        ]

    def run_child(
        self, script: str, *args: str, crash_at: str | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        env = source_env()
        if crash_at is not None:
            env["MAILSRV_CRASH_AT"] = crash_at
        return subprocess.run(
            [sys.executable, "-c", script, self.template, *args],
            env=env,
            stdout=subprocess.PIPE,
            timeout=60,
            check=False,
        )

    def killed_writer(
        self, tag: str = "a", count: int = 200, checkpoint: bool = False
    ) -> dict[str, Any]:
        child = self.run_child(KILLED_WRITER, tag, str(count), "yes" if checkpoint else "no")
        self.assertEqual(child.returncode, -signal.SIGKILL)
        state: dict[str, Any] = json.loads(child.stdout)
        self.assertTrue(os.path.getsize(self.path(INDEX + "-wal")) > 0)
        return state

    def path(self, name: str, folder: str = "") -> str:
        return os.path.join(self.root, folder, name)

    def flags_by_uid(self, mailbox: MaildirMailbox) -> dict[str, list[str]]:
        return {str(m.uid): sorted(m.flags) for m in mailbox.fetch(mailbox.uids())}

    def message_ids(self, mailbox: MaildirMailbox) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        for uid in mailbox.uids():
            match = MESSAGE_ID.search(self.read(mailbox, uid))
            assert match is not None
            found[uid] = match.group(1)
        return found

    def uidlist_lines(self, folder: str = "") -> list[bytes]:
        with open(self.path(UIDLIST, folder), "rb") as handle:
            return handle.read().split(b"\n")

    def drop_index(self, folder: str = "") -> None:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path(INDEX + suffix, folder)):
                os.unlink(self.path(INDEX + suffix, folder))


class DamagedIndexTests(RecoveryTestCase):
    """Issue item 1: a damaged index is rebuilt, with the same UIDVALIDITY,
    UIDs and flags, and MODSEQs above any a client was given."""

    def assertRebuilt(self, state: dict[str, Any]) -> MaildirMailbox:
        inbox = self.inbox()
        self.assertEqual(inbox.uidvalidity, state["uidvalidity"])
        self.assertEqual(self.flags_by_uid(inbox), state["uids"])
        self.assertGreater(inbox.highest_modseq, state["modseq"])
        self.assertTrue(
            any("rebuilding it from the files" in line for line in self.warnings()),
            self.warnings(),
        )
        top = max(int(uid) for uid in state["uids"])
        self.assertGreater(inbox.append(io.BytesIO(b"Subject: after\r\n\r\n")), top)
        return inbox

    def test_random_bytes_under_a_wal(self) -> None:
        state = self.killed_writer()
        size = os.path.getsize(self.path(INDEX))
        with open(self.path(INDEX), "wb") as handle:
            handle.write(os.urandom(size))
        self.assertRebuilt(state)
        # Kept for diagnosis, WAL and all.
        self.assertEqual(os.path.getsize(self.path(INDEX + ".broken")), size)
        self.assertTrue(os.path.exists(self.path(INDEX + ".broken-wal")))

    def test_truncated_to_half(self) -> None:
        state = self.killed_writer(count=400, checkpoint=True)
        os.truncate(self.path(INDEX), os.path.getsize(self.path(INDEX)) // 2)
        self.assertRebuilt(state)

    def test_wal_from_another_time(self) -> None:
        self.killed_writer("a")
        shutil.copyfile(self.path(INDEX + "-wal"), self.path("old-wal"))
        state = self.killed_writer("b")
        shutil.copyfile(self.path("old-wal"), self.path(INDEX + "-wal"))
        self.assertRebuilt(state)

    def test_wal_lost(self) -> None:
        state = self.killed_writer()
        os.unlink(self.path(INDEX + "-wal"))
        self.assertRebuilt(state)

    def test_damage_found_in_the_middle_of_a_command(self) -> None:
        inbox = self.inbox()
        uids = [inbox.append(io.BytesIO(b"Subject: %d\r\n\r\n" % i)) for i in range(5)]
        inbox.store(uids[:2], ["\\Flagged"], StoreMode.ADD)
        recorder = Recorder()
        inbox.add_listener(recorder)
        self.assertEqual(inbox.uids(), tuple(uids))
        modseq = inbox.highest_modseq
        real = Index.summaries
        failures: list[Index] = []

        def malformed(index: Index, *args: Any) -> Any:
            if not failures:
                failures.append(index)
                raise sqlite3.DatabaseError("database disk image is malformed")
            return real(index, *args)

        self.patch(Index, "summaries", malformed)
        fetched = inbox.fetch(uids)
        self.assertEqual([m.uid for m in fetched], uids)
        self.assertEqual([bool(m.flags) for m in fetched], [True, True, False, False, False])
        self.assertGreater(inbox.highest_modseq, modseq)
        self.assertTrue(os.path.exists(self.path(INDEX + ".broken")))
        self.assertIn("database disk image is malformed", "".join(self.warnings()))
        self.assertEqual((recorder.added, recorder.expunged), ([], []))
        # The same object goes on working with the rebuilt index.
        self.assertEqual(inbox.append(io.BytesIO(b"Subject: next\r\n\r\n")), uids[-1] + 1)

    def test_reindex_repairs_a_damaged_index(self) -> None:
        state = self.killed_writer()
        with open(self.path(INDEX), "r+b") as handle:
            handle.write(os.urandom(os.path.getsize(self.path(INDEX))))
        # Postfix delivered meanwhile: opening the folder lists cur/ and new/.
        self.drop_into_new(b"Message-ID: <postfix@test>\n\nbody\n", "1700000000.P1Q1.mx")
        passwd = os.path.join(self.base, "passwd")
        cli.main(
            ["user", "add", "alice", "--passwd", passwd, "--password-stdin"],
            stdin=io.StringIO("pw\n"),
            stdout=io.StringIO(),
        )
        out = io.StringIO()
        status = cli.main(
            ["reindex", "alice", "--passwd", passwd, "--maildir", self.template], stdout=out
        )
        self.assertEqual(status, cli.EX_OK)
        self.assertIn(f"INBOX: {len(state['uids']) + 1} messages", out.getvalue())
        inbox = self.inbox()
        self.assertEqual(inbox.uidvalidity, state["uidvalidity"])
        flags = self.flags_by_uid(inbox)
        delivered = str(max(int(uid) for uid in flags))
        self.assertEqual(flags.pop(delivered), [])
        self.assertEqual(flags, state["uids"])
        self.assertGreater(inbox.highest_modseq, state["modseq"])

    def test_reindex_after_the_folder_listed_cur(self) -> None:
        """A rebuild's new index is not mistaken for the old one: the file
        names the folder remembered of the old index (cached by SQLite's
        data_version, which a new connection starts again) must not make
        the rebuild take every file as indexed already, and index none."""
        inbox = self.inbox()
        for n in range(3):
            inbox.append(io.BytesIO(b"Subject: %d\r\n\r\nbody\r\n" % n), [], None)
        # As after a while (or a crash): cur/'s recorded signature is not
        # trusted, so the next process to open the folder lists cur/ (and
        # finds nothing new) before mailsrv reindex rebuilds it.
        db = sqlite3.connect(self.path(INDEX))
        db.execute("DELETE FROM meta WHERE key = 'sig_cur'")
        db.commit()
        db.close()
        account = MaildirStorage(self.template).account("alice")
        self.assertEqual(reindex(account)["INBOX"], 3)
        self.assertEqual(len(account.open_mailbox("INBOX").uids()), 3)

    def test_only_the_latest_damaged_index_is_kept(self) -> None:
        for round_number in range(3):
            self.killed_writer(f"r{round_number}", count=20, checkpoint=True)
            with open(self.path(INDEX), "r+b") as handle:
                handle.write(os.urandom(os.path.getsize(self.path(INDEX))))
            self.inbox()
        kept = sorted(name for name in os.listdir(self.root) if ".broken" in name)
        self.assertEqual(kept, [INDEX + ".broken", INDEX + ".broken-shm", INDEX + ".broken-wal"])


class FileIsTheTruthTests(RecoveryTestCase):
    """Issue item 2: once a message file is in place the command has
    happened (RFC 3501 6.3.11); before that, failing leaves nothing behind."""

    def failing(self, method: str, error: Exception) -> Any:
        """Make ``Index.method`` fail; returns the patch, to restore."""

        def fail(index: Index, *args: Any) -> None:
            raise error

        return self.patch(Index, method, fail)

    def test_append_stands_when_the_index_commit_fails(self) -> None:
        inbox = self.inbox()
        first = inbox.append(io.BytesIO(b"Subject: one\r\n\r\n"))
        patched = self.failing("insert", sqlite3.OperationalError("disk I/O error"))
        self.assertEqual(inbox.append(io.BytesIO(b"Subject: kept\r\n\r\n")), first + 1)
        self.assertIn("could not record a change", "".join(self.warnings()))
        patched.restore()
        # The next look at the folder indexes it under the UID it was given.
        inbox.check()
        self.assertEqual(inbox.uids(), (first, first + 1))
        self.assertEqual(self.read(self.inbox(), first + 1), b"Subject: kept\r\n\r\n")

    def test_append_stands_when_the_index_is_damaged_at_commit(self) -> None:
        inbox = self.inbox()
        first = inbox.append(io.BytesIO(b"Subject: one\r\n\r\n"))
        real = Index.insert
        calls: list[int] = []

        def malformed(index: Index, rows: Any) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise sqlite3.DatabaseError("database disk image is malformed")
            real(index, rows)

        self.patch(Index, "insert", malformed)
        self.assertEqual(inbox.append(io.BytesIO(b"Subject: kept\r\n\r\n")), first + 1)
        self.assertEqual(inbox.uids(), (first, first + 1))
        self.assertEqual(len(self.cur_files()), 2)

    def test_copy_stands_when_the_destination_index_fails(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(io.BytesIO(b"Subject: one\r\n\r\n"))
        sent = self.account().open_mailbox("Sent")
        patched = self.failing("insert", sqlite3.OperationalError("database is locked"))
        pairs = inbox.copy([uid], sent)
        self.assertIn("could not record a change", "".join(self.warnings()))
        patched.restore()
        self.assertEqual(len(pairs), 1)
        fresh = self.account().open_mailbox("Sent")
        self.assertEqual(fresh.uids(), (pairs[0][1],))

    def test_copy_failing_midway_leaves_no_copy(self) -> None:
        inbox = self.inbox()
        uids = [inbox.append(io.BytesIO(b"Subject: %d\r\n\r\n" % i)) for i in range(3)]
        sent = self.account().open_mailbox("Sent")
        real = os.rename
        calls: list[str] = []

        def rename(source: str, target: str) -> None:
            if os.sep + "cur" + os.sep in target and ".Sent" in target:
                calls.append(target)
                if len(calls) == 2:
                    raise OSError(5, "Input/output error")
            real(source, target)

        patched = self.patch(os, "rename", rename)
        self.assertRaises(OSError, inbox.copy, uids, sent)
        patched.restore()
        # A NO means not copied: a client's retry must not make duplicates.
        self.assertEqual(self.cur_files(".Sent"), [])
        self.assertEqual(self.account().open_mailbox("Sent").uids(), ())
        self.assertEqual(len(inbox.copy(uids, sent)), 3)
        self.assertEqual(len(self.cur_files(".Sent")), 3)

    def test_store_stands_when_the_index_commit_fails(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(io.BytesIO(b"Subject: one\r\n\r\n"))
        patched = self.failing("update_file", sqlite3.OperationalError("disk I/O error"))
        result = inbox.store([uid], ["\\Seen"], StoreMode.ADD)
        self.assertIn("could not record a change", "".join(self.warnings()))
        self.assertEqual([m.flags for m in result.updated], [frozenset({"\\Seen"})])
        patched.restore()
        self.assertEqual(self.inbox().fetch([uid])[0].flags, frozenset({"\\Seen"}))

    def test_expunge_stands_when_the_index_commit_fails(self) -> None:
        inbox = self.inbox()
        uids = [inbox.append(io.BytesIO(b"Subject: %d\r\n\r\n" % i)) for i in range(2)]
        inbox.store(uids[:1], ["\\Deleted"], StoreMode.ADD)
        patched = self.failing("delete", sqlite3.OperationalError("disk I/O error"))
        self.assertEqual(inbox.expunge(), [uids[0]])
        self.assertIn("could not record a change", "".join(self.warnings()))
        patched.restore()
        self.assertEqual(self.inbox().uids(), (uids[1],))

    def test_deliver_exits_0_once_the_message_landed(self) -> None:
        """An exit status of 75 makes the MTA deliver the message again."""
        passwd = os.path.join(self.base, "passwd")
        cli.main(
            ["user", "add", "alice", "--passwd", passwd, "--password-stdin"],
            stdin=io.StringIO("pw\n"),
            stdout=io.StringIO(),
        )
        self.inbox()
        patched = self.failing("insert", sqlite3.OperationalError("database is locked"))
        err = io.StringIO()
        status = cli.main(
            ["deliver", "alice", "--passwd", passwd, "--maildir", self.template],
            stdin=io.BytesIO(b"Message-ID: <once@test>\n\nbody\n"),
            stdout=io.StringIO(),
            stderr=err,
        )
        patched.restore()
        self.assertEqual(status, cli.EX_OK)
        self.assertIn("could not record a change", err.getvalue())
        self.assertIn(
            "(database is locked); the next look at the folder catches up", err.getvalue()
        )
        self.assertEqual(self.message_ids(self.inbox()), {1: b"<once@test>"})

    def test_killed_after_the_file_landed(self) -> None:
        inbox = self.inbox()
        first = inbox.append(io.BytesIO(b"Message-ID: <first@test>\r\n\r\n"))
        child = self.run_child(APPENDER, "<landed@test>", crash_at="append-placed")
        self.assertEqual(child.returncode, -signal.SIGKILL)
        # A change that does not look at cur/ first must not lose the UID the
        # dead writer took (the UID list's tail holds it).
        after = inbox.append(io.BytesIO(b"Message-ID: <after@test>\r\n\r\n"))
        self.assertEqual(after, first + 2)
        expected = {first: b"<first@test>", first + 1: b"<landed@test>", after: b"<after@test>"}
        self.assertEqual(self.message_ids(inbox), expected)
        self.drop_index()
        self.assertEqual(self.message_ids(self.inbox()), expected)


class TornUidListTests(RecoveryTestCase):
    """Issue item 3: a UID list cut short or garbled never renumbers or
    reuses UIDs under the same UIDVALIDITY (RFC 3501 2.3.1.1)."""

    def fill(self, count: int) -> tuple[MaildirMailbox, dict[int, bytes]]:
        inbox = self.inbox()
        for i in range(count):
            inbox.append(io.BytesIO(b"Message-ID: <%d@test>\r\n\r\n" % i))
        return inbox, self.message_ids(inbox)

    def cut(self, count: int) -> None:
        os.truncate(self.path(UIDLIST), os.path.getsize(self.path(UIDLIST)) - count)

    def assertWellFormed(self) -> None:
        lines = self.uidlist_lines()
        self.assertEqual(lines[-1], b"")  # ends with a newline
        for line in lines[1:-1]:
            self.assertRegex(line, rb"^\d+ :[^ :]+$")

    def test_torn_last_line_then_append(self) -> None:
        """The issue's reproduction: 3 messages, 5 bytes cut, 2 more."""
        inbox, before = self.fill(3)
        validity = inbox.uidvalidity
        del inbox
        self.cut(5)
        inbox = self.inbox()
        for i in (3, 4):
            inbox.append(io.BytesIO(b"Message-ID: <%d@test>\r\n\r\n" % i))
        self.assertWellFormed()
        expected = {**before, 4: b"<3@test>", 5: b"<4@test>"}
        self.assertEqual(self.message_ids(inbox), expected)
        del inbox
        self.drop_index()  # documented as a cache
        fresh = self.inbox()
        self.assertEqual(fresh.uidvalidity, validity)
        self.assertEqual(self.message_ids(fresh), expected)

    def test_torn_last_line_without_index(self) -> None:
        inbox, before = self.fill(3)
        validity = inbox.uidvalidity
        del inbox
        self.cut(5)
        self.drop_index()
        fresh = self.inbox()
        self.assertEqual(fresh.uidvalidity, validity)
        # The legible start of the line names the file: it gets its UID back.
        self.assertEqual(self.message_ids(fresh), before)
        self.assertEqual(fresh.append(io.BytesIO(b"Subject: x\r\n\r\n")), 4)
        self.assertWellFormed()
        self.assertIn("torn last line counts UID 3 as used", "".join(self.warnings()))

    def test_torn_inside_the_uid_without_index(self) -> None:
        inbox, before = self.fill(12)
        validity = inbox.uidvalidity
        del inbox
        last = self.uidlist_lines()[-2]
        self.assertTrue(last.startswith(b"12 :"))
        self.cut(len(last))  # only "1" of "12 :..." and no newline remain
        self.drop_index()
        fresh = self.inbox()
        self.assertEqual(fresh.uidvalidity, validity)
        found = self.message_ids(fresh)
        # UID 12 may have been seen: its message comes back under a new one.
        self.assertEqual(
            {u: m for u, m in found.items() if u < 12}, {u: before[u] for u in range(1, 12)}
        )
        self.assertEqual(found[13], before[12])
        self.assertEqual(fresh.append(io.BytesIO(b"Subject: x\r\n\r\n")), 14)

    def test_zeroed_tail_counts_its_uids_as_used(self) -> None:
        inbox, _before = self.fill(3)
        del inbox
        size = os.path.getsize(self.path(UIDLIST))
        last = self.uidlist_lines()[-2]
        with open(self.path(UIDLIST), "r+b") as handle:
            handle.seek(size - len(last) - 1)
            handle.write(b"\0" * (len(last) + 1))  # as a power cut leaves it
        self.drop_index()
        fresh = self.inbox()
        self.assertEqual(sorted(fresh.uids())[:2], [1, 2])
        self.assertNotIn(3, fresh.uids())
        self.assertGreater(min(set(fresh.uids()) - {1, 2}), 3)

    def test_torn_header_with_index_keeps_uidvalidity(self) -> None:
        inbox, before = self.fill(3)
        validity = inbox.uidvalidity
        del inbox
        with open(self.path(UIDLIST), "wb") as handle:
            handle.write(b"3 V%d N" % validity)
        fresh = self.inbox()
        self.assertEqual(fresh.uidvalidity, validity)
        self.assertEqual(self.message_ids(fresh), before)
        self.assertWellFormed()
        self.drop_index()
        self.assertEqual(self.message_ids(self.inbox()), before)

    def test_garbage_without_index_changes_uidvalidity(self) -> None:
        inbox, before = self.fill(3)
        validity = inbox.uidvalidity
        del inbox
        with open(self.path(UIDLIST), "r+b") as handle:
            handle.seek(0)
            handle.write(b"\0" * 16)
        self.drop_index()
        fresh = self.inbox()
        self.assertNotEqual(fresh.uidvalidity, validity)
        self.assertEqual(sorted(self.message_ids(fresh).values()), sorted(before.values()))
        self.assertIn(
            f"UIDVALIDITY changes from unknown to {fresh.uidvalidity}", "".join(self.warnings())
        )
        self.assertTrue(os.path.exists(self.path(UIDLIST + ".broken")))

    def test_garbage_line_with_index_keeps_uidvalidity(self) -> None:
        inbox, before = self.fill(3)
        validity = inbox.uidvalidity
        lines = self.uidlist_lines()
        lines[2] = b"x" * len(lines[2])
        with open(self.path(UIDLIST), "wb") as handle:
            handle.write(b"\n".join(lines))
        os.utime(self.path(UIDLIST))
        del inbox
        fresh = MaildirStorage(self.template).account("alice").open_mailbox("INBOX")
        self.assertEqual(fresh.uidvalidity, validity)
        self.assertEqual(self.message_ids(fresh), before)
        self.drop_index()
        self.assertEqual(self.message_ids(self.inbox()), before)

    def test_lost_records_are_restored_from_the_index(self) -> None:
        inbox, before = self.fill(4)
        inbox.store([4], ["\\Deleted"], StoreMode.ADD)
        inbox.expunge()
        del before[4]
        del inbox
        lines = self.uidlist_lines()
        self.cut(len(lines[-2]) + len(lines[-3]) + 2)  # the records of UIDs 3 and 4
        inbox = self.inbox()
        self.assertEqual(self.message_ids(inbox), before)
        self.assertEqual(inbox.append(io.BytesIO(b"Message-ID: <new@test>\r\n\r\n")), 5)
        del inbox
        self.drop_index()
        self.assertEqual(self.message_ids(self.inbox()), {**before, 5: b"<new@test>"})


class MoveTests(RecoveryTestCase):
    """Issue item 4: MOVE within a Maildir tree leaves exactly one copy of
    each message whatever instant the process dies at."""

    def fill(self, count: int = 4) -> MaildirMailbox:
        inbox = self.inbox()
        for i in range(count):
            inbox.append(io.BytesIO(b"Message-ID: <%d@test>\r\n\r\nbody\r\n" % i))
        inbox.store([1], ["\\Flagged", "$label1"], StoreMode.ADD)
        return inbox

    def file_of(self, msgid: bytes, folder: str = "") -> str:
        """The path of the one file in the folder's cur/ holding ``msgid``."""
        found = []
        for name in self.cur_files(folder):
            path = os.path.join(self.root, folder, "cur", name)
            with open(path, "rb") as handle:
                if msgid in handle.read():
                    found.append(path)
        self.assertEqual(len(found), 1, found)
        return found[0]

    def test_move_renames_the_file(self) -> None:
        inbox = self.fill()
        archive = self.account().open_mailbox("Archive")
        archive.append(io.BytesIO(b"Subject: before\r\n\r\n"), ["other"])
        inode = os.stat(self.file_of(b"<0@test>")).st_ino
        pairs = inbox.move([1, 2], archive)
        self.assertEqual(pairs, [(1, 2), (2, 3)])
        self.assertEqual(inbox.uids(), (3, 4))
        self.assertEqual(archive.fetch([2])[0].flags, frozenset({"\\Flagged", "$label1"}))
        self.assertEqual(os.stat(self.file_of(b"<0@test>", ".Archive")).st_ino, inode)
        self.assertEqual(len(self.cur_files()) + len(self.cur_files(".Archive")), 5)

    def test_move_within_one_mailbox(self) -> None:
        inbox = self.fill()
        self.assertEqual(inbox.move([2], inbox), [(2, 5)])
        self.assertEqual(inbox.uids(), (1, 3, 4, 5))
        self.assertEqual(len(self.cur_files()), 4)
        self.drop_index()
        self.assertEqual(self.inbox().uids(), (1, 3, 4, 5))

    def check_after_crash(self, before: dict[int, bytes], moved: int) -> None:
        """Each message in exactly one folder; the first ``moved`` of UIDs
        1, 2, 3 are in Archive under the UIDs its UID list gave them, the
        rest in INBOX under their old UIDs; new UIDs come above all."""
        account = self.account()
        inbox, archive = account.open_mailbox("INBOX"), account.open_mailbox("Archive")
        in_inbox = self.message_ids(inbox)
        in_archive = self.message_ids(archive)
        self.assertEqual(in_inbox, {uid: before[uid] for uid in before if uid > moved})
        self.assertEqual(in_archive, {uid: before[uid] for uid in range(1, moved + 1)})
        self.assertEqual(len(self.cur_files()), len(in_inbox))
        self.assertEqual(len(self.cur_files(".Archive")), len(in_archive))
        # UIDs 1-3 were taken for the move before any file moved: none is
        # given out again, even those whose file never came.
        new = archive.append(io.BytesIO(b"Subject: after\r\n\r\n"))
        self.assertEqual(new, 4)
        # From scratch, the files and UID lists tell the same.
        del inbox, archive
        self.drop_index()
        self.drop_index(".Archive")
        account = self.account()
        self.assertEqual(self.message_ids(account.open_mailbox("INBOX")), in_inbox)
        again = account.open_mailbox("Archive")
        self.assertEqual(again.uids(), (*in_archive, new))

    def test_killed_at_each_step(self) -> None:
        points = {"move-allocated": 0, "move-renamed@1": 1, "move-renamed@2": 2, "move-indexed": 3}
        for point, moved in points.items():
            shutil.rmtree(os.path.join(self.base, "alice"), ignore_errors=True)
            before = self.message_ids(self.fill())
            child = self.run_child(MOVER, "1,2,3", crash_at=point)
            self.assertEqual(child.returncode, -signal.SIGKILL, point)
            self.check_after_crash(before, moved)

    def test_rename_inbox_killed_midway(self) -> None:
        """RENAME INBOX moves INBOX's messages (RFC 3501 6.3.5) the same way."""
        before = self.message_ids(self.fill())
        child = self.run_child(RENAMER, crash_at="move-renamed@2")
        self.assertEqual(child.returncode, -signal.SIGKILL)
        account = self.account()
        left = self.message_ids(account.open_mailbox("INBOX"))
        moved = self.message_ids(account.open_mailbox("Old"))
        self.assertEqual(left, {uid: before[uid] for uid in (3, 4)})
        self.assertEqual(moved, {1: before[1], 2: before[2]})
        self.assertEqual(len(self.cur_files()) + len(self.cur_files(".Old")), 4)

    def test_not_killed_the_same_moves_complete(self) -> None:
        inbox = self.fill()
        del inbox
        child = self.run_child(MOVER, "1,2,3", crash_at="no-such-point")
        self.assertEqual(child.returncode, 0)
        self.assertEqual(child.stdout, b"[(1, 1), (2, 2), (3, 3)]\n")
        account = self.account()
        self.assertEqual(account.open_mailbox("INBOX").uids(), (4,))
        self.assertEqual(account.open_mailbox("Archive").uids(), (1, 2, 3))


class LogTests(RecoveryTestCase):
    def lines(self) -> list[str]:
        return [
            formatEvent(event)
            for event in self.events
            if event.get("log_namespace") == "mailsrv.storage.maildir"
        ]

    def reopened_elsewhere(self, inbox: MaildirMailbox) -> None:
        """Another process rebuilds the index; ``inbox`` reopens it."""
        MaildirStorage(self.template).account("alice").open_mailbox("INBOX").rebuild()
        inbox.check()

    def test_warnings_about_the_tree_keep_their_text(self) -> None:
        """A warning logged once per storage (an odd entry in cur/) reads
        the same to every log observer, also those the legacy log bridge
        (trial's, twistd's) runs before."""
        inbox = self.inbox()
        os.mkdir(os.path.join(self.root, "cur", "not-a-message"))
        inbox.check()
        path = os.path.join(self.root, "cur", "not-a-message")
        self.assertIn(f"{path} is not a regular file; ignored", self.lines())

    def test_configured_level_applies(self) -> None:
        """``[logging] level = "warn"`` hides the backend's info lines (an
        index reopened after another process replaced it), not its
        warnings; at ``info`` both show."""
        from mailsrv import log

        log.set_level("warn")
        self.addCleanup(log.set_level, "info")
        inbox = self.inbox()
        inbox.append(io.BytesIO(b"Subject: x\r\n\r\nx\r\n"))
        os.mkdir(os.path.join(self.root, "cur", "not-a-message"))
        self.reopened_elsewhere(inbox)
        self.assertTrue([line for line in self.lines() if "not a regular file" in line])
        self.assertEqual([line for line in self.lines() if "was replaced" in line], [])
        log.set_level("info")
        self.reopened_elsewhere(inbox)
        self.assertTrue([line for line in self.lines() if "was replaced" in line])
