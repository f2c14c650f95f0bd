"""The storage contract: several messages appended at once, all or none
(MULTIAPPEND, RFC 3502), and messages removed by UID (REPLACE, RFC 8508)."""

# mypy: allow-untyped-calls
# (trial's assertion methods are not annotated)

from __future__ import annotations

import datetime
import io

from mailsrv.errors import StorageError
from mailsrv.interfaces import DELETED, SEEN, IMailbox, NewMessage
from mailsrv.testing.storage.base import ListenerRecorder, SuiteBase, call, message_bytes


class _FailingSource(io.RawIOBase):
    """A message source that breaks after its first octets (a client gone,
    a spool file that cannot be read)."""

    def __init__(self) -> None:
        self._given = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._given:
            raise OSError("the source broke")
        self._given = True
        data = b"Subject: half\r\n"
        buffer[: len(data)] = data
        return len(data)


class BatchContract(SuiteBase):
    """append_many (all or none) and remove (exact UIDs)."""

    async def append_many(self, mailbox: IMailbox, batch: list[NewMessage]) -> list[int]:
        return list(await call(mailbox.append_many, batch))

    async def test_append_many(self) -> None:
        inbox = await self.mailbox(await self.account(), "INBOX")
        await self.seed(inbox, 1)
        listener = ListenerRecorder()
        inbox.add_listener(listener)
        date = datetime.datetime(2020, 2, 29, 12, 0, 0, tzinfo=datetime.UTC)
        before = await self.status(inbox)
        uids = await self.append_many(
            inbox,
            [
                NewMessage(io.BytesIO(message_bytes(2)), [SEEN], date),
                NewMessage(io.BytesIO(message_bytes(3, newline=b"\n"))),
                NewMessage(io.BytesIO(message_bytes(4)), ["$Label"]),
            ],
        )
        self.assertEqual(len(uids), 3)
        self.assertEqual(uids, sorted(set(uids)))
        self.assertGreaterEqual(uids[0], before.uidnext)
        # One announcement for the whole batch.
        self.assertEqual(listener.events, [("added", uids)])
        self.assertEqual(await self.read(inbox, uids[1]), message_bytes(3))
        first = await self.info(inbox, uids[0])
        self.assertEqual(first.flags, frozenset({SEEN}))
        self.assertEqual(first.internal_date, date)
        self.assertEqual(await self.flags_of(inbox, uids[2]), frozenset({"$Label"}))
        self.assertEqual((await self.status(inbox)).messages, 4)
        self.assertEqual(await self.append_many(inbox, []), [])
        self.assertEqual(listener.events, [("added", uids)])

    async def _nothing_changed(self, inbox: IMailbox, uids: list[int]) -> None:
        self.assertEqual(await self.uids(inbox), uids)
        self.assertEqual((await self.status(inbox)).messages, len(uids))

    async def test_append_many_bad_flag_appends_nothing(self) -> None:
        inbox = await self.mailbox(await self.account(), "INBOX")
        uids = await self.seed(inbox, 2)
        listener = ListenerRecorder()
        inbox.add_listener(listener)
        batch = [
            NewMessage(io.BytesIO(message_bytes(3))),
            NewMessage(io.BytesIO(message_bytes(4))),
            NewMessage(io.BytesIO(message_bytes(5)), ["bad(flag"]),
        ]
        await self.fails(StorageError, inbox.append_many, batch)
        await self._nothing_changed(inbox, uids)
        self.assertEqual(listener.events, [])

    async def test_append_many_broken_source_appends_nothing(self) -> None:
        storage = self.make_storage()
        inbox = await self.mailbox(await self.account(storage), "INBOX")
        uids = await self.seed(inbox, 2)
        listener = ListenerRecorder()
        inbox.add_listener(listener)
        batch = [
            NewMessage(io.BytesIO(message_bytes(3))),
            NewMessage(io.BytesIO(message_bytes(4))),
            NewMessage(io.BufferedReader(_FailingSource())),
        ]
        await self.fails(OSError, inbox.append_many, batch)
        await self._nothing_changed(inbox, uids)
        self.assertEqual(listener.events, [])
        # Nothing of it comes back after a restart either.
        again = await self.mailbox(await self.reopen(storage), "INBOX")
        await call(again.check)
        await self._nothing_changed(again, uids)
        # The mailbox still takes messages, with UIDs above the old ones.
        uid = await self.append(again, message_bytes(6))
        self.assertGreater(uid, uids[-1])

    async def test_remove_exact_uids(self) -> None:
        inbox = await self.mailbox(await self.account(), "INBOX")
        uids = await self.seed(inbox, 4)
        await call(inbox.store, [uids[3]], [DELETED], "add")
        listener = ListenerRecorder()
        inbox.add_listener(listener)
        modseq = (await self.status(inbox)).highest_modseq
        removed = list(await call(inbox.remove, [uids[2], uids[0], 99999]))
        self.assertEqual(removed, [uids[0], uids[2]])
        # Only those: the \Deleted one stays, as REPLACE expunges only the
        # message it replaces (RFC 8508 3.4).
        self.assertEqual(await self.uids(inbox), [uids[1], uids[3]])
        self.assertEqual(listener.expunged(), [uids[0], uids[2]])
        self.assertEqual(sorted(await call(inbox.expunged_since, modseq)), [uids[0], uids[2]])
        self.assertEqual(list(await call(inbox.remove, [])), [])
