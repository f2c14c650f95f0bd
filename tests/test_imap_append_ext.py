"""MULTIAPPEND (RFC 3502), CATENATE (RFC 4469) and REPLACE (RFC 8508) over
real sockets, on the memory, Maildir and PostgreSQL backends.

The dialogues follow the RFCs' examples; what is asserted is what a client
sees: the bytes of the answers, and the mailbox afterwards (STATUS, FETCH).
"""

from __future__ import annotations

import re
from typing import Any

import attrs
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, protocol, reactor, ssl
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailsrv.auth.realm import MailRealm
from mailsrv.errors import StorageError
from mailsrv.imap.catenate import BadUrl, UrlReference, parse_url
from mailsrv.imap.fetch_syntax import Section
from mailsrv.interfaces import IStorage
from mailsrv.policy import SessionPolicy
from mailsrv.storage.memory import MemoryMailbox, MemoryStorage
from tests.imap_helpers import Client, RecordingFactory, shut_down, tls_options

#: RFC 3502's two example messages (6.3.11), with CRLF line ends.
FIRST = (
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
    b"From: Fred Foobar <foobar@Blurdybloop.example.COM>\r\n"
    b"Subject: afternoon meeting\r\n"
    b"To: mooch@owatagu.example.net\r\n"
    b"Message-Id: <B27397-0100000@Blurdybloop.example.COM>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
    b"\r\n"
    b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n"
)
SECOND = (
    b"Date: Mon, 7 Feb 1994 22:43:04 -0800 (PST)\r\n"
    b"From: Joe Mooch <mooch@OWaTaGu.example.net>\r\n"
    b"Subject: Re: afternoon meeting\r\n"
    b"To: foobar@blurdybloop.example.com\r\n"
    b"Message-Id: <a0434793874930@OWaTaGu.example.net>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
    b"\r\n"
    b"3:30 is fine with me.\r\n"
)
BOUNDARY = b"--------------030308070208000400050907"
#: A draft as in RFC 4469's examples: text/plain, then an attachment.
DRAFT_HEADER = (
    b"From: Bob Ar <bar@example.org>\r\n"
    b"Subject: About our holiday trip\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="' + BOUNDARY[2:] + b'"\r\n'
    b"\r\n"
)
PART1_MIME = b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
PART1 = b"Our travel agent has sent the updated schedule.\r\n"
PART2_MIME = (
    b"Content-Type: application/x-zip-compressed\r\nContent-Transfer-Encoding: base64\r\n\r\n"
)
PART2 = b"UEsDBBQAAAAIAAAAIQBmb28=\r\n"
DRAFT = (
    DRAFT_HEADER
    + b"--"
    + BOUNDARY[2:]
    + b"\r\n"
    + PART1_MIME
    + PART1
    + b"--"
    + BOUNDARY[2:]
    + b"\r\n"
    + PART2_MIME
    + PART2
    + b"--"
    + BOUNDARY[2:]
    + b"--\r\n"
)
LIMIT = 4000


def literal(data: bytes) -> bytes:
    return b"{%d}" % len(data)


class _Base:
    """Mixed into a TestCase with :meth:`make_storage`."""

    def make_storage(self) -> IStorage:
        raise NotImplementedError

    #: Implicit TLS on the listener (and the client).
    tls = False

    def setUp(self) -> None:
        self.storage = self.make_storage()
        checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret", ann=b"pass")
        portal = Portal(MailRealm(self.storage), [checker])
        policy = SessionPolicy(failure_delay=0.0, max_message_size=LIMIT)
        listening: Any
        if self.tls:
            t: Any = self
            options = tls_options(t.mktemp())
            policy = attrs.evolve(policy, tls_context=options)
            self.factory = RecordingFactory(portal, policy, implicit_tls=True)
            listening = TLSMemoryBIOFactory(options, False, self.factory)
        else:
            self.factory = listening = RecordingFactory(portal, policy)
        self.port: Any = reactor.listenTCP(0, listening, interface="127.0.0.1")
        self.clients: list[Client] = []

    def tearDown(self) -> Any:
        return self._tear_down()

    def _tear_down(self) -> defer.Deferred[None]:
        return shut_down(self.clients, self.factory.lost, self.port)

    @defer.inlineCallbacks
    def session(self, select: str | None = None, user: str = "joe") -> Any:
        t: Any = self
        creator = protocol.ClientCreator(reactor, Client)
        port = self.port.getHost().port
        if self.tls:
            client = yield creator.connectSSL("127.0.0.1", port, ssl.CertificateOptions())
        else:
            client = yield creator.connectTCP("127.0.0.1", port)
        self.clients.append(client)
        yield client.until(b"\r\n")
        password = "secret" if user == "joe" else "pass"
        response = yield client.command("L", f"LOGIN {user} {password}")
        t.assertTrue(response.startswith(b"L OK"), response)
        if select is not None:
            response = yield client.command("S", f"SELECT {select}")
            t.assertIn(b"S OK [READ-WRITE]", response)
        return client

    @defer.inlineCallbacks
    def send_literals(self, client: Client, tag: str, first: bytes, rest: list[bytes]) -> Any:
        """Send ``first`` (a line ending in a synchronizing literal), then
        each piece of ``rest`` after the server's ``+``; the tagged answer."""
        t: Any = self
        client.send(tag.encode() + b" " + first + b"\r\n")
        for piece in rest:
            ready = yield client.until(b"+ ")
            t.assertEqual(ready, b"+ Ready for literal data\r\n")
            client.send(piece + b"\r\n")
        response = yield client.until_tagged(tag)
        return response

    @defer.inlineCallbacks
    def status(self, client: Client, mailbox: str) -> Any:
        response = yield client.command("st", f"STATUS {mailbox} (MESSAGES UIDNEXT)")
        match = re.search(rb"\(MESSAGES (\d+) UIDNEXT (\d+)\)", response)
        assert match is not None, response
        return int(match.group(1)), int(match.group(2))

    @defer.inlineCallbacks
    def body(self, client: Client, uid: int, mailbox: str | None = None) -> Any:
        if mailbox is not None:
            yield client.command("e", f"EXAMINE {mailbox}")
        response = yield client.command("f", f"UID FETCH {uid} BODY.PEEK[]")
        match = re.search(rb"BODY\[\] \{(\d+)\}\r\n", response)
        assert match is not None, response
        start = match.end()
        return response[start : start + int(match.group(1))]

    @defer.inlineCallbacks
    def uidvalidity(self, client: Client, mailbox: str) -> Any:
        response = yield client.command("v", f"STATUS {mailbox} (UIDVALIDITY)")
        match = re.search(rb"UIDVALIDITY (\d+)", response)
        assert match is not None, response
        return int(match.group(1))


class _MultiAppend(_Base):
    @defer.inlineCallbacks
    def test_rfc3502_example(self) -> Any:
        t: Any = self
        client = yield self.session()
        yield client.command("c", "CREATE saved-messages")
        response = yield self.send_literals(
            client,
            "A003",
            b"APPEND saved-messages (\\Seen) " + literal(FIRST),
            [FIRST + b' (\\Seen) " 7-Feb-1994 22:43:04 -0800" ' + literal(SECOND), SECOND],
        )
        validity = yield self.uidvalidity(client, "saved-messages")
        t.assertEqual(response, b"A003 OK [APPENDUID %d 1:2] APPEND completed\r\n" % validity)
        response = yield client.command("A004", "APPEND bogusname (\\Flagged) {5+}\r\nhello")
        t.assertEqual(response, b"A004 NO [TRYCREATE] Mailbox bogusname does not exist\r\n")
        yield client.command("s", "SELECT saved-messages")
        response = yield client.command("f", "FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE)")
        t.assertIn(b"* 1 FETCH (FLAGS (\\Recent \\Seen) INTERNALDATE ", response)
        # The same instant, in the zone sent or in UTC (backends differ).
        t.assertRegex(
            response,
            rb"\* 2 FETCH \(FLAGS \(\\Recent \\Seen\) INTERNALDATE "
            rb'"(07-Feb-1994 22:43:04 -0800|08-Feb-1994 06:43:04 \+0000)" RFC822.SIZE 295\)',
        )
        first = yield self.body(client, 1)
        second = yield self.body(client, 2)
        t.assertEqual((first, second), (FIRST, SECOND))

    @defer.inlineCallbacks
    def test_third_literal_too_big_appends_nothing(self) -> Any:
        """The issue's case: the third literal is over the limit; the answer
        is NO [TOOBIG] in place of its continuation, and neither of the
        first two messages is stored, nor a UID used."""
        t: Any = self
        client = yield self.session()
        before = yield self.status(client, "INBOX")
        client.send(b"a APPEND INBOX " + literal(FIRST) + b"\r\n")
        yield client.until(b"+ ")
        client.send(FIRST + b" " + literal(SECOND) + b"\r\n")
        yield client.until(b"+ ")
        client.send(SECOND + b" (\\Flagged) {%d}\r\n" % (LIMIT + 1))
        response = yield client.until_tagged("a")
        t.assertEqual(response, b"a NO [TOOBIG] Message too large (at most %d octets)\r\n" % LIMIT)
        after = yield self.status(client, "INBOX")
        t.assertEqual(after, before)
        response = yield client.command("b", b"APPEND INBOX {5+}\r\nhello")
        t.assertRegex(response, rb"^b OK \[APPENDUID \d+ %d\] APPEND completed\r\n$" % before[1])

    @defer.inlineCallbacks
    def test_third_literal_plus_too_big_is_dropped(self) -> Any:
        """With LITERAL+ the octets come anyway: BAD, they are read and
        dropped, and the next command is understood."""
        t: Any = self
        client = yield self.session()
        big = b"x" * (LIMIT + 1)
        client.send(b"a APPEND INBOX {5+}\r\nhello {5+}\r\nworld {%d+}\r\n%s\r\n" % (len(big), big))
        response = yield client.until_tagged("a")
        t.assertEqual(response, b"a BAD [TOOBIG] Message too large (at most %d octets)\r\n" % LIMIT)
        after = yield self.status(client, "INBOX")
        t.assertEqual(after, (0, 1))

    @defer.inlineCallbacks
    def test_empty_literal_cancels_all(self) -> Any:
        t: Any = self
        client = yield self.session()
        response = yield client.command("a", b"APPEND INBOX {5+}\r\nhello {5+}\r\nworld {0+}\r\n")
        t.assertEqual(
            response, b"a NO [CANNOT] Empty messages are not accepted; APPEND cancelled\r\n"
        )
        after = yield self.status(client, "INBOX")
        t.assertEqual(after, (0, 1))

    @defer.inlineCallbacks
    def test_selected_session_hears_all(self) -> Any:
        t: Any = self
        client = yield self.session("INBOX")
        response = yield client.command("a", b"APPEND INBOX {1+}\r\na {1+}\r\nb () {1+}\r\nc")
        t.assertRegex(
            response,
            rb"^\* 3 EXISTS\r\n\* 3 RECENT\r\na OK \[APPENDUID \d+ 1:3\] APPEND completed\r\n$",
        )

    @defer.inlineCallbacks
    def test_capabilities(self) -> Any:
        t: Any = self
        client = yield self.session()
        response = yield client.command("c", "CAPABILITY")
        caps = response.split(b"\r\n")[0].split()
        for name in (b"MULTIAPPEND", b"CATENATE", b"REPLACE", b"LITERAL+", b"UIDPLUS"):
            t.assertIn(name, caps)
        t.assertNotIn(b"LITERAL-", caps)


class _Catenate(_Base):
    @defer.inlineCallbacks
    def draft(self, client: Client) -> Any:
        """Drafts with the draft as UID 1; its UIDVALIDITY."""
        response = yield client.command("d", b"APPEND Drafts {%d+}\r\n%s" % (len(DRAFT), DRAFT))
        assert b"d OK [APPENDUID" in response, response
        validity = yield self.uidvalidity(client, "Drafts")
        return validity

    @defer.inlineCallbacks
    def test_rfc4469_example_1(self) -> Any:
        """Replace the attachment: header, boundary, part 1 from the old
        draft by URL, new text; the answer carries APPENDUID."""
        t: Any = self
        client = yield self.session()
        v = yield self.draft(client)
        url = b"/Drafts;UIDVALIDITY=%d/;UID=1" % v
        text1 = b"\r\n--" + BOUNDARY[2:] + b"\r\n"
        text2 = b"\r\n--" + BOUNDARY[2:] + b"\r\nContent-Type: text/plain\r\n\r\nStripped.\r\n"
        text2 += b"--" + BOUNDARY[2:] + b"--\r\n"
        response = yield self.send_literals(
            client,
            "A003",
            b'APPEND Drafts (\\Seen \\Draft $MDNSent) CATENATE (URL "'
            + url
            + b'/;section=HEADER" TEXT '
            + literal(text1),
            [
                text1
                + b' URL "'
                + url
                + b'/;section=1.MIME" URL "'
                + url
                + b'/;section=1" TEXT '
                + literal(text2),
                text2 + b")",
            ],
        )
        t.assertEqual(response, b"A003 OK [APPENDUID %d 2] APPEND completed\r\n" % v)
        made = yield self.body(client, 2, "Drafts")
        t.assertEqual(made, DRAFT_HEADER + text1 + PART1_MIME + PART1[:-2] + text2)

    @defer.inlineCallbacks
    def test_partial_and_whole_message(self) -> Any:
        t: Any = self
        client = yield self.session()
        yield self.draft(client)
        response = yield client.command(
            "a",
            b'APPEND INBOX CATENATE (URL "/Drafts/;UID=1/;PARTIAL=6.3" TEXT {2+}\r\n'
            b'\r\n URL "/Drafts/;UID=1/;SECTION=HEADER.FIELDS%20(SUBJECT)" '
            b'URL "/Drafts/;UID=1")',
        )
        t.assertRegex(response, rb"^a OK \[APPENDUID \d+ 1\] APPEND completed\r\n$")
        made = yield self.body(client, 1, "INBOX")
        subject = b"Subject: About our holiday trip\r\n\r\n"
        t.assertEqual(made, b"Bob\r\n" + subject + DRAFT)

    @defer.inlineCallbacks
    def test_bad_urls_append_nothing(self) -> Any:
        t: Any = self
        other = yield self.session(user="ann")
        response = yield other.command("a", b"APPEND INBOX {5+}\r\nhello")
        t.assertIn(b"a OK", response)
        client = yield self.session()
        v = yield self.draft(client)
        for url, why in (
            (b"imap://ann@localhost/INBOX/;UID=1", b"the URL names another user's mailbox"),
            (b"/Drafts;UIDVALIDITY=%d/;UID=1" % (v + 1), b"the UIDVALIDITY has changed"),
            (b"/Drafts/;UID=7", b"no such message"),
            (b"/Drafts/;UID=1/;SECTION=4.MIME", b"no such body part"),
            (b"/Nowhere/;UID=1", b"no such mailbox"),
            (b"http://example.org/", b"not a URL of a message on this server"),
        ):
            # MULTIAPPEND: a good first message, then the bad URL.
            response = yield client.command(
                "b", b'APPEND INBOX {5+}\r\nfirst CATENATE (TEXT {2+}\r\nX: URL "%s")' % url
            )
            t.assertEqual(response, b"b NO [BADURL %s] Cannot use this URL: %s\r\n" % (url, why))
        after = yield self.status(client, "INBOX")
        t.assertEqual(after, (0, 1))

    @defer.inlineCallbacks
    def test_too_big(self) -> Any:
        t: Any = self
        client = yield self.session()
        yield self.draft(client)
        parts = b" ".join([b'URL "/Drafts/;UID=1"'] * (LIMIT // len(DRAFT) + 1))
        response = yield client.command("a", b"APPEND INBOX CATENATE (" + parts + b")")
        t.assertEqual(
            response,
            b"a NO [TOOBIG] The message would be too large (at most %d octets)\r\n" % LIMIT,
        )
        after = yield self.status(client, "INBOX")
        t.assertEqual(after, (0, 1))


class _Replace(_Base):
    @defer.inlineCallbacks
    def test_rfc8508_examples(self) -> Any:
        t: Any = self
        client = yield self.session()
        for n in range(4):
            yield client.command("a", b"APPEND Drafts {6+}\r\ndraft%d" % n)
        yield client.command("s", "SELECT Drafts")
        v = yield self.uidvalidity(client, "Drafts")
        response = yield self.send_literals(
            client, "A003", b"REPLACE 4 Drafts (\\Seen \\Draft) " + literal(FIRST), [FIRST]
        )
        t.assertEqual(
            response,
            b"* OK [APPENDUID %d 5] Replacement message ready\r\n"
            b"* 4 EXPUNGE\r\n* 4 EXISTS\r\n* 4 RECENT\r\n"
            b"A003 OK REPLACE completed\r\n" % v,
        )
        # UID REPLACE with CATENATE, the new message built from the one it
        # replaces (RFC 8508 4.2's example).
        response = yield client.command(
            "A011",
            b'UID REPLACE 5 Drafts CATENATE (TEXT {10+}\r\nX-New: 1\r\n URL "/Drafts/;UID=5")',
        )
        t.assertEqual(
            response,
            b"* OK [APPENDUID %d 6] Replacement message ready\r\n"
            b"* 4 EXPUNGE\r\n* 4 EXISTS\r\n* 4 RECENT\r\n"
            b"A011 OK REPLACE completed\r\n" % v,
        )
        made = yield self.body(client, 6)
        t.assertEqual(made, b"X-New: 1\r\n" + FIRST)
        response = yield client.command("f", "FETCH 1:* (UID FLAGS)")
        t.assertIn(b"* 4 FETCH (UID 6 FLAGS (\\Recent))", response)
        t.assertNotIn(b"* 5 FETCH", response)

    @defer.inlineCallbacks
    def test_replace_under_qresync(self) -> Any:
        """RFC 8508 4.5: the replaced message goes as with UID EXPUNGE:
        VANISHED, and the tagged OK carries the new HIGHESTMODSEQ."""
        t: Any = self
        client = yield self.session()
        yield client.command("a", b"APPEND INBOX {3+}\r\none")
        yield client.command("e", "ENABLE QRESYNC")
        yield client.command("s", "SELECT INBOX")
        response = yield client.command("r", b"UID REPLACE 1 INBOX {3+}\r\ntwo")
        t.assertRegex(
            response,
            rb"^\* OK \[APPENDUID \d+ 2\] Replacement message ready\r\n"
            rb"\* VANISHED 1\r\n\* 1 EXISTS\r\n(\* 1 RECENT\r\n)?"
            rb"r OK \[HIGHESTMODSEQ \d+\] REPLACE completed\r\n$",
        )

    @defer.inlineCallbacks
    def test_replace_into_other_mailbox_keeps_deleted(self) -> Any:
        """Only the message replaced is expunged; other \\Deleted ones stay."""
        t: Any = self
        client = yield self.session()
        yield client.command("a", b"APPEND INBOX (\\Deleted) {3+}\r\none")
        yield client.command("a", b"APPEND INBOX {3+}\r\ntwo")
        yield client.command("s", "SELECT INBOX")
        response = yield client.command("r", b"UID REPLACE 2 Sent {5+}\r\nsent!")
        t.assertRegex(
            response,
            rb"^\* OK \[APPENDUID \d+ 1\] Replacement message ready\r\n"
            rb"\* 2 EXPUNGE\r\nr OK REPLACE completed\r\n$",
        )
        inbox = yield self.status(client, "INBOX")
        sent = yield self.status(client, "Sent")
        t.assertEqual((inbox, sent), ((1, 3), (1, 2)))

    @defer.inlineCallbacks
    def test_failures_change_nothing(self) -> Any:
        t: Any = self
        client = yield self.session()
        yield client.command("a", b"APPEND INBOX {3+}\r\none")
        yield client.command("s", "SELECT INBOX")
        response = yield client.command("r", b"UID REPLACE 9 INBOX {3+}\r\nnew")
        t.assertEqual(response, b"r NO No such message to replace\r\n")
        response = yield client.command("r", b"REPLACE 1 Nowhere {3+}\r\nnew")
        t.assertEqual(response, b"r NO [TRYCREATE] Mailbox Nowhere does not exist\r\n")
        response = yield client.command("r", b"REPLACE 2 INBOX {3+}\r\nnew")
        t.assertEqual(response, b"r BAD Invalid message sequence number (the mailbox has 1)\r\n")
        response = yield client.command("r", b'REPLACE 1 INBOX CATENATE (URL "/INBOX/;UID=5")')
        t.assertEqual(
            response, b"r NO [BADURL /INBOX/;UID=5] Cannot use this URL: no such message\r\n"
        )
        inbox = yield self.status(client, "INBOX")
        t.assertEqual(inbox, (1, 2))
        yield client.command("u", "UNSELECT")
        response = yield client.command("r", b"REPLACE 1 INBOX {3+}\r\nnew")
        t.assertEqual(response, b"r BAD REPLACE is not allowed in authenticated state\r\n")


class MemoryTests(_MultiAppend, _Catenate, _Replace, TestCase):
    def make_storage(self) -> IStorage:
        return MemoryStorage()

    @defer.inlineCallbacks
    def test_replace_takes_back_when_removal_fails(self) -> Any:
        """The old message cannot be removed: the new one is taken back, the
        answer is NO, and no EXPUNGE or APPENDUID was sent."""
        t: Any = self
        client = yield self.session()
        yield client.command("a", b"APPEND INBOX {3+}\r\none")
        yield client.command("s", "SELECT INBOX")

        def broken(mailbox: MemoryMailbox, uids: Any) -> Any:
            raise StorageError("the disk is on fire")

        real = MemoryMailbox.remove
        calls: list[int] = []

        def remove(mailbox: MemoryMailbox, uids: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                return broken(mailbox, uids)
            return real(mailbox, uids)

        self.patch(MemoryMailbox, "remove", remove)
        response = yield client.command("r", b"REPLACE 1 Sent {3+}\r\nnew")
        t.assertEqual(response, b"r NO the disk is on fire\r\n")
        inbox = yield self.status(client, "INBOX")
        sent = yield self.status(client, "Sent")
        t.assertEqual((inbox[0], sent[0]), (1, 0))


class MemoryTlsTests(_MultiAppend, _Catenate, _Replace, TestCase):
    """The same dialogues over implicit TLS."""

    tls = True

    def make_storage(self) -> IStorage:
        return MemoryStorage()


class MaildirTests(_MultiAppend, _Catenate, _Replace, TestCase):
    def make_storage(self) -> IStorage:
        from mailsrv.storage.maildir import MaildirStorage

        return MaildirStorage(self.mktemp() + "/{user}")


class PostgresTests(_MultiAppend, _Catenate, _Replace, TestCase):
    def make_storage(self) -> IStorage:
        from tests.pgcluster import new_dsn, new_storage

        storage: IStorage = new_storage(self, new_dsn())
        return storage


class UrlTests(SynchronousTestCase):
    """RFC 5092 URLs as CATENATE takes them (RFC 4469 3)."""

    def test_forms(self) -> None:
        self.assertEqual(
            parse_url("/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1.MIME", "joe"),
            UrlReference("Drafts", 20, 385759045, Section((1,), "MIME")),
        )
        self.assertEqual(
            parse_url("/inbox/;uid=3/;PARTIAL=5", "joe"),
            UrlReference("INBOX", 3, None, None, (5, None)),
        )
        self.assertEqual(
            parse_url("/Caf%C3%A9/Menu/;UID=1/;SECTION=HEADER.FIELDS%20(TO%20FROM)", "joe"),
            UrlReference("Café/Menu", 1, None, Section((), "HEADER.FIELDS", ("TO", "FROM"))),
        )
        self.assertEqual(
            parse_url("imap://joe@mail.example.org/Sent/;UID=2/;PARTIAL=0.10", "joe"),
            UrlReference("Sent", 2, None, None, (0, 10)),
        )

    def test_refused(self) -> None:
        for url in (
            "imap://ann@mail.example.org/INBOX/;UID=1",
            "imap://mail.example.org/INBOX/;UID=1",
            "/INBOX",
            "/INBOX/;UID=0",
            "/INBOX/;UID=1/;SECTION=FOO",
            "/INBOX/;UID=1/;SECTION=1.2.MIME.X",
            "/%FF/;UID=1",
            ";UID=1",
            "/INBOX/;UID=1/;PARTIAL=x",
        ):
            self.assertRaises(BadUrl, parse_url, url, "joe")
