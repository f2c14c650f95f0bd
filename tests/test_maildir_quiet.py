"""The quiet check: with inotify watching a folder, a check that heard of no
change since the last complete one takes no lock and lists nothing
(mailsrv/storage/maildir/quiet.py), and every outside change made before a
check is still found by it: a delivery into new/, a mail reader's rename in
cur/, another process's STORE, a change the event queue overflowed on, and a
change in the same clock tick as the recorded signature once it has aged.
Over sockets: a NOOP reports what happened right before it (RFC 3501 6.1.2,
6.4.1), within the same second too."""

from __future__ import annotations

import fcntl
import io
import os
import time
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from mailsrv.interfaces import StoreMode
from mailsrv.storage.maildir import MaildirMailbox, MaildirStorage, layout, watch
from tests.maildir_case import MESSAGE, Recorder
from tests.test_maildir_watch import _FrozenClockReactor
from tests.test_workers import WorkersCase


def backdate(*directories: str) -> None:
    """Date directories an hour back, as if nothing had changed in them for
    that long: their signatures are trusted at the next check."""
    past = time.time() - 3600
    for directory in directories:
        os.utime(directory, (past, past))


class QuietCheckTests(TestCase):
    """In one process, with the real reactor's inotify and a clock that never
    moves (no settle delay, no poll: only what a check does is seen)."""

    def setUp(self) -> None:
        if not watch.INOTIFY:
            raise SkipTest("no inotify on this platform")
        base = os.path.abspath(self.mktemp())
        self.template = os.path.join(base, "{user}", "Maildir")
        self.root = os.path.join(base, "alice", "Maildir")
        self.storage = MaildirStorage(
            self.template, poll_interval=3600.0, reactor=_FrozenClockReactor()
        )
        self.addCleanup(self.storage.stop_watching)
        self.inbox = self.open("INBOX")
        # Another process: its own storage, objects and index connection.
        self.theirs = MaildirStorage(self.template).account("alice").open_mailbox("INBOX")
        self.first = self.theirs.append(io.BytesIO(MESSAGE))
        self.second = self.theirs.append(io.BytesIO(MESSAGE))
        self.heard = Recorder()
        self.inbox.add_listener(self.heard)
        self.addCleanup(self.inbox.remove_listener, self.heard)

    def open(self, name: str) -> MaildirMailbox:
        mailbox = self.storage.account("alice").open_mailbox(name)
        assert isinstance(mailbox, MaildirMailbox)
        return mailbox

    def settle(self, root: str | None = None, mailbox: MaildirMailbox | None = None) -> None:
        """Let the folder's directories age, then check it until the check
        is a quiet one."""
        root = root or self.root
        backdate(os.path.join(root, "new"), os.path.join(root, "cur"))
        (mailbox or self.inbox).check()
        (mailbox or self.inbox).check()
        self.heard.added.clear()
        self.heard.changed.clear()

    def count_work(self) -> list[str]:
        """From now on, the locks taken and directories listed."""
        done: list[str] = []
        real_flock, real_listdir = fcntl.flock, os.listdir

        def flock(fd: Any, operation: int) -> None:
            done.append("flock")
            real_flock(fd, operation)

        def listdir(path: Any) -> list[str]:
            done.append(f"listdir {path}")
            return real_listdir(path)

        self.patch(fcntl, "flock", flock)
        self.patch(os, "listdir", listdir)
        return done

    def cur_name(self, uid: int) -> str:
        (name,) = [n for n in os.listdir(os.path.join(self.root, "cur")) if self.uid_of(n) == uid]
        return name

    def uid_of(self, name: str) -> int | None:
        row = self.inbox._folder.db.by_base(name.partition(":")[0])
        return row[0] if row is not None else None

    def test_quiet_check_takes_no_lock_and_lists_nothing(self) -> None:
        self.settle()
        done = self.count_work()
        self.inbox.check()
        self.inbox.check()
        self.assertEqual(done, [])

    def test_quiet_again_after_a_change_outside_cur(self) -> None:
        """A check that heard of a change only outside ``cur/`` (another
        process's ping of mailsrv-lock) is a full one, and the checks after
        it are quiet again."""
        self.settle()
        self.theirs._folder.ping()
        self.inbox.check()
        done = self.count_work()
        self.inbox.check()
        self.inbox.check()
        self.assertEqual(done, [])

    def test_delivery_right_before_check_found(self) -> None:
        self.settle()
        new = os.path.join(self.root, "new")
        with open(os.path.join(self.root, "tmp", "x"), "wb") as handle:
            handle.write(MESSAGE)
        os.rename(os.path.join(self.root, "tmp", "x"), os.path.join(new, "1700000000.P9Q1.mx"))
        self.inbox.check()
        self.assertEqual(len(self.heard.added), 1)

    def test_mail_reader_rename_right_before_check_found(self) -> None:
        self.settle()
        cur = os.path.join(self.root, "cur")
        name = self.cur_name(self.first)
        os.rename(os.path.join(cur, name), os.path.join(cur, name + "F"))  # mutt flags it
        self.inbox.check()
        self.assertEqual(self.heard.changed, [(self.first, frozenset({"\\Flagged"}))])

    def test_other_process_store_right_before_check_found(self) -> None:
        self.settle()
        self.theirs.store([self.second], ["\\Seen"], StoreMode.ADD)
        self.inbox.check()
        self.assertEqual(self.heard.changed, [(self.second, frozenset({"\\Seen"}))])

    def test_same_tick_rename_found_once_the_signature_aged(self) -> None:
        """A rename that leaves cur/'s mtime as recorded (a coarse clock) is
        found once the signature has aged, however quiet the folder is then."""
        self.settle()
        self.inbox.store([self.first], ["\\Seen"], StoreMode.ADD)  # cur/ is recent now
        self.inbox.check()
        cur = os.path.join(self.root, "cur")
        tick = os.stat(cur)
        name = self.cur_name(self.second)
        os.rename(os.path.join(cur, name), os.path.join(cur, name + "F"))
        os.utime(cur, ns=(tick.st_atime_ns, tick.st_mtime_ns))  # a coarse clock
        self.inbox.check()  # too recent to tell: not seen yet (scan.stale)
        self.inbox.check()
        self.patch(layout, "TRUST_WINDOW_NS", 0)  # the signature has aged
        self.inbox.check()
        self.assertIn((self.second, frozenset({"\\Flagged"})), self.heard.changed)

    def test_change_lost_in_an_event_queue_overflow_found(self) -> None:
        """Another folder's flood overflows the kernel's event queue, so the
        event of a rename in this one is lost: the check is a full one."""
        try:
            with open("/proc/sys/fs/inotify/max_queued_events") as handle:
                limit = int(handle.read())
        except (OSError, ValueError):
            raise SkipTest("the inotify queue size is unknown") from None
        if limit > 100_000:
            raise SkipTest("the inotify queue is too large to overflow in a test")
        self.storage.account("alice").create_mailbox("Flood")
        flood = self.open("Flood")
        listener = Recorder()
        flood.add_listener(listener)
        self.addCleanup(flood.remove_listener, listener)
        self.settle()
        flood_new = os.path.join(self.root, ".Flood", "new")
        for n in range(limit // 2 + 16):
            path = os.path.join(flood_new, f".x{n}")
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY))
            os.unlink(path)
        cur = os.path.join(self.root, "cur")
        name = self.cur_name(self.first)
        os.rename(os.path.join(cur, name), os.path.join(cur, name + "F"))
        self.inbox.check()
        self.assertEqual(self.heard.changed, [(self.first, frozenset({"\\Flagged"}))])

    def test_no_quiet_check_where_inotify_may_miss_changes(self) -> None:
        """On a file system inotify does not see every change of (NFS,
        FUSE), every check is a full one."""
        self.inbox.remove_listener(self.heard)
        self.patch(watch, "_LOCAL_FS", frozenset())
        self.inbox.add_listener(self.heard)
        self.settle()
        done = self.count_work()
        self.inbox.check()
        self.assertIn("flock", done)

    def test_file_system_type_found(self) -> None:
        self.assertIsNotNone(watch.local_fs_type(self.root))
        self.assertEqual(watch.local_fs_type("/proc/self"), "proc")


class NoopOverSocketsTests(WorkersCase):
    """Two workers (separate processes) on one Maildir: a session's NOOP
    reports an outside change made right before it."""

    def setUp(self) -> None:
        super().setUp()
        self.maildir = os.path.join(self.dir, "mail", "alice", "Maildir")
        one, two = self.workers
        self.writer = self.session(two)
        for _ in range(3):
            self.writer.ok(f"APPEND INBOX {{{len(MESSAGE)}+}}\r\n" + MESSAGE.decode())
        self.writer.ok("SELECT INBOX")
        self.reader = self.session(one)
        self.reader.ok("SELECT INBOX")

    def settle(self) -> None:
        """Age the directories and NOOP until the reader's checks are quiet."""
        backdate(os.path.join(self.maildir, "new"), os.path.join(self.maildir, "cur"))
        self.reader.ok("NOOP")
        self.reader.ok("NOOP")

    def deliver(self, name: str) -> None:
        path = os.path.join(self.maildir, "tmp", name)
        with open(path, "wb") as handle:
            handle.write(MESSAGE)
        os.rename(path, os.path.join(self.maildir, "new", name))

    def noop(self) -> list[bytes]:
        return self.reader.ok("NOOP")[:-1]

    def test_delivery_right_before_noop_reported(self) -> None:
        self.settle()
        self.deliver("1700000000.P1Q9.mx")
        self.assertIn(b"* 4 EXISTS", self.noop())

    def test_mail_reader_rename_right_before_noop_reported(self) -> None:
        self.settle()
        cur = os.path.join(self.maildir, "cur")
        (name,) = sorted(os.listdir(cur))[:1]
        os.rename(os.path.join(cur, name), os.path.join(cur, name + "F"))
        lines = self.noop()
        self.assertTrue(
            any(
                line.startswith(b"* ") and b"FETCH" in line and b"\\Flagged" in line
                for line in lines
            ),
            lines,
        )

    def test_other_worker_store_right_before_noop_reported(self) -> None:
        self.settle()
        self.writer.ok("STORE 2 +FLAGS (\\Deleted)")
        lines = self.noop()
        self.assertTrue(
            any(line.startswith(b"* 2 FETCH") and b"\\Deleted" in line for line in lines), lines
        )

    def test_changes_within_one_second_each_reported_by_the_next_noop(self) -> None:
        """Change, NOOP, change, NOOP in quick succession (well within a
        second of each other): each NOOP reports the change before it."""
        self.settle()
        self.writer.ok("STORE 1 +FLAGS (\\Seen)")
        self.assertTrue(any(b"* 1 FETCH" in line and b"\\Seen" in line for line in self.noop()))
        self.deliver("1700000000.P2Q9.mx")
        self.assertIn(b"* 4 EXISTS", self.noop())
        self.writer.ok("STORE 3 +FLAGS (\\Answered)")
        self.assertTrue(any(b"* 3 FETCH" in line and b"\\Answered" in line for line in self.noop()))
        cur = os.path.join(self.maildir, "cur")
        (name,) = [n for n in os.listdir(cur) if n.endswith(":2,S")]
        os.rename(os.path.join(cur, name), os.path.join(cur, name + "T"))  # trashed outside
        self.assertTrue(any(b"* 1 FETCH" in line and b"\\Deleted" in line for line in self.noop()))
