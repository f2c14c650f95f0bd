"""The failed-login penalty across connections (mailsrv/penalty.py), and
the service-wide connection limit.

The penalty tests drive IMAP and POP3 sessions in process on one
``task.Clock``, several connections sharing one ConnectionLimits as a
service's listeners do, so when an answer comes is checked exactly; the
connection limit is checked over real sockets against a daemon.
"""

from __future__ import annotations

import base64
import os
import socket
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailsrv.auth.checker import PasswdFileChecker
from mailsrv.auth.passwdfile import PasswdFile
from mailsrv.auth.realm import MailRealm
from mailsrv.auth.sasl import SaslServices
from mailsrv.imap.protocol import IMAP4Server, IMAP4ServerFactory
from mailsrv.penalty import FREE, LoginPenalty
from mailsrv.policy import ConnectionLimits, SessionPolicy
from mailsrv.pop3.server import POP3Factory
from mailsrv.storage.memory import MemoryStorage
from tests.helpers import Daemon, daemon_config, free_port, loopback, read_line
from tests.sasl_helpers import ScramClient
from tests.test_scram import DOVEADM_PENCIL

REFUSED = b"NO [AUTHENTICATIONFAILED] Authentication failed\r\n"


class PenaltyOverConnectionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.limits = ConnectionLimits(penalty_max=4.0)
        checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret", ann=b"pw")
        self.portal = Portal(MailRealm(MemoryStorage()), [checker])
        # No per-connection delay and no hang-up: only the penalty acts.
        self.policy = SessionPolicy(
            failure_delay=0.0, max_failures=100, plaintext="always", connections=self.limits
        )

    def connect(self, host: str = "192.0.2.1") -> tuple[IMAP4Server, StringTransport]:
        factory = IMAP4ServerFactory(self.portal, self.policy, clock=self.clock)
        server = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        server.makeConnection(transport)
        transport.clear()
        return server, transport

    def fail_logins(self, times: int, host: str = "192.0.2.1", user: str = "joe") -> None:
        """``times`` wrong passwords, each answered before the next."""
        server, transport = self.connect(host)
        for i in range(times):
            server.dataReceived(b"f%d LOGIN %s wrong\r\n" % (i, user.encode()))
            self.clock.advance(10)
            self.assertEqual(transport.value(), b"f%d " % i + REFUSED)
            transport.clear()
        server.connectionLost(None)

    def test_first_failures_cost_nothing(self) -> None:
        self.fail_logins(FREE - 1)
        server, transport = self.connect()
        server.dataReceived(b"a LOGIN joe secret\r\n")
        self.assertTrue(transport.value().startswith(b"a OK"), transport.value())

    def test_parallel_connections_take_turns(self) -> None:
        """After the free failures, attempts from one address are checked
        one at a time, however many connections they come on: a second
        connection waits for its turn, which a new connection cannot skip."""
        self.fail_logins(FREE)
        first, first_out = self.connect()
        second, second_out = self.connect()
        first.dataReceived(b"a LOGIN joe wrong\r\n")
        second.dataReceived(b"b LOGIN joe wrong\r\n")
        # Every check for joe now waits 0.25 s (the user's penalty); the
        # second connection's turn comes 0.25 s after the first's check.
        self.clock.advance(0.24)
        self.assertEqual((first_out.value(), second_out.value()), (b"", b""))
        self.clock.advance(0.01)
        self.assertEqual(first_out.value(), b"a " + REFUSED)
        self.assertEqual(second_out.value(), b"")
        self.clock.advance(0.25)
        self.assertEqual(second_out.value(), b"b " + REFUSED)

    def test_turns_too_far_away_are_refused_unchecked(self) -> None:
        """Past ``auth.penalty_max`` of queue, an attempt is refused without
        its password being checked, even a right one: parallel connections
        cannot buy more checks.  Another address is not affected."""
        self.fail_logins(FREE + 4)  # the interval is now the 4 s cap
        outs = []
        for tag in (b"a", b"b", b"c"):
            server, out = self.connect()
            server.dataReceived(tag + b" LOGIN ann pw\r\n")
            outs.append(out)
        # a: checked at once (its turn is now); b: in 4 s; c: 8 s away.
        self.clock.advance(0)
        self.assertTrue(outs[0].value().startswith(b"a OK"), outs[0].value())
        self.assertEqual(outs[1].value(), b"")
        self.assertEqual(outs[2].value(), b"c " + REFUSED)
        self.clock.advance(4)
        self.assertTrue(outs[1].value().startswith(b"b OK"), outs[1].value())
        elsewhere, out = self.connect("198.51.100.7")
        elsewhere.dataReceived(b"d LOGIN ann pw\r\n")
        self.assertTrue(out.value().startswith(b"d OK"), out.value())

    def test_a_guessed_user_is_slowed_from_any_address(self) -> None:
        """Failures for one user, from many addresses, delay every check for
        that user (a bounded wait, never a refusal); others are not slowed."""
        for i in range(FREE + 1):
            self.fail_logins(1, host=f"203.0.113.{i}")
        server, out = self.connect("198.51.100.9")
        server.dataReceived(b"a LOGIN joe secret\r\nb LOGIN ann pw\r\n")
        self.assertEqual(out.value(), b"")
        self.clock.advance(0.5)
        self.assertTrue(out.value().startswith(b"a OK"), out.value())
        other, other_out = self.connect("198.51.100.10")
        other.dataReceived(b"c LOGIN ann pw\r\n")
        self.assertTrue(other_out.value().startswith(b"c OK"), other_out.value())

    def test_success_clears_the_user_not_the_address(self) -> None:
        """A guesser who logs in to an account of its own keeps its address's
        record: the next check from there still waits its turn."""
        self.fail_logins(FREE + 1, user="joe")
        server, out = self.connect()
        server.dataReceived(b"a LOGIN ann pw\r\n")
        self.assertTrue(out.value().startswith(b"a OK"), out.value())
        guess, guess_out = self.connect()
        guess.dataReceived(b"b LOGIN joe wrong\r\n")
        self.assertEqual(guess_out.value(), b"")
        self.clock.advance(0.5)
        self.assertEqual(guess_out.value(), b"b " + REFUSED)

    def test_failures_are_forgotten(self) -> None:
        self.fail_logins(FREE + 4)
        self.clock.advance(901)
        server, out = self.connect()
        server.dataReceived(b"a LOGIN joe wrong\r\nb LOGIN joe wrong\r\n")
        self.clock.advance(0)
        self.assertEqual(out.value(), b"a " + REFUSED + b"b " + REFUSED)

    def test_pop3_shares_the_record(self) -> None:
        """POP3 attempts count with IMAP's and wait their turn as well."""
        self.fail_logins(FREE)
        factory = POP3Factory(self.portal, self.policy, clock=self.clock)
        pop = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 40001))
        pop.makeConnection(transport)
        transport.clear()
        pop.dataReceived(b"USER joe\r\nPASS wrong\r\n")
        self.assertEqual(transport.value(), b"+OK Send your password.\r\n")
        self.clock.advance(0.25)
        self.assertTrue(
            transport.value().endswith(b"\r\n-ERR [AUTH] Authentication failed.\r\n"),
            transport.value(),
        )

    def test_off(self) -> None:
        penalty = LoginPenalty(0.0)
        for _ in range(20):
            penalty.failed("192.0.2.1", "joe", 0.0)
        self.assertEqual(penalty.admit("192.0.2.1", "joe", 0.0), 0.0)


class ServiceConnectionLimitTests(TestCase):
    """``limits.max_connections`` over real sockets: IMAP and POP3 together."""

    def test_connections_over_the_limit_are_told_and_closed(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        imap, pop3 = free_port(), free_port()
        config = daemon_config(
            directory,
            {
                "imap": {"listen": loopback(imap)},
                "pop3": {"listen": loopback(pop3)},
                "auth": {"failure_delay": None},
                "limits": {"max_connections": 2},
            },
        )
        daemon = Daemon.start(["--config", config], cwd=directory)
        self.addCleanup(daemon.stop)
        daemon.wait_for("listening on", count=2)
        held = [socket.create_connection(("127.0.0.1", imap), timeout=30)]
        held.append(socket.create_connection(("127.0.0.1", pop3), timeout=30))
        for s in held:
            self.addCleanup(s.close)
        self.assertTrue(read_line(held[0]).startswith(b"* OK"))
        self.assertTrue(read_line(held[1]).startswith(b"+OK"))
        with socket.create_connection(("127.0.0.1", imap), timeout=30) as extra:
            self.assertEqual(
                read_line(extra), b"* BYE Too many connections to this server, try again later\r\n"
            )
            self.assertEqual(extra.recv(100), b"")
        with socket.create_connection(("127.0.0.1", pop3), timeout=30) as extra:
            self.assertEqual(
                read_line(extra),
                b"-ERR [SYS/TEMP] Too many connections to this server, try again later.\r\n",
            )
        daemon.wait_for("limits.max_connections reached")
        # A slot given back is free again: the server has counted the POP3
        # connection out by the time it closes it.
        pop = held.pop()
        pop.sendall(b"QUIT\r\n")
        self.assertTrue(read_line(pop).startswith(b"+OK"))
        self.assertEqual(pop.recv(100), b"")
        with socket.create_connection(("127.0.0.1", imap), timeout=30) as again:
            self.assertTrue(read_line(again).startswith(b"* OK"))


class PenaltyBeforeSaslTests(SynchronousTestCase):
    """SCRAM checks its proof without the portal: the turn is taken before
    the exchange starts, so no challenge goes out before it."""

    def setUp(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"alice:{DOVEADM_PENCIL}\n")
        checker = PasswdFileChecker(PasswdFile(path), run_in_thread=False)
        self.clock = Clock()
        portal = Portal(MailRealm(MemoryStorage()), [checker])
        policy = SessionPolicy(
            failure_delay=0.0,
            max_failures=100,
            plaintext="always",
            connections=ConnectionLimits(penalty_max=4.0),
            sasl=SaslServices(scram=checker, scram_available=checker.any_scram),
        )
        self.imap = IMAP4ServerFactory(portal, policy, clock=self.clock)
        self.pop3 = POP3Factory(portal, policy, clock=self.clock)

    def connect(self, factory: IMAP4ServerFactory | POP3Factory) -> tuple[Any, StringTransport]:
        server = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 40000))
        server.makeConnection(transport)
        transport.clear()
        return server, transport

    def test_scram_waits_its_turn(self) -> None:
        server, _ = self.connect(self.imap)
        for i in range(FREE + 4):  # the interval is now the 4 s cap
            server.dataReceived(b"f%d LOGIN alice wrong\r\n" % i)
            self.clock.advance(10)
        first = base64.b64encode(ScramClient("alice", "pencil").first())
        answers = []
        for factory, begin in (
            (self.imap, b"a AUTHENTICATE SCRAM-SHA-256 "),
            (self.pop3, b"AUTH SCRAM-SHA-256 "),
            (self.imap, b"c AUTHENTICATE SCRAM-SHA-256 "),
        ):
            session, transport = self.connect(factory)
            session.dataReceived(begin + first + b"\r\n")
            answers.append(transport)
        self.clock.advance(0)
        self.assertTrue(answers[0].value().startswith(b"+ "), answers[0].value())
        self.assertEqual(answers[1].value(), b"")
        self.assertEqual(answers[2].value(), b"c " + REFUSED)
        self.clock.advance(4)
        self.assertTrue(answers[1].value().startswith(b"+ "), answers[1].value())
