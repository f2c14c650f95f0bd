"""The POP3 session machinery: CAPA, command dispatch and states,
pipelining, line length, timeouts and connection limits."""

from __future__ import annotations

import io
from typing import Any

from twisted.logger import formatEvent
from twisted.trial import unittest

from mailsrv import log
from mailsrv.policy import ConnectionLimits
from mailsrv.pop3 import State
from tests.helpers import LaterLimits, log_events
from tests.pop3_helpers import (
    MESSAGE_1,
    MESSAGE_2,
    MESSAGE_3,
    TOTAL,
    Fixture,
    PausingTransport,
    Session,
    TCPServer,
    b64,
)


class CapaTests(unittest.SynchronousTestCase):
    def capa(self, session: Session) -> list[bytes]:
        response = session.command("CAPA")
        self.assertTrue(response.startswith(b"+OK"), response)
        self.assertTrue(response.endswith(b"\r\n.\r\n"), response)
        return response.split(b"\r\n")[1:-2]

    def test_loopback_with_tls(self) -> None:
        fixture = Fixture(self, tls_context=object())
        self.assertEqual(
            self.capa(Session(fixture)),
            [
                b"TOP",
                b"USER",
                b"UIDL",
                b"RESP-CODES",
                b"AUTH-RESP-CODE",
                b"PIPELINING",
                b"SASL PLAIN LOGIN CRAM-MD5",
                b"STLS",
                b"UTF8",
                b"EXPIRE NEVER",
                b"LOGIN-DELAY 0",
                b"IMPLEMENTATION mailsrv",
            ],
        )

    def test_remote_plaintext_connection_offers_no_password_in_clear(self) -> None:
        caps = self.capa(Session(Fixture(self, tls_context=object()), peer="192.0.2.7"))
        self.assertNotIn(b"USER", caps)
        self.assertIn(b"SASL CRAM-MD5", caps)
        self.assertIn(b"STLS", caps)

    def test_remote_without_plaintext_users_offers_no_sasl(self) -> None:
        fixture = Fixture(self, challenge_auth_available=lambda: False)
        caps = self.capa(Session(fixture, peer="192.0.2.7"))
        self.assertFalse([c for c in caps if c.startswith(b"SASL")], caps)
        self.assertNotIn(b"STLS", caps)  # no TLS context

    def test_implicit_tls(self) -> None:
        fixture = Fixture(self, tls_context=object(), plaintext="never")
        caps = self.capa(Session(fixture, peer="192.0.2.7", secure=True))
        self.assertIn(b"USER", caps)
        self.assertIn(b"SASL PLAIN LOGIN CRAM-MD5", caps)
        self.assertNotIn(b"STLS", caps)

    def test_transaction_state(self) -> None:
        """RFC 2449 5, 6.2, 6.3: USER and SASL are announced after login as
        before it; STLS (RFC 2595 4) only before."""
        session = Session(Fixture(self, tls_context=object()))
        before = self.capa(session)
        session.login()
        self.assertEqual(
            self.capa(session),
            [
                b"TOP",
                b"USER",
                b"UIDL",
                b"RESP-CODES",
                b"AUTH-RESP-CODE",
                b"PIPELINING",
                b"SASL PLAIN LOGIN CRAM-MD5",
                b"UTF8",
                b"EXPIRE NEVER",
                b"LOGIN-DELAY 0",
                b"IMPLEMENTATION mailsrv",
            ],
        )
        self.assertEqual([c for c in before if c != b"STLS"], self.capa(session))

    def test_arguments_refused(self) -> None:
        self.assertEqual(
            Session(Fixture(self)).command("CAPA x"), b"-ERR This command takes no arguments.\r\n"
        )


# -- commands and states ---------------------------------------------------------


class StateTests(unittest.SynchronousTestCase):
    def test_transaction_commands_before_login(self) -> None:
        session = Session(Fixture(self))
        for command in (
            "STAT",
            "LIST",
            "LIST 1",
            "RETR 1",
            "DELE 1",
            "NOOP",
            "RSET",
            "TOP 1 1",
            "UIDL",
            "UIDL 1",
            "LAST",
        ):
            name = command.split()[0]
            self.assertEqual(
                session.command(command), f"-ERR {name} is only valid after login.\r\n".encode()
            )

    def test_authorization_commands_after_login(self) -> None:
        session = Session(Fixture(self, tls_context=object()))
        session.login()
        for command in (
            "USER alice",
            "PASS secret",
            "APOP alice " + "0" * 32,
            "AUTH PLAIN",
            "AUTH",
            "STLS",
        ):
            name = command.split()[0]
            self.assertEqual(
                session.command(command), f"-ERR {name} is not valid after login.\r\n".encode()
            )
        self.assertIs(session.protocol.state, State.TRANSACTION)

    def test_unknown_commands(self) -> None:
        session = Session(Fixture(self))
        self.assertEqual(session.command("FOO"), b"-ERR Unknown command: FOO\r\n")
        self.assertEqual(session.command("LANG"), b"-ERR Unknown command: LANG\r\n")
        self.assertEqual(session.command(""), b"-ERR Empty command.\r\n")
        self.assertEqual(session.command(b"\xff\xfe"), b"-ERR Unknown command.\r\n")
        self.assertEqual(session.command("do_USER x"), b"-ERR Unknown command.\r\n")
        session.login()
        self.assertEqual(session.command("XTND XMIT"), b"-ERR Unknown command: XTND\r\n")

    def test_debug_log_leaves_out_secrets(self) -> None:
        events = log_events(self)
        log.set_level("debug")
        self.addCleanup(log.set_level, "info")
        fixture = Fixture(self)
        session = Session(fixture)
        session.login()
        session.command("NOOP")
        session = Session(fixture)
        session.command(b"AUTH PLAIN " + b64(b"\0bob\0hunter2"))
        session = Session(fixture)
        session.command("AUTH LOGIN")
        session.command(b64(b"spacey"))
        session.command(b64(b"two words here"))
        text = "\n".join(
            formatEvent(e) for e in events if e.get("log_namespace", "").startswith("mailsrv.pop3")
        )
        self.assertIn("C: USER alice", text)
        self.assertIn("C: PASS ***", text)
        self.assertIn("C: AUTH PLAIN ***", text)
        self.assertIn("C: (SASL response)", text)
        self.assertIn("C: NOOP", text)
        self.assertIn("127.0.0.1:40110", text)
        for secret in ("secret", "hunter2", "two words", b64(b"two words here").decode()):
            self.assertNotIn(secret, text)

    def test_rpop_refused(self) -> None:
        session = Session(Fixture(self))
        self.assertEqual(session.command("RPOP alice"), b"-ERR RPOP is not supported.\r\n")
        session.login()
        self.assertEqual(session.command("RPOP alice"), b"-ERR RPOP is not supported.\r\n")

    def test_quit_before_login(self) -> None:
        session = Session(Fixture(self))
        session.command("USER alice")
        self.assertEqual(session.command("QUIT"), b"+OK Logging out.\r\n")
        self.assertTrue(session.closed)
        self.assertEqual(session.command("NOOP"), b"")

    def test_bare_lf_line_ends_accepted(self) -> None:
        session = Session(Fixture(self))
        out = session.send(b"USER alice\nPASS secret\nSTAT\n")
        self.assertIn(b"+OK Logged in", out)
        self.assertTrue(out.endswith(b"+OK 3 %d\r\n" % TOTAL))


# -- pipelining, line length, timeouts, limits -----------------------------------------


class PipeliningTests(unittest.SynchronousTestCase):
    def test_commands_wait_for_a_slow_maildrop(self) -> None:
        """Lines arriving while the maildrop opens run afterwards, in
        TRANSACTION state; QUIT answers when the commit is done."""
        fixture = Fixture(self)
        fixture.faults.parked = []
        session = Session(fixture)
        out = session.send(b"USER alice\r\nPASS secret\r\nSTAT\r\nDELE 1\r\nQUIT\r\n")
        self.assertEqual(out, b"+OK Send your password.\r\n")
        fixture.faults.release_parked()  # the maildrop opens
        self.assertEqual(
            session.output(),
            b"+OK Logged in: 3 messages (%d octets).\r\n" % TOTAL
            + b"+OK 3 %d\r\n" % TOTAL
            + b"+OK Message 1 marked for deletion.\r\n",
        )
        self.assertEqual(fixture.uids(), [1, 2, 3])
        fixture.faults.release_parked()  # the commit flags message 1 \Deleted
        self.assertEqual(session.output(), b"+OK Logging out, 1 message deleted.\r\n")
        self.assertEqual(fixture.uids(), [2, 3])

    def test_connection_lost_during_commit(self) -> None:
        """The commit in progress finishes; the lock is released only afterwards."""
        fixture = Fixture(self, connections=ConnectionLimits(per_user=1, per_ip=10))
        session = Session(fixture)
        session.login()
        fixture.faults.parked = []
        session.command("DELE 1")
        session.command("QUIT")
        session.drop()
        self.assertTrue(fixture.locked())
        fixture.faults.release_parked()
        self.assertEqual(fixture.uids(), [2, 3])
        self.assertFalse(fixture.locked())
        self.assertEqual(fixture.faults.logouts["alice"], 1)
        fixture.faults.parked = None  # the user's slot is free again too:
        self.assertTrue(Session(fixture).login().startswith(b"+OK Logged in: 2"))

    def test_connection_lost_during_open(self) -> None:
        fixture = Fixture(self, connections=ConnectionLimits(per_user=1, per_ip=10))
        fixture.faults.parked = []
        session = Session(fixture)
        session.login()
        session.drop()
        fixture.faults.release_parked()
        self.assertFalse(fixture.locked())
        self.assertEqual(fixture.faults.logouts["alice"], 1)
        fixture.faults.parked = None  # the user's slot is free again too:
        self.assertTrue(Session(fixture).login().startswith(b"+OK Logged in: 3"))

    def test_backlog_pauses_reading(self) -> None:
        fixture = Fixture(self, max_pending_commands=4)
        fixture.faults.parked = []
        session = Session(fixture)
        session.send(b"USER alice\r\nPASS secret\r\n" + b"NOOP\r\n" * 10)
        self.assertEqual(session.transport.producerState, "paused")
        fixture.faults.release_parked()
        self.assertEqual(session.output().count(b"+OK\r\n"), 10)
        self.assertEqual(session.transport.producerState, "producing")


class LineLengthTests(unittest.SynchronousTestCase):
    def test_long_line_refused_connection_kept(self) -> None:
        session = Session(Fixture(self, max_line_length=100))
        out = session.send(b"USER " + b"a" * 200 + b"\r\nCAPA\r\n")
        self.assertTrue(
            out.startswith(b"-ERR Line too long (the limit is 100 octets).\r\n+OK Capability"), out
        )
        self.assertFalse(session.closed)

    def test_long_line_across_packets(self) -> None:
        session = Session(Fixture(self, max_line_length=100))
        self.assertEqual(
            session.send(b"X" * 150), b"-ERR Line too long (the limit is 100 octets).\r\n"
        )
        self.assertEqual(session.send(b"Y" * 150), b"")
        self.assertEqual(session.send(b"Z\r\nUSER alice\r\n"), b"+OK Send your password.\r\n")

    def test_longest_line_with_cr_and_lf_in_two_packets(self) -> None:
        """A line of exactly the limit is accepted however its CRLF is split."""
        session = Session(Fixture(self, max_line_length=100))
        self.assertEqual(session.send(b"USER " + b"a" * 95 + b"\r"), b"")
        self.assertEqual(session.send(b"\n"), b"+OK Send your password.\r\n")

    def test_long_line_ends_sasl_exchange(self) -> None:
        session = Session(Fixture(self, max_line_length=100))
        session.command("AUTH PLAIN")
        self.assertEqual(
            session.command(b"A" * 200), b"-ERR Line too long (the limit is 100 octets).\r\n"
        )
        self.assertEqual(session.command("USER alice"), b"+OK Send your password.\r\n")


class TimeoutTests(unittest.SynchronousTestCase):
    def test_activity_resets_timer_and_autologout_commits_nothing(self) -> None:
        fixture = Fixture(self, pop3_timeout=600)
        session = Session(fixture)
        session.login()
        session.command("DELE 1")
        session.clock.advance(500)
        session.command("NOOP")
        session.clock.advance(599)
        self.assertFalse(session.closed)
        session.clock.advance(1)
        self.assertEqual(session.output(), b"-ERR Disconnected for inactivity.\r\n")
        self.assertTrue(session.closed)
        session.drop()
        self.assertEqual(fixture.uids(), [1, 2, 3])
        self.assertFalse(fixture.locked())

    def test_client_that_stops_reading_a_retr_is_aborted(self) -> None:
        fixture = Fixture(self, pop3_timeout=600)
        fixture.deliver(b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 20000, "bob")
        transport = PausingTransport()
        session = Session(fixture, transport=transport)
        session.login("bob")
        session.send(b"RETR 1\r\n")
        for _ in range(3):  # the client reads a little now and then: no timeout
            session.clock.advance(599)
            assert transport.producer is not None
            transport.producer.resumeProducing()
        self.assertFalse(transport.disconnecting)
        session.clock.advance(600)
        self.assertTrue(transport.disconnected)  # aborted: its buffer will never drain
        self.assertNotIn(b"inactivity", session.output())
        session.drop()
        self.assertFalse(fixture.locked("bob"))

    def test_timer_stops_at_connection_lost(self) -> None:
        session = Session(Fixture(self))
        session.drop()
        self.assertEqual(session.clock.getDelayedCalls(), [])


class ConnectionLimitTests(unittest.SynchronousTestCase):
    def test_per_ip(self) -> None:
        fixture = Fixture(self, connections=ConnectionLimits(per_user=10, per_ip=2))
        first, second = Session(fixture), Session(fixture)
        third = Session(fixture)
        self.assertEqual(
            third.greeting, b"-ERR [SYS/TEMP] Too many connections from your address.\r\n"
        )
        self.assertTrue(third.closed)
        third.drop()
        other = Session(fixture, peer="192.0.2.9")
        self.assertTrue(other.greeting.startswith(b"+OK"))
        first.drop()
        self.assertTrue(Session(fixture).greeting.startswith(b"+OK"))
        self.assertFalse(second.closed)

    def test_per_user(self) -> None:
        fixture = Fixture(self, connections=ConnectionLimits(per_user=1, per_ip=10))
        first, second = Session(fixture), Session(fixture)
        first.login()
        self.assertEqual(second.login(), b"-ERR [SYS/TEMP] Too many connections for this user.\r\n")
        self.assertIs(second.protocol.state, State.AUTHORIZATION)
        self.assertTrue(second.login("bob").startswith(b"+OK Logged in"))
        first.command("QUIT")
        first.drop()
        self.assertTrue(Session(fixture).login().startswith(b"+OK Logged in"))


class SessionOverTCPTests(unittest.TestCase):
    timeout = 20

    async def test_pipelined_session(self) -> None:
        fixture = Fixture(self)
        server = TCPServer(self, fixture)
        client, _ = await server.connect()
        uidvalidity = fixture.inbox().uidvalidity
        client.send(
            b"CAPA\r\nUSER alice\r\nPASS secret\r\nLIST\r\nUIDL\r\nRETR 2\r\nTOP 1 0\r\n"
            b"DELE 3\r\nQUIT\r\n"
        )
        capa = await client.response()
        self.assertIn(b"\r\nPIPELINING\r\n", capa)
        self.assertEqual(await client.line(), b"+OK Send your password.\r\n")
        self.assertTrue((await client.line()).startswith(b"+OK Logged in"))
        self.assertIn(b"\r\n3 %d\r\n" % len(MESSAGE_3), await client.response())
        self.assertIn(b"\r\n1 00000001%08X\r\n" % uidvalidity, await client.response())
        self.assertEqual(
            await client.response(), b"+OK %d octets\r\n" % len(MESSAGE_2) + MESSAGE_2 + b".\r\n"
        )
        self.assertTrue((await client.response()).endswith(b"Subject: one\r\n\r\n.\r\n"))
        self.assertEqual(await client.line(), b"+OK Message 3 marked for deletion.\r\n")
        self.assertEqual(await client.line(), b"+OK Logging out, 1 message deleted.\r\n")
        await client.lost
        self.assertEqual(fixture.uids(), [1, 2])
        self.assertEqual(fixture.seen(), [2])

    async def test_failing_cleanup_step_skips_none_after_it(self) -> None:
        """The client vanishes mid-RETR and closing the message file fails:
        the maildrop lock, the user's slot and the address's slot are still
        given back."""

        class Endless(io.RawIOBase):
            """A message far longer than the socket buffers; closing it fails."""

            def __init__(self) -> None:
                self.left = 256 * 1024 * 1024

            def readable(self) -> bool:
                return True

            def readinto(self, buffer: Any) -> int:
                size = min(len(buffer), self.left) // 8 * 8
                buffer[:size] = b"xxxxxx\r\n" * (size // 8)
                self.left -= size
                return size

            def close(self) -> None:
                raise OSError("EIO closing the message file")

        fixture = Fixture(self, connections=ConnectionLimits(per_user=1, per_ip=1))
        fixture.faults.reader = lambda _: io.BufferedReader(Endless())
        server = TCPServer(self, fixture)
        client, _ = await server.connect()
        await client.command(b"USER alice")
        self.assertTrue((await client.command(b"PASS secret")).startswith(b"+OK Logged in"))
        self.assertEqual(await client.command(b"RETR 1"), b"+OK %d octets\r\n" % len(MESSAGE_1))
        client.pause_reading()  # the server is mid-message
        client.abort()
        await client.lost
        await server.factory.ended[0]
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertFalse(fixture.locked())
        fixture.faults.reader = None
        client, greeting = await server.connect()
        self.assertTrue(greeting.startswith(b"+OK mailsrv"), greeting)
        await client.command(b"USER alice")
        self.assertTrue((await client.command(b"PASS secret")).startswith(b"+OK Logged in: 3"))


class LaterConnectionCountTests(unittest.SynchronousTestCase):
    """With several workers the connection counts answer later (the parent
    keeps them): no command runs before the greeting."""

    def test_greeting_and_commands_wait_for_the_counts(self) -> None:
        limits = LaterLimits(per_user=1, per_ip=5)
        fixture = Fixture(self, connections=limits)
        session = Session(fixture)
        self.assertEqual(session.greeting, b"")
        self.assertEqual(session.command("USER alice"), b"")
        limits.answer()
        output = session.output()
        self.assertTrue(output.startswith(b"+OK mailsrv POP3 server ready."), output)
        self.assertTrue(output.endswith(b"\r\n+OK\r\n") or b"\r\n+OK " in output, output)
        session.command("PASS secret")
        self.assertEqual(session.output(), b"")
        limits.answer()
        self.assertTrue(session.output().startswith(b"+OK Logged in"))
        other = Session(fixture)
        limits.answer()
        other.output()
        other.command("USER alice")
        other.command("PASS secret")
        limits.answer()
        self.assertEqual(other.output(), b"-ERR [SYS/TEMP] Too many connections for this user.\r\n")

    def test_address_refused_later(self) -> None:
        limits = LaterLimits(per_user=5, per_ip=1)
        fixture = Fixture(self, connections=limits)
        Session(fixture)
        limits.answer()
        second = Session(fixture)
        limits.answer()
        self.assertEqual(
            second.output(), b"-ERR [SYS/TEMP] Too many connections from your address.\r\n"
        )
        self.assertTrue(second.closed)
