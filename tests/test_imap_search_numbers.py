"""The hits of an index-only SEARCH as two lists (search_pushdown.Numbered).

``SEARCH UNSEEN`` on 100,000 messages has 30,000 hits: they are numbered
in the session's view and written without a tuple or a format call each.
The properties: the numbering is the view's (``UidMap.seq``), and the
``* SEARCH`` and ``* ESEARCH`` bytes are those of the plain matcher, for
views with gaps, messages added and expunged since, and more hits than one
write holds.
"""

from __future__ import annotations

import datetime
import io
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from fuzz.strategies import fuzz_settings
from mailsrv.imap import search_pushdown, searching
from mailsrv.imap.selected import SelectedMailbox
from mailsrv.imap.uidmap import UidMap
from mailsrv.interfaces import StoreMode
from mailsrv.storage.memory import MemoryStorage
from tests.test_imap_search_pushdown import PlainMailbox, _key

WHEN = datetime.datetime(2024, 5, 10, tzinfo=datetime.UTC)


class NumberedTests(SynchronousTestCase):
    @fuzz_settings(300)
    @given(
        st.one_of(
            st.sets(st.integers(1, 300), max_size=120),
            # One run: sequence numbers are the UIDs, or shifted from them.
            st.builds(lambda a, n: set(range(a, a + n)), st.integers(1, 40), st.integers(0, 200)),
        ),
        st.sets(st.integers(1, 320), max_size=150),
    )
    def test_numbered_in_the_view(self, view_uids: set[int], found: set[int]) -> None:
        uid_map = UidMap(sorted(view_uids))
        runs = search_pushdown._runs_of(uid_map)
        starts = [first for first, _, _ in runs]
        numbered = search_pushdown._numbered(runs, starts, sorted(found))
        expected = [(uid_map.seq(u), u) for u in sorted(found) if uid_map.seq(u) is not None]
        self.assertEqual(list(numbered), expected)
        self.assertEqual(len(numbered), len(expected))
        self.assertEqual(list(numbered[1:4]), expected[1:4])
        if expected:
            self.assertEqual(numbered[-1], expected[-1])

    @fuzz_settings(200)
    @given(st.lists(st.integers(0, 2**32 - 1), max_size=50))
    def test_formatted_as_one_at_a_time(self, numbers: list[int]) -> None:
        self.assertEqual(searching._formatted(numbers), b"".join(b" %d" % n for n in numbers))


class _Writer:
    closed = False
    paused = False

    def __init__(self) -> None:
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(data)


class WireBytesTests(SynchronousTestCase):
    """5,000 messages, a third seen; the view lacks the last 10 (added
    since) and holds 5 another session expunged."""

    def setUp(self) -> None:
        self.mailbox: Any = MemoryStorage().account("joe").get_mailbox("INBOX")
        for number in range(5000):
            data = b"Subject: m%d\r\n\r\nbody\r\n" % number
            self.mailbox.append(io.BytesIO(data), ["\\Seen"] if number % 3 == 0 else [], WHEN)
        uids = list(self.mailbox.uids())
        self.mailbox.remove(uids[100:4000:37])  # gaps in the UIDs the view holds
        uids = list(self.mailbox.uids())
        self.view = SelectedMailbox(self.mailbox, uids[:-10], False)
        self.mailbox.remove(uids[5:3000:600])  # expunged, the view not told
        self.mailbox.store(uids[1:3000:7], ["\\Seen"], StoreMode.ADD)

    def answer(self, mailbox: Any, text: str, uid: bool, extended: bool) -> bytes:
        program = searching.compile_key(_key(text), self.view, None, WHEN)
        clock = task.Clock()
        writer: Any = _Writer()
        if extended:
            options = ["MIN", "MAX", "COUNT", "ALL"]
            d = searching.run_extended(
                self.view, mailbox, program, "t", uid, options, writer, clock
            )
        else:
            d = searching.run_plain(self.view, mailbox, program, uid, writer, clock)
        while not d.called:
            clock.advance(0)
        return b"".join(writer.data)

    def test_same_bytes_as_the_plain_matcher(self) -> None:
        for text in ("UNSEEN", "SEEN", "ALL", "UNSEEN 100:3000", "NOT 1:4000", "UID 1:50"):
            for uid in (False, True):
                for extended in (False, True):
                    fast = self.answer(self.mailbox, text, uid, extended)
                    plain = self.answer(PlainMailbox(self.mailbox), text, uid, extended)
                    self.assertEqual(fast, plain, (text, uid, extended))
        self.assertGreater(self.answer(self.mailbox, "ALL", False, False).count(b" "), 4000)
