"""The AUTHORIZATION state: USER/PASS (RFC 1939 7), APOP (RFC 1939 7), AUTH
(SASL, RFC 5034) and STLS (RFC 2595), and the login they lead to: the
portal's verdict, the per-user connection limit, and opening the maildrop.

The failed-login rule itself (count, delay, disconnect, "unavailable") is
:class:`mailsrv.session.SessionGuard`'s; this module says it in POP3.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

from twisted.cred.credentials import ICredentials, UsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IAddress
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from mailsrv.auth import challengers, sasl
from mailsrv.errors import MailboxInUse, StorageError
from mailsrv.interfaces import IMaildrop, MaildropEntry
from mailsrv.pop3.commands import (
    LOG,
    CommandError,
    Connection,
    Result,
    State,
    command,
    no_arguments,
)
from mailsrv.pop3.transaction import Transaction
from mailsrv.pop3.wire import decode_base64, is_hex
from mailsrv.session import LoggedIn, LoginRefused, LoginResult, LoginUnavailable, SessionGuard

__all__ = ["AUTH_FAILED", "PLAINTEXT_DISALLOWED", "Authorization", "address"]

PLAINTEXT_DISALLOWED = "Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
AUTH_FAILED = "Authentication failed."

#: Called with the opened maildrop's Transaction and the user name; returns
#: False if the connection is gone (the session has been ended instead).
EnterTransaction = Callable[[Transaction, str], bool]


def address(peer: IAddress | None) -> str:
    """``host:port`` of a client, for log lines."""
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    return f"{host}:{port}" if host is not None else str(peer)


class Authorization:
    """One connection's AUTHORIZATION-state commands and login.

    ``banner`` is the APOP timestamp of the greeting (None: APOP is not
    offered); ``enter`` moves the session to TRANSACTION.
    """

    def __init__(
        self,
        conn: Connection,
        portal: Portal,
        guard: SessionGuard,
        enter: EnterTransaction,
    ) -> None:
        self._conn = conn
        self._portal = portal
        self._guard = guard
        self._enter = enter
        self.banner: bytes | None = None
        self._pending_user: bytes | None = None
        self._sasl: sasl.Mechanism | None = None
        #: The failed login an error challenge answered (SCRAM's e=,
        #: OAUTHBEARER's JSON): the client's reply to it gets the -ERR.
        self._sasl_failure: LoginRefused | None = None
        #: The client sent UTF8 (RFC 6856 2): it is sent messages with
        #: UTF-8 headers as they are stored.
        self.utf8 = False

    @property
    def in_sasl(self) -> bool:
        """An AUTH exchange waits for the client's next line."""
        return self._sasl is not None

    def cancel_sasl(self) -> None:
        self._sasl = None
        self._sasl_failure = None

    # -- commands ---------------------------------------------------------------

    @command("STLS", State.AUTHORIZATION)
    def stls(self, args: list[bytes], line: bytes) -> None:
        no_arguments(args)
        if self._guard.secure:
            raise CommandError("TLS is already active.")
        if not self._conn.tls_available():
            raise CommandError("TLS is not available.")
        self._conn.ok("Begin TLS negotiation now.")
        self._pending_user = None
        self._conn.start_tls()

    @command("UTF8", State.AUTHORIZATION)
    def utf8_(self, args: list[bytes], line: bytes) -> None:
        """RFC 6856 2: the client takes UTF-8 in message headers (and
        responses); only in the AUTHORIZATION state, no arguments."""
        no_arguments(args)
        self.utf8 = True
        self._conn.ok("UTF-8 headers will be sent as stored.")

    @command("USER", State.AUTHORIZATION)
    def user(self, args: list[bytes], line: bytes) -> None:
        if len(args) != 1:
            raise CommandError("USER takes exactly one argument: the user name.")
        if not self._guard.plaintext_allowed():
            raise CommandError(PLAINTEXT_DISALLOWED, "AUTH")
        self._pending_user = args[0]
        self._conn.ok("Send your password.")

    @command("PASS", State.AUTHORIZATION)
    def pass_(self, args: list[bytes], line: bytes) -> Result:
        user, self._pending_user = self._pending_user, None
        if not self._guard.plaintext_allowed():
            raise CommandError(PLAINTEXT_DISALLOWED, "AUTH")
        if user is None:
            raise CommandError("Send USER first.")
        # RFC 1939 7: the password is the whole rest of the line, spaces included.
        _, _, password = line.partition(b" ")
        if not password:
            raise CommandError("PASS takes the password as its argument.")
        return self._login(UsernamePassword(user, password), user, "USER")

    @command("APOP", State.AUTHORIZATION)
    def apop(self, args: list[bytes], line: bytes) -> Result:
        if self.banner is None:
            raise CommandError("APOP is not available.")
        if len(args) != 2 or len(args[1]) != 32 or not is_hex(args[1]):
            raise CommandError("APOP takes a user name and a 32-digit hex MD5 digest.")
        credentials = sasl.APOPCredentials(args[0], self.banner, args[1])
        return self._login(credentials, args[0], "APOP")

    @command("AUTH", State.AUTHORIZATION)
    def auth(self, args: list[bytes], line: bytes) -> Result:
        offered = self._guard.mechanisms(self._conn.channel_bindings())
        if not args:
            # Not in RFC 5034, but what Dovecot answers and some clients ask.
            self._conn.multiline("", [name.encode("ascii") for name in offered])
            return None
        if len(args) > 2:
            raise CommandError("AUTH takes a mechanism and an optional initial response.")
        name = args[0].upper().decode("ascii", "replace")
        if name not in offered:
            if name in sasl.PLAINTEXT_MECHANISMS and name in sasl.MECHANISMS:
                raise CommandError(PLAINTEXT_DISALLOWED, "AUTH")
            raise CommandError("Unsupported authentication mechanism.")
        mechanism = challengers.create(self._guard.policy, name, self._conn.channel_bindings())
        if mechanism is None:
            raise CommandError("Unsupported authentication mechanism.")
        initial: bytes | None = None
        if len(args) == 2:
            initial = b"" if args[1] == b"=" else decode_base64(args[1])
            if initial is None:
                raise CommandError("Invalid base64 data in the initial response.")
        d = self._guard.take_turn()
        return d.addCallback(self._start_exchange, mechanism, initial)

    def _start_exchange(
        self, turn: bool, mechanism: sasl.Mechanism, initial: bytes | None
    ) -> Result:
        """Start AUTH once the failed-login penalty gives its turn (``turn``
        False: refused unchecked, as a failed login)."""
        if not turn:
            return self._refused(self._guard.refuse(mechanism=mechanism.name), AUTH_FAILED)
        return self._sasl_step(mechanism, mechanism.start(initial))

    def sasl_response(self, line: bytes) -> Result:
        """The client's answer to a SASL challenge (RFC 5034 4)."""
        mechanism = self._sasl
        assert mechanism is not None
        self._sasl = None
        failure, self._sasl_failure = self._sasl_failure, None
        if failure is not None:
            # Whatever the reply, even "*" (RFC 7628 3.2.3): the delay was
            # served before the error challenge went out.
            self._answer_refusal(None, failure, AUTH_FAILED)
            return None
        if line.strip() == b"*":
            raise CommandError("Authentication cancelled.")
        data = decode_base64(line.strip())
        if data is None:
            raise CommandError("Invalid base64 data in the response.")
        return self._sasl_step(mechanism, mechanism.respond(data))

    def _sasl_step(self, mechanism: sasl.Mechanism, step: sasl.StepResult) -> Result:
        if isinstance(step, defer.Deferred):
            d = step.addCallback(lambda found: self._sasl_step(mechanism, found))
            return d.addErrback(self._lookup_failed)
        if isinstance(step, sasl.Challenge) and step.failed:
            refused = self._guard.refuse(mechanism=mechanism.name)
            self._log_refusal(refused)
            d = self._guard.answer_refusal(refused, None)
            return d.addCallback(self._failure_challenge, mechanism, refused, step.data)
        if isinstance(step, sasl.Challenge):
            self._sasl = mechanism
            self._conn.send(b"+ " + base64.b64encode(step.data))
            return None
        if isinstance(step, sasl.Refusal):
            return self._refused(self._guard.refuse(mechanism=mechanism.name), step.reason)
        username = getattr(step.credentials, "username", b"")
        return self._login(step.credentials, username, mechanism.name)

    # -- login ------------------------------------------------------------------

    def _login(
        self, credentials: ICredentials, username: bytes, mechanism: str
    ) -> defer.Deferred[None]:
        d = self._guard.login(self._portal, credentials, IMaildrop, mechanism=mechanism)
        return d.addCallback(self._verdict, username.decode("utf-8", "replace"))

    def _verdict(self, result: LoginResult, name: str) -> Result:
        if isinstance(result, LoginRefused):
            return self._refused(result, AUTH_FAILED)
        if isinstance(result, LoginUnavailable) and result.failure.check(StorageError):
            # A right password whose mail store is away (a database
            # restarting): expected in operation, so no traceback; the cause
            # goes to the log, not to the client.
            LOG.warn("POP3: cannot open the account: {e}", e=result.failure.value)
            self._conn.error("Cannot open the mailbox just now.", "SYS/TEMP")
            return None
        if isinstance(result, LoginUnavailable):
            LOG.failure("POP3: login could not be completed", result.failure, level=LogLevel.error)
            self._conn.error("Temporary authentication failure.", "SYS/TEMP")
            return None
        return self._authenticated(result, name)

    def _lookup_failed(self, failure: Failure) -> Failure | None:
        """A database or a token endpoint away is a temporary failure, not
        counted and logged without a traceback; anything else is a bug."""
        if not failure.check(StorageError):
            return failure
        LOG.warn("POP3: authentication could not be completed: {e}", e=failure.value)
        self._conn.error("Temporary authentication failure.", "SYS/TEMP")
        return None

    def _failure_challenge(
        self, _: None, mechanism: sasl.Mechanism, refused: LoginRefused, data: bytes
    ) -> None:
        """A failed login's error challenge, sent when its answer is due."""
        self._sasl = mechanism
        self._sasl_failure = refused
        self._conn.send(b"+ " + base64.b64encode(data))

    def _log_refusal(self, refused: LoginRefused) -> None:
        LOG.info(
            "POP3: failed login from {peer} ({count} so far)",
            peer=address(self._guard.peer),
            count=refused.failures,
        )

    def _refused(self, refused: LoginRefused, reason: str) -> defer.Deferred[None]:
        self._log_refusal(refused)
        return self._guard.answer_refusal(refused, None).addCallback(
            self._answer_refusal, refused, reason
        )

    def _answer_refusal(self, _: None, refused: LoginRefused, reason: str) -> None:
        self._conn.error(reason, "AUTH")
        if refused.disconnect:
            LOG.warn(
                "POP3: closing {peer} after repeated failed logins",
                peer=address(self._guard.peer),
            )
            self._conn.close()

    def _authenticated(self, result: LoggedIn, name: str) -> Result:
        # Until the maildrop is open, these callbacks own the avatar; the
        # Transaction takes it over in _opened.
        if self._conn.lost:
            _logout(result.logout)
            return None
        admitted = self._guard.admit_user(name)
        if isinstance(admitted, defer.Deferred):
            return admitted.addCallback(self._admitted, result, name)
        return self._admitted(admitted, result, name)

    def _admitted(self, admitted: bool, result: LoggedIn, name: str) -> Result:
        if self._conn.lost:
            _logout(result.logout)
            return None
        if not admitted:
            _logout(result.logout)
            LOG.warn("POP3: too many connections for user {user}", user=name)
            raise CommandError("Too many connections for this user.", "SYS/TEMP")
        maildrop = result.avatar
        d = defer.maybeDeferred(maildrop.open)
        return d.addCallbacks(
            self._opened,
            self._open_failed,
            callbackArgs=(name, maildrop, result.logout),
            errbackArgs=(name, result.logout),
        )

    def _opened(
        self,
        entries: Sequence[MaildropEntry],
        name: str,
        maildrop: Any,
        logout: Callable[[], None],
    ) -> None:
        transaction = Transaction(self._conn, maildrop, logout, entries, self.utf8)
        if not self._enter(transaction, name):
            return  # the client left while the maildrop was opening
        count, octets = transaction.totals()
        LOG.info("POP3: {user} logged in", user=name)
        self._conn.ok(f"Logged in: {count} message{'' if count == 1 else 's'} ({octets} octets).")

    def _open_failed(self, failure: Failure, name: str, logout: Callable[[], None]) -> None:
        _logout(logout)
        self._guard.release_user()
        if isinstance(failure.value, MailboxInUse):
            LOG.info("POP3: maildrop of {user} is in use", user=name)
            raise CommandError("Mailbox is locked by another POP3 session.", "IN-USE")
        if isinstance(failure.value, StorageError):
            LOG.warn("POP3: cannot open maildrop of {user}: {e}", user=name, e=failure.value)
            raise CommandError(f"Cannot open the mailbox: {failure.value}", "SYS/TEMP")
        LOG.failure("POP3: cannot open maildrop of {user}", failure, user=name)
        raise CommandError("Cannot open the mailbox.", "SYS/TEMP")


def _logout(logout: Callable[[], None]) -> None:
    try:
        logout()
    except Exception:
        LOG.failure("POP3: avatar logout failed")
