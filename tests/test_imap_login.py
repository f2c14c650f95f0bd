"""Logging in and out of the IMAP server: LOGIN and AUTHENTICATE, STARTTLS
and implicit TLS, the failed-login delay and limit, errors behind a right
password, and the connection-limit slots a session takes and gives back."""

from __future__ import annotations

import base64
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mailsrv.auth.realm import MailRealm
from mailsrv.policy import SessionPolicy
from mailsrv.storage.memory import MemoryMailbox, MemoryStorage
from tests.helpers import log_events
from tests.imap_helpers import (
    CAPS_BEFORE,
    Client,
    RecordingFactory,
    ServerTestBase,
    count_logouts,
    in_process,
    tls_options,
)


class LoginTests(ServerTestBase):
    @defer.inlineCallbacks
    def test_login_failure_and_success(self) -> Any:
        client = yield self.connect()
        response = yield client.command("a", "LOGIN joe wrong")
        self.assertEqual(response, b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
        response = yield client.command("b", 'LOGIN "joe" {6+}\r\nsecret')
        self.assertTrue(
            response.startswith(b"b OK [CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL+ "), response
        )
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
        assert client.transport is not None
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
        events = log_events(self)
        client.transport.loseConnection()
        yield client.lost
        yield self.factory.lost[0]
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        # The log line names the step and where it comes from.
        (failed,) = [e for e in events if "log_failure" in e]
        self.assertEqual(
            (failed["log_namespace"], failed["what"], failed["step"]),
            ("mailsrv.imap.server", "IMAP", "_deselect"),
        )
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
        from twisted.logger import LogLevel

        events = log_events(self)
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
        wrapped: Any = TLSMemoryBIOFactory(self.factory.policy.tls_context, False, self.factory)
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
