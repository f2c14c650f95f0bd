"""The IMAP server, asserting the bytes on the wire: over loopback TCP, and
in process (a StringTransport) where a clock or the exact pieces matter.
The storage behind it is the memory backend (tests/imap_helpers.py)."""

from __future__ import annotations

import datetime
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import SynchronousTestCase

from mailsrv import __version__
from mailsrv.interfaces import DELETED, StoreMode
from mailsrv.policy import SessionPolicy
from tests.imap_helpers import (
    CAPS_BEFORE,
    Client,
    ServerTestBase,
    count_logouts,
    gone_on_claim,
    in_process,
    slow_next_select,
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
        self.assertEqual(
            response,
            b'* ID ("name" "mailsrv" "version" "%s")\r\na OK ID completed\r\n'
            % __version__.encode(),
        )
        yield client.command("L", "LOGIN joe secret")
        response = yield client.command("b", "NAMESPACE")
        self.assertEqual(
            response, b'* NAMESPACE (("" "/")) NIL NIL\r\nb OK NAMESPACE completed\r\n'
        )
        # Only what can be enabled is named (RFC 5161 3.2).
        response = yield client.command("c", "ENABLE X-UNKNOWN CONDSTORE")
        self.assertEqual(response, b"* ENABLED CONDSTORE\r\nc OK ENABLE completed\r\n")
        response = yield client.command("d", "ENABLE X-UNKNOWN")
        self.assertEqual(response, b"* ENABLED\r\nd OK ENABLE completed\r\n")


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
        # RFC 7162 3.2.11: the selected mailbox is closed first, and said so.
        self.assertEqual(
            response,
            b"* OK [CLOSED] Previous mailbox closed\r\n"
            b"a NO [NONEXISTENT] no mailbox named 'nothere'\r\n",
        )
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
        # MULTIAPPEND: each message longer than a line is spooled too.
        client.send(b"b APPEND INBOX {2000+}\r\n" + b"y" * 2000 + b" {2000+}\r\n")
        client.send(b"z" * 2000 + b"\r\n")
        response = yield client.until_tagged("b")
        self.assertEqual(
            response, b"b OK [APPENDUID %d 2:3] APPEND completed\r\n" % self.inbox.uidvalidity
        )
        self.assertEqual(self.contents(), {1: message, 2: b"y" * 2000, 3: b"z" * 2000})

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
        # A fetches: no EXPUNGE during FETCH, its numbers are unchanged.  The
        # UIDs it knows are answered from its view, message 2's too (RFC 2180
        # 4.1.2, as Dovecot answers); data it does not hold is reported lost.
        response = yield a.command("a1", "FETCH 1:3 (UID)")
        self.assertEqual(
            response,
            b"* 1 FETCH (UID 1)\r\n* 2 FETCH (UID 2)\r\n* 3 FETCH (UID 3)\r\n"
            b"a1 OK FETCH completed\r\n",
        )
        response = yield a.command("a1b", "FETCH 1:3 (RFC822.SIZE)")
        self.assertEqual(
            response,
            b"* 1 FETCH (RFC822.SIZE 4)\r\n* 3 FETCH (RFC822.SIZE 4)\r\n"
            b"a1b OK [EXPUNGEISSUED] Some messages were already expunged\r\n",
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
