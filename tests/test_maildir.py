"""Maildir++ storage: layout, names, flags, UIDs, recovery, adoption, outside changes.

Everything is checked the way a user or another program would see it: files
and names on disk, bytes read back, UIDs and flags returned.
"""

from __future__ import annotations

import datetime
import io
import os
import sqlite3
import stat
import tracemalloc
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailsrv.errors import (
    InvalidMailboxName,
    LimitExceeded,
    MailboxExists,
    MailboxNotEmpty,
    NoSuchMailbox,
    NoSuchMessage,
    StorageError,
)
from mailsrv.interfaces import (
    DEFAULT_FOLDERS,
    IAccount,
    IMailbox,
    IMailboxListener,
    IMaildropLocking,
    IMessage,
    IMessageCache,
    IPop3UidSource,
    IStorage,
    IWatchingStorage,
    StoreMode,
)
from mailsrv.storage import names
from mailsrv.storage.maildir import MaildirAccount, MaildirMailbox, MaildirStorage, reindex
from mailsrv.storage.maildir.layout import split_filename

MESSAGE = b"From: a@example.org\nSubject: test\n\nline one\nline two\n"
MESSAGE_CRLF = MESSAGE.replace(b"\n", b"\r\n")


@implementer(IMailboxListener)
class Recorder:
    """A listener that keeps what it was told."""

    def __init__(self) -> None:
        self.added: list[int] = []
        self.changed: list[tuple[int, frozenset[str]]] = []
        self.expunged: list[int] = []

    def messages_added(self, mailbox: IMailbox, uids: Sequence[int]) -> None:
        self.added.extend(uids)

    def flags_changed(self, mailbox: IMailbox, messages: Sequence[IMessage]) -> None:
        self.changed.extend((m.uid, m.flags) for m in messages)

    def messages_expunged(self, mailbox: IMailbox, uids: Sequence[int]) -> None:
        self.expunged.extend(uids)


class MaildirTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.template = os.path.join(self.base, "{user}", "Maildir")
        self.root = os.path.join(self.base, "alice", "Maildir")

    def storage(self) -> MaildirStorage:
        return MaildirStorage(self.template)

    def account(self) -> MaildirAccount:
        return self.storage().account("alice")

    def inbox(self) -> MaildirMailbox:
        return self.account().open_mailbox("INBOX")

    def read(self, mailbox: IMailbox, uid: int) -> bytes:
        with mailbox.open(uid) as handle:
            return handle.read()

    def cur_files(self, folder: str = "") -> list[str]:
        return sorted(os.listdir(os.path.join(self.root, folder, "cur")))

    def drop_into_new(self, data: bytes, name: str, folder: str = "") -> str:
        """Deliver like Postfix: write in tmp/, then rename into new/."""
        tmp = os.path.join(self.root, folder, "tmp", name)
        with open(tmp, "wb") as handle:
            handle.write(data)
        target = os.path.join(self.root, folder, "new", name)
        os.rename(tmp, target)
        return target


class InterfaceTests(MaildirTestCase):
    def test_provides_interfaces(self) -> None:
        storage = self.storage()
        account = storage.account("alice")
        inbox = account.open_mailbox("INBOX")
        verifyObject(IStorage, storage)
        verifyObject(IAccount, account)
        verifyObject(IMailbox, inbox)
        verifyObject(IMessageCache, inbox)
        verifyObject(IMaildropLocking, inbox)
        verifyObject(IPop3UidSource, inbox)
        verifyObject(IWatchingStorage, storage)

    def test_same_mailbox_object_shared(self) -> None:
        account = self.account()
        first = account.get_mailbox("INBOX")
        second = account.get_mailbox("inbox")
        assert isinstance(first, MaildirMailbox) and isinstance(second, MaildirMailbox)
        self.assertIs(first, second)
        recorder = Recorder()
        first.add_listener(recorder)
        uid = second.append(io.BytesIO(MESSAGE))
        self.assertEqual(recorder.added, [uid])


class LayoutTests(MaildirTestCase):
    def test_new_account_layout(self) -> None:
        account = self.account()
        for sub in ("cur", "new", "tmp"):
            self.assertTrue(os.path.isdir(os.path.join(self.root, sub)))
        for name, _use in DEFAULT_FOLDERS:
            folder = os.path.join(self.root, "." + name)
            self.assertTrue(os.path.isfile(os.path.join(folder, "maildirfolder")))
            for sub in ("cur", "new", "tmp"):
                self.assertTrue(os.path.isdir(os.path.join(folder, sub)))
        listed = {entry.name: entry.attributes for entry in account.list_mailboxes()}
        self.assertEqual(account.list_mailboxes()[0].name, "INBOX")
        for name, use in DEFAULT_FOLDERS:
            self.assertIn(use, listed[name])
            self.assertEqual(account.open_mailbox(name).special_use, frozenset({use}))

    def test_nothing_is_readable_by_other_users(self) -> None:
        """Message files, the index (it caches headers) and the UID list are 0600."""
        inbox = self.inbox()
        inbox.append(io.BytesIO(MESSAGE))
        inbox.store(inbox.uids(), ["$Label"], StoreMode.ADD)
        self.account().subscribe("Sent")
        for directory, _subdirs, files in os.walk(self.root):
            self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700, directory)
            for name in files:
                path = os.path.join(directory, name)
                self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)

    def test_home_template(self) -> None:
        storage = MaildirStorage("{home}/Maildir")
        home = os.path.join(self.base, "home", "bob")
        account = storage.account("bob", home=home)
        self.assertTrue(os.path.isdir(os.path.join(home, "Maildir", "cur")))
        self.assertEqual(account.username, "bob")

    def test_home_template_without_home(self) -> None:
        storage = MaildirStorage("{home}/Maildir")
        error = self.assertRaises(StorageError, storage.account, "bob")
        self.assertIn("home", str(error))

    def test_template_needs_placeholder(self) -> None:
        self.assertRaises(StorageError, MaildirStorage, "/var/mail/everyone")
        self.assertRaises(StorageError, MaildirStorage, "/var/mail/{user}/{other}")

    def test_unsafe_user_names(self) -> None:
        storage = self.storage()
        for bad in ("", "../bob", "a/b", ".hidden", "..", "nul\x00", "tab\tname"):
            self.assertRaises(StorageError, storage.account, bad)
        self.assertEqual(os.listdir(self.base), [])

    def test_internal_date_is_mtime(self) -> None:
        inbox = self.inbox()
        when = datetime.datetime(2020, 2, 29, 12, 30, 15, tzinfo=datetime.UTC)
        uid = inbox.append(io.BytesIO(MESSAGE), internal_date=when)
        (info,) = inbox.fetch([uid])
        self.assertEqual(info.internal_date, when)
        (name,) = self.cur_files()
        mtime = os.stat(os.path.join(self.root, "cur", name)).st_mtime
        self.assertEqual(mtime, when.timestamp())

    def test_appended_file_name_and_bytes(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(io.BytesIO(MESSAGE))
        (name,) = self.cur_files()
        size = len(MESSAGE_CRLF)
        self.assertIn(f",S={size},W={size}:2,", name)
        with open(os.path.join(self.root, "cur", name), "rb") as handle:
            self.assertEqual(handle.read(), MESSAGE_CRLF)
        self.assertEqual(self.read(inbox, uid), MESSAGE_CRLF)
        self.assertEqual(inbox.fetch([uid])[0].size, size)
        self.assertEqual(os.listdir(os.path.join(self.root, "tmp")), [])

    def test_append_streams_with_split_line_ends(self) -> None:
        """CR and LF split across reads still make one CRLF; bare LF becomes CRLF."""

        class Dribble(io.RawIOBase):
            def __init__(self, data: bytes) -> None:
                self.data = data

            def readable(self) -> bool:
                return True

            def read(self, size: int = -1) -> bytes:
                # Cut every CRLF in two.
                if not self.data:
                    return b""
                cut = self.data.find(b"\r") + 1 or len(self.data)
                chunk, self.data = self.data[:cut], self.data[cut:]
                return chunk

        data = b"a\r\nb\nc\r\n\nd"
        inbox = self.inbox()
        uid = inbox.append(Dribble(data))  # type: ignore[arg-type]
        self.assertEqual(self.read(inbox, uid), b"a\r\nb\r\nc\r\n\r\nd")
        self.assertEqual(inbox.fetch([uid])[0].size, 12)

    def test_large_message(self) -> None:
        line = b"x" * 76 + b"\n"
        data = line * 40000  # about 3 MB, bare LF
        source = os.path.join(self.base, "big.eml")
        with open(source, "wb") as handle:
            handle.write(data)
        inbox = self.inbox()
        with open(source, "rb") as handle:
            uid = inbox.append(handle)
        expected = data.replace(b"\n", b"\r\n")
        self.assertEqual(inbox.fetch([uid])[0].size, len(expected))
        self.assertEqual(self.read(inbox, uid), expected)


class _Generated(io.RawIOBase):
    """``size`` bytes of LF-terminated lines, made up as they are read."""

    LINE = b"x" * 75 + b"\n"

    def __init__(self, size: int) -> None:
        self.size = size
        self.position = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        left = self.size - self.position
        wanted = left if size < 0 else min(size, left)
        start = self.position % len(self.LINE)
        self.position += wanted
        return (self.LINE * (wanted // len(self.LINE) + 2))[start : start + wanted]

    @classmethod
    def crlf_size(cls, size: int) -> int:
        return size + size // len(cls.LINE)


class BigMessageTests(MaildirTestCase):
    """A 50 MB message goes in and out without ever being held in memory."""

    SIZE = 50 * 1024 * 1024

    def peak_while(self, function: Any, *args: Any) -> tuple[Any, int]:
        tracemalloc.start()
        try:
            result = function(*args)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return result, peak

    @staticmethod
    def read_size(inbox: MaildirMailbox, uid: int) -> int:
        """Read the message the way FETCH and RETR do, in pieces; count it."""
        total = 0
        with inbox.open(uid) as handle:
            while chunk := handle.read(65536):
                total += len(chunk)
        return total

    def test_append_and_read_back_50_mb(self) -> None:
        inbox = self.inbox()
        uid, peak = self.peak_while(inbox.append, _Generated(self.SIZE))
        self.assertLess(peak, 2 * 1024 * 1024)
        size = _Generated.crlf_size(self.SIZE)  # every LF became CRLF
        self.assertEqual(inbox.fetch([uid])[0].size, size)
        (name,) = self.cur_files()
        self.assertEqual(os.stat(os.path.join(self.root, "cur", name)).st_size, size)
        total, peak = self.peak_while(self.read_size, inbox, uid)
        self.assertEqual(total, size)
        self.assertLess(peak, 2 * 1024 * 1024)

    def test_deliver_50_mb(self) -> None:
        from mailsrv.storage.deliver import deliver

        account = self.account()
        uid, peak = self.peak_while(deliver, account, _Generated(self.SIZE))
        self.assertLess(peak, 2 * 1024 * 1024)
        self.assertEqual(
            account.open_mailbox("INBOX").fetch([uid])[0].size, _Generated.crlf_size(self.SIZE)
        )

    def test_lf_file_from_outside_read_in_pieces(self) -> None:
        """A 50 MB LF file Postfix wrote is sized and read as CRLF chunk by chunk."""
        path = os.path.join(self.root, "new", "1700000000.M1P1.mx")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        source = _Generated(self.SIZE)
        with open(path, "wb") as handle:
            while chunk := source.read(1 << 20):
                handle.write(chunk)
        inbox, peak = self.peak_while(self.inbox)
        self.assertLess(peak, 2 * 1024 * 1024)
        (uid,) = inbox.uids()
        self.assertEqual(inbox.fetch([uid])[0].size, _Generated.crlf_size(self.SIZE))
        total, peak = self.peak_while(self.read_size, inbox, uid)
        self.assertEqual(total, _Generated.crlf_size(self.SIZE))
        self.assertLess(peak, 2 * 1024 * 1024)


class NameTests(MaildirTestCase):
    def test_normalize(self) -> None:
        self.assertEqual(names.normalize("inbox"), "INBOX")
        self.assertEqual(names.normalize("Inbox/Sub"), "INBOX/Sub")
        self.assertEqual(names.normalize("a/b/"), "a/b")
        # Generic rules allow what only Maildir++ cannot store.
        self.assertEqual(names.normalize("v1.2"), "v1.2")
        self.assertRaises(InvalidMailboxName, names.normalize_maildir, "v1.2")

    def test_rejected_names(self) -> None:
        for bad in (
            "",
            "/",
            "a//b",
            "/a",
            "a.b",
            "..",
            "../x",
            ".hidden",
            "tab\there",
            "nul\x00",
            "wild*",
            "wild%",
            "x" * 300,
        ):
            with self.assertRaises(InvalidMailboxName, msg=repr(bad)):
                names.normalize_maildir(bad)

    def test_dot_message_is_clear(self) -> None:
        account = self.account()
        error = self.assertRaises(InvalidMailboxName, account.create_mailbox, "v1.2")
        self.assertIn("'.'", str(error))

    def test_unicode_folder_on_disk(self) -> None:
        account = self.account()
        account.create_mailbox("Entwürfe/日本語")
        self.assertTrue(os.path.isdir(os.path.join(self.root, ".Entw&APw-rfe")))
        self.assertTrue(os.path.isdir(os.path.join(self.root, ".Entw&APw-rfe.&ZeVnLIqe-")))
        listed = [entry.name for entry in account.list_mailboxes()]
        self.assertIn("Entwürfe/日本語", listed)
        account.open_mailbox("Entwürfe/日本語").append(io.BytesIO(MESSAGE))

    def test_invalid_names_on_disk_skipped(self) -> None:
        account = self.account()
        for bad in (".&AOk", ".a..b", ".&AGE-", "..DOVECOT-TRASH", ".bad\x01"):
            os.makedirs(os.path.join(self.root, bad, "cur"))
        listed = [entry.name for entry in account.list_mailboxes()]
        self.assertEqual(sorted(listed), sorted(["INBOX", *(n for n, _ in DEFAULT_FOLDERS)]))

    def test_names_cannot_escape(self) -> None:
        account = self.account()
        for bad in ("../../etc", "a/../../b", "/etc/passwd"):
            self.assertRaises(InvalidMailboxName, account.create_mailbox, bad)
            self.assertRaises(InvalidMailboxName, account.get_mailbox, bad)
        self.assertEqual(sorted(os.listdir(self.base)), ["alice"])


class MailboxTreeTests(MaildirTestCase):
    def test_create_with_parents(self) -> None:
        account = self.account()
        account.create_mailbox("a/b/c")
        for name in ("a", "a/b", "a/b/c"):
            account.open_mailbox(name)
        self.assertTrue(os.path.isdir(os.path.join(self.root, ".a.b.c", "cur")))
        self.assertRaises(MailboxExists, account.create_mailbox, "a/b")
        self.assertRaises(MailboxExists, account.create_mailbox, "inbox")

    def test_create_special_use(self) -> None:
        account = self.account()
        account.create_mailbox("Memes", special_use=["\\Archive"])
        self.assertEqual(account.open_mailbox("Memes").special_use, frozenset({"\\Archive"}))
        account2 = self.storage().account("alice")
        self.assertEqual(account2.open_mailbox("Memes").special_use, frozenset({"\\Archive"}))
        self.assertRaises(StorageError, account.create_mailbox, "X", special_use=["\\Bogus"])

    def test_delete_with_children_becomes_noselect(self) -> None:
        account = self.account()
        account.create_mailbox("p/q")
        parent = account.open_mailbox("p")
        parent.append(io.BytesIO(MESSAGE))
        account.delete_mailbox("p")
        listed = {entry.name: entry.attributes for entry in account.list_mailboxes()}
        self.assertIn("\\Noselect", listed["p"])
        self.assertIn("\\HasChildren", listed["p"])
        self.assertRaises(NoSuchMailbox, account.get_mailbox, "p")
        account.open_mailbox("p/q")
        self.assertRaises(MailboxNotEmpty, account.delete_mailbox, "p")
        self.assertRaises(NoSuchMailbox, parent.status)
        account.delete_mailbox("p/q")
        self.assertNotIn("p", [entry.name for entry in account.list_mailboxes()])

    def test_delete_inbox_refused(self) -> None:
        self.assertRaises(StorageError, self.account().delete_mailbox, "INBOX")

    def test_delete_missing(self) -> None:
        self.assertRaises(NoSuchMailbox, self.account().delete_mailbox, "nope")

    def test_rename_with_children(self) -> None:
        account = self.account()
        account.create_mailbox("old/kid")
        uid = account.open_mailbox("old/kid").append(io.BytesIO(MESSAGE), ["\\Flagged"])
        validity = account.open_mailbox("old/kid").uidvalidity
        account.rename_mailbox("old", "new/place")
        listed = [entry.name for entry in account.list_mailboxes()]
        self.assertNotIn("old", listed)
        self.assertNotIn("old/kid", listed)
        moved = account.open_mailbox("new/place/kid")
        self.assertEqual(moved.uids(), (uid,))
        self.assertEqual(moved.uidvalidity, validity)
        self.assertEqual(moved.fetch([uid])[0].flags, frozenset({"\\Flagged"}))
        self.assertRaises(MailboxExists, account.rename_mailbox, "Sent", "new/place")
        self.assertRaises(NoSuchMailbox, account.rename_mailbox, "ghost", "other")
        self.assertRaises(InvalidMailboxName, account.rename_mailbox, "Sent", "Sent/inner")

    def test_rename_keeps_special_use(self) -> None:
        account = self.account()
        account.rename_mailbox("Sent", "Sent Items")
        self.assertEqual(account.open_mailbox("Sent Items").special_use, frozenset({"\\Sent"}))

    def test_rename_inbox(self) -> None:
        account = self.account()
        inbox = account.open_mailbox("INBOX")
        first = inbox.append(io.BytesIO(MESSAGE), ["\\Seen"])
        inbox.append(io.BytesIO(MESSAGE + b"second\n"))
        account.rename_mailbox("INBOX", "Old Mail")
        self.assertEqual(inbox.uids(), ())
        self.assertEqual(inbox.status().messages, 0)
        old = account.open_mailbox("Old Mail")
        self.assertEqual(len(old.uids()), 2)
        self.assertEqual(old.fetch([old.uids()[0]])[0].flags, frozenset({"\\Seen"}))
        self.assertEqual(self.read(old, old.uids()[0]), self.read_via_new(first))

    def read_via_new(self, uid: int) -> bytes:
        return MESSAGE_CRLF

    def test_subscriptions_file(self) -> None:
        account = self.account()
        account.subscribe("Sent")
        account.subscribe("Entwürfe/sub")
        account.subscribe("Sent")
        with open(os.path.join(self.root, "subscriptions"), "rb") as handle:
            self.assertEqual(handle.read(), b"Sent\nEntw&APw-rfe.sub\n")
        self.assertEqual(self.account().subscriptions(), ["Sent", "Entwürfe/sub"])
        account.unsubscribe("Sent")
        self.assertEqual(self.account().subscriptions(), ["Entwürfe/sub"])

    def test_dovecot_v2_subscriptions(self) -> None:
        account = self.account()
        with open(os.path.join(self.root, "subscriptions"), "wb") as handle:
            handle.write(b"V\t2\n\nSent\nLists\tTwisted\n")
        self.assertEqual(account.subscriptions(), ["Sent", "Lists/Twisted"])

    def test_courier_subscriptions(self) -> None:
        account = self.account()
        with open(os.path.join(self.root, "subscriptions"), "wb") as handle:
            handle.write(b"INBOX\nINBOX.Sent\nINBOX.Lists.Twisted\n")
        self.assertEqual(account.subscriptions(), ["INBOX", "Sent", "Lists/Twisted"])


class FlagTests(MaildirTestCase):
    def test_system_flags_in_file_name(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(
            io.BytesIO(MESSAGE), ["\\Seen", "\\ANSWERED", "\\Flagged", "\\Deleted", "\\Draft"]
        )
        (name,) = self.cur_files()
        self.assertEqual(split_filename(name)[1], "DFRST")
        self.assertEqual(
            inbox.fetch([uid])[0].flags,
            frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"}),
        )

    def test_recent_is_not_stored(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(io.BytesIO(MESSAGE), ["\\Recent"])
        self.assertEqual(inbox.fetch([uid])[0].flags, frozenset())

    def test_keywords_round_trip(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(io.BytesIO(MESSAGE), ["$Forwarded", "Work"])
        inbox.store([uid], ["$Junk"], StoreMode.ADD)
        with open(os.path.join(self.root, "dovecot-keywords")) as handle:
            self.assertEqual(handle.read(), "0 $Forwarded\n1 Work\n2 $Junk\n")
        (name,) = self.cur_files()
        self.assertEqual(split_filename(name)[1], "abc")
        fresh = self.storage().account("alice").open_mailbox("INBOX")
        self.assertEqual(fresh.fetch([uid])[0].flags, frozenset({"$Forwarded", "Work", "$Junk"}))
        inbox.store([uid], ["Work"], StoreMode.REMOVE)
        self.assertEqual(split_filename(self.cur_files()[0])[1], "ac")

    def test_keywords_match_case_insensitively(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(io.BytesIO(MESSAGE), ["$Label1"])
        inbox.store([uid], ["$label1"], StoreMode.ADD)
        self.assertEqual(inbox.fetch([uid])[0].flags, frozenset({"$Label1"}))

    def test_too_many_keywords(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(io.BytesIO(MESSAGE), [f"k{i}" for i in range(26)])
        self.assertEqual(len(inbox.fetch([uid])[0].flags), 26)
        self.assertRaises(LimitExceeded, inbox.store, [uid], ["one-too-many"], StoreMode.ADD)

    def test_keywords_listed_in_letter_order(self) -> None:
        inbox = self.inbox()
        self.assertEqual((list(inbox.keywords()), inbox.keyword_limit), ([], 26))
        uid = inbox.append(io.BytesIO(MESSAGE), ["Work", "$Forwarded"])
        inbox.store([uid], ["$Junk"], StoreMode.ADD)
        # Defined stays defined, as in Dovecot: the letter keeps its name.
        inbox.store([uid], ["Work"], StoreMode.REMOVE)
        self.assertEqual(list(inbox.keywords()), ["$Forwarded", "Work", "$Junk"])
        # Another process's view of the same folder agrees.
        self.assertEqual(list(self.inbox().keywords()), ["$Forwarded", "Work", "$Junk"])

    def test_no_room_refuses_all_new_keywords(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(io.BytesIO(MESSAGE), [f"k{i:02}" for i in range(25)])
        path = os.path.join(self.root, "dovecot-keywords")
        with open(path) as handle:
            before = handle.read()
        exc = self.assertRaises(
            LimitExceeded, inbox.store, [uid], ["k00", "new1", "new2"], StoreMode.ADD
        )
        self.assertEqual(
            str(exc), "no room for keyword new1: a Maildir folder holds at most 26 keywords"
        )
        with open(path) as handle:
            self.assertEqual(handle.read(), before)
        self.assertEqual(len(inbox.keywords()), 25)
        inbox.store([uid], ["NEW1", "new1"], StoreMode.ADD)  # one letter for both
        self.assertEqual(inbox.keywords()[-1], "NEW1")

    def test_names_imap_cannot_carry_are_hidden(self) -> None:
        """Another program may have written keywords IMAP cannot send back:
        they keep their letters, but no message shows them."""
        inbox = self.inbox()
        with open(os.path.join(self.root, "dovecot-keywords"), "w") as handle:
            handle.write("0 my flag\n1 NIL\n2 Work\n")
        uid = inbox.append(io.BytesIO(MESSAGE), ["Work"])
        (name,) = self.cur_files()
        cur = os.path.join(self.root, "cur")
        os.rename(os.path.join(cur, name), os.path.join(cur, name[: -len("c")] + "abc"))
        inbox.check()
        self.assertEqual(inbox.fetch([uid])[0].flags, frozenset({"Work"}))
        self.assertEqual((list(inbox.keywords()), inbox.keyword_limit), (["Work"], 24))
        inbox.store([uid], ["\\Seen", "Later"], StoreMode.REPLACE)
        self.assertEqual(split_filename(self.cur_files()[0])[1], "Sabd")
        self.assertEqual(inbox.fetch([uid])[0].flags, frozenset({"\\Seen", "Later"}))

    def test_nil_is_no_keyword(self) -> None:
        inbox = self.inbox()
        for flag in ("NIL", "nil"):
            exc = self.assertRaises(StorageError, inbox.append, io.BytesIO(MESSAGE), [flag])
            self.assertEqual(exc.code, "CANNOT")
        self.assertEqual(self.cur_files(), [])
        self.assertFalse(os.path.exists(os.path.join(self.root, "dovecot-keywords")))

    def test_invalid_flags(self) -> None:
        inbox = self.inbox()
        self.assertRaises(StorageError, inbox.append, io.BytesIO(MESSAGE), ["\\Bogus"])
        self.assertRaises(StorageError, inbox.append, io.BytesIO(MESSAGE), ["two words"])
        self.assertEqual(self.cur_files(), [])

    def test_unknown_letters_preserved(self) -> None:
        inbox = self.inbox()
        inbox.append(io.BytesIO(MESSAGE))
        (name,) = self.cur_files()
        cur = os.path.join(self.root, "cur")
        # mutt marks it passed (P) and seen.
        os.rename(os.path.join(cur, name), os.path.join(cur, name[:-1] + ",PS"))
        inbox.check()
        (uid,) = inbox.uids()
        self.assertEqual(inbox.fetch([uid])[0].flags, frozenset({"\\Seen"}))
        inbox.store([uid], ["\\Flagged"], StoreMode.REPLACE)
        self.assertEqual(split_filename(self.cur_files()[0])[1], "FP")

    def test_store_result_and_modseq(self) -> None:
        inbox = self.inbox()
        a = inbox.append(io.BytesIO(MESSAGE))
        b = inbox.append(io.BytesIO(MESSAGE), ["\\Seen"])
        before = inbox.highest_modseq
        result = inbox.store([a, b], ["\\Seen"], StoreMode.ADD)
        self.assertEqual([m.uid for m in result.updated], [a])
        self.assertGreater(result.updated[0].modseq, before)
        self.assertEqual(inbox.highest_modseq, result.updated[0].modseq)
        self.assertEqual([m.uid for m in inbox.changed_since(before)], [a])
        conflicting = inbox.store([a, b], ["\\Flagged"], StoreMode.ADD, unchanged_since=before)
        self.assertEqual(conflicting.conflicts, (a,))
        self.assertEqual([m.uid for m in conflicting.updated], [b])

    def test_outside_flag_change_announced(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(io.BytesIO(MESSAGE))
        recorder = Recorder()
        inbox.add_listener(recorder)
        (name,) = self.cur_files()
        cur = os.path.join(self.root, "cur")
        os.rename(os.path.join(cur, name), os.path.join(cur, name + "S"))
        inbox.check()
        self.assertEqual(recorder.changed, [(uid, frozenset({"\\Seen"}))])


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


class CacheTests(MaildirTestCase):
    def test_cache_dropped_with_message(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(io.BytesIO(MESSAGE))
        inbox.set_cached(uid, "envelope", b"(cached)")
        self.assertEqual(self.inbox().get_cached(uid, "envelope"), b"(cached)")
        self.assertIsNone(inbox.get_cached(uid, "other"))
        inbox.store([uid], ["\\Deleted"], StoreMode.ADD)
        inbox.expunge()
        self.assertIsNone(inbox.get_cached(uid, "envelope"))
        inbox.set_cached(uid, "envelope", b"(late)")
        self.assertIsNone(inbox.get_cached(uid, "envelope"))


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
        self.assertIs(one, two)
        self.assertEqual(len(one.uids()), 300)
        self.assertEqual(one.status().unseen, 0)
        # Indexed now: later opens are immediate.
        self.assertIs(account.get_mailbox("INBOX"), one)


class AdoptionTests(MaildirTestCase):
    """A tree Dovecot wrote: its UIDs, UIDVALIDITY and keywords are kept."""

    def setUp(self) -> None:
        super().setUp()
        os.makedirs(self.root)
        for folder in ("", ".Sent", ".Lists.Twisted", ".Deleted Messages"):
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(self.root, folder, sub))
        self.files = {
            "1600000000.M1P1.mx,S=51,W=56": "S",
            "1600000001.M2P1.mx,S=51,W=56": "RSab",
            "1600000002.M3P1.mx,S=51,W=56": "FSP",
        }
        for base, info in self.files.items():
            with open(os.path.join(self.root, "cur", f"{base}:2,{info}"), "wb") as handle:
                handle.write(MESSAGE)
        with open(os.path.join(self.root, "dovecot-uidlist"), "w") as handle:
            handle.write("3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1\n")
            handle.write("25000 :1600000000.M1P1.mx,S=51,W=56\n")
            handle.write("25005 W56 P00006000 :1600000001.M2P1.mx,S=51,W=56\n")
            handle.write("25010 :1600000002.M3P1.mx,S=51,W=56\n")
        with open(os.path.join(self.root, "dovecot-keywords"), "w") as handle:
            handle.write("0 $Forwarded\n1 NonJunk\n")
        with open(os.path.join(self.root, ".Sent", "cur", "1600000003.M4P1.mx:2,S"), "wb") as h:
            h.write(MESSAGE)
        # A message Postfix delivered after Dovecot stopped.
        self.drop_into_new(MESSAGE, "1600000009.P9Q9.mx")

    def test_uids_adopted(self) -> None:
        inbox = self.inbox()
        self.assertEqual(inbox.uidvalidity, 1275660208)
        self.assertEqual(list(inbox.uids()), [25000, 25005, 25010, 25022])
        self.assertEqual(inbox.uidnext, 25023)
        flags = {m.uid: m.flags for m in inbox.fetch(inbox.uids())}
        self.assertEqual(flags[25000], frozenset({"\\Seen"}))
        self.assertEqual(flags[25005], frozenset({"\\Answered", "\\Seen", "$Forwarded", "NonJunk"}))
        self.assertEqual(flags[25010], frozenset({"\\Flagged", "\\Seen"}))
        self.assertEqual(inbox.claim_recent(), frozenset({25022}))
        self.assertEqual(inbox.pop3_uidls(), {25005: "00006000"})
        self.assertEqual(self.read(inbox, 25000), MESSAGE_CRLF)
        self.assertEqual(inbox.fetch([25000])[0].size, 56)

    def test_folders_and_special_use(self) -> None:
        account = self.account()
        listed = {entry.name: entry.attributes for entry in account.list_mailboxes()}
        self.assertEqual(
            sorted(listed), ["Deleted Messages", "INBOX", "Lists", "Lists/Twisted", "Sent"]
        )
        self.assertIn("\\Noselect", listed["Lists"])
        self.assertIn("\\Sent", listed["Sent"])
        self.assertIn("\\Trash", listed["Deleted Messages"])
        sent = account.open_mailbox("Sent")
        self.assertEqual(len(sent.uids()), 1)
        self.assertEqual(sent.fetch(sent.uids())[0].flags, frozenset({"\\Seen"}))
        # No default folders are added to an existing tree.
        self.assertFalse(os.path.exists(os.path.join(self.root, ".Drafts")))

    def test_keywords_shared_with_dovecot(self) -> None:
        inbox = self.inbox()
        inbox.store([25000], ["NonJunk", "$Important"], StoreMode.ADD)
        with open(os.path.join(self.root, "dovecot-keywords")) as handle:
            self.assertEqual(handle.read(), "0 $Forwarded\n1 NonJunk\n2 $Important\n")
        name = next(n for n in self.cur_files() if n.startswith("1600000000."))
        self.assertEqual(split_filename(name)[1], "Sbc")

    def test_adopted_uids_survive_reindex(self) -> None:
        self.inbox()
        os.unlink(os.path.join(self.root, "dovecot-uidlist"))
        reindex(self.account())
        inbox = self.inbox()
        self.assertEqual(inbox.uidvalidity, 1275660208)
        self.assertEqual(list(inbox.uids()), [25000, 25005, 25010, 25022])
