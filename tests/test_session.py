"""The session plumbing IMAP and POP3 share (mailsrv.session), on its own:
connection limits, the failed-login rule, TLS/plaintext decisions and the
autologout timer with the login deadline, all driven by a ``task.Clock``.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import implementer

from mailsrv import log
from mailsrv.policy import CLOSE_GRACE, ConnectionLimits, SessionPolicy
from mailsrv.session import (
    Expiry,
    LoggedIn,
    LoginRefused,
    LoginResult,
    LoginUnavailable,
    SessionGuard,
    SessionTimer,
)
from tests.helpers import LaterLimits, log_events

LOOPBACK = IPv4Address("TCP", "127.0.0.1", 40000)
REMOTE = IPv4Address("TCP", "192.0.2.7", 40000)
OTHER_REMOTE = IPv4Address("TCP", "192.0.2.8", 40000)

_log = log.get_logger(__name__)


def later(answer: bool | defer.Deferred[bool]) -> defer.Deferred[bool]:
    """A count's answer that must come later (counts kept elsewhere)."""
    assert isinstance(answer, defer.Deferred), f"answered at once: {answer!r}"
    return answer


def guard(clock: Clock | None = None, *, secure: bool = False, **policy: Any) -> SessionGuard:
    return SessionGuard(
        SessionPolicy(**policy), clock or Clock(), secure=secure, name="TEST", logger=_log
    )


@implementer(ITLSTransport)
class TLSTransport(StringTransport):  # type: ignore[misc]  # startTLS is enough here
    started_with: Any = None

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        self.started_with = contextFactory


class ConnectionLimitTests(unittest.SynchronousTestCase):
    def test_address_slot_taken_at_open_and_given_back_at_close(self) -> None:
        limits = ConnectionLimits(per_user=5, per_ip=2)
        first, second, third = (guard(connections=limits) for _ in range(3))
        self.assertTrue(first.open(REMOTE))
        self.assertTrue(second.open(REMOTE))
        self.assertFalse(third.open(REMOTE))
        self.assertTrue(guard(connections=limits).open(OTHER_REMOTE))
        third.close()  # refused: it gives back nothing it did not take
        self.assertFalse(guard(connections=limits).open(REMOTE))
        first.close()
        first.close()  # twice: one slot back, not two
        self.assertTrue(guard(connections=limits).open(REMOTE))
        self.assertFalse(guard(connections=limits).open(REMOTE))

    def test_user_slot_taken_at_admit_and_given_back_at_release(self) -> None:
        limits = ConnectionLimits(per_user=2, per_ip=50)
        first, second = guard(connections=limits), guard(connections=limits)
        self.assertTrue(first.admit_user("alice"))
        self.assertTrue(second.admit_user("alice"))
        self.assertEqual(first.user, "alice")
        self.assertFalse(guard(connections=limits).admit_user("alice"))
        self.assertTrue(guard(connections=limits).admit_user("bob"))
        first.release_user()
        first.release_user()  # twice: one slot back, not two
        self.assertIsNone(first.user)
        self.assertTrue(guard(connections=limits).admit_user("alice"))
        self.assertFalse(guard(connections=limits).admit_user("alice"))

    def test_close_keeps_the_user_slot(self) -> None:
        """The user's slot goes with the session's avatar, which may outlive
        the connection (POP3's commit after the client left)."""
        limits = ConnectionLimits(per_user=1, per_ip=50)
        session = guard(connections=limits)
        session.open(REMOTE)
        session.admit_user("alice")
        session.close()
        self.assertFalse(guard(connections=limits).admit_user("alice"))
        session.release_user()
        self.assertTrue(guard(connections=limits).admit_user("alice"))

    def test_without_limits_everything_is_admitted(self) -> None:
        session = guard()
        for _ in range(100):
            self.assertTrue(session.open(REMOTE))
            self.assertTrue(session.admit_user("alice"))
        session.release_user()
        session.close()

    def test_failing_step_does_not_skip_the_next(self) -> None:
        """A pending answer that cannot be cancelled still leaves the
        address slot released (and the failure logged)."""

        class Unstoppable:
            def active(self) -> bool:
                return True

            def cancel(self) -> None:
                raise RuntimeError("cannot cancel")

        events = log_events(self)
        limits = ConnectionLimits(per_user=5, per_ip=1)
        session = guard(connections=limits)
        session.open(REMOTE)
        session._answer = Unstoppable()  # type: ignore[assignment]
        session.close()
        self.assertTrue(guard(connections=limits).open(REMOTE))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        texts = [e.get("log_format", "") for e in events if "log_failure" in e]
        self.assertEqual(texts, ["{what}: cleanup step {step} failed"])
        self.assertEqual([e["what"] for e in events if "log_failure" in e], ["TEST"])


class LaterAnswerTests(unittest.SynchronousTestCase):
    """Counts kept by another process (a worker's parent) answer later."""

    def limits(self, per_user: int = 1, per_ip: int = 1) -> LaterLimits:
        return LaterLimits(per_user=per_user, per_ip=per_ip)

    def test_slots_answered_later(self) -> None:
        limits = self.limits()
        first = guard(connections=limits)
        opened = first.open(REMOTE)
        assert isinstance(opened, defer.Deferred)
        self.assertNoResult(opened)
        limits.answer()
        self.assertTrue(self.successResultOf(later(opened)))
        admitted = first.admit_user("alice")
        assert isinstance(admitted, defer.Deferred)
        limits.answer()
        self.assertTrue(self.successResultOf(later(admitted)))
        self.assertEqual(first.user, "alice")
        second = guard(connections=limits)
        refused = second.open(REMOTE)
        limits.answer()
        self.assertFalse(self.successResultOf(later(refused)))
        second.close()  # refused: nothing to give back
        first.release_user()
        first.close()
        again = guard(connections=limits)
        reopened = again.open(REMOTE)
        limits.answer()
        self.assertTrue(self.successResultOf(later(reopened)))

    def test_connection_gone_before_the_address_answer(self) -> None:
        limits = self.limits()
        first = guard(connections=limits)
        opened = first.open(REMOTE)
        first.close()
        limits.answer()
        self.assertFalse(self.successResultOf(later(opened)))
        # The slot the count took for it was given back.
        second = guard(connections=limits)
        reopened = second.open(REMOTE)
        limits.answer()
        self.assertTrue(self.successResultOf(later(reopened)))

    def test_connection_gone_before_the_user_answer(self) -> None:
        limits = self.limits(per_ip=5)
        first = guard(connections=limits)
        first.open(REMOTE)
        limits.answer()
        admitted = first.admit_user("alice")
        first.close()
        limits.answer()
        self.assertFalse(self.successResultOf(later(admitted)))
        self.assertIsNone(first.user)
        second = guard(connections=limits)
        second.open(REMOTE)
        limits.answer()
        readmitted = second.admit_user("alice")
        limits.answer()
        self.assertTrue(self.successResultOf(later(readmitted)))


class TLSAndPlaintextTests(unittest.SynchronousTestCase):
    def test_tls_available(self) -> None:
        context = object()
        self.assertTrue(guard(tls_context=context).tls_available(TLSTransport()))
        self.assertFalse(guard().tls_available(TLSTransport()))  # no certificate
        self.assertFalse(guard(tls_context=context).tls_available(StringTransport()))
        self.assertFalse(guard(tls_context=context, secure=True).tls_available(TLSTransport()))

    def test_start_tls(self) -> None:
        context = object()
        session = guard(tls_context=context, plaintext="never")
        session.open(REMOTE)
        transport = TLSTransport()
        self.assertFalse(session.plaintext_allowed())
        self.assertEqual(session.mechanisms(), [])
        session.start_tls(transport)
        self.assertIs(transport.started_with, context)
        self.assertTrue(session.secure)
        self.assertFalse(session.tls_available(transport))
        self.assertTrue(session.plaintext_allowed())
        self.assertEqual(session.mechanisms(), ["PLAIN", "LOGIN"])

    def test_plaintext_policy(self) -> None:
        for plaintext, peer, allowed in (
            ("loopback", LOOPBACK, True),
            ("loopback", REMOTE, False),
            ("never", LOOPBACK, False),
            ("always", REMOTE, True),
        ):
            session = guard(plaintext=plaintext, challenge_auth_available=lambda: True)
            session.open(peer)
            self.assertEqual(session.plaintext_allowed(), allowed, (plaintext, peer))
            mechanisms = ["PLAIN", "LOGIN", "CRAM-MD5"] if allowed else ["CRAM-MD5"]
            self.assertEqual(session.mechanisms(), mechanisms)
        implicit = guard(plaintext="never", secure=True)
        implicit.open(REMOTE)
        self.assertTrue(implicit.plaintext_allowed())


@implementer(IRealm)
class Realm:
    def __init__(self) -> None:
        self.logouts = 0

    def requestAvatar(self, avatarId: Any, mind: object, *interfaces: Any) -> Any:
        if avatarId == b"broken":
            raise OSError(13, "Permission denied", "/var/mail/broken")

        def logout() -> None:
            self.logouts += 1

        return (interfaces[0], f"avatar of {avatarId.decode()}", logout)


@implementer(ICredentialsChecker)
class SlowChecker:
    """Rejects everyone, after ``cost`` seconds of the test's clock."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, clock: Clock, cost: float) -> None:
        self.clock, self.cost = clock, cost

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.clock.callLater(self.cost, d.errback, UnauthorizedLogin("no"))
        return d


class LoginTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.realm = Realm()
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret", broken=b"secret")
        self.portal = Portal(self.realm, [checker])
        self.guard = guard(self.clock, failure_delay=2.0, max_failures=3)

    def login(self, user: bytes, password: bytes, portal: Portal | None = None) -> LoginResult:
        d = self.guard.login(portal or self.portal, UsernamePassword(user, password), IRealm)
        return self.successResultOf(d)

    def test_logged_in(self) -> None:
        result = self.login(b"alice", b"secret")
        assert isinstance(result, LoggedIn)
        self.assertEqual(result.avatar, "avatar of alice")
        result.logout()
        self.assertEqual(self.realm.logouts, 1)
        self.assertEqual(self.guard.failures, 0)

    def test_refusals_are_counted_and_the_last_disconnects(self) -> None:
        results = [self.login(b"alice", b"wrong"), self.login(b"nobody", b"x")]
        results.append(self.login(b"alice", b"again"))
        self.assertEqual(
            results,
            [
                LoginRefused(failures=1, wait=2.0, disconnect=False),
                LoginRefused(failures=2, wait=2.0, disconnect=False),
                LoginRefused(failures=3, wait=2.0, disconnect=True),
            ],
        )

    def test_the_wait_counts_from_the_attempt(self) -> None:
        """However long the check took, the answer is due failure_delay
        after the attempt began: timing tells nothing."""
        for cost, wait in ((0.01, 1.99), (1.5, 0.5), (3.0, 0.0)):
            portal = Portal(self.realm, [SlowChecker(self.clock, cost)])
            d = self.guard.login(portal, UsernamePassword(b"alice", b"x"), IRealm)
            self.clock.advance(cost)
            refused = self.successResultOf(d)
            assert isinstance(refused, LoginRefused)
            self.assertAlmostEqual(refused.wait, wait)

    def test_sasl_refusal_waits_the_whole_delay(self) -> None:
        self.clock.advance(100)
        self.assertEqual(self.guard.refuse(), LoginRefused(1, 2.0, False))

    def test_realm_error_is_unavailable_and_not_counted(self) -> None:
        for _ in range(5):
            result = self.login(b"broken", b"secret")
            assert isinstance(result, LoginUnavailable)
            self.assertIsInstance(result.failure.value, OSError)
        self.assertEqual(self.guard.failures, 0)
        self.assertEqual(self.login(b"alice", b"wrong"), LoginRefused(1, 2.0, False))

    def test_answer_comes_when_due(self) -> None:
        refused = self.guard.refuse()
        d = self.guard.answer_refusal(refused, "answer")
        self.clock.advance(1.99)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(d), "answer")

    def test_answer_never_comes_after_close(self) -> None:
        d = self.guard.answer_refusal(self.guard.refuse(), "answer")
        self.guard.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertNoResult(d)


class TimerTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.expired: list[tuple[float, Expiry]] = []
        self.timer = SessionTimer(
            self.clock,
            lambda reason: self.expired.append((self.clock.seconds(), reason)),
            idle_before_login=60.0,
            login_timeout=150.0,
        )

    def test_idle_before_login(self) -> None:
        self.timer.start()
        self.clock.advance(59)
        self.assertEqual(self.expired, [])
        self.clock.advance(1)
        self.assertEqual(self.expired, [(60, Expiry.IDLE)])

    def test_activity_restarts_but_never_past_the_login_deadline(self) -> None:
        self.timer.start()
        for _ in range(3):  # at 50, 100, 150: a busy client that never logs in
            self.clock.advance(50)
            self.timer.activity()
        self.assertEqual(self.expired, [(150, Expiry.LOGIN_DEADLINE)])

    def test_deadline_caps_the_idle_timeout(self) -> None:
        self.timer.start()
        for _ in range(2):
            self.clock.advance(50)
            self.timer.activity()
        self.clock.advance(20)
        self.timer.activity()  # at 120: 30 seconds left, not 60
        self.clock.advance(29.9)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, [(150, Expiry.LOGIN_DEADLINE)])

    def test_login_ends_the_deadline(self) -> None:
        self.timer.start()
        self.clock.advance(50)
        self.timer.logged_in(600)
        self.assertIsNone(self.timer.login_by)
        for _ in range(3):
            self.clock.advance(500)
            self.timer.activity()
        self.clock.advance(599)
        self.assertEqual(self.expired, [])
        self.clock.advance(1)
        self.assertEqual(self.expired, [(2150, Expiry.IDLE)])

    def test_progress_restarts_with_the_current_period(self) -> None:
        self.timer.start()
        self.timer.logged_in(600)
        self.timer.set_idle(1860)  # IMAP IDLE's 31 minutes
        self.clock.advance(1800)
        self.timer.progress()
        self.clock.advance(1859)
        self.assertEqual(self.expired, [])
        self.timer.set_idle(600)
        self.clock.advance(599)
        self.assertEqual(self.expired, [])
        self.clock.advance(1)
        self.assertEqual(self.expired, [(1800 + 1859 + 600, Expiry.IDLE)])

    def test_grace_after_expiry(self) -> None:
        self.timer.start()
        self.clock.advance(60)
        self.timer.grace()
        self.clock.advance(CLOSE_GRACE)
        self.assertEqual(self.expired, [(60, Expiry.IDLE), (60 + CLOSE_GRACE, Expiry.GRACE)])

    def test_every_expiry_after_the_first_is_grace(self) -> None:
        """A login completing after the timeout (its answer re-arms the
        timer) does not give the connection a second life."""
        self.timer.start()
        self.clock.advance(60)
        self.timer.logged_in(600)
        self.clock.advance(600)
        self.assertEqual([r for _, r in self.expired], [Expiry.IDLE, Expiry.GRACE])

    def test_progress_does_nothing_once_fired(self) -> None:
        self.timer.start()
        self.timer.logged_in(600)
        self.clock.advance(600)
        self.timer.progress()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_is_for_good(self) -> None:
        self.timer.start()
        self.timer.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.timer.activity()
        self.timer.progress()
        self.timer.logged_in(600)
        self.timer.set_idle(600)
        self.timer.grace()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1000)
        self.assertEqual(self.expired, [])
