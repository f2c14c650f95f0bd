"""The storage contract: what OBJECTID (RFC 8474) and SAVEDATE (RFC 8514)
ask of a backend: each mailbox's MAILBOXID and each message's save date."""

# mypy: allow-untyped-calls
# (trial's assertion methods are not annotated)

from __future__ import annotations

import datetime
import re

from mailsrv.interfaces import IAccount, IMailbox
from mailsrv.testing.storage.base import SuiteBase, call, message_bytes

_OBJECTID = re.compile(r"[A-Za-z0-9_-]{1,255}")


def _now() -> datetime.datetime:
    """Now, to the second below (save dates are kept to the second)."""
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


class ObjectContract(SuiteBase):
    """MAILBOXID: an objectid, one per mailbox, kept by RENAME and a
    restart, new for a mailbox made again.  Save dates: set on arrival
    (APPEND, COPY, MOVE) to the time of arrival, kept by a restart."""

    async def mailbox_id(self, account: IAccount, name: str) -> str:
        status = await call(account.status, name)
        mailbox = await self.mailbox(account, name)
        self.assertEqual((await self.status(mailbox)).mailbox_id, status.mailbox_id)
        self.assertRegex(status.mailbox_id, _OBJECTID)
        return str(status.mailbox_id)

    async def test_mailbox_ids(self) -> None:
        storage = self.make_storage()
        account = await self.account(storage)
        await call(account.create_mailbox, "Work")
        await call(account.create_mailbox, "Work/Old")
        names = ["INBOX", "Work", "Work/Old"]
        ids = {name: await self.mailbox_id(account, name) for name in names}
        self.assertEqual(len(set(ids.values())), len(names), ids)
        # RFC 8474 4: a rename keeps it (children too); a restart keeps it.
        await call(account.rename_mailbox, "Work", "Job")
        self.assertEqual(await self.mailbox_id(account, "Job"), ids["Work"])
        self.assertEqual(await self.mailbox_id(account, "Job/Old"), ids["Work/Old"])
        again = await self.reopen(storage)
        self.assertEqual(await self.mailbox_id(again, "Job"), ids["Work"])
        self.assertEqual(await self.mailbox_id(again, "INBOX"), ids["INBOX"])
        # A mailbox deleted and made again is another mailbox.
        await call(again.delete_mailbox, "Job/Old")
        await call(again.create_mailbox, "Job/Old")
        self.assertNotIn(await self.mailbox_id(again, "Job/Old"), ids.values())

    async def saved(self, mailbox: IMailbox, uid: int) -> datetime.datetime:
        found: datetime.datetime | None = (await self.info(mailbox, uid)).save_date
        assert found is not None, "a message appended now has a save date"
        self.assertIsNotNone(found.utcoffset())
        return found

    async def test_save_dates(self) -> None:
        storage = self.make_storage()
        account = await self.account(storage)
        inbox = await self.mailbox(account, "INBOX")
        await call(account.create_mailbox, "Kept")
        kept = await self.mailbox(account, "Kept")
        old = datetime.datetime(2001, 2, 3, 4, 5, 6, tzinfo=datetime.UTC)
        before = _now()
        first = await self.append(inbox, message_bytes(1), internal_date=old)
        second = await self.append(inbox, message_bytes(2), internal_date=old)
        after = _now() + datetime.timedelta(seconds=1)
        # RFC 8514 3: the time it was saved, whatever internal date it was given.
        saved = await self.saved(inbox, first)
        self.assertTrue(before <= saved <= after, (before, saved, after))
        # COPY and MOVE: a save date of the copy's own, at its arrival.
        before = _now()
        pairs = list(await call(inbox.copy, [first], kept))
        pairs += list(await call(inbox.move, [second], kept))
        after = _now() + datetime.timedelta(seconds=1)
        for _, uid in pairs:
            copied = await self.saved(kept, uid)
            self.assertTrue(before <= copied <= after, (before, copied, after))
            self.assertEqual((await self.info(kept, uid)).internal_date, old)
        self.assertEqual(await self.saved(inbox, first), saved)
        # Kept across a restart.
        again = await self.mailbox(await self.reopen(storage), "INBOX")
        self.assertEqual(await self.saved(again, first), saved)
        # (message_bytes is used for its distinct, small messages.)
        self.assertEqual(len(await self.uids(again)), 1)
