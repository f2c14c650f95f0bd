"""STARTTLS, LOGIN and AUTHENTICATE (RFC 3501 6.2), with SASL-IR (RFC 4959).

The login itself is here too: the session's
:class:`~mailsrv.session.SessionGuard` asks the portal and keeps the
per-user connection limit and the failed-login rule (each failure answered
``auth.failure_delay`` after the attempt began, the connection closed after
``auth.max_failures``; an error of the checker or realm is no failure);
this module says its verdicts in IMAP.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

import attrs
from twisted.cred.credentials import ICredentials, UsernamePassword
from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from mailsrv.auth import challengers, sasl
from mailsrv.errors import StorageError
from mailsrv.imap.lexer import ATOM_CHARS, Reader
from mailsrv.imap.output import Done, bad, no
from mailsrv.imap.registry import (
    NOT_AUTHENTICATED,
    Command,
    CommandSpec,
    Result,
    Simple,
    State,
    no_arguments,
)
from mailsrv.imap.session import LOG
from mailsrv.interfaces import IAccount
from mailsrv.session import LoggedIn, LoginRefused, LoginResult, LoginUnavailable

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "Authenticate", "Login"]


#: SASL mechanisms in which the server speaks first (no SASL-IR for them).
_SERVER_FIRST = frozenset({"CRAM-MD5"})


@attrs.frozen
class Login(Command):
    username: bytes
    password: bytes


@attrs.frozen
class Authenticate(Command):
    """``mechanism`` upper-cased; ``initial_response`` is the SASL-IR
    argument as sent (base64 text, ``=`` for empty), or None."""

    mechanism: str
    initial_response: bytes | None = None


def parse_login(reader: Reader, tag: str, name: str, uid: bool) -> Login:
    reader.space()
    user = reader.astring("a user name")
    reader.space()
    password = reader.astring("a password")
    reader.end()
    return Login(tag, name, user, password)


def parse_authenticate(reader: Reader, tag: str, name: str, uid: bool) -> Authenticate:
    reader.space()
    mechanism = reader.atom("a SASL mechanism").upper()
    initial: bytes | None = None
    if reader.peek() == 0x20:
        reader.space()
        # A space and nothing after it (mutt's "AUTHENTICATE CRAM-MD5 ")
        # is no initial response, as Dovecot reads it; "=" is an empty one.
        if reader.peek() is not None:
            initial = reader.run(ATOM_CHARS, "a base64 initial response")
    reader.end()
    return Authenticate(tag, name, mechanism, initial)


# -- STARTTLS -------------------------------------------------------------------


def handle_starttls(session: Session, command: Simple) -> Done:
    if not session.tls_available():
        if session.guard.secure:
            raise bad("TLS is already active")
        raise no("TLS is not available", "CANNOT")
    return Done(text="Begin TLS negotiation now", after=session.start_tls)


def _starttls_capability(session: Session) -> Sequence[str]:
    offered = session.state is State.NOT_AUTHENTICATED and session.tls_available()
    return ["STARTTLS"] if offered else []


# -- LOGIN and AUTHENTICATE -------------------------------------------------------


def handle_login(session: Session, command: Login) -> Result:
    if not session.guard.plaintext_allowed():
        raise no("Plaintext login is disabled; use STARTTLS first", "PRIVACYREQUIRED")
    return log_in(session, UsernamePassword(command.username, command.password))


def _login_capability(session: Session) -> Sequence[str]:
    refused = session.state is State.NOT_AUTHENTICATED and not session.guard.plaintext_allowed()
    return ["LOGINDISABLED"] if refused else []


def handle_authenticate(session: Session, command: Authenticate) -> Result:
    known = command.mechanism in sasl.MECHANISMS or command.mechanism in session.policy.challengers
    if not known:
        raise no(f"Unsupported mechanism {command.mechanism}", "CANNOT")
    if command.mechanism not in session.mechanisms():
        if command.mechanism in sasl.PLAINTEXT_MECHANISMS and not session.plaintext_allowed():
            raise no("Plaintext authentication is disabled; use STARTTLS", "PRIVACYREQUIRED")
        raise no(f"{command.mechanism} is not available", "CANNOT")
    if command.initial_response is not None and command.mechanism in _SERVER_FIRST:
        # RFC 4959 3: an initial response to a server-first mechanism is BAD.
        raise bad(f"{command.mechanism} does not take an initial response")
    mechanism = challengers.create(session.policy, command.mechanism, session.channel_bindings())
    if mechanism is None:
        raise no(f"{command.mechanism} is not available", "CANNOT")
    initial: bytes | None = None
    if command.initial_response is not None:
        initial = _b64decode(command.initial_response)
        if initial is None:
            raise bad("Invalid base64 in the initial response")
    exchange = _SaslExchange(session, mechanism)
    exchange.step(mechanism.start(initial))
    return exchange.result


def _authenticate_capability(session: Session) -> Sequence[str]:
    if session.state is not State.NOT_AUTHENTICATED:
        return []
    return [f"AUTH={mechanism}" for mechanism in session.mechanisms()]


def _b64decode(data: bytes) -> bytes | None:
    if data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


class _SaslExchange:
    """An AUTHENTICATE in progress: challenges out, responses in.

    A step that needs a look-up comes as a Deferred; until it fires the
    exchange reads nothing (the session pauses a busy command without a
    continuation).  A challenge that carries an error is the answer to a
    failed login: it is counted and sent after the failure delay, and the
    client's reply to it, even ``*`` (RFC 7628 3.2.3), ends in that NO.
    """

    def __init__(self, session: Session, mechanism: sasl.Mechanism) -> None:
        self.session = session
        self.mechanism = mechanism
        self.result: defer.Deferred[Done] = defer.Deferred()
        self._failure: Done | None = None

    def step(self, step: sasl.StepResult) -> None:
        session = self.session
        if isinstance(step, defer.Deferred):
            session.end_continuation()
            step.addCallbacks(self.step, self._broken)
            return
        if isinstance(step, sasl.Challenge) and step.failed:
            session.end_continuation()
            _refused(session, session.guard.refuse()).addCallback(
                self._failure_challenge, step.data
            )
            return
        if isinstance(step, sasl.Challenge):
            # Sent before reading resumes, so a line already waiting is
            # taken as the answer to it, after it.
            session.send(b"+ " + base64.b64encode(step.data) + b"\r\n")
            session.expect_continuation(self)
            return
        session.end_continuation()
        if isinstance(step, sasl.Refusal):
            _refused(session, session.guard.refuse()).chainDeferred(self.result)
            return
        log_in(session, step.credentials).chainDeferred(self.result)

    def _failure_challenge(self, done: Done, data: bytes) -> None:
        self._failure = done
        self.session.send(b"+ " + base64.b64encode(data) + b"\r\n")
        self.session.expect_continuation(self)

    def _broken(self, failure: Failure) -> None:
        """A look-up failed: a database or a token endpoint away is
        ``NO [UNAVAILABLE]`` (RFC 5530 3), not counted; anything else is a
        bug (``NO [SERVERBUG]``)."""
        self.session.end_continuation()
        if isinstance(failure.value, StorageError):
            LOG.warn("IMAP: authentication could not be completed: {e}", e=failure.value)
            self.result.callback(
                Done("NO", "Authentication is temporarily unavailable", "UNAVAILABLE")
            )
            return
        self.result.errback(failure)

    def line(self, data: bytes) -> None:
        if self._failure is not None:
            self.session.end_continuation()
            self.result.callback(self._failure)
            return
        if data == b"*":
            self.session.end_continuation()
            self.result.callback(Done("BAD", "AUTHENTICATE cancelled"))
            return
        decoded = _b64decode(data) if data else b""
        if decoded is None:
            self.session.end_continuation()
            self.result.callback(Done("BAD", "Invalid base64 in the SASL response"))
            return
        try:
            step = self.mechanism.respond(decoded)
        except Exception:
            # A bug in a mechanism ends the command (NO [SERVERBUG]), not
            # the connection.
            self.session.end_continuation()
            self.result.errback()
            return
        self.step(step)

    def cancel(self) -> None:
        """Nothing to stop: the answer is simply never written."""


# -- the login --------------------------------------------------------------------


def log_in(session: Session, credentials: ICredentials) -> defer.Deferred[Done]:
    """Ask the portal for the account; the completion of LOGIN or
    AUTHENTICATE."""
    d = session.guard.login(session.portal, credentials, IAccount)
    return cast("defer.Deferred[Done]", d.addCallback(_verdict, session))


def _verdict(result: LoginResult, session: Session) -> Result:
    if isinstance(result, LoginRefused):
        return _refused(session, result)
    if isinstance(result, LoginUnavailable):
        return _unavailable(result)
    return _logged_in(result, session)


def _unavailable(result: LoginUnavailable) -> Done:
    failure = result.failure
    if isinstance(failure.value, StorageError):
        # A right password whose mail store cannot be reached just now
        # (a database restarting): expected in operation, so no traceback.
        LOG.warn("IMAP: cannot open the account: {e}", e=failure.value)
        return Done("NO", "Cannot open the account just now", "UNAVAILABLE")
    # The checker or the realm failed (an unreadable users file or home):
    # not the client's guess, so it is neither counted toward
    # max_failures nor delayed; RFC 5530 3 calls it UNAVAILABLE.
    LOG.failure("IMAP: login could not be completed", failure, level=LogLevel.error)
    return Done("NO", "Authentication is temporarily unavailable", "UNAVAILABLE")


def _logged_in(result: LoggedIn, session: Session) -> Result:
    account, logout = result.avatar, result.logout
    if session.lost:
        logout()
        return Done("NO", "Connection lost")
    user = str(account.username)
    admitted = session.admit(user, account, logout)
    if isinstance(admitted, defer.Deferred):
        return admitted.addCallback(_admission, session, user, logout)
    return _admission(admitted, session, user, logout)


def _admission(admitted: bool, session: Session, user: str, logout: Callable[[], None]) -> Done:
    if session.lost:
        logout()
        return Done("NO", "Connection lost")
    if not admitted:
        logout()
        LOG.warn("IMAP: too many connections for {user}", user=user)
        return Done("NO", "Too many connections for this user", "LIMIT")
    LOG.info("IMAP: {user} logged in", user=user)
    caps = "CAPABILITY " + " ".join(session.capabilities())
    return Done(text="Logged in", code=caps)


def _refused(session: Session, refused: LoginRefused) -> defer.Deferred[Done]:
    """Answer a counted failed login when the guard says it is due
    (``failure_delay`` after the attempt began, not after the check ended);
    at ``max_failures`` the answer is followed by BYE.  IMAP logs nothing
    per failed login."""
    bye = "Too many failed authentication attempts" if refused.disconnect else None
    done = Done("NO", "Authentication failed", "AUTHENTICATIONFAILED", bye=bye)
    return session.guard.answer_refusal(refused, done)


COMMANDS = (
    CommandSpec(
        "STARTTLS",
        no_arguments,
        handle_starttls,
        NOT_AUTHENTICATED,
        capability=_starttls_capability,
    ),
    CommandSpec(
        "LOGIN", parse_login, handle_login, NOT_AUTHENTICATED, capability=_login_capability
    ),
    CommandSpec(
        "AUTHENTICATE",
        parse_authenticate,
        handle_authenticate,
        NOT_AUTHENTICATED,
        capability=_authenticate_capability,
    ),
)
