"""The Maildir full-text index: SEARCH BODY and TEXT answer exactly what
the scan answers, index or not, over real IMAP sessions.

Two servers share one Maildir: one with the full-text index, one without
(``fulltext=False``, the scan).  Every needle is asked of both and the
answers must be equal; the indexed server's mailbox is asked directly too,
to show that the index, not a fallback, gave its answer.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from typing import Any, cast

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, protocol, reactor, task
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailsrv.auth.realm import MailRealm
from mailsrv.imap.protocol import IMAP4ServerFactory
from mailsrv.interfaces import IFullTextSearch, TextMatches
from mailsrv.mime.decoding import search_texts
from mailsrv.mime.structure import parse
from mailsrv.policy import SessionPolicy
from mailsrv.storage.maildir import MaildirMailbox, MaildirStorage
from mailsrv.storage.maildir.fulltext import FullText
from mailsrv.storage.maildir.index import Index
from mailsrv.storage.maildir.layout import INDEX_NAME
from mailsrv.storage.maildir.textstore import FULLTEXT_NAME, Damaged, TextStore, looked_up
from tests.helpers import log_events
from tests.imap_helpers import Client
from tests.test_imap_render import GOLDEN
from tests.test_mime import corpus_names, load

#: Needles beyond those taken from the messages: case folding (ß folds to
#: "ss"), accents, scripts, needles shorter than a trigram, and none at all.
_EXTRA = [
    "",
    "a",
    "É",
    "ss",
    "STRASSE",
    "Grüße",
    "GRÜSSE",
    "日本",
    "日本語",
    "привет",
    "ПРИВЕТ",
    "köln",
    "münchen",
    "=C3",
    "boundary",
    "quoted-printable",
    "xylophonist",
    '"quoted"',
    "\\",
    "\uffff",
    "\U0001f600 ok",
]


def _needles(data: bytes) -> list[str]:
    """Pieces of a message's own decoded texts (so its charsets, base64 and
    quoted-printable parts are exercised): from the header, from the
    middle and the end of the body, one shorter than a trigram, and one
    upper-cased."""
    header, body = search_texts(parse(data), data)
    middle = len(body) // 2
    found = [
        header[len(header) // 2 : len(header) // 2 + 6],
        body[middle : middle + 5],
        body[middle : middle + 5].upper(),
        body[len(body) // 3 : len(body) // 3 + 2],
        body[-9:],
    ]
    return [n for n in found if n and not set(n) & {"\x00", "\r", "\n"}]


def _appendable() -> list[str]:
    """The corpus messages APPEND takes (as tests.test_imap_golden)."""
    with open(GOLDEN) as handle:
        records = json.load(handle)["messages"]
    return [name for name in corpus_names() if "append" not in records.get(name, {})]


def _search_line(key: str, needle: str) -> bytes:
    data = needle.encode("utf-8")
    return b"s UID SEARCH CHARSET UTF-8 %s {%d+}\r\n%s\r\n" % (key.encode(), len(data), data)


def _uids(response: bytes) -> list[int]:
    for line in response.split(b"\r\n"):
        if line.startswith(b"* SEARCH"):
            return [int(n) for n in line.split()[2:]]
    raise AssertionError(response)


class FullTextTests(TestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        template = os.path.join(self.root, "{user}", "Maildir")
        self.indexed = MaildirStorage(template, reactor=reactor)
        self.scanned = MaildirStorage(template, reactor=reactor, fulltext=False)
        self.ports: list[Any] = []
        self.clients: list[Client] = []
        for storage in (self.indexed, self.scanned):
            self.addCleanup(storage.stop_watching)
            checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret")
            portal = Portal(MailRealm(storage), [checker])
            factory = IMAP4ServerFactory(portal, SessionPolicy(failure_delay=0.0))
            self.ports.append(reactor.listenTCP(0, factory, interface="127.0.0.1"))

    def tearDown(self) -> Any:
        # A Deferred, which trial waits for (typed Any: unittest's is None).
        return self._tear_down()

    @defer.inlineCallbacks
    def _tear_down(self) -> Any:
        for client in self.clients:
            if client.transport is not None:
                client.transport.loseConnection()
            yield client.lost
        for port in self.ports:
            yield port.stopListening()
        # Let the index's worker finish its job before the files go.
        yield self.until(lambda: not self.text_index()._busy)
        self.indexed.close()
        self.scanned.close()

    # -- helpers --------------------------------------------------------------------

    def inbox(self, storage: MaildirStorage | None = None) -> Any:
        return (storage or self.indexed).account("joe").get_mailbox("INBOX")

    def text_index(self) -> Any:
        return self.inbox()._fulltext

    @defer.inlineCallbacks
    def session(self, port: Any, select: bool = True) -> Any:
        creator = protocol.ClientCreator(reactor, Client)
        client = yield creator.connectTCP("127.0.0.1", port.getHost().port)
        self.clients.append(client)
        yield client.until(b"\r\n")
        response = yield client.command("L", "LOGIN joe secret")
        self.assertIn(b"L OK", response)
        if select:
            response = yield client.command("S", "SELECT INBOX")
            self.assertIn(b"S OK", response)
        return client

    @defer.inlineCallbacks
    def until(self, condition: Callable[[], object], deadline: float = 60.0) -> Any:
        """Wait (polling the reactor) until ``condition()`` is true."""
        end = time.monotonic() + deadline
        while not condition():
            if time.monotonic() > end:
                raise AssertionError("condition not met before the deadline")
            yield task.deferLater(reactor, 0.01, lambda: None)

    @defer.inlineCallbacks
    def ask_index(self, needle: str, body_only: bool = False) -> Any:
        mailbox = self.inbox()
        self.assertTrue(IFullTextSearch.providedBy(mailbox))
        answer = yield defer.maybeDeferred(mailbox.search_text, needle.casefold(), body_only)
        return answer

    @defer.inlineCallbacks
    def index_covers(self, uids: list[int]) -> Any:
        """Wait (at most a minute) until the index answers for every one of ``uids``."""
        end = time.monotonic() + 60
        while time.monotonic() < end:
            answer = yield self.ask_index("zzz")
            if answer is not None and all(answer.covers(uid) for uid in uids):
                return answer
            yield self.until(lambda: not self.text_index()._busy)
            yield task.deferLater(reactor, 0.01, lambda: None)
        raise AssertionError(f"the index does not cover {uids} after a minute")

    @defer.inlineCallbacks
    def both(self, indexed: Client, scanned: Client, key: str, needle: str) -> Any:
        """The answers of both servers, which must agree."""
        answers = []
        for client in (indexed, scanned):
            client.send(_search_line(key, needle))
            response = yield client.until_tagged("s")
            self.assertIn(b"s OK", response, (key, needle))
            answers.append(_uids(response))
        self.assertEqual(answers[0], answers[1], (key, needle))
        return answers[0]

    @defer.inlineCallbacks
    def append_corpus(self, client: Client) -> Any:
        # Some corpus messages have 8-bit headers (RFC 6855 4).
        response = yield client.command("E", "ENABLE UTF8=ACCEPT")
        self.assertIn(b"E OK", response)
        for name in _appendable():
            data = load(name)
            client.send(b"A APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n")
            response = yield client.until_tagged("A")
            self.assertIn(b"A OK", response, name)

    # -- tests ----------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_corpus_answers_equal_the_scan(self) -> Any:
        """Every BODY and TEXT needle over the golden corpus (its recorded
        searches, pieces of every message's decoded text in every charset
        and transfer encoding, case variants, short needles) gets the same
        UIDs from the index as from the scan."""
        loader = yield self.session(self.ports[0], select=False)
        yield self.append_corpus(loader)
        indexed = yield self.session(self.ports[0])
        scanned = yield self.session(self.ports[1])
        uids = list(self.inbox().uids())
        self.assertEqual(len(uids), len(_appendable()))
        # The first text search builds the index (and scans meanwhile).
        yield self.both(indexed, scanned, "TEXT", "hello")
        yield self.index_covers(uids)

        needles = list(_EXTRA)
        with open(GOLDEN) as handle:
            for record in json.load(handle)["searches"]:
                key, _, rest = record["criteria"].partition(" ")
                if key in ("BODY", "TEXT"):
                    needles.append(record["literal"] or rest.strip('"'))
        for name in _appendable():
            needles.extend(_needles(load(name)))
        answered = 0
        for needle in dict.fromkeys(needles):
            for key in ("BODY", "TEXT"):
                yield self.both(indexed, scanned, key, needle)
                answer = yield self.ask_index(needle, key == "BODY")
                if looked_up(needle.casefold()):
                    self.assertIsInstance(answer, TextMatches, needle)
                    answered += 1
                else:
                    self.assertIsNone(answer, needle)
        self.assertGreater(answered, 300)

    @defer.inlineCallbacks
    def test_kept_current(self) -> Any:
        """APPEND, COPY, MOVE, EXPUNGE, a delivery by another process and a
        file dropped into new/ are all found at once (what the index has
        not reached yet is scanned) and indexed after."""
        indexed = yield self.session(self.ports[0])
        scanned = yield self.session(self.ports[1])
        message = b"Subject: one\r\n\r\nthe wombat sleeps\r\n"
        yield indexed.command("A", b"APPEND INBOX {%d+}\r\n" % len(message) + message)
        self.assertEqual((yield self.both(indexed, scanned, "BODY", "wombat")), [1])
        yield self.index_covers([1])
        answer = yield self.ask_index("wombat")
        self.assertEqual(answer.matched, {1})

        # COPY into INBOX, then MOVE out and back: new UIDs each time.
        yield indexed.command("C", "UID COPY 1 INBOX")
        yield indexed.command("C", "CREATE Other")
        yield indexed.command("M", "UID MOVE 1 Other")
        other = yield self.session(self.ports[0])
        yield other.command("S", "SELECT Other")
        yield other.command("M", "UID MOVE 1 INBOX")
        yield indexed.command("N", "NOOP")
        yield scanned.command("N", "NOOP")
        self.assertEqual((yield self.both(indexed, scanned, "TEXT", "WOMBAT")), [2, 3])

        # Another process delivers (as `mailsrv deliver` does), and an
        # outside program drops a file into new/.
        other_process = MaildirStorage(os.path.join(self.root, "{user}", "Maildir"))
        self.addCleanup(other_process.close)
        mailbox = cast(MaildirMailbox, other_process.account("joe").get_mailbox("INBOX"))
        mailbox.append(io.BytesIO(b"Subject: two\r\n\r\na wombat wakes\r\n"))
        new = os.path.join(self.root, "joe", "Maildir", "new")
        with open(os.path.join(new, "1700000000.outside.host"), "wb") as handle:
            handle.write(b"Subject: three\r\n\r\nwombats everywhere\r\n")
        yield indexed.command("N", "NOOP")
        yield scanned.command("N", "NOOP")
        self.assertEqual((yield self.both(indexed, scanned, "BODY", "wombat")), [2, 3, 4, 5])
        yield self.index_covers([2, 3, 4, 5])
        answer = yield self.ask_index("wombat", True)
        self.assertEqual(answer.matched & {2, 3, 4, 5}, {2, 3, 4, 5})

        # EXPUNGE drops the texts too.
        yield indexed.command("F", "UID STORE 2:3 +FLAGS.SILENT (\\Deleted)")
        yield indexed.command("X", "EXPUNGE")
        yield scanned.command("N", "NOOP")
        self.assertEqual((yield self.both(indexed, scanned, "BODY", "wombat")), [4, 5])
        yield self.until(lambda: not self.text_index()._busy)
        answer = yield self.ask_index("wombat")
        self.assertEqual(answer.matched, {4, 5})

    @defer.inlineCallbacks
    def test_lagging_index_never_loses_hits(self) -> Any:
        """Messages the index has not reached are scanned: with its upkeep
        held back, a new message is still found, beside the indexed ones."""
        indexed = yield self.session(self.ports[0])
        scanned = yield self.session(self.ports[1])
        message = b"Subject: x\r\n\r\nthe bilby digs\r\n"
        yield indexed.command("A", b"APPEND INBOX {%d+}\r\n" % len(message) + message)
        yield self.both(indexed, scanned, "BODY", "bilby")
        yield self.index_covers([1])
        fulltext = self.text_index()
        self.patch(fulltext, "changed", lambda: None)  # the index lags from here on
        for _ in range(2):
            yield indexed.command("A", b"APPEND INBOX {%d+}\r\n" % len(message) + message)
        yield scanned.command("N", "NOOP")
        answer = yield self.ask_index("bilby", True)
        self.assertEqual([answer.covers(uid) for uid in (1, 2, 3)], [True, False, False])
        self.assertEqual((yield self.both(indexed, scanned, "BODY", "bilby")), [1, 2, 3])
        self.assertEqual((yield self.both(indexed, scanned, "TEXT", "DIGS")), [1, 2, 3])

    @defer.inlineCallbacks
    def test_damaged_index_is_rebuilt(self) -> Any:
        """A full-text file overwritten with junk costs a scan, never a
        wrong answer, and is rebuilt."""
        indexed = yield self.session(self.ports[0])
        scanned = yield self.session(self.ports[1])
        for n in range(5):
            message = b"Subject: %d\r\n\r\nnumber %d of the platypus\r\n" % (n, n)
            yield indexed.command("A", b"APPEND INBOX {%d+}\r\n" % len(message) + message)
        yield self.both(indexed, scanned, "BODY", "platypus")
        yield self.index_covers([1, 2, 3, 4, 5])
        path = os.path.join(self.root, "joe", "Maildir", FULLTEXT_NAME)
        with open(path, "r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(0)
            handle.write(b"\xa5" * size)
        for needle in ("platypus", "number 3", "of the"):
            self.assertEqual(
                (yield self.both(indexed, scanned, "BODY", needle)),
                [1, 2, 3, 4, 5] if needle != "number 3" else [4],
            )
        answer = yield self.index_covers([1, 2, 3, 4, 5])
        answer = yield self.ask_index("number 3")
        self.assertEqual(answer.matched, {4})

    @defer.inlineCallbacks
    def test_deleted_index_is_rebuilt(self) -> Any:
        indexed = yield self.session(self.ports[0])
        scanned = yield self.session(self.ports[1])
        message = b"Subject: x\r\n\r\nan echidna\r\n"
        yield indexed.command("A", b"APPEND INBOX {%d+}\r\n" % len(message) + message)
        yield self.both(indexed, scanned, "BODY", "echidna")
        yield self.index_covers([1])
        os.unlink(os.path.join(self.root, "joe", "Maildir", FULLTEXT_NAME))
        self.assertEqual((yield self.both(indexed, scanned, "BODY", "echidna")), [1])
        yield self.index_covers([1])
        answer = yield self.ask_index("echidna")
        self.assertEqual(answer.matched, {1})

    @defer.inlineCallbacks
    def test_file_from_before_answers_the_first_search(self) -> Any:
        """After a restart the file on disk answers the first text search
        (once compared with the folder), rather than a scan."""
        indexed = yield self.session(self.ports[0])
        message = b"Subject: x\r\n\r\na quoll\r\n"
        yield indexed.command("A", b"APPEND INBOX {%d+}\r\n" % len(message) + message)
        yield self.index_covers([1])
        restarted = MaildirStorage(os.path.join(self.root, "{user}", "Maildir"), reactor=reactor)
        self.addCleanup(restarted.close)
        self.addCleanup(restarted.stop_watching)
        mailbox = cast(MaildirMailbox, restarted.account("joe").get_mailbox("INBOX"))
        answer = yield mailbox.search_text("quoll", True)
        self.assertEqual(answer.matched, {1})
        self.assertTrue(answer.covers(1))
        fulltext = mailbox._fulltext
        assert fulltext is not None
        yield self.until(lambda: not fulltext._busy)

    def test_switched_off(self) -> None:
        """``fulltext = false``: no answers and no file."""
        mailbox = self.inbox(self.scanned)
        self.assertIsNone(mailbox.search_text("anything", False))
        self.assertFalse(os.path.exists(os.path.join(self.root, "joe", "Maildir", FULLTEXT_NAME)))


class IndexBeingCreatedTests(SynchronousTestCase):
    """While ``mailsrv reindex`` or a rebuild makes the folder's index anew,
    the file is empty until its creation commits: a full-text job that
    opens it then waits for the next change, without an error in the log."""

    def test_waits_quietly(self) -> None:
        folder = os.path.abspath(self.mktemp())
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(folder, sub))
        index_path = os.path.join(folder, INDEX_NAME)
        open(index_path, "wb").close()  # created; the schema not yet committed
        events = log_events(self)
        jobs: list[defer.Deferred[Any]] = []

        def run(job: Callable[[], Any]) -> defer.Deferred[Any]:
            jobs.append(defer.maybeDeferred(job))
            return jobs[-1]

        fulltext = FullText(folder, run)
        self.addCleanup(fulltext.close)
        self.assertIsNone(fulltext.search("wombat", False))  # schedules the first build
        self.assertEqual(len(jobs), 1)
        self.assertFalse(fulltext._busy)
        warnings = [e for e in events if e.get("log_level") in (LogLevel.warn, LogLevel.error)]
        self.assertEqual(warnings, [])
        self.assertFalse(os.path.exists(os.path.join(folder, FULLTEXT_NAME)))

        # Once the index is there, the next change builds the full-text index.
        os.unlink(index_path)
        Index.create(index_path, 1234, 1, 1).close()
        self.assertIsNone(fulltext.search("wombat", False))
        self.assertEqual(len(jobs), 2)
        self.successResultOf(jobs[1])
        self.assertTrue(os.path.exists(os.path.join(folder, FULLTEXT_NAME)))
        answer = self.successResultOf(defer.maybeDeferred(fulltext.search, "wombat", False))
        self.assertEqual(answer, TextMatches(frozenset(), ()))


class TextStoreTests(SynchronousTestCase):
    """The file itself: what it stores for characters the tokenizer cannot
    take, which needles it answers, and damage."""

    def setUp(self) -> None:
        self.path = os.path.join(os.path.abspath(self.mktemp()), FULLTEXT_NAME)
        os.makedirs(os.path.dirname(self.path))
        self.store = TextStore(self.path, 7)
        self.addCleanup(self.store.close)

    def test_nul_and_surrogates_do_not_hide_what_follows(self) -> None:
        """SQLite's tokenizer stops at NUL: text after one is still found."""
        self.store.add([(1, "subject: x", "before\x00after the nul"), (2, "h", "lone \ud800 tail")])
        self.assertEqual(self.store.matches("after the", True), {1})
        self.assertEqual(self.store.matches("tail", True), {2})
        self.assertEqual(self.store.matches("subject", True), set())
        self.assertEqual(self.store.matches("subject", False), {1})

    def test_candidates_are_confirmed(self) -> None:
        """Every trigram of "abcab" is in "abcxbcab", but not the needle."""
        self.store.add([(1, "", "abcxbcab"), (2, "", "zabcabz")])
        self.assertEqual(self.store.matches("abcab", True), {2})

    def test_needles_it_answers(self) -> None:
        self.assertTrue(looked_up("abc"))
        self.assertFalse(looked_up("ab"))
        self.assertFalse(looked_up("a\x00bc"))
        self.assertFalse(looked_up("ab\uffffc"))

    def test_removed(self) -> None:
        self.store.add([(1, "", "the wombat"), (2, "", "a wombat")])
        self.store.remove([1])
        self.assertEqual(self.store.matches("wombat", True), {2})
        self.assertEqual(self.store.uids(), {2})

    def test_another_uidvalidity_starts_empty(self) -> None:
        self.store.add([(1, "", "the wombat")])
        other = TextStore(self.path, 8)
        self.addCleanup(other.close)
        self.assertEqual(other.uids(), set())

    def test_damaged_texts(self) -> None:
        self.store.add([(1, "", "the wombat")])
        self.store._db.execute("UPDATE docs SET texts = x'00'")
        self.assertRaises(Damaged, self.store.matches, "wombat", True)


class CoverageTests(SynchronousTestCase):
    """Which messages an answer decides, and what the scan is narrowed to."""

    def test_covers(self) -> None:
        answer = TextMatches(frozenset({3}), ((1, 4), (7, 7), (10, 20)))
        covered = [uid for uid in range(0, 23) if answer.covers(uid)]
        self.assertEqual(covered, [1, 2, 3, 4, 7, *range(10, 21)])

    def test_narrowed_to_matches_and_the_uncovered(self) -> None:
        from mailsrv.imap.textindex import IndexedText, narrow
        from mailsrv.imap.uidmap import UidMap

        view = UidMap([1, 2, 3, 5, 6, 8, 9, 11, 12])
        key = IndexedText("needle", False)
        key.asked = True
        key.answer = TextMatches(frozenset({2, 4, 9}), ((1, 3), (6, 9)))
        found = self.successResultOf(narrow(view, cast(Any, None), [key]))
        # 2 and 9 match; 5, 11 and 12 are not covered; 4 is not in the view.
        self.assertEqual(found, [(2, 2), (4, 5), (7, 9), (8, 11), (9, 12)])

    def test_no_answer_no_narrowing(self) -> None:
        from mailsrv.imap.textindex import IndexedText, narrow
        from mailsrv.imap.uidmap import UidMap

        key = IndexedText("ab", False)
        key.asked = True
        self.assertIsNone(self.successResultOf(narrow(UidMap([1]), cast(Any, None), [key])))


class ReindexTests(SynchronousTestCase):
    """``mailsrv reindex`` rebuilds the full-text index too, with progress
    on a terminal and its size in the summary."""

    def test_reindex(self) -> None:
        from mailsrv import cli

        top = os.path.abspath(self.mktemp())
        os.makedirs(top)
        passwd = os.path.join(top, "passwd")
        with open(passwd, "w") as handle:
            handle.write("alice:{PLAIN}secret\n")
        maildir = os.path.join(top, "{user}", "Maildir")
        storage = MaildirStorage(maildir)
        inbox = cast(MaildirMailbox, storage.account("alice").get_mailbox("INBOX"))
        for n in range(3):
            inbox.append(io.BytesIO(b"Subject: %d\r\n\r\nthe numbat %d\r\n" % (n, n)))
        uidvalidity = inbox.uidvalidity
        storage.close()

        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        out = Terminal()
        argv = ["reindex", "alice", "--passwd", passwd, "--maildir", maildir]
        self.assertEqual(cli.main(argv, stdout=out), cli.EX_OK)
        text = out.getvalue()
        self.assertIn("\rINBOX: full-text index 3/3", text)
        self.assertRegex(text, r"INBOX: 3 messages; full-text index 3 messages, \d+ octets")
        path = os.path.join(top, "alice", "Maildir", FULLTEXT_NAME)
        store = TextStore(path, uidvalidity)
        self.addCleanup(store.close)
        self.assertEqual(store.matches("numbat 1", True), {2})
