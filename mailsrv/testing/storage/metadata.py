"""The storage contract: RFC 5464 annotations (:class:`IMetadataStore`)."""

# mypy: allow-untyped-calls
# (trial's assertion methods are not annotated)

from __future__ import annotations

from collections.abc import Mapping

from mailsrv.errors import MetadataTooMany, NoSuchMailbox
from mailsrv.interfaces import IAccount, IMetadataStore
from mailsrv.testing.storage.base import SuiteBase, call

__all__ = ["MetadataContract"]


class MetadataContract(SuiteBase):
    """Annotations of mailboxes and of the server: set, removed, limited,
    durable, following RENAME and gone with DELETE."""

    async def metadata_store(self, account: IAccount) -> IMetadataStore:
        if not IMetadataStore.providedBy(account):
            self.skipTest("the backend does not declare IMetadataStore")
        store: IMetadataStore = account
        return store

    async def annotations(self, store: IMetadataStore, mailbox: str) -> Mapping[str, bytes]:
        found: Mapping[str, bytes] = await call(store.get_metadata, mailbox)
        return found

    async def test_metadata_set_remove_and_survive_reopening(self) -> None:
        storage = self.make_storage()
        store = await self.metadata_store(await self.account(storage))
        self.assertEqual(await self.annotations(store, "INBOX"), {})
        self.assertEqual(await self.annotations(store, ""), {})
        binary = bytes(range(256))
        await call(
            store.set_metadata,
            "INBOX",
            {"/private/comment": b"mine\r\nsecond line", "/shared/vendor/x/blob": binary},
            10,
        )
        await call(store.set_metadata, "", {"/private/vendor/x/setting": b""}, 10)
        await call(store.set_metadata, "INBOX", {"/private/absent": None}, 10)
        again = await self.metadata_store(await self.reopen(storage))
        self.assertEqual(
            await self.annotations(again, "INBOX"),
            {"/private/comment": b"mine\r\nsecond line", "/shared/vendor/x/blob": binary},
        )
        self.assertEqual(await self.annotations(again, ""), {"/private/vendor/x/setting": b""})
        await call(again.set_metadata, "INBOX", {"/private/comment": None}, 10)
        self.assertEqual(
            await self.annotations(await self.metadata_store(await self.reopen(storage)), "INBOX"),
            {"/shared/vendor/x/blob": binary},
        )

    async def test_metadata_limit_changes_nothing(self) -> None:
        """Over the entry limit, no entry of the call is set (RFC 5464 4.3);
        replacing and removing stay possible at the limit."""
        store = await self.metadata_store(await self.account())
        await call(store.set_metadata, "INBOX", {"/private/a": b"1", "/private/b": b"2"}, 2)
        with self.assertRaises(MetadataTooMany):
            await call(store.set_metadata, "INBOX", {"/private/a": b"3", "/private/c": b"4"}, 2)
        self.assertEqual(
            await self.annotations(store, "INBOX"), {"/private/a": b"1", "/private/b": b"2"}
        )
        await call(store.set_metadata, "INBOX", {"/private/a": None, "/private/c": b"5"}, 2)
        self.assertEqual(
            await self.annotations(store, "INBOX"), {"/private/b": b"2", "/private/c": b"5"}
        )

    async def test_metadata_follows_rename_and_goes_with_delete(self) -> None:
        storage = self.make_storage()
        account = await self.account(storage)
        store = await self.metadata_store(account)
        await call(account.create_mailbox, "Old/Child")
        await call(store.set_metadata, "Old", {"/private/comment": b"parent"}, 10)
        await call(store.set_metadata, "Old/Child", {"/shared/comment": b"child"}, 10)
        await call(store.set_metadata, "INBOX", {"/private/comment": b"inbox"}, 10)
        await call(account.rename_mailbox, "Old", "New")
        again = await self.metadata_store(await self.reopen(storage))
        self.assertEqual(await self.annotations(again, "New"), {"/private/comment": b"parent"})
        self.assertEqual(await self.annotations(again, "New/Child"), {"/shared/comment": b"child"})
        with self.assertRaises(NoSuchMailbox):
            await call(again.get_metadata, "Old")
        # RFC 5464 3.4: renaming INBOX copies its annotations; INBOX keeps them.
        await call(account.rename_mailbox, "INBOX", "Moved")
        self.assertEqual(await self.annotations(store, "Moved"), {"/private/comment": b"inbox"})
        self.assertEqual(await self.annotations(store, "INBOX"), {"/private/comment": b"inbox"})
        # A mailbox made again under a deleted one's name starts bare (3.4).
        await call(account.delete_mailbox, "New/Child")
        await call(account.create_mailbox, "New/Child")
        self.assertEqual(await self.annotations(store, "New/Child"), {})
        with self.assertRaises(NoSuchMailbox):
            await call(store.set_metadata, "Nowhere", {"/private/comment": b"x"}, 10)
