"""The storage contract as tests every backend runs.

A backend's test module mixes :class:`StorageSuiteMixin` into a trial
``TestCase`` and says how to build its storage::

    class MemoryStorageTests(StorageSuiteMixin, unittest.TestCase):
        def make_storage(self) -> IStorage:
            return MemoryStorage()

Hooks a backend may override:

* :meth:`StorageSuiteMixin.make_storage` (required): a fresh, empty storage.
* :meth:`StorageSuiteMixin.reopen_storage`: a new storage over the same
  data, as after a restart; the default returns the same object, so
  persistent backends override it and the suite checks that UIDs, flags,
  UIDVALIDITY and subscriptions survive.
* :meth:`StorageSuiteMixin.deliver_outside`: put a message into the
  suite user's INBOX the way a writer other than the storage object under
  test does (an MTA writing files, another node of a database); the suite
  checks that :meth:`~mailsrv.interfaces.IMailbox.check` finds it.  Without
  it that test is skipped, saying why.
* :attr:`StorageSuiteMixin.username`: the user the suite works as.
* :attr:`StorageSuiteMixin.bulk_message_count`: how many messages the
  large-mailbox test appends.

Every call goes through :func:`call` (``defer.maybeDeferred``), so backends
that answer with Deferreds or coroutines pass the same tests as synchronous
ones.  Only what a client could observe is asserted: names, attributes,
bytes, flags, dates, counters, UIDs and listener notifications.
"""

# mypy: allow-untyped-calls
# (trial's assertion methods are not annotated)

from __future__ import annotations

import datetime
import io
import random
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet import defer
from twisted.trial.unittest import SkipTest
from zope.interface import implementer

from mailsrv.errors import (
    InvalidMailboxName,
    MailboxExists,
    NoSuchMailbox,
    NoSuchMessage,
    StorageError,
)
from mailsrv.interfaces import (
    DEFAULT_FOLDERS,
    DELETED,
    FLAGGED,
    RECENT,
    SEEN,
    IAccount,
    IMailbox,
    IMailboxListener,
    IMessage,
    IMessageCache,
    IStorage,
    MailboxEntry,
    MailboxStatus,
    StoreMode,
)

if TYPE_CHECKING:
    from twisted.trial.unittest import TestCase

    _Base = TestCase
else:
    _Base = object

__all__ = ["ListenerRecorder", "StorageSuiteMixin", "call", "message_bytes"]

_E = TypeVar("_E", bound=Exception)


def call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
    """Call a storage method that may answer with a value or a Deferred."""
    return defer.maybeDeferred(function, *args, **kwargs)


def message_bytes(number: int, body: bytes = b"", newline: bytes = b"\r\n") -> bytes:
    """A small, distinct RFC 5322 message; ``newline`` picks its line ends."""
    lines = [
        b"From: Sender <sender@example.org>",
        b"To: Recipient <rcpt@example.org>",
        b"Subject: message %d" % number,
        b"Message-ID: <%d@example.org>" % number,
        b"",
        b"Body of message %d." % number,
    ]
    if body:
        lines.append(body)
    return newline.join(lines) + newline


def _wire(data: bytes) -> bytes:
    """What the contract says a backend stores: every line end as CRLF."""
    return re.sub(rb"\r?\n", b"\r\n", data)


@implementer(IMailboxListener)
class ListenerRecorder:
    """Keeps every notification a mailbox gives, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def messages_added(self, mailbox: IMailbox, uids: Sequence[int]) -> None:
        self.events.append(("added", list(uids)))

    def flags_changed(self, mailbox: IMailbox, messages: Sequence[IMessage]) -> None:
        self.events.append(("flags", [(m.uid, frozenset(m.flags), m.modseq) for m in messages]))

    def messages_expunged(self, mailbox: IMailbox, uids: Sequence[int]) -> None:
        self.events.append(("expunged", list(uids)))

    def added(self) -> list[int]:
        return [uid for kind, uids in self.events if kind == "added" for uid in uids]

    def expunged(self) -> list[int]:
        return [uid for kind, uids in self.events if kind == "expunged" for uid in uids]

    def flags(self) -> dict[int, frozenset[str]]:
        """The last flags heard for each UID."""
        result: dict[int, frozenset[str]] = {}
        for kind, values in self.events:
            if kind == "flags":
                for uid, flags, _modseq in values:
                    result[uid] = flags
        return result


class StorageSuiteMixin(_Base):
    """The IStorage/IAccount/IMailbox contract, for any backend."""

    #: The user every test works as.
    username: str = "alice"
    #: Messages appended by :meth:`test_many_messages`.
    bulk_message_count: int = 2000

    # -- hooks ------------------------------------------------------------------

    def make_storage(self) -> IStorage:
        """A fresh storage with no accounts; backends must override this."""
        raise NotImplementedError("mix StorageSuiteMixin into a TestCase that defines make_storage")

    def reopen_storage(self, storage: IStorage) -> IStorage:
        """A storage over the same data as ``storage``, as after a restart."""
        return storage

    def deliver_outside(self, storage: IStorage, data: bytes) -> object:
        """Put ``data`` into :attr:`username`'s INBOX in ``storage`` from
        outside ``storage``'s objects: what ``IMailbox.check`` must find.
        May answer a Deferred or be a coroutine function."""
        raise SkipTest(
            f"{type(self).__name__} defines no deliver_outside: no writer outside the "
            "storage object to check against"
        )

    # -- helpers ----------------------------------------------------------------

    async def account(self, storage: IStorage | None = None) -> IAccount:
        if storage is None:
            storage = self.make_storage()
        account: IAccount = await call(storage.account, self.username)
        return account

    async def reopen(self, storage: IStorage) -> IAccount:
        """The suite user's account in a reopened ``storage``."""
        return await self.account(self.reopen_storage(storage))

    async def mailbox(self, account: IAccount, name: str) -> IMailbox:
        mailbox: IMailbox = await call(account.get_mailbox, name)
        return mailbox

    async def append(
        self,
        mailbox: IMailbox,
        data: bytes,
        flags: Iterable[str] = (),
        internal_date: datetime.datetime | None = None,
    ) -> int:
        uid: int = await call(mailbox.append, io.BytesIO(data), flags, internal_date)
        return uid

    async def seed(self, mailbox: IMailbox, count: int, start: int = 1) -> list[int]:
        uids = []
        for number in range(start, start + count):
            uids.append(await self.append(mailbox, message_bytes(number)))
        return uids

    async def read(self, mailbox: IMailbox, uid: int) -> bytes:
        handle = await call(mailbox.open, uid)
        try:
            data: bytes = handle.read()
        finally:
            handle.close()
        return data

    async def info(self, mailbox: IMailbox, uid: int) -> IMessage:
        found: list[IMessage] = list(await call(mailbox.fetch, [uid]))
        self.assertEqual([m.uid for m in found], [uid])
        return found[0]

    async def flags_of(self, mailbox: IMailbox, uid: int) -> frozenset[str]:
        return frozenset((await self.info(mailbox, uid)).flags)

    async def status(self, mailbox: IMailbox) -> MailboxStatus:
        status: MailboxStatus = await call(mailbox.status)
        return status

    async def uids(self, mailbox: IMailbox) -> list[int]:
        return list(await call(mailbox.uids))

    async def entries(self, account: IAccount) -> dict[str, frozenset[str]]:
        listed: Sequence[MailboxEntry] = await call(account.list_mailboxes)
        return {entry.name: frozenset(entry.attributes) for entry in listed}

    async def fails(
        self, error: type[_E], function: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> _E:
        """Assert that the call fails with ``error``; return the exception."""
        try:
            result = await call(function, *args, **kwargs)
        except error as exc:
            return exc
        self.fail(f"{function.__name__}{args!r} gave {result!r}, not {error.__name__}")

    # -- the account --------------------------------------------------------------

    async def test_new_account_has_default_folders(self) -> None:
        account = await self.account()
        self.assertEqual(account.username, self.username)
        self.assertEqual(account.delimiter, "/")
        listed: Sequence[MailboxEntry] = await call(account.list_mailboxes)
        self.assertEqual(listed[0].name, "INBOX")
        entries = {entry.name: entry.attributes for entry in listed}
        for name, use in DEFAULT_FOLDERS:
            self.assertIn(name, entries)
            self.assertIn(use, entries[name])
            self.assertNotIn("\\Noselect", entries[name])
            mailbox = await self.mailbox(account, name)
            self.assertEqual(mailbox.name, name)
            self.assertIn(use, mailbox.special_use)
            self.assertEqual((await self.status(mailbox)).messages, 0)
        inbox = await self.mailbox(account, "INBOX")
        self.assertEqual(inbox.special_use, frozenset())
        self.assertEqual(await self.uids(inbox), [])

    async def test_same_user_same_data(self) -> None:
        storage = self.make_storage()
        first = await self.account(storage)
        second = await self.account(storage)
        await self.append(await self.mailbox(first, "INBOX"), message_bytes(1))
        await call(first.create_mailbox, "Shared")
        self.assertEqual((await self.status(await self.mailbox(second, "INBOX"))).messages, 1)
        self.assertIn("Shared", await self.entries(second))

    async def test_users_are_separate(self) -> None:
        storage = self.make_storage()
        mine = await self.account(storage)
        other: IAccount = await call(storage.account, self.username + "x")
        await self.append(await self.mailbox(mine, "INBOX"), message_bytes(1))
        await call(mine.create_mailbox, "Private")
        self.assertEqual((await self.status(await self.mailbox(other, "INBOX"))).messages, 0)
        self.assertNotIn("Private", await self.entries(other))

    async def test_inbox_is_case_insensitive(self) -> None:
        account = await self.account()
        mailbox = await self.mailbox(account, "inbox")
        self.assertEqual(mailbox.name, "INBOX")
        uid = await self.append(await self.mailbox(account, "InBoX"), message_bytes(1))
        self.assertEqual(await self.uids(await self.mailbox(account, "INBOX")), [uid])
        status: MailboxStatus = await call(account.status, "iNbOx")
        self.assertEqual(status.messages, 1)
        await self.fails(MailboxExists, account.create_mailbox, "inbox")
        names = [entry.name for entry in await call(account.list_mailboxes)]
        self.assertEqual([name for name in names if name.upper() == "INBOX"], ["INBOX"])

    async def test_create_with_parents(self) -> None:
        account = await self.account()
        await call(account.create_mailbox, "Projects/2024/Q1")
        entries = await self.entries(account)
        for name in ("Projects", "Projects/2024", "Projects/2024/Q1"):
            self.assertIn(name, entries)
        leaf = await self.mailbox(account, "Projects/2024/Q1")
        self.assertEqual(leaf.name, "Projects/2024/Q1")
        uid = await self.append(leaf, message_bytes(1))
        self.assertEqual(await self.uids(await self.mailbox(account, "Projects/2024/Q1")), [uid])
        # Creating a parent's sibling later keeps the existing tree.
        await call(account.create_mailbox, "Projects/2025")
        entries = await self.entries(account)
        self.assertIn("Projects/2024/Q1", entries)
        self.assertIn("Projects/2025", entries)

    async def test_create_trailing_delimiter(self) -> None:
        account = await self.account()
        await call(account.create_mailbox, "Receipts/")
        entries = await self.entries(account)
        self.assertIn("Receipts", entries)
        self.assertNotIn("Receipts/", entries)
        self.assertEqual((await self.mailbox(account, "Receipts")).name, "Receipts")

    async def test_create_existing(self) -> None:
        account = await self.account()
        await call(account.create_mailbox, "Work")
        uid = await self.append(await self.mailbox(account, "Work"), message_bytes(1))
        exc = await self.fails(MailboxExists, account.create_mailbox, "Work")
        self.assertEqual(getattr(exc, "code", None), "ALREADYEXISTS")
        await self.fails(MailboxExists, account.create_mailbox, "Work/")
        await self.fails(MailboxExists, account.create_mailbox, "INBOX")
        await self.fails(MailboxExists, account.create_mailbox, "Sent")
        # The failed creates left the mailbox alone.
        self.assertEqual(await self.uids(await self.mailbox(account, "Work")), [uid])

    async def test_create_special_use(self) -> None:
        account = await self.account()
        await call(account.create_mailbox, "Old mail", ["\\Archive"])
        entries = await self.entries(account)
        self.assertIn("\\Archive", entries["Old mail"])
        mailbox = await self.mailbox(account, "Old mail")
        self.assertEqual(mailbox.special_use, frozenset({"\\Archive"}))
        await call(account.create_mailbox, "Plain")
        self.assertEqual((await self.mailbox(account, "Plain")).special_use, frozenset())

    async def test_missing_mailbox(self) -> None:
        account = await self.account()
        calls: list[tuple[Callable[..., Any], tuple[str, ...]]] = [
            (account.get_mailbox, ("Nowhere",)),
            (account.delete_mailbox, ("Nowhere",)),
            (account.rename_mailbox, ("Nowhere", "Somewhere")),
            (account.status, ("Nowhere",)),
            (account.get_mailbox, ("Sent/Nowhere",)),
        ]
        for function, args in calls:
            exc = await self.fails(NoSuchMailbox, function, *args)
            self.assertEqual(getattr(exc, "code", None), "NONEXISTENT")
        self.assertNotIn("Somewhere", await self.entries(account))

    async def test_delete(self) -> None:
        account = await self.account()
        await call(account.create_mailbox, "Doomed")
        doomed = await self.mailbox(account, "Doomed")
        await self.seed(doomed, 3)
        before = await self.status(doomed)
        await call(account.delete_mailbox, "Doomed")
        self.assertNotIn("Doomed", await self.entries(account))
        await self.fails(NoSuchMailbox, account.get_mailbox, "Doomed")
        await self.fails(NoSuchMailbox, account.status, "Doomed")
        await self.fails(NoSuchMailbox, account.delete_mailbox, "Doomed")
        # A new mailbox of the same name starts empty, and a client that
        # cached the old one can tell (RFC 3501 2.3.1.1).
        await call(account.create_mailbox, "Doomed")
        again = await self.mailbox(account, "Doomed")
        after = await self.status(again)
        self.assertEqual(after.messages, 0)
        self.assertEqual(await self.uids(again), [])
        self.assertTrue(
            after.uidvalidity != before.uidvalidity or after.uidnext >= before.uidnext,
            "a re-created mailbox reuses UIDs under the old UIDVALIDITY",
        )
        uid = await self.append(again, message_bytes(9))
        self.assertEqual(await self.read(again, uid), message_bytes(9))

    async def test_delete_with_children(self) -> None:
        account = await self.account()
        await call(account.create_mailbox, "Parent/Child")
        await self.seed(await self.mailbox(account, "Parent"), 2)
        child_uid = await self.append(await self.mailbox(account, "Parent/Child"), message_bytes(5))
        await call(account.delete_mailbox, "Parent")
        entries = await self.entries(account)
        self.assertIn("Parent", entries)
        self.assertIn("\\Noselect", entries["Parent"])
        self.assertIn("\\HasChildren", entries["Parent"])
        self.assertIn("Parent/Child", entries)
        self.assertNotIn("\\Noselect", entries["Parent/Child"])
        child = await self.mailbox(account, "Parent/Child")
        self.assertEqual(await self.uids(child), [child_uid])
        self.assertEqual(await self.read(child, child_uid), message_bytes(5))

    async def test_delete_inbox_refused(self) -> None:
        account = await self.account()
        uid = await self.append(await self.mailbox(account, "INBOX"), message_bytes(1))
        await self.fails(StorageError, account.delete_mailbox, "INBOX")
        await self.fails(StorageError, account.delete_mailbox, "inbox")
        inbox = await self.mailbox(account, "INBOX")
        self.assertEqual(await self.uids(inbox), [uid])
        self.assertEqual((await call(account.list_mailboxes))[0].name, "INBOX")

    async def test_rename_with_children(self) -> None:
        account = await self.account()
        await call(account.create_mailbox, "Old/Sub/Deep")
        flags = {"\\Flagged", "$Work"}
        top = await self.append(await self.mailbox(account, "Old"), message_bytes(1), flags)
        deep = await self.append(await self.mailbox(account, "Old/Sub/Deep"), message_bytes(2))
        await call(account.rename_mailbox, "Old", "New")
        entries = await self.entries(account)
        for name in ("Old", "Old/Sub", "Old/Sub/Deep"):
            self.assertNotIn(name, entries)
        for name in ("New", "New/Sub", "New/Sub/Deep"):
            self.assertIn(name, entries)
        renamed = await self.mailbox(account, "New")
        self.assertEqual(renamed.name, "New")
        [uid] = await self.uids(renamed)
        self.assertEqual(await self.read(renamed, uid), message_bytes(1))
        self.assertEqual(await self.flags_of(renamed, uid), flags)
        deep_box = await self.mailbox(account, "New/Sub/Deep")
        [uid] = await self.uids(deep_box)
        self.assertEqual(await self.read(deep_box, uid), message_bytes(2))
        await self.fails(NoSuchMailbox, account.get_mailbox, "Old")
        del top, deep

    async def test_rename_into_new_parent(self) -> None:
        account = await self.account()
        await call(account.create_mailbox, "Loose")
        await self.seed(await self.mailbox(account, "Loose"), 1)
        await call(account.rename_mailbox, "Loose", "Filed/Away/Loose")
        entries = await self.entries(account)
        self.assertNotIn("Loose", entries)
        self.assertIn("Filed", entries)
        self.assertIn("Filed/Away", entries)
        moved = await self.mailbox(account, "Filed/Away/Loose")
        self.assertEqual(len(await self.uids(moved)), 1)

    async def test_rename_keeps_special_use(self) -> None:
        account = await self.account()
        await call(account.rename_mailbox, "Sent", "Sent Mail")
        entries = await self.entries(account)
        self.assertNotIn("Sent", entries)
        self.assertIn("\\Sent", entries["Sent Mail"])
        self.assertEqual((await self.mailbox(account, "Sent Mail")).special_use, {"\\Sent"})

    async def test_rename_inbox(self) -> None:
        account = await self.account()
        inbox = await self.mailbox(account, "INBOX")
        date = datetime.datetime(2020, 5, 17, 8, 30, 15, tzinfo=datetime.UTC)
        first = await self.append(inbox, message_bytes(1), [SEEN], date)
        second = await self.append(inbox, message_bytes(2), ["$Label1"])
        await call(account.create_mailbox, "INBOX/Kept")
        kept = await self.append(await self.mailbox(account, "INBOX/Kept"), message_bytes(3))
        old_status = await self.status(inbox)
        await call(account.rename_mailbox, "INBOX", "Before 2024")
        entries = await self.entries(account)
        self.assertIn("INBOX", entries)
        self.assertIn("Before 2024", entries)
        self.assertIn("INBOX/Kept", entries)
        self.assertNotIn("Before 2024/Kept", entries)
        moved = await self.mailbox(account, "Before 2024")
        uids = await self.uids(moved)
        self.assertEqual(len(uids), 2)
        contents = [await self.read(moved, uid) for uid in uids]
        self.assertEqual(contents, [message_bytes(1), message_bytes(2)])
        infos = list(await call(moved.fetch, uids))
        self.assertEqual([frozenset(m.flags) for m in infos], [{SEEN}, {"$Label1"}])
        self.assertEqual(infos[0].internal_date, date)
        inbox = await self.mailbox(account, "INBOX")
        self.assertEqual(await self.uids(inbox), [])
        self.assertEqual((await self.status(inbox)).messages, 0)
        # New mail in the emptied INBOX does not reuse the moved UIDs
        # under the UIDVALIDITY a client cached.
        new_status = await self.status(inbox)
        self.assertTrue(
            new_status.uidvalidity != old_status.uidvalidity
            or new_status.uidnext > max(first, second)
        )
        uid = await self.append(inbox, message_bytes(4))
        if new_status.uidvalidity == old_status.uidvalidity:
            self.assertGreater(uid, max(first, second))
        child = await self.mailbox(account, "INBOX/Kept")
        self.assertEqual(await self.uids(child), [kept])

    async def test_rename_onto_existing(self) -> None:
        account = await self.account()
        await call(account.create_mailbox, "One")
        await call(account.create_mailbox, "Two")
        uid = await self.append(await self.mailbox(account, "One"), message_bytes(1))
        await self.fails(MailboxExists, account.rename_mailbox, "One", "Two")
        await self.fails(MailboxExists, account.rename_mailbox, "One", "INBOX")
        await self.fails(MailboxExists, account.rename_mailbox, "One", "Trash")
        self.assertEqual(await self.uids(await self.mailbox(account, "One")), [uid])
        self.assertEqual(await self.uids(await self.mailbox(account, "Two")), [])

    async def test_list_attributes(self) -> None:
        account = await self.account()
        await call(account.create_mailbox, "Tree/Leaf")
        listed: Sequence[MailboxEntry] = await call(account.list_mailboxes)
        self.assertEqual(listed[0].name, "INBOX")
        names = [entry.name for entry in listed]
        self.assertEqual(len(names), len(set(names)))
        entries = await self.entries(account)
        self.assertIn("\\HasChildren", entries["Tree"])
        self.assertNotIn("\\HasNoChildren", entries["Tree"])
        self.assertIn("\\HasNoChildren", entries["Tree/Leaf"])
        self.assertIn("\\HasNoChildren", entries["Sent"])
        self.assertIn("\\HasNoChildren", entries["INBOX"])
        await call(account.create_mailbox, "INBOX/Sub")
        # A child of INBOX must not make INBOX appear twice, or as \Noselect.
        listed = await call(account.list_mailboxes)
        names = [entry.name for entry in listed]
        self.assertEqual(names.count("INBOX"), 1)
        self.assertIn("\\HasChildren", (await self.entries(account))["INBOX"])
        self.assertNotIn("\\Noselect", (await self.entries(account))["INBOX"])
        await call(account.delete_mailbox, "Tree/Leaf")
        entries = await self.entries(account)
        self.assertNotIn("Tree/Leaf", entries)
        self.assertIn("\\HasNoChildren", entries["Tree"])

    async def test_subscriptions(self) -> None:
        storage = self.make_storage()
        account = await self.account(storage)
        await call(account.subscribe, "Sent")
        await call(account.subscribe, "Not/Yet/There")
        await call(account.subscribe, "Sent")
        await call(account.subscribe, "Gone")
        subscribed = list(await call(account.subscriptions))
        self.assertEqual(sorted(subscribed), ["Gone", "Not/Yet/There", "Sent"])
        await call(account.unsubscribe, "Gone")
        self.assertEqual(sorted(await call(account.subscriptions)), ["Not/Yet/There", "Sent"])
        # Subscriptions are names, not mailboxes: none was created.
        self.assertNotIn("Not/Yet/There", await self.entries(account))
        reopened = await self.reopen(storage)
        self.assertEqual(sorted(await call(reopened.subscriptions)), ["Not/Yet/There", "Sent"])

    async def test_non_ascii_names(self) -> None:
        storage = self.make_storage()
        account = await self.account(storage)
        names = ["Entwürfe", "Проекты/Отчёты", "日本語", "Café & Bar", "Post 📬"]
        for name in names:
            await call(account.create_mailbox, name)
            await self.append(await self.mailbox(account, name), message_bytes(1))
        await call(account.subscribe, "Entwürfe")
        for current in (account, await self.reopen(storage)):
            entries = await self.entries(current)
            for name in names:
                self.assertIn(name, entries)
                mailbox = await self.mailbox(current, name)
                self.assertEqual(mailbox.name, name)
                self.assertEqual((await self.status(mailbox)).messages, 1)
            self.assertIn("Проекты", entries)
            self.assertIn("Entwürfe", await call(current.subscriptions))
        await call(account.rename_mailbox, "日本語", "中文")
        self.assertIn("中文", await self.entries(account))
        await call(account.delete_mailbox, "中文")
        self.assertNotIn("中文", await self.entries(account))

    async def test_invalid_names(self) -> None:
        account = await self.account()
        await call(account.create_mailbox, "Valid")
        bad = [
            "",
            "/",
            "a//b",
            "/leading",
            "..",
            "a/../b",
            "bell\x07",
            "new\nline",
            "nul\x00",
            "tab\there",
            "del\x7f",
            "x" * 1500,
            "/".join(["level"] * 300),
        ]
        before = await self.entries(account)
        for name in bad:
            exc = await self.fails(InvalidMailboxName, account.create_mailbox, name)
            self.assertTrue(str(exc), f"no reason given for {name!r}")
            await self.fails(InvalidMailboxName, account.rename_mailbox, "Valid", name)
        self.assertEqual(await self.entries(account), before)
        # Looking up such a name never finds anything.
        for name in bad:
            try:
                await call(account.get_mailbox, name)
            except (InvalidMailboxName, NoSuchMailbox):
                pass
            else:
                self.fail(f"get_mailbox({name!r}) found a mailbox")

    # -- messages -------------------------------------------------------------

    async def test_append_uids(self) -> None:
        account = await self.account()
        inbox = await self.mailbox(account, "INBOX")
        start = await self.status(inbox)
        self.assertGreaterEqual(start.uidnext, 1)
        self.assertGreater(start.uidvalidity, 0)
        self.assertEqual(inbox.uidnext, start.uidnext)
        self.assertEqual(inbox.uidvalidity, start.uidvalidity)
        uids = await self.seed(inbox, 5)
        self.assertEqual(uids[0], start.uidnext)
        self.assertEqual(uids, sorted(set(uids)))
        self.assertEqual(await self.uids(inbox), uids)
        status = await self.status(inbox)
        self.assertGreater(status.uidnext, uids[-1])
        self.assertEqual(inbox.uidnext, status.uidnext)
        self.assertEqual(status.messages, 5)
        self.assertEqual(status.uidvalidity, start.uidvalidity)
        # A folder counts its own UIDs.
        sent = await self.mailbox(account, "Sent")
        self.assertEqual(
            await self.append(sent, message_bytes(9)), (await self.status(sent)).uidnext - 1
        )

    async def test_append_flags_and_date(self) -> None:
        inbox = await self.mailbox(await self.account(), "INBOX")
        offset = datetime.timezone(datetime.timedelta(hours=-7, minutes=-30))
        date = datetime.datetime(2019, 12, 31, 23, 59, 58, 750000, tzinfo=offset)
        uid = await self.append(
            inbox, message_bytes(1), ["\\SEEN", "\\flagged", "$Forwarded"], date
        )
        info = await self.info(inbox, uid)
        self.assertEqual(info.flags, frozenset({SEEN, FLAGGED, "$Forwarded"}))
        self.assertIsNotNone(info.internal_date.tzinfo)
        self.assertEqual(info.internal_date, date.replace(microsecond=0))
        self.assertEqual(info.size, len(message_bytes(1)))
        self.assertGreater(info.modseq, 0)
        before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        plain = await self.append(inbox, message_bytes(2))
        after = datetime.datetime.now(datetime.UTC)
        info = await self.info(inbox, plain)
        self.assertEqual(info.flags, frozenset())
        self.assertIsNotNone(info.internal_date.tzinfo)
        self.assertTrue(before <= info.internal_date <= after, info.internal_date)

    async def test_content_round_trip(self) -> None:
        inbox = await self.mailbox(await self.account(), "INBOX")
        crlf = message_bytes(1, b"\xe2\x82\xac 8-bit body \x00\xff")
        lf = message_bytes(2, newline=b"\n")
        mixed = b"Subject: mixed\r\n\nline one\nline two\r\n\r\nend\n"
        rng = random.Random(20240501)
        lines = []
        for number in range(12000):
            text = b"%d " % number + b"y" * rng.randrange(0, 80)
            lines.append(text + rng.choice([b"\n", b"\r\n"]))
        big = b"Subject: big\n\n" + b"".join(lines)
        for data in (crlf, lf, mixed, big):
            uid = await self.append(inbox, data)
            wire = _wire(data)
            stored = await self.read(inbox, uid)
            self.assertEqual(len(stored), len(wire))
            self.assertTrue(stored == wire, f"message {uid} changed on the way through")
            self.assertEqual((await self.info(inbox, uid)).size, len(wire))
        status = await self.status(inbox)
        self.assertEqual(status.size, sum(len(_wire(d)) for d in (crlf, lf, mixed, big)))

    async def test_open_missing(self) -> None:
        inbox = await self.mailbox(await self.account(), "INBOX")
        first, second = await self.seed(inbox, 2)
        await call(inbox.store, [first], [DELETED], StoreMode.ADD)
        await call(inbox.expunge)
        exc = await self.fails(NoSuchMessage, inbox.open, first)
        self.assertEqual(getattr(exc, "code", None), "NONEXISTENT")
        await self.fails(NoSuchMessage, inbox.open, second + 1000)
        self.assertEqual(await self.read(inbox, second), message_bytes(2))

    async def test_fetch(self) -> None:
        inbox = await self.mailbox(await self.account(), "INBOX")
        u1, u2, u3 = await self.seed(inbox, 3)
        found = list(await call(inbox.fetch, [u3, u3 + 50, u1]))
        self.assertEqual([m.uid for m in found], [u1, u3])
        found = list(await call(inbox.fetch, iter(range(1, u3 + 10))))
        self.assertEqual([m.uid for m in found], [u1, u2, u3])
        self.assertEqual(list(await call(inbox.fetch, [])), [])
        for message in found:
            self.assertTrue(IMessage.providedBy(message))
            self.assertEqual(message.size, len(message_bytes(message.uid - u1 + 1)))

    async def test_store_modes(self) -> None:
        inbox = await self.mailbox(await self.account(), "INBOX")
        u1, u2 = await self.seed(inbox, 2)
        result = await call(inbox.store, [u1, u2], ["\\SEEN", "work"], StoreMode.ADD)
        self.assertEqual(sorted(m.uid for m in result.updated), [u1, u2])
        for message in result.updated:
            self.assertEqual(message.flags, frozenset({SEEN, "work"}))
        self.assertEqual(result.conflicts, ())
        self.assertEqual(await self.flags_of(inbox, u1), {SEEN, "work"})

        result = await call(inbox.store, [u1], ["\\flagged", "\\answered"], StoreMode.ADD)
        self.assertEqual(await self.flags_of(inbox, u1), {SEEN, "work", FLAGGED, "\\Answered"})
        self.assertEqual(await self.flags_of(inbox, u2), {SEEN, "work"})

        await call(inbox.store, [u1], ["work", "\\Seen"], StoreMode.REMOVE)
        self.assertEqual(await self.flags_of(inbox, u1), {FLAGGED, "\\Answered"})

        await call(inbox.store, [u1, u2], ["\\Draft", "home"], StoreMode.REPLACE)
        self.assertEqual(await self.flags_of(inbox, u1), {"\\Draft", "home"})
        self.assertEqual(await self.flags_of(inbox, u2), {"\\Draft", "home"})

        await call(inbox.store, [u2], [], StoreMode.REPLACE)
        self.assertEqual(await self.flags_of(inbox, u2), frozenset())
        # UIDs that do not exist are skipped.
        result = await call(inbox.store, [u2 + 100], [SEEN], StoreMode.ADD)
        self.assertEqual(result.updated, ())

    async def test_keywords(self) -> None:
        inbox = await self.mailbox(await self.account(), "INBOX")
        self.assertEqual(list(await call(inbox.keywords)), [])
        u1, u2 = await self.seed(inbox, 2)
        await call(inbox.store, [u1], ["\\Seen", "$Work"], StoreMode.ADD)
        await self.append(inbox, message_bytes(3), ["Later", "\\Flagged"])
        # In the order they were first stored, system flags aside.
        self.assertEqual(list(await call(inbox.keywords)), ["$Work", "Later"])
        limit = inbox.keyword_limit
        self.assertTrue(limit is None or limit >= 2, limit)
        for flags in (["NIL"], ["\\Seen", "nil"]):
            exc = await self.fails(StorageError, inbox.store, [u2], flags, StoreMode.ADD)
            self.assertEqual(exc.code, "CANNOT")
            exc = await self.fails(StorageError, self.append, inbox, message_bytes(4), flags)
            self.assertEqual(exc.code, "CANNOT")
        self.assertEqual(await self.flags_of(inbox, u2), frozenset())
        self.assertEqual(list(await call(inbox.keywords)), ["$Work", "Later"])

    async def test_store_modseq(self) -> None:
        inbox = await self.mailbox(await self.account(), "INBOX")
        u1, u2 = await self.seed(inbox, 2)
        start = await self.status(inbox)
        self.assertEqual(
            start.highest_modseq, max(m.modseq for m in await call(inbox.fetch, [u1, u2]))
        )
        result = await call(inbox.store, [u1], [SEEN], StoreMode.ADD)
        [updated] = result.updated
        self.assertGreater(updated.modseq, start.highest_modseq)
        after = await self.status(inbox)
        self.assertEqual(after.highest_modseq, updated.modseq)
        self.assertEqual(inbox.highest_modseq, updated.modseq)
        self.assertEqual((await self.info(inbox, u1)).modseq, updated.modseq)
        # Nothing changes: no MODSEQ bump, nothing reported.
        unchanged_u2 = (await self.info(inbox, u2)).modseq
        result = await call(inbox.store, [u1], ["\\seen"], StoreMode.ADD)
        self.assertEqual(result.updated, ())
        result = await call(inbox.store, [u2], [SEEN], StoreMode.REMOVE)
        self.assertEqual(result.updated, ())
        result = await call(inbox.store, [u1], [SEEN], StoreMode.REPLACE)
        self.assertEqual(result.updated, ())
        self.assertEqual((await self.status(inbox)).highest_modseq, after.highest_modseq)
        self.assertEqual((await self.info(inbox, u1)).modseq, updated.modseq)
        self.assertEqual((await self.info(inbox, u2)).modseq, unchanged_u2)
        # Every real change raises it again.
        u3 = await self.append(inbox, message_bytes(3))
        appended = (await self.info(inbox, u3)).modseq
        self.assertGreater(appended, after.highest_modseq)
        result = await call(inbox.store, [u2], ["$Junk"], StoreMode.ADD)
        self.assertGreater(result.updated[0].modseq, appended)

    async def test_store_unchanged_since(self) -> None:
        inbox = await self.mailbox(await self.account(), "INBOX")
        u1, u2 = await self.seed(inbox, 2)
        base = (await self.status(inbox)).highest_modseq
        await call(inbox.store, [u1], [FLAGGED], StoreMode.ADD)
        result = await call(inbox.store, [u1, u2], [SEEN], StoreMode.ADD, base)
        self.assertEqual(list(result.conflicts), [u1])
        self.assertEqual([m.uid for m in result.updated], [u2])
        self.assertEqual(await self.flags_of(inbox, u1), {FLAGGED})
        self.assertEqual(await self.flags_of(inbox, u2), {SEEN})
        # UNCHANGEDSINCE equal to the message's MODSEQ lets the change through.
        current = (await self.info(inbox, u1)).modseq
        result = await call(inbox.store, [u1], [SEEN], StoreMode.ADD, current)
        self.assertEqual(result.conflicts, ())
        self.assertEqual(await self.flags_of(inbox, u1), {FLAGGED, SEEN})

    async def test_recent_never_stored(self) -> None:
        inbox = await self.mailbox(await self.account(), "INBOX")
        (uid,) = await self.seed(inbox, 1)
        for mode in (StoreMode.ADD, StoreMode.REPLACE):
            try:
                await call(inbox.store, [uid], [RECENT, SEEN], mode)
            except StorageError:
                pass
            self.assertNotIn(RECENT, await self.flags_of(inbox, uid))
        try:
            other = await self.append(inbox, message_bytes(2), ["\\recent"])
        except StorageError:
            pass
        else:
            self.assertNotIn(RECENT, await self.flags_of(inbox, other))
        for message in await call(inbox.fetch, await self.uids(inbox)):
            self.assertNotIn(RECENT, message.flags)

    async def test_expunge(self) -> None:
        inbox = await self.mailbox(await self.account(), "INBOX")
        u1, u2, u3, u4 = await self.seed(inbox, 4)
        self.assertEqual(list(await call(inbox.expunge)), [])
        await call(inbox.store, [u1, u3, u4], [DELETED], StoreMode.ADD)
        before = (await self.status(inbox)).highest_modseq
        # UID EXPUNGE: only the given ones, and only if \Deleted.
        self.assertEqual(list(await call(inbox.expunge, [u2, u3])), [u3])
        self.assertEqual(await self.uids(inbox), [u1, u2, u4])
        self.assertGreater((await self.status(inbox)).highest_modseq, before)
        self.assertEqual(list(await call(inbox.expunge)), [u1, u4])
        self.assertEqual(await self.uids(inbox), [u2])
        status = await self.status(inbox)
        self.assertEqual(status.messages, 1)
        self.assertEqual(status.deleted, 0)
        self.assertEqual(status.size, len(message_bytes(2)))
        self.assertEqual([m.uid for m in await call(inbox.fetch, [u1, u2, u3, u4])], [u2])

    async def test_uids_never_reused(self) -> None:
        storage = self.make_storage()
        inbox = await self.mailbox(await self.account(storage), "INBOX")
        uids = await self.seed(inbox, 3)
        await call(inbox.store, uids[1:], [DELETED], StoreMode.ADD)
        await call(inbox.expunge)
        fresh = await self.append(inbox, message_bytes(4))
        self.assertGreater(fresh, uids[-1])
        await call(inbox.store, [fresh], [DELETED], StoreMode.ADD)
        await call(inbox.expunge)
        validity = (await self.status(inbox)).uidvalidity
        reopened = await self.mailbox(await self.reopen(storage), "INBOX")
        self.assertEqual((await self.status(reopened)).uidvalidity, validity)
        self.assertEqual(await self.uids(reopened), [uids[0]])
        later = await self.append(reopened, message_bytes(5))
        self.assertGreater(later, fresh)

    async def test_persistence(self) -> None:
        storage = self.make_storage()
        account = await self.account(storage)
        await call(account.create_mailbox, "Keep/Me")
        mailbox = await self.mailbox(account, "Keep/Me")
        date = datetime.datetime(2021, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)
        u1 = await self.append(mailbox, message_bytes(1), [SEEN, "$Important"], date)
        u2 = await self.append(mailbox, message_bytes(2, newline=b"\n"))
        await call(mailbox.store, [u2], [FLAGGED], StoreMode.ADD)
        status = await self.status(mailbox)
        infos = list(await call(mailbox.fetch, [u1, u2]))
        reopened_account = await self.reopen(storage)
        reopened = await self.mailbox(reopened_account, "Keep/Me")
        self.assertEqual(await self.status(reopened), status)
        again = list(await call(reopened.fetch, [u1, u2]))
        self.assertEqual(
            [(m.uid, frozenset(m.flags), m.internal_date, m.size, m.modseq) for m in again],
            [(m.uid, frozenset(m.flags), m.internal_date, m.size, m.modseq) for m in infos],
        )
        self.assertEqual(await self.read(reopened, u2), message_bytes(2))
        self.assertIn("Keep", await self.entries(reopened_account))

    async def test_copy(self) -> None:
        account = await self.account()
        inbox = await self.mailbox(account, "INBOX")
        archive = await self.mailbox(account, "Archive")
        date = datetime.datetime(2018, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
        u1 = await self.append(inbox, message_bytes(1), [SEEN, "$Kw"], date)
        u2 = await self.append(inbox, message_bytes(2), [FLAGGED])
        await self.append(archive, message_bytes(99))
        start = (await self.status(archive)).uidnext
        pairs = [tuple(p) for p in await call(inbox.copy, [u2, u1, u2 + 77], archive)]
        self.assertEqual([src for src, _ in pairs], [u1, u2])
        destination = [dst for _, dst in pairs]
        self.assertEqual(destination, sorted(destination))
        self.assertGreaterEqual(destination[0], start)
        self.assertEqual(await self.uids(inbox), [u1, u2])
        copied = {m.uid: m for m in await call(archive.fetch, destination)}
        source = {m.uid: m for m in await call(inbox.fetch, [u1, u2])}
        for src, dst in pairs:
            self.assertEqual(copied[dst].flags, source[src].flags)
            self.assertEqual(copied[dst].internal_date, source[src].internal_date)
            self.assertEqual(copied[dst].size, source[src].size)
            self.assertEqual(await self.read(archive, dst), await self.read(inbox, src))
        self.assertEqual(copied[pairs[0][1]].internal_date, date)
        self.assertEqual((await self.status(archive)).messages, 3)
        # Copies are new arrivals in the destination (RFC 3501 6.4.7).
        self.assertTrue(set(destination) <= set(await call(archive.claim_recent)))
        # The copies are independent of the originals.
        await call(inbox.store, [u1], [DELETED], StoreMode.ADD)
        await call(inbox.expunge)
        self.assertEqual(await self.read(archive, pairs[0][1]), message_bytes(1))
        self.assertEqual(list(await call(inbox.copy, [u1], archive)), [])

    async def test_copy_between_same_named_objects(self) -> None:
        account = await self.account()
        inbox = await self.mailbox(account, "INBOX")
        (uid,) = await self.seed(inbox, 1)
        [(src, dst)] = await call(inbox.copy, [uid], await self.mailbox(account, "INBOX"))
        self.assertEqual(src, uid)
        self.assertGreater(dst, uid)
        self.assertEqual(await self.uids(inbox), [uid, dst])

    async def test_move(self) -> None:
        account = await self.account()
        inbox = await self.mailbox(account, "INBOX")
        trash = await self.mailbox(account, "Trash")
        date = datetime.datetime(2017, 7, 7, 7, 7, 7, tzinfo=datetime.UTC)
        u1 = await self.append(inbox, message_bytes(1), ["$Moved"], date)
        u2, u3 = await self.seed(inbox, 2, start=2)
        pairs = [tuple(p) for p in await call(inbox.move, [u3, u1], trash)]
        self.assertEqual([src for src, _ in pairs], [u1, u3])
        self.assertEqual(await self.uids(inbox), [u2])
        self.assertEqual(await self.uids(trash), [dst for _, dst in pairs])
        moved = await self.info(trash, pairs[0][1])
        self.assertEqual(moved.flags, frozenset({"$Moved"}))
        self.assertEqual(moved.internal_date, date)
        self.assertEqual(await self.read(trash, pairs[1][1]), message_bytes(3))
        await self.fails(NoSuchMessage, inbox.open, u1)
        status = await self.status(inbox)
        self.assertEqual((status.messages, status.size), (1, len(message_bytes(2))))

    async def test_status_counters(self) -> None:
        account = await self.account()
        inbox = await self.mailbox(account, "INBOX")
        empty = await self.status(inbox)
        self.assertEqual(
            (empty.messages, empty.recent, empty.unseen, empty.deleted, empty.size), (0, 0, 0, 0, 0)
        )
        u1, u2, u3, u4 = await self.seed(inbox, 4)
        await call(inbox.store, [u1, u2], [SEEN], StoreMode.ADD)
        await call(inbox.store, [u2, u3], [DELETED], StoreMode.ADD)
        status = await self.status(inbox)
        self.assertEqual(status.messages, 4)
        self.assertEqual(status.recent, 4)
        self.assertEqual(status.unseen, 2)
        self.assertEqual(status.deleted, 2)
        self.assertEqual(status.size, sum(len(message_bytes(n)) for n in range(1, 5)))
        self.assertGreater(status.uidnext, u4)
        self.assertEqual(status.uidvalidity, inbox.uidvalidity)
        self.assertEqual(status.highest_modseq, inbox.highest_modseq)
        via_account: MailboxStatus = await call(account.status, "INBOX")
        self.assertEqual(via_account, status)
        self.assertEqual(
            await call(account.status, "Sent"),
            await self.status(await self.mailbox(account, "Sent")),
        )
        claimed = await call(inbox.claim_recent)
        self.assertEqual(set(claimed), {u1, u2, u3, u4})
        self.assertEqual((await self.status(inbox)).recent, 0)

    async def test_uidvalidity(self) -> None:
        storage = self.make_storage()
        account = await self.account(storage)
        inbox = await self.mailbox(account, "INBOX")
        validity = inbox.uidvalidity
        self.assertIsInstance(validity, int)
        self.assertTrue(0 < validity < 2**32)
        await self.seed(inbox, 2)
        self.assertEqual((await self.mailbox(account, "INBOX")).uidvalidity, validity)
        reopened = await self.mailbox(await self.reopen(storage), "INBOX")
        self.assertEqual(reopened.uidvalidity, validity)
        self.assertEqual((await self.status(reopened)).uidvalidity, validity)

    async def test_claim_recent(self) -> None:
        account = await self.account()
        first = await self.mailbox(account, "INBOX")
        second = await self.mailbox(account, "INBOX")
        u1, u2 = await self.seed(first, 2)
        self.assertEqual(set(await call(first.claim_recent)), {u1, u2})
        self.assertEqual(set(await call(second.claim_recent)), set())
        self.assertEqual(set(await call(first.claim_recent)), set())
        (u3,) = await self.seed(first, 1, start=3)
        self.assertEqual(set(await call(second.claim_recent)), {u3})
        self.assertEqual(set(await call(first.claim_recent)), set())

    async def test_changed_and_expunged_since(self) -> None:
        inbox = await self.mailbox(await self.account(), "INBOX")
        u1, u2, u3 = await self.seed(inbox, 3)
        self.assertEqual([m.uid for m in await call(inbox.changed_since, 0)], [u1, u2, u3])
        mark = (await self.status(inbox)).highest_modseq
        self.assertEqual(list(await call(inbox.changed_since, mark)), [])
        await call(inbox.store, [u2], [SEEN], StoreMode.ADD)
        changed = list(await call(inbox.changed_since, mark))
        self.assertEqual([m.uid for m in changed], [u2])
        self.assertEqual(changed[0].flags, frozenset({SEEN}))
        self.assertGreater(changed[0].modseq, mark)
        await call(inbox.store, [u3], [DELETED], StoreMode.ADD)
        before_expunge = (await self.status(inbox)).highest_modseq
        self.assertEqual(list(await call(inbox.expunged_since, 0)), [])
        await call(inbox.expunge)
        self.assertEqual(list(await call(inbox.expunged_since, before_expunge)), [u3])
        self.assertEqual(list(await call(inbox.expunged_since, mark)), [u3])
        after = (await self.status(inbox)).highest_modseq
        self.assertGreater(after, before_expunge)
        self.assertEqual(list(await call(inbox.expunged_since, after)), [])
        self.assertEqual([m.uid for m in await call(inbox.changed_since, mark)], [u2])

    async def test_listeners(self) -> None:
        account = await self.account()
        watched = await self.mailbox(account, "INBOX")
        other = await self.mailbox(account, "INBOX")
        recorder = ListenerRecorder()
        await call(watched.add_listener, recorder)
        u1 = await self.append(other, message_bytes(1))
        self.assertEqual(recorder.added(), [u1])
        result = await call(other.store, [u1], [SEEN, "$Heard"], StoreMode.ADD)
        self.assertEqual(recorder.flags(), {u1: frozenset({SEEN, "$Heard"})})
        self.assertEqual(recorder.events[-1][1][0][2], result.updated[0].modseq)
        await call(other.store, [u1], [DELETED], StoreMode.ADD)
        await call(other.expunge)
        self.assertEqual(recorder.expunged(), [u1])
        # Copy and move into and out of the watched mailbox are heard too.
        trash = await self.mailbox(account, "Trash")
        (t1,) = await self.seed(trash, 1)
        [(_, copied)] = await call(trash.copy, [t1], other)
        self.assertEqual(recorder.added()[-1], copied)
        [(_, moved_away)] = await call(other.move, [copied], trash)
        self.assertEqual(recorder.expunged(), [u1, copied])
        self.assertEqual(await self.uids(await self.mailbox(account, "Trash")), [t1, moved_away])
        # After remove_listener nothing more is heard.
        await call(watched.remove_listener, recorder)
        await call(watched.remove_listener, recorder)
        count = len(recorder.events)
        u2 = await self.append(other, message_bytes(2))
        await call(other.store, [u2], [DELETED], StoreMode.ADD)
        await call(other.expunge)
        self.assertEqual(len(recorder.events), count)

    async def test_listener_of_other_mailbox_hears_nothing(self) -> None:
        account = await self.account()
        sent = await self.mailbox(account, "Sent")
        recorder = ListenerRecorder()
        await call(sent.add_listener, recorder)
        await self.seed(await self.mailbox(account, "INBOX"), 1)
        await call(sent.check)
        self.assertEqual(recorder.events, [])
        await call(sent.remove_listener, recorder)

    async def test_message_cache(self) -> None:
        inbox = await self.mailbox(await self.account(), "INBOX")
        cache = IMessageCache(inbox, None)
        if cache is None:
            raise SkipTest("the backend keeps no message cache")
        u1, u2 = await self.seed(inbox, 2)
        self.assertIsNone(await call(cache.get_cached, u1, "envelope"))
        await call(cache.set_cached, u1, "envelope", b"(NIL)")
        await call(cache.set_cached, u1, "structure", b"\x00\xff")
        self.assertEqual(await call(cache.get_cached, u1, "envelope"), b"(NIL)")
        self.assertEqual(await call(cache.get_cached, u1, "structure"), b"\x00\xff")
        self.assertIsNone(await call(cache.get_cached, u2, "envelope"))
        await call(cache.set_cached, u1, "envelope", b"(replaced)")
        self.assertEqual(await call(cache.get_cached, u1, "envelope"), b"(replaced)")
        many = await call(cache.get_cached_many, [u1, u2, u2 + 100], "envelope")
        self.assertEqual(dict(many), {u1: b"(replaced)"})
        await call(cache.set_cached_many, "structure", {u1: b"s1", u2: b"s2", u2 + 100: b"x"})
        many = await call(cache.get_cached_many, [u2, u1], "structure")
        self.assertEqual(dict(many), {u1: b"s1", u2: b"s2"})
        self.assertEqual(dict(await call(cache.get_cached_many, [], "structure")), {})
        await call(inbox.store, [u1], [DELETED], StoreMode.ADD)
        await call(inbox.expunge)
        self.assertIsNone(await call(cache.get_cached, u1, "envelope"))
        self.assertEqual(
            dict(await call(cache.get_cached_many, [u1, u2], "structure")), {u2: b"s2"}
        )

    async def test_check(self) -> None:
        """check() on an unchanged mailbox changes nothing; after a delivery
        from outside (:meth:`deliver_outside`) it shows the new message and
        its listeners have heard of it, once."""
        storage = self.make_storage()
        account = await self.account(storage)
        inbox = await self.mailbox(account, "INBOX")
        (first,) = await self.seed(inbox, 1)
        recorder = ListenerRecorder()
        await call(inbox.add_listener, recorder)
        try:
            self.assertIsNone(await call(inbox.check))
            self.assertEqual(await self.uids(inbox), [first])
            self.assertEqual(recorder.events, [])
            await call(self.deliver_outside, storage, message_bytes(2))
            self.assertIsNone(await call(inbox.check))
            uids = await self.uids(inbox)
            self.assertEqual(len(uids), 2, uids)
            self.assertEqual(uids[0], first)
            self.assertGreater(uids[1], first)
            self.assertEqual(recorder.added(), [uids[1]])
            self.assertEqual(await self.read(inbox, uids[1]), _wire(message_bytes(2)))
        finally:
            await call(inbox.remove_listener, recorder)
        await call(account.logout)

    async def test_many_messages(self) -> None:
        inbox = await self.mailbox(await self.account(), "INBOX")
        count = self.bulk_message_count
        uids = []
        for number in range(count):
            data = b"Subject: %d\r\n\r\n%d\r\n" % (number, number)
            uids.append(await self.append(inbox, data))
        self.assertEqual(await self.uids(inbox), uids)
        self.assertEqual(uids, sorted(set(uids)))
        flagged = uids[::3]
        await call(inbox.store, flagged, [SEEN], StoreMode.ADD)
        doomed = uids[1::5]
        await call(inbox.store, doomed, [DELETED], StoreMode.ADD)
        expunged = list(await call(inbox.expunge))
        self.assertEqual(expunged, sorted(doomed))
        remaining = [uid for uid in uids if uid not in set(doomed)]
        self.assertEqual(await self.uids(inbox), remaining)
        infos = list(await call(inbox.fetch, uids))
        self.assertEqual([m.uid for m in infos], remaining)
        status = await self.status(inbox)
        self.assertEqual(status.messages, len(remaining))
        seen = {m.uid for m in infos if SEEN in m.flags}
        self.assertEqual(seen, set(flagged) - set(doomed))
        self.assertEqual(status.unseen, len(remaining) - len(seen))
        self.assertEqual(status.size, sum(m.size for m in infos))
        number = uids.index(remaining[-1])
        self.assertEqual(
            await self.read(inbox, remaining[-1]), b"Subject: %d\r\n\r\n%d\r\n" % (number, number)
        )
