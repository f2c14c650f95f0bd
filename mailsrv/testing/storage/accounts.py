"""The storage contract: an account's tree of mailboxes."""

# mypy: allow-untyped-calls
# (trial's assertion methods are not annotated)

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Any

from mailsrv.errors import InvalidMailboxName, MailboxExists, NoSuchMailbox, StorageError
from mailsrv.interfaces import (
    DEFAULT_FOLDERS,
    DELETED,
    SEEN,
    IAccount,
    IQuotaUsage,
    MailboxEntry,
    MailboxStatus,
    StoreMode,
    Usage,
)
from mailsrv.testing.storage.base import SuiteBase, call, message_bytes, wire_form


class AccountContract(SuiteBase):
    """Accounts, mailbox names, the tree's operations, LIST attributes, subscriptions."""

    # -- the account --------------------------------------------------------------

    async def usage(self, account: IAccount) -> Usage:
        if not IQuotaUsage.providedBy(account):
            self.skipTest("the backend does not declare IQuotaUsage")
        usage: Usage = await call(account.usage)
        return usage

    async def test_usage_follows_every_change(self) -> None:
        """IQuotaUsage counts wire octets and messages over all mailboxes,
        through appends, copies, moves, expunges and deletes."""
        storage = self.make_storage()
        account = await self.account(storage)
        self.assertEqual(await self.usage(account), Usage(0, 0))
        inbox = await self.mailbox(account, "INBOX")
        one, two = message_bytes(1, b"x" * 100), message_bytes(2, b"bare\nline\n", b"\n")
        u1 = await self.append(inbox, one)
        u2 = await self.append(inbox, two)
        one_size, two_size = len(wire_form(one)), len(wire_form(two))  # bare LFs count as CRLF
        wire = one_size + two_size
        self.assertEqual(await self.usage(account), Usage(wire, 2))
        await call(account.create_mailbox, "Kept/Deep")
        deep = await self.mailbox(account, "Kept/Deep")
        await call(inbox.copy, [u1, u2], deep)
        self.assertEqual(await self.usage(account), Usage(2 * wire, 4))
        await call(inbox.move, [u1], await self.mailbox(account, "Trash"))
        self.assertEqual(await self.usage(account), Usage(2 * wire, 4))
        await call(inbox.store, [u2], [DELETED], StoreMode.ADD)
        await call(inbox.expunge)
        self.assertEqual(await self.usage(account), Usage(2 * wire - two_size, 3))
        await call(account.delete_mailbox, "Kept/Deep")
        self.assertEqual(await self.usage(account), Usage(one_size, 1))
        again = await self.reopen(storage)
        self.assertEqual(await self.usage(again), Usage(one_size, 1))

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
