"""POP3 AUTHORIZATION: the greeting, USER/PASS, APOP, AUTH (SASL), failed
logins and their delay, the plaintext policy, and what opening the maildrop
can answer.  In memory with a ``task.Clock``, unless the class says TCP."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.trial import unittest
from zope.interface import implementer

from mailsrv.auth.realm import MailRealm
from mailsrv.errors import TemporaryFailure
from mailsrv.pop3 import State
from tests.helpers import log_events
from tests.pop3_helpers import (
    AUTH_FAILED,
    IN_USE,
    MESSAGE_1,
    PLAINTEXT_REFUSED,
    TOTAL,
    Fixture,
    Session,
    TCPServer,
    b64,
    banner_of,
    multiline,
    retr_body,
)


class GreetingTests(unittest.SynchronousTestCase):
    def test_greeting_carries_apop_timestamp(self) -> None:
        """With users whose secrets allow APOP, the greeting has an RFC 1939 timestamp."""
        session = Session(Fixture(self))
        self.assertRegex(session.greeting, rb"^\+OK .*<[0-9.]+@mail\.test>\r\n$")

    def test_timestamps_differ_per_connection(self) -> None:
        fixture = Fixture(self)
        self.assertNotEqual(
            banner_of(Session(fixture).greeting), banner_of(Session(fixture).greeting)
        )

    def test_no_timestamp_without_challenge_auth(self) -> None:
        session = Session(Fixture(self, challenge_auth_available=lambda: False))
        self.assertEqual(session.greeting, b"+OK mailsrv POP3 server ready.\r\n")
        self.assertEqual(
            session.command("APOP alice " + "0" * 32), b"-ERR APOP is not available.\r\n"
        )


# -- USER/PASS, APOP ----------------------------------------------------------------


class UserPassTests(unittest.SynchronousTestCase):
    def test_login(self) -> None:
        session = Session(Fixture(self))
        self.assertEqual(session.command("USER alice"), b"+OK Send your password.\r\n")
        size = TOTAL
        self.assertEqual(
            session.command("PASS secret"),
            f"+OK Logged in: 3 messages ({size} octets).\r\n".encode(),
        )
        self.assertIs(session.protocol.state, State.TRANSACTION)

    def test_command_keywords_are_case_insensitive(self) -> None:
        session = Session(Fixture(self))
        session.command("user alice")
        self.assertTrue(session.command("pAsS secret").startswith(b"+OK Logged in"))

    def test_password_with_spaces(self) -> None:
        """RFC 1939 7: the rest of the PASS line, spaces included, is the password."""
        session = Session(Fixture(self))
        self.assertTrue(session.login("spacey").startswith(b"+OK Logged in: 1 message ("))

    def test_hashed_password_user(self) -> None:
        session = Session(Fixture(self, hashed_users={"carol": "bcrypt pw"}))
        self.assertTrue(session.login("carol", "bcrypt pw").startswith(b"+OK Logged in"))

    def test_pass_without_user(self) -> None:
        session = Session(Fixture(self))
        self.assertEqual(session.command("PASS secret"), b"-ERR Send USER first.\r\n")

    def test_pass_consumes_user(self) -> None:
        """A failed PASS forgets the user name: the next PASS needs USER again."""
        session = Session(Fixture(self))
        session.login("alice", "wrong")
        session.clock.advance(2)
        self.assertEqual(session.output(), AUTH_FAILED)
        self.assertEqual(session.command("PASS secret"), b"-ERR Send USER first.\r\n")

    def test_bad_arguments(self) -> None:
        session = Session(Fixture(self))
        expected = b"-ERR USER takes exactly one argument: the user name.\r\n"
        self.assertEqual(session.command("USER"), expected)
        self.assertEqual(session.command("USER a b"), expected)
        session.command("USER alice")
        self.assertEqual(
            session.command("PASS"), b"-ERR PASS takes the password as its argument.\r\n"
        )

    def test_wrong_password_answered_after_delay(self) -> None:
        session = Session(Fixture(self))
        self.assertEqual(session.login("alice", "nope"), b"")
        session.clock.advance(1.9)
        self.assertEqual(session.output(), b"")
        session.clock.advance(0.1)
        self.assertEqual(session.output(), AUTH_FAILED)
        self.assertFalse(session.closed)
        self.assertIs(session.protocol.state, State.AUTHORIZATION)
        self.assertTrue(session.login().startswith(b"+OK Logged in"))

    def test_unknown_user_looks_like_wrong_password(self) -> None:
        session = Session(Fixture(self))
        session.login("nobody", "secret")
        session.clock.advance(2)
        self.assertEqual(session.output(), AUTH_FAILED)

    def test_failure_answered_at_the_same_moment_whatever_the_check_cost(self) -> None:
        """A wrong password for a user with an expensive hash and an unknown
        user checked against a cheap one are answered at the same instant:
        the delay counts from the command, not from the checker's verdict."""
        clock = Clock()

        @implementer(ICredentialsChecker)
        class SlowChecker:
            credentialInterfaces = (IUsernamePassword,)

            def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
                cost = 1.5 if credentials.username == b"alice" else 0.01
                d: defer.Deferred[Any] = defer.Deferred()
                clock.callLater(cost, d.errback, UnauthorizedLogin("no"))
                return d

        fixture = Fixture(self)
        fixture.portal = Portal(MailRealm(fixture.storage), [SlowChecker()])
        for user in ("alice", "nobody"):
            session = Session(fixture, clock=clock)
            session.login(user, "wrong")
            clock.advance(1.99)
            self.assertEqual(session.output(), b"", user)
            clock.advance(0.01)
            self.assertEqual(session.output(), AUTH_FAILED, user)

    def test_check_slower_than_the_delay_is_answered_at_once(self) -> None:
        clock = Clock()

        @implementer(ICredentialsChecker)
        class VerySlowChecker:
            credentialInterfaces = (IUsernamePassword,)

            def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
                d: defer.Deferred[Any] = defer.Deferred()
                clock.callLater(3.0, d.errback, UnauthorizedLogin("no"))
                return d

        fixture = Fixture(self)
        fixture.portal = Portal(MailRealm(fixture.storage), [VerySlowChecker()])
        session = Session(fixture, clock=clock)
        session.login("alice", "wrong")
        clock.advance(3.0)
        self.assertEqual(session.output(), AUTH_FAILED)

    def test_commands_wait_for_the_failure_delay(self) -> None:
        """Pipelined commands after a failed login run after its answer."""
        session = Session(Fixture(self))
        self.assertEqual(
            session.send(b"USER alice\r\nPASS bad\r\nCAPA\r\n"), b"+OK Send your password.\r\n"
        )
        session.clock.advance(2)
        out = session.output()
        self.assertTrue(out.startswith(AUTH_FAILED + b"+OK Capability list follows\r\n"), out)

    def test_close_after_max_failures(self) -> None:
        session = Session(Fixture(self))
        for attempt in range(3):
            session.login("alice", f"bad{attempt}")
            session.clock.advance(2)
            self.assertEqual(session.output(), AUTH_FAILED)
        self.assertTrue(session.closed)
        self.assertEqual(session.command("USER alice"), b"")

    def test_plaintext_refused_on_insecure_remote_connection(self) -> None:
        session = Session(Fixture(self), peer="192.0.2.7")
        self.assertEqual(session.command("USER alice"), PLAINTEXT_REFUSED)
        self.assertEqual(session.command("PASS secret"), PLAINTEXT_REFUSED)
        self.assertIs(session.protocol.state, State.AUTHORIZATION)

    def test_plaintext_policy_never(self) -> None:
        session = Session(Fixture(self, plaintext="never"))
        self.assertEqual(session.command("USER alice"), PLAINTEXT_REFUSED)

    def test_plaintext_policy_always(self) -> None:
        session = Session(Fixture(self, plaintext="always"), peer="192.0.2.7")
        self.assertTrue(session.login().startswith(b"+OK Logged in"))

    def test_implicit_tls_allows_plaintext(self) -> None:
        session = Session(Fixture(self, plaintext="never"), peer="192.0.2.7", secure=True)
        self.assertTrue(session.login().startswith(b"+OK Logged in"))


class APOPTests(unittest.SynchronousTestCase):
    def apop(self, session: Session, user: str, secret: str) -> bytes:
        digest = hashlib.md5(banner_of(session.greeting) + secret.encode()).hexdigest()
        return session.command(f"APOP {user} {digest}")

    def test_login(self) -> None:
        session = Session(Fixture(self))
        self.assertTrue(self.apop(session, "alice", "secret").startswith(b"+OK Logged in: 3"))

    def test_uppercase_digest(self) -> None:
        session = Session(Fixture(self))
        digest = hashlib.md5(banner_of(session.greeting) + b"secret").hexdigest().upper()
        self.assertTrue(session.command(f"APOP alice {digest}").startswith(b"+OK Logged in"))

    def test_allowed_without_tls(self) -> None:
        """APOP never sends the password, so the plaintext policy does not apply."""
        session = Session(Fixture(self, plaintext="never"), peer="192.0.2.7")
        self.assertTrue(self.apop(session, "alice", "secret").startswith(b"+OK Logged in"))

    def test_wrong_secret(self) -> None:
        session = Session(Fixture(self))
        self.assertEqual(self.apop(session, "alice", "wrong"), b"")
        session.clock.advance(2)
        self.assertEqual(session.output(), AUTH_FAILED)

    def test_digest_for_another_timestamp_fails(self) -> None:
        fixture = Fixture(self)
        first, second = Session(fixture), Session(fixture)
        digest = hashlib.md5(banner_of(first.greeting) + b"secret").hexdigest()
        second.command(f"APOP alice {digest}")
        second.clock.advance(2)
        self.assertEqual(second.output(), AUTH_FAILED)

    def test_hashed_secret_cannot_use_apop(self) -> None:
        session = Session(Fixture(self, hashed_users={"carol": "pw"}))
        self.apop(session, "carol", "pw")
        session.clock.advance(2)
        self.assertEqual(session.output(), AUTH_FAILED)

    def test_malformed(self) -> None:
        session = Session(Fixture(self))
        expected = b"-ERR APOP takes a user name and a 32-digit hex MD5 digest.\r\n"
        for line in (
            "APOP",
            "APOP alice",
            "APOP alice xyz",
            "APOP alice " + "g" * 32,
            "APOP alice " + "0" * 31,
            "APOP a b c",
        ):
            self.assertEqual(session.command(line), expected, line)


# -- AUTH (SASL) -------------------------------------------------------------------


class AuthTests(unittest.SynchronousTestCase):
    def test_list_mechanisms(self) -> None:
        session = Session(Fixture(self))
        self.assertEqual(
            session.command("AUTH"), multiline(b"+OK", b"PLAIN", b"LOGIN", b"CRAM-MD5")
        )

    def test_list_on_remote_plaintext_connection(self) -> None:
        session = Session(Fixture(self), peer="192.0.2.7")
        self.assertEqual(session.command("AUTH"), multiline(b"+OK", b"CRAM-MD5"))

    def test_plain_with_initial_response(self) -> None:
        session = Session(Fixture(self))
        out = session.command(b"AUTH PLAIN " + b64(b"\0alice\0secret"))
        self.assertTrue(out.startswith(b"+OK Logged in: 3"), out)

    def test_plain_with_matching_authzid(self) -> None:
        session = Session(Fixture(self))
        out = session.command(b"AUTH plain " + b64(b"alice\0alice\0secret"))
        self.assertTrue(out.startswith(b"+OK Logged in"), out)

    def test_plain_without_initial_response(self) -> None:
        session = Session(Fixture(self))
        self.assertEqual(session.command("AUTH PLAIN"), b"+ \r\n")
        out = session.command(b64(b"\0alice\0secret"))
        self.assertTrue(out.startswith(b"+OK Logged in"), out)

    def test_plain_proxy_authzid_refused(self) -> None:
        session = Session(Fixture(self))
        self.assertEqual(session.command(b"AUTH PLAIN " + b64(b"bob\0alice\0secret")), b"")
        session.clock.advance(2)
        self.assertEqual(session.output(), b"-ERR [AUTH] Proxy authorization is not supported\r\n")
        self.assertIs(session.protocol.state, State.AUTHORIZATION)

    def test_plain_wrong_password(self) -> None:
        session = Session(Fixture(self))
        session.command(b"AUTH PLAIN " + b64(b"\0alice\0nope"))
        session.clock.advance(2)
        self.assertEqual(session.output(), AUTH_FAILED)

    def test_plain_empty_initial_response(self) -> None:
        """``=`` is an empty initial response (RFC 5034), which PLAIN cannot use."""
        session = Session(Fixture(self))
        session.command("AUTH PLAIN =")
        session.clock.advance(2)
        self.assertEqual(session.output(), b"-ERR [AUTH] Malformed PLAIN message\r\n")

    def test_login_mechanism(self) -> None:
        session = Session(Fixture(self))
        self.assertEqual(session.command("AUTH LOGIN"), b"+ " + b64(b"Username:") + b"\r\n")
        self.assertEqual(session.command(b64(b"alice")), b"+ " + b64(b"Password:") + b"\r\n")
        self.assertTrue(session.command(b64(b"secret")).startswith(b"+OK Logged in"))

    def test_login_mechanism_initial_response(self) -> None:
        session = Session(Fixture(self))
        out = session.command(b"AUTH LOGIN " + b64(b"spacey"))
        self.assertEqual(out, b"+ " + b64(b"Password:") + b"\r\n")
        self.assertTrue(session.command(b64(b"two words here")).startswith(b"+OK Logged in"))

    def test_cram_md5(self) -> None:
        session = Session(Fixture(self))
        out = session.command("AUTH CRAM-MD5")
        self.assertTrue(out.startswith(b"+ ") and out.endswith(b"\r\n"), out)
        challenge = base64.b64decode(out[2:-2])
        self.assertRegex(challenge, rb"^<[0-9.]+@mail\.test>$")
        digest = hmac.new(b"secret", challenge, hashlib.md5).hexdigest().encode()
        self.assertTrue(session.command(b64(b"alice " + digest)).startswith(b"+OK Logged in"))

    def test_cram_md5_allowed_without_tls(self) -> None:
        session = Session(Fixture(self, plaintext="never"), peer="192.0.2.7")
        challenge = base64.b64decode(session.command("AUTH CRAM-MD5")[2:-2])
        digest = hmac.new(b"hunter2", challenge, hashlib.md5).hexdigest().encode()
        self.assertTrue(session.command(b64(b"bob " + digest)).startswith(b"+OK Logged in: 0"))

    def test_cram_md5_wrong_secret(self) -> None:
        session = Session(Fixture(self))
        challenge = base64.b64decode(session.command("AUTH CRAM-MD5")[2:-2])
        digest = hmac.new(b"wrong", challenge, hashlib.md5).hexdigest().encode()
        self.assertEqual(session.command(b64(b"alice " + digest)), b"")
        session.clock.advance(2)
        self.assertEqual(session.output(), AUTH_FAILED)

    def test_cram_md5_hashed_secret_fails(self) -> None:
        session = Session(Fixture(self, hashed_users={"carol": "pw"}))
        challenge = base64.b64decode(session.command("AUTH CRAM-MD5")[2:-2])
        digest = hmac.new(b"pw", challenge, hashlib.md5).hexdigest().encode()
        session.command(b64(b"carol " + digest))
        session.clock.advance(2)
        self.assertEqual(session.output(), AUTH_FAILED)

    def test_cram_md5_refuses_initial_response(self) -> None:
        session = Session(Fixture(self))
        session.command(b"AUTH CRAM-MD5 " + b64(b"alice"))
        session.clock.advance(2)
        self.assertEqual(
            session.output(), b"-ERR [AUTH] CRAM-MD5 does not take an initial response\r\n"
        )

    def test_cancel(self) -> None:
        session = Session(Fixture(self))
        session.command("AUTH LOGIN")
        session.command(b64(b"alice"))
        self.assertEqual(session.command("*"), b"-ERR Authentication cancelled.\r\n")
        self.assertIs(session.protocol.state, State.AUTHORIZATION)
        self.assertTrue(session.login().startswith(b"+OK Logged in"))

    def test_cancel_does_not_count_as_failure(self) -> None:
        session = Session(Fixture(self))
        for _ in range(5):
            session.command("AUTH PLAIN")
            self.assertEqual(session.command("*"), b"-ERR Authentication cancelled.\r\n")
        self.assertFalse(session.closed)

    def test_invalid_base64(self) -> None:
        session = Session(Fixture(self))
        self.assertEqual(
            session.command("AUTH PLAIN !!!"),
            b"-ERR Invalid base64 data in the initial response.\r\n",
        )
        session.command("AUTH PLAIN")
        self.assertEqual(
            session.command("not base64!"), b"-ERR Invalid base64 data in the response.\r\n"
        )
        self.assertEqual(session.command("NOOP"), b"-ERR NOOP is only valid after login.\r\n")

    def test_unknown_mechanism(self) -> None:
        session = Session(Fixture(self))
        self.assertEqual(
            session.command("AUTH GSSAPI"), b"-ERR Unsupported authentication mechanism.\r\n"
        )
        self.assertEqual(
            session.command("AUTH PLAIN a b"),
            b"-ERR AUTH takes a mechanism and an optional initial response.\r\n",
        )

    def test_plaintext_mechanisms_refused_on_insecure_remote(self) -> None:
        session = Session(Fixture(self), peer="192.0.2.7")
        self.assertEqual(
            session.command(b"AUTH PLAIN " + b64(b"\0alice\0secret")), PLAINTEXT_REFUSED
        )
        self.assertEqual(session.command("AUTH LOGIN"), PLAINTEXT_REFUSED)

    def test_cram_md5_not_offered_without_plaintext_secrets(self) -> None:
        session = Session(Fixture(self, challenge_auth_available=lambda: False))
        self.assertEqual(
            session.command("AUTH CRAM-MD5"), b"-ERR Unsupported authentication mechanism.\r\n"
        )

    def test_mechanism_refusals_count_towards_close(self) -> None:
        """A refusal by the mechanism itself (here a proxy authzid, never
        asked of the checker) is a failed login like a wrong password."""
        session = Session(Fixture(self))
        refused = b"-ERR [AUTH] Proxy authorization is not supported\r\n"
        for attempt in range(3):
            self.assertFalse(session.closed, attempt)
            session.command(b"AUTH PLAIN " + b64(b"bob\0alice\0secret"))
            session.clock.advance(2)
            self.assertEqual(session.output(), refused)
        self.assertTrue(session.closed)


# -- what opening the maildrop answers ----------------------------------------------


class OpenMaildropTests(unittest.SynchronousTestCase):
    def test_in_use_is_not_a_failed_login(self) -> None:
        """[IN-USE] leaves the session in AUTHORIZATION, counts no failure
        and logs the refused avatar out."""
        fixture = Fixture(self)
        Session(fixture).login()
        second = Session(fixture)
        for _ in range(4):
            self.assertEqual(second.login(), IN_USE)
        self.assertFalse(second.closed)
        self.assertIs(second.protocol.state, State.AUTHORIZATION)
        self.assertEqual(fixture.faults.logouts["alice"], 4)

    def test_storage_error_on_open(self) -> None:
        fixture = Fixture(self)
        fixture.faults.open_error = TemporaryFailure("index is being rebuilt")
        session = Session(fixture)
        self.assertEqual(
            session.login(),
            b"-ERR [SYS/TEMP] Cannot open the mailbox: index is being rebuilt\r\n",
        )
        self.assertEqual(fixture.faults.logouts["alice"], 1)
        self.assertFalse(fixture.locked())
        fixture.faults.open_error = None
        self.assertTrue(session.login().startswith(b"+OK Logged in: 3"))

    def test_long_error_text_is_cut_to_512_octets(self) -> None:
        """RFC 2449 4: a status line, CRLF included, is at most 512 octets."""
        fixture = Fixture(self)
        fixture.faults.open_error = TemporaryFailure("cannot read /" + "ä/" * 400)
        line = Session(fixture).login()
        self.assertLessEqual(len(line), 512)
        self.assertGreater(len(line), 500)
        self.assertTrue(line.startswith(b"-ERR [SYS/TEMP] Cannot open the mailbox: cannot read"))
        self.assertTrue(line.endswith(b"...\r\n"))
        line.decode("utf-8")  # not cut inside a character


# -- over TCP --------------------------------------------------------------------------


class LoginOverTCPTests(unittest.TestCase):
    timeout = 20

    async def test_session_with_threaded_checker(self) -> None:
        """The daemon's checker hashes in a thread: the answers still come in order."""
        fixture = Fixture(self, in_thread=True)
        server = TCPServer(self, fixture)
        client, greeting = await server.connect()
        self.assertTrue(greeting.startswith(b"+OK mailsrv"))
        self.assertEqual(await client.command(b"USER alice"), b"+OK Send your password.\r\n")
        self.assertTrue((await client.command(b"PASS secret")).startswith(b"+OK Logged in: 3"))
        client.send(b"RETR 1\r\n")
        self.assertEqual(
            await client.response(),
            b"+OK %d octets\r\n" % len(MESSAGE_1) + retr_body(MESSAGE_1) + b".\r\n",
        )
        self.assertEqual(await client.command(b"DELE 1"), b"+OK Message 1 marked for deletion.\r\n")
        self.assertEqual(await client.command(b"QUIT"), b"+OK Logging out, 1 message deleted.\r\n")
        await client.lost
        self.assertEqual(fixture.uids(), [2, 3])
        self.assertEqual(fixture.seen(), [])

    async def test_auth_with_empty_trailing_argument(self) -> None:
        """``AUTH CRAM-MD5 `` (a space, then nothing, as mutt sends it in
        IMAP) means no initial response, for every mechanism."""
        server = TCPServer(self, Fixture(self))
        client, _ = await server.connect()
        line = await client.command(b"AUTH CRAM-MD5 ")
        self.assertTrue(line.startswith(b"+ "), line)
        challenge = base64.b64decode(line[2:-2])
        digest = hmac.new(b"secret", challenge, hashlib.md5).hexdigest().encode()
        self.assertTrue(
            (await client.command(b64(b"alice " + digest))).startswith(b"+OK Logged in: 3")
        )
        for mechanism, challenge in ((b"PLAIN", b""), (b"LOGIN", b"Username:")):
            client, _ = await server.connect()
            line = await client.command(b"AUTH " + mechanism + b" ")
            self.assertEqual(line, b"+ " + b64(challenge) + b"\r\n")
            self.assertEqual(await client.command(b"*"), b"-ERR Authentication cancelled.\r\n")

    async def test_realm_error_is_temporary_and_not_counted(self) -> None:
        """An error behind a right password is the server's: answered at
        once with [SYS/TEMP], never counted as a failed login, and logged
        as an error with its traceback."""

        @implementer(IRealm)
        class BrokenRealm:
            def requestAvatar(self, avatarId: Any, mind: object, *interfaces: Any) -> Any:
                raise OSError(13, "Permission denied", "/var/mail/alice")

        events = log_events(self)
        fixture = Fixture(self, failure_delay=5.0, max_failures=1)
        fixture.portal = Portal(BrokenRealm(), [fixture.checker])
        # The clock is never advanced: a failed-login delay would never end.
        server = TCPServer(self, fixture, clock=Clock())
        client, _ = await server.connect()
        refused = b"-ERR [SYS/TEMP] Temporary authentication failure.\r\n"
        await client.command(b"USER alice")
        self.assertEqual(await client.command(b"PASS secret"), refused)
        self.assertEqual(await client.command(b"AUTH PLAIN " + b64(b"\0alice\0secret")), refused)
        # max_failures is 1: one counted failure would have closed the connection.
        client.send(b"CAPA\r\n")
        self.assertIn(b"\r\nUSER\r\n", await client.response())
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)
        logged = [e for e in events if "log_failure" in e]
        self.assertEqual([e["log_level"] for e in logged], [LogLevel.error] * 2)
        self.assertIn("Permission denied", logged[0]["log_failure"].getTraceback())
