"""SORT, THREAD, ESORT and contexts (RFC 5256, 5957, 5267) on the wire.

Each test speaks IMAP over loopback to a server on the memory and the
Maildir backend, over a small mailbox built so that RFC 5256's own SORT
example answers what the RFC shows (``* SORT 5 3 4 1 2``); RFC 5267's
dialogues (ESORT, CONTEXT, UPDATE with ADDTO/REMOVEFROM, CANCELUPDATE,
NOUPDATE, PARTIAL) run across two or three concurrent sessions.  The whole
corpus is compared with Dovecot in tests/test_imap_sort_golden.py.
"""

from __future__ import annotations

import datetime
import io
import os
import re
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import TestCase

from mailsrv.auth.realm import MailRealm
from mailsrv.imap.contexts import MAX_CONTEXTS
from mailsrv.imap.protocol import IMAP4ServerFactory
from mailsrv.policy import SessionPolicy
from mailsrv.storage.maildir import MaildirStorage
from mailsrv.storage.maildir.folder import MaildirMailbox
from mailsrv.storage.memory import MemoryMailbox, MemoryStorage
from tests.imap_helpers import Client

_NOON = datetime.datetime(2024, 1, 3, 12, tzinfo=datetime.UTC)


def _message(subject: str, date: str | None, sender: str, extra: str = "", body: str = "") -> bytes:
    lines = [f"From: {sender}", "To: Dave <dave@example.org>", f"Subject: {subject}"]
    if date is not None:
        lines.append(f"Date: {date}")
    text = "\r\n".join(lines) + "\r\n" + extra + "\r\n" + body + "Text.\r\n"
    return text.encode("utf-8")


#: (message, internal date) by sequence number (UID = seq): base subjects
#: APPLE (3, 4, 5) and BANANA (1, 2), so (SUBJECT REVERSE DATE) is RFC
#: 5256's example answer 5 3 4 1 2; arrival is the reverse of mailbox order.
MESSAGES = [
    (
        _message(
            "Banana",
            "Mon, 1 Jan 2024 10:00:00 +0000",
            "Carol <carol@c.example>",
            "Message-ID: <1@x>\r\nCc: zed@z.example\r\n",
            "x" * 300,
        ),
        _NOON - datetime.timedelta(hours=1),
    ),
    (
        _message(
            "banana",
            "Sun, 31 Dec 2023 10:00:00 +0000",
            "alice@a.example",
            "Message-ID: <2@x>\r\nReferences: <1@x>\r\n",
        ),
        _NOON - datetime.timedelta(hours=2),
    ),
    (
        # -0800: 17:00 UTC on 31 Dec, after message 2 in UTC.
        _message(
            "Re: apple",
            "Mon, 1 Jan 2024 01:00:00 +0800",
            "Bob <bob@b.example>",
            "Message-ID: <3@x>\r\nIn-Reply-To: <5@x>\r\nCc: Amy <amy@a.example>\r\n",
            "y" * 100,
        ),
        _NOON - datetime.timedelta(hours=3),
    ),
    (
        # No Date: sorted by its internal date (RFC 5256 2.2).
        _message("[list] Fwd: Apple (fwd)", None, "=?UTF-8?Q?=C3=89mile?= <emile@e.example>"),
        datetime.datetime(2023, 12, 31, 12, tzinfo=datetime.UTC),
    ),
    (
        _message(
            "APPLE",
            "Tue, 2 Jan 2024 08:00:00 +0000",
            "<zoe@z.example>",
            "Message-ID: <5@x>\r\n",
            "z" * 50,
        ),
        _NOON - datetime.timedelta(hours=5),
    ),
]


class SortServerMixin:
    """A server over ``make_storage()`` with :data:`MESSAGES` in joe's INBOX."""

    mailbox_class: Any = None

    def make_storage(self) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        self.storage = self.make_storage()
        inbox = self.storage.account("joe").get_mailbox("INBOX")
        for data, when in MESSAGES:
            inbox.append(io.BytesIO(data), [], when)
        checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret")
        portal = Portal(MailRealm(self.storage), [checker])
        policy = SessionPolicy(failure_delay=0.0)
        self.port: Any = reactor.listenTCP(
            0, IMAP4ServerFactory(portal, policy), interface="127.0.0.1"
        )
        self.clients: list[Any] = []

    def tearDown(self) -> Any:
        # A Deferred, which trial waits for (typed Any: unittest's is None).
        return self._tear_down()

    @defer.inlineCallbacks
    def _tear_down(self) -> Any:
        for client in self.clients:
            if client.transport is not None:
                client.transport.loseConnection()
                yield client.lost
        yield self.port.stopListening()

    @defer.inlineCallbacks
    def session(self) -> Any:
        creator = protocol.ClientCreator(reactor, Client)
        client = yield creator.connectTCP("127.0.0.1", self.port.getHost().port)
        self.clients.append(client)
        yield client.until(b"\r\n")
        yield client.command("L", "LOGIN joe secret")
        response = yield client.command("S", "SELECT INBOX")
        assert b"S OK" in response, response
        return client

    @defer.inlineCallbacks
    def answer(self, client: Any, tag: str, text: str) -> Any:
        """The untagged lines of a command that must succeed."""
        response = yield client.command(tag, text)
        lines = response.decode("utf-8").split("\r\n")[:-1]
        self.assertTrue(lines[-1].startswith(f"{tag} OK"), (text, response))  # type: ignore[attr-defined]
        return lines[:-1]


class SortMixin(SortServerMixin):
    """The SORT, THREAD and context tests, on each backend."""

    @defer.inlineCallbacks
    def test_rfc5256_sort_examples(self) -> Any:
        client = yield self.session()
        lines = yield self.answer(client, "A283", "SORT (SUBJECT REVERSE DATE) UTF-8 ALL")
        self.assertEqual(lines, ["* SORT 5 3 4 1 2"])  # type: ignore[attr-defined]
        lines = yield self.answer(client, "A284", 'SORT (SUBJECT) US-ASCII TEXT "not in mailbox"')
        self.assertEqual(lines, ["* SORT"])  # type: ignore[attr-defined]
        # SINCE is about internal dates: all but 4's are in 2024.
        lines = yield self.answer(client, "A282", "SORT (SUBJECT) UTF-8 SINCE 1-Jan-2024")
        self.assertEqual(lines, ["* SORT 3 5 1 2"])  # type: ignore[attr-defined]
        # REVERSE reverses only its own criterion: ties stay in mailbox order.
        lines = yield self.answer(client, "A285", "SORT (REVERSE SUBJECT) UTF-8 ALL")
        self.assertEqual(lines, ["* SORT 1 2 3 4 5"])  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_every_key(self) -> Any:
        client = yield self.session()
        expected = {
            "ARRIVAL": "4 5 3 2 1",  # internal dates
            # Sent dates in UTC; 4 has none: its internal date, 31 Dec 12:00.
            "DATE": "2 4 3 1 5",
            "FROM": "2 3 1 4 5",  # addr-mailbox: alice bob carol emile zoe
            "TO": "1 2 3 4 5",  # all dave: mailbox order
            "CC": "2 4 5 3 1",  # none (empty) first, then amy, zed
            "DISPLAYFROM": "2 3 1 4 5",  # alice@a.example Bob Carol Émile zoe@z.example
            "DISPLAYTO": "1 2 3 4 5",
        }
        for key, numbers in expected.items():
            lines = yield self.answer(client, "t", f"SORT ({key}) UTF-8 ALL")
            self.assertEqual(lines, [f"* SORT {numbers}"], key)  # type: ignore[attr-defined]
            lines = yield self.answer(client, "t", f"SORT (REVERSE {key} ARRIVAL) UTF-8 ALL")
            self.assertTrue(lines[0].startswith("* SORT "), lines)  # type: ignore[attr-defined]
        # SIZE is RFC822.SIZE.
        lines = yield self.answer(client, "f", "FETCH 1:* (RFC822.SIZE)")
        found = (re.match(r"\* (\d+) FETCH \(RFC822.SIZE (\d+)\)", line) for line in lines)
        sizes = {int(m[1]): int(m[2]) for m in found if m}
        by_size = " ".join(str(n) for n in sorted(sizes, key=lambda n: (sizes[n], n)))
        lines = yield self.answer(client, "t", "SORT (SIZE) UTF-8 ALL")
        self.assertEqual(lines, [f"* SORT {by_size}"])  # type: ignore[attr-defined]
        # UID SORT answers UIDs and reads its criteria as SORT does.
        lines = yield self.answer(client, "t", "UID SORT (DATE) UTF-8 2:4")
        self.assertEqual(lines, ["* SORT 2 4 3"])  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_esort(self) -> Any:
        client = yield self.session()
        # RFC 5267 3.3: RETURN () is ALL; ranges only where they ascend.
        yield self.answer(client, "s", "STORE 2 +FLAGS ($Junk)")
        lines = yield self.answer(
            client, "E01", "UID SORT RETURN () (REVERSE DATE) UTF-8 UNDELETED UNKEYWORD $Junk"
        )
        self.assertEqual(lines, ['* ESEARCH (TAG "E01") UID ALL 5,1,3:4'])  # type: ignore[attr-defined]
        # MIN and MAX are the first and last in sort order (as Dovecot).
        lines = yield self.answer(client, "E02", "SORT RETURN (MIN MAX COUNT) (SUBJECT) UTF-8 ALL")
        self.assertEqual(lines, ['* ESEARCH (TAG "E02") MIN 3 MAX 2 COUNT 5'])  # type: ignore[attr-defined]
        lines = yield self.answer(client, "E03", "SORT RETURN (PARTIAL 2:3) (DATE) UTF-8 ALL")
        self.assertEqual(lines, ['* ESEARCH (TAG "E03") PARTIAL (2:3 4,3)'])  # type: ignore[attr-defined]
        lines = yield self.answer(client, "E04", "SORT RETURN (PARTIAL 9:7) (DATE) UTF-8 ALL")
        self.assertEqual(lines, ['* ESEARCH (TAG "E04") PARTIAL (7:9 NIL)'])  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_sort_save_and_dollar(self) -> Any:
        # SEARCHRES (RFC 5182) with SORT: SAVE keeps the set, "$" uses it.
        client = yield self.session()
        lines = yield self.answer(client, "a", "SORT RETURN (SAVE) (DATE) UTF-8 SUBJECT apple")
        self.assertEqual(lines, [])  # type: ignore[attr-defined]
        lines = yield self.answer(client, "b", "UID FETCH $ (UID)")
        self.assertEqual([re.findall(r"UID (\d+)", x)[0] for x in lines], ["3", "4", "5"])  # type: ignore[attr-defined]
        lines = yield self.answer(client, "c", "SORT RETURN (SAVE MIN) (DATE) UTF-8 SUBJECT apple")
        lines = yield self.answer(client, "d", "SORT (DATE) UTF-8 $")
        self.assertEqual(lines, ["* SORT 4"])  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_thread(self) -> Any:
        client = yield self.session()
        lines = yield self.answer(client, "A283", "THREAD ORDEREDSUBJECT UTF-8 ALL")
        # Threads by their first message's sent date: BANANA from 2 (31 Dec
        # 10:00), APPLE from 4 (31 Dec 12:00, its internal date).
        self.assertEqual(lines, ["* THREAD (2 1)(4 (3)(5))"])  # type: ignore[attr-defined]
        lines = yield self.answer(client, "A284", 'THREAD ORDEREDSUBJECT US-ASCII TEXT "gewp"')
        self.assertEqual(lines, ["* THREAD"])  # type: ignore[attr-defined]
        # REFERENCES: 2 follows 1 by References, 3 replies to 5; 4 has no
        # references but its subject makes it a forward, so it joins 5's
        # thread (step 5.C).
        lines = yield self.answer(client, "A285", "THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(lines, ["* THREAD (1 2)(5 (4)(3))"])  # type: ignore[attr-defined]
        lines = yield self.answer(client, "A286", "UID THREAD REFERENCES UTF-8 NOT UID 5")
        # Without 5, 3's parent is a dummy with one child (promoted), and 4
        # and 3 share a subject, both replies: a new dummy holds both, dated
        # by its first child, 4 (31 Dec 12:00), before 1 (1 Jan).
        self.assertEqual(lines, ["* THREAD ((4)(3))(1 2)"])  # type: ignore[attr-defined]
        lines = yield self.answer(client, "A287", "THREAD REFS UTF-8 ALL")
        self.assertEqual(lines, ["* THREAD (4)(1 2)(5 3)"])  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_bad_input(self) -> Any:
        client = yield self.session()
        for text, answer in [
            ("SORT (BOGUS) UTF-8 ALL", b"t BAD unknown sort key BOGUS"),
            ("SORT (REVERSE) UTF-8 ALL", b"t BAD"),
            ("SORT () UTF-8 ALL", b"t BAD"),
            ("SORT (DATE) ALL", b"t BAD"),  # the charset is mandatory
            ("SORT (DATE) UTF-8", b"t BAD"),
            ("THREAD FLAT UTF-8 ALL", b"t BAD unknown threading algorithm FLAT"),
            ("SORT RETURN (PARTIAL 1:5 ALL) (DATE) UTF-8 ALL", b"t BAD"),
            ("SORT RETURN (PARTIAL 0:5) (DATE) UTF-8 ALL", b"t BAD"),
            ("SORT (DATE) KOI8-R ALL", b"t NO [BADCHARSET (US-ASCII UTF-8)]"),
            ("THREAD REFERENCES KOI8-R ALL", b"t NO [BADCHARSET (US-ASCII UTF-8)]"),
            ('CANCELUPDATE "nothing"', b"t BAD No UPDATE context has the tag nothing"),
        ]:
            response = yield client.command("t", text)
            self.assertTrue(response.startswith(answer), (text, response))  # type: ignore[attr-defined]
        yield client.command("u", "UNSELECT")
        response = yield client.command("t", "SORT (DATE) UTF-8 ALL")
        self.assertIn(b"t BAD SORT is not allowed in authenticated state", response)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_search_context_updates_across_sessions(self) -> Any:
        """RFC 5267 4.3: ADDTO after the causing FETCH, REMOVEFROM before
        the EXPUNGE; tag reuse is BAD; CANCELUPDATE stops them."""
        first = yield self.session()
        other = yield self.session()
        third = yield self.session()
        lines = yield self.answer(
            first, "B01", "UID SEARCH RETURN (UPDATE COUNT) DELETED KEYWORD $Junk"
        )
        self.assertEqual(lines, ['* ESEARCH (TAG "B01") UID COUNT 0'])  # type: ignore[attr-defined]
        response = yield first.command("B01", "SORT RETURN (UPDATE) (DATE) UTF-8 FLAGGED")
        self.assertIn(b"B01 BAD Tag reuse", response)  # type: ignore[attr-defined]
        # A plain SEARCH context numbered by sequence, beside it.
        yield self.answer(first, "C01", "SEARCH RETURN (UPDATE) FLAGGED")
        yield self.answer(other, "s1", "STORE 2:3 +FLAGS (\\Deleted $Junk)")
        yield self.answer(third, "s2", "STORE 4 +FLAGS (\\Flagged)")
        lines = yield self.answer(first, "n1", "NOOP")
        esearch = [x for x in lines if x.startswith("* ESEARCH")]
        self.assertEqual(  # type: ignore[attr-defined]
            esearch,
            ['* ESEARCH (TAG "B01") UID ADDTO (0 2:3)', '* ESEARCH (TAG "C01") ADDTO (0 4)'],
        )
        # Each ADDTO follows the FETCH that caused it.
        self.assertLess(  # type: ignore[attr-defined]
            max(lines.index(x) for x in lines if " FETCH " in x), lines.index(esearch[0])
        )
        yield self.answer(other, "x", "EXPUNGE")
        lines = yield self.answer(first, "n2", "NOOP")
        self.assertEqual(  # type: ignore[attr-defined]
            lines,
            ['* ESEARCH (TAG "B01") UID REMOVEFROM (0 2:3)', "* 3 EXPUNGE", "* 2 EXPUNGE"],
        )
        # Message 4 is now 2 here: C01 reports the new number.
        yield self.answer(third, "s3", "UID STORE 4 -FLAGS (\\Flagged)")
        lines = yield self.answer(first, "n3", "NOOP")
        self.assertIn('* ESEARCH (TAG "C01") REMOVEFROM (0 2)', lines)  # type: ignore[attr-defined]
        lines = yield self.answer(first, "B04", 'CANCELUPDATE "B01" "C01"')
        yield self.answer(third, "s4", "STORE 1 +FLAGS (\\Flagged \\Deleted $Junk)")
        lines = yield self.answer(first, "n4", "NOOP")
        self.assertEqual([x for x in lines if "ESEARCH" in x], [])  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_context_keeps_the_messages_its_numbers_named(self) -> Any:
        """RFC 5267 4.3: sequence numbers in an UPDATE program are read when
        the command is received, so an expunge does not move the context."""
        first = yield self.session()
        other = yield self.session()
        yield self.answer(first, "P01", "UID SEARCH RETURN (UPDATE) 4:5 FLAGGED")
        yield self.answer(other, "s", "STORE 1 +FLAGS (\\Deleted)")
        yield self.answer(other, "x", "EXPUNGE")
        yield self.answer(first, "n", "NOOP")  # UIDs 4 and 5 are now 3 and 4
        yield self.answer(other, "s", "UID STORE 4 +FLAGS (\\Flagged)")
        lines = yield self.answer(first, "n", "NOOP")
        self.assertIn('* ESEARCH (TAG "P01") UID ADDTO (0 4)', lines)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_sort_context_positions_and_noupdate(self) -> Any:
        """A SORT context reports where in its order a message comes or goes."""
        first = yield self.session()
        other = yield self.session()
        yield self.answer(first, "D01", "UID SORT RETURN (UPDATE) (SUBJECT DATE) UTF-8 ALL")
        # Order: 4 3 5 (APPLE by date) then 2 1 (BANANA by date).
        data = _message("Re: banana", "Sat, 30 Dec 2023 10:00:00 +0000", "x@y")
        other.send(b"A APPEND INBOX {%d+}\r\n%s\r\n" % (len(data), data))
        yield other.until_tagged("A")
        lines = yield self.answer(first, "n", "NOOP")
        # The new UID 6 (BANANA, the oldest) goes to position 4; after EXISTS.
        self.assertEqual(lines[0], "* 6 EXISTS")  # type: ignore[attr-defined]
        self.assertIn('* ESEARCH (TAG "D01") UID ADDTO (4 6)', lines)  # type: ignore[attr-defined]
        yield self.answer(other, "s", "STORE 5 +FLAGS (\\Deleted)")
        yield self.answer(other, "x", "EXPUNGE")
        lines = yield self.answer(first, "n", "NOOP")
        self.assertEqual(lines[-2:], ['* ESEARCH (TAG "D01") UID REMOVEFROM (3 5)', "* 5 EXPUNGE"])  # type: ignore[attr-defined]
        # Contexts beyond the limit are refused, the command still answered.
        for n in range(MAX_CONTEXTS - 1):
            yield self.answer(first, f"U{n}", "UID SEARCH RETURN (UPDATE) ALL")
        lines = yield self.answer(first, "Z", "UID SEARCH RETURN (UPDATE COUNT) ALL")
        self.assertEqual(  # type: ignore[attr-defined]
            lines, ['* ESEARCH (TAG "Z") UID COUNT 5', '* NO [NOUPDATE "Z"] Too many contexts']
        )

    @defer.inlineCallbacks
    def test_warm_sort_and_thread_open_no_file(self) -> Any:
        """Sort keys come from the cache once warm (content.sort_records)."""
        client = yield self.session()
        commands = [
            "SORT (DATE) UTF-8 ALL",
            "SORT (SUBJECT FROM DISPLAYTO CC) UTF-8 ALL",
            "THREAD REFERENCES UTF-8 ALL",
        ]
        first = []
        for text in commands:
            lines = yield self.answer(client, "w", text)
            first.append(lines)

        def no_file(*args: Any) -> Any:
            raise AssertionError("a message file was opened")

        self.patch(self.mailbox_class, "open", no_file)  # type: ignore[attr-defined]
        for text, lines in zip(commands, first, strict=True):
            again = yield self.answer(client, "w", text)
            self.assertEqual(again, lines, text)  # type: ignore[attr-defined]


class MemorySortTests(SortMixin, TestCase):
    mailbox_class = MemoryMailbox

    def make_storage(self) -> Any:
        return MemoryStorage()


class MaildirSortTests(SortMixin, TestCase):
    mailbox_class = MaildirMailbox

    def make_storage(self) -> Any:
        root = os.path.abspath(self.mktemp())
        storage = MaildirStorage(os.path.join(root, "{user}", "Maildir"))
        self.addCleanup(storage.stop_watching)
        return storage
