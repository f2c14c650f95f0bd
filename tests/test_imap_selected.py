"""The per-session mailbox view: the compact seq<->UID map and update rules."""

from __future__ import annotations

import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mailsrv.errors import TemporaryFailure
from mailsrv.imap.selected import SelectedMailbox, UidMap
from mailsrv.interfaces import MessageInfo
from mailsrv.storage.memory import MemoryMailbox, MemoryStorage
from tests.imap_helpers import DATE


class UidMapTests(SynchronousTestCase):
    def test_agrees_with_a_plain_list(self) -> None:
        rng = random.Random(7)
        model: list[int] = []
        view = UidMap()
        uid = 0
        for _ in range(300):
            action = rng.random()
            if action < 0.75:
                uid += rng.choice((1, 1, 1, 2, 10))
                model.append(uid)
                view.extend([uid])
            elif model:
                gone = set(rng.sample(model, min(len(model), rng.randint(1, 4))))
                expected = sorted((model.index(u) + 1 for u in gone), reverse=True)
                self.assertEqual(view.remove(gone), expected)
                model = [u for u in model if u not in gone]
            self.assertEqual(len(view), len(model))
            self.assertEqual(list(view), model)
            self.assertEqual(view.last_uid, model[-1] if model else 0)
        for seq, uid in enumerate(model, 1):
            self.assertEqual(view.uid(seq), uid)
            self.assertEqual(view.seq(uid), seq)
        self.assertIsNone(view.seq(uid + 1))
        self.assertEqual(list(view.by_seq(2, 5)), [(s, model[s - 1]) for s in range(2, 6)])
        low, high = model[3], model[-3]
        self.assertEqual(
            list(view.by_uid(low - 1, high)),
            [(i + 1, u) for i, u in enumerate(model) if low - 1 <= u <= high],
        )

    def test_out_of_range(self) -> None:
        view = UidMap([5, 6, 9])
        self.assertRaises(IndexError, view.uid, 0)
        self.assertRaises(IndexError, view.uid, 4)
        self.assertIsNone(view.seq(4))
        self.assertIsNone(view.seq(7))
        self.assertEqual(list(view.by_seq(3, 10)), [(3, 9)])
        self.assertEqual(list(view.by_uid(7, 8)), [])
        self.assertRaises(ValueError, view.extend, [9])

    def test_compact(self) -> None:
        view = UidMap(range(1, 10001))
        self.assertEqual(view.memory(), 8)
        self.assertEqual(view.remove([5000]), [5000])
        self.assertEqual(view.memory(), 16)
        self.assertEqual(len(view), 9999)
        self.assertEqual(view.uid(5000), 5001)

    def test_bulk_removal_agrees_with_a_plain_list(self) -> None:
        rng = random.Random(11)
        for _ in range(200):
            model = sorted(rng.sample(range(1, 400), rng.randint(0, 150)))
            view = UidMap(model)
            gone = set(rng.sample(range(0, 420), rng.randint(0, 120)))
            expected = sorted((i + 1 for i, u in enumerate(model) if u in gone), reverse=True)
            self.assertEqual(view.remove(gone), expected)
            kept = [u for u in model if u not in gone]
            self.assertEqual(list(view), kept)
            self.assertEqual(len(view), len(kept))
            for seq, uid in enumerate(kept, 1):
                self.assertEqual(view.uid(seq), uid)
            # Still appendable, still compact (no two runs that touch).
            view.extend([500])
            self.assertEqual(list(view)[-1], 500)

    def test_removal_does_not_walk_every_message(self) -> None:
        class Watched(UidMap):
            __slots__ = ()

            def __iter__(self) -> Any:
                raise AssertionError("remove() iterated over every message")

        view = Watched(range(1, 100_001))
        self.assertEqual(view.remove([10, 50_000, 99_999, 200_000]), [99_999, 50_000, 10])
        self.assertEqual(len(view), 99_997)
        self.assertEqual(view.memory(), 4 * 2 * 4)  # four runs
        self.assertEqual(view.uid(50_000), 50_002)


def info(uid: int, flags: set[str], modseq: int) -> MessageInfo:
    return MessageInfo(uid, frozenset(flags), DATE, 10, modseq)


class SelectedMailboxTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.storage = MemoryStorage()
        self.mailbox = self.storage.account("joe").get_mailbox("INBOX")
        for i in range(3):
            self.add(b"m%d" % i)
        recent = self.mailbox.claim_recent()
        self.view = SelectedMailbox(self.mailbox, self.mailbox.uids(), False, recent)
        self.mailbox.add_listener(self.view)

    def add(self, data: bytes) -> int:
        """A delivery (which the listening view hears of)."""
        return self.storage.deliver("joe", data)

    def flush(self, expunges: bool) -> list[bytes]:
        result: list[list[bytes]] = []
        self.view.flush(expunges).addCallback(result.append)
        return result[0]

    def test_expunges_wait_until_allowed(self) -> None:
        self.mailbox.store([1, 3], ["\\Deleted"], "add")
        self.mailbox.expunge()
        self.add(b"new")
        # The held-back expunged messages still count, \\Recent ones too.
        self.assertEqual(self.flush(False), [b"* 4 EXISTS\r\n", b"* 4 RECENT\r\n"])
        self.assertEqual(self.view.exists, 4)
        self.assertEqual(self.flush(True), [b"* 3 EXPUNGE\r\n", b"* 1 EXPUNGE\r\n"])
        self.assertEqual(list(self.view.map), [2, 4])
        self.assertEqual(self.flush(True), [])

    def test_flags_of_expunged_messages_are_not_sent(self) -> None:
        self.mailbox.store([2], ["\\Deleted"], "add")
        self.mailbox.store([3], ["\\Seen"], "add")
        self.mailbox.expunge()
        self.assertEqual(self.flush(False), [b"* 3 FETCH (FLAGS (\\Recent \\Seen))\r\n"])
        self.assertEqual(self.flush(True), [b"* 2 EXPUNGE\r\n"])

    def test_own_store_is_not_repeated(self) -> None:
        result = self.mailbox.store([1], ["\\Seen"], "add")
        self.view.forget_flags(result.updated)
        self.assertEqual(self.flush(True), [])
        # A later change by someone else still gets through.
        self.view.flags_changed(self.mailbox, [info(1, {"\\Flagged"}, 99)])
        self.assertEqual(self.flush(True), [b"* 1 FETCH (FLAGS (\\Flagged \\Recent))\r\n"])

    def test_message_added_and_expunged_before_announcement(self) -> None:
        uid = self.add(b"short-lived")
        self.mailbox.store([uid], ["\\Deleted"], "add")
        self.mailbox.expunge()
        self.assertEqual(self.flush(True), [])
        self.assertEqual(self.view.exists, 3)

    def test_on_change_and_close(self) -> None:
        calls: list[Any] = []
        self.view.on_change = lambda: calls.append(1)
        self.add(b"x")
        self.assertEqual(calls, [1])
        self.view.close()
        self.add(b"y")
        self.assertEqual(calls, [1])
        # No longer listening: nothing more is queued.
        self.assertFalse(self.view.has_pending())

    def test_new_messages_announced_when_claiming_recent_fails(self) -> None:
        """A store that cannot claim \\Recent at the moment (its database
        restarting) still has the new message announced, just not as
        \\Recent here: the EXISTS must not be lost, nor the command's answer."""
        self.add(b"x")

        def unavailable() -> Any:
            raise TemporaryFailure("mail database unavailable")

        self.mailbox.claim_recent = unavailable  # type: ignore[method-assign]
        self.assertEqual(self.flush(True), [b"* 4 EXISTS\r\n", b"* 3 RECENT\r\n"])
        del self.mailbox.claim_recent  # the store is back: the message is still \Recent
        self.assertEqual(self.mailbox.claim_recent(), {4})

    def test_readonly_does_not_claim_recent(self) -> None:
        view = SelectedMailbox(self.mailbox, self.mailbox.uids(), True)
        self.mailbox.add_listener(view)
        self.add(b"x")
        lines: list[list[bytes]] = []
        view.flush(True).addCallback(lines.append)
        self.assertEqual(lines[0], [b"* 4 EXISTS\r\n", b"* 0 RECENT\r\n"])
        # \Recent is left for a read-write session.
        self.assertEqual(self.mailbox.claim_recent(), {4})


class FirstUnseenTests(SynchronousTestCase):
    def first_unseen(self, seen: list[bool], batch: int = 500) -> tuple[int, int]:
        """The answer, and how many messages' metadata were read for it."""
        storage = MemoryStorage()
        for is_seen in seen:
            storage.deliver("joe", b"x", flags=["\\Seen"] if is_seen else [])
        mailbox = storage.account("joe").get_mailbox("INBOX")
        view = SelectedMailbox(mailbox, mailbox.uids(), True)
        unseen = mailbox.status().unseen
        read: list[int] = []
        real_fetch = MemoryMailbox.fetch

        def fetch(mailbox: MemoryMailbox, uids: Any) -> Any:
            uids = list(uids)
            read.extend(uids)
            return real_fetch(mailbox, uids)

        counting = self.patch(MemoryMailbox, "fetch", fetch)
        first = self.successResultOf(view.first_unseen(unseen, batch))
        counting.restore()
        return first, len(read)

    def test_agrees_with_a_scan(self) -> None:
        rng = random.Random(3)
        for _ in range(300):
            seen = [rng.random() < 0.9 for _ in range(rng.randint(0, 300))]
            expected = next((i + 1 for i, s in enumerate(seen) if not s), 0)
            self.assertEqual(self.first_unseen(seen, batch=rng.choice((1, 7, 64)))[0], expected)

    def test_new_mail_at_the_end_reads_little(self) -> None:
        first, read = self.first_unseen([True] * 20_000 + [False] * 3)
        self.assertEqual(first, 20_001)
        self.assertLessEqual(read, 128)

    def test_nothing_read_yet_reads_little(self) -> None:
        first, read = self.first_unseen([False] * 20_000)
        self.assertEqual(first, 1)
        self.assertLessEqual(read, 64)

    def test_all_seen_reads_nothing(self) -> None:
        self.assertEqual(self.first_unseen([True] * 1000), (0, 0))


class UidMapOfTests(SynchronousTestCase):
    def test_a_tuple_seen_again_gives_an_equal_independent_map(self) -> None:
        """UidMap.of reuses the runs of a UID tuple it saw lately (what
        Maildir and memory hand every SELECT until a message comes or
        goes); each map is still the session's own to change."""
        uids = (*range(1, 1001), *range(2000, 3001))
        first = UidMap.of(uids)
        first.remove([5, 2500])
        second = UidMap.of(uids)
        self.assertEqual(list(second), list(uids))
        self.assertEqual(len(first), len(uids) - 2)
        self.assertEqual(second.ranges(), [(1, 1000), (2000, 3000)])
        # Another tuple with the same contents, and a list, work alike.
        self.assertEqual(list(UidMap.of(tuple(list(uids)))), list(uids))
        self.assertEqual(list(UidMap.of(list(uids))), list(uids))
