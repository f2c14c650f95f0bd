"""POP3 server tests: every command in each state, SASL, APOP, STLS,
pipelining, limits and timeouts.

Most tests drive one session through an in-memory transport with a
``task.Clock`` (deterministic failure delays and timeouts); the
``*OverTCP`` cases talk to the server over real loopback sockets, TLS
included.  The maildrop here is a small fake whose every call the tests can
inspect or make fail; tests/test_pop3_storage.py runs the same protocol over
the real storage.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, reactor, ssl
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest
from zope.interface import implementer

from mailsrv import log
from mailsrv.auth.checker import PasswdFileChecker
from mailsrv.auth.passwdfile import PasswdFile
from mailsrv.auth.passwords import hash_password
from mailsrv.errors import MailboxInUse, NoSuchMessage, TemporaryFailure
from mailsrv.interfaces import IMaildrop, MaildropEntry
from mailsrv.policy import ConnectionLimits, SessionPolicy
from mailsrv.pop3 import POP3, POP3Factory, State
from mailsrv.pop3.streaming import CHUNK_SIZE
from mailsrv.tls import generate_self_signed

PLAINTEXT_REFUSED = (
    b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n"
)
AUTH_FAILED = b"-ERR [AUTH] Authentication failed.\r\n"

MESSAGE_1 = b"From: a@example.org\r\nSubject: one\r\n\r\nHello\r\n.hidden dot\r\n..two dots\r\n"
MESSAGE_2 = b"Subject: two\r\n\r\nline 1\r\nline 2\r\nline 3\r\n"
MESSAGE_3 = b"Subject: three\r\n\r\nno final newline"


# -- fixtures ----------------------------------------------------------------


class FakeBox:
    """One user's INBOX as a fake storage keeps it, with a record of every
    call the POP3 server makes."""

    def __init__(self, messages: Iterable[bytes] = (), uidvalidity: int = 1700000000) -> None:
        self.messages: dict[int, bytes] = {}
        self.uidvalidity = uidvalidity
        self.seen: set[int] = set()
        self.holder: object = None
        self.commits: list[tuple[list[int], list[int]]] = []
        self.releases = 0
        self.logouts = 0
        self.fail_open: Exception | None = None
        self.fail_commit = False
        #: When set, open() and commit() return Deferreds parked here.
        self.slow: list[defer.Deferred[Any]] | None = None
        #: When set, retrieve() returns what this makes of the message.
        self.source: Callable[[bytes], IO[bytes]] | None = None
        for message in messages:
            self.add(message)

    def add(self, message: bytes) -> int:
        uid = max(self.messages, default=0) + 1
        self.messages[uid] = message
        return uid

    def unique_id(self, uid: int) -> str:
        return f"{uid:08X}{self.uidvalidity:08X}"


@implementer(IMaildrop)
class FakeMaildrop:
    def __init__(self, box: FakeBox) -> None:
        self.box = box
        self.opened: list[int] = []

    def _later(self, value: Any) -> Any:
        if self.box.slow is None:
            return value
        d: defer.Deferred[Any] = defer.Deferred()
        self.box.slow.append(d)
        return d.addCallback(lambda _: value() if callable(value) else value)

    def open(self) -> Any:
        def do_open() -> Sequence[MaildropEntry]:
            if self.box.fail_open is not None:
                raise self.box.fail_open
            if self.box.holder is not None and self.box.holder is not self:
                raise MailboxInUse("mailbox is locked by another POP3 session")
            self.box.holder = self
            self.opened = sorted(self.box.messages)
            return [
                MaildropEntry(uid, len(self.box.messages[uid]), self.box.unique_id(uid))
                for uid in self.opened
            ]

        if self.box.slow is None:
            return do_open()
        return self._later(do_open)

    def retrieve(self, uid: int) -> IO[bytes]:
        if uid not in self.box.messages:
            raise NoSuchMessage(f"message {uid} was expunged")
        if self.box.source is not None:
            return self.box.source(self.box.messages[uid])
        return io.BytesIO(self.box.messages[uid])

    def commit(self, deleted: Iterable[int], seen: Iterable[int]) -> Any:
        deleted, seen = list(deleted), list(seen)

        def do_commit() -> None:
            if self.box.fail_commit:
                raise TemporaryFailure("disk full")
            self.box.commits.append((deleted, seen))
            self.box.seen.update(seen)
            for uid in deleted:
                self.box.messages.pop(uid, None)
            self.release()

        if self.box.slow is None:
            return do_commit()
        return self._later(do_commit)

    def release(self) -> None:
        if self.box.holder is self:
            self.box.holder = None
            self.box.releases += 1


@implementer(IRealm)
class FakeRealm:
    """Gives each login its own maildrop on the user's shared box, with a
    logout that releases it (as mailsrv's MailRealm does)."""

    def __init__(self, boxes: dict[str, FakeBox]) -> None:
        self.boxes = boxes

    def requestAvatar(self, avatarId: Any, mind: object, *interfaces: Any) -> Any:
        assert IMaildrop in interfaces
        box = self.boxes[avatarId]
        maildrop = FakeMaildrop(box)

        def logout() -> None:
            box.logouts += 1
            maildrop.release()

        return (IMaildrop, maildrop, logout)


USERS = {
    "alice": "secret",
    "bob": "hunter2",
    "spacey": "two words here",
}


def write_passwd(path: str, hashed_users: dict[str, str] | None = None) -> PasswdFile:
    """A users file: the USERS with PLAIN secrets (so CRAM-MD5 and APOP work)
    and ``hashed_users`` with bcrypt hashes (so they cannot)."""
    lines = [f"{name}:{hash_password(pw, 'PLAIN')}\n" for name, pw in USERS.items()]
    for name, pw in (hashed_users or {}).items():
        lines.append(f"{name}:{hash_password(pw, 'BLF-CRYPT', rounds=4)}\n")
    with open(path, "w") as f:
        f.writelines(lines)
    return PasswdFile(path)


def make_tls_context(directory: str) -> tuple[Any, ssl.Certificate]:
    """A server context and the certificate a client should trust."""
    os.makedirs(directory, exist_ok=True)
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    generate_self_signed(cert_path, key_path, "localhost")
    with open(cert_path, "rb") as f:
        cert_pem = f.read()
    with open(key_path, "rb") as f:
        key_pem = f.read()
    server = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem).options()
    return server, ssl.Certificate.loadPEM(cert_pem)


class Fixture:
    """Users, boxes, a Portal and a policy for one test."""

    def __init__(
        self,
        test: unittest.TestCase,
        *,
        in_thread: bool = False,
        hashed_users: dict[str, str] | None = None,
        **policy: Any,
    ) -> None:
        self.passwd = write_passwd(test.mktemp(), hashed_users)
        self.checker = PasswdFileChecker(self.passwd, run_in_thread=in_thread)
        self.boxes = {
            "alice": FakeBox([MESSAGE_1, MESSAGE_2, MESSAGE_3]),
            "bob": FakeBox(),
            "spacey": FakeBox([MESSAGE_2]),
            "carol": FakeBox([MESSAGE_1]),
        }
        self.portal = Portal(FakeRealm(self.boxes), [self.checker])
        settings: dict[str, Any] = {
            "hostname": "mail.test",
            "failure_delay": 2.0,
            "max_failures": 3,
            "challenge_auth_available": self.checker.any_plaintext,
        }
        settings.update(policy)
        self.policy = SessionPolicy(**settings)


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    """A StringTransport that can "start TLS", recording when it did and
    what had been written before."""

    tls_context: Any = None
    written_before_tls = b""

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        self.tls_context = contextFactory
        self.written_before_tls = self.value()


class PausingTransport(TLSStringTransport):
    """Behaves like a socket whose buffer fills after every write: the
    registered streaming producer is paused until the test resumes it."""

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and self.streaming:
            self.producer.pauseProducing()


class Session:
    """One POP3 session over an in-memory transport, driven synchronously."""

    def __init__(
        self,
        fixture: Fixture,
        *,
        peer: str = "127.0.0.1",
        secure: bool = False,
        clock: Clock | None = None,
        transport: StringTransport | None = None,
    ) -> None:
        self.fixture = fixture
        self.clock = clock or Clock()
        factory = POP3Factory(fixture.portal, fixture.policy, implicit_tls=secure, clock=self.clock)
        address = IPv4Address("TCP", peer, 40110)
        self.protocol: POP3 = factory.buildProtocol(address)
        self.transport = transport if transport is not None else TLSStringTransport()
        self.transport.peerAddr = address
        self.protocol.makeConnection(self.transport)
        self.greeting = self.output()

    def output(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def send(self, data: bytes) -> bytes:
        """Send raw bytes; return everything the server answered at once."""
        self.protocol.dataReceived(data)
        return self.output()

    def command(self, line: str | bytes) -> bytes:
        raw = line.encode() if isinstance(line, str) else line
        return self.send(raw + b"\r\n")

    def login(self, user: str = "alice", password: str | None = None) -> bytes:
        password = USERS[user] if password is None else password
        self.command(f"USER {user}")
        return self.command(f"PASS {password}")

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def drop(self) -> None:
        """The client vanishes (or the server process crashes) mid-session."""
        if not self.protocol._lost:
            self.protocol.connectionLost(None)


def banner_of(greeting: bytes) -> bytes:
    match = re.search(rb"<[^<>]+>", greeting)
    assert match is not None, greeting
    return match.group(0)


def multiline(status: bytes, *lines: bytes) -> bytes:
    return status + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b".\r\n"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def retr_body(message: bytes) -> bytes:
    """What RETR must send for ``message``: dot-stuffed, CRLF-terminated."""
    lines = message.split(b"\r\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


# -- greeting and CAPA ---------------------------------------------------------


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


# -- AUTHORIZATION: USER/PASS, APOP -----------------------------------------------


class UserPassTests(unittest.SynchronousTestCase):
    def test_login(self) -> None:
        session = Session(Fixture(self))
        self.assertEqual(session.command("USER alice"), b"+OK Send your password.\r\n")
        size = len(MESSAGE_1) + len(MESSAGE_2) + len(MESSAGE_3)
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

    def test_bare_lf_line_ends_accepted(self) -> None:
        session = Session(Fixture(self))
        out = session.send(b"USER alice\nPASS secret\nSTAT\n")
        self.assertIn(b"+OK Logged in", out)
        self.assertTrue(out.endswith(b"+OK 3 %d\r\n" % (len(MESSAGE_1 + MESSAGE_2 + MESSAGE_3))))

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
        fixture.portal = Portal(FakeRealm(fixture.boxes), [SlowChecker()])
        for user in ("alice", "nobody"):
            session = Session(fixture, clock=clock)
            started = clock.seconds()
            session.login(user, "wrong")
            clock.advance(1.99)
            self.assertEqual(session.output(), b"", user)
            clock.advance(0.01)
            self.assertEqual(session.output(), AUTH_FAILED, user)
            self.assertEqual(clock.seconds() - started, 2.0)

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
        fixture.portal = Portal(FakeRealm(fixture.boxes), [VerySlowChecker()])
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


# -- AUTH (SASL) ---------------------------------------------------------------


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

    def test_failures_count_towards_close(self) -> None:
        session = Session(Fixture(self))
        for _ in range(3):
            session.command(b"AUTH PLAIN " + b64(b"\0alice\0bad"))
            session.clock.advance(2)
        self.assertTrue(session.closed)


# -- state checks and unknown commands --------------------------------------------


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
        self.assertEqual(session.command("UTF8"), b"-ERR Unknown command: UTF8\r\n")
        self.assertEqual(session.command(""), b"-ERR Empty command.\r\n")
        self.assertEqual(session.command(b"\xff\xfe"), b"-ERR Unknown command.\r\n")
        self.assertEqual(session.command("do_USER x"), b"-ERR Unknown command.\r\n")
        session.login()
        self.assertEqual(session.command("XTND XMIT"), b"-ERR Unknown command: XTND\r\n")

    def test_debug_log_leaves_out_secrets(self) -> None:
        events: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            if event.get("log_namespace", "").startswith("mailsrv.pop3"):
                events.append(formatEvent(event))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
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
        text = "\n".join(events)
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
        fixture = Fixture(self)
        session = Session(fixture)
        session.command("USER alice")
        self.assertEqual(session.command("QUIT"), b"+OK Logging out.\r\n")
        self.assertTrue(session.closed)
        self.assertEqual(fixture.boxes["alice"].commits, [])


# -- TRANSACTION ---------------------------------------------------------------------


class TransactionTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.fixture = Fixture(self)
        self.box = self.fixture.boxes["alice"]
        self.session = Session(self.fixture)
        self.session.login()
        self.sizes = [len(MESSAGE_1), len(MESSAGE_2), len(MESSAGE_3)]

    def cmd(self, line: str) -> bytes:
        return self.session.command(line)

    def test_stat(self) -> None:
        self.assertEqual(self.cmd("STAT"), b"+OK 3 %d\r\n" % sum(self.sizes))
        self.assertEqual(self.cmd("STAT 1"), b"-ERR This command takes no arguments.\r\n")

    def test_list(self) -> None:
        self.assertEqual(
            self.cmd("LIST"),
            multiline(
                b"+OK 3 messages (%d octets)" % sum(self.sizes),
                *(b"%d %d" % (i + 1, size) for i, size in enumerate(self.sizes)),
            ),
        )
        self.assertEqual(self.cmd("LIST 2"), b"+OK 2 %d\r\n" % self.sizes[1])

    def test_list_bad_numbers(self) -> None:
        for arg in ("0", "4", "99999999999", "-1", "+1", "x", "1.0", "0x1"):
            self.assertIn(
                self.cmd(f"LIST {arg}"),
                (b"-ERR No such message.\r\n", b"-ERR Invalid message number.\r\n"),
                arg,
            )
        self.assertEqual(self.cmd("LIST x"), b"-ERR Invalid message number.\r\n")
        self.assertEqual(self.cmd("LIST 4"), b"-ERR No such message.\r\n")
        self.assertEqual(self.cmd("LIST 1 2"), b"-ERR LIST takes at most one message number.\r\n")

    def test_uidl(self) -> None:
        ids = [self.box.unique_id(uid).encode() for uid in (1, 2, 3)]
        self.assertEqual(ids[0], b"000000016553F100")
        self.assertEqual(
            self.cmd("UIDL"),
            multiline(
                b"+OK Unique-ID listing follows",
                *(b"%d %s" % (i + 1, u) for i, u in enumerate(ids)),
            ),
        )
        self.assertEqual(self.cmd("UIDL 3"), b"+OK 3 " + ids[2] + b"\r\n")
        self.assertEqual(self.cmd("UIDL 4"), b"-ERR No such message.\r\n")
        self.assertEqual(self.cmd("UIDL 1 2"), b"-ERR UIDL takes at most one message number.\r\n")

    def test_retr_dot_stuffing(self) -> None:
        out = self.cmd("RETR 1")
        self.assertEqual(
            out,
            b"+OK %d octets\r\n" % len(MESSAGE_1)
            + b"From: a@example.org\r\nSubject: one\r\n\r\nHello\r\n"
            + b"..hidden dot\r\n...two dots\r\n.\r\n",
        )

    def test_retr_adds_missing_final_line_end(self) -> None:
        self.assertEqual(
            self.cmd("RETR 3"),
            b"+OK %d octets\r\n" % len(MESSAGE_3) + MESSAGE_3 + b"\r\n.\r\n",
        )

    def test_retr_bad_arguments(self) -> None:
        self.assertEqual(self.cmd("RETR"), b"-ERR RETR takes one message number.\r\n")
        self.assertEqual(self.cmd("RETR 1 2"), b"-ERR RETR takes one message number.\r\n")
        self.assertEqual(self.cmd("RETR 0"), b"-ERR No such message.\r\n")
        self.assertEqual(self.cmd("RETR one"), b"-ERR Invalid message number.\r\n")

    def test_top(self) -> None:
        self.assertEqual(
            self.cmd("TOP 1 0"),
            multiline(b"+OK Top of message follows", b"From: a@example.org", b"Subject: one", b""),
        )
        self.assertEqual(
            self.cmd("TOP 1 2"),
            multiline(
                b"+OK Top of message follows",
                b"From: a@example.org",
                b"Subject: one",
                b"",
                b"Hello",
                b"..hidden dot",
            ),
        )
        self.assertEqual(
            self.cmd("TOP 1 100"),
            b"+OK Top of message follows\r\n" + retr_body(MESSAGE_1) + b".\r\n",
        )
        self.assertEqual(
            self.cmd("TOP 3 5"), b"+OK Top of message follows\r\n" + MESSAGE_3 + b"\r\n.\r\n"
        )

    def test_top_bad_arguments(self) -> None:
        usage = b"-ERR TOP takes a message number and a number of lines.\r\n"
        self.assertEqual(self.cmd("TOP"), usage)
        self.assertEqual(self.cmd("TOP 1"), usage)
        self.assertEqual(self.cmd("TOP 1 2 3"), usage)
        self.assertEqual(self.cmd("TOP 1 -1"), b"-ERR Invalid number of lines.\r\n")
        self.assertEqual(self.cmd("TOP 1 x"), b"-ERR Invalid number of lines.\r\n")
        self.assertEqual(self.cmd("TOP 9 1"), b"-ERR No such message.\r\n")

    def test_dele(self) -> None:
        self.assertEqual(self.cmd("DELE 2"), b"+OK Message 2 marked for deletion.\r\n")
        for command in ("DELE 2", "RETR 2", "LIST 2", "TOP 2 0", "UIDL 2"):
            self.assertEqual(self.cmd(command), b"-ERR No such message.\r\n", command)
        self.assertEqual(self.cmd("STAT"), b"+OK 2 %d\r\n" % (self.sizes[0] + self.sizes[2]))
        listing = self.cmd("LIST")
        self.assertIn(b"\r\n1 %d\r\n3 %d\r\n.\r\n" % (self.sizes[0], self.sizes[2]), listing)
        self.assertNotIn(b"\r\n2 ", listing)
        self.assertNotIn(b"\r\n2 ", self.cmd("UIDL"))
        self.assertEqual(self.cmd("DELE"), b"-ERR DELE takes one message number.\r\n")
        self.assertEqual(self.box.commits, [])

    def test_rset(self) -> None:
        self.cmd("DELE 1")
        self.cmd("DELE 3")
        self.assertEqual(
            self.cmd("RSET"), b"+OK Maildrop has 3 messages (%d octets).\r\n" % sum(self.sizes)
        )
        self.assertEqual(self.cmd("LIST 1"), b"+OK 1 %d\r\n" % self.sizes[0])
        self.assertEqual(self.cmd("RSET x"), b"-ERR This command takes no arguments.\r\n")

    def test_noop(self) -> None:
        self.assertEqual(self.cmd("NOOP"), b"+OK\r\n")
        self.assertEqual(self.cmd("NOOP 1"), b"-ERR This command takes no arguments.\r\n")

    def test_last(self) -> None:
        self.assertEqual(self.cmd("LAST"), b"+OK 0\r\n")
        self.cmd("RETR 2")
        self.assertEqual(self.cmd("LAST"), b"+OK 2\r\n")
        self.cmd("TOP 1 0")
        self.assertEqual(self.cmd("LAST"), b"+OK 2\r\n")
        self.cmd("RSET")
        self.assertEqual(self.cmd("LAST"), b"+OK 0\r\n")
        self.assertEqual(self.cmd("LAST 1"), b"-ERR This command takes no arguments.\r\n")

    def test_quit_commits_deletions_and_seen(self) -> None:
        """RETR and a TOP that covered the whole message mark \\Seen; a partial TOP does not."""
        self.cmd("RETR 1")
        self.cmd("TOP 2 1")  # partial
        self.cmd("TOP 3 10")  # whole message
        self.cmd("DELE 2")
        self.assertEqual(self.cmd("QUIT"), b"+OK Logging out, 1 message deleted.\r\n")
        self.assertTrue(self.session.closed)
        self.assertEqual(self.box.commits, [([2], [1, 3])])
        self.assertEqual(sorted(self.box.messages), [1, 3])
        self.assertIsNone(self.box.holder)
        self.session.drop()
        self.assertEqual(self.box.logouts, 1)

    def test_quit_without_changes(self) -> None:
        self.assertEqual(self.cmd("QUIT"), b"+OK Logging out, 0 messages deleted.\r\n")
        self.assertEqual(self.box.commits, [([], [])])

    def test_rset_undeletes_before_quit(self) -> None:
        self.cmd("DELE 1")
        self.cmd("RSET")
        self.cmd("QUIT")
        self.assertEqual(self.box.commits, [([], [])])
        self.assertEqual(len(self.box.messages), 3)

    def test_commit_failure(self) -> None:
        self.box.fail_commit = True
        self.cmd("DELE 1")
        self.assertEqual(
            self.cmd("QUIT"),
            b"-ERR [SYS/TEMP] Could not update the mailbox; no messages were deleted.\r\n",
        )
        self.assertTrue(self.session.closed)
        self.assertEqual(len(self.box.messages), 3)
        self.assertIsNone(self.box.holder)  # released, so the next login works

    def test_connection_lost_deletes_nothing(self) -> None:
        """A dropped connection (or crashed server) after DELE commits nothing."""
        self.cmd("DELE 1")
        self.cmd("RETR 2")
        self.session.drop()
        self.assertEqual(self.box.commits, [])
        self.assertEqual(len(self.box.messages), 3)
        self.assertEqual(self.box.seen, set())
        self.assertIsNone(self.box.holder)
        self.assertEqual(self.box.logouts, 1)
        again = Session(self.fixture)
        self.assertTrue(again.login().startswith(b"+OK Logged in: 3 messages"))

    def test_message_removed_by_another_session(self) -> None:
        del self.box.messages[2]
        self.assertEqual(self.cmd("RETR 2"), b"-ERR Message 2 was removed by another session.\r\n")
        self.assertEqual(self.cmd("NOOP"), b"+OK\r\n")

    def test_listing_fixed_at_login(self) -> None:
        """RFC 1939: a message arriving during the session is not shown."""
        self.box.add(b"Subject: late\r\n\r\nx\r\n")
        self.assertEqual(self.cmd("STAT"), b"+OK 3 %d\r\n" % sum(self.sizes))
        self.assertEqual(self.cmd("LIST 4"), b"-ERR No such message.\r\n")


class MaildropLockTests(unittest.SynchronousTestCase):
    def test_second_login_gets_in_use(self) -> None:
        fixture = Fixture(self)
        box = fixture.boxes["alice"]
        first, second = Session(fixture), Session(fixture)
        first.login()
        self.assertEqual(
            second.login(), b"-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n"
        )
        self.assertIs(second.protocol.state, State.AUTHORIZATION)
        self.assertEqual(box.logouts, 1)  # the refused avatar was logged out
        self.assertFalse(second.closed)
        self.assertEqual(
            first.command("STAT"), b"+OK 3 %d\r\n" % len(MESSAGE_1 + MESSAGE_2 + MESSAGE_3)
        )
        first.command("QUIT")
        self.assertTrue(second.login().startswith(b"+OK Logged in"))

    def test_in_use_is_not_a_failed_login(self) -> None:
        fixture = Fixture(self)
        Session(fixture).login()
        second = Session(fixture)
        for _ in range(4):
            self.assertIn(b"[IN-USE]", second.login())
        self.assertFalse(second.closed)

    def test_storage_error_on_open(self) -> None:
        fixture = Fixture(self)
        fixture.boxes["alice"].fail_open = TemporaryFailure("index is being rebuilt")
        session = Session(fixture)
        self.assertEqual(
            session.login(),
            b"-ERR [SYS/TEMP] Cannot open the mailbox: index is being rebuilt\r\n",
        )
        self.assertEqual(fixture.boxes["alice"].logouts, 1)

    def test_long_error_text_is_cut_to_512_octets(self) -> None:
        """RFC 2449 4: a status line, CRLF included, is at most 512 octets."""
        fixture = Fixture(self)
        fixture.boxes["alice"].fail_open = TemporaryFailure("cannot read /" + "ä/" * 400)
        line = Session(fixture).login()
        self.assertLessEqual(len(line), 512)
        self.assertGreater(len(line), 500)
        self.assertTrue(line.startswith(b"-ERR [SYS/TEMP] Cannot open the mailbox: cannot read"))
        self.assertTrue(line.endswith(b"...\r\n"))
        line.decode("utf-8")  # not cut inside a character


# -- pipelining, line length, timeouts, limits -----------------------------------------


class PipeliningTests(unittest.SynchronousTestCase):
    def test_whole_session_in_one_packet(self) -> None:
        fixture = Fixture(self)
        session = Session(fixture)
        out = session.send(b"USER alice\r\nPASS secret\r\nSTAT\r\nLIST 1\r\nDELE 1\r\nQUIT\r\n")
        total = len(MESSAGE_1 + MESSAGE_2 + MESSAGE_3)
        self.assertEqual(
            out,
            b"+OK Send your password.\r\n"
            + b"+OK Logged in: 3 messages (%d octets).\r\n" % total
            + b"+OK 3 %d\r\n" % total
            + b"+OK 1 %d\r\n" % len(MESSAGE_1)
            + b"+OK Message 1 marked for deletion.\r\n"
            + b"+OK Logging out, 1 message deleted.\r\n",
        )
        self.assertEqual(fixture.boxes["alice"].commits, [([1], [])])

    def test_commands_wait_for_a_slow_maildrop(self) -> None:
        """Lines arriving while the maildrop opens run afterwards, in TRANSACTION state."""
        fixture = Fixture(self)
        box = fixture.boxes["alice"]
        box.slow = []
        session = Session(fixture)
        out = session.send(b"USER alice\r\nPASS secret\r\nSTAT\r\nQUIT\r\n")
        self.assertEqual(out, b"+OK Send your password.\r\n")
        box.slow.pop(0).callback(None)  # open() completes
        out = session.output()
        self.assertIn(b"+OK Logged in", out)
        self.assertTrue(out.endswith(b"+OK 3 %d\r\n" % len(MESSAGE_1 + MESSAGE_2 + MESSAGE_3)), out)
        self.assertEqual(box.commits, [])
        box.slow.pop(0).callback(None)  # commit() completes
        self.assertEqual(session.output(), b"+OK Logging out, 0 messages deleted.\r\n")

    def test_connection_lost_during_commit(self) -> None:
        """The commit in progress finishes; the lock is released only afterwards."""
        fixture = Fixture(self)
        box = fixture.boxes["alice"]
        session = Session(fixture)
        session.login()
        box.slow = []
        session.command("DELE 1")
        session.command("QUIT")
        session.drop()
        self.assertIsNotNone(box.holder)
        box.slow.pop(0).callback(None)
        self.assertEqual(box.commits, [([1], [])])
        self.assertIsNone(box.holder)
        self.assertEqual(box.logouts, 1)

    def test_connection_lost_during_open(self) -> None:
        fixture = Fixture(self)
        box = fixture.boxes["alice"]
        box.slow = []
        session = Session(fixture)
        session.login()
        session.drop()
        box.slow.pop(0).callback(None)
        self.assertIsNone(box.holder)
        self.assertEqual(box.logouts, 1)

    def test_backlog_pauses_reading(self) -> None:
        fixture = Fixture(self, max_pending_commands=4)
        box = fixture.boxes["alice"]
        box.slow = []
        session = Session(fixture)
        session.send(b"USER alice\r\nPASS secret\r\n" + b"NOOP\r\n" * 10)
        self.assertEqual(session.transport.producerState, "paused")
        box.slow.pop(0).callback(None)
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
    def test_idle_before_login(self) -> None:
        # A login deadline past the idle timeout, which is what is tested here.
        session = Session(Fixture(self, pop3_timeout=600, login_timeout=3600))
        session.clock.advance(599)
        self.assertFalse(session.closed)
        session.clock.advance(1)
        self.assertEqual(session.output(), b"-ERR Disconnected for inactivity.\r\n")
        self.assertTrue(session.closed)

    def test_activity_resets_timer_and_autologout_commits_nothing(self) -> None:
        fixture = Fixture(self, pop3_timeout=600)
        box = fixture.boxes["alice"]
        session = Session(fixture)
        session.login()
        session.command("DELE 1")
        session.clock.advance(500)
        session.command("NOOP")
        session.clock.advance(500)
        self.assertFalse(session.closed)
        session.clock.advance(100)
        self.assertTrue(session.closed)
        session.drop()
        self.assertEqual(box.commits, [])
        self.assertEqual(len(box.messages), 3)
        self.assertIsNone(box.holder)

    def test_client_that_stops_reading_a_retr_is_aborted(self) -> None:
        fixture = Fixture(self, pop3_timeout=600)
        box = fixture.boxes["bob"]
        box.add(b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 20000)
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
        self.assertIsNone(box.holder)

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


# -- STLS (in memory) and streaming -------------------------------------------------


class STLSTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.context = object()
        self.fixture = Fixture(self, tls_context=self.context, plaintext="never")

    def test_stls(self) -> None:
        session = Session(self.fixture)
        self.assertEqual(session.command("STLS"), b"+OK Begin TLS negotiation now.\r\n")
        assert isinstance(session.transport, TLSStringTransport)
        self.assertIs(session.transport.tls_context, self.context)
        self.assertEqual(
            session.transport.written_before_tls, b"+OK Begin TLS negotiation now.\r\n"
        )
        self.assertTrue(session.login().startswith(b"+OK Logged in"))

    def test_pipelined_commands_after_stls_are_discarded(self) -> None:
        """RFC 2595 3.1: the injected USER is never executed."""
        session = Session(self.fixture, peer="192.0.2.7")
        out = session.send(b"STLS\r\nUSER evil\r\nPASS x\r\nQUIT\r\npartial line")
        self.assertEqual(out, b"+OK Begin TLS negotiation now.\r\n")
        self.assertFalse(session.closed)
        self.assertEqual(session.command("PASS secret"), b"-ERR Send USER first.\r\n")

    def test_stls_queued_behind_a_slow_command_discards_the_rest(self) -> None:
        session = Session(self.fixture, peer="192.0.2.7")
        session.command(b"AUTH CRAM-MD5")
        session.send(b"*\r\nSTLS\r\nUSER evil\r\n")
        self.assertEqual(session.command("PASS secret"), b"-ERR Send USER first.\r\n")

    def test_user_name_forgotten(self) -> None:
        fixture = Fixture(self, tls_context=self.context, plaintext="always")
        session = Session(fixture)
        session.command("USER alice")
        session.command("STLS")
        self.assertEqual(session.command("PASS secret"), b"-ERR Send USER first.\r\n")

    def test_stls_twice(self) -> None:
        session = Session(self.fixture)
        session.command("STLS")
        self.assertEqual(session.command("STLS"), b"-ERR TLS is already active.\r\n")

    def test_stls_on_implicit_tls(self) -> None:
        session = Session(self.fixture, secure=True)
        self.assertEqual(session.command("STLS"), b"-ERR TLS is already active.\r\n")

    def test_stls_without_certificate(self) -> None:
        session = Session(Fixture(self))
        self.assertEqual(session.command("STLS"), b"-ERR TLS is not available.\r\n")

    def test_stls_with_arguments(self) -> None:
        session = Session(self.fixture)
        self.assertEqual(session.command("STLS now"), b"-ERR This command takes no arguments.\r\n")


class StreamingTests(unittest.SynchronousTestCase):
    def big_message(self, size: int) -> bytes:
        line = b".dot-started line of a big message, 64 characters long........\r\n"
        return b"Subject: big\r\n\r\n" + line * (size // len(line))

    def test_retr_streams_and_pauses(self) -> None:
        """A client that does not read pauses RETR: at most a chunk is read ahead."""
        fixture = Fixture(self)
        message = self.big_message(4 * 1024 * 1024)
        fixture.boxes["bob"].add(message)
        transport = PausingTransport()
        session = Session(fixture, transport=transport)
        session.login("bob")
        out = session.send(b"RETR 1\r\nNOOP\r\n")
        self.assertLessEqual(len(out), 2 * CHUNK_SIZE + 100)
        self.assertIsNotNone(transport.producer)
        received = [out]
        rounds = 0
        while transport.producer is not None:
            transport.producer.resumeProducing()
            chunk = session.output()
            self.assertLessEqual(len(chunk), 2 * CHUNK_SIZE)
            received.append(chunk)
            rounds += 1
        data = b"".join(received)
        self.assertGreater(rounds, 30)
        header = b"+OK %d octets\r\n" % len(message)
        self.assertEqual(data, header + retr_body(message) + b".\r\n+OK\r\n")

    def test_top_of_a_big_message_reads_little(self) -> None:
        fixture = Fixture(self)
        fixture.boxes["bob"].add(self.big_message(4 * 1024 * 1024))
        session = Session(fixture)
        session.login("bob")
        out = session.command("TOP 1 2")
        line = b"..dot-started line of a big message, 64 characters long........"
        self.assertEqual(
            out, multiline(b"+OK Top of message follows", b"Subject: big", b"", line, line)
        )

    def test_connection_lost_mid_retr(self) -> None:
        fixture = Fixture(self)
        box = fixture.boxes["bob"]
        box.add(self.big_message(1024 * 1024))
        transport = PausingTransport()
        session = Session(fixture, transport=transport)
        session.login("bob")
        session.send(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
        session.drop()
        self.assertEqual(box.commits, [])
        self.assertIsNone(box.holder)

    def test_read_error_mid_retr_aborts(self) -> None:
        """Half a message cannot be taken back: the connection is cut, no terminator sent."""

        class Broken(io.BytesIO):
            def read(self, size: int | None = -1) -> bytes:
                if self.tell() > 0:
                    raise OSError("I/O error")
                return super().read(size)

        fixture = Fixture(self)
        box = fixture.boxes["bob"]
        box.add(self.big_message(1024 * 1024))
        session = Session(fixture)
        session.login("bob")
        maildrop = session.protocol._transaction._maildrop
        maildrop.retrieve = lambda uid: Broken(box.messages[uid])
        out = session.send(b"RETR 1\r\nNOOP\r\n")
        self.assertFalse(out.endswith(b".\r\n"))
        self.assertNotIn(b"+OK\r\n", out[-10:])
        self.assertTrue(session.transport.disconnected or session.transport.disconnecting)
        self.flushLoggedErrors(OSError)


# -- over real sockets ------------------------------------------------------------------


class LineClient(Protocol):
    """A test client: raw bytes in, and waits for whole responses."""

    def __init__(self) -> None:
        self.buffer = b""
        self._waiter: tuple[Callable[[], bytes | None], defer.Deferred[bytes]] | None = None
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.connected_ = True

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        self._check()

    def connectionLost(self, reason: Any = None) -> None:
        self.connected_ = False
        if self._waiter is not None:
            _, d = self._waiter
            self._waiter = None
            d.errback(ConnectionError(f"connection closed; unread: {self.buffer!r}"))
        self.lost.callback(None)

    def _check(self) -> None:
        if self._waiter is None:
            return
        take, d = self._waiter
        result = take()
        if result is not None:
            self._waiter = None
            d.callback(result)

    def _wait(self, take: Callable[[], bytes | None]) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        self._waiter = (take, d)
        if not self.connected_:
            self.connectionLost()
        else:
            self._check()
        return d

    def line(self) -> defer.Deferred[bytes]:
        def take() -> bytes | None:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return None
            line, self.buffer = self.buffer[: end + 2], self.buffer[end + 2 :]
            return line

        return self._wait(take)

    def response(self) -> defer.Deferred[bytes]:
        """One multi-line response (or a single -ERR line)."""

        def take() -> bytes | None:
            if self.buffer.startswith(b"-ERR"):
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    return None
                end += 2
            else:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    if self.buffer.startswith(b"+OK\r\n.\r\n"):
                        end = 3
                    else:
                        return None
                end += 5
            data, self.buffer = self.buffer[:end], self.buffer[end:]
            return data

        return self._wait(take)

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    async def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return await self.line()


class TrackingFactory(POP3Factory):
    """Remembers its sessions so a test can wait until each has ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ended: list[defer.Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> POP3:
        protocol = super().buildProtocol(addr)
        ended: defer.Deferred[None] = defer.Deferred()
        original = protocol.connectionLost

        def connectionLost(reason: Any = None) -> None:
            try:
                original(reason)
            finally:  # an exception is the test's failure; a hang would hide it
                ended.callback(None)

        protocol.connectionLost = connectionLost  # type: ignore[method-assign]
        self.ended.append(ended)
        return protocol


class TCPServer:
    """The POP3 server on a loopback port, plain or implicit TLS."""

    def __init__(
        self,
        test: unittest.TestCase,
        fixture: Fixture,
        *,
        implicit_tls: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self.test = test
        self.factory = TrackingFactory(
            fixture.portal, fixture.policy, implicit_tls=implicit_tls, clock=clock
        )
        listening: Any = self.factory
        if implicit_tls:
            listening = TLSMemoryBIOFactory(fixture.policy.tls_context, False, self.factory)
        self.port = reactor.listenTCP(0, listening, interface="127.0.0.1")
        self.clients: list[LineClient] = []
        test.addCleanup(self.stop)

    async def connect(self, tls: Any = None) -> tuple[LineClient, bytes]:
        """A connected client and the greeting it got."""
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        client = await connectProtocol(endpoint, LineClient())
        self.clients.append(client)
        if tls is not None:
            client.transport.startTLS(tls)
        return client, await client.line()

    async def stop(self) -> None:
        for client in self.clients:
            if client.connected_:
                client.transport.abortConnection()
            await client.lost
        for ended in self.factory.ended:
            await ended
        await self.port.stopListening()


class OverTCPTests(unittest.TestCase):
    timeout = 20

    async def test_session_with_threaded_checker(self) -> None:
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
        self.assertEqual(fixture.boxes["alice"].commits, [([1], [1])])

    async def test_pipelined_session(self) -> None:
        fixture = Fixture(self)
        server = TCPServer(self, fixture)
        client, _ = await server.connect()
        client.send(
            b"CAPA\r\nUSER alice\r\nPASS secret\r\nLIST\r\nUIDL\r\nRETR 2\r\nTOP 1 0\r\nQUIT\r\n"
        )
        capa = await client.response()
        self.assertIn(b"\r\nPIPELINING\r\n", capa)
        self.assertEqual(await client.line(), b"+OK Send your password.\r\n")
        self.assertTrue((await client.line()).startswith(b"+OK Logged in"))
        self.assertIn(b"\r\n3 %d\r\n" % len(MESSAGE_3), await client.response())
        self.assertIn(b"\r\n1 000000016553F100\r\n", await client.response())
        self.assertEqual(
            await client.response(), b"+OK %d octets\r\n" % len(MESSAGE_2) + MESSAGE_2 + b".\r\n"
        )
        self.assertTrue((await client.response()).endswith(b"Subject: one\r\n\r\n.\r\n"))
        self.assertEqual(await client.line(), b"+OK Logging out, 0 messages deleted.\r\n")
        await client.lost
        self.assertEqual(fixture.boxes["alice"].commits, [([], [2])])

    async def test_big_retr(self) -> None:
        fixture = Fixture(self)
        line = b"a line of text that is exactly sixty-four characters long......\r\n"
        message = b"Subject: big\r\n\r\n" + line * (8 * 1024 * 1024 // len(line))
        fixture.boxes["bob"].add(message)
        server = TCPServer(self, fixture)
        client, _ = await server.connect()
        await client.command(b"USER bob")
        await client.command(b"PASS hunter2")
        client.send(b"RETR 1\r\n")
        response = await client.response()
        self.assertEqual(response, b"+OK %d octets\r\n" % len(message) + message + b".\r\n")

    async def test_client_vanishes_after_dele(self) -> None:
        """Nothing is deleted without QUIT, and the lock is free again."""
        fixture = Fixture(self)
        box = fixture.boxes["alice"]
        server = TCPServer(self, fixture)
        client, _ = await server.connect()
        await client.command(b"USER alice")
        await client.command(b"PASS secret")
        await client.command(b"DELE 1")
        client.transport.abortConnection()
        await client.lost
        await server.factory.ended[0]
        self.assertEqual(len(box.messages), 3)
        self.assertEqual(box.commits, [])
        self.assertIsNone(box.holder)
        client, _ = await server.connect()
        await client.command(b"USER alice")
        self.assertTrue((await client.command(b"PASS secret")).startswith(b"+OK Logged in: 3"))

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
        box = fixture.boxes["alice"]
        box.source = lambda _: io.BufferedReader(Endless())
        server = TCPServer(self, fixture)
        client, _ = await server.connect()
        await client.command(b"USER alice")
        self.assertTrue((await client.command(b"PASS secret")).startswith(b"+OK Logged in"))
        self.assertEqual(await client.command(b"RETR 1"), b"+OK %d octets\r\n" % len(MESSAGE_1))
        client.transport.pauseProducing()  # stop reading: the server is mid-message
        client.transport.abortConnection()
        await client.lost
        await server.factory.ended[0]
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertIsNone(box.holder)
        box.source = None
        client, greeting = await server.connect()
        self.assertTrue(greeting.startswith(b"+OK mailsrv"), greeting)
        await client.command(b"USER alice")
        self.assertTrue((await client.command(b"PASS secret")).startswith(b"+OK Logged in: 3"))

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

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
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

    async def test_failure_delay_and_close_with_clock(self) -> None:
        fixture = Fixture(self, failure_delay=5.0, max_failures=2)
        clock = Clock()
        server = TCPServer(self, fixture, clock=clock)
        client, _ = await server.connect()
        for attempt in range(2):
            client.send(b"USER alice\r\nPASS wrong%d\r\n" % attempt)
            self.assertEqual(await client.line(), b"+OK Send your password.\r\n")
            answer = client.line()
            # the autologout timer, and now the failed login's delayed answer
            await until(lambda: len(clock.getDelayedCalls()) == 2)
            self.assertFalse(answer.called)
            clock.advance(4.9)
            await server_round_trip()
            self.assertFalse(answer.called)
            clock.advance(0.1)
            self.assertEqual(await answer, AUTH_FAILED)
        await client.lost  # closed after max_failures


async def until(condition: Callable[[], bool], deadline: float = 10.0) -> None:
    """Let the reactor run until ``condition()`` holds (polling, with a deadline)."""
    waited = 0.0
    while not condition():
        if waited > deadline:
            raise AssertionError("condition not reached in time")
        d: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(0.005, d.callback, None)
        await d
        waited += 0.005


async def server_round_trip() -> None:
    """Give the reactor a few turns (to show that nothing arrives)."""
    for _ in range(3):
        d: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(0.01, d.callback, None)
        await d


class TLSTests(unittest.TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.server_context, self.cert = make_tls_context(self.mktemp())
        self.client_context = ssl.optionsForClientTLS("localhost", trustRoot=self.cert)

    async def test_stls_with_injected_command(self) -> None:
        """``STLS\\r\\nUSER evil\\r\\n`` in one packet: USER is never executed,
        and the session after the handshake starts fresh."""
        fixture = Fixture(self, tls_context=self.server_context, plaintext="never")
        server = TCPServer(self, fixture)
        client, _ = await server.connect()
        client.send(b"CAPA\r\n")
        self.assertIn(b"\r\nSTLS\r\n", await client.response())
        self.assertEqual(await client.command(b"USER alice"), PLAINTEXT_REFUSED)
        client.send(b"STLS\r\nUSER evil\r\n")
        self.assertEqual(await client.line(), b"+OK Begin TLS negotiation now.\r\n")
        self.assertEqual(client.buffer, b"")
        client.transport.startTLS(self.client_context)
        self.assertEqual(await client.command(b"PASS secret"), b"-ERR Send USER first.\r\n")
        client.send(b"CAPA\r\n")
        capa = await client.response()
        self.assertNotIn(b"STLS", capa)
        self.assertIn(b"\r\nUSER\r\n", capa)
        self.assertEqual(await client.command(b"STLS"), b"-ERR TLS is already active.\r\n")
        await client.command(b"USER alice")
        self.assertTrue((await client.command(b"PASS secret")).startswith(b"+OK Logged in: 3"))
        client.send(b"RETR 1\r\n")
        self.assertTrue((await client.response()).endswith(b"...two dots\r\n.\r\n"))
        self.assertEqual(await client.command(b"QUIT"), b"+OK Logging out, 0 messages deleted.\r\n")

    async def test_implicit_tls(self) -> None:
        fixture = Fixture(self, tls_context=self.server_context, plaintext="never")
        server = TCPServer(self, fixture, implicit_tls=True)
        client, greeting = await server.connect(tls=self.client_context)
        self.assertTrue(greeting.startswith(b"+OK mailsrv"))
        client.send(b"CAPA\r\n")
        capa = await client.response()
        self.assertNotIn(b"STLS", capa)
        self.assertIn(b"\r\nUSER\r\n", capa)
        client.send(b"AUTH PLAIN " + b64(b"\0alice\0secret") + b"\r\n")
        self.assertTrue((await client.line()).startswith(b"+OK Logged in: 3"))
        line = b"a line of text that is exactly sixty-four characters long......\r\n"
        message = b"Subject: big\r\n\r\n" + line * (2 * 1024 * 1024 // len(line))
        fixture.boxes["bob"].add(message)
        await client.command(b"QUIT")
        client, _ = await server.connect(tls=self.client_context)
        await client.command(b"USER bob")
        await client.command(b"PASS hunter2")
        client.send(b"RETR 1\r\n")
        self.assertEqual(
            await client.response(), b"+OK %d octets\r\n" % len(message) + message + b".\r\n"
        )
