"""Maildir++ storage: the tree on disk, names, big messages, adoption.

Everything is checked the way a user or another program would see it: files
and names on disk, bytes read back, UIDs and flags returned.
"""

from __future__ import annotations

import datetime
import io
import os
import stat
import tracemalloc
from typing import Any

from zope.interface.verify import verifyObject

from mailsrv.errors import (
    InvalidMailboxName,
    MailboxExists,
    MailboxNotEmpty,
    NoSuchMailbox,
    StorageError,
)
from mailsrv.interfaces import (
    DEFAULT_FOLDERS,
    IAccount,
    IMailbox,
    IMaildropLocking,
    IMessageCache,
    IPop3UidSource,
    IStorage,
    IWatchingStorage,
    StoreMode,
)
from mailsrv.storage import names
from mailsrv.storage.maildir import MaildirMailbox, MaildirStorage, reindex
from mailsrv.storage.maildir.layout import split_filename
from tests.maildir_case import MESSAGE, MESSAGE_CRLF, MaildirTestCase, Recorder


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

    def test_staged_message_with_old_date_survives_another_opener(self) -> None:
        """A message waits in tmp/ dated by its INTERNALDATE (an APPEND of
        a 2001 message, a COPY's hard link of an old file); another process
        opening the folder meanwhile clears only tmp/ files untouched for 36
        hours, which that date must not make it look."""
        self.inbox()
        staged = os.path.join(self.root, "tmp", "1000000000.M1P1.staged")
        with open(staged, "wb") as handle:
            handle.write(MESSAGE_CRLF)
        old = datetime.datetime(2001, 9, 9, tzinfo=datetime.UTC).timestamp()
        os.utime(staged, (old, old))
        self.storage().account("alice").open_mailbox("INBOX")  # another opener
        self.assertTrue(os.path.exists(staged))

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
