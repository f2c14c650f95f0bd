"""The storage contract: messages in a mailbox."""

# mypy: allow-untyped-calls
# (trial's assertion methods are not annotated)

from __future__ import annotations

import datetime
import random

from mailsrv.errors import NoSuchMessage, StorageError
from mailsrv.interfaces import DELETED, FLAGGED, RECENT, SEEN, IMessage, MailboxStatus, StoreMode
from mailsrv.testing.storage.base import SuiteBase, call, message_bytes, wire_form


class MessageContract(SuiteBase):
    """Appending, reading, flags and keywords, expunging, UIDs, copies and moves, counters."""

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
            wire = wire_form(data)
            stored = await self.read(inbox, uid)
            self.assertEqual(len(stored), len(wire))
            self.assertTrue(stored == wire, f"message {uid} changed on the way through")
            self.assertEqual((await self.info(inbox, uid)).size, len(wire))
        status = await self.status(inbox)
        self.assertEqual(status.size, sum(len(wire_form(d)) for d in (crlf, lf, mixed, big)))

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
