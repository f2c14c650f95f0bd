"""Python's poplib as a POP3 client uses it: "leave mail on the server" with
UIDL bookkeeping, then delete after download.  Over STLS and POP3S."""

from __future__ import annotations

import poplib
import ssl
from typing import Any

from tests.interop.support import InteropTestCase, make_message, wire

BODY = "Line one.\n.\n.. two dots\n.leading dot\nlast line\n"


class _PoplibClient:
    server: Any
    assertEqual: Any
    assertIn: Any
    assertNotIn: Any
    assertTrue: Any
    addCleanup: Any

    def connect(self) -> poplib.POP3:
        raise NotImplementedError

    def login(self, user: str, password: str) -> poplib.POP3:
        pop = self.connect()
        self.addCleanup(_close, pop)
        assert isinstance(pop.sock, ssl.SSLSocket)
        self.assertIn(pop.sock.version(), ("TLSv1.2", "TLSv1.3"))
        self.assertTrue(pop.user(user).startswith(b"+OK"))
        self.assertTrue(pop.pass_(password).startswith(b"+OK"))
        return pop

    def uidl_map(self, pop: poplib.POP3) -> dict[bytes, int]:
        """UIDL -> message number, as a client keeps it."""
        response, lines, _ = pop.uidl()
        self.assertTrue(response.startswith(b"+OK"))
        result = {}
        for line in lines:
            number, uidl = line.split()
            result[uidl] = int(number)
        return result

    def retrieve(self, pop: poplib.POP3, number: int) -> bytes:
        response, lines, _octets = pop.retr(number)
        self.assertTrue(response.startswith(b"+OK"))
        return b"".join(line + b"\r\n" for line in lines)

    def test_leave_on_server_then_delete(self) -> None:
        user, password = self.server.add_user("poplib")
        sent = {}
        for subject in ("one", "two"):
            sent[subject] = make_message(subject, BODY)
        self.server.deliver_concurrently(user, list(sent.values()))

        # First poll: download everything, keep it on the server.
        pop = self.login(user, password)
        capabilities = pop.capa()
        self.assertIn("UIDL", capabilities)
        self.assertIn("TOP", capabilities)
        self.assertNotIn("STLS", capabilities)
        count, size = pop.stat()
        self.assertEqual(count, 2)
        self.assertEqual(size, sum(len(wire(m)) for m in sent.values()))
        seen = self.uidl_map(pop)
        self.assertEqual(len(seen), 2)
        listing = {int(n): int(s) for n, s in (line.split() for line in pop.list()[1])}
        downloaded = {}
        for uidl, number in seen.items():
            data = self.retrieve(pop, number)
            self.assertEqual(len(data), listing[number])
            downloaded[uidl] = data
        self.assertEqual(sorted(downloaded.values()), sorted(wire(m) for m in sent.values()))
        # TOP n 0: the header and the blank line.
        _response, lines, _ = pop.top(1, 0)
        self.assertEqual(
            b"".join(line + b"\r\n" for line in lines),
            downloaded[next(u for u, n in seen.items() if n == 1)].split(b"\r\n\r\n")[0]
            + b"\r\n\r\n",
        )
        self.assertTrue(pop.quit().startswith(b"+OK"))
        # Kept, and marked read because RETR ended with QUIT.
        on_disk = self.server.messages(user)
        self.assertEqual([m.flags for m in on_disk], ["S", "S"])
        self.assertEqual(sorted(m.data for m in on_disk), sorted(downloaded.values()))

        # A new message arrives; the next poll downloads only it, found by UIDL.
        sent["three"] = make_message("three", BODY)
        self.server.deliver(user, sent["three"])
        pop = self.login(user, password)
        now = self.uidl_map(pop)
        self.assertEqual({u: n for u, n in now.items() if u in seen}, seen)
        fresh = [uidl for uidl in now if uidl not in seen]
        self.assertEqual(len(fresh), 1)
        self.assertEqual(self.retrieve(pop, now[fresh[0]]), wire(sent["three"]))
        # UIDL n agrees with the listing.
        self.assertEqual(pop.uidl(now[fresh[0]]).split()[2], fresh[0])
        # Now the client deletes what it has downloaded, except the newest.
        for uidl in seen:
            self.assertTrue(pop.dele(now[uidl]).startswith(b"+OK"))
        self.assertEqual(pop.stat()[0], 1)
        self.assertTrue(pop.quit().startswith(b"+OK"))

        on_disk = self.server.messages(user)
        self.assertEqual([(m.flags, m.data) for m in on_disk], [("S", wire(sent["three"]))])
        imap = self.server.imap(user, password)
        self.addCleanup(imap.logout)
        _typ, data = imap.select("INBOX", readonly=True)
        self.assertEqual(data, [b"1"])

        # A third poll with the same bookkeeping finds the survivor under its old UIDL.
        pop = self.login(user, password)
        self.assertEqual(self.uidl_map(pop), {fresh[0]: 1})
        pop.quit()

    def test_a_session_that_does_not_quit_changes_nothing(self) -> None:
        """RFC 1939 6: DELE takes effect only in the UPDATE state after QUIT."""
        user, password = self.server.add_user("poplib")
        self.server.deliver(user, make_message("keep me", BODY))
        pop = self.login(user, password)
        self.retrieve(pop, 1)
        self.assertTrue(pop.dele(1).startswith(b"+OK"))
        pop.close()  # the connection drops without QUIT
        imap = self.server.imap(user, password)
        self.addCleanup(imap.logout)
        _typ, data = imap.select("INBOX", readonly=True)
        self.assertEqual(data, [b"1"])
        self.assertEqual([m.flags for m in self.server.messages(user)], [""])


def _close(pop: poplib.POP3) -> None:
    try:
        if pop.sock is not None:
            pop.close()
    except OSError:
        pass


class PoplibSTLSTests(_PoplibClient, InteropTestCase):
    """poplib.POP3 on the plaintext port, upgraded with STLS before USER/PASS."""

    def connect(self) -> poplib.POP3:
        pop = poplib.POP3("localhost", self.server.ports["pop3"], timeout=30)
        self.assertIn("STLS", pop.capa())
        self.assertTrue(pop.stls(context=self.server.ssl_context()).startswith(b"+OK"))
        return pop


class PoplibPOP3STests(_PoplibClient, InteropTestCase):
    """poplib.POP3_SSL on the implicit-TLS port, checking the certificate and its name."""

    def connect(self) -> poplib.POP3:
        return poplib.POP3_SSL(
            "localhost", self.server.ports["pop3s"], context=self.server.ssl_context(), timeout=30
        )
