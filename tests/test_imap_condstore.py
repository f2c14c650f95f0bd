"""CONDSTORE (RFC 7162 3.1) over the memory backend, byte for byte: the
RFC's own dialogues, with this server's numbers.

The memory backend's MODSEQs are easy to follow: a new mailbox starts at
1 and every append, every STORE that changes something and every expunge
takes the next one.  QRESYNC is tests/test_imap_qresync.py's.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from mailsrv.interfaces import DELETED, FLAGGED, SEEN, MailboxStatus
from mailsrv.storage.memory import MemoryMailbox
from tests.imap_helpers import ServerTestBase

#: What re-selecting says first (RFC 7162 3.2.11).
CLOSED = b"* OK [CLOSED] Previous mailbox closed\r\n"


def message(number: int) -> bytes:
    return b"Subject: %d\r\n\r\nbody %d\r\n" % (number, number)


class CondstoreTestBase(ServerTestBase):
    maxDiff = None

    def deliver_many(self, count: int) -> list[int]:
        """``count`` messages into joe's INBOX: UIDs 1..count, MODSEQs
        2..count+1, \\Recent for nobody (so FLAGS show what STORE set)."""
        uids = [self.deliver(message(n)) for n in range(1, count + 1)]
        self.inbox.claim_recent()
        return uids

    def select_lines(
        self,
        exists: int,
        uidnext: int,
        modseq: int | None,
        recent: int = 0,
        nomodseq: bool = False,
    ) -> bytes:
        """What SELECT INBOX answers before its tagged OK (and before any
        VANISHED), no message unseen-first line (tests mark everything
        \\Seen or ask for it)."""
        lines = [
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags\r\n",
            b"* %d EXISTS\r\n" % exists,
            b"* %d RECENT\r\n" % recent,
            b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % self.inbox.uidvalidity,
            b"* OK [UIDNEXT %d] Predicted next UID\r\n" % uidnext,
            b"* OK [MAILBOXID (%s)] Ok\r\n" % self.inbox.status().mailbox_id.encode(),
        ]
        if modseq is not None:
            lines.append(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % modseq)
        if nomodseq:
            lines.append(b"* OK [NOMODSEQ] This mailbox keeps no MODSEQs\r\n")
        return b"".join(lines)

    @defer.inlineCallbacks
    def seen_session(self, count: int) -> Any:
        """``count`` seen messages, and a session that selected them."""
        uids = self.deliver_many(count)
        self.inbox.store(uids, [SEEN], "add")  # one MODSEQ: count + 2
        client = yield self.login()
        yield client.command("S", "SELECT INBOX")
        return client


class SelectTests(CondstoreTestBase):
    @defer.inlineCallbacks
    def test_highestmodseq_only_once_enabled(self) -> Any:
        """Example 1 and 18: HIGHESTMODSEQ on SELECT once CONDSTORE is on,
        and SELECT (CONDSTORE) turns it on."""
        self.deliver_many(2)
        self.inbox.store([1, 2], [SEEN], "add")
        client = yield self.login()
        response = yield client.command("a", "SELECT INBOX")
        self.assertEqual(
            response, self.select_lines(2, 3, None) + b"a OK [READ-WRITE] SELECT completed\r\n"
        )
        response = yield client.command("b", "SELECT INBOX (CONDSTORE)")
        self.assertEqual(
            response,
            CLOSED + self.select_lines(2, 3, 4) + b"b OK [READ-WRITE] SELECT completed\r\n",
        )
        # On for the rest of the connection, in EXAMINE too.
        response = yield client.command("c", "EXAMINE INBOX")
        self.assertIn(b"* OK [HIGHESTMODSEQ 4] Highest\r\nc OK [READ-ONLY]", response)

    @defer.inlineCallbacks
    def test_enable_condstore_before_select(self) -> Any:
        self.deliver_many(1)
        client = yield self.login()
        response = yield client.command("e", "ENABLE CONDSTORE")
        self.assertEqual(response, b"* ENABLED CONDSTORE\r\ne OK ENABLE completed\r\n")
        response = yield client.command("s", "SELECT INBOX")
        self.assertIn(b"* OK [HIGHESTMODSEQ 2] Highest\r\ns OK [READ-WRITE]", response)

    @defer.inlineCallbacks
    def test_bad_select_parameters(self) -> Any:
        """RFC 4466 parameters are checked before the mailbox is opened; a BAD
        leaves no mailbox selected (RFC 7162 3.2.5)."""
        client = yield self.login()
        for tag, params, answer in (
            ("a", "(FOO)", b"SELECT parameter FOO is not supported"),
            ("b", "(CONDSTORE 1)", b"SELECT parameter CONDSTORE is not supported"),
            ("c", "(CONDSTORE CONDSTORE)", b"SELECT parameter CONDSTORE is given twice"),
            ("d", "(QRESYNC (1 1))", b"QRESYNC is not enabled (send ENABLE QRESYNC first"),
        ):
            response = yield client.command(tag, f"SELECT INBOX {params}")
            self.assertTrue(response.startswith(tag.encode() + b" BAD " + answer), response)
        response = yield client.command("f", "FETCH 1 (FLAGS)")
        self.assertEqual(response, b"f BAD FETCH is not allowed in authenticated state\r\n")

    @defer.inlineCallbacks
    def test_closed_when_a_selection_replaces_another(self) -> Any:
        """RFC 7162 3.2.11: CLOSED before the new mailbox's responses, even
        without CONDSTORE; not after CLOSE or UNSELECT."""
        client = yield self.login()
        response = yield client.command("a", "SELECT INBOX")
        self.assertFalse(response.startswith(CLOSED), response)
        response = yield client.command("b", "EXAMINE INBOX")
        self.assertTrue(response.startswith(CLOSED + b"* FLAGS"), response)
        response = yield client.command("c", "UNSELECT")
        self.assertEqual(response, b"c OK UNSELECT completed\r\n")
        response = yield client.command("d", "SELECT INBOX")
        self.assertFalse(response.startswith(CLOSED), response)
        response = yield client.command("e", "CLOSE")
        self.assertEqual(response, b"e OK CLOSE completed\r\n")


class EnablingTests(CondstoreTestBase):
    @defer.inlineCallbacks
    def test_fetch_modseq(self) -> Any:
        """Example 13, and 3.1: the first enabling command with a mailbox
        selected reports its HIGHESTMODSEQ (once)."""
        client = yield self.seen_session(3)
        self.inbox.store([2], [FLAGGED], "add")  # 2 is now at MODSEQ 6
        response = yield client.command("a", "FETCH 1:3 (MODSEQ)")
        # The change is told before the command enables CONDSTORE: as before.
        self.assertEqual(
            response,
            b"* 2 FETCH (FLAGS (\\Flagged \\Seen))\r\n"
            b"* OK [HIGHESTMODSEQ 6] Highest\r\n"
            b"* 1 FETCH (MODSEQ (5))\r\n"
            b"* 2 FETCH (MODSEQ (6))\r\n"
            b"* 3 FETCH (MODSEQ (5))\r\n"
            b"a OK FETCH completed\r\n",
        )
        response = yield client.command("b", "UID FETCH 2 (FLAGS MODSEQ)")
        self.assertEqual(
            response,
            b"* 2 FETCH (FLAGS (\\Flagged \\Seen) MODSEQ (6) UID 2)\r\nb OK FETCH completed\r\n",
        )

    @defer.inlineCallbacks
    def test_status_highestmodseq(self) -> Any:
        """Example 17; STATUS (HIGHESTMODSEQ) is an enabling command too."""
        client = yield self.seen_session(2)
        self.account().create_mailbox("blurdybloop")
        self.deliver(message(9), folder="blurdybloop")
        response = yield client.command("a", "STATUS blurdybloop (UIDNEXT MESSAGES HIGHESTMODSEQ)")
        self.assertEqual(
            response,
            b"* OK [HIGHESTMODSEQ 4] Highest\r\n"
            b"* STATUS blurdybloop (UIDNEXT 2 MESSAGES 1 HIGHESTMODSEQ 2)\r\n"
            b"a OK STATUS completed\r\n",
        )

    @defer.inlineCallbacks
    def test_unsolicited_updates_carry_uid_and_modseq(self) -> Any:
        """Example 14 with three sessions: a CONDSTORE-aware one hears flag
        changes with UID and MODSEQ (3.2.4); one that is not, as before."""
        self.deliver_many(7)
        self.inbox.store(range(1, 8), [SEEN], "add")  # MODSEQ 9
        first = yield self.login()
        yield first.command("S", "SELECT INBOX (CONDSTORE)")
        second = yield self.login()
        yield second.command("S", "SELECT INBOX (CONDSTORE)")
        plain = yield self.selected()
        response = yield first.command("A160", "STORE 7 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(response, b"* 7 FETCH (UID 7 MODSEQ (10))\r\nA160 OK STORE completed\r\n")
        response = yield second.command("C180", "NOOP")
        self.assertEqual(
            response,
            b"* 7 FETCH (UID 7 MODSEQ (10) FLAGS (\\Deleted \\Seen))\r\nC180 OK NOOP completed\r\n",
        )
        response = yield plain.command("D210", "NOOP")
        self.assertEqual(
            response, b"* 7 FETCH (FLAGS (\\Deleted \\Seen))\r\nD210 OK NOOP completed\r\n"
        )
        response = yield first.command("A330", "STORE 7 -FLAGS.SILENT (\\Seen)")
        self.assertEqual(response, b"* 7 FETCH (UID 7 MODSEQ (11))\r\nA330 OK STORE completed\r\n")
        response = yield second.command("C360", "NOOP")
        self.assertEqual(
            response,
            b"* 7 FETCH (UID 7 MODSEQ (11) FLAGS (\\Deleted))\r\nC360 OK NOOP completed\r\n",
        )

    @defer.inlineCallbacks
    def test_fetch_that_sets_seen(self) -> Any:
        """3.2.4: a FETCH that sets \\Seen reports it with UID and MODSEQ."""
        self.deliver_many(1)
        client = yield self.login()
        yield client.command("S", "SELECT INBOX (CONDSTORE)")
        response = yield client.command("a", "FETCH 1 (BODY[TEXT])")
        self.assertEqual(
            response,
            b"* 1 FETCH (BODY[TEXT] {8}\r\nbody 1\r\n FLAGS (\\Seen) UID 1 MODSEQ (3))\r\n"
            b"a OK FETCH completed\r\n",
        )


class StoreTests(CondstoreTestBase):
    @defer.inlineCallbacks
    def test_every_message_passes(self) -> Any:
        """Examples 3 and 4: the MODSEQ of each message changed, even with
        .SILENT; a message whose flags did not change keeps its MODSEQ
        and is not reported (3.1.11)."""
        client = yield self.seen_session(8)  # all at MODSEQ 10
        response = yield client.command(
            "a103", "UID STORE 6,4,8 (UNCHANGEDSINCE 10) +FLAGS.SILENT (\\Deleted)"
        )
        self.assertEqual(
            response,
            b"* OK [HIGHESTMODSEQ 10] Highest\r\n"
            b"* 4 FETCH (UID 4 MODSEQ (11))\r\n"
            b"* 6 FETCH (UID 6 MODSEQ (11))\r\n"
            b"* 8 FETCH (UID 8 MODSEQ (11))\r\n"
            b"a103 OK STORE completed\r\n",
        )
        response = yield client.command(
            "a104", "STORE * (UNCHANGEDSINCE 11) +FLAGS.SILENT (\\Deleted $Processed)"
        )
        self.assertEqual(
            response,
            b"* 8 FETCH (UID 8 MODSEQ (12))\r\na104 OK STORE completed\r\n",
        )
        response = yield client.command(
            "c101", "STORE 8 (UNCHANGEDSINCE 12) +FLAGS.SILENT (\\Seen)"
        )
        self.assertEqual(response, b"c101 OK STORE completed\r\n")

    @defer.inlineCallbacks
    def test_modified(self) -> Any:
        """Examples 6 and 10: the messages changed since are left alone,
        named in [MODIFIED] (message numbers, or UIDs for UID STORE), and
        reported with their flags and MODSEQ."""
        client = yield self.seen_session(9)  # all at MODSEQ 11
        self.inbox.store([7], [DELETED], "add")  # 12
        self.inbox.store([9], [FLAGGED], "add")  # 13
        response = yield client.command(
            "d105", "STORE 7,5,9 (UNCHANGEDSINCE 11) +FLAGS.SILENT (\\Deleted)"
        )
        self.assertEqual(
            response,
            b"* 7 FETCH (FLAGS (\\Deleted \\Seen))\r\n"
            b"* 9 FETCH (FLAGS (\\Flagged \\Seen))\r\n"
            b"* OK [HIGHESTMODSEQ 13] Highest\r\n"
            b"* 5 FETCH (UID 5 MODSEQ (14))\r\n"
            b"* 7 FETCH (UID 7 MODSEQ (12) FLAGS (\\Deleted \\Seen))\r\n"
            b"* 9 FETCH (UID 9 MODSEQ (13) FLAGS (\\Flagged \\Seen))\r\n"
            b"d105 OK [MODIFIED 7,9] Conditional STORE failed for some messages\r\n",
        )
        self.assertEqual(self.inbox.fetch([9])[0].flags, frozenset({SEEN, FLAGGED}))
        response = yield client.command("d106", "UID STORE 4:7 (UNCHANGEDSINCE 11) -FLAGS (\\Seen)")
        self.assertEqual(
            response,
            b"* 4 FETCH (UID 4 MODSEQ (15) FLAGS ())\r\n"
            b"* 6 FETCH (UID 6 MODSEQ (15) FLAGS ())\r\n"
            b"* 5 FETCH (UID 5 MODSEQ (14) FLAGS (\\Deleted \\Seen))\r\n"
            b"* 7 FETCH (UID 7 MODSEQ (12) FLAGS (\\Deleted \\Seen))\r\n"
            b"d106 OK [MODIFIED 5,7] Conditional STORE failed for some messages\r\n",
        )

    @defer.inlineCallbacks
    def test_unchangedsince_zero_always_fails(self) -> Any:
        """Example 7: a system flag always exists, so 0 fails."""
        client = yield self.seen_session(1)
        response = yield client.command(
            "a102", "STORE 1 (UNCHANGEDSINCE 0) +FLAGS.SILENT ($MDNSent)"
        )
        self.assertEqual(
            response,
            b"* OK [HIGHESTMODSEQ 3] Highest\r\n"
            b"* 1 FETCH (UID 1 MODSEQ (3) FLAGS (\\Seen))\r\n"
            b"a102 OK [MODIFIED 1] Conditional STORE failed for some messages\r\n",
        )

    @defer.inlineCallbacks
    def test_plain_store_once_enabled(self) -> Any:
        """3.2.4: every STORE's responses carry UID and MODSEQ once
        CONDSTORE is on; .SILENT still reports what changed, nothing else."""
        self.deliver_many(2)
        client = yield self.login()
        yield client.command("S", "SELECT INBOX (CONDSTORE)")
        response = yield client.command("a", "STORE 1:2 +FLAGS (\\Seen)")
        self.assertEqual(
            response,
            b"* 1 FETCH (UID 1 MODSEQ (4) FLAGS (\\Seen))\r\n"
            b"* 2 FETCH (UID 2 MODSEQ (4) FLAGS (\\Seen))\r\n"
            b"a OK STORE completed\r\n",
        )
        response = yield client.command("b", "STORE 1:2 +FLAGS.SILENT (\\Seen \\Flagged)")
        self.assertEqual(
            response,
            b"* 1 FETCH (UID 1 MODSEQ (5))\r\n"
            b"* 2 FETCH (UID 2 MODSEQ (5))\r\n"
            b"b OK STORE completed\r\n",
        )
        response = yield client.command("c", "STORE 1:2 +FLAGS.SILENT (\\Seen)")
        self.assertEqual(response, b"c OK STORE completed\r\n")

    @defer.inlineCallbacks
    def test_bad_unchangedsince(self) -> Any:
        client = yield self.seen_session(1)
        for tag, text in (
            ("a", "STORE 1 (UNCHANGEDSINCE 1 UNCHANGEDSINCE 2) +FLAGS (\\Seen)"),
            ("b", "STORE 1 (UNCHANGEDSINCE 99999999999999999999) +FLAGS (\\Seen)"),
            ("c", "STORE 1 (UNCHANGEDSINCE x) +FLAGS (\\Seen)"),
        ):
            response = yield client.command(tag, text)
            self.assertTrue(response.startswith(tag.encode() + b" BAD "), response)


class FetchTests(CondstoreTestBase):
    @defer.inlineCallbacks
    def test_changedsince(self) -> Any:
        """Example 12: only the messages changed since, with MODSEQ."""
        client = yield self.seen_session(8)  # MODSEQ 10
        self.inbox.store([4], [DELETED], "add")  # 11
        self.inbox.store([8, 6], ["$NoJunk"], "add")  # 12
        response = yield client.command("s100", "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 10)")
        self.assertEqual(
            response,
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $NoJunk)\r\n"
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $NoJunk"
            b" \\*)] Flags\r\n"
            b"* 4 FETCH (FLAGS (\\Deleted \\Seen))\r\n"
            b"* 6 FETCH (FLAGS (\\Seen $NoJunk))\r\n"
            b"* 8 FETCH (FLAGS (\\Seen $NoJunk))\r\n"
            b"* OK [HIGHESTMODSEQ 12] Highest\r\n"
            b"* 4 FETCH (FLAGS (\\Deleted \\Seen) UID 4 MODSEQ (11))\r\n"
            b"* 6 FETCH (FLAGS (\\Seen $NoJunk) UID 6 MODSEQ (12))\r\n"
            b"* 8 FETCH (FLAGS (\\Seen $NoJunk) UID 8 MODSEQ (12))\r\n"
            b"s100 OK FETCH completed\r\n",
        )
        response = yield client.command("s101", "FETCH 5:8 (FLAGS) (CHANGEDSINCE 11)")
        self.assertEqual(
            response,
            b"* 6 FETCH (FLAGS (\\Seen $NoJunk) MODSEQ (12))\r\n"
            b"* 8 FETCH (FLAGS (\\Seen $NoJunk) MODSEQ (12))\r\n"
            b"s101 OK FETCH completed\r\n",
        )
        response = yield client.command("s102", "FETCH 1:* (UID) (CHANGEDSINCE 12)")
        self.assertEqual(response, b"s102 OK FETCH completed\r\n")

    @defer.inlineCallbacks
    def test_bad_modifiers(self) -> Any:
        client = yield self.seen_session(1)
        for tag, text, answer in (
            ("a", "FETCH 1 (FLAGS) (CHANGEDSINCE 1:2)", b"CHANGEDSINCE needs a mod-sequence"),
            ("b", "FETCH 1 (FLAGS) (VANISHED)", b"VANISHED is a UID FETCH modifier"),
            ("c", "UID FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)", b"VANISHED needs QRESYNC"),
            ("d", "FETCH 1 (FLAGS) (CHANGEDSINCE 1 PARTIAL 1)", b"FETCH modifier PARTIAL"),
        ):
            response = yield client.command(tag, text)
            self.assertTrue(response.startswith(tag.encode() + b" BAD " + answer), response)


class SearchTests(CondstoreTestBase):
    @defer.inlineCallbacks
    def test_search_modseq(self) -> Any:
        """Examples 15 and 16: the highest MODSEQ of what was found, after
        the numbers; none when nothing is found."""
        client = yield self.seen_session(6)  # MODSEQ 8
        self.inbox.store([2, 5], ["\\Draft"], "add")  # 9
        self.inbox.store([6], [FLAGGED], "add")  # 10
        response = yield client.command("a", 'SEARCH MODSEQ "/flags/\\\\draft" all 9')
        self.assertEqual(
            response,
            b"* 2 FETCH (FLAGS (\\Draft \\Seen))\r\n"
            b"* 5 FETCH (FLAGS (\\Draft \\Seen))\r\n"
            b"* 6 FETCH (FLAGS (\\Flagged \\Seen))\r\n"
            b"* OK [HIGHESTMODSEQ 10] Highest\r\n"
            b"* SEARCH 2 5 6 (MODSEQ 10)\r\n"
            b"a OK SEARCH completed\r\n",
        )
        response = yield client.command("b", "UID SEARCH MODSEQ 9 DRAFT")
        self.assertEqual(response, b"* SEARCH 2 5 (MODSEQ 9)\r\nb OK SEARCH completed\r\n")
        response = yield client.command("t", "SEARCH OR NOT MODSEQ 1 LARGER 50000")
        self.assertEqual(response, b"* SEARCH\r\nt OK SEARCH completed\r\n")

    @defer.inlineCallbacks
    def test_esearch_modseq(self) -> Any:
        """Example 19 and RFC 4731 3.2: MODSEQ of MIN and/or MAX alone,
        else the highest of what was found."""
        client = yield self.seen_session(6)  # MODSEQ 8
        self.inbox.store([5], [FLAGGED], "add")  # 9
        self.inbox.store([2], [FLAGGED], "add")  # 10
        yield client.command("n", "NOOP")
        response = yield client.command("z", "SEARCH RETURN (ALL) MODSEQ 11")
        self.assertEqual(
            response,
            b'* OK [HIGHESTMODSEQ 10] Highest\r\n* ESEARCH (TAG "z")\r\nz OK SEARCH completed\r\n',
        )
        for tag, options, answer in (
            ("a", "ALL", b"ALL 2,5 MODSEQ 10"),
            ("b", "MIN", b"MIN 2 MODSEQ 10"),
            ("c", "MAX", b"MAX 5 MODSEQ 9"),
            ("d", "MIN MAX", b"MIN 2 MAX 5 MODSEQ 10"),
            ("e", "COUNT", b"COUNT 2 MODSEQ 10"),
        ):
            response = yield client.command(tag, f"SEARCH RETURN ({options}) MODSEQ 9")
            self.assertEqual(
                response,
                b'* ESEARCH (TAG "%s") %s\r\n%s OK SEARCH completed\r\n'
                % (tag.encode(), answer, tag.encode()),
            )
        response = yield client.command("f", "UID SEARCH RETURN (COUNT) MODSEQ 11")
        self.assertEqual(response, b'* ESEARCH (TAG "f") UID COUNT 0\r\nf OK SEARCH completed\r\n')
        response = yield client.command("g", "SEARCH MODSEQ 99999999999999999999")
        self.assertTrue(response.startswith(b"g BAD "), response)


class _NoModseqMailbox(MemoryMailbox):
    """A mailbox of a backend that keeps no MODSEQs (RFC 7162 3.1.2.2)."""

    @property
    def highest_modseq(self) -> int:
        return 0

    def status(self) -> MailboxStatus:
        import attrs

        return attrs.evolve(super().status(), highest_modseq=0)


class NoModseqTests(CondstoreTestBase):
    @defer.inlineCallbacks
    def test_nomodseq(self) -> Any:
        """Example 2: NOMODSEQ at SELECT, and BAD for what needs MODSEQs
        while it is selected; QRESYNC falls back to EXPUNGE and ignores
        its SELECT parameter (3.2.5.1)."""
        self.deliver_many(2)
        self.inbox.store([1, 2], [SEEN, DELETED], "add")
        self.patch(type(self.account()), "get_mailbox", _no_modseq_mailbox)
        client = yield self.login()
        yield client.command("e", "ENABLE QRESYNC")
        response = yield client.command("a", f"SELECT INBOX (QRESYNC ({self.inbox.uidvalidity} 1))")
        self.assertEqual(
            response,
            self.select_lines(2, 3, None, nomodseq=True)
            + b"a OK [READ-WRITE] SELECT completed\r\n",
        )
        for tag, text in (
            ("b", "FETCH 1 (MODSEQ)"),
            ("c", "FETCH 1 (FLAGS) (CHANGEDSINCE 1)"),
            ("d", "STORE 1 (UNCHANGEDSINCE 5) +FLAGS (\\Seen)"),
            ("f", "SEARCH MODSEQ 1"),
        ):
            response = yield client.command(tag, text)
            self.assertTrue(
                response.startswith(tag.encode() + b" BAD ")
                and b"this mailbox keeps no MODSEQs (NOMODSEQ)" in response,
                response,
            )
        response = yield client.command("g", "EXPUNGE")
        self.assertEqual(response, b"* 2 EXPUNGE\r\n* 1 EXPUNGE\r\ng OK EXPUNGE completed\r\n")


def _no_modseq_mailbox(account: Any, name: str) -> MemoryMailbox:
    return _NoModseqMailbox(account._state(name))
