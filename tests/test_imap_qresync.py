"""QRESYNC (RFC 7162 3.2) over the memory backend, byte for byte: the RFC's
own dialogues, with this server's numbers (MODSEQs as in
tests/test_imap_condstore.py: every append, effective STORE and expunge
takes the next one, from 1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer

from mailsrv.interfaces import DELETED, FLAGGED, SEEN
from tests.test_imap_condstore import CLOSED, CondstoreTestBase, message


def listed(uids: Sequence[int] | None) -> list[int] | None:
    """``uids`` as a list, None kept (the log no longer reaches back)."""
    return None if uids is None else list(uids)


class QresyncTestBase(CondstoreTestBase):
    @defer.inlineCallbacks
    def qresync_session(self, select: str | None = "INBOX") -> Any:
        """A session that ENABLEd QRESYNC (and selected ``select``)."""
        client = yield self.login()
        response = yield client.command("E", "ENABLE QRESYNC")
        self.assertEqual(response, b"* ENABLED QRESYNC\r\nE OK ENABLE completed\r\n")
        if select is not None:
            response = yield client.command("S", f"SELECT {select}")
            self.assertIn(b"S OK [READ-WRITE]", response)
        return client

    def changes_while_away(self) -> None:
        """Ten seen messages at MODSEQ 12 (what the client knows), then:
        3 flagged (13), 2 and 4 deleted (14) and expunged (15), 9 answered
        (16), and an 11th message (17)."""
        uids = self.deliver_many(10)
        self.inbox.store(uids, [SEEN], "add")
        self.inbox.store([3], [FLAGGED], "add")
        self.inbox.store([2, 4], [DELETED], "add")
        self.inbox.expunge()
        self.inbox.store([9], ["\\Answered"], "add")
        self.deliver(message(11))
        self.inbox.claim_recent()


class EnableTests(QresyncTestBase):
    @defer.inlineCallbacks
    def test_enable(self) -> Any:
        """3.2.3: ENABLE QRESYNC and ENABLE QRESYNC CONDSTORE."""
        client = yield self.login()
        response = yield client.command("a", "ENABLE QRESYNC CONDSTORE")
        self.assertEqual(response, b"* ENABLED QRESYNC CONDSTORE\r\na OK ENABLE completed\r\n")
        response = yield client.command("b", "SELECT INBOX")
        self.assertIn(b"* OK [HIGHESTMODSEQ 1] Highest\r\nb OK [READ-WRITE]", response)

    @defer.inlineCallbacks
    def test_bad_qresync_parameters(self) -> Any:
        """3.2.5: checked before the mailbox is opened; BAD, nothing selected."""
        client = yield self.qresync_session(None)
        for tag, value, answer in (
            ("a", "(0 1)", b"QRESYNC: invalid UIDVALIDITY"),
            ("b", "(1)", b"QRESYNC needs (uidvalidity modseq"),
            ("c", "(1 0 1:*)", b"QRESYNC: known-uids must not contain '*'"),
            ("d", "(1 1 5:3)", b"QRESYNC: known-uids must be in ascending order"),
            ("e", "(1 1 1:5 (1:3 1:2))", b"QRESYNC: the sets of seq-match data differ"),
            ("f", "(1 1 1:5 (3,1 1:2))", b"QRESYNC: known-sequence-set must be in ascending"),
            ("g", "(1 x)", b"QRESYNC needs a mod-sequence value"),
            ("h", "(1 1 1:5 1:3 1:3)", b"QRESYNC needs (uidvalidity modseq"),
        ):
            response = yield client.command(tag, f"SELECT INBOX (QRESYNC {value})")
            self.assertTrue(response.startswith(tag.encode() + b" BAD " + answer), response)
        response = yield client.command("z", "FETCH 1 (FLAGS)")
        self.assertEqual(response, b"z BAD FETCH is not allowed in authenticated state\r\n")


class SelectTests(QresyncTestBase):
    @defer.inlineCallbacks
    def test_resync(self) -> Any:
        """3.2.5.1 and section 6: what was expunged, and what changed, of
        the UIDs the client knows; nothing about the new message it did not
        know of (it learns of that from EXISTS and UIDNEXT)."""
        self.changes_while_away()
        client = yield self.qresync_session(None)
        validity = self.inbox.uidvalidity
        response = yield client.command("A03", f"SELECT INBOX (QRESYNC ({validity} 12 1:10))")
        self.assertEqual(
            response,
            self.select_lines(9, 12, 17).replace(
                b"* 0 RECENT\r\n", b"* 0 RECENT\r\n* OK [UNSEEN 9] First unseen\r\n"
            )
            + b"* VANISHED (EARLIER) 2,4\r\n"
            + b"* 2 FETCH (UID 3 FLAGS (\\Flagged \\Seen) MODSEQ (13))\r\n"
            + b"* 7 FETCH (UID 9 FLAGS (\\Answered \\Seen) MODSEQ (16))\r\n"
            + b"A03 OK [READ-WRITE] SELECT completed\r\n",
        )
        # Without known UIDs: every UID below UIDNEXT (3.2.5.1).
        response = yield client.command("A04", f"EXAMINE INBOX (QRESYNC ({validity} 15))")
        self.assertTrue(response.startswith(CLOSED), response)
        self.assertTrue(
            response.endswith(
                b"* OK [HIGHESTMODSEQ 17] Highest\r\n"
                b"* 7 FETCH (UID 9 FLAGS (\\Answered \\Seen) MODSEQ (16))\r\n"
                b"* 9 FETCH (UID 11 FLAGS () MODSEQ (17))\r\n"
                b"A04 OK [READ-ONLY] EXAMINE completed\r\n"
            ),
            response,
        )
        # Nothing changed since: nothing to say.
        response = yield client.command("A05", f"EXAMINE INBOX (QRESYNC ({validity} 17 1:11))")
        self.assertTrue(
            response.endswith(
                b"* OK [HIGHESTMODSEQ 17] Highest\r\nA05 OK [READ-ONLY] EXAMINE completed\r\n"
            ),
            response,
        )

    @defer.inlineCallbacks
    def test_uidvalidity_mismatch(self) -> Any:
        """3.2.5: another UIDVALIDITY, and the rest is ignored."""
        self.changes_while_away()
        client = yield self.qresync_session(None)
        response = yield client.command("A02", "SELECT INBOX (QRESYNC (67890007 12 1:10))")
        self.assertTrue(
            response.endswith(
                b"* OK [HIGHESTMODSEQ 17] Highest\r\nA02 OK [READ-WRITE] SELECT completed\r\n"
            ),
            response,
        )

    @defer.inlineCallbacks
    def test_beyond_the_expunge_log(self) -> Any:
        """3.2.5.2's examples: the log has forgotten the expunges, and only
        UIDs divisible by three are left.  Every UID the client knows that
        no message has is reported, except up to the last pair of sequence
        match data that still matches."""
        self.deliver_many(30)
        self.inbox.store(range(1, 31), [SEEN], "add")  # 32
        self.inbox.store([uid for uid in range(1, 31) if uid % 3], [DELETED], "add")  # 33
        self.inbox.expunge()  # 34
        self.inbox.forget_expunges()
        self.inbox.store([30], [FLAGGED], "add")  # 35
        client = yield self.qresync_session(None)
        validity = self.inbox.uidvalidity
        vanished = b",".join(b"%d:%d" % (n, n + 1) for n in range(1, 30, 3))
        response = yield client.command("A04", f"EXAMINE INBOX (QRESYNC ({validity} 32 1:29))")
        self.assertTrue(
            response.endswith(
                b"* OK [HIGHESTMODSEQ 35] Highest\r\n"
                b"* VANISHED (EARLIER) %s\r\n"
                b"A04 OK [READ-ONLY] EXAMINE completed\r\n" % vanished
            ),
            response,
        )
        # Every pair matches: the client missed nothing up to UID 27.
        response = yield client.command(
            "B04", f"EXAMINE INBOX (QRESYNC ({validity} 32 1:30 (5,7,9 15,21,27)))"
        )
        self.assertTrue(
            response.endswith(
                b"* OK [HIGHESTMODSEQ 35] Highest\r\n"
                b"* VANISHED (EARLIER) 28:29\r\n"
                b"* 10 FETCH (UID 30 FLAGS (\\Flagged \\Seen) MODSEQ (35))\r\n"
                b"B04 OK [READ-ONLY] EXAMINE completed\r\n"
            ),
            response,
        )
        # The third pair no longer matches: from UID 22 on.  (From MODSEQ 34
        # on the log is exact, and the match data is not needed.)
        response = yield client.command(
            "C04", f"EXAMINE INBOX (QRESYNC ({validity} 32 1:30 (5,7,9 15,21,28)))"
        )
        self.assertTrue(
            response.endswith(
                b"* OK [HIGHESTMODSEQ 35] Highest\r\n"
                b"* VANISHED (EARLIER) 22:23,25:26,28:29\r\n"
                b"* 10 FETCH (UID 30 FLAGS (\\Flagged \\Seen) MODSEQ (35))\r\n"
                b"C04 OK [READ-ONLY] EXAMINE completed\r\n"
            ),
            response,
        )

    @defer.inlineCallbacks
    def test_an_empty_mailbox(self) -> Any:
        """3.2.5.1: no known UIDs in a mailbox that never had a message is
        an empty set."""
        client = yield self.qresync_session(None)
        response = yield client.command("a", f"SELECT INBOX (QRESYNC ({self.inbox.uidvalidity} 1))")
        self.assertEqual(
            response,
            self.select_lines(0, 1, 1) + b"a OK [READ-WRITE] SELECT completed\r\n",
        )


class ExpungeTests(QresyncTestBase):
    @defer.inlineCallbacks
    def test_expunge_and_uid_expunge(self) -> Any:
        """3.2.7, 3.2.9 and 3.2.10.2's example: VANISHED with the UIDs, and
        the new HIGHESTMODSEQ in the tagged answer."""
        self.deliver_many(11)
        self.inbox.store(range(1, 12), [SEEN], "add")  # 13
        self.inbox.store([3, 4, 7, 11], [DELETED], "add")  # 14
        client = yield self.qresync_session()
        response = yield client.command("A202", "EXPUNGE")
        self.assertEqual(
            response, b"* VANISHED 3:4,7,11\r\nA202 OK [HIGHESTMODSEQ 15] EXPUNGE completed\r\n"
        )
        self.inbox.store([2, 5], [DELETED], "add")  # 16
        response = yield client.command("A210", "UID EXPUNGE 1:5")
        self.assertEqual(
            response,
            b"* 2 FETCH (UID 2 MODSEQ (16) FLAGS (\\Deleted \\Seen))\r\n"
            b"* 3 FETCH (UID 5 MODSEQ (16) FLAGS (\\Deleted \\Seen))\r\n"
            b"* VANISHED 2,5\r\nA210 OK [HIGHESTMODSEQ 17] EXPUNGE completed\r\n",
        )
        response = yield client.command("A211", "EXPUNGE")
        self.assertEqual(response, b"A211 OK EXPUNGE completed\r\n")

    @defer.inlineCallbacks
    def test_close_says_nothing(self) -> Any:
        """3.2.8: CLOSE expunges (with a MODSEQ) but sends no HIGHESTMODSEQ."""
        self.deliver_many(2)
        self.inbox.store([1], [DELETED], "add")  # 4
        client = yield self.qresync_session()
        response = yield client.command("A202", "CLOSE")
        self.assertEqual(response, b"A202 OK CLOSE completed\r\n")
        self.assertEqual(listed(self.inbox.vanished_since(4)), [1])

    @defer.inlineCallbacks
    def test_move(self) -> Any:
        """RFC 6851 4.4: MOVE's expunges are VANISHED, with HIGHESTMODSEQ."""
        self.deliver_many(3)
        self.account().create_mailbox("Archive")
        client = yield self.qresync_session()
        response = yield client.command("m", "UID MOVE 1:2 Archive")
        self.assertEqual(
            response,
            b"* OK [COPYUID %d 1:2 1:2] Moved\r\n"
            b"* VANISHED 1:2\r\n"
            b"m OK [HIGHESTMODSEQ 5] MOVE completed\r\n" % self.mailbox("Archive").uidvalidity,
        )

    @defer.inlineCallbacks
    def test_other_sessions_expunges(self) -> Any:
        """3.2.10.2: expunges by another session are VANISHED too, only for
        messages this session was told about, and never during FETCH, STORE
        or SEARCH; a session without QRESYNC still hears EXPUNGE."""
        self.deliver_many(4)
        client = yield self.qresync_session()
        plain = yield self.selected()
        other = yield self.selected()
        yield other.command("a", "STORE 2:3 +FLAGS.SILENT (\\Deleted)")
        yield other.command("b", "EXPUNGE")
        response = yield client.command("c", "NOOP")
        # (The flags of messages told expunged no longer matter.)
        self.assertEqual(response, b"* VANISHED 2:3\r\nc OK NOOP completed\r\n")
        response = yield plain.command("d", "NOOP")
        self.assertEqual(response, b"* 3 EXPUNGE\r\n* 2 EXPUNGE\r\nd OK NOOP completed\r\n")
        # A message that came and went before this session heard of it.
        uid = self.deliver(message(5))
        self.inbox.store([uid], [DELETED], "add")
        self.inbox.expunge()
        response = yield client.command("e", "NOOP")
        self.assertEqual(response, b"e OK NOOP completed\r\n")
        response = yield client.command("f", "FETCH 1:* (UID)")
        self.assertEqual(
            response,
            b"* 1 FETCH (UID 1)\r\n* 2 FETCH (UID 4)\r\nf OK FETCH completed\r\n",
        )

    @defer.inlineCallbacks
    def test_held_back_expunge_keeps_highestmodseq_below_it(self) -> Any:
        """Section 6's example: while an expunge waits (no VANISHED during
        STORE), the MODSEQs the command shows are above it, so the client is
        told a HIGHESTMODSEQ below the expunge's; after the VANISHED, the
        new one."""
        self.deliver_many(3)
        self.inbox.store([1, 2, 3], [SEEN], "add")  # 5
        client = yield self.qresync_session()
        self.inbox.store([3], [DELETED], "add")  # 6
        self.inbox.expunge()  # 7
        response = yield client.command("A150", "STORE 1:2 +FLAGS.SILENT (\\Flagged)")
        self.assertEqual(
            response,
            b"* OK [HIGHESTMODSEQ 5] Expunges pending\r\n"
            b"* 1 FETCH (UID 1 MODSEQ (8))\r\n"
            b"* 2 FETCH (UID 2 MODSEQ (8))\r\n"
            b"* OK [HIGHESTMODSEQ 5] Expunges pending\r\n"
            b"A150 OK STORE completed\r\n",
        )
        response = yield client.command("A152", "NOOP")
        self.assertEqual(response, b"* VANISHED 3\r\nA152 OK NOOP completed\r\n")
        response = yield client.command("A153", "EXPUNGE")
        self.assertEqual(response, b"A153 OK EXPUNGE completed\r\n")


class FetchVanishedTests(QresyncTestBase):
    @defer.inlineCallbacks
    def test_uid_fetch_vanished(self) -> Any:
        """3.2.6's example: one command for the changes and the expunges of
        a UID range, VANISHED (EARLIER) first."""
        self.changes_while_away()
        client = yield self.qresync_session()
        response = yield client.command("s100", "UID FETCH 3:8 (FLAGS) (CHANGEDSINCE 12 VANISHED)")
        self.assertEqual(
            response,
            b"* VANISHED (EARLIER) 4\r\n"
            b"* 2 FETCH (FLAGS (\\Flagged \\Seen) UID 3 MODSEQ (13))\r\n"
            b"s100 OK FETCH completed\r\n",
        )
        # Beyond the log (it now starts above 15): every UID of the set
        # without a message.
        self.inbox.forget_expunges()
        response = yield client.command("s101", "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 14 VANISHED)")
        self.assertEqual(
            response,
            b"* VANISHED (EARLIER) 2,4\r\n"
            b"* 7 FETCH (FLAGS (\\Answered \\Seen) UID 9 MODSEQ (16))\r\n"
            b"* 9 FETCH (FLAGS () UID 11 MODSEQ (17))\r\n"
            b"s101 OK FETCH completed\r\n",
        )
        response = yield client.command("s102", "UID FETCH 1:* (FLAGS) (VANISHED)")
        self.assertEqual(response, b"s102 BAD VANISHED needs CHANGEDSINCE (RFC 7162 3.2.6)\r\n")
