"""Maildir++ changes from outside: deliveries and renames by other programs,
found by check(), by the watcher (inotify or polling), and the first
indexing of a folder in a thread."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IDelayedCall, IReactorFDSet, IReactorTime
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from mailsrv.errors import (
    NoSuchMessage,
)
from mailsrv.interfaces import (
    IMailbox,
    IMailboxListener,
    StoreMode,
)
from mailsrv.storage.maildir import MaildirMailbox, MaildirStorage
from mailsrv.storage.maildir.watch import Quiet, WatchedFolder
from tests.maildir_case import MESSAGE, MESSAGE_CRLF, MaildirTestCase, Recorder


class OutsideChangeTests(MaildirTestCase):
    def test_postfix_delivery(self) -> None:
        inbox = self.inbox()
        recorder = Recorder()
        inbox.add_listener(recorder)
        self.drop_into_new(MESSAGE, "1700000000.P1Q1.mx.example.org")
        inbox.check()
        self.assertEqual(len(recorder.added), 1)
        uid = recorder.added[0]
        self.assertEqual(os.listdir(os.path.join(self.root, "new")), [])
        self.assertEqual(self.cur_files(), ["1700000000.P1Q1.mx.example.org:2,"])
        (info,) = inbox.fetch([uid])
        self.assertEqual(info.size, len(MESSAGE_CRLF))
        self.assertEqual(self.read(inbox, uid), MESSAGE_CRLF)
        # Postfix's file keeps its bytes.
        with open(os.path.join(self.root, "cur", self.cur_files()[0]), "rb") as handle:
            self.assertEqual(handle.read(), MESSAGE)
        self.assertEqual(inbox.status().recent, 1)
        self.assertEqual(inbox.claim_recent(), frozenset({uid}))
        self.assertEqual(self.inbox().claim_recent(), frozenset())

    def test_partial_read_of_lf_file(self) -> None:
        inbox = self.inbox()
        self.drop_into_new(MESSAGE, "1700000000.P2Q1.mx")
        inbox.check()
        (uid,) = inbox.uids()
        with inbox.open(uid) as handle:
            self.assertEqual(handle.read(6), MESSAGE_CRLF[:6])
            handle.seek(21)
            self.assertEqual(handle.read(10), MESSAGE_CRLF[21:31])
            handle.seek(0)
            self.assertEqual(handle.readline(), MESSAGE_CRLF.split(b"\n")[0] + b"\n")

    def test_dovecot_sizes_trusted(self) -> None:
        inbox = self.inbox()
        name = f"1700000000.M1P1.host,S={len(MESSAGE)},W={len(MESSAGE_CRLF)}"
        self.drop_into_new(MESSAGE, name)
        inbox.check()
        (uid,) = inbox.uids()
        self.assertEqual(inbox.fetch([uid])[0].size, len(MESSAGE_CRLF))
        self.assertEqual(self.read(inbox, uid), MESSAGE_CRLF)

    def test_outside_delete_announced(self) -> None:
        inbox = self.inbox()
        keep = inbox.append(io.BytesIO(MESSAGE))
        before = set(self.cur_files())
        gone = inbox.append(io.BytesIO(MESSAGE))
        recorder = Recorder()
        inbox.add_listener(recorder)
        # The file the second append made (names need not sort in append order).
        (name,) = set(self.cur_files()) - before
        os.unlink(os.path.join(self.root, "cur", name))
        inbox.check()
        self.assertEqual(recorder.expunged, [gone])
        self.assertEqual(inbox.uids(), (keep,))
        self.assertEqual(inbox.expunged_since(0), [gone])
        self.assertRaises(NoSuchMessage, inbox.open, gone)

    def test_strange_entries_ignored(self) -> None:
        inbox = self.inbox()
        os.mkdir(os.path.join(self.root, "cur", "not-a-message"))
        os.mkdir(os.path.join(self.root, "new", "nor-this"))
        with open(os.path.join(self.root, "cur", ".hidden"), "wb") as handle:
            handle.write(MESSAGE)
        self.drop_into_new(MESSAGE, "1700000000.P6Q1.mx")
        inbox.check()
        self.assertEqual(len(inbox.uids()), 1)

    def test_same_mtime_tick(self) -> None:
        """A delivery within one mtime tick of the last scan is still found."""
        inbox = self.inbox()
        inbox.check()
        new = os.path.join(self.root, "new")
        st = os.stat(new)
        self.drop_into_new(MESSAGE, "1700000000.P3Q1.mx")
        os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))  # coarse clock
        inbox.check()
        self.assertEqual(len(inbox.uids()), 1)

    def test_own_changes_cost_no_rescan_and_hide_no_outside_change(self) -> None:
        """After this process's own STORE, the next check does not list cur/
        again (a 100,000-message folder would pay for every command); an
        outside rename in the same mtime tick is still found once the
        signature has aged."""
        from mailsrv.storage.maildir import layout

        inbox = self.inbox()
        first = inbox.append(io.BytesIO(MESSAGE))
        second = inbox.append(io.BytesIO(MESSAGE))
        inbox.check()
        inbox.store([first], ["\\Seen"], StoreMode.ADD)
        cur = os.path.join(self.root, "cur")
        tick = os.stat(cur)
        (name,) = [n for n in os.listdir(cur) if not n.endswith("S")]
        os.rename(os.path.join(cur, name), os.path.join(cur, name + "F"))  # mutt flags it
        os.utime(cur, ns=(tick.st_atime_ns, tick.st_mtime_ns))  # a coarse clock
        listed: list[str] = []
        real_listdir = os.listdir

        def counting_listdir(path: Any) -> list[str]:
            listed.append(str(path))
            return real_listdir(path)

        self.patch(os, "listdir", counting_listdir)
        inbox.check()
        self.assertNotIn(cur, listed)
        self.assertEqual(inbox.fetch([second])[0].flags, frozenset())
        self.patch(layout, "TRUST_WINDOW_NS", 0)  # the signature has aged
        inbox.check()
        self.assertIn(cur, listed)
        self.assertEqual(inbox.fetch([second])[0].flags, frozenset({"\\Flagged"}))

    def test_other_storage_sees_changes(self) -> None:
        mine = self.inbox()
        recorder = Recorder()
        mine.add_listener(recorder)
        theirs = self.storage().account("alice").open_mailbox("INBOX")
        uid = theirs.append(io.BytesIO(MESSAGE))
        theirs.store([uid], ["\\Seen"], StoreMode.ADD)
        mine.check()
        self.assertEqual(recorder.added, [uid])
        self.assertEqual(mine.fetch([uid])[0].flags, frozenset({"\\Seen"}))
        theirs.store([uid], ["\\Deleted"], StoreMode.ADD)
        mine.check()
        self.assertEqual(recorder.changed, [(uid, frozenset({"\\Seen", "\\Deleted"}))])
        theirs.expunge()
        mine.check()
        self.assertEqual(recorder.expunged, [uid])

    def test_polling_watcher(self) -> None:
        clock = Clock()
        storage = MaildirStorage(self.template, poll_interval=3.0, reactor=clock)
        inbox = storage.account("alice").open_mailbox("INBOX")
        recorder = Recorder()
        inbox.add_listener(recorder)
        self.drop_into_new(MESSAGE, "1700000000.P4Q1.mx")
        clock.advance(2.9)
        self.assertEqual(recorder.added, [])
        clock.advance(0.2)
        self.assertEqual(len(recorder.added), 1)
        inbox.remove_listener(recorder)
        self.assertEqual(clock.getDelayedCalls(), [])


class InotifyWatcherTests(TestCase):
    """With a real reactor, an idle session hears of a delivery without polling."""

    def test_delivery_noticed(self) -> defer.Deferred[None]:
        try:
            from twisted.internet import inotify  # noqa: F401
        except ImportError:
            raise SkipTest("no inotify on this platform") from None
        base = os.path.abspath(self.mktemp())
        storage = MaildirStorage(
            os.path.join(base, "{user}", "Maildir"), poll_interval=3600.0, reactor=reactor
        )
        self.addCleanup(storage.stop_watching)
        inbox = storage.account("alice").open_mailbox("INBOX")
        heard: defer.Deferred[Sequence[int]] = defer.Deferred()

        @implementer(IMailboxListener)
        class Waiter(Recorder):
            def messages_added(self, mailbox: IMailbox, uids: Sequence[int]) -> None:
                if not heard.called:
                    heard.callback(uids)

        waiter = Waiter()
        inbox.add_listener(waiter)
        self.addCleanup(inbox.remove_listener, waiter)
        root = os.path.join(base, "alice", "Maildir")
        with open(os.path.join(root, "tmp", "x"), "wb") as handle:
            handle.write(MESSAGE)
        os.rename(os.path.join(root, "tmp", "x"), os.path.join(root, "new", "1700000000.P5.mx"))
        heard.addTimeout(30, reactor)

        def check(uids: Sequence[int]) -> None:
            self.assertEqual(list(uids), list(inbox.uids()))

        return heard.addCallback(check)


@implementer(IReactorFDSet, IReactorTime)
class _FrozenClockReactor:
    """The real reactor's file descriptors (inotify works) with a clock that
    never moves: only what the watcher does at once on an event happens,
    never a settle delay or a poll."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.fds: Any = reactor

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> IDelayedCall:
        return self.clock.callLater(delay, callable, *args, **kwargs)

    def seconds(self) -> float:
        return self.clock.seconds()

    def getDelayedCalls(self) -> Any:
        return self.clock.getDelayedCalls()

    def addReader(self, reader: Any) -> None:
        self.fds.addReader(reader)

    def removeReader(self, reader: Any) -> None:
        self.fds.removeReader(reader)

    def addWriter(self, writer: Any) -> None:
        self.fds.addWriter(writer)

    def removeWriter(self, writer: Any) -> None:
        self.fds.removeWriter(writer)

    def removeAll(self) -> Any:
        return []

    def getReaders(self) -> Any:
        return self.fds.getReaders()

    def getWriters(self) -> Any:
        return self.fds.getWriters()


class OtherProcessPingTests(TestCase):
    """A change another mailsrv process (a worker, ``mailsrv deliver``)
    commits is heard as soon as the inotify event arrives: no settle delay,
    no poll, no listing of the folder."""

    def setUp(self) -> None:
        try:
            from twisted.internet import inotify  # noqa: F401
        except ImportError:
            raise SkipTest("no inotify on this platform") from None
        base = os.path.abspath(self.mktemp())
        self.template = os.path.join(base, "{user}", "Maildir")
        self.frozen = _FrozenClockReactor()
        storage = MaildirStorage(self.template, poll_interval=3600.0, reactor=self.frozen)
        self.addCleanup(storage.stop_watching)
        self.inbox = storage.account("alice").open_mailbox("INBOX")
        # Another process: its own storage, objects and index connection.
        self.theirs = MaildirStorage(self.template).account("alice").open_mailbox("INBOX")

    def listen(self) -> tuple[Recorder, list[defer.Deferred[None]]]:
        waits: list[defer.Deferred[None]] = []

        @implementer(IMailboxListener)
        class Waiter(Recorder):
            def _heard(self) -> None:
                due = list(waits)
                del waits[:]
                for wait in due:
                    wait.callback(None)

            def messages_added(self, mailbox: IMailbox, uids: Sequence[int]) -> None:
                super().messages_added(mailbox, uids)
                self._heard()

            def flags_changed(self, mailbox: IMailbox, infos: Sequence[Any]) -> None:
                super().flags_changed(mailbox, infos)
                self._heard()

            def messages_expunged(self, mailbox: IMailbox, uids: Sequence[int]) -> None:
                super().messages_expunged(mailbox, uids)
                self._heard()

        waiter = Waiter()
        self.inbox.add_listener(waiter)
        self.addCleanup(self.inbox.remove_listener, waiter)
        return waiter, waits

    def next_news(self, waits: list[defer.Deferred[None]]) -> defer.Deferred[None]:
        heard: defer.Deferred[None] = defer.Deferred()
        waits.append(heard)
        return heard.addTimeout(30, reactor)

    async def test_append_store_expunge_heard_at_once(self) -> None:
        waiter, waits = self.listen()
        news = self.next_news(waits)
        uid = self.theirs.append(io.BytesIO(MESSAGE))
        await news
        self.assertEqual(waiter.added, [uid])
        news = self.next_news(waits)
        self.theirs.store([uid], ["\\Deleted"], StoreMode.ADD)
        await news
        self.assertEqual(waiter.changed, [(uid, frozenset({"\\Deleted"}))])
        news = self.next_news(waits)
        self.theirs.expunge()
        await news
        self.assertEqual(waiter.expunged, [uid])


class ThreadedColdOpenTests(TestCase):
    """With a reactor, indexing a folder's files happens off the reactor thread."""

    async def test_cold_open_in_thread(self) -> None:
        base = os.path.abspath(self.mktemp())
        root = os.path.join(base, "alice", "Maildir")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(root, sub))
        for i in range(300):
            with open(os.path.join(root, "cur", f"1700000000.M{i}P1.mx:2,S"), "wb") as handle:
                handle.write(MESSAGE)
        storage = MaildirStorage(os.path.join(base, "{user}", "Maildir"), reactor=reactor)
        account = storage.account("alice")
        first = account.get_mailbox("INBOX")
        second = account.get_mailbox("INBOX")
        assert isinstance(first, defer.Deferred) and isinstance(second, defer.Deferred)
        one = await first
        two = await second
        assert isinstance(one, MaildirMailbox)
        self.assertIs(one, two)
        self.assertEqual(len(one.uids()), 300)
        self.assertEqual(one.status().unseen, 0)
        # Indexed now: later opens are immediate.
        self.assertIs(account.get_mailbox("INBOX"), one)


class _RecordingWatcher:
    """A watch.Watcher that keeps what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def watch(self, folder: WatchedFolder) -> None:
        self.calls.append(("watch", folder))

    def unwatch(self, folder: WatchedFolder) -> None:
        self.calls.append(("unwatch", folder))

    def quiet(self, folder: WatchedFolder) -> Quiet | None:
        return None


class HandedWatcherTests(MaildirTestCase):
    """A folder is handed its watcher (it knows nothing of the storage) and
    asks to be watched while it has listeners, and no longer once the last
    one left or the folder was deleted or renamed."""

    def test_watched_while_listened_to(self) -> None:
        self.account()  # makes the tree
        watcher = _RecordingWatcher()
        inbox = MaildirMailbox(self.root, self.root, "INBOX", watcher=watcher, warn_once=print)
        first, second = Recorder(), Recorder()
        inbox.add_listener(first)
        inbox.add_listener(second)
        inbox.remove_listener(first)
        self.assertEqual(watcher.calls, [("watch", inbox), ("watch", inbox)])
        inbox.remove_listener(second)
        self.assertEqual(watcher.calls[2:], [("unwatch", inbox)])
        inbox.add_listener(first)
        inbox.close()
        self.assertEqual(watcher.calls[3:], [("watch", inbox), ("unwatch", inbox)])
        self.assertTrue(inbox.closed)
        self.assertEqual(inbox.watched_dirs(), (f"{self.root}/new", f"{self.root}/cur"))
