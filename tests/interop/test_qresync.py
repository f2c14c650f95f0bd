"""A client that uses QRESYNC for real (RFC 7162 section 6) against the
daemon over IMAPS: a first full synchronisation, live updates while
connected, reconnections that bring its cache up to date, one of them after
the daemon was killed with SIGKILL and started again.

The client is tests/qresync_client.py: it keeps UIDVALIDITY, HIGHESTMODSEQ
and each message's flags, reconnects with ``SELECT INBOX (QRESYNC (...))``
and applies VANISHED, FETCH and the HIGHESTMODSEQ rules of section 6.  The
installed mbsync (isync 1.4) uses neither CONDSTORE nor QRESYNC, and none of
the other clients here does, hence a client of our own.  After each step its
cache must equal what a separate imaplib session reads from the server.
"""

from __future__ import annotations

import re

from tests.interop.support import (
    HOST,
    InteropTestCase,
    imap_flags,
    imap_uids_by_subject,
    make_message,
)
from tests.qresync_client import MailboxCache, QresyncClient, uid_set

_VANISHED = re.compile(rb"^\* VANISHED \(EARLIER\) (.*)$")
_FETCH_UID = re.compile(rb"^\* \d+ FETCH \(.*\bUID (\d+)\b")


class QresyncClientTests(InteropTestCase):
    def connect(self, user: str, password: str) -> QresyncClient:
        client = QresyncClient(
            HOST, self.server.ports["imaps"], user, password, self.server.ssl_context()
        )
        self.addCleanup(client.close)
        return client

    def truth(self, user: str, password: str) -> dict[int, frozenset[str]]:
        session = self.server.imap(user, password)
        try:
            return {
                uid: frozenset(flags - {"\\Recent"}) for uid, flags in imap_flags(session).items()
            }
        finally:
            session.logout()

    def test_resync_flow_with_a_restart(self) -> None:
        user, password = self.server.add_user("qresync")
        self.server.deliver_concurrently(user, [make_message(f"message {n}") for n in range(1, 9)])
        client = self.connect(user, password)
        cache = MailboxCache()
        client.resync("INBOX", cache)
        self.assertEqual(len(cache.flags), 8)
        self.assertEqual(cache.flags, self.truth(user, password))
        first = cache.highest_modseq

        # Live: another session flags and expunges, a message arrives.
        other = self.server.imap(user, password, "INBOX")
        uids = imap_uids_by_subject(other)
        other.uid("STORE", str(uids["message 2"]), "+FLAGS", "(\\Seen \\Answered)")
        other.uid("STORE", str(uids["message 5"]), "+FLAGS", "(\\Deleted)")
        other.expunge()
        self.server.deliver(user, make_message("message 9"))
        client.noop()
        client.command(f"UID FETCH {max(cache.flags) + 1}:* (UID FLAGS MODSEQ)")
        self.assertEqual(cache.flags, self.truth(user, password))
        self.assertGreater(cache.highest_modseq, first)
        client.close()

        # Away: changes the client does not hear, then the daemon dies.
        seen = cache.highest_modseq
        other.uid("STORE", str(uids["message 3"]), "+FLAGS", "($Label1)")
        other.uid("STORE", f"{uids['message 1']},{uids['message 7']}", "+FLAGS", "(\\Deleted)")
        other.expunge()
        other.logout()
        self.server.deliver(user, make_message("message 10"))
        assert self.server.daemon is not None
        self.server.daemon.process.kill()
        self.server.daemon.process.wait(timeout=30)
        self.server.start()

        again = self.connect(user, password)
        lines = again.resync("INBOX", cache)
        vanished = [m.group(1).decode() for m in map(_VANISHED.match, lines) if m]
        fetched = [int(m.group(1)) for m in map(_FETCH_UID.match, lines) if m]
        self.assertEqual(vanished, [uid_set([uids["message 1"], uids["message 7"]])])
        self.assertEqual(fetched, [uids["message 3"]])
        self.assertEqual(cache.flags, self.truth(user, password))
        self.assertGreater(cache.highest_modseq, seen)
        self.assertEqual(len(cache.flags), 7)
