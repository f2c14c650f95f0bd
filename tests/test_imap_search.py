"""SEARCH (mailsrv.imap.searching): every RFC 3501 key, ESEARCH and SEARCHRES.

Index keys are compiled and evaluated directly (CompileTests); content keys,
ESEARCH (RFC 4731) and the saved result ``$`` (RFC 5182) are checked on the
wire against a server over the memory and Maildir backends, with messages
whose headers and bodies were built to make each key's edge visible.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailsrv.auth.realm import MailRealm
from mailsrv.imap import searching
from mailsrv.imap.commands import REGISTRY
from mailsrv.imap.commands.search import Search
from mailsrv.imap.protocol import IMAP4ServerFactory
from mailsrv.imap.search_syntax import SearchKey
from mailsrv.imap.selected import SelectedMailbox
from mailsrv.interfaces import MessageInfo
from mailsrv.policy import SessionPolicy
from mailsrv.storage.maildir import MaildirStorage
from mailsrv.storage.memory import MemoryStorage
from tests.imap_helpers import Client

DAY = datetime.datetime(2024, 5, 10, 23, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=-4)))


def _key(text: str) -> SearchKey:
    command = REGISTRY.parse([b"t SEARCH " + text.encode()])[1]
    assert isinstance(command, Search)
    return command.key


class CompileTests(SynchronousTestCase):
    def setUp(self) -> None:
        inbox = MemoryStorage().account("joe").get_mailbox("INBOX")
        self.view = SelectedMailbox(inbox, [3, 5, 8, 9], False, recent=[9])
        self.messages = [
            (1, MessageInfo(3, frozenset({"\\Seen"}), DAY, 100, 1)),
            (2, MessageInfo(5, frozenset({"\\Seen", "$Work"}), DAY, 2000, 2)),
            (3, MessageInfo(8, frozenset(), DAY - datetime.timedelta(days=3), 50, 3)),
            (4, MessageInfo(9, frozenset({"\\Deleted"}), DAY, 10, 4)),
        ]

    def matches(self, text: str) -> list[int]:
        program = searching.compile_key(_key(text), self.view)
        return [
            seq
            for seq, message in self.messages
            if program.predicate(seq, message, searching.SearchContent())
        ]

    def test_index_keys(self) -> None:
        self.assertEqual(self.matches("ALL"), [1, 2, 3, 4])
        self.assertEqual(self.matches("SEEN"), [1, 2])
        self.assertEqual(self.matches("UNSEEN"), [3, 4])
        self.assertEqual(self.matches("KEYWORD $Work"), [2])
        self.assertEqual(self.matches("UNKEYWORD $Work"), [1, 3, 4])
        self.assertEqual(self.matches("RECENT"), [4])
        self.assertEqual(self.matches("NEW"), [4])
        self.assertEqual(self.matches("OLD"), [1, 2, 3])
        self.assertEqual(self.matches("DELETED"), [4])
        self.assertEqual(self.matches("2:3"), [2, 3])
        self.assertEqual(self.matches("*"), [4])
        self.assertEqual(self.matches("1,3:4"), [1, 3, 4])
        self.assertEqual(self.matches("UID 4:8"), [2, 3])
        self.assertEqual(self.matches("UID *"), [4])
        self.assertEqual(self.matches("LARGER 99"), [1, 2])
        self.assertEqual(self.matches("SMALLER 100"), [3, 4])
        # Dates compare in the internal date's own zone, ignoring the time.
        self.assertEqual(self.matches("ON 10-May-2024"), [1, 2, 4])
        self.assertEqual(self.matches("BEFORE 10-May-2024"), [3])
        self.assertEqual(self.matches("SINCE 8-May-2024"), [1, 2, 4])
        self.assertEqual(self.matches("OR SEEN DELETED"), [1, 2, 4])
        self.assertEqual(self.matches("NOT (SEEN LARGER 1000)"), [1, 3, 4])

    def test_content_keys_are_unknown_without_content(self) -> None:
        # Three-valued: a content key is "unknown" until its data is loaded,
        # but an index key can still decide the whole program.
        for text in (
            "SUBJECT x",
            "FROM x",
            "BODY x",
            "TEXT x",
            "HEADER X-A b",
            "SENTON 1-Jan-2024",
        ):
            program = searching.compile_key(_key(text), self.view)
            self.assertIsNone(program.predicate(1, self.messages[0][1], searching.SearchContent()))
        program = searching.compile_key(_key("SEEN FROM joe"), self.view)
        self.assertIs(program.predicate(3, self.messages[2][1], searching.SearchContent()), False)
        program = searching.compile_key(_key("OR SEEN FROM joe"), self.view)
        self.assertIs(program.predicate(1, self.messages[0][1], searching.SearchContent()), True)
        self.assertEqual(program.fields, frozenset())
        self.assertEqual(program.addresses, frozenset({"FROM"}))
        self.assertFalse(program.text)
        program = searching.compile_key(_key("SENTON 1-Jan-2024"), self.view)
        self.assertEqual(program.fields, frozenset({"DATE"}))
        program = searching.compile_key(_key("NOT BODY x"), self.view)
        self.assertTrue(program.text)
        program = searching.compile_key(_key("HEADER List-Id x"), self.view)
        self.assertEqual(program.fields, frozenset({"LIST-ID"}))


def _message(
    subject: bytes = b"Plain",
    sender: bytes = b"Alice <alice@example.org>",
    to: bytes = b"bob@example.net",
    date: bytes | None = b"Mon, 7 Feb 1994 21:52:25 -0800",
    extra: bytes = b"",
    body: bytes = b"Hello world\r\n",
    content_type: bytes = b"text/plain; charset=us-ascii",
    encoding: bytes = b"7bit",
) -> bytes:
    lines = [b"From: " + sender, b"To: " + to, b"Subject: " + subject]
    if date is not None:
        lines.append(b"Date: " + date)
    lines += [
        b"MIME-Version: 1.0",
        b"Content-Type: " + content_type,
        b"Content-Transfer-Encoding: " + encoding,
    ]
    header = b"\r\n".join(lines) + b"\r\n" + extra
    return header + b"\r\n" + body


#: Internal dates on the wire: noon, so the date is the same in UTC (Maildir
#: keeps internal dates as file times, without their zone) and at -04:00.
NOON = DAY.replace(hour=12)

#: The messages every wire test searches, by sequence number (UID = seq).
MESSAGES: list[tuple[bytes, list[str], datetime.datetime]] = [
    # 1: plain ASCII
    (_message(), ["\\Seen"], NOON),
    # 2: encoded-word subject, UTF-8 quoted-printable body
    (
        _message(
            subject=b"=?UTF-8?B?R3LDvMOfZSBhdXMgTcO8bmNoZW4=?=",
            sender=b"=?ISO-8859-1?Q?J=F6rg_M=FCller?= <jm@example.de>",
            body=b"Sch=C3=B6ne Gr=C3=BC=C3=9Fe, the caf=C3=A9 is open\r\n",
            content_type=b"text/plain; charset=utf-8",
            encoding=b"quoted-printable",
        ),
        [],
        NOON - datetime.timedelta(days=40),
    ),
    # 3: multipart with a base64 text part and a binary attachment
    (
        _message(
            subject=b"Report attached",
            to=b"team@example.net",
            date=b"Tue, 1 Mar 2022 10:00:00 +1400",
            extra=b"X-Priority: 1\r\nList-Id: <dev.example.org>\r\n",
            content_type=b'multipart/mixed; boundary="b"',
            body=b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + b"UXVhcnRlcmx5IG51bWJlcnMgaW5zaWRlCg==\r\n"
            + b"--b\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + b"c2VjcmV0d29yZCBpbiBhIGJpbmFyeQ==\r\n--b--\r\n",
        ),
        ["$Work"],
        NOON,
    ),
    # 4: no Date header, an empty Cc, HTML body
    (
        _message(
            subject=b"no date",
            date=None,
            extra=b"Cc:\r\n",
            body=b"<p>Caf&eacute; <b>MIXED</b> case</p>\r\n",
            content_type=b"text/html; charset=us-ascii",
        ),
        ["\\Flagged"],
        NOON - datetime.timedelta(days=1),
    ),
]


class WireMixin:
    """A server over ``make_storage()`` with :data:`MESSAGES` in INBOX."""

    def make_storage(self) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        storage = self.make_storage()
        for data, flags, when in MESSAGES:
            storage.account("joe").get_mailbox("INBOX").append(_bytes_io(data), flags, when)
        checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret")
        portal = Portal(MailRealm(storage), [checker])
        policy = SessionPolicy(failure_delay=0.0)
        self.port: Any = reactor.listenTCP(
            0, IMAP4ServerFactory(portal, policy), interface="127.0.0.1"
        )
        self.client: Any = None

    def tearDown(self) -> Any:
        # A Deferred, which trial waits for (typed Any: unittest's is None).
        return self._tear_down()

    @defer.inlineCallbacks
    def _tear_down(self) -> Any:
        if self.client is not None and self.client.transport is not None:
            self.client.transport.loseConnection()
            yield self.client.lost
        yield self.port.stopListening()

    @defer.inlineCallbacks
    def selected(self) -> Any:
        creator = protocol.ClientCreator(reactor, Client)
        self.client = yield creator.connectTCP("127.0.0.1", self.port.getHost().port)
        yield self.client.until(b"\r\n")
        yield self.client.command("L", "LOGIN joe secret")
        response = yield self.client.command("S", "SELECT INBOX")
        assert b"S OK" in response, response
        return self.client

    @defer.inlineCallbacks
    def hits(self, text: str, uid: bool = False) -> Any:
        """The numbers a SEARCH answers, after checking the response's form."""
        client = yield self.selected() if self.client is None else defer.succeed(self.client)
        command = ("UID SEARCH " if uid else "SEARCH ") + text
        # Latin-1 keeps "\xc3\xb6" in the tests as the two UTF-8 octets.
        response = yield client.command("t", command.encode("latin-1"))
        lines = response.split(b"\r\n")
        check = self.assertEqual  # type: ignore[attr-defined]
        check(lines[-2], b"t OK SEARCH completed", (text, response))
        check(lines[0].split(b" ")[:2], [b"*", b"SEARCH"], response)
        return [int(n) for n in lines[0].split(b" ")[2:]]

    @defer.inlineCallbacks
    def expect(self, text: str, numbers: list[int]) -> Any:
        found = yield self.hits(text)
        self.assertEqual(found, numbers, text)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_header_keys_match_decoded_text(self) -> Any:
        yield self.expect("SUBJECT plain", [1])
        yield self.expect("SUBJECT PLAIN", [1])  # case-insensitive (RFC 3501 6.4.4)
        # RFC 2047 words are matched on their decoded text, in any charset.
        yield self.expect("CHARSET UTF-8 SUBJECT {7+}\r\nGR\xc3\x9c\xc3\x9fE", [2])
        yield self.expect("CHARSET UTF-8 FROM {7+}\r\nj\xc3\xb6rg m", [2])
        yield self.expect("FROM alice@example.org", [1, 3, 4])
        yield self.expect("TO team", [3])
        yield self.expect("CC x", [])
        yield self.expect("BCC x", [])
        yield self.expect('HEADER List-Id "dev.example"', [3])
        yield self.expect("HEADER X-PRIORITY 1", [3])
        yield self.expect("HEADER Message-ID x", [])

    @defer.inlineCallbacks
    def test_empty_header_string_means_has_the_field(self) -> Any:
        # RFC 3501 6.4.4: HEADER with an empty string matches every message
        # that has the field, even an empty one.
        yield self.expect('HEADER Cc ""', [4])
        yield self.expect('HEADER Date ""', [1, 2, 3])
        yield self.expect('HEADER X-Priority ""', [3])
        yield self.expect('NOT HEADER X-Priority ""', [1, 2, 4])

    @defer.inlineCallbacks
    def test_address_keys_match_addresses_not_comments(self) -> Any:
        # FROM, TO, CC and BCC look in "the envelope structure's" field
        # (RFC 3501 6.4.4): the addresses, written as Dovecot writes them,
        # without comments or folding white space (RFC 5322 3.2.2).
        client = yield self.selected()
        data = (
            b"From: <user-from (comment)@ (comment)\r\n domain.org>\r\n"
            b"To: bob@example.net (Bob Example)\r\n"
            b"Cc: group:;, group2: (foo) ;\r\n"
            b"Subject: comments\r\n\r\nHi.\r\n"
        )
        response = yield client.command("a", b"APPEND INBOX {%d+}\r\n" % len(data) + data)
        self.assertIn(b"a OK", response)  # type: ignore[attr-defined]
        yield self.expect("FROM user-from@domain.org", [5])
        yield self.expect("FROM comment", [])
        yield self.expect('HEADER From "(comment)"', [5])  # HEADER: the text as sent
        yield self.expect('TO "\\"Bob Example\\" <bob@example.net>"', [5])
        yield self.expect("CC group2", [5])
        yield self.expect("CC foo", [])
        yield self.expect('FROM "<alice@example.org>"', [1, 3, 4])
        # An encoded word is one atom, so not quoted, then decoded (as Dovecot).
        yield self.expect("CHARSET UTF-8 FROM {18+}\r\nJ\xc3\xb6rg M\xc3\xbcller <jm@", [2])
        yield self.expect('CC ""', [4, 5])

    @defer.inlineCallbacks
    def test_body_and_text(self) -> Any:
        yield self.expect("BODY hello", [1])
        # Transfer- and charset-decoded: quoted-printable UTF-8 and base64.
        yield self.expect("CHARSET UTF-8 BODY {6+}\r\nsch\xc3\xb6n", [2])
        yield self.expect("BODY quarterly", [3])
        # Only text parts are searched, not a base64 attachment.
        yield self.expect("BODY secretword", [])
        yield self.expect("BODY mixed", [4])
        # BODY is the body only; TEXT is header and body.
        yield self.expect("BODY Report", [])
        yield self.expect("TEXT Report", [3])
        yield self.expect("TEXT hello", [1])
        yield self.expect("CHARSET UTF-8 TEXT {4+}\r\nm\xc3\xbcl", [2])
        yield self.expect("NOT TEXT example", [])

    @defer.inlineCallbacks
    def test_sent_dates_and_internal_dates(self) -> Any:
        # SENT* use the Date header's date as written, ignoring its zone.
        yield self.expect("SENTON 7-Feb-1994", [1, 2])
        yield self.expect("SENTON 1-Mar-2022", [3])
        yield self.expect("SENTBEFORE 1-Jan-2000", [1, 2, 4])
        yield self.expect("SENTSINCE 1-Mar-2022", [3])
        yield self.expect("SENTBEFORE 1-Jan-1971", [4])
        # Without a Date header a message counts as sent at the epoch.
        yield self.expect("SENTON 1-Jan-1970", [4])
        yield self.expect("SENTON 9-May-2024", [])
        yield self.expect("ON 10-May-2024", [1, 3])
        yield self.expect("BEFORE 10-May-2024", [2, 4])
        yield self.expect("SINCE 9-May-2024", [1, 3, 4])

    @defer.inlineCallbacks
    def test_combinations_and_flags(self) -> Any:
        yield self.expect("OR SUBJECT plain BODY quarterly", [1, 3])
        yield self.expect("(SEEN) OR FLAGGED KEYWORD $Work", [])
        yield self.expect("NOT SEEN NOT FLAGGED", [2, 3])
        yield self.expect("UNSEEN SUBJECT report", [3])
        yield self.expect("2:* NOT (OR BODY hello BODY quarterly)", [2, 4])
        yield self.expect("LARGER 300 SMALLER 100000 NOT FROM jm", [3])
        yield self.expect("UID 2:3 TEXT example", [2, 3])
        found = yield self.hits("SUBJECT report", uid=True)
        self.assertEqual(found, [3])  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_charsets(self) -> Any:
        client = yield self.selected()
        response = yield client.command("a", "SEARCH CHARSET ISO-8859-1 SUBJECT x")
        self.assertEqual(  # type: ignore[attr-defined]
            response,
            b"a NO [BADCHARSET (US-ASCII UTF-8)] Charset ISO-8859-1 is not supported\r\n",
        )
        yield self.expect("CHARSET US-ASCII SUBJECT plain", [1])

    @defer.inlineCallbacks
    def test_esearch(self) -> Any:
        client = yield self.selected()
        response = yield client.command("a", "SEARCH RETURN (MIN MAX COUNT ALL) NOT SUBJECT no")
        self.assertEqual(  # type: ignore[attr-defined]
            response,
            b'* ESEARCH (TAG "a") MIN 1 MAX 3 COUNT 3 ALL 1:3\r\na OK SEARCH completed\r\n',
        )
        # RETURN () is RETURN (ALL); UID SEARCH reports UIDs, with "UID".
        response = yield client.command("b", "UID SEARCH RETURN () OR SEEN FLAGGED")
        self.assertEqual(  # type: ignore[attr-defined]
            response, b'* ESEARCH (TAG "b") UID ALL 1,4\r\nb OK SEARCH completed\r\n'
        )
        # No match: no MIN/MAX/ALL, but the response and COUNT are there.
        response = yield client.command("c", "SEARCH RETURN (MIN COUNT ALL) SUBJECT nothing")
        self.assertEqual(  # type: ignore[attr-defined]
            response, b'* ESEARCH (TAG "c") COUNT 0\r\nc OK SEARCH completed\r\n'
        )
        response = yield client.command("d", "SEARCH RETURN (FROB) ALL")
        self.assertTrue(response.startswith(b"d BAD"), response)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_saved_result(self) -> Any:
        client = yield self.selected()
        # RFC 5182: SAVE alone answers no ESEARCH; "$" then names the messages.
        response = yield client.command("a", "SEARCH RETURN (SAVE) FROM alice")
        self.assertEqual(response, b"a OK SEARCH completed\r\n")  # type: ignore[attr-defined]
        response = yield client.command("b", "FETCH $ (UID)")
        self.assertEqual(  # type: ignore[attr-defined]
            response,
            b"* 1 FETCH (UID 1)\r\n* 3 FETCH (UID 3)\r\n* 4 FETCH (UID 4)\r\n"
            b"b OK FETCH completed\r\n",
        )
        yield self.expect("$ UNSEEN", [3, 4])
        found = yield self.hits("UID $ NOT SUBJECT report", uid=True)
        self.assertEqual(found, [1, 4])  # type: ignore[attr-defined]
        yield self.expect("OR $ 2", [1, 2, 3, 4])
        # MIN and MAX only: "$" holds just those (RFC 5182 2.4).
        response = yield client.command("c", "UID SEARCH RETURN (SAVE MIN MAX) ALL")
        self.assertEqual(  # type: ignore[attr-defined]
            response, b'* ESEARCH (TAG "c") UID MIN 1 MAX 4\r\nc OK SEARCH completed\r\n'
        )
        response = yield client.command("d", "UID STORE $ +FLAGS.SILENT (\\Answered)")
        self.assertEqual(response, b"d OK STORE completed\r\n")  # type: ignore[attr-defined]
        yield self.expect("ANSWERED", [1, 4])
        # A failed SEARCH with SAVE empties it; a BAD one leaves it.
        response = yield client.command("e", "SEARCH RETURN (SAVE) FROB")
        self.assertTrue(response.startswith(b"e BAD"), response)  # type: ignore[attr-defined]
        yield self.expect("$", [1, 4])
        response = yield client.command("f", "SEARCH RETURN (SAVE) CHARSET KOI8-R ALL")
        self.assertTrue(response.startswith(b"f NO [BADCHARSET"), response)  # type: ignore[attr-defined]
        yield self.expect("$", [])
        response = yield client.command("g", "FETCH $ FLAGS")
        self.assertEqual(response, b"g OK FETCH completed\r\n")  # type: ignore[attr-defined]
        # Expunged messages drop out of "$".
        yield client.command("h", "SEARCH RETURN (SAVE) ALL")
        yield client.command("i", "STORE 1 +FLAGS.SILENT (\\Deleted)")
        response = yield client.command("j", "EXPUNGE")
        self.assertIn(b"* 1 EXPUNGE", response)  # type: ignore[attr-defined]
        yield self.expect("$", [1, 2, 3])
        # SELECT starts with an empty "$".
        yield client.command("k", "SELECT INBOX")
        yield self.expect("$", [])
        response = yield client.command("l", "FETCH 1,$ UID")
        self.assertTrue(response.startswith(b"l BAD"), response)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def search(self, client: Any, text: str) -> Any:
        """The numbers of the ``* SEARCH`` line, among other untagged answers."""
        check = self.assertEqual  # type: ignore[attr-defined]
        response = yield client.command("s", text)
        lines = response.split(b"\r\n")
        check(lines[-2], b"s OK SEARCH completed", response)
        (found,) = [line for line in lines if line.startswith(b"* SEARCH")]
        return [int(n) for n in found.split(b" ")[2:]]

    @defer.inlineCallbacks
    def test_index_keys_in_the_sessions_numbering(self) -> Any:
        """Flag, size, date and set keys answer in this session's numbers:
        a message another session expunged keeps its number, unreported,
        and matches nothing until the EXPUNGE is sent (RFC 3501 7.4.1)."""
        check = self.assertEqual  # type: ignore[attr-defined]
        client = yield self.selected()
        other = yield protocol.ClientCreator(reactor, Client).connectTCP(
            "127.0.0.1", self.port.getHost().port
        )
        self.addCleanup(other.transport.loseConnection)  # type: ignore[attr-defined]
        yield other.until(b"\r\n")
        yield other.command("L", "LOGIN joe secret")
        yield other.command("S", "SELECT INBOX")
        yield other.command("D", "STORE 2 +FLAGS.SILENT (\\Deleted)")
        yield other.command("E", "EXPUNGE")
        yield other.command("A", "APPEND INBOX {6+}\r\nx: y\r\n")
        # Unseen: 2 (expunged, unreported: SEARCH sends no EXPUNGE), 3, 4
        # and the new 5 (its EXISTS came with the first answer).
        check((yield self.search(client, "SEARCH UNSEEN")), [3, 4, 5])
        check((yield self.search(client, "SEARCH 2:* UNSEEN")), [3, 4, 5])
        check((yield self.search(client, "SEARCH 1:2")), [1])
        check((yield self.search(client, "UID SEARCH UNSEEN")), [3, 4, 5])
        check((yield self.search(client, "SEARCH NOT SEEN SMALLER 100")), [5])
        check((yield self.search(client, "SEARCH OR FLAGGED KEYWORD $Work")), [3, 4])
        check((yield self.search(client, "SEARCH SINCE 10-May-2024 NOT 4")), [1, 3, 5])
        response = yield client.command("n", "NOOP")
        self.assertIn(b"* 2 EXPUNGE", response)  # type: ignore[attr-defined]
        check((yield self.search(client, "SEARCH UNSEEN")), [2, 3, 4])
        check((yield self.search(client, "UID SEARCH UNSEEN SMALLER 100")), [5])


def _bytes_io(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


class MemorySearchTests(WireMixin, TestCase):
    def make_storage(self) -> Any:
        return MemoryStorage()


class MaildirSearchTests(WireMixin, TestCase):
    def make_storage(self) -> Any:
        storage = MaildirStorage(os.path.join(os.path.abspath(self.mktemp()), "{user}"))
        self.addCleanup(storage.stop_watching)
        return storage


class PostgresSearchTests(WireMixin, TestCase):
    """The same over PostgreSQL, whose index answers flag, size, date and
    set keys in SQL (mailsrv/storage/postgres/sqlsearch.py)."""

    def make_storage(self) -> Any:
        from tests.pgcluster import new_dsn, new_storage

        return new_storage(self, new_dsn())

    def setUp(self) -> Any:
        # A Deferred, which trial waits for (typed Any: unittest's is None).
        return self._set_up()

    @defer.inlineCallbacks
    def _set_up(self) -> Any:
        storage = self.make_storage()
        account = yield defer.maybeDeferred(storage.account, "joe")
        inbox = yield defer.maybeDeferred(account.get_mailbox, "INBOX")
        for data, flags, when in MESSAGES:
            yield defer.maybeDeferred(inbox.append, _bytes_io(data), flags, when)
        checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret")
        portal = Portal(MailRealm(storage), [checker])
        policy = SessionPolicy(failure_delay=0.0)
        self.port = reactor.listenTCP(0, IMAP4ServerFactory(portal, policy), interface="127.0.0.1")
        self.client = None
