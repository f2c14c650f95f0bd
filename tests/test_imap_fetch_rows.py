"""The first-sync FETCH path (:mod:`mailsrv.imap.fetch_rows`) writes the
bytes the general path writes, over the memory and Maildir backends, for a
mailbox of varied flags, keywords, dates and zones, and messages lacking
the fields asked for; and it stays correct while other sessions change the
mailbox."""

from __future__ import annotations

import datetime
import io
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import TestCase

from mailsrv.auth.realm import MailRealm
from mailsrv.imap import fetch_rows
from mailsrv.interfaces import DELETED, FLAGGED, SEEN, IMailbox, IStorage, NewMessage, StoreMode
from mailsrv.policy import SessionPolicy
from mailsrv.storage.memory import MemoryStorage
from tests.imap_helpers import Client, RecordingFactory, shut_down

UTC = datetime.UTC
EAST = datetime.timezone(datetime.timedelta(hours=5, minutes=45))
WEST = datetime.timezone(datetime.timedelta(hours=-3, minutes=-30))

#: (message, flags, internal date)
MESSAGES: list[tuple[bytes, list[str], datetime.datetime]] = [
    (
        b"From: Ann <ann@example.org>\r\nTo: joe@example.org\r\nSubject: one\r\n"
        b"Date: Mon, 1 Jan 2024 10:00:00 +0100\r\n\r\nbody\r\n",
        [SEEN],
        datetime.datetime(2024, 1, 1, 9, 0, 1, tzinfo=UTC),
    ),
    (
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\nReceived: by mx\r\n\r\nno from, no to\r\n",
        [SEEN, FLAGGED, "$Work"],
        datetime.datetime(1999, 12, 31, 23, 59, 59, tzinfo=EAST),
    ),
    (
        b"X-Nothing: here\r\n\r\nno fields at all\r\n",
        [],
        datetime.datetime(2030, 2, 28, 0, 0, 0, tzinfo=WEST),
    ),
    (
        b"from: lower@example.org\r\nSUBJECT: folded\r\n  over two lines\r\nTo: a@b.c,\r\n"
        b" d@e.f\r\n\r\nx\r\n",
        ["$Later", DELETED],
        datetime.datetime(2024, 2, 29, 12, 30, 0, tzinfo=UTC),
    ),
    (
        b"From: x@example.org\r\nSubject: two\r\nDate: bogus\r\n\r\ny\r\n",
        ["\\Answered", "\\Draft", SEEN],
        datetime.datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC),
    ),
    (
        # Raw UTF-8 in a header: its batch is left to the general path.
        "From: Zoë <z@example.org>\r\nSubject: ça va\r\n\r\nz\r\n".encode(),
        [SEEN],
        datetime.datetime(2024, 3, 1, 0, 0, 0, tzinfo=UTC),
    ),
]

COMMANDS = [
    "FETCH 1:* (FLAGS)",
    "UID FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)",
    "FETCH 1:* (UID RFC822.SIZE INTERNALDATE)",
    "FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])",
    "UID FETCH 2:4 (FLAGS BODY.PEEK[HEADER.FIELDS (Subject)] INTERNALDATE MODSEQ)",
    "FETCH 1:* (BODY.PEEK[HEADER.FIELDS.NOT (RECEIVED X-NOTHING)] RFC822.SIZE FLAGS)",
    "FETCH 5,1,3 (INTERNALDATE UID BODY.PEEK[HEADER.FIELDS (TO)] BODY.PEEK[HEADER.FIELDS (FROM)])",
    "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1)",
]


class _Scenarios:
    """Mixed into a TestCase with :meth:`make_storage` and :meth:`inbox`."""

    storage: IStorage
    #: How message 2's INTERNALDATE reads (Maildir keeps dates in UTC).
    second_date: bytes

    def make_storage(self) -> IStorage:
        raise NotImplementedError

    def inbox(self) -> IMailbox:
        raise NotImplementedError

    def setUp(self) -> None:
        self.storage = self.make_storage()
        checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret")
        portal = Portal(MailRealm(self.storage), [checker])
        self.factory = RecordingFactory(portal, SessionPolicy(failure_delay=0.0))
        self.port: Any = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.clients: list[Client] = []
        inbox = self.inbox()
        inbox.append_many([NewMessage(io.BytesIO(m), f, d) for m, f, d in MESSAGES])
        # A STORE after the APPEND: MODSEQs differ between messages.
        inbox.store([2], [SEEN], StoreMode.REMOVE)

    def tearDown(self) -> Any:
        return self._tear_down()

    def _tear_down(self) -> defer.Deferred[None]:
        return shut_down(self.clients, self.factory.lost, self.port)

    @defer.inlineCallbacks
    def session(self, select: str = "SELECT") -> Any:
        creator = protocol.ClientCreator(reactor, Client)
        client = yield creator.connectTCP("127.0.0.1", self.port.getHost().port)
        self.clients.append(client)
        yield client.until(b"\r\n")
        response = yield client.command("L", "LOGIN joe secret")
        assert response.startswith(b"L OK"), response
        response = yield client.command("E", "ENABLE CONDSTORE")
        assert b"E OK" in response, response
        response = yield client.command("S", f"{select} INBOX")
        assert b"S OK" in response, response
        return client

    @defer.inlineCallbacks
    def answers(self, client: Client) -> Any:
        out = []
        for n, command in enumerate(COMMANDS):
            response = yield client.command(f"F{n}", command)
            out.append(response)
        return out

    @defer.inlineCallbacks
    def compare(self, client: Client) -> Any:
        """Each command through the rows path, then through the general
        path; the answers, which must be equal."""
        t: Any = self
        taken: list[bool] = []
        real = fetch_rows.covers

        def counted(request: Any) -> bool:
            taken.append(real(request))
            return taken[-1]

        t.patch(fetch_rows, "covers", counted)
        fast = yield self.answers(client)
        t.assertTrue(taken and all(taken), taken)
        t.patch(fetch_rows, "covers", lambda request: False)
        general = yield self.answers(client)
        t.patch(fetch_rows, "covers", real)
        for command, mine, theirs in zip(COMMANDS, fast, general, strict=True):
            t.assertEqual(mine, theirs, command)
        return fast

    @defer.inlineCallbacks
    def test_same_bytes_as_the_general_path(self) -> Any:
        t: Any = self
        # \Recent goes to the first session that selects: this one.
        fast = yield self.compare((yield self.session()))
        t.assertIn(b"\\Recent", fast[0])
        t.assertIn(b"$Work", fast[0])
        t.assertIn(b'INTERNALDATE "%s"' % self.second_date, fast[1])
        t.assertIn(b"BODY[HEADER.FIELDS (FROM TO SUBJECT DATE)] {", fast[3])
        t.assertIn(b"BODY[HEADER.FIELDS (FROM TO SUBJECT DATE)] {2}\r\n\r\n", fast[3])
        # Another session: the same without \Recent.
        again = yield self.compare((yield self.session()))
        t.assertNotIn(b"\\Recent", again[0])

    @defer.inlineCallbacks
    def test_read_only_and_seen_setting_header_items(self) -> Any:
        """A header item without .PEEK sets \\Seen (general path) unless the
        mailbox was EXAMINEd; the bytes agree either way."""
        t: Any = self
        client = yield self.session("EXAMINE")
        command = "FETCH 1:* (BODY[HEADER.FIELDS (SUBJECT)] FLAGS)"
        fast = yield client.command("a", command)
        t.patch(fetch_rows, "covers", lambda request: False)
        general = yield client.command("a", command)
        t.assertEqual(fast, general)
        t.assertNotIn(SEEN.encode(), fast.split(b"\r\n")[2])

    @defer.inlineCallbacks
    def test_keywords_are_announced_before_they_are_shown(self) -> Any:
        t: Any = self
        client = yield self.session()
        self.inbox().store([1], ["$Brand-New"], StoreMode.ADD)
        response = yield client.command("f", "FETCH 1 (FLAGS)")
        flags_at = response.index(b"* FLAGS (")
        t.assertIn(b"$Brand-New", response[flags_at : response.index(b"\r\n", flags_at)])
        t.assertLess(flags_at, response.index(b"* 1 FETCH (FLAGS"))

    @defer.inlineCallbacks
    def test_messages_expunged_meanwhile_are_left_out(self) -> Any:
        """RFC 2180 4.1: the FETCH answers what still exists and ends OK
        [EXPUNGEISSUED], as the general path does."""
        t: Any = self
        client = yield self.session()
        inbox = self.inbox()
        inbox.remove([1, 4])
        for command in COMMANDS[:4]:
            fast = yield client.command("x", command)
            t.assertIn(b"x OK [EXPUNGEISSUED]", fast)
            t.assertNotIn(b"* 1 FETCH", fast)
            t.assertNotIn(b"* 4 FETCH", fast)
            t.assertIn(b"* 5 FETCH", fast)


class MemoryRowsTests(_Scenarios, TestCase):
    second_date = b"31-Dec-1999 23:59:59 +0545"

    def make_storage(self) -> IStorage:
        return MemoryStorage()

    def inbox(self) -> Any:
        storage: Any = self.storage
        return storage.account("joe").get_mailbox("INBOX")


class MaildirRowsTests(_Scenarios, TestCase):
    second_date = b"31-Dec-1999 18:14:59 +0000"

    def make_storage(self) -> IStorage:
        from mailsrv.storage.maildir import MaildirStorage

        return MaildirStorage(self.mktemp() + "/{user}")

    def inbox(self) -> Any:
        storage: Any = self.storage
        return storage.account("joe").open_mailbox("INBOX")
