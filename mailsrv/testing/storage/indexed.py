"""The storage contract: what a backend answers from its index
(:class:`~mailsrv.interfaces.IIndexSearch`,
:class:`~mailsrv.interfaces.IPop3Listing`,
:class:`~mailsrv.interfaces.ICachedSearch`), checked against the metadata
``fetch`` gives and the values cached.  A backend that declares none of
them skips these tests."""

# mypy: allow-untyped-calls
# (trial's assertion methods are not annotated)

from __future__ import annotations

import datetime
import random

from twisted.trial.unittest import SkipTest

from mailsrv import criteria
from mailsrv.interfaces import (
    SEEN,
    ICachedSearch,
    IIndexSearch,
    IMailbox,
    IMessageCache,
    IPop3Listing,
    StoreMode,
)
from mailsrv.testing.storage.base import SuiteBase, call, message_bytes

_DAY = datetime.datetime(2024, 5, 10, tzinfo=datetime.UTC)
_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "$Work", "later")


class IndexContract(SuiteBase):
    """Index answers equal what the messages' metadata says."""

    async def _varied(self) -> IMailbox:
        """An INBOX of 30 messages with varied flags, sizes and dates (some
        near midnight UTC, in other zones), some changed after arriving."""
        rng = random.Random(7)
        inbox = await self.mailbox(await self.account(), "INBOX")
        for number in range(30):
            flags = [f for f in _FLAGS if rng.random() < 0.4]
            zone = datetime.timezone(datetime.timedelta(hours=rng.choice([0, -5, 8])))
            when = _DAY + datetime.timedelta(
                days=rng.randrange(-2, 3), minutes=rng.randrange(-60, 60)
            )
            body = b"x" * rng.randrange(0, 2000)
            await self.append(inbox, message_bytes(number, body), flags, when.astimezone(zone))
        uids = await self.uids(inbox)
        await call(inbox.store, uids[::4], ["later"], StoreMode.ADD)
        await call(inbox.store, uids[1::5], [SEEN], StoreMode.REMOVE)
        return inbox

    async def test_pop3_listing(self) -> None:
        inbox = await self._varied()
        if not IPop3Listing.providedBy(inbox):
            raise SkipTest(f"{type(inbox).__name__} does not provide IPop3Listing")
        messages = await call(inbox.fetch, await self.uids(inbox))
        expected = [(m.uid, m.size, SEEN in m.flags) for m in messages]
        self.assertEqual(list(await call(IPop3Listing(inbox).pop3_listing)), expected)

    async def test_search_index(self) -> None:
        inbox = await self._varied()
        if not IIndexSearch.providedBy(inbox):
            raise SkipTest(f"{type(inbox).__name__} does not provide IIndexSearch")
        messages = await call(inbox.fetch, await self.uids(inbox))
        sizes = sorted(m.size for m in messages)
        middle = messages[len(messages) // 2]
        scattered = criteria.UidIn(tuple((m.uid, m.uid) for m in messages[::2]))
        tests: list[criteria.Criterion] = [
            criteria.Flag(SEEN),
            criteria.Not(criteria.Flag("later")),
            criteria.Flag("$work"),  # keywords compare exactly
            criteria.Flag("$Work"),
            criteria.Flag("\\Recent"),  # never stored
            criteria.Larger(sizes[10]),
            criteria.Smaller(sizes[10]),
            criteria.Larger(2**63),
            criteria.ModseqAtLeast(middle.modseq),
            criteria.UidIn(((middle.uid, middle.uid + 3),)),
            criteria.UidIn(()),
            scattered,
            criteria.Not(scattered),
            criteria.And(()),
            criteria.Or(()),
            criteria.Or((criteria.Flag("\\Deleted"), criteria.Not(criteria.Flag("\\Draft")))),
        ]
        for op in ("BEFORE", "ON", "SINCE"):
            for days in (-3, -1, 0, 1, 3):
                day = (_DAY + datetime.timedelta(days=days)).date()
                tests.append(criteria.InternalDay(op, day))
        tests.append(criteria.InternalDay("BEFORE", datetime.date(1, 1, 1)))
        tests.append(criteria.InternalDay("SINCE", datetime.date(9999, 12, 31)))
        search = IIndexSearch(inbox).search_index
        for criterion in tests:
            expected = [m.uid for m in messages if criteria.matches(criterion, m)]
            self.assertEqual(list(await call(search, criterion)), expected, criterion)

    async def test_search_cached(self) -> None:
        inbox = await self._varied()
        if not ICachedSearch.providedBy(inbox):
            raise SkipTest(f"{type(inbox).__name__} does not provide ICachedSearch")
        uids = await self.uids(inbox)
        kind = "contract:X-TEST"
        # Every third message has no value; one has an empty value.
        values = {
            uid: b"\nvalue %d \xc3\xa9t\xc3\xa9\x00" % n if n % 5 else b""
            for n, uid in enumerate(uids)
            if n % 3
        }
        await call(IMessageCache(inbox).set_cached_many, kind, values)
        await call(IMessageCache(inbox).set_cached_many, "contract:OTHER", {uids[0]: b"value"})
        await call(inbox.remove, [uids[4]])
        held = [uid for uid in uids if uid != uids[4]]
        search = ICachedSearch(inbox).search_cached
        for needle in (
            b"",
            b"value",
            b"VALUE",
            b"\xc3\xa9t",
            b"\xa9",
            b"\x00",
            b"\n",
            b"7 ",
            b"zz",
        ):
            for low, high in ((1, 2**32), (uids[3], uids[20]), (uids[5], uids[5])):
                inside = [uid for uid in held if low <= uid <= high]
                matched = [
                    uid
                    for uid in inside
                    if uid in values and (needle in values[uid] if needle else values[uid])
                ]
                missing = [uid for uid in inside if uid not in values]
                found = await call(search, kind, needle, low, high)
                self.assertEqual(
                    (list(found[0]), list(found[1])), (matched, missing), (needle, low, high)
                )
