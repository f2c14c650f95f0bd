"""mailsrv.testing's emulation of other servers, through mailsrv.hooks.

What a client sees on the wire when the server offers less, refuses,
hangs up, stalls or alerts.  The delay is tested on a session over a
StringTransport and a task.Clock, so no test waits for time to pass.
"""

from __future__ import annotations

import imaplib
import poplib

from twisted.internet.task import Clock
from twisted.trial import unittest

from mailsrv.policy import SessionPolicy
from mailsrv.testing import MailServer, running
from mailsrv.testing.emulation import Emulation
from tests.imap_helpers import in_process
from tests.test_testing_server import MESSAGE, TIMEOUT, imap, raw, read_until_tag


class IMAPEmulationTests(unittest.SynchronousTestCase):
    def test_hidden_capabilities_are_gone_and_so_are_their_commands(self) -> None:
        with running() as srv:
            srv.deliver(srv.user, MESSAGE, flags=["\\Deleted"])
            srv.hide_capabilities("UIDPLUS", "IDLE", "LITERAL+", "AUTH", protocol="imap")
            client = imap(srv)
            caps = client.capabilities
            client.select()
            with self.assertRaises(imaplib.IMAP4.error) as refused:
                client.uid("EXPUNGE", "1")
            typ, _ = client.append("INBOX", None, None, MESSAGE)
            client.logout()
            sock, readline = raw(srv, srv.imap_port)
            readline()  # greeting
            # A LITERAL+ literal, as a client that ignores CAPABILITY sends it.
            sock.sendall(b"a LOGIN {5+}\r\nalice secret\r\nb NOOP\r\n")
            literal = read_until_tag(readline, b"a")
            after = read_until_tag(readline, b"b")
            sock.sendall(b"c IDLE\r\n")
            idle = read_until_tag(readline, b"c")
            sock.close()
            sock, readline = raw(srv, srv.imap_port)
            readline()
            sock.sendall(b"d AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n")
            authenticate = read_until_tag(readline, b"d")
            sock.close()
            (appended,) = [m for m in srv.messages(srv.user) if not m.deleted]
        for hidden in ("UIDPLUS", "IDLE", "LITERAL+", "AUTH=PLAIN"):
            self.assertNotIn(hidden, caps)
        self.assertIn("MOVE", caps)
        self.assertIn("unknown command UID EXPUNGE", str(refused.exception))
        self.assertEqual(typ, "OK")
        self.assertEqual(appended.data, MESSAGE)
        self.assertEqual(literal[-1], b"a BAD Non-synchronizing literal without LITERAL+\r\n")
        self.assertEqual(after[-1], b"b OK NOOP completed\r\n")
        self.assertIn(b"c BAD", idle[-1])
        self.assertEqual(authenticate[-1], b"d NO [CANNOT] PLAIN is not available\r\n")

    def test_refused_once_then_served(self) -> None:
        with running() as srv:
            srv.deliver(srv.user, MESSAGE)
            srv.refuse("SEARCH", "[UNAVAILABLE] Search backend down", times=1)
            client = imap(srv)
            client.select()
            first = client.search(None, "ALL")
            second = client.search(None, "ALL")
            client.logout()
        self.assertEqual(first, ("NO", [b"[UNAVAILABLE] Search backend down"]))
        self.assertEqual(second, ("OK", [b"1"]))

    def test_dropped_after_the_answer(self) -> None:
        with running() as srv:
            srv.deliver(srv.user, MESSAGE)
            srv.drop_after("FETCH", protocol="imap")
            client = imap(srv)
            client.select()
            typ, _ = client.uid("FETCH", "1", "(FLAGS)")
            self.assertRaises(imaplib.IMAP4.abort, client.noop)
            client.shutdown()
            transcript = srv.transcripts("imap")[0]
        self.assertEqual(typ, "OK")
        self.assertNotIn(b"BYE", transcript.server_bytes)
        self.assertEqual(transcript.commands()[-1], "UID FETCH")

    def test_dropped_before_the_answer(self) -> None:
        """The nastiest case for a client: the APPEND happened, the OK never came."""
        with running() as srv:
            srv.drop_after("APPEND", before_answer=True)
            sock, readline = raw(srv, srv.imap_port)
            readline()
            sock.sendall(b"a LOGIN alice secret\r\n")
            read_until_tag(readline, b"a")
            sock.sendall(b"b APPEND INBOX {%d+}\r\n%s\r\n" % (len(MESSAGE), MESSAGE))
            rest = read_until_tag(readline, b"b")
            sock.close()
            stored = srv.messages(srv.user)
        self.assertEqual(rest, [b""])  # end of file, no tagged answer
        self.assertEqual([m.data for m in stored], [MESSAGE])

    def test_alert_before_the_login_answer(self) -> None:
        with running() as srv:
            srv.alert("Your mailbox is almost full")
            sock, readline = raw(srv, srv.imap_port)
            readline()
            sock.sendall(b"a LOGIN alice secret\r\n")
            lines = read_until_tag(readline, b"a")
            sock.close()
        self.assertEqual(lines[0], b"* OK [ALERT] Your mailbox is almost full\r\n")
        self.assertTrue(lines[-1].startswith(b"a OK"))

    def test_reset_gives_back_the_real_server(self) -> None:
        with running() as srv:
            srv.hide_capabilities("IDLE")
            srv.refuse("NOOP")
            srv.reset_emulation()
            client = imap(srv)
            caps, noop = client.capabilities, client.noop()
            client.logout()
        self.assertIn("IDLE", caps)
        self.assertEqual(noop[0], "OK")


class POP3EmulationTests(unittest.SynchronousTestCase):
    def test_pop3_rules(self) -> None:
        with running() as srv:
            srv.deliver(srv.user, MESSAGE)
            srv.deliver(srv.user, MESSAGE)
            srv.hide_capabilities("UIDL", protocol="pop3")
            srv.refuse("RETR", "[SYS/TEMP] Try later", protocol="pop3", times=1)
            srv.drop_after("DELE", protocol="pop3")
            client = poplib.POP3(srv.host, srv.pop3_port, timeout=TIMEOUT)
            caps = client.capa()
            client.user(srv.user)
            client.pass_(srv.password)
            with self.assertRaises(poplib.error_proto) as uidl:
                client.uidl()
            with self.assertRaises(poplib.error_proto) as retr:
                client.retr(1)
            self.assertEqual(client.retr(1)[0].split()[0], b"+OK")
            self.assertTrue(client.dele(1).startswith(b"+OK"))
            self.assertRaises((poplib.error_proto, OSError), client.noop)
            client.close()
            left = srv.messages(srv.user)
        self.assertNotIn("UIDL", caps)
        self.assertIn("TOP", caps)
        self.assertEqual(str(uidl.exception), "b'-ERR Unknown command: UIDL'")
        self.assertEqual(str(retr.exception), "b'-ERR [SYS/TEMP] Try later'")
        self.assertEqual(len(left), 2)  # no QUIT: nothing deleted (RFC 1939 6)

    def test_the_same_command_name_in_one_protocol_only(self) -> None:
        with running() as srv:
            srv.refuse("NOOP", protocol="pop3")
            client = imap(srv)
            noop = client.noop()
            client.logout()
            pop = poplib.POP3(srv.host, srv.pop3_port, timeout=TIMEOUT)
            pop.user(srv.user)
            pop.pass_(srv.password)
            self.assertRaises(poplib.error_proto, pop.noop)
            pop.quit()
        self.assertEqual(noop[0], "OK")

    def test_bad_rules_are_refused(self) -> None:
        srv = MailServer()
        self.assertRaises(ValueError, srv.refuse, "NOOP", protocol="smtp")
        self.assertRaises(ValueError, srv.refuse, "NOOP", times=0)
        self.assertRaises(ValueError, srv.delay, "NOOP", -1)


class DelayTests(unittest.SynchronousTestCase):
    def test_the_answer_waits_for_the_delay(self) -> None:
        emulation = Emulation()
        srv = MailServer()
        srv.emulation = emulation
        srv.delay("NOOP", 5.0, times=1)
        clock = Clock()
        policy = SessionPolicy(failure_delay=0.0, plaintext="always", hooks=emulation)
        server, transport = in_process(policy=policy, clock=clock)
        server.dataReceived(b"a NOOP\r\n")
        clock.advance(4.9)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.1)
        self.assertEqual(transport.value(), b"a OK NOOP completed\r\n")
        transport.clear()
        server.dataReceived(b"b NOOP\r\n")  # times=1: the next one is not delayed
        self.assertEqual(transport.value(), b"b OK NOOP completed\r\n")
