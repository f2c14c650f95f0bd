"""The IMAP server, asserting the bytes on the wire: over loopback TCP, and
in process (a StringTransport) where a clock or the exact pieces matter.
The storage behind it is the memory backend (tests/imap_helpers.py)."""

from __future__ import annotations

import base64
import datetime
import random
import re
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mailsrv.auth.realm import MailRealm
from mailsrv.imap.commands import REGISTRY
from mailsrv.interfaces import DELETED, StoreMode
from mailsrv.policy import SessionPolicy
from mailsrv.storage.memory import MemoryMailbox, MemoryStorage
from tests.imap_helpers import (
    CAPS_BEFORE,
    Client,
    RecordingFactory,
    ServerTestBase,
    count_logouts,
    gone_on_claim,
    in_process,
    slow_next_select,
    tls_options,
)


class GreetingAndStateTests(ServerTestBase):
    @defer.inlineCallbacks
    def test_greeting_and_capability(self) -> Any:
        creator = protocol.ClientCreator(reactor, Client)
        client = yield creator.connectTCP("127.0.0.1", self.port.getHost().port)
        self.clients.append(client)
        greeting = yield client.until(b"\r\n")
        self.assertEqual(
            greeting,
            b"* OK [CAPABILITY " + CAPS_BEFORE + b" AUTH=PLAIN AUTH=LOGIN] "
            b"mailsrv IMAP4rev1 server ready\r\n",
        )
        response = yield client.command("a1", "capability")
        self.assertEqual(
            response,
            b"* CAPABILITY " + CAPS_BEFORE + b" AUTH=PLAIN AUTH=LOGIN\r\n"
            b"a1 OK CAPABILITY completed\r\n",
        )

    @defer.inlineCallbacks
    def test_syntax_errors_get_bad_with_the_tag(self) -> Any:
        client = yield self.connect()
        response = yield client.command("a1", "NOOP now")
        self.assertEqual(response, b"a1 BAD unexpected ' now' after the arguments\r\n")
        response = yield client.command("a2", "FROB")
        self.assertEqual(response, b"a2 BAD unknown command FROB\r\n")
        client.send(b"\r\n")
        response = yield client.until(b"\r\n")
        self.assertEqual(response, b"* BAD expected a tag, found end of line\r\n")
        response = yield client.command("a3", "noop")
        self.assertEqual(response, b"a3 OK NOOP completed\r\n")

    @defer.inlineCallbacks
    def test_logout(self) -> Any:
        logouts = count_logouts(self)
        client = yield self.login()
        response = yield client.command("z", "LOGOUT")
        self.assertEqual(response, b"* BYE mailsrv logging out\r\nz OK LOGOUT completed\r\n")
        yield client.lost
        yield self.factory.lost[-1]
        self.assertEqual(logouts, ["joe"])

    @defer.inlineCallbacks
    def test_id_namespace_enable(self) -> Any:
        client = yield self.connect()
        response = yield client.command("a", 'ID ("name" "test")')
        self.assertEqual(response, b'* ID ("name" "mailsrv")\r\na OK ID completed\r\n')
        yield client.command("L", "LOGIN joe secret")
        response = yield client.command("b", "NAMESPACE")
        self.assertEqual(
            response, b'* NAMESPACE (("" "/")) NIL NIL\r\nb OK NAMESPACE completed\r\n'
        )
        response = yield client.command("c", "ENABLE CONDSTORE")
        self.assertEqual(response, b"* ENABLED\r\nc OK ENABLE completed\r\n")


class LoginTests(ServerTestBase):
    @defer.inlineCallbacks
    def test_login_failure_and_success(self) -> Any:
        client = yield self.connect()
        response = yield client.command("a", "LOGIN joe wrong")
        self.assertEqual(response, b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
        response = yield client.command("b", 'LOGIN "joe" {6+}\r\nsecret')
        self.assertTrue(response.startswith(b"b OK [CAPABILITY IMAP4rev1 LITERAL+ "), response)
        self.assertNotIn(b"AUTH=", response)
        self.assertTrue(response.endswith(b"] Logged in\r\n"))

    @defer.inlineCallbacks
    def test_repeated_failures_close_the_connection(self) -> Any:
        client = yield self.connect()
        for tag in ("a", "b"):
            response = yield client.command(tag, "LOGIN joe wrong")
            self.assertEqual(
                response, tag.encode() + b" NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
            )
        client.send(b"c LOGIN joe wrong\r\n")
        yield client.lost
        self.assertEqual(
            client.buffer,
            b"c NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
            b"* BYE Too many failed authentication attempts\r\n",
        )

    @defer.inlineCallbacks
    def test_authenticate_plain_with_initial_response(self) -> Any:
        client = yield self.connect()
        token = base64.b64encode(b"\0joe\0secret").decode()
        response = yield client.command("a", f"AUTHENTICATE PLAIN {token}")
        self.assertTrue(response.startswith(b"a OK [CAPABILITY "), response)

    @defer.inlineCallbacks
    def test_authenticate_plain_with_continuation(self) -> Any:
        client = yield self.connect()
        client.send(b"a AUTHENTICATE PLAIN\r\n")
        challenge = yield client.until(b"\r\n")
        self.assertEqual(challenge, b"+ \r\n")
        client.send(base64.b64encode(b"\0joe\0secret") + b"\r\n")
        response = yield client.until_tagged("a")
        self.assertTrue(response.startswith(b"a OK [CAPABILITY "), response)

    @defer.inlineCallbacks
    def test_authenticate_login_mechanism(self) -> Any:
        client = yield self.connect()
        client.send(b"a AUTHENTICATE LOGIN\r\n")
        challenge = yield client.until(b"\r\n")
        self.assertEqual(challenge, b"+ " + base64.b64encode(b"Username:") + b"\r\n")
        client.send(base64.b64encode(b"joe") + b"\r\n")
        challenge = yield client.until(b"\r\n")
        self.assertEqual(challenge, b"+ " + base64.b64encode(b"Password:") + b"\r\n")
        client.send(base64.b64encode(b"secret") + b"\r\n")
        response = yield client.until_tagged("a")
        self.assertTrue(response.startswith(b"a OK [CAPABILITY "), response)

    @defer.inlineCallbacks
    def test_authenticate_cancel_and_errors(self) -> Any:
        client = yield self.connect()
        client.send(b"a AUTHENTICATE PLAIN\r\n")
        yield client.until(b"+ \r\n")
        client.send(b"*\r\n")
        response = yield client.until_tagged("a")
        self.assertEqual(response, b"a BAD AUTHENTICATE cancelled\r\n")
        response = yield client.command("b", "AUTHENTICATE PLAIN !!!")
        self.assertEqual(response, b"b BAD Invalid base64 in the initial response\r\n")
        response = yield client.command("c", "AUTHENTICATE GSSAPI")
        self.assertEqual(response, b"c NO [CANNOT] Unsupported mechanism GSSAPI\r\n")
        response = yield client.command("d", "AUTHENTICATE CRAM-MD5")
        self.assertEqual(response, b"d NO [CANNOT] CRAM-MD5 is not available\r\n")
        token = base64.b64encode(b"ann\0joe\0secret").decode()
        response = yield client.command("e", f"AUTHENTICATE PLAIN {token}")
        self.assertEqual(response, b"e NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
        # The connection still works.
        response = yield client.command("f", "NOOP")
        self.assertEqual(response, b"f OK NOOP completed\r\n")


class PlaintextPolicyTests(ServerTestBase):
    policy = SessionPolicy(failure_delay=0.0, plaintext="never")

    @defer.inlineCallbacks
    def test_logindisabled(self) -> Any:
        client = yield self.connect()
        response = yield client.command("a", "CAPABILITY")
        self.assertIn(b" LOGINDISABLED\r\n", response)
        self.assertNotIn(b"AUTH=PLAIN", response)
        response = yield client.command("b", "LOGIN joe secret")
        self.assertEqual(
            response, b"b NO [PRIVACYREQUIRED] Plaintext login is disabled; use STARTTLS first\r\n"
        )
        response = yield client.command("c", "AUTHENTICATE PLAIN")
        self.assertEqual(
            response,
            b"c NO [PRIVACYREQUIRED] Plaintext authentication is disabled; use STARTTLS\r\n",
        )


class MailboxCommandTests(ServerTestBase):
    @defer.inlineCallbacks
    def test_create_list_status_rename_delete(self) -> Any:
        client = yield self.login()
        response = yield client.command("a", "CREATE Entw&APw-rfe/Sub")
        self.assertEqual(response, b"a OK CREATE completed\r\n")
        self.assertEqual(self.mailbox("Entwürfe/Sub").name, "Entwürfe/Sub")
        response = yield client.command("b", "CREATE Entw&APw-rfe/Sub")
        self.assertEqual(
            response, b"b NO [ALREADYEXISTS] mailbox 'Entw?rfe/Sub' already exists\r\n"
        )
        # The parent goes, its child stays: the parent is \Noselect now.
        yield client.command("p", "DELETE Entw&APw-rfe")
        response = yield client.command("c", 'LIST "" *')
        self.assertEqual(
            response,
            b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
            b'* LIST (\\Noselect \\HasChildren) "/" Entw&APw-rfe\r\n'
            b'* LIST (\\HasNoChildren) "/" Entw&APw-rfe/Sub\r\n'
            b"c OK LIST completed\r\n",
        )
        response = yield client.command("d", 'LIST "" %')
        self.assertEqual(
            response,
            b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
            b'* LIST (\\Noselect \\HasChildren) "/" Entw&APw-rfe\r\n'
            b"d OK LIST completed\r\n",
        )
        response = yield client.command("e", 'LIST "" ""')
        self.assertEqual(response, b'* LIST (\\Noselect) "/" ""\r\ne OK LIST completed\r\n')
        response = yield client.command("f", 'list "" inbox')
        self.assertEqual(response, b'* LIST (\\HasNoChildren) "/" INBOX\r\nf OK LIST completed\r\n')
        response = yield client.command(
            "g", "STATUS Entw&APw-rfe/Sub (MESSAGES UIDNEXT UIDVALIDITY UNSEEN SIZE)"
        )
        self.assertEqual(
            response,
            b"* STATUS Entw&APw-rfe/Sub (MESSAGES 0 UIDNEXT 1 UIDVALIDITY %d UNSEEN 0 SIZE 0)\r\n"
            b"g OK STATUS completed\r\n" % self.mailbox("Entwürfe/Sub").uidvalidity,
        )
        response = yield client.command("h", "RENAME Entw&APw-rfe/Sub Other")
        self.assertEqual(response, b"h OK RENAME completed\r\n")
        response = yield client.command("i", "DELETE Other")
        self.assertEqual(response, b"i OK DELETE completed\r\n")
        response = yield client.command("j", "DELETE Other")
        self.assertEqual(response, b"j NO [NONEXISTENT] no mailbox named 'Other'\r\n")
        response = yield client.command("k", "DELETE inbox")
        self.assertEqual(response, b"k NO [CANNOT] INBOX cannot be deleted\r\n")
        response = yield client.command("l", "STATUS nothere (MESSAGES)")
        self.assertEqual(response, b"l NO [NONEXISTENT] no mailbox named 'nothere'\r\n")

    @defer.inlineCallbacks
    def test_subscriptions_lsub_and_list_extended(self) -> Any:
        client = yield self.login()
        yield client.command("a", "CREATE Work/Projects (USE (\\Archive))")
        yield client.command("p", "DELETE Work")  # Work is \Noselect from now on
        yield client.command("b", "SUBSCRIBE Work/Projects")
        yield client.command("c", "SUBSCRIBE Gone")
        response = yield client.command("d", 'LSUB "" *')
        self.assertEqual(
            response,
            b'* LSUB () "/" Work/Projects\r\n* LSUB () "/" Gone\r\nd OK LSUB completed\r\n',
        )
        response = yield client.command("e", 'LSUB "" %')
        self.assertEqual(
            response,
            b'* LSUB () "/" Gone\r\n* LSUB (\\Noselect) "/" Work\r\ne OK LSUB completed\r\n',
        )
        response = yield client.command("f", 'LIST (SUBSCRIBED) "" *')
        self.assertEqual(
            response,
            b'* LIST (\\HasNoChildren \\Archive \\Subscribed) "/" Work/Projects\r\n'
            b'* LIST (\\NonExistent \\Subscribed) "/" Gone\r\n'
            b"f OK LIST completed\r\n",
        )
        response = yield client.command("g", 'LIST (SUBSCRIBED RECURSIVEMATCH) "" %')
        self.assertEqual(
            response,
            b'* LIST (\\NonExistent \\Subscribed) "/" Gone\r\n'
            b'* LIST (\\Noselect \\HasChildren) "/" Work ("CHILDINFO" ("SUBSCRIBED"))\r\n'
            b"g OK LIST completed\r\n",
        )
        response = yield client.command("h", 'LIST (SPECIAL-USE) "" *')
        self.assertEqual(
            response,
            b'* LIST (\\HasNoChildren \\Archive) "/" Work/Projects\r\nh OK LIST completed\r\n',
        )
        response = yield client.command(
            "i", 'LIST "" (INBOX Work/%) RETURN (SUBSCRIBED STATUS (MESSAGES))'
        )
        self.assertEqual(
            response,
            b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
            b"* STATUS INBOX (MESSAGES 0)\r\n"
            b'* LIST (\\HasNoChildren \\Archive \\Subscribed) "/" Work/Projects\r\n'
            b"* STATUS Work/Projects (MESSAGES 0)\r\n"
            b"i OK LIST completed\r\n",
        )
        yield client.command("j", "UNSUBSCRIBE Gone")
        self.assertEqual(self.account().subscriptions(), ["Work/Projects"])
        response = yield client.command("k", "CREATE x (USE (\\Bogus))")
        self.assertEqual(response, b"k NO [USEATTR] Unknown special use \\Bogus\r\n")


class SelectTests(ServerTestBase):
    @defer.inlineCallbacks
    def test_select_responses(self) -> Any:
        self.deliver(b"one\r\n", ["\\Seen"])
        self.deliver(b"two\r\n")
        client = yield self.login()
        response = yield client.command("a", "SELECT INBOX")
        self.assertEqual(
            response,
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags\r\n"
            b"* 2 EXISTS\r\n"
            b"* 2 RECENT\r\n"
            b"* OK [UNSEEN 2] First unseen\r\n"
            b"* OK [UIDVALIDITY %d] UIDs valid\r\n"
            b"* OK [UIDNEXT 3] Predicted next UID\r\n"
            b"a OK [READ-WRITE] SELECT completed\r\n" % self.inbox.uidvalidity,
        )
        # \Recent went to this session; a second one sees none.
        other = yield self.login()
        response = yield other.command("b", "EXAMINE INBOX")
        self.assertIn(b"* 0 RECENT\r\n", response)
        self.assertIn(b"* OK [PERMANENTFLAGS ()] Flags\r\n", response)
        self.assertTrue(response.endswith(b"b OK [READ-ONLY] EXAMINE completed\r\n"))
        response = yield client.command("c", "FETCH 1:* (FLAGS)")
        self.assertEqual(
            response,
            b"* 1 FETCH (FLAGS (\\Recent \\Seen))\r\n* 2 FETCH (FLAGS (\\Recent))\r\n"
            b"c OK FETCH completed\r\n",
        )

    @defer.inlineCallbacks
    def test_failed_select_leaves_no_mailbox_selected(self) -> Any:
        client = yield self.selected()
        response = yield client.command("a", "SELECT nothere")
        self.assertEqual(response, b"a NO [NONEXISTENT] no mailbox named 'nothere'\r\n")
        response = yield client.command("b", "FETCH 1 FLAGS")
        self.assertEqual(response, b"b BAD FETCH is not allowed in authenticated state\r\n")

    @defer.inlineCallbacks
    def test_examine_is_read_only(self) -> Any:
        self.deliver(b"x\r\n", [DELETED])
        client = yield self.login()
        yield client.command("a", "EXAMINE INBOX")
        response = yield client.command("b", "STORE 1 +FLAGS (\\Seen)")
        self.assertEqual(response, b"b NO [READ-ONLY] Mailbox is read-only\r\n")
        response = yield client.command("c", "EXPUNGE")
        self.assertEqual(response, b"c NO [READ-ONLY] Mailbox is read-only\r\n")
        response = yield client.command("d", "CLOSE")
        self.assertEqual(response, b"d OK CLOSE completed\r\n")
        self.assertEqual(self.inbox.uids(), (1,))

    @defer.inlineCallbacks
    def test_close_expunges_silently_and_unselect_does_not(self) -> Any:
        self.deliver(b"x\r\n", [DELETED])
        self.deliver(b"y\r\n")
        client = yield self.selected()
        response = yield client.command("a", "UNSELECT")
        self.assertEqual(response, b"a OK UNSELECT completed\r\n")
        self.assertEqual(self.inbox.uids(), (1, 2))
        yield client.command("b", "SELECT INBOX")
        response = yield client.command("c", "CLOSE")
        self.assertEqual(response, b"c OK CLOSE completed\r\n")
        self.assertEqual(self.inbox.uids(), (2,))


class MessageCommandTests(ServerTestBase):
    @defer.inlineCallbacks
    def test_fetch_index_items(self) -> Any:
        when = datetime.datetime(
            2023, 7, 4, 9, 5, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
        )
        self.deliver(b"hello\r\n", ["\\Flagged", "$Work"], when)
        client = yield self.selected()
        response = yield client.command("a", "FETCH 1 (UID RFC822.SIZE INTERNALDATE FLAGS)")
        self.assertEqual(
            response,
            b'* 1 FETCH (UID 1 RFC822.SIZE 7 INTERNALDATE "04-Jul-2023 09:05:01 +0200" '
            b"FLAGS (\\Flagged \\Recent $Work))\r\n"
            b"a OK FETCH completed\r\n",
        )
        response = yield client.command("b", "UID FETCH 1:* FLAGS")
        self.assertEqual(
            response,
            b"* 1 FETCH (FLAGS (\\Flagged \\Recent $Work) UID 1)\r\nb OK FETCH completed\r\n",
        )
        response = yield client.command("c", "FETCH 1 BODY[]")
        self.assertEqual(
            response,
            b"* 1 FETCH (BODY[] {7}\r\nhello\r\n FLAGS (\\Flagged \\Recent \\Seen $Work))\r\n"
            b"c OK FETCH completed\r\n",
        )
        response = yield client.command("d", "FETCH 2 FLAGS")
        self.assertEqual(response, b"d BAD Invalid message sequence number (the mailbox has 1)\r\n")
        response = yield client.command("e", "UID FETCH 7:9 FLAGS")
        self.assertEqual(response, b"e OK FETCH completed\r\n")

    @defer.inlineCallbacks
    def test_store_and_search(self) -> Any:
        for i in range(4):
            self.deliver(b"m%d\r\n" % i)
        client = yield self.selected()
        response = yield client.command("a", "STORE 2:3 +FLAGS (\\Deleted)")
        self.assertEqual(
            response,
            b"* 2 FETCH (FLAGS (\\Deleted \\Recent))\r\n* 3 FETCH (FLAGS (\\Deleted \\Recent))\r\n"
            b"a OK STORE completed\r\n",
        )
        response = yield client.command("b", "UID STORE 3 -FLAGS.SILENT (\\Deleted)")
        self.assertEqual(response, b"b OK STORE completed\r\n")
        response = yield client.command("c", "UID STORE 1 FLAGS (\\Seen)")
        self.assertEqual(
            response, b"* 1 FETCH (UID 1 FLAGS (\\Recent \\Seen))\r\nc OK STORE completed\r\n"
        )
        response = yield client.command("d", "SEARCH UNSEEN NOT DELETED")
        self.assertEqual(response, b"* SEARCH 3 4\r\nd OK SEARCH completed\r\n")
        response = yield client.command("e", "UID SEARCH OR SEEN DELETED")
        self.assertEqual(response, b"* SEARCH 1 2\r\ne OK SEARCH completed\r\n")
        response = yield client.command("f", "SEARCH 2:* UID 1:3 LARGER 3")
        self.assertEqual(response, b"* SEARCH 2 3\r\nf OK SEARCH completed\r\n")
        response = yield client.command("g", "SEARCH NEW")
        self.assertEqual(response, b"* SEARCH 2 3 4\r\ng OK SEARCH completed\r\n")
        response = yield client.command("h", "SEARCH SUBJECT x")
        self.assertEqual(response, b"* SEARCH\r\nh OK SEARCH completed\r\n")
        response = yield client.command("i", "SEARCH CHARSET KOI8-R ALL")
        self.assertEqual(
            response,
            b"i NO [BADCHARSET (US-ASCII UTF-8)] Charset KOI8-R is not supported\r\n",
        )
        response = yield client.command("j", "EXPUNGE")
        self.assertEqual(response, b"* 2 EXPUNGE\r\nj OK EXPUNGE completed\r\n")

    @defer.inlineCallbacks
    def test_copy_move_uid_expunge(self) -> Any:
        for i in range(3):
            self.deliver(b"m%d\r\n" % i, [DELETED] if i else [])
        self.account().create_mailbox("Archive")
        client = yield self.selected()
        response = yield client.command("a", "COPY 1:2 Archive")
        archive = self.mailbox("Archive").uidvalidity
        self.assertEqual(response, b"a OK [COPYUID %d 1:2 1:2] COPY completed\r\n" % archive)
        response = yield client.command("b", "COPY 1 Nowhere")
        self.assertEqual(response, b"b NO [TRYCREATE] Mailbox Nowhere does not exist\r\n")
        response = yield client.command("c", "UID MOVE 1 Archive")
        self.assertEqual(
            response,
            b"* OK [COPYUID %d 1 3] Moved\r\n* 1 EXPUNGE\r\nc OK MOVE completed\r\n" % archive,
        )
        response = yield client.command("d", "UID EXPUNGE 3")
        self.assertEqual(response, b"* 2 EXPUNGE\r\nd OK EXPUNGE completed\r\n")
        self.assertEqual(self.inbox.uids(), (2,))
        self.assertEqual(self.mailbox("Archive").uids(), (1, 2, 3))


class LiteralTests(ServerTestBase):
    policy = SessionPolicy(failure_delay=0.0, max_message_size=300_000, max_line_length=1000)

    @defer.inlineCallbacks
    def test_synchronizing_literal_gets_continuation(self) -> Any:
        client = yield self.connect()
        client.send(b"a LOGIN {3}\r\n")
        response = yield client.until(b"\r\n")
        self.assertEqual(response, b"+ Ready for literal data\r\n")
        client.send(b"joe {6}\r\n")
        response = yield client.until(b"\r\n")
        self.assertEqual(response, b"+ Ready for literal data\r\n")
        client.send(b"secret\r\n")
        response = yield client.until_tagged("a")
        self.assertTrue(response.startswith(b"a OK [CAPABILITY"), response)

    @defer.inlineCallbacks
    def test_append_synchronizing(self) -> Any:
        client = yield self.login()
        message = b"Subject: hi\r\n\r\nbody\r\n"
        client.send(b'a APPEND INBOX (\\Seen) "05-Jul-1994 02:44:25 -0700" {%d}\r\n' % len(message))
        yield client.until(b"+ Ready for literal data\r\n")
        client.send(message + b"\r\n")
        response = yield client.until_tagged("a")
        self.assertEqual(
            response, b"a OK [APPENDUID %d 1] APPEND completed\r\n" % self.inbox.uidvalidity
        )
        (info,) = self.inbox.fetch([1])
        self.assertEqual(self.contents(), {1: message})
        self.assertEqual(info.flags, {"\\Seen"})
        self.assertEqual(info.internal_date.utcoffset(), datetime.timedelta(hours=-7))

    @defer.inlineCallbacks
    def test_append_longer_than_a_line_is_spooled(self) -> Any:
        # max_line_length is 1000 here: a 5000-octet message still fits.
        client = yield self.login()
        message = b"x" * 4998 + b"\r\n"
        client.send(b"a APPEND INBOX {5000}\r\n")
        yield client.until(b"+ Ready for literal data\r\n")
        client.send(message + b"\r\n")
        response = yield client.until_tagged("a")
        self.assertEqual(
            response, b"a OK [APPENDUID %d 1] APPEND completed\r\n" % self.inbox.uidvalidity
        )
        self.assertEqual(self.contents(), {1: message})
        response = yield client.command("b", "APPEND INBOX {2000+}\r\n" + "y" * 2000 + " {2000+}")
        self.assertEqual(response, b"b BAD One message per APPEND (no MULTIAPPEND)\r\n")
        client.send(b"z" * 2000 + b"\r\n")
        response = yield client.command("c", "NOOP")
        self.assertEqual(response, b"c OK NOOP completed\r\n")

    @defer.inlineCallbacks
    def test_append_large_nonsync_literal_is_spooled(self) -> Any:
        client = yield self.login()
        message = b"".join(b"line %06d of a long message\r\n" % i for i in range(9000))
        self.assertGreater(len(message), 200_000)
        # Sent in pieces, as a slow client would.
        header = b"a APPEND INBOX {%d+}\r\n" % len(message)
        client.send(header + message[:1000])
        for start in range(1000, len(message), 65536):
            client.send(message[start : start + 65536])
        client.send(b"\r\nb NOOP\r\n")
        response = yield client.until_tagged("b")
        self.assertEqual(
            response,
            b"a OK [APPENDUID %d 1] APPEND completed\r\nb OK NOOP completed\r\n"
            % self.inbox.uidvalidity,
        )
        self.assertEqual(self.contents(), {1: message})

    @defer.inlineCallbacks
    def test_append_into_selected_mailbox_announces_exists(self) -> Any:
        client = yield self.selected()
        response = yield client.command("a", "APPEND INBOX {3+}\r\nabc")
        self.assertEqual(
            response,
            b"* 1 EXISTS\r\n* 1 RECENT\r\na OK [APPENDUID %d 1] APPEND completed\r\n"
            % self.inbox.uidvalidity,
        )
        response = yield client.command("b", "APPEND Nowhere {3+}\r\nabc")
        self.assertEqual(response, b"b NO [TRYCREATE] Mailbox Nowhere does not exist\r\n")

    @defer.inlineCallbacks
    def test_too_big_synchronizing_append_is_refused_without_continuation(self) -> Any:
        client = yield self.login()
        response = yield client.command("a", "APPEND INBOX {300001}")
        self.assertEqual(response, b"a NO [TOOBIG] Message too large (at most 300000 octets)\r\n")
        response = yield client.command("b", "NOOP")
        self.assertEqual(response, b"b OK NOOP completed\r\n")
        self.assertEqual(self.inbox.uids(), ())

    @defer.inlineCallbacks
    def test_too_big_nonsync_append_is_discarded_and_connection_kept(self) -> Any:
        client = yield self.login()
        client.send(b"a APPEND INBOX {300001+}\r\n" + b"x" * 300001 + b" more junk\r\n")
        response = yield client.until_tagged("a")
        self.assertEqual(response, b"a BAD [TOOBIG] Message too large (at most 300000 octets)\r\n")
        response = yield client.command("b", "NOOP")
        self.assertEqual(response, b"b OK NOOP completed\r\n")
        self.assertEqual(self.inbox.uids(), ())

    @defer.inlineCallbacks
    def test_long_literal_outside_append_is_refused(self) -> Any:
        client = yield self.connect()
        response = yield client.command("a", "LOGIN {5000}")
        self.assertEqual(response, b"a BAD [TOOBIG] Command too long\r\n")
        # Before login an APPEND gets no larger literal allowance either.
        response = yield client.command("b", "APPEND INBOX {5000}")
        self.assertEqual(response, b"b BAD [TOOBIG] Command too long\r\n")

    @defer.inlineCallbacks
    def test_overlong_line_gets_bad_and_connection_is_kept(self) -> Any:
        client = yield self.connect()
        client.send(b"a NOOP " + b"x" * 5000 + b"\r\nb NOOP\r\n")
        response = yield client.until_tagged("b")
        self.assertEqual(response, b"a BAD [TOOBIG] Line too long\r\nb OK NOOP completed\r\n")
        # Even when the line arrives in pieces without its end.
        client.send(b"c NOOP " + b"y" * 3000)
        client.send(b"y" * 3000)
        client.send(b"\r\nd NOOP\r\n")
        response = yield client.until_tagged("d")
        self.assertEqual(response, b"c BAD [TOOBIG] Line too long\r\nd OK NOOP completed\r\n")

    @defer.inlineCallbacks
    def test_literal8_outside_append(self) -> Any:
        client = yield self.connect()
        response = yield client.command("a", "LOGIN ~{3}")
        self.assertEqual(response, b"a BAD literal8 is only allowed in APPEND\r\n")


class PipeliningTests(ServerTestBase):
    @defer.inlineCallbacks
    def test_pipelined_commands_wait_for_slow_select(self) -> Any:
        self.deliver(b"x\r\n", ["\\Seen"])
        gate = slow_next_select(self)
        client = yield self.login()
        client.send(b"a SELECT INBOX\r\nb FETCH 1 (FLAGS)\r\nc APPEND INBOX {1}\r\n")
        # Nothing is answered (not even the literal's "+") while SELECT waits.
        self.assertEqual(client.buffer, b"")
        reactor.callLater(0, gate.callback, None)
        response = yield client.until(b"+ Ready")
        self.assertTrue(response.startswith(b"* FLAGS"), response)
        self.assertIn(b"a OK [READ-WRITE] SELECT completed\r\n", response)
        self.assertTrue(
            response.endswith(
                b"* 1 FETCH (FLAGS (\\Recent \\Seen))\r\nb OK FETCH completed\r\n"
                b"+ Ready for literal data\r\n"
            ),
            response,
        )
        client.send(b"y\r\n")
        response = yield client.until_tagged("c")
        self.assertEqual(
            response,
            b"* 2 EXISTS\r\n* 2 RECENT\r\nc OK [APPENDUID %d 2] APPEND completed\r\n"
            % self.inbox.uidvalidity,
        )

    @defer.inlineCallbacks
    def test_many_pipelined_commands_answered_in_order(self) -> Any:
        client = yield self.login()
        client.send(b"".join(b"t%d NOOP\r\n" % i for i in range(50)))
        response = yield client.until_tagged("t49")
        self.assertEqual(response, b"".join(b"t%d OK NOOP completed\r\n" % i for i in range(50)))


class SessionInterplayTests(ServerTestBase):
    @defer.inlineCallbacks
    def test_three_sessions_append_store_expunge(self) -> Any:
        for i in range(3):
            self.deliver(b"m%d\r\n" % i)
        a = yield self.selected()
        b = yield self.selected()
        c = yield self.selected()
        # B marks message 2 deleted: B sees its FETCH; A and C will hear later.
        response = yield b.command("b1", "STORE 2 +FLAGS (\\Deleted)")
        self.assertEqual(response, b"* 2 FETCH (FLAGS (\\Deleted))\r\nb1 OK STORE completed\r\n")
        # C expunges: its own EXPUNGE response, as the command allows.
        response = yield c.command("c1", "EXPUNGE")
        self.assertEqual(response, b"* 2 EXPUNGE\r\nc1 OK EXPUNGE completed\r\n")
        # A fetches: no EXPUNGE during FETCH, its numbers are unchanged and
        # message 2's loss is reported in the tagged response.
        response = yield a.command("a1", "FETCH 1:3 (UID)")
        self.assertEqual(
            response,
            b"* 1 FETCH (UID 1)\r\n* 3 FETCH (UID 3)\r\n"
            b"a1 OK [EXPUNGEISSUED] Some messages were already expunged\r\n",
        )
        # Nor during STORE or SEARCH.
        response = yield a.command("a2", "STORE 3 +FLAGS (\\Flagged)")
        self.assertEqual(
            response, b"* 3 FETCH (FLAGS (\\Flagged \\Recent))\r\na2 OK STORE completed\r\n"
        )
        response = yield a.command("a3", "UID SEARCH ALL")
        self.assertEqual(response, b"* SEARCH 1 3\r\na3 OK SEARCH completed\r\n")
        # B appends: B sees EXISTS now (its EXPUNGE too, after APPEND).
        response = yield b.command("b2", "APPEND INBOX {3+}\r\nnew")
        self.assertEqual(
            response,
            b"* 2 EXPUNGE\r\n* 3 EXISTS\r\n* 1 RECENT\r\n* 2 FETCH (FLAGS (\\Flagged))\r\n"
            b"b2 OK [APPENDUID %d 4] APPEND completed\r\n" % self.inbox.uidvalidity,
        )
        # A's NOOP: the expunge, the new message, and nothing more.
        response = yield a.command("a4", "NOOP")
        self.assertEqual(
            response, b"* 2 EXPUNGE\r\n* 3 EXISTS\r\n* 2 RECENT\r\na4 OK NOOP completed\r\n"
        )
        # C sees the flag change made by A and the new message.
        response = yield c.command("c2", "NOOP")
        self.assertEqual(
            response,
            b"* 3 EXISTS\r\n* 0 RECENT\r\n* 2 FETCH (FLAGS (\\Flagged))\r\n"
            b"c2 OK NOOP completed\r\n",
        )
        response = yield c.command("c3", "FETCH 1:* (UID FLAGS)")
        self.assertEqual(
            response,
            b"* 1 FETCH (UID 1 FLAGS ())\r\n* 2 FETCH (UID 3 FLAGS (\\Flagged))\r\n"
            b"* 3 FETCH (UID 4 FLAGS ())\r\nc3 OK FETCH completed\r\n",
        )


class NewMailBeforeSequenceSetTests(ServerTestBase):
    """Mail that arrived since the last answer is announced before a command
    that names messages resolves its set, so ``*`` and every number the
    client may now use include it (RFC 3501 5.2: EXISTS may be sent at any
    time; 7.4.1 forbids only EXPUNGE during FETCH, STORE and SEARCH)."""

    @defer.inlineCallbacks
    def test_fetch_in_a_view_that_was_empty(self) -> Any:
        client = yield self.selected()
        self.deliver(b"new\r\n")
        response = yield client.command("a", "FETCH 1:* (UID)")
        self.assertEqual(
            response,
            b"* 1 EXISTS\r\n* 1 RECENT\r\n* 1 FETCH (UID 1)\r\na OK FETCH completed\r\n",
        )

    @defer.inlineCallbacks
    def test_uid_fetch_store_search_copy_move(self) -> Any:
        self.deliver(b"old\r\n")
        client = yield self.selected()
        self.account().create_mailbox("Archive")
        archive = self.mailbox("Archive").uidvalidity
        self.deliver(b"new 2\r\n")
        response = yield client.command("a", "UID FETCH 1:* (UID)")
        self.assertEqual(
            response,
            b"* 2 EXISTS\r\n* 2 RECENT\r\n* 1 FETCH (UID 1)\r\n* 2 FETCH (UID 2)\r\n"
            b"a OK FETCH completed\r\n",
        )
        self.deliver(b"new 3\r\n")
        response = yield client.command("b", "STORE 3:* +FLAGS.SILENT (\\Flagged)")
        self.assertEqual(response, b"* 3 EXISTS\r\n* 3 RECENT\r\nb OK STORE completed\r\n")
        self.assertEqual(self.inbox.fetch([3])[0].flags, {"\\Flagged"})
        self.deliver(b"new 4\r\n")
        response = yield client.command("c", "SEARCH 4:*")
        self.assertEqual(
            response, b"* 4 EXISTS\r\n* 4 RECENT\r\n* SEARCH 4\r\nc OK SEARCH completed\r\n"
        )
        self.deliver(b"new 5\r\n")
        response = yield client.command("d", "COPY 5:* Archive")
        self.assertEqual(
            response,
            b"* 5 EXISTS\r\n* 5 RECENT\r\nd OK [COPYUID %d 5 1] COPY completed\r\n" % archive,
        )
        self.deliver(b"new 6\r\n")
        response = yield client.command("e", "UID MOVE 6:* Archive")
        self.assertEqual(
            response,
            b"* 6 EXISTS\r\n* 6 RECENT\r\n* OK [COPYUID %d 6 2] Moved\r\n"
            b"* 6 EXPUNGE\r\ne OK MOVE completed\r\n" % archive,
        )


class IdleTests(ServerTestBase):
    timeout = 10  # a push that never comes fails in time

    @defer.inlineCallbacks
    def test_idle_sees_delivery_and_ends_with_done(self) -> Any:
        client = yield self.selected()
        client.send(b"i IDLE\r\n")
        response = yield client.until(b"\r\n")
        self.assertEqual(response, b"+ idling\r\n")
        self.deliver(b"delivered\r\n")
        response = yield client.until(b"RECENT")
        self.assertEqual(response, b"* 1 EXISTS\r\n* 1 RECENT\r\n")
        self.inbox.store([1], ["\\Seen"], StoreMode.ADD)
        response = yield client.until(b"FETCH")
        self.assertEqual(response, b"* 1 FETCH (FLAGS (\\Recent \\Seen))\r\n")
        client.send(b"DONE\r\nn NOOP\r\n")
        response = yield client.until_tagged("n")
        self.assertEqual(response, b"i OK IDLE terminated\r\nn OK NOOP completed\r\n")

    @defer.inlineCallbacks
    def test_idle_in_a_mailbox_that_disappears(self) -> Any:
        """The push finds the mailbox gone (here: a message was announced,
        and the storage finds the mailbox deleted when it looks for new
        mail): the client hears why, and is closed."""
        client = yield self.selected()
        client.send(b"i IDLE\r\n")
        yield client.until(b"+ idling\r\n")
        gone_on_claim(self)
        self.deliver(b"delivered\r\n")
        yield client.lost
        self.assertEqual(client.buffer, b"* BYE The selected mailbox was deleted or renamed\r\n")

    @defer.inlineCallbacks
    def test_idle_ended_by_anything_else_is_bad(self) -> Any:
        client = yield self.login()
        client.send(b"i IDLE\r\n")
        yield client.until(b"+ idling\r\n")
        client.send(b"x NOOP\r\n")
        response = yield client.until_tagged("i")
        self.assertEqual(response, b"i BAD Expected DONE to end IDLE\r\n")


class OverlongLineSplitTests(SynchronousTestCase):
    def test_crlf_split_between_pieces_ends_the_line(self) -> None:
        """The over-long line's CR ends one piece, its LF starts the next:
        the line ends there, and the command after it is answered (it was
        swallowed while the framing depended on how the bytes were split)."""
        server, transport = in_process(policy=SessionPolicy(max_line_length=1000))
        server.dataReceived(b"a NOOP " + b"x" * 2000 + b"\r")
        server.dataReceived(b"\nb NOOP\r\n")
        self.assertEqual(
            transport.value(), b"a BAD [TOOBIG] Line too long\r\nb OK NOOP completed\r\n"
        )


class StartTLSTests(ServerTestBase):
    def make_factory(self) -> RecordingFactory:
        options = tls_options(self.mktemp())
        policy = SessionPolicy(failure_delay=0.0, tls_context=options, plaintext="never")
        return RecordingFactory(self.portal, policy)

    @defer.inlineCallbacks
    def test_starttls_discards_pipelined_plaintext(self) -> Any:
        client = yield self.connect()
        response = yield client.command("a", "CAPABILITY")
        self.assertIn(b" STARTTLS LOGINDISABLED\r\n", response)
        # The injection: a command pipelined after STARTTLS in plaintext.
        client.send(b"b STARTTLS\r\nc LOGIN joe secret\r\n")
        response = yield client.until_tagged("b")
        self.assertEqual(response, b"b OK Begin TLS negotiation now\r\n")
        client.transport.startTLS(ssl.CertificateOptions())
        response = yield client.command("d", "CAPABILITY")
        self.assertEqual(
            response,
            b"* CAPABILITY "
            + CAPS_BEFORE
            + b" AUTH=PLAIN AUTH=LOGIN\r\nd OK CAPABILITY completed\r\n",
        )
        self.assertEqual(self.factory.sessions[0].session.state.value, "not authenticated")
        response = yield client.command("e", "STARTTLS")
        self.assertEqual(response, b"e BAD TLS is already active\r\n")
        response = yield client.command("f", "LOGIN joe secret")
        self.assertTrue(response.startswith(b"f OK [CAPABILITY"), response)


class ConnectionLimitTests(ServerTestBase):
    def make_factory(self) -> RecordingFactory:
        from mailsrv.policy import ConnectionLimits

        limits = ConnectionLimits(per_user=1, per_ip=2)
        return RecordingFactory(self.portal, SessionPolicy(failure_delay=0.0, connections=limits))

    @defer.inlineCallbacks
    def test_per_user_and_per_ip(self) -> Any:
        first = yield self.login()
        second = yield self.connect()
        response = yield second.command("a", "LOGIN joe secret")
        self.assertEqual(response, b"a NO [LIMIT] Too many connections for this user\r\n")
        response = yield second.command("b", "LOGIN ann pass")
        self.assertTrue(response.startswith(b"b OK"), response)
        creator = protocol.ClientCreator(reactor, Client)
        third = yield creator.connectTCP("127.0.0.1", self.port.getHost().port)
        self.clients.append(third)
        yield third.lost
        self.assertEqual(third.buffer, b"* BYE Too many connections from your address\r\n")
        # Logging out frees the user's slot.
        yield first.command("z", "LOGOUT")
        yield first.lost
        yield self.factory.lost[0]
        fourth = yield self.login()
        response = yield fourth.command("c", "NOOP")
        self.assertEqual(response, b"c OK NOOP completed\r\n")


class ConnectionCleanupTests(ServerTestBase):
    """Every slot a connection holds is given back when it closes, whatever
    state it was left in."""

    def make_factory(self) -> RecordingFactory:
        from mailsrv.policy import ConnectionLimits

        limits = ConnectionLimits(per_user=20, per_ip=50)
        return RecordingFactory(self.portal, SessionPolicy(failure_delay=0.0, connections=limits))

    @defer.inlineCallbacks
    def close_and_wait(self, client: Client) -> Any:
        """Close from the client side; wait until the server has cleaned up."""
        session = len(self.factory.sessions) - 1
        client.transport.loseConnection()
        yield client.lost
        yield self.factory.lost[session]

    @defer.inlineCallbacks
    def test_closing_inside_a_dropped_literal_frees_the_slots(self) -> Any:
        # Logged in, inside a too-big APPEND literal that is being dropped:
        # holds a user slot and an address slot.
        for _ in range(25):
            client = yield self.login()
            client.send(b"a1 APPEND INBOX {99999999999+}\r\nabc")
            response = yield client.until_tagged("a1")
            self.assertEqual(
                response, b"a1 BAD [TOOBIG] Message too large (at most 67108864 octets)\r\n"
            )
            yield self.close_and_wait(client)
        # Not logged in, inside a dropped over-long LOGIN literal: an address slot.
        for _ in range(25):
            client = yield self.connect()
            client.send(b"a1 LOGIN {2000000+}\r\nsome bytes")
            response = yield client.until_tagged("a1")
            self.assertEqual(response, b"a1 BAD [TOOBIG] Command too long\r\n")
            yield self.close_and_wait(client)
        # 50 connections came and went: joe (20 per user) and this address
        # (50) can still get in.
        client = yield self.login()
        response = yield client.command("n", "NOOP")
        self.assertEqual(response, b"n OK NOOP completed\r\n")


class FailingCleanupStepTests(ServerTestBase):
    def make_factory(self) -> RecordingFactory:
        from mailsrv.policy import ConnectionLimits

        limits = ConnectionLimits(per_user=1, per_ip=1)
        return RecordingFactory(self.portal, SessionPolicy(failure_delay=0.0, connections=limits))

    @defer.inlineCallbacks
    def test_a_failing_step_skips_none_after_it(self) -> Any:
        logouts = count_logouts(self)
        client = yield self.selected()

        def remove_listener(mailbox: MemoryMailbox, listener: Any) -> None:
            raise RuntimeError("storage bug at deselect")

        failing = self.patch(MemoryMailbox, "remove_listener", remove_listener)
        client.transport.loseConnection()
        yield client.lost
        yield self.factory.lost[0]
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        # The avatar was logged out and both slots were given back.
        self.assertEqual(logouts, ["joe"])
        failing.restore()
        client = yield self.login()
        response = yield client.command("n", "NOOP")
        self.assertEqual(response, b"n OK NOOP completed\r\n")


class FailureDelayTests(SynchronousTestCase):
    def test_failed_login_is_answered_after_the_delay(self) -> None:
        clock = Clock()
        policy = SessionPolicy(failure_delay=2.0, plaintext="always")
        server, transport = in_process(policy=policy, clock=clock)
        server.dataReceived(b"a LOGIN joe wrong\r\nb NOOP\r\n")
        clock.advance(1.9)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.1)
        self.assertEqual(
            transport.value(),
            b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\nb OK NOOP completed\r\n",
        )

    def test_delay_counts_from_the_attempt_not_the_check(self) -> None:
        """A slow check (argon2, or the dummy hash of an unknown user) must
        not show in when the answer comes: the delay runs from the start."""
        from twisted.cred.checkers import ICredentialsChecker
        from twisted.cred.error import UnauthorizedLogin
        from zope.interface import implementer

        clock = Clock()

        @implementer(ICredentialsChecker)
        class SlowChecker:
            credentialInterfaces = InMemoryUsernamePasswordDatabaseDontUse.credentialInterfaces

            def requestAvatarId(self, credentials: Any) -> Any:
                d: defer.Deferred[Any] = defer.Deferred()
                clock.callLater(1.5, d.errback, UnauthorizedLogin())
                return d

        portal = Portal(MailRealm(MemoryStorage()), [SlowChecker()])
        policy = SessionPolicy(failure_delay=2.0, plaintext="always")
        server = RecordingFactory(portal, policy, clock=clock).buildProtocol(None)
        transport = StringTransport()
        server.makeConnection(transport)
        transport.clear()
        server.dataReceived(b"a LOGIN joe wrong\r\n")
        clock.advance(1.9)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.1)
        self.assertEqual(
            transport.value(), b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
        )


class BrokenStorage(MemoryStorage):
    """Cannot open any account: the realm fails after the password was right."""

    def account(self, username: str, home: str | None = None) -> Any:
        raise OSError(13, "Permission denied", f"/var/mail/{username}")


class RealmErrorTests(ServerTestBase):
    """An error behind a right password is the server's problem: RFC 5530
    UNAVAILABLE, answered at once, never counted as a failed login."""

    timeout = 10  # before the fix the answer waited for the clock below
    policy = SessionPolicy(failure_delay=5.0, max_failures=1)

    def make_factory(self) -> RecordingFactory:
        checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret")
        portal = Portal(MailRealm(BrokenStorage()), [checker])
        # Never advanced: a failed-login delay would never end.
        return RecordingFactory(portal, self.policy, clock=Clock())

    @defer.inlineCallbacks
    def test_realm_error_is_unavailable_and_not_counted(self) -> Any:
        from twisted.logger import LogLevel, globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        client = yield self.connect()
        token = base64.b64encode(b"\0joe\0secret").decode()
        for tag, command in (("a", "LOGIN joe secret"), ("b", f"AUTHENTICATE PLAIN {token}")):
            response = yield client.command(tag, command)
            self.assertEqual(
                response,
                tag.encode() + b" NO [UNAVAILABLE] Authentication is temporarily unavailable\r\n",
            )
        # max_failures is 1: one counted failure would have closed the connection.
        response = yield client.command("c", "NOOP")
        self.assertEqual(response, b"c OK NOOP completed\r\n")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)
        logged = [
            e
            for e in events
            if "log_failure" in e and e.get("log_namespace", "").startswith("mailsrv")
        ]
        self.assertEqual([e["log_level"] for e in logged], [LogLevel.error, LogLevel.error])
        self.assertIn("Permission denied", logged[0]["log_failure"].getTraceback())


class ImplicitTLSTests(ServerTestBase):
    def make_factory(self) -> RecordingFactory:
        options = tls_options(self.mktemp())
        policy = SessionPolicy(failure_delay=0.0, tls_context=options, plaintext="never")
        return RecordingFactory(self.portal, policy, implicit_tls=True)

    def setUp(self) -> None:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        super().setUp()
        self.port.stopListening()
        wrapped = TLSMemoryBIOFactory(self.factory.policy.tls_context, False, self.factory)
        self.port: Any = reactor.listenTCP(0, wrapped, interface="127.0.0.1")

    @defer.inlineCallbacks
    def test_secure_from_the_start(self) -> Any:
        creator = protocol.ClientCreator(reactor, Client)
        client = yield creator.connectSSL(
            "127.0.0.1", self.port.getHost().port, ssl.CertificateOptions()
        )
        self.clients.append(client)
        greeting = yield client.until(b"\r\n")
        self.assertEqual(
            greeting,
            b"* OK [CAPABILITY " + CAPS_BEFORE + b" AUTH=PLAIN AUTH=LOGIN] "
            b"mailsrv IMAP4rev1 server ready\r\n",
        )
        response = yield client.command("a", "STARTTLS")
        self.assertEqual(response, b"a BAD TLS is already active\r\n")
        response = yield client.command("b", "LOGIN joe secret")
        self.assertTrue(response.startswith(b"b OK [CAPABILITY"), response)


class CramMD5Tests(ServerTestBase):
    policy = SessionPolicy(failure_delay=0.0, challenge_auth_available=lambda: True)

    @defer.inlineCallbacks
    def test_cram_md5(self) -> Any:
        import hashlib
        import hmac

        client = yield self.connect()
        response = yield client.command("a", "CAPABILITY")
        self.assertIn(b" AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5\r\n", response)
        client.send(b"b AUTHENTICATE CRAM-MD5\r\n")
        line = yield client.until(b"\r\n")
        self.assertTrue(line.startswith(b"+ "), line)
        challenge = base64.b64decode(line[2:-2])
        self.assertRegex(challenge, rb"^<\d+\.\d+\.\d+@localhost>$")
        digest = hmac.new(b"secret", challenge, hashlib.md5).hexdigest().encode()
        client.send(base64.b64encode(b"joe " + digest) + b"\r\n")
        response = yield client.until_tagged("b")
        self.assertTrue(response.startswith(b"b OK [CAPABILITY"), response)

    @defer.inlineCallbacks
    def test_empty_trailing_argument_is_no_initial_response(self) -> Any:
        """mutt sends ``AUTHENTICATE CRAM-MD5 `` (a space, then nothing)."""
        import hashlib
        import hmac

        client = yield self.connect()
        client.send(b"b AUTHENTICATE CRAM-MD5 \r\n")
        line = yield client.until(b"\r\n")
        self.assertTrue(line.startswith(b"+ "), line)
        challenge = base64.b64decode(line[2:-2])
        digest = hmac.new(b"secret", challenge, hashlib.md5).hexdigest().encode()
        client.send(base64.b64encode(b"joe " + digest) + b"\r\n")
        response = yield client.until_tagged("b")
        self.assertTrue(response.startswith(b"b OK [CAPABILITY"), response)
        # The same for the mechanisms that take an initial response.
        for mechanism, challenge in ((b"PLAIN", b""), (b"LOGIN", b"Username:")):
            client = yield self.connect()
            client.send(b"c AUTHENTICATE " + mechanism + b" \r\n")
            line = yield client.until(b"\r\n")
            self.assertEqual(line, b"+ " + base64.b64encode(challenge) + b"\r\n")
            client.send(b"*\r\n")
            response = yield client.until_tagged("c")
            self.assertEqual(response, b"c BAD AUTHENTICATE cancelled\r\n")

    @defer.inlineCallbacks
    def test_cram_md5_wrong_digest(self) -> Any:
        client = yield self.connect()
        client.send(b"b AUTHENTICATE CRAM-MD5\r\n")
        yield client.until(b"\r\n")
        client.send(base64.b64encode(b"joe " + b"0" * 32) + b"\r\n")
        response = yield client.until_tagged("b")
        self.assertEqual(response, b"b NO [AUTHENTICATIONFAILED] Authentication failed\r\n")


class ProtocolFuzzTests(SynchronousTestCase):
    """Whatever arrives, in whatever pieces, every command gets its answer
    and the session goes on."""

    #: Complete commands (``{tag}`` is filled in) with the lines that go
    #: with them: literals, IDLE's DONE, an over-long line, a refused
    #: non-synchronizing literal.
    COMMANDS = (
        b"{tag} NOOP\r\n",
        b"{tag} SELECT INBOX\r\n",
        b"{tag} FETCH 1:* (FLAGS UID)\r\n",
        b"{tag} UID FETCH 1:* (RFC822.SIZE)\r\n",
        b"{tag} STORE 1:2 +FLAGS (\\Deleted)\r\n",
        b"{tag} EXPUNGE\r\n",
        b"{tag} APPEND INBOX {{5}}\r\nhello\r\n",
        b"{tag} APPEND INBOX (\\Seen) {{3+}}\r\nabc\r\n",
        b"{tag} IDLE\r\nDONE\r\n",
        b"{tag} SEARCH OR SEEN (UNSEEN 1:*)\r\n",
        b'{tag} LIST "" *\r\n',
        b"{tag} UID MOVE 1:* Trash\r\n",
        b"{tag} STATUS Trash (MESSAGES)\r\n",
        b"{tag} CLOSE\r\n",
        b"{tag} " + b"x" * 400 + b"\r\n",
        b"{tag} LOGIN {{400+}}\r\n" + b"y" * 400 + b"\r\n",
        b"{tag} FROB\r\n",
    )

    def setUp(self) -> None:
        self.clock = Clock()

    def session(self) -> tuple[Any, StringTransport]:
        storage = MemoryStorage()
        for i in range(5):
            storage.deliver("joe", b"Subject: %d\r\n\r\nbody\r\n" % i)
        policy = SessionPolicy(plaintext="always", failure_delay=0.0, max_line_length=300)
        return in_process(storage, policy, self.clock)

    def feed(self, server: Any, data: bytes, rng: random.Random, most: int) -> None:
        """``data`` in random pieces, the reactor's turns between them."""
        while data:
            cut = rng.randint(1, min(len(data), most))
            server.dataReceived(data[:cut])
            data = data[cut:]
            self.clock.advance(0)

    def test_every_command_gets_one_answer(self) -> None:
        rng = random.Random(3501)
        for _ in range(40):
            server, transport = self.session()
            tags = [f"t{n}" for n in range(30)]
            data = b"p AUTHENTICATE PLAIN\r\n*\r\nq LOGIN joe secret\r\n" + b"".join(
                rng.choice(self.COMMANDS)
                .replace(b"{tag}", tag.encode())
                .replace(b"{{", b"{")
                .replace(b"}}", b"}")
                for tag in tags
            )
            self.feed(server, data, rng, 300)
            answered = re.findall(rb"^(\w+) (?:OK|NO|BAD) ", transport.value(), re.MULTILINE)
            self.assertEqual(answered, [b"p", b"q", *(tag.encode() for tag in tags)])
            self.assertFalse(transport.disconnecting)
            server.connectionLost(None)

    def test_mangled_input_never_breaks_the_session(self) -> None:
        """Random octets inserted anywhere: every tagged answer names a tag
        the client sent, nothing is a server error, and the connection is
        closed only with a BYE (three failed logins)."""
        rng = random.Random(1994)
        pieces = [
            command.replace(b"{tag}", b"%c" % rng.choice(b"abcdefgh"))
            .replace(b"{{", b"{")
            .replace(b"}}", b"}")
            for command in self.COMMANDS
        ]
        pieces += [b"a LOGIN joe secret\r\n", b"l AUTHENTICATE PLAIN\r\n", b"*\r\n"]
        for _ in range(60):
            server, transport = self.session()
            sent = b"a LOGIN joe secret\r\nb SELECT INBOX\r\n"
            server.dataReceived(sent)
            for _ in range(30):
                piece = bytearray(rng.choice(pieces))
                if rng.random() < 0.3:
                    for _ in range(rng.randint(1, 3)):
                        pos = rng.randrange(len(piece) + 1)
                        piece[pos:pos] = bytes([rng.randrange(256)])
                data = bytes(piece)
                sent += data
                self.feed(server, data, rng, len(data))
                if transport.disconnecting:
                    break
            output = transport.value()
            tags = {line.split(b" ", 1)[0] for line in sent.split(b"\r\n")}
            for tag in re.findall(rb"^(\S+) (?:OK|NO|BAD) ", output, re.MULTILINE):
                self.assertIn(tag, tags | {b"*"})
            self.assertNotIn(b"SERVERBUG", output)
            if transport.disconnecting:
                self.assertIn(b"* BYE ", output)
            server.connectionLost(None)


#: Every command with valid syntax, and the states it is valid in
#: (n: not authenticated, a: authenticated, s: selected).
STATE_TABLE = (
    ("CAPABILITY", "nas"),
    ("NOOP", "nas"),
    ("ID NIL", "nas"),
    ("LOGOUT", "nas"),
    ("STARTTLS", "n"),
    ("LOGIN joe wrong", "n"),
    ("AUTHENTICATE GSSAPI", "n"),
    ("ENABLE FOO", "a"),
    ("NAMESPACE", "as"),
    ("SELECT nothere", "as"),
    ("EXAMINE nothere", "as"),
    ("CREATE newbox", "as"),
    ("DELETE nothere", "as"),
    ("RENAME nothere other", "as"),
    ("SUBSCRIBE x", "as"),
    ("UNSUBSCRIBE x", "as"),
    ('LIST "" x', "as"),
    ('LSUB "" x', "as"),
    ("STATUS INBOX (MESSAGES)", "as"),
    ("APPEND INBOX {1+}\r\nx", "as"),
    ("IDLE\r\nDONE", "as"),
    ("CHECK", "s"),
    ("CLOSE", "s"),
    ("UNSELECT", "s"),
    ("EXPUNGE", "s"),
    ("UID EXPUNGE 1", "s"),
    ("FETCH 1 FLAGS", "s"),
    ("UID FETCH 1 FLAGS", "s"),
    ("STORE 1 +FLAGS (x)", "s"),
    ("UID STORE 1 +FLAGS (x)", "s"),
    ("SEARCH ALL", "s"),
    ("UID SEARCH ALL", "s"),
    ("COPY 1 INBOX", "s"),
    ("UID COPY 1 INBOX", "s"),
    ("MOVE 1 INBOX", "s"),
    ("UID MOVE 1 INBOX", "s"),
)
STATE_NAMES = {"n": "not authenticated", "a": "authenticated", "s": "selected"}


class StateTableTests(ServerTestBase):
    @defer.inlineCallbacks
    def test_every_command_in_every_state(self) -> Any:
        self.deliver(b"x\r\n")
        for state in "nas":
            for command, valid in STATE_TABLE:
                client = yield self.connect()
                if state != "n":
                    yield client.command("L", "LOGIN joe secret")
                if state == "s":
                    yield client.command("S", "SELECT INBOX")
                response = yield client.command("t", command)
                name = command.split(" (")[0].split("\r")[0].split(" ")
                key = " ".join(name[:2]) if name[0] == "UID" else name[0]
                refusal = f"t BAD {key} is not allowed in {STATE_NAMES[state]} state\r\n"
                if state in valid:
                    self.assertNotIn(b"not allowed", response, (state, command))
                    self.assertRegex(response, rb"(^|\n)t (OK|NO|BAD) ", (state, command))
                else:
                    self.assertEqual(response, refusal.encode(), (state, command))
                client.transport.loseConnection()

    def test_the_table_names_every_command(self) -> None:
        """A command added without its line here would go unchecked."""
        named = set()
        for command, _valid in STATE_TABLE:
            words = command.split("\r")[0].split(" ")
            named.add(" ".join(words[:2]) if words[0] == "UID" else words[0])
        self.assertEqual(named, {spec.key for spec in REGISTRY})
