"""SEARCH HEADER/SUBJECT/FROM/TO/CC/BCC through the cached folded fields.

A mailbox that declares :class:`~mailsrv.interfaces.ICachedSearch` finds a
header key's needle in each message's cached decoded, case-folded field
(:func:`mailsrv.imap.content.folded_values`) with one query, and works out
only the messages it has no value for.  The property: over messages built
to make decoding and case folding visible (RFC 2047 words in several
charsets, bare 8-bit text, ß, final sigma, dotted I, ligatures, repeated
and empty fields, a value too long to cache, an encoded line feed), with
the cache cold, warm or partly dropped, every program gives the same
``(seq, uid)`` hits as the plain per-message matcher, on Maildir and in
memory.
"""

from __future__ import annotations

import datetime
import io
import os
import sqlite3
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from fuzz.strategies import fuzz_settings
from mailsrv.imap import searching
from mailsrv.imap.search_syntax import SearchKey
from mailsrv.imap.selected import SelectedMailbox
from mailsrv.interfaces import ICachedSearch, IIndexSearch, IMailbox, IMessageCache
from mailsrv.storage.maildir import MaildirStorage
from mailsrv.storage.memory import MemoryStorage
from tests.imap_helpers import ServerTestBase
from tests.test_imap_search_pushdown import PlainMailbox, _key, _Writer

UTC = datetime.UTC
WHEN = datetime.datetime(2024, 5, 10, 12, 0, tzinfo=UTC)

#: Header blocks; each message gets one (and a body) in turn.
HEADERS = [
    b"From: =?utf-8?b?SsO2cmcgTcO8bGxlcg==?= <jm@example.org>\r\n"
    b"To: team@example.net, =?iso-8859-1?q?Andr=E9?= <andre@example.fr>\r\n"
    b"Subject: =?utf-8?q?Stra=C3=9Fe?= =?utf-8?q?_und_Platz?=\r\n",
    b"From: \xce\xa3\xce\x8a\xce\xa3\xce\xa5\xce\xa6\xce\x9f\xce\xa3 <sisyphos@example.gr>\r\n"
    b"Subject: \xc4\xb0stanbul and the \xef\xac\x81nal word\r\n"
    b"Cc:\r\n",
    b"From: alice@example.org (Alice Comment)\r\n"
    b"Subject: plain PLAIN plain\r\n"
    b"Subject: second subject\r\n"
    b"To: group: bob@example.net, carol@example.net;\r\n"
    b"To: dave@example.net\r\n",
    b'From: "Strange, Name" <strange@example.com>\r\n'
    b"Subject: caf\xe9 in Latin-1\r\n"
    b"X-Priority: 1\r\n"
    b"Bcc: hidden@example.org\r\n",
    b"From: =?utf-8?q?line=0Afeed?= <lf@example.org>\r\n"
    b"Subject: =?utf-8?q?line=0Afeed?=\r\n"
    b"X-Long: " + b"long " * 4000 + b"\r\n",
    b"Subject: no from here, only =?bogus?q?text?= and =?utf-8?b?!!!?=\r\nTo: \r\n",
]

#: Strings the needles are cut from (case changed by the test).
POOL = [
    "Jörg Müller",
    "jm@example.org",
    "Straße und Platz",
    "strasse",
    "André",
    "ΣΊΣΥΦΟΣ",
    "σίσυφος",
    "İstanbul",
    "i̇stanbul",
    "ﬁnal",
    "final",
    "plain second",
    "Alice Comment",
    "alice@example.org",
    "bob@example.net",
    "group:",
    "Strange, Name",
    "café",
    "long long",
    "line",
    "feed",
    "bogus",
    "!!!",
    "<",
    " ",
]
#: Field names, the ones with most to match more often.
#: Needles where case folding differs from lower-casing, or that sit at a
#: field's edge.
TRICKY = ["ss", "STRASSE", "\u03bf\u03c3", "ΣΊΣΥΦΟΣ", "i̇s", "fi", "ﬁ", "É", "line", "", " ", "@"]
FIELDS = ["SUBJECT"] * 4 + ["FROM", "X-PRIORITY", "X-LONG", "CC", "TO", "BCC", "DATE"]
ADDRESSES = ["FROM"] * 3 + ["TO", "CC", "BCC"]


def _message(number: int) -> bytes:
    return HEADERS[number % len(HEADERS)] + b"\r\nbody %d\r\n" % number


def _mailbox(storage: Any, test: SynchronousTestCase) -> tuple[Any, SelectedMailbox]:
    """An INBOX of 18 messages and a view that lacks the last (added
    since) and still holds one another session expunged."""
    mailbox: Any = storage.account("joe").get_mailbox("INBOX")
    for number in range(18):
        flags = ["\\Seen"] if number % 3 else []
        mailbox.append(io.BytesIO(_message(number)), flags, WHEN)
    uids = list(mailbox.uids())
    view = SelectedMailbox(mailbox, uids[:-1], False)
    mailbox.remove([uids[4]])
    return mailbox, view


@st.composite
def _needles(draw: Any) -> bytes:
    """A needle cut from :data:`POOL` with its case changed, or any text."""
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return str(draw(st.text(max_size=3))).encode("utf-8")
    if choice == 1:
        return str(draw(st.sampled_from(TRICKY))).encode("utf-8")
    text = draw(st.sampled_from(POOL))
    start = draw(st.integers(0, len(text)))
    end = draw(st.integers(start, len(text)))
    piece = "".join(c.upper() if draw(st.booleans()) else c.lower() for c in text[start:end])
    return piece.encode("utf-8")


@st.composite
def _keys(draw: Any) -> SearchKey:
    """One to three header keys, maybe with an index key and a NOT."""
    parts: list[SearchKey] = []
    for _ in range(draw(st.integers(1, 3))):
        needle = draw(_needles())
        if draw(st.booleans()):
            key = SearchKey("ADDRESS", (draw(st.sampled_from(ADDRESSES)), needle))
        else:
            key = SearchKey("HEADER", (draw(st.sampled_from(FIELDS)), needle))
        if draw(st.integers(0, 5)) == 0:
            key = SearchKey("NOT", (key,))
        parts.append(key)
    if draw(st.booleans()):
        parts.append(_key(draw(st.sampled_from(["UNSEEN", "SEEN", "1:9", "NOT 3"]))))
    if draw(st.integers(0, 5)) == 0:
        parts = [SearchKey("OR", (parts[0], SearchKey("AND", tuple(parts))))]
    return parts[0] if len(parts) == 1 else SearchKey("AND", tuple(parts))


def _hits(view: SelectedMailbox, mailbox: Any, key: SearchKey) -> list[tuple[int, int]]:
    """The ``(seq, uid)`` hits of a search (CHARSET UTF-8), run to the end."""
    program = searching.compile_key(key, view, "UTF-8", WHEN)
    clock = task.Clock()
    d = searching.collect(view, mailbox, program, _Writer(), clock)  # type: ignore[arg-type]
    while not d.called:
        clock.advance(0)
    found: list[Any] = []
    d.addCallback(found.append)
    return list(found[0])


class _AgreesMixin:
    mailbox: Any
    view: SelectedMailbox

    def make_storage(self) -> Any:
        raise NotImplementedError

    def drop_cached(self, uids: list[int]) -> None:
        """Forget the folded values of these messages (a partly warm cache)."""
        raise NotImplementedError

    def setUp(self) -> None:
        self.mailbox, self.view = _mailbox(self.make_storage(), self)  # type: ignore[arg-type]

    @fuzz_settings(300)
    @given(_keys(), st.lists(st.integers(0, 17), max_size=6))
    def test_same_answers_as_the_plain_matcher(self, key: SearchKey, drop: list[int]) -> None:
        uids = list(self.mailbox.uids())
        self.drop_cached(sorted({uids[i % len(uids)] for i in drop}))
        self.assertTrue(ICachedSearch.providedBy(self.mailbox))  # type: ignore[attr-defined]
        folded = _hits(self.view, self.mailbox, key)
        plain = _hits(self.view, PlainMailbox(self.mailbox), key)
        self.assertEqual(folded, plain, key)  # type: ignore[attr-defined]

    @fuzz_settings(100)
    @given(_needles())
    def test_every_field(self, needle: bytes) -> None:
        """One needle against every field, as HEADER and as an address key."""
        for op, names in (("HEADER", sorted(set(FIELDS))), ("ADDRESS", sorted(set(ADDRESSES)))):
            for name in names:
                key = SearchKey(op, (name, needle))
                folded = _hits(self.view, self.mailbox, key)
                plain = _hits(self.view, PlainMailbox(self.mailbox), key)
                self.assertEqual(folded, plain, key)  # type: ignore[attr-defined]

    def test_edges(self) -> None:
        """Hand-picked cases: case folding beyond ASCII, every occurrence,
        an empty needle (has the field), a value too long to cache."""
        for key, expected in [
            (SearchKey("HEADER", ("SUBJECT", b"STRASSE")), [1, 7, 13]),
            (SearchKey("ADDRESS", ("FROM", "σίσυφοσ".encode())), [2, 8, 14]),
            (SearchKey("HEADER", ("SUBJECT", "i̇STANBUL".encode())), [2, 8, 14]),
            (SearchKey("HEADER", ("SUBJECT", b"SECOND")), [3, 9, 15]),
            (SearchKey("ADDRESS", ("TO", b"dave")), [3, 9, 15]),
            (SearchKey("HEADER", ("CC", b"")), [2, 8, 14]),
            (SearchKey("ADDRESS", ("TO", b"")), [1, 3, 6, 7, 9, 12, 13, 15]),
            (SearchKey("HEADER", ("X-LONG", b"long long")), [11, 17]),
        ]:
            for _ in range(2):  # cold, then warm
                hits = [seq for seq, _ in _hits(self.view, self.mailbox, key)]
                self.assertEqual(hits, expected, key)  # type: ignore[attr-defined]


class MaildirAgreesTests(_AgreesMixin, SynchronousTestCase):
    def make_storage(self) -> Any:
        storage = MaildirStorage(os.path.join(os.path.abspath(self.mktemp()), "{user}"))
        self.addCleanup(storage.stop_watching)
        return storage

    def drop_cached(self, uids: list[int]) -> None:
        db = self.mailbox._folder.db.db
        db.executemany(
            "DELETE FROM cache WHERE uid = ? AND kind LIKE '%folded%'", [(u,) for u in uids]
        )


class MemoryAgreesTests(_AgreesMixin, SynchronousTestCase):
    def make_storage(self) -> Any:
        return MemoryStorage()

    def drop_cached(self, uids: list[int]) -> None:
        for uid in uids:
            cache = self.mailbox._state.messages[uid].cache or {}
            for kind in [k for k in cache if "folded" in k]:
                del cache[kind]


@implementer(IMailbox, IMessageCache, IIndexSearch, ICachedSearch)
class _CountingMailbox(PlainMailbox):
    """Counts the metadata fetched and the files opened."""

    fetched = 0
    opened = 0

    def fetch(self, uids: Any) -> Any:
        found = self._inner.fetch(uids)
        self.fetched += len(found)
        return found

    def open(self, uid: int) -> Any:
        self.opened += 1
        return self._inner.open(uid)


class WarmSearchTests(SynchronousTestCase):
    def test_warm_search_reads_no_file_and_no_metadata(self) -> None:
        """The first SEARCH FROM reads each message's header once; the next
        ones (any needle) are answered from the cache alone, with no
        message's metadata fetched."""
        storage = MaildirStorage(os.path.join(os.path.abspath(self.mktemp()), "{user}"))
        self.addCleanup(storage.stop_watching)
        mailbox, view = _mailbox(storage, self)
        counting = _CountingMailbox(mailbox)
        first = _hits(view, counting, _key("FROM example.org"))
        self.assertEqual(counting.opened, 16)  # the view's 17 less the expunged one
        for text in ("FROM example.org", "FROM ALICE", "SUBJECT plain", "FROM x SUBJECT y"):
            before = counting.opened
            hits = _hits(view, counting, _key(text))
            self.assertEqual(hits, _hits(view, PlainMailbox(mailbox), _key(text)), text)
            if text.startswith("FROM"):
                self.assertEqual(counting.opened, before, text)
        self.assertEqual(_hits(view, counting, _key("FROM example.org")), first)
        self.assertEqual(counting.fetched, 0)

    def test_cold_narrow_search_reads_only_the_candidates(self) -> None:
        """With an index key narrowing the search, only the candidates'
        headers are read to fill the cache, not the whole slice's."""
        storage = MaildirStorage(os.path.join(os.path.abspath(self.mktemp()), "{user}"))
        self.addCleanup(storage.stop_watching)
        mailbox, view = _mailbox(storage, self)
        counting = _CountingMailbox(mailbox)
        for text in ("1:3 FROM example.org", "UNSEEN 1:9 SUBJECT plain"):
            hits = _hits(view, counting, _key(text))
            self.assertEqual(hits, _hits(view, PlainMailbox(mailbox), _key(text)), text)
        # 1:3, then the unseen among 1:9 (every third message is unseen).
        self.assertEqual(counting.opened, 3 + 3)
        self.assertEqual(counting.fetched, 0)


class CurrentOverSocketTests(ServerTestBase):
    """Over a socket: a message delivered after the cache was filled is
    found, and an expunged one is not (its cached values go with it)."""

    def make_storage(self) -> Any:  # a MaildirStorage
        self.root = os.path.abspath(self.mktemp())
        storage = MaildirStorage(os.path.join(self.root, "{user}"))
        self.addCleanup(storage.stop_watching)
        inbox: Any = storage.account("joe").get_mailbox("INBOX")
        for number in range(6):
            inbox.append(io.BytesIO(_message(number)), [], WHEN)
        return storage

    @defer.inlineCallbacks
    def search(self, text: bytes) -> Any:
        response = yield self.client.command("t", b"UID SEARCH " + text)
        lines = response.split(b"\r\n")
        self.assertEqual(lines[-2], b"t OK SEARCH completed", response)
        # Untagged EXISTS/EXPUNGE may come first; the SEARCH line is last.
        (line,) = [x for x in lines if x.startswith(b"* SEARCH")]
        return [int(n) for n in line.split()[2:]]

    @defer.inlineCallbacks
    def test_appended_and_expunged(self) -> Any:
        self.client = yield self.selected()
        found = yield self.search(b"FROM alice")
        self.assertEqual(found, [3])
        found = yield self.search(b"SUBJECT plain")
        self.assertEqual(found, [3])
        data = b"From: Alice <alice@example.org>\r\nSubject: plain again\r\n\r\nhi\r\n"
        response = yield self.client.command("a", b"APPEND INBOX {%d+}\r\n" % len(data) + data)
        self.assertIn(b"a OK", response)
        found = yield self.search(b"FROM alice")
        self.assertEqual(found, [3, 7])
        found = yield self.search(b"SUBJECT PLAIN")
        self.assertEqual(found, [3, 7])
        yield self.client.command("f", "UID STORE 3 +FLAGS (\\Deleted)")
        yield self.client.command("x", "EXPUNGE")
        found = yield self.search(b"FROM alice")
        self.assertEqual(found, [7])
        found = yield self.search(b"SUBJECT plain")
        self.assertEqual(found, [7])
        # The index file keeps no cached value of the expunged message.
        index = os.path.join(self.root, "joe", "mailsrv-index.sqlite")
        db = sqlite3.connect(index)
        self.addCleanup(db.close)
        (left,) = db.execute("SELECT count(*) FROM cache WHERE uid = 3").fetchone()
        self.assertEqual(left, 0)
        kinds = {k for (k,) in db.execute("SELECT DISTINCT kind FROM cache WHERE uid = 7")}
        self.assertTrue({k for k in kinds if k.startswith(("folded.", "afolded."))}, kinds)
