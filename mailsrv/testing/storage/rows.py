"""The storage contract: bulk metadata as tuples and UIDs as runs
(:class:`~mailsrv.interfaces.IMessageRows`), and runs as columns
(:class:`~mailsrv.interfaces.IMessageColumns`), for backends that offer
them."""

# mypy: allow-untyped-calls
# (trial's assertion methods are not annotated)

from __future__ import annotations

import datetime
from typing import Any

from mailsrv.interfaces import (
    COLUMN_NAMES,
    DELETED,
    FLAGGED,
    SEEN,
    IMessageColumns,
    IMessageRows,
    StoreMode,
)
from mailsrv.testing.storage.base import SuiteBase, call, message_bytes


class RowsContract(SuiteBase):
    """``message_rows`` and ``uid_runs`` tell what ``fetch`` and ``uids`` tell."""

    async def _rows_mailbox(self) -> Any:
        inbox = await self.mailbox(await self.account(), "INBOX")
        if not IMessageRows.providedBy(inbox):
            self.skipTest("the backend does not offer IMessageRows")
        return inbox

    async def test_rows_agree_with_fetch(self) -> None:
        inbox = await self._rows_mailbox()
        east = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
        dates = [
            datetime.datetime(2021, 3, 4, 5, 6, 7, tzinfo=datetime.UTC),
            datetime.datetime(1999, 12, 31, 23, 59, 59, tzinfo=east),
            datetime.datetime(2030, 1, 1, 0, 0, 0, tzinfo=datetime.UTC),
        ]
        flag_sets = [[SEEN], ["$Work", SEEN], []]
        uids = [
            await self.append(inbox, message_bytes(n), flags, date)
            for n, (flags, date) in enumerate(zip(flag_sets, dates, strict=True))
        ]
        await call(inbox.store, [uids[0]], [DELETED], StoreMode.ADD)
        wanted = [uids[2], uids[0], uids[1] + 1000]  # unordered, one missing
        rows = await call(inbox.message_rows, wanted)
        infos = await call(inbox.fetch, sorted(uids))
        self.assertEqual([row[0] for row in rows], [uids[0], uids[2]])
        by_uid = {info.uid: info for info in infos}
        for uid, flags, seconds, minutes, size, modseq in await call(inbox.message_rows, uids):
            info = by_uid[uid]
            self.assertEqual(flags, info.flags)
            self.assertEqual(size, info.size)
            self.assertEqual(modseq, info.modseq)
            offset = datetime.timezone(datetime.timedelta(minutes=minutes))
            when = datetime.datetime.fromtimestamp(seconds, offset)
            # The instant the fetch gives, in the zone the backend keeps.
            self.assertEqual(when, info.internal_date.replace(microsecond=0))
            self.assertEqual(when.utcoffset(), info.internal_date.utcoffset())

    async def test_uid_runs_agree_with_uids(self) -> None:
        inbox = await self._rows_mailbox()
        self.assertEqual(list(await call(inbox.uid_runs)), [])
        uids = await self.seed(inbox, 8)
        await call(inbox.store, [uids[2], uids[3], uids[6]], [DELETED], StoreMode.ADD)
        await call(inbox.expunge)
        runs = [tuple(run) for run in await call(inbox.uid_runs)]
        self.assertEqual(runs, [(uids[0], uids[1]), (uids[4], uids[5]), (uids[7], uids[7])])
        added = await self.seed(inbox, 2, start=20)
        runs = [tuple(run) for run in await call(inbox.uid_runs)]
        self.assertEqual(runs[-1], (uids[7], added[-1]))
        expanded = [u for first, last in runs for u in range(first, last + 1)]
        self.assertEqual(expanded, await self.uids(inbox))

    async def test_columns_agree_with_rows(self) -> None:
        inbox = await self._rows_mailbox()
        offered = IMessageColumns.providedBy(inbox)
        if not offered:
            self.skipTest("the backend does not offer IMessageColumns")
        east = datetime.timezone(datetime.timedelta(hours=-3, minutes=-30))
        flag_sets = [[SEEN], [], ["$Work", SEEN], [FLAGGED], [], ["$Work"], [SEEN]]
        uids = []
        for n, flags in enumerate(flag_sets):
            # Dates before 1970 too: their seconds are negative.
            when = datetime.datetime(1965 + 10 * n, 1 + n, 2, 3, 4, 5, tzinfo=east)
            uids.append(await self.append(inbox, message_bytes(n, b"x" * n), flags, when))
        await call(inbox.store, [uids[1]], [DELETED], StoreMode.ADD)
        rows = await call(inbox.message_rows, uids)
        columns = await call(inbox.message_columns, uids[0], uids[-1], COLUMN_NAMES)
        self.assertEqual((columns.first, columns.count), (uids[0], len(uids)))
        self.assertEqual([columns.flag_sets[key] for key in columns.flags], [r[1] for r in rows])
        self.assertEqual(list(columns.dates), [r[2] for r in rows])
        zones = [0] * len(rows) if columns.zones is None else list(columns.zones)
        self.assertEqual(zones, [r[3] for r in rows])
        self.assertEqual(list(columns.sizes), [r[4] for r in rows])
        self.assertEqual(list(columns.modseqs), [r[5] for r in rows])
        # A run of one, and only the columns asked for.
        one = await call(inbox.message_columns, uids[2], uids[2], frozenset({"flags"}))
        self.assertEqual((one.count, [one.flag_sets[k] for k in one.flags]), (1, [rows[2][1]]))
        self.assertEqual(list(one.sizes), [])
        # A run with a UID that no longer exists (or never did) has none.
        await call(inbox.expunge)
        gone = await call(inbox.message_columns, uids[0], uids[2], COLUMN_NAMES)
        self.assertIsNone(gone)
        beyond = await call(inbox.message_columns, uids[-1], uids[-1] + 1, COLUMN_NAMES)
        self.assertIsNone(beyond)
        rest = await call(inbox.message_columns, uids[2], uids[-1], frozenset({"sizes"}))
        self.assertEqual(list(rest.sizes), [r[4] for r in rows[2:]])
