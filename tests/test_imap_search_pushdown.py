"""SEARCH keys answered by the index (mailsrv.imap.search_pushdown).

The property: over a Maildir mailbox with varied flags, keywords, sizes,
internal dates and MODSEQs, seen through a session's view that still holds
a message another session expunged and lacks one it added, every search
program gives the same ``(seq, uid)`` hits, metadata and MODSEQs through
the index as through the plain per-message matcher.
"""

from __future__ import annotations

import datetime
import io
import os
import random
import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from fuzz.strategies import fuzz_settings
from mailsrv.criteria import Flag, Not, UidIn, matches
from mailsrv.imap import searching
from mailsrv.imap.commands import REGISTRY
from mailsrv.imap.commands.search import Search
from mailsrv.imap.search_syntax import SearchKey
from mailsrv.imap.selected import SelectedMailbox
from mailsrv.imap.uidmap import UidMap
from mailsrv.interfaces import IIndexSearch, IMailbox, IMessage, IMessageCache, StoreMode
from mailsrv.storage.maildir import MaildirStorage

UTC = datetime.UTC
BASE = datetime.datetime(2024, 5, 10, 0, 0, tzinfo=UTC)
KEYWORDS = ("$Work", "Later", "todo")
SYSTEM = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")


def _key(text: str) -> SearchKey:
    command = REGISTRY.parse([b"t SEARCH " + text.encode()])[1]
    assert isinstance(command, Search), text
    return command.key


@implementer(IMailbox, IMessageCache)
class PlainMailbox:
    """The same mailbox without :class:`IIndexSearch`: the plain matcher."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@implementer(IMailbox, IMessageCache, IIndexSearch)
class CountingMailbox(PlainMailbox):
    """Counts the messages whose metadata is fetched."""

    fetched = 0

    def fetch(self, uids: Any) -> Any:
        found = self._inner.fetch(uids)
        self.fetched += len(found)
        return found


class _Writer:
    closed = False
    paused = False


def _message(rng: random.Random, number: int) -> bytes:
    subject = rng.choice(["apple pie", "pear tart", "plum"])
    body = (
        rng.choice(["kiwi and lime", "nothing here", "KIWI"])
        + "\r\n"
        + "x" * rng.randrange(0, 3000)
    )
    return (
        f"From: a{number}@example.org\r\nSubject: {subject} {number}\r\n\r\n{body}\r\n"
    ).encode()


def _mailbox(test: SynchronousTestCase) -> tuple[Any, SelectedMailbox]:
    """A Maildir INBOX of 40 messages and a view of it that lacks the last
    two (added since) and still holds two expunged by someone else."""
    rng = random.Random(15)
    storage = MaildirStorage(os.path.join(os.path.abspath(test.mktemp()), "{user}"))
    test.addCleanup(storage.stop_watching)
    mailbox: Any = storage.account("joe").get_mailbox("INBOX")
    for number in range(40):
        flags = [f for f in (*SYSTEM, *KEYWORDS) if rng.random() < 0.35]
        # Around midnight UTC, some in other zones: days are the UTC ones.
        when = BASE + datetime.timedelta(days=rng.randrange(-3, 4), minutes=rng.randrange(-90, 90))
        zone = datetime.timezone(datetime.timedelta(hours=rng.choice([0, -4, 9])))
        mailbox.append(io.BytesIO(_message(rng, number)), flags, when.astimezone(zone))
    uids = list(mailbox.uids())
    # Later flag changes spread the MODSEQs.
    for uid in uids[::3]:
        mailbox.store([uid], ["\\Seen"], StoreMode.ADD)
    view = SelectedMailbox(mailbox, uids[:-2], False, recent=uids[5:30:4])
    view.saved = UidMap(uids[1:40:3])
    mailbox.remove([uids[7], uids[20]])  # the view is not told
    return mailbox, view


def _collect(
    view: SelectedMailbox, mailbox: Any, key: SearchKey, with_metadata: bool = True
) -> Any:
    """hits, metadata by UID (as SORT asks) and reported MODSEQs of a
    search, run to the end."""
    program = searching.compile_key(key, view, None, BASE)
    clock = task.Clock()
    metadata: dict[int, IMessage] = {}
    wanted = metadata if with_metadata else None
    d = searching.collect(view, mailbox, program, _Writer(), clock, wanted)  # type: ignore[arg-type]
    while not d.called:
        clock.advance(0)
    found: list[Any] = []
    d.addCallback(found.append)
    modseqs = None if program.modseqs is None else (program.modseqs.first, program.modseqs.highest)
    return found[0], {uid: (m.flags, m.size, m.modseq) for uid, m in metadata.items()}, modseqs


_DATES = ["07-May-2024", "09-May-2024", "10-May-2024", "11-May-2024", "14-May-2024"]
_LEAVES = st.one_of(
    st.sampled_from(
        [
            *("ALL", "SEEN", "UNSEEN", "ANSWERED", "UNANSWERED", "DELETED", "UNDELETED"),
            *("FLAGGED", "UNFLAGGED", "DRAFT", "UNDRAFT", "RECENT", "NEW", "OLD"),
            *("KEYWORD $Work", "UNKEYWORD Later", "KEYWORD todo", "KEYWORD $work"),
            *("KEYWORD Unknown", "UNKEYWORD Unknown", "$", "UID $"),
            *("SUBJECT apple", "BODY kiwi", "TEXT lime", "FROM a1"),
        ]
    ),
    # "@size" becomes a message's size, one less or one more (see the test).
    st.sampled_from(["LARGER @size", "SMALLER @size"]),
    st.builds(lambda n: f"LARGER {n}", st.integers(0, 4000)),
    st.builds(
        lambda op, d: f"{op} {d}",
        st.sampled_from(["BEFORE", "ON", "SINCE"]),
        st.sampled_from(_DATES),
    ),
    st.builds(lambda n: f"MODSEQ {n}", st.integers(1, 60)),
    st.builds(
        lambda kind, a, b: f"{kind}{a}:{b}",
        st.sampled_from(["", "UID "]),
        st.integers(1, 45),
        st.one_of(st.integers(1, 45), st.just("*")),
    ),
    st.builds(lambda a, b: f"{a},{b}", st.integers(1, 40), st.integers(1, 40)),
)
_KEYS = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"OR {a} {b}", inner, inner),
        st.builds(lambda a: f"NOT {a}", inner),
        st.builds(
            lambda parts: "(" + " ".join(parts) + ")", st.lists(inner, min_size=1, max_size=3)
        ),
    ),
    max_leaves=8,
)


class PushdownAgreesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.mailbox, self.view = _mailbox(self)

    @fuzz_settings(200)
    @given(st.lists(_KEYS, min_size=1, max_size=3), st.data())
    def test_same_answers_as_the_plain_matcher(self, parts: list[str], data: Any) -> None:
        sizes = sorted(
            {m.size + d for m in self.mailbox.fetch(self.mailbox.uids()) for d in (-1, 0, 1)}
        )
        text = re.sub("@size", lambda _: str(data.draw(st.sampled_from(sizes))), " ".join(parts))
        key = _key(text)
        pushed = _collect(self.view, self.mailbox, key)
        plain = _collect(self.view, PlainMailbox(self.mailbox), key)
        self.assertEqual(pushed, plain, text)

    def test_view_edges(self) -> None:
        """Sequence numbers name the view's messages: the expunged one keeps
        its number and matches nothing, the added one is not reported."""
        uids = list(self.view.map)
        hits, _, _ = _collect(self.view, self.mailbox, _key("ALL"))
        self.assertEqual(len(hits), len(uids) - 2)
        self.assertNotIn(uids[7], [u for _, u in hits])
        hits, _, _ = _collect(self.view, self.mailbox, _key("8:9"))
        self.assertEqual(hits, [(9, uids[8])])
        hits, _, _ = _collect(self.view, self.mailbox, _key("UID *"))
        self.assertEqual(hits, [(len(uids), uids[-1])])

    def test_index_keys_fetch_no_metadata(self) -> None:
        """SEARCH UNSEEN, LARGER and their combinations are answered by the
        index alone: no message's metadata is fetched."""
        counting = CountingMailbox(self.mailbox)
        for text in (
            "UNSEEN",
            "LARGER 1000",
            "OR SEEN NOT KEYWORD $Work",
            "1:20 SINCE 10-May-2024",
        ):
            hits, _, _ = _collect(self.view, counting, _key(text), with_metadata=False)
            plain, _, _ = _collect(self.view, PlainMailbox(self.mailbox), _key(text))
            self.assertEqual(hits, plain, text)
            self.assertTrue(hits, text)
        self.assertEqual(counting.fetched, 0)
        # With a header key left over, only the index's candidates are read.
        _collect(self.view, counting, _key("UNSEEN SUBJECT apple"), with_metadata=False)
        unseen, _, _ = _collect(self.view, self.mailbox, _key("UNSEEN"), with_metadata=False)
        self.assertEqual(counting.fetched, len(unseen))


class CriteriaContractTests(SynchronousTestCase):
    """The Maildir index answers exactly what :func:`matches` says."""

    def test_search_index_agrees_with_matches(self) -> None:
        mailbox, _ = _mailbox(self)
        messages = mailbox.fetch(mailbox.uids())
        many = UidIn(tuple((m.uid, m.uid) for m in messages[::2]))
        for criterion in (Flag("\\Seen"), Not(Flag("todo")), Flag("Nothing"), many, Not(many)):
            expected = [m.uid for m in messages if matches(criterion, m)]
            self.assertEqual(list(mailbox.search_index(criterion)), expected, criterion)
