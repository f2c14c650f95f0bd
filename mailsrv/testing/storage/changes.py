"""The storage contract: telling sessions about changes, the cache, outside writers."""

# mypy: allow-untyped-calls
# (trial's assertion methods are not annotated)

from __future__ import annotations

from twisted.trial.unittest import SkipTest

from mailsrv.interfaces import DELETED, SEEN, IMessageCache, StoreMode
from mailsrv.testing.storage.base import ListenerRecorder, SuiteBase, call, message_bytes, wire_form


class ChangeContract(SuiteBase):
    """\\Recent, CONDSTORE/QRESYNC reads, listeners, the message cache, check(), a large mailbox."""

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
            self.assertEqual(await self.read(inbox, uids[1]), wire_form(message_bytes(2)))
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
