"""The in-memory backend: the shared storage suite plus what is its own."""

from __future__ import annotations

import datetime
import io
from collections.abc import Iterable, Sequence
from typing import IO, Any

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailsrv.errors import (
    InvalidMailboxName,
    MailboxExists,
    MailboxNotEmpty,
    NoSuchMailbox,
    StorageError,
)
from mailsrv.interfaces import (
    DELETED,
    SEEN,
    IAccount,
    IMailbox,
    IMailboxListener,
    IMessage,
    IMessageCache,
    IStorage,
    StoreMode,
)
from mailsrv.storage.memory import MemoryMailbox, MemoryStorage
from mailsrv.testing.storage import ListenerRecorder, StorageSuiteMixin


class MemoryStorageTests(StorageSuiteMixin, unittest.TestCase):
    def make_storage(self) -> IStorage:
        return MemoryStorage()

    def deliver_outside(self, storage: IStorage, data: bytes) -> int:
        """Memory's writer from outside the mailbox objects: deliver(), the
        way a test or an embedding application plays the MTA."""
        assert isinstance(storage, MemoryStorage)
        return storage.deliver(self.username, data)

    def forget_expunges(self, storage: IStorage, mailbox: IMailbox) -> None:
        assert isinstance(mailbox, MemoryMailbox)
        mailbox.forget_expunges()


def _message(number: int) -> bytes:
    return b"Subject: %d\r\n\r\nbody %d\r\n" % (number, number)


@implementer(IMailboxListener)
class _BrokenListener:
    def messages_added(self, mailbox: IMailbox, uids: Sequence[int]) -> None:
        raise RuntimeError("listener bug")

    def flags_changed(self, mailbox: IMailbox, messages: Sequence[IMessage]) -> None:
        raise RuntimeError("listener bug")

    def messages_expunged(self, mailbox: IMailbox, uids: Sequence[int]) -> None:
        raise RuntimeError("listener bug")


class MemoryBackendTests(unittest.SynchronousTestCase):
    """What the in-memory backend promises beyond the shared contract."""

    def setUp(self) -> None:
        self.storage = MemoryStorage()
        self.account = self.storage.account("alice")

    def test_interfaces(self) -> None:
        mailbox = self.account.get_mailbox("INBOX")
        self.assertTrue(verifyObject(IStorage, self.storage))
        self.assertTrue(verifyObject(IAccount, self.account))
        self.assertTrue(verifyObject(IMailbox, mailbox))
        self.assertTrue(verifyObject(IMessageCache, mailbox))

    def test_same_account_object(self) -> None:
        self.assertIs(self.storage.account("alice"), self.account)
        self.assertIs(self.storage.account("alice", home="/home/alice"), self.account)
        self.assertIsNot(self.storage.account("bob"), self.account)
        self.assertRaises(StorageError, self.storage.account, "")

    def test_deliver(self) -> None:
        date = datetime.datetime(2022, 2, 2, 2, 2, 2, tzinfo=datetime.UTC)
        uid = self.storage.deliver("carol", b"Subject: x\n\nhi\n", "Junk", ["$Spam"], date)
        mailbox = self.storage.account("carol").get_mailbox("Junk")
        [info] = mailbox.fetch([uid])
        self.assertEqual((info.flags, info.internal_date), (frozenset({"$Spam"}), date))
        self.assertEqual(mailbox.open(uid).read(), b"Subject: x\r\n\r\nhi\r\n")
        self.assertEqual(self.storage.deliver("carol", _message(2)), 1)
        self.assertRaises(NoSuchMailbox, self.storage.deliver, "carol", _message(3), "Nowhere")
        self.assertRaises(StorageError, self.storage.deliver, "carol", "text")

    def test_name_normalisation(self) -> None:
        self.account.create_mailbox("inbox/Sub")
        self.assertIn("INBOX/Sub", [e.name for e in self.account.list_mailboxes()])
        self.assertEqual(self.account.get_mailbox("Inbox/Sub").name, "INBOX/Sub")
        # Dots are ordinary characters here (Maildir++ refuses them).
        self.account.create_mailbox("v1.2")
        self.assertEqual(self.account.get_mailbox("v1.2").name, "v1.2")
        for bad in ("a*b", "100%", "x\u0085y", "\ud800", "a/./b", "y" * 1001):
            self.assertRaises(InvalidMailboxName, self.account.create_mailbox, bad)
        self.account.create_mailbox("z" * 1000)

    def test_delete_noselect(self) -> None:
        self.account.create_mailbox("P/C")
        self.account.delete_mailbox("P")
        # Deleting a \Noselect parent that still has children is refused.
        error = self.assertRaises(MailboxNotEmpty, self.account.delete_mailbox, "P")
        self.assertEqual(error.code, "INUSE")
        # Once the child is gone the parent disappears with it.
        self.account.delete_mailbox("P/C")
        self.assertNotIn("P", [e.name for e in self.account.list_mailboxes()])
        # Creating a \Noselect name makes it a mailbox again.
        self.account.create_mailbox("Q/C")
        self.account.delete_mailbox("Q")
        self.account.create_mailbox("Q")
        self.assertEqual(self.account.get_mailbox("Q").status().messages, 0)

    def test_deleted_mailbox_handle(self) -> None:
        self.account.create_mailbox("Temp")
        mailbox = self.account.get_mailbox("Temp")
        uid = mailbox.append(io.BytesIO(_message(1)))
        recorder = ListenerRecorder()
        mailbox.add_listener(recorder)
        self.account.delete_mailbox("Temp")
        # A session that had it selected hears its messages vanish, and
        # cannot add new ones to a mailbox that no longer exists.
        self.assertEqual(recorder.expunged(), [uid])
        self.assertEqual(list(mailbox.uids()), [])
        self.assertRaises(NoSuchMailbox, mailbox.append, io.BytesIO(_message(2)))
        inbox = self.account.get_mailbox("INBOX")
        inbox_uid = inbox.append(io.BytesIO(_message(3)))
        self.assertRaises(NoSuchMailbox, inbox.copy, [inbox_uid], mailbox)

    def test_recreated_mailbox_new_uidvalidity(self) -> None:
        self.account.create_mailbox("Again")
        first = self.account.get_mailbox("Again").uidvalidity
        self.account.delete_mailbox("Again")
        self.account.create_mailbox("Again")
        self.assertNotEqual(self.account.get_mailbox("Again").uidvalidity, first)

    def test_rename_errors(self) -> None:
        self.account.create_mailbox("Top")
        self.assertRaises(InvalidMailboxName, self.account.rename_mailbox, "Top", "Top/Inner")
        self.assertRaises(MailboxExists, self.account.rename_mailbox, "Top", "Top/")
        # A handle opened before a rename follows the mailbox.
        mailbox = self.account.get_mailbox("Top")
        self.account.rename_mailbox("Top", "Bottom")
        self.assertEqual(mailbox.name, "Bottom")

    def test_bad_flags(self) -> None:
        inbox = self.account.get_mailbox("INBOX")
        uid = inbox.append(io.BytesIO(_message(1)))
        for flags in (["\\Unknown"], ["two words"], ["paren("], [""], ["caf\u00e9"]):
            error = self.assertRaises(StorageError, inbox.store, [uid], flags, StoreMode.ADD)
            self.assertEqual(error.code, "CANNOT")
            self.assertRaises(StorageError, inbox.append, io.BytesIO(_message(2)), flags)
        self.assertRaises(StorageError, inbox.store, [uid], [SEEN], "toggle")
        self.assertEqual(list(inbox.uids()), [uid])
        self.assertEqual(inbox.fetch([uid])[0].flags, frozenset())

    def test_bad_append(self) -> None:
        inbox = self.account.get_mailbox("INBOX")
        naive = datetime.datetime(2020, 1, 1)
        self.assertRaises(StorageError, inbox.append, io.BytesIO(_message(1)), (), naive)
        self.assertRaises(StorageError, inbox.append, io.StringIO("text"))
        self.assertEqual(inbox.status().messages, 0)

    def test_unknown_special_use(self) -> None:
        error = self.assertRaises(StorageError, self.account.create_mailbox, "Odd", ["\\Important"])
        self.assertEqual(error.code, "USEATTR")
        self.assertNotIn("Odd", [e.name for e in self.account.list_mailboxes()])

    def test_broken_listener_does_not_lose_changes(self) -> None:
        inbox = self.account.get_mailbox("INBOX")
        recorder = ListenerRecorder()
        inbox.add_listener(_BrokenListener())
        inbox.add_listener(recorder)
        uid = inbox.append(io.BytesIO(_message(1)))
        inbox.store([uid], [DELETED], StoreMode.ADD)
        self.assertEqual(list(inbox.expunge()), [uid])
        self.assertEqual(recorder.added(), [uid])
        self.assertEqual(recorder.expunged(), [uid])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)

    def test_copy_to_other_backend(self) -> None:
        """Copy and move into a mailbox that answers with Deferreds."""
        other = MemoryStorage().account("alice").get_mailbox("Archive")
        inbox = self.account.get_mailbox("INBOX")
        date = datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC)
        u1 = inbox.append(io.BytesIO(_message(1)), [SEEN], date)
        u2 = inbox.append(io.BytesIO(_message(2)))
        copy: Any = inbox.copy
        move: Any = inbox.move
        pairs = self.successResultOf(defer.maybeDeferred(copy, [u1], _AsyncMailbox(other)))
        self.assertEqual(pairs, [(u1, 1)])
        [info] = other.fetch([1])
        self.assertEqual((info.flags, info.internal_date), (frozenset({SEEN}), date))
        moved = self.successResultOf(defer.maybeDeferred(move, [u2], _AsyncMailbox(other)))
        self.assertEqual(moved, [(u2, 2)])
        self.assertEqual(list(inbox.uids()), [u1])
        self.assertEqual(other.open(2).read(), _message(2))

    def test_fetch_range(self) -> None:
        inbox = self.account.get_mailbox("INBOX")
        uids = [inbox.append(io.BytesIO(_message(n))) for n in range(3)]
        # "1:*" as a huge range stays cheap.
        self.assertEqual([m.uid for m in inbox.fetch(range(2, 2**32))], uids[1:])
        self.assertEqual(inbox.uids(), tuple(uids))


class _AsyncMailbox:
    """A mailbox of some other backend: append answers with a Deferred."""

    def __init__(self, wrapped: MemoryMailbox) -> None:
        self._wrapped = wrapped

    def append(
        self, source: IO[bytes], flags: Iterable[str] = (), internal_date: Any = None
    ) -> Any:
        return defer.succeed(self._wrapped.append(source, flags, internal_date))
