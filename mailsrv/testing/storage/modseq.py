"""The storage contract: what CONDSTORE and QRESYNC ask of MODSEQs and the
expunge log (RFC 7162), beyond ``changed_since`` and ``expunged_since``."""

# mypy: allow-untyped-calls
# (trial's assertion methods are not annotated)

from __future__ import annotations

from mailsrv.interfaces import DELETED, FLAGGED, SEEN, StoreMode
from mailsrv.testing.storage.base import ListenerRecorder, SuiteBase, call, message_bytes


class ModseqContract(SuiteBase):
    """changed_uids, vanished_since, announced_modseq, the log beyond its
    retention, and MODSEQs across a restart."""

    async def test_changed_uids(self) -> None:
        inbox = await self.mailbox(await self.account(), "INBOX")
        u1, u2, u3, u4 = await self.seed(inbox, 4)
        self.assertEqual(list(await call(inbox.changed_uids, 0)), [u1, u2, u3, u4])
        mark = (await self.status(inbox)).highest_modseq
        self.assertEqual(list(await call(inbox.changed_uids, mark)), [])
        await call(inbox.store, [u4], [SEEN], StoreMode.ADD)
        await call(inbox.store, [u2], [FLAGGED], StoreMode.ADD)
        # Ascending by UID, whatever order the changes came in.
        self.assertEqual(list(await call(inbox.changed_uids, mark)), [u2, u4])
        # A change that changes nothing is no change.
        await call(inbox.store, [u1], [SEEN], StoreMode.REMOVE)
        self.assertEqual(list(await call(inbox.changed_uids, mark)), [u2, u4])
        # An expunged message is no longer among them; a new one is.
        await call(inbox.store, [u4], [DELETED], StoreMode.ADD)
        await call(inbox.expunge)
        u5 = await self.append(inbox, message_bytes(5))
        self.assertEqual(list(await call(inbox.changed_uids, mark)), [u2, u5])
        changed = {m.uid for m in await call(inbox.changed_since, mark)}
        self.assertEqual(changed, {u2, u5})

    async def test_vanished_since(self) -> None:
        inbox = await self.mailbox(await self.account(), "INBOX")
        u1, u2, u3, u4 = await self.seed(inbox, 4)
        start = (await self.status(inbox)).highest_modseq
        self.assertEqual(list(await call(inbox.vanished_since, start)), [])
        await call(inbox.store, [u3, u1], [DELETED], StoreMode.ADD)
        flagged = (await self.status(inbox)).highest_modseq
        await call(inbox.expunge)
        first = (await self.status(inbox)).highest_modseq
        # RFC 7162 3.2: an expunge takes a MODSEQ of its own.
        self.assertGreater(first, flagged)
        await call(inbox.store, [u4], [DELETED], StoreMode.ADD)
        await call(inbox.expunge)
        self.assertEqual(list(await call(inbox.vanished_since, start)), [u1, u3, u4])
        self.assertEqual(list(await call(inbox.vanished_since, flagged)), [u1, u3, u4])
        self.assertEqual(list(await call(inbox.vanished_since, first)), [u4])
        last = (await self.status(inbox)).highest_modseq
        self.assertEqual(list(await call(inbox.vanished_since, last)), [])
        self.assertEqual(list(await call(inbox.expunged_since, start)), [u1, u3, u4])
        self.assertEqual(await self.uids(inbox), [u2])

    async def test_beyond_the_expunge_log(self) -> None:
        """Once the log lost old entries, questions about older MODSEQs are
        answered as RFC 7162 3.2.6 asks: ``vanished_since`` says it cannot
        (None), ``expunged_since`` lists every UID below UIDNEXT without a
        message; questions about newer ones stay exact."""
        storage = self.make_storage()
        inbox = await self.mailbox(await self.account(storage), "INBOX")
        u1, u2, u3, u4, u5, u6 = await self.seed(inbox, 6)
        start = (await self.status(inbox)).highest_modseq
        for doomed in (u2, u4):
            await call(inbox.store, [doomed], [DELETED], StoreMode.ADD)
            await call(inbox.expunge)
        forgotten = (await self.status(inbox)).highest_modseq
        await call(self.forget_expunges, storage, inbox)
        await call(inbox.store, [u5], [DELETED], StoreMode.ADD)
        await call(inbox.expunge)
        self.assertIsNone(await call(inbox.vanished_since, start))
        self.assertEqual(list(await call(inbox.expunged_since, start)), [u2, u4, u5])
        self.assertEqual(list(await call(inbox.vanished_since, forgotten)), [u5])
        self.assertEqual(list(await call(inbox.expunged_since, forgotten)), [u5])
        self.assertEqual(await self.uids(inbox), [u1, u3, u6])
        # Flags are not the log's business: changed_uids stays exact.
        await call(inbox.store, [u3], [SEEN], StoreMode.ADD)
        self.assertEqual(list(await call(inbox.changed_uids, forgotten)), [u3])

    async def test_announced_modseq(self) -> None:
        """Every change up to ``announced_modseq`` has reached the
        listeners: after a change by another handle it has caught up."""
        account = await self.account()
        inbox = await self.mailbox(account, "INBOX")
        other = await self.mailbox(account, "INBOX")
        recorder = ListenerRecorder()
        await call(inbox.add_listener, recorder)
        try:
            self.assertEqual(inbox.announced_modseq, (await self.status(inbox)).highest_modseq)
            (u1,) = await self.seed(other, 1)
            result = await call(other.store, [u1], [SEEN], StoreMode.ADD)
            [changed] = result.updated
            self.assertEqual(inbox.announced_modseq, changed.modseq)
            self.assertEqual(recorder.flags(), {u1: frozenset({SEEN})})
            await call(other.store, [u1], [DELETED], StoreMode.ADD)
            await call(other.expunge)
            self.assertEqual(recorder.expunged(), [u1])
            self.assertEqual(inbox.announced_modseq, (await self.status(inbox)).highest_modseq)
        finally:
            await call(inbox.remove_listener, recorder)

    async def test_announced_modseq_of_outside_changes(self) -> None:
        """A change from outside the storage object counts once heard: it is
        never above the mailbox's HIGHESTMODSEQ, and check() catches up."""
        storage = self.make_storage()
        inbox = await self.mailbox(await self.account(storage), "INBOX")
        recorder = ListenerRecorder()
        await call(inbox.add_listener, recorder)
        try:
            await call(self.deliver_outside, storage, message_bytes(1))
            self.assertLessEqual(inbox.announced_modseq, (await self.status(inbox)).highest_modseq)
            await call(inbox.check)
            self.assertEqual(len(recorder.added()), 1)
            self.assertEqual(inbox.announced_modseq, (await self.status(inbox)).highest_modseq)
        finally:
            await call(inbox.remove_listener, recorder)

    async def test_modseqs_survive_a_restart(self) -> None:
        """After a restart (:meth:`reopen_storage`) HIGHESTMODSEQ has not
        gone back, and CHANGEDSINCE and VANISHED questions about MODSEQs a
        client saw before get the same answers."""
        storage = self.make_storage()
        inbox = await self.mailbox(await self.account(storage), "INBOX")
        u1, u2, u3 = await self.seed(inbox, 3)
        seen = (await self.status(inbox)).highest_modseq
        await call(inbox.store, [u2], [SEEN], StoreMode.ADD)
        await call(inbox.store, [u3], [DELETED], StoreMode.ADD)
        await call(inbox.expunge)
        before = (await self.status(inbox)).highest_modseq
        again = await self.mailbox(await self.reopen(storage), "INBOX")
        after = (await self.status(again)).highest_modseq
        self.assertGreaterEqual(after, before)
        self.assertEqual(list(await call(again.changed_uids, seen)), [u2])
        self.assertEqual(list(await call(again.vanished_since, seen)), [u3])
        self.assertEqual(list(await call(again.changed_uids, after)), [])
        self.assertEqual(list(await call(again.vanished_since, after)), [])
        await call(again.store, [u1], [SEEN], StoreMode.ADD)
        self.assertGreater((await self.status(again)).highest_modseq, after)
