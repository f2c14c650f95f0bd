"""IMAP4rev2 (RFC 9051) beside IMAP4rev1, UNAUTHENTICATE (RFC 8437) and
ID (RFC 2971), over real sockets on the memory, Maildir and PostgreSQL
backends.

The dialogues follow the RFCs' examples where they have one; every session
that does not ENABLE IMAP4rev2 must keep seeing IMAP4rev1, which the
existing suites pin byte for byte.
"""

from __future__ import annotations

import io
import re
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from mailsrv.interfaces import IStorage
from mailsrv.policy import ConnectionLimits, SessionPolicy
from tests.imap_helpers import RecordingFactory, ServerTestBase
from tests.test_imap_backends import MESSAGE, InMemory, InPostgres, _BackendBase

FLAGS = (
    b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
    b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags\r\n"
)


class _Rev2Scenarios(_BackendBase):
    @defer.inlineCallbacks
    def rev2(self, select: str | None = "INBOX") -> Any:
        """A session that sent ENABLE IMAP4rev2 (and SELECTed ``select``)."""
        client = yield self.session(None)
        response = yield client.command("E", "ENABLE IMAP4rev2")
        assert response == b"* ENABLED IMAP4rev2\r\nE OK ENABLE completed\r\n", response
        if select is not None:
            response = yield client.command("S", f"SELECT {select}")
            assert b"S OK [READ-WRITE]" in response, response
        return client

    @defer.inlineCallbacks
    def seeded(self, count: int) -> Any:
        first = yield self.session(None)  # creates the account
        yield first.command("Z", "LOGOUT")
        for n in range(1, count + 1):
            yield self.deliver(n)

    @defer.inlineCallbacks
    def test_select_says_list_not_recent(self) -> Any:
        """RFC 9051 6.3.2: EXISTS and a LIST line, no RECENT, no UNSEEN
        (appendix E items 10-12); and \\Recent is left to IMAP4rev1
        sessions, which still see it."""
        t: Any = self
        yield self.seeded(2)
        client = yield self.rev2(None)
        response = yield client.command("s", "SELECT INBOX")
        t.assertRegex(
            response,
            b"^" + re.escape(FLAGS) + rb"\* 2 EXISTS\r\n"
            rb'\* LIST \(\) "/" INBOX\r\n'
            rb"\* OK \[UIDVALIDITY \d+\] UIDs valid\r\n"
            rb"\* OK \[UIDNEXT 3\] Predicted next UID\r\n"
            rb"\* OK \[MAILBOXID \([\w-]+\)\] Ok\r\n"
            rb"s OK \[READ-WRITE\] SELECT completed\r\n$",
        )
        response = yield client.command("f", "FETCH 1:2 (FLAGS)")
        t.assertEqual(
            response,
            b"* 1 FETCH (FLAGS ())\r\n* 2 FETCH (FLAGS ())\r\nf OK FETCH completed\r\n",
        )
        rev1 = yield self.session(None)
        response = yield rev1.command("s", "SELECT INBOX")
        t.assertIn(b"* 2 RECENT\r\n", response)

    @defer.inlineCallbacks
    def test_search_answers_esearch(self) -> Any:
        """RFC 9051 6.4.4's examples: SEARCH is answered with ESEARCH (a
        search that finds nothing: the bare correlator), and RETURN works
        as before (appendix E item 4)."""
        t: Any = self
        yield self.seeded(3)
        client = yield self.rev2()
        yield client.command("f", "STORE 2:3 +FLAGS.SILENT (\\Flagged)")
        response = yield client.command("A282", "SEARCH RETURN (MIN COUNT) FLAGGED")
        t.assertEqual(
            response, b'* ESEARCH (TAG "A282") MIN 2 COUNT 2\r\nA282 OK SEARCH completed\r\n'
        )
        response = yield client.command("A283", 'SEARCH TEXT "string not in mailbox"')
        t.assertEqual(response, b'* ESEARCH (TAG "A283")\r\nA283 OK SEARCH completed\r\n')
        response = yield client.command("A284", "SEARCH FLAGGED")
        t.assertEqual(response, b'* ESEARCH (TAG "A284") ALL 2:3\r\nA284 OK SEARCH completed\r\n')
        response = yield client.command("A285", "UID SEARCH UNFLAGGED")
        t.assertEqual(response, b'* ESEARCH (TAG "A285") UID ALL 1\r\nA285 OK SEARCH completed\r\n')
        # An IMAP4rev1 session keeps its SEARCH response.
        rev1 = yield self.session()
        response = yield rev1.command("x", "SEARCH FLAGGED")
        t.assertEqual(response, b"* SEARCH 2 3\r\nx OK SEARCH completed\r\n")

    @defer.inlineCallbacks
    def test_updates_carry_uid_and_no_recent(self) -> Any:
        """Unsolicited FETCH responses include the UID (RFC 9051 7.5.2,
        appendix E item 21); new mail is EXISTS alone (item 12)."""
        t: Any = self
        yield self.seeded(2)
        client = yield self.rev2()
        other = yield self.session()
        yield other.command("o", "STORE 2 +FLAGS.SILENT (\\Seen)")
        yield self.deliver(3)
        response = yield client.command("n", "NOOP")
        t.assertEqual(
            response,
            b"* 3 EXISTS\r\n* 2 FETCH (UID 2 FLAGS (\\Seen))\r\nn OK NOOP completed\r\n",
        )

    @defer.inlineCallbacks
    def test_status_items(self) -> Any:
        """STATUS SIZE and DELETED (appendix E item 3); RECENT is no longer
        a status item (item 12), in STATUS and LIST-STATUS alike."""
        t: Any = self
        yield self.seeded(2)
        client = yield self.rev2()
        yield client.command("d", "STORE 1 +FLAGS.SILENT (\\Deleted)")
        size = 2 * len(MESSAGE % (1, 1))
        response = yield client.command("a", "STATUS INBOX (MESSAGES SIZE DELETED)")
        t.assertEqual(
            response,
            b"* STATUS INBOX (MESSAGES 2 SIZE %d DELETED 1)\r\na OK STATUS completed\r\n" % size,
        )
        response = yield client.command("b", "STATUS INBOX (RECENT)")
        t.assertEqual(
            response,
            b"b BAD RECENT is not a STATUS item in IMAP4rev2 (RFC 9051 has no \\Recent)\r\n",
        )
        response = yield client.command("c", 'LIST "" INBOX RETURN (STATUS (RECENT))')
        t.assertTrue(response.startswith(b"c BAD RECENT is not"), response)

    @defer.inlineCallbacks
    def test_list_subscribed_replaces_lsub(self) -> Any:
        """RFC 9051 6.3.9's example: a subscribed mailbox that is gone is
        \\NonExistent under LIST (SUBSCRIBED) (appendix E item 19); LSUB
        still answers for a client that asks."""
        t: Any = self
        client = yield self.rev2(None)
        for command in ("CREATE Fruit/Banana", "SUBSCRIBE Fruit/Banana", "CREATE Fruit/Peach"):
            response = yield client.command("c", command)
            t.assertTrue(response.startswith(b"c OK"), response)
        yield client.command("s", "SUBSCRIBE Fruit/Peach")
        yield client.command("d", "DELETE Fruit/Peach")
        response = yield client.command("l", 'LIST (SUBSCRIBED) "" "Fruit/*"')
        t.assertEqual(
            response,
            b'* LIST (\\HasNoChildren \\Subscribed) "/" Fruit/Banana\r\n'
            b'* LIST (\\NonExistent \\Subscribed) "/" Fruit/Peach\r\n'
            b"l OK LIST completed\r\n",
        )
        response = yield client.command("m", 'LSUB "" "Fruit/*"')
        t.assertEqual(
            response,
            b'* LSUB () "/" Fruit/Banana\r\n* LSUB () "/" Fruit/Peach\r\nm OK LSUB completed\r\n',
        )

    @defer.inlineCallbacks
    def test_delete_of_a_parent_says_haschildren(self) -> Any:
        """RFC 9051 7.1: HASCHILDREN for a \\Noselect name with children;
        an IMAP4rev1 session keeps RFC 5530's INUSE."""
        t: Any = self
        client = yield self.rev2(None)
        yield client.command("c", "CREATE Parent/Child")
        response = yield client.command("d", "DELETE Parent")
        t.assertEqual(response, b"d OK DELETE completed\r\n")  # now \Noselect
        response = yield client.command("e", "DELETE Parent")
        t.assertTrue(response.startswith(b"e NO [HASCHILDREN] "), response)
        rev1 = yield self.session(None)
        response = yield rev1.command("e", "DELETE Parent")
        t.assertTrue(response.startswith(b"e NO [INUSE] "), response)

    @defer.inlineCallbacks
    def test_utf8_names_in_rev2(self) -> Any:
        """IMAP4rev2 names are UTF-8 (RFC 9051 5.1, appendix E item 16):
        the same mailbox an IMAP4rev1 client names in modified UTF-7."""
        t: Any = self
        client = yield self.rev2(None)
        response = yield client.command("c", 'CREATE "Entwürfe/Schön"'.encode())
        t.assertRegex(response, rb"^c OK \[MAILBOXID \([\w-]+\)\] CREATE completed\r\n$")
        response = yield client.command("l", 'LIST "" "Entw*"')
        t.assertEqual(
            response,
            '* LIST (\\HasChildren) "/" "Entwürfe"\r\n'
            '* LIST (\\HasNoChildren) "/" "Entwürfe/Schön"\r\n'
            "l OK LIST completed\r\n".encode(),
        )
        rev1 = yield self.session(None)
        response = yield rev1.command("s", "STATUS Entw&APw-rfe/Sch&APY-n (MESSAGES)")
        t.assertEqual(
            response, b"* STATUS Entw&APw-rfe/Sch&APY-n (MESSAGES 0)\r\ns OK STATUS completed\r\n"
        )
        # "&" is itself in UTF-8: this is another name, not modified UTF-7.
        response = yield client.command("t", "STATUS Entw&APw-rfe/Sch&APY-n (MESSAGES)")
        t.assertTrue(response.startswith(b"t NO [NONEXISTENT]"), response)

    @defer.inlineCallbacks
    def test_trycreate_and_the_rev2_keywords(self) -> Any:
        """COPY and MOVE create no mailbox and say TRYCREATE (appendix E
        item 8); the keywords RFC 9051 2.3.2 names are stored (item 15)."""
        t: Any = self
        yield self.seeded(1)
        client = yield self.rev2()
        for tag, command in (("c", "COPY"), ("m", "MOVE")):
            response = yield client.command(tag, f"{command} 1 Nowhere")
            t.assertEqual(
                response, b"%s NO [TRYCREATE] Mailbox Nowhere does not exist\r\n" % tag.encode()
            )
        keywords = "$Forwarded $Junk $MDNSent $NotJunk $Phishing"
        response = yield client.command("s", f"STORE 1 +FLAGS.SILENT ({keywords})")
        t.assertTrue(response.endswith(b"s OK STORE completed\r\n"), response)
        other = yield self.rev2()
        response = yield other.command("f", "FETCH 1 FLAGS")
        t.assertIn(b"* 1 FETCH (FLAGS (%s))\r\n" % keywords.encode(), response)

    @defer.inlineCallbacks
    def test_63_bit_numbers(self) -> Any:
        """Sizes and offsets are number64 (RFC 9051 9, appendix E item 1):
        beyond 32 bits they are answered, beyond 63 bits BAD."""
        t: Any = self
        yield self.seeded(1)
        client = yield self.rev2()
        response = yield client.command("f", "FETCH 1 BODY.PEEK[]<5000000000.9223372036854775807>")
        t.assertEqual(
            response, b"* 1 FETCH (BODY[]<5000000000> {0}\r\n)\r\nf OK FETCH completed\r\n"
        )
        response = yield client.command("a", "SEARCH LARGER 5000000000")
        t.assertEqual(response, b'* ESEARCH (TAG "a")\r\na OK SEARCH completed\r\n')
        response = yield client.command("b", "SEARCH SMALLER 5000000000")
        t.assertEqual(response, b'* ESEARCH (TAG "b") ALL 1\r\nb OK SEARCH completed\r\n')
        response = yield client.command("c", "SEARCH SMALLER 9223372036854775808")
        t.assertEqual(response, b"c BAD a size is larger than 9223372036854775807\r\n")

    @defer.inlineCallbacks
    def test_unauthenticate(self) -> Any:
        """RFC 8437 3: back to not authenticated, the mailbox left without
        expunging, everything ENABLEd gone (4.1), and a pipelined
        AUTHENTICATE with an initial response logs in again."""
        t: Any = self
        yield self.seeded(1)
        client = yield self.rev2()
        yield client.command("d", "STORE 1 +FLAGS.SILENT (\\Deleted)")
        client.send(b"u UNAUTHENTICATE\r\na AUTHENTICATE PLAIN AGpvZQBzZWNyZXQ=\r\n")
        response = yield client.until_tagged("a")
        t.assertRegex(
            response,
            rb"^u OK UNAUTHENTICATE completed, now in not authenticated state\r\n"
            rb"a OK \[CAPABILITY [^]]*\] Logged in\r\n$",
        )
        response = yield client.command("s", "SELECT INBOX")
        # An IMAP4rev1 SELECT again: RECENT (the IMAP4rev2 session claimed
        # none) and no LIST line.
        t.assertIn(b"* 1 EXISTS\r\n* 1 RECENT\r\n", response)
        t.assertNotIn(b"* LIST", response)
        response = yield client.command("f", "FETCH 1 (FLAGS)")
        t.assertEqual(
            response, b"* 1 FETCH (FLAGS (\\Deleted \\Recent))\r\nf OK FETCH completed\r\n"
        )
        response = yield client.command("x", "UNAUTHENTICATE")
        t.assertEqual(
            response, b"x OK UNAUTHENTICATE completed, now in not authenticated state\r\n"
        )
        response = yield client.command("y", "UNAUTHENTICATE")
        t.assertEqual(
            response, b"y BAD UNAUTHENTICATE is not allowed in not authenticated state\r\n"
        )


class MemoryRev2Tests(InMemory, _Rev2Scenarios, TestCase):
    """The scenarios over the memory backend."""


class MaildirRev2Tests(_Rev2Scenarios, TestCase):
    def make_storage(self) -> IStorage:
        from mailsrv.storage.maildir import MaildirStorage

        return MaildirStorage(self.mktemp() + "/{user}")

    def deliver(self, number: int) -> None:
        from mailsrv.storage.deliver import deliver

        storage: Any = self.storage
        deliver(storage.account("joe"), io.BytesIO(MESSAGE % (number, number)))


class PostgresRev2Tests(InPostgres, _Rev2Scenarios, TestCase):
    """The scenarios over the PostgreSQL backend."""


class UnauthenticateSlotTests(ServerTestBase):
    """UNAUTHENTICATE gives the user's connection slot back (RFC 8437 3:
    the connection is as new), and counts the next login afresh."""

    def make_factory(self) -> RecordingFactory:
        limits = ConnectionLimits(per_user=1, per_ip=5)
        return RecordingFactory(self.portal, SessionPolicy(failure_delay=0.0, connections=limits))

    @defer.inlineCallbacks
    def test_slot_given_back(self) -> Any:
        first = yield self.login()
        second = yield self.connect()
        response = yield second.command("a", "LOGIN joe secret")
        self.assertEqual(response, b"a NO [LIMIT] Too many connections for this user\r\n")
        response = yield first.command("u", "UNAUTHENTICATE")
        self.assertEqual(
            response, b"u OK UNAUTHENTICATE completed, now in not authenticated state\r\n"
        )
        response = yield second.command("b", "LOGIN joe secret")
        self.assertTrue(response.startswith(b"b OK [CAPABILITY"), response)
        response = yield first.command("c", "LOGIN joe secret")
        self.assertEqual(response, b"c NO [LIMIT] Too many connections for this user\r\n")
        response = yield first.command("d", "LOGIN ann pass")
        self.assertTrue(response.startswith(b"d OK [CAPABILITY"), response)
        response = yield first.command("s", "SELECT INBOX")
        self.assertIn(b"s OK [READ-WRITE]", response)
