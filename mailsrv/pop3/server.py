"""The POP3 server: RFC 1939 with CAPA and response codes (RFC 2449), STLS
(RFC 2595) and SASL (RFC 5034).

:class:`POP3Factory` takes a Portal whose realm hands out
:class:`~mailsrv.interfaces.IMaildrop` avatars and an optional
:class:`~mailsrv.policy.SessionPolicy`; it works in any Twisted application.

Commands are processed strictly one after another: a command that waits on a
Deferred (a login, opening the maildrop, streaming a message, the commit at
QUIT) holds back the lines that arrived after it, which then run in the state
it leaves.  That is what PIPELINING promises, and it is also what makes STLS
safe: when STLS runs, whatever the client sent after it is still unprocessed
and is thrown away before TLS starts (RFC 2595 3.1).
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections import deque
from collections.abc import Callable, Sequence
from typing import IO, Any, cast

from twisted.cred.credentials import ICredentials, UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
    ITLSTransport,
)
from twisted.internet.protocol import ServerFactory
from twisted.logger import LogLevel
from twisted.protocols.basic import LineOnlyReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from mailsrv import log
from mailsrv.auth import sasl
from mailsrv.errors import MailboxInUse, NoSuchMessage, StorageError
from mailsrv.interfaces import IMaildrop, MaildropEntry
from mailsrv.policy import CLOSE_GRACE, SessionPolicy
from mailsrv.pop3.streaming import MessageSender
from mailsrv.pop3.wire import MessageEncoder, dot_stuff_line, parse_number

__all__ = ["POP3", "POP3Factory", "State"]

_log = log.get_logger(__name__)

#: Longest first line of a response, CRLF included (RFC 2449 4).
MAX_STATUS_LINE = 512

PLAINTEXT_DISALLOWED = b"Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
AUTH_FAILED = "Authentication failed."


class State(enum.Enum):
    """The session states of RFC 1939 3."""

    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"


class _Error(Exception):
    """Answer the current command with ``-ERR [code] text``."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


_Result = defer.Deferred[Any] | None
_Handler = Callable[[list[bytes], bytes], _Result]

_HEX = re.compile(rb"[0-9A-Fa-f]+")

_AUTHORIZATION_COMMANDS = frozenset({b"USER", b"PASS", b"APOP", b"AUTH", b"STLS"})
_TRANSACTION_COMMANDS = frozenset(
    {b"STAT", b"LIST", b"RETR", b"DELE", b"NOOP", b"RSET", b"TOP", b"UIDL", b"LAST"}
)
_ANY_STATE_COMMANDS = frozenset({b"CAPA", b"QUIT", b"RPOP"})


class POP3(LineOnlyReceiver, TimeoutMixin):
    """One POP3 session.

    ``secure`` says the connection is already TLS (an implicit-TLS
    listener); ``clock`` drives the autologout timer and the delay after a
    failed login (tests pass a ``task.Clock``).
    """

    delimiter = b"\r\n"

    def __init__(
        self,
        portal: Portal,
        policy: SessionPolicy | None = None,
        *,
        secure: bool = False,
        clock: IReactorTime | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.portal = portal
        self.policy = policy if policy is not None else SessionPolicy()
        self.secure = secure
        self.clock = clock
        self.MAX_LENGTH = self.policy.max_line_length
        self.state = State.AUTHORIZATION
        self._inbuf = bytearray()
        self._skipping = False  # inside an over-long line, waiting for its end
        self._queue: deque[bytes | None] = deque()  # None: a line that was too long
        self._busy = False
        self._draining = False
        self._reading_paused = False
        self._closing = False
        self._lost = False
        self._peer: IAddress | None = None
        self._ip_counted = False
        self._banner: bytes | None = None
        self._pending_user: bytes | None = None
        self._sasl: sasl.Mechanism | None = None
        self._failures = 0
        self._delayed: IDelayedCall | None = None
        self._user: str | None = None  # counted in the per-user connection limit
        self._maildrop: Any = None
        self._logout: Callable[[], None] | None = None
        self._held = False  # the maildrop is locked by us (open, not committed)
        self._committing = False
        self._entries: list[MaildropEntry] = []
        self._deleted: set[int] = set()  # 0-based indexes into _entries
        self._seen: set[int] = set()  # UIDs read entirely (RETR, full TOP)
        self._highest = 0  # LAST: the highest message number accessed
        self._sender: MessageSender | None = None
        #: Clock time by which the client must have logged in; None after.
        self._login_by: float | None = None
        self._timed_out = False

    @property
    def _transport(self) -> Any:
        """The transport: Twisted types it as an optional ITransport, but the
        TCP and TLS transports it is in practice are also producers and
        consumers (and TCP is an ITLSTransport)."""
        return self.transport

    # -- TimeoutMixin ---------------------------------------------------------

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        return self.clock.callLater(period, func)

    def _activity(self) -> None:
        """Restart the autologout timer: a whole command line has arrived.

        RFC 1939 3 resets the timer on a command, not on any byte: one byte
        a second must not hold a connection forever.  Before login the timer
        never runs past the login deadline.
        """
        if self._closing:
            return
        if self._login_by is None:
            self.resetTimeout()
            return
        left = self._login_by - self.clock.seconds()
        self.setTimeout(max(0.0, min(self.policy.pop3_timeout, left)))

    def timeoutConnection(self) -> None:
        """RFC 1939 autologout: end the session without entering UPDATE."""
        if self._timed_out:
            # The goodbye did not get out in CLOSE_GRACE: an unfinished TLS
            # handshake holds it, and with it the close, back for ever.
            self._transport.abortConnection()
            return
        self._timed_out = True
        late = self._login_by is not None and self.clock.seconds() >= self._login_by
        if late:
            _log.info(
                "POP3: {peer} did not log in within {seconds} seconds",
                peer=_address(self._peer),
                seconds=f"{self.policy.login_timeout:g}",
            )
        else:
            _log.info("POP3 session of {user} timed out", user=self._user or "(not logged in)")
        self._closing = True
        if self._sender is not None:
            self._transport.abortConnection()  # a client that stopped reading
            return
        if late:
            self._send(b"-ERR Disconnected: too long without logging in.")
        else:
            self._send(b"-ERR Disconnected for inactivity.")
        self._transport.loseConnection()
        self.setTimeout(CLOSE_GRACE)

    # -- connection -------------------------------------------------------------

    def connectionMade(self) -> None:
        self._peer = self._transport.getPeer()
        limits = self.policy.connections
        if limits is not None:
            if not limits.open_ip(self._peer):
                _log.warn("POP3: too many connections from {peer}", peer=_address(self._peer))
                self._send(b"-ERR [SYS/TEMP] Too many connections from your address.")
                self._closing = True
                self._transport.loseConnection()
                return
            self._ip_counted = True
        self._login_by = self.clock.seconds() + self.policy.login_timeout
        self._activity()
        greeting = b"+OK mailsrv POP3 server ready."
        if self.policy.challenge_auth_available():
            self._banner = sasl.make_challenge(self.policy.hostname)
            greeting += b" " + self._banner
        self._send(greeting)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Give back what the session holds.  Each step runs even if one
        before it failed: a skipped release would keep the maildrop locked
        and the user's and the address's connection slots taken."""
        self._lost = True
        self._closing = True
        self._queue.clear()
        self._inbuf.clear()
        self._sasl = None
        steps = [self._stop_timers, self._stop_sender]
        if not self._committing:  # else the commit's callbacks end the session
            steps.append(self._end_session)
        steps.append(self._release_address)
        log.call_each(_log, "POP3", *steps)

    def _stop_timers(self) -> None:
        self.setTimeout(None)
        delayed, self._delayed = self._delayed, None
        if delayed is not None and delayed.active():
            delayed.cancel()

    def _stop_sender(self) -> None:
        if self._sender is not None:
            self._sender.stopProducing()

    def _release_address(self) -> None:
        if self._ip_counted and self.policy.connections is not None:
            self._ip_counted = False
            self.policy.connections.close_ip(self._peer)

    def _end_session(self) -> None:
        """Release the maildrop without committing, log the avatar out and
        free the user's slot, each whatever the one before did.

        Reached on connection loss (nothing deleted without QUIT) and after
        the commit; safe to call more than once.
        """
        maildrop, logout = self._maildrop, self._logout
        self._maildrop = self._logout = None
        self._entries = []
        self._deleted.clear()
        self._seen.clear()

        def release() -> None:
            if maildrop is not None and self._held:
                self._held = False
                d = defer.maybeDeferred(maildrop.release)
                d.addErrback(lambda f: _log.failure("POP3: releasing the maildrop failed", f))

        def logout_avatar() -> None:
            if logout is not None:
                logout()

        log.call_each(_log, "POP3", release, logout_avatar, self._release_user)

    def _release_user(self) -> None:
        user, self._user = self._user, None
        if user is not None and self.policy.connections is not None:
            self.policy.connections.close_user(user)

    # -- framing and the command queue ---------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Split lines (CRLF, or a bare LF from lenient clients) into the queue.

        LineOnlyReceiver's own framing is replaced because it drops the rest
        of a packet after an over-long line; here such a line becomes one
        ``-ERR`` and the following commands still run.
        """
        if self._closing:
            return
        self._inbuf += data
        complete = False
        while self._inbuf:
            newline = self._inbuf.find(b"\n")
            if self._skipping:
                if newline < 0:
                    self._inbuf.clear()
                    break
                del self._inbuf[: newline + 1]
                self._skipping = False
                continue
            if newline < 0:
                if len(self._inbuf) > self.MAX_LENGTH:
                    self._inbuf.clear()
                    self._skipping = True
                    self._queue.append(None)
                break
            line = bytes(self._inbuf[:newline])
            del self._inbuf[: newline + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            self._queue.append(line if len(line) <= self.MAX_LENGTH else None)
            complete = True
        if complete:
            self._activity()
        if len(self._queue) > self.policy.max_pending_commands and not self._reading_paused:
            self._reading_paused = True
            self._transport.pauseProducing()
        self._drain()

    def lineReceived(self, line: bytes) -> None:
        """Process one line as if it had arrived from the client."""
        self.dataReceived(line + b"\r\n")

    def _drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            while self._queue and not self._busy and not self._closing:
                line = self._queue.popleft()
                result = self._process(line)
                if result is not None:
                    self._busy = True
                    result.addErrback(self._command_failed)
                    result.addBoth(self._command_done)
        finally:
            self._draining = False
        if self._reading_paused and not self._queue and not self._closing:
            self._reading_paused = False
            self._transport.resumeProducing()

    def _command_done(self, _: object) -> None:
        self._busy = False
        if not self._lost:
            self._drain()

    def _command_failed(self, failure: Failure) -> None:
        if failure.check(_Error):
            error = cast(_Error, failure.value)
            self._error(error.text, error.code)
        else:
            self._internal_error(failure)

    def _internal_error(self, failure: Failure) -> None:
        _log.failure("POP3: internal error", failure)
        if not self._lost:
            self._send(b"-ERR [SYS/TEMP] Internal server error.")

    def _process(self, line: bytes | None) -> _Result:
        try:
            if line is None:
                if self._sasl is not None:
                    self._sasl = None
                raise _Error(f"Line too long (the limit is {self.MAX_LENGTH} octets).")
            if self._sasl is not None:
                _log.debug("POP3 {peer} C: (SASL response)", peer=_address(self._peer))
                return self._sasl_response(line)
            _log.debug("POP3 {peer} C: {line}", peer=_address(self._peer), line=_loggable(line))
            return self._dispatch(line)
        except _Error as e:
            self._error(e.text, e.code)
            return None
        except Exception:
            self._internal_error(Failure())
            return None

    def _dispatch(self, line: bytes) -> _Result:
        args = line.split()
        if not args:
            raise _Error("Empty command.")
        command = args.pop(0).upper()
        if not command.isalnum() or not command.isascii() or len(command) > 16:
            raise _Error("Unknown command.")
        handler = cast(_Handler | None, getattr(self, "do_" + command.decode("ascii"), None))
        if handler is None:
            raise _Error(f"Unknown command: {command.decode('ascii')}")
        if command in _AUTHORIZATION_COMMANDS and self.state is not State.AUTHORIZATION:
            raise _Error(f"{command.decode('ascii')} is not valid after login.")
        if command in _TRANSACTION_COMMANDS and self.state is not State.TRANSACTION:
            raise _Error(f"{command.decode('ascii')} is only valid after login.")
        return handler(args, line)

    # -- output -----------------------------------------------------------------

    def _send(self, line: bytes) -> None:
        if not self._lost:
            self._transport.write(line + b"\r\n")

    def _ok(self, text: str = "") -> None:
        self._send(b"+OK " + text.encode("utf-8") if text else b"+OK")

    def _error(self, text: str, code: str | None = None) -> None:
        prefix = f"-ERR [{code}] " if code else "-ERR "
        line = (prefix + text).encode("utf-8", "replace")
        # RFC 2449 4: a response's first line is at most 512 octets with its
        # CRLF; a storage error naming a long path must not break a client.
        if len(line) > MAX_STATUS_LINE - 2:
            line = line[: MAX_STATUS_LINE - 5].decode("utf-8", "ignore").encode("utf-8") + b"..."
        self._send(line)

    def _multiline(self, first: str, lines: Sequence[bytes]) -> None:
        body = b"".join(dot_stuff_line(line) + b"\r\n" for line in lines)
        if not self._lost:
            status = b"+OK " + first.encode("utf-8") if first else b"+OK"
            self._transport.write(status + b"\r\n" + body + b".\r\n")

    def _close(self) -> None:
        self._closing = True
        self._queue.clear()
        self._transport.loseConnection()

    # -- any state -------------------------------------------------------------

    def capabilities(self) -> list[bytes]:
        """What CAPA lists: what works on this connection.

        RFC 2449 5 asks that capabilities of the AUTHORIZATION state be
        announced in both states, and 6.2 and 6.3 that USER and SASL be
        announced the same after login (so a client may ask CAPA only
        once); only STLS, "AUTHORIZATION state only" (RFC 2595 4), goes
        away after login.
        """
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.policy.plaintext_allowed(self._peer, self.secure):
            caps.insert(1, b"USER")
        offered = sasl.mechanisms(self.policy, self.secure, self._peer)
        if offered:
            caps.append(b"SASL " + " ".join(offered).encode("ascii"))
        if self.state is State.AUTHORIZATION and self._tls_available():
            caps.append(b"STLS")
        caps += [b"EXPIRE NEVER", b"LOGIN-DELAY 0", b"IMPLEMENTATION mailsrv"]
        return caps

    def do_CAPA(self, args: list[bytes], line: bytes) -> None:
        self._no_args(args)
        self._multiline("Capability list follows", self.capabilities())

    def do_QUIT(self, args: list[bytes], line: bytes) -> _Result:
        if self.state is not State.TRANSACTION:
            self._ok("Logging out.")
            self._close()
            return None
        self.state = State.UPDATE
        self._committing = True
        deleted = [self._entries[i].uid for i in sorted(self._deleted)]
        seen = sorted(self._seen)
        d = defer.maybeDeferred(self._maildrop.commit, deleted, seen)
        d.addCallbacks(self._committed, self._commit_failed, callbackArgs=(len(deleted),))
        return d

    def _committed(self, _: object, deleted: int) -> None:
        self._committing = False
        self._held = False  # commit released the lock
        self._ok(f"Logging out, {deleted} message{'' if deleted == 1 else 's'} deleted.")
        self._end_session()
        if not self._lost:
            self._close()

    def _commit_failed(self, failure: Failure) -> None:
        self._committing = False
        if failure.check(StorageError):
            _log.error(
                "POP3: commit of {user}'s maildrop failed: {e}", user=self._user, e=failure.value
            )
        else:
            _log.failure("POP3: commit of {user}'s maildrop failed", failure, user=self._user)
        self._error("Could not update the mailbox; no messages were deleted.", "SYS/TEMP")
        self._end_session()
        if not self._lost:
            self._close()

    def do_RPOP(self, args: list[bytes], line: bytes) -> None:
        raise _Error("RPOP is not supported.")

    # -- AUTHORIZATION -------------------------------------------------------

    def _tls_available(self) -> bool:
        return (
            not self.secure
            and self.policy.tls_context is not None
            and ITLSTransport.providedBy(self._transport)
        )

    def do_STLS(self, args: list[bytes], line: bytes) -> None:
        self._no_args(args)
        if self.secure:
            raise _Error("TLS is already active.")
        if not self._tls_available():
            raise _Error("TLS is not available.")
        self._ok("Begin TLS negotiation now.")
        # RFC 2595 3.1: nothing the client sent before the handshake counts.
        self._queue.clear()
        self._inbuf.clear()
        self._skipping = False
        self._pending_user = None
        self._transport.startTLS(self.policy.tls_context)
        self.secure = True

    def _plaintext_allowed(self) -> bool:
        return self.policy.plaintext_allowed(self._peer, self.secure)

    def do_USER(self, args: list[bytes], line: bytes) -> None:
        if len(args) != 1:
            raise _Error("USER takes exactly one argument: the user name.")
        if not self._plaintext_allowed():
            raise _Error(PLAINTEXT_DISALLOWED.decode("ascii"), "AUTH")
        self._pending_user = args[0]
        self._ok("Send your password.")

    def do_PASS(self, args: list[bytes], line: bytes) -> _Result:
        user, self._pending_user = self._pending_user, None
        if not self._plaintext_allowed():
            raise _Error(PLAINTEXT_DISALLOWED.decode("ascii"), "AUTH")
        if user is None:
            raise _Error("Send USER first.")
        # RFC 1939 7: the password is the whole rest of the line, spaces included.
        _, _, password = line.partition(b" ")
        if not password:
            raise _Error("PASS takes the password as its argument.")
        return self._login(UsernamePassword(user, password), user)

    def do_APOP(self, args: list[bytes], line: bytes) -> _Result:
        if self._banner is None:
            raise _Error("APOP is not available.")
        if len(args) != 2 or len(args[1]) != 32 or not _is_hex(args[1]):
            raise _Error("APOP takes a user name and a 32-digit hex MD5 digest.")
        credentials = sasl.APOPCredentials(args[0], self._banner, args[1])
        return self._login(credentials, args[0])

    def do_AUTH(self, args: list[bytes], line: bytes) -> _Result:
        offered = sasl.mechanisms(self.policy, self.secure, self._peer)
        if not args:
            # Not in RFC 5034, but what Dovecot answers and some clients ask.
            self._multiline("", [name.encode("ascii") for name in offered])
            return None
        if len(args) > 2:
            raise _Error("AUTH takes a mechanism and an optional initial response.")
        name = args[0].upper().decode("ascii", "replace")
        if name not in offered:
            if name in sasl.PLAINTEXT_MECHANISMS and name in sasl.MECHANISMS:
                raise _Error(PLAINTEXT_DISALLOWED.decode("ascii"), "AUTH")
            raise _Error("Unsupported authentication mechanism.")
        mechanism = sasl.create(name, self.policy.hostname)
        assert mechanism is not None
        initial: bytes | None = None
        if len(args) == 2:
            initial = b"" if args[1] == b"=" else _b64decode(args[1])
            if initial is None:
                raise _Error("Invalid base64 data in the initial response.")
        return self._sasl_step(mechanism, mechanism.start(initial))

    def _sasl_response(self, line: bytes) -> _Result:
        mechanism = self._sasl
        assert mechanism is not None
        self._sasl = None
        if line.strip() == b"*":
            raise _Error("Authentication cancelled.")
        data = _b64decode(line.strip())
        if data is None:
            raise _Error("Invalid base64 data in the response.")
        return self._sasl_step(mechanism, mechanism.respond(data))

    def _sasl_step(self, mechanism: sasl.Mechanism, step: sasl.Step) -> _Result:
        if isinstance(step, sasl.Challenge):
            self._sasl = mechanism
            self._send(b"+ " + base64.b64encode(step.data))
            return None
        if isinstance(step, sasl.Refusal):
            return self._failed_login(step.reason)
        username = getattr(step.credentials, "username", b"")
        return self._login(step.credentials, username)

    def _login(self, credentials: ICredentials, username: bytes) -> defer.Deferred[None]:
        started = self.clock.seconds()
        d = self.portal.login(credentials, None, IMaildrop)
        name = username.decode("utf-8", "replace")
        return d.addCallbacks(
            self._authenticated,
            self._login_error,
            callbackArgs=(name,),
            errbackArgs=(started,),
        )

    def _login_error(self, failure: Failure, started: float) -> _Result:
        if failure.check(UnauthorizedLogin, UnhandledCredentials):
            return self._failed_login(AUTH_FAILED, started)
        # The checker or the realm failed (an unreadable users file or home):
        # not the client's guess, so neither counted nor delayed.
        _log.failure("POP3: login could not be completed", failure, level=LogLevel.error)
        self._error("Temporary authentication failure.", "SYS/TEMP")
        return None

    def _failed_login(self, reason: str, started: float | None = None) -> defer.Deferred[None]:
        """Answer ``failure_delay`` after the attempt began
        (:meth:`SessionPolicy.failure_wait`), and hang up after too many
        failures."""
        self._failures += 1
        _log.info(
            "POP3: failed login from {peer} ({count} so far)",
            peer=_address(self._peer),
            count=self._failures,
        )
        wait = self.policy.failure_wait(started, self.clock.seconds())
        d: defer.Deferred[None] = defer.Deferred()
        self._delayed = self.clock.callLater(wait, d.callback, None)

        def answer(_: None) -> None:
            self._delayed = None
            self._error(reason, "AUTH")
            if self._failures >= self.policy.max_failures:
                _log.warn(
                    "POP3: closing {peer} after repeated failed logins", peer=_address(self._peer)
                )
                self._close()

        return d.addCallback(answer)

    def _authenticated(self, result: tuple[Any, Any, Callable[[], None]], name: str) -> _Result:
        # Until the maildrop is open, these callbacks own the avatar; the
        # session takes it over in _opened.
        _, maildrop, logout = result
        if self._lost:
            _logout(logout)
            return None
        limits = self.policy.connections
        if limits is not None and not limits.open_user(name):
            _logout(logout)
            _log.warn("POP3: too many connections for user {user}", user=name)
            raise _Error("Too many connections for this user.", "SYS/TEMP")
        d = defer.maybeDeferred(maildrop.open)
        return d.addCallbacks(
            self._opened,
            self._open_failed,
            callbackArgs=(name, maildrop, logout),
            errbackArgs=(name, logout),
        )

    def _opened(
        self,
        entries: Sequence[MaildropEntry],
        name: str,
        maildrop: Any,
        logout: Callable[[], None],
    ) -> None:
        self._user, self._maildrop, self._logout, self._held = name, maildrop, logout, True
        if self._lost:  # the client left while the maildrop was opening
            self._end_session()
            return
        self._entries = list(entries)
        self.state = State.TRANSACTION
        self._login_by = None
        self.setTimeout(self.policy.pop3_timeout)
        count, octets = self._totals()
        _log.info("POP3: {user} logged in", user=name)
        self._ok(f"Logged in: {count} message{'' if count == 1 else 's'} ({octets} octets).")

    def _open_failed(self, failure: Failure, name: str, logout: Callable[[], None]) -> None:
        _logout(logout)
        if self.policy.connections is not None:
            self.policy.connections.close_user(name)
        if failure.check(MailboxInUse):
            _log.info("POP3: maildrop of {user} is in use", user=name)
            raise _Error("Mailbox is locked by another POP3 session.", "IN-USE")
        if failure.check(StorageError):
            _log.warn("POP3: cannot open maildrop of {user}: {e}", user=name, e=failure.value)
            raise _Error(f"Cannot open the mailbox: {failure.value}", "SYS/TEMP")
        _log.failure("POP3: cannot open maildrop of {user}", failure, user=name)
        raise _Error("Cannot open the mailbox.", "SYS/TEMP")

    # -- TRANSACTION -------------------------------------------------------------

    def _totals(self) -> tuple[int, int]:
        live = [e for i, e in enumerate(self._entries) if i not in self._deleted]
        return len(live), sum(e.size for e in live)

    def _message(self, arg: bytes) -> int:
        """The 0-based index of a live message number, or a -ERR."""
        number = parse_number(arg)
        if number is None:
            raise _Error("Invalid message number.")
        index = number - 1
        if not 0 <= index < len(self._entries) or index in self._deleted:
            raise _Error("No such message.")
        return index

    @staticmethod
    def _no_args(args: list[bytes]) -> None:
        if args:
            raise _Error("This command takes no arguments.")

    def do_STAT(self, args: list[bytes], line: bytes) -> None:
        self._no_args(args)
        count, octets = self._totals()
        self._ok(f"{count} {octets}")

    def do_LIST(self, args: list[bytes], line: bytes) -> None:
        if len(args) > 1:
            raise _Error("LIST takes at most one message number.")
        if args:
            index = self._message(args[0])
            self._ok(f"{index + 1} {self._entries[index].size}")
            return
        count, octets = self._totals()
        listing = [
            b"%d %d" % (i + 1, e.size)
            for i, e in enumerate(self._entries)
            if i not in self._deleted
        ]
        self._multiline(f"{count} messages ({octets} octets)", listing)

    def do_UIDL(self, args: list[bytes], line: bytes) -> None:
        if len(args) > 1:
            raise _Error("UIDL takes at most one message number.")
        if args:
            index = self._message(args[0])
            self._ok(f"{index + 1} {self._entries[index].unique_id}")
            return
        listing = [
            f"{i + 1} {e.unique_id}".encode("ascii")
            for i, e in enumerate(self._entries)
            if i not in self._deleted
        ]
        self._multiline("Unique-ID listing follows", listing)

    def do_RETR(self, args: list[bytes], line: bytes) -> _Result:
        if len(args) != 1:
            raise _Error("RETR takes one message number.")
        return self._send_message(self._message(args[0]), None)

    def do_TOP(self, args: list[bytes], line: bytes) -> _Result:
        if len(args) != 2:
            raise _Error("TOP takes a message number and a number of lines.")
        index = self._message(args[0])
        lines = parse_number(args[1])
        if lines is None:
            raise _Error("Invalid number of lines.")
        return self._send_message(index, lines)

    def _send_message(self, index: int, lines: int | None) -> defer.Deferred[None]:
        entry = self._entries[index]
        d = defer.maybeDeferred(self._maildrop.retrieve, entry.uid)
        return d.addCallbacks(
            self._stream, self._retrieve_failed, callbackArgs=(index, lines), errbackArgs=(index,)
        )

    def _retrieve_failed(self, failure: Failure, index: int) -> None:
        if failure.check(NoSuchMessage):
            raise _Error(f"Message {index + 1} was removed by another session.")
        if failure.check(StorageError):
            raise _Error(f"Cannot read message {index + 1}: {failure.value}", "SYS/TEMP")
        _log.failure("POP3: cannot read message {n}", failure, n=index + 1)
        raise _Error(f"Cannot read message {index + 1}.", "SYS/TEMP")

    def _stream(self, source: IO[bytes], index: int, lines: int | None) -> _Result:
        if self._lost:
            source.close()
            return None
        entry = self._entries[index]
        self._ok(f"{entry.size} octets" if lines is None else "Top of message follows")
        sender = MessageSender(self._transport, source, MessageEncoder(lines), self.resetTimeout)
        self._sender = sender
        d = sender.start()
        return d.addCallbacks(self._streamed, self._stream_failed, callbackArgs=(index,))

    def _streamed(self, complete: bool, index: int) -> None:
        self._sender = None
        self._highest = max(self._highest, index + 1)
        if complete:
            self._seen.add(self._entries[index].uid)

    def _stream_failed(self, failure: Failure) -> None:
        self._sender = None
        # The transport stops the sender before telling the session the
        # connection is gone: a client that left mid-message is no error.
        if self._lost or failure.check(ConnectionLost):
            return
        # Part of the message is out already: the only honest end is to hang
        # up, so the client never takes a truncated message for a whole one.
        _log.failure("POP3: reading a message failed mid-RETR", failure)
        self._closing = True
        self._transport.abortConnection()

    def do_DELE(self, args: list[bytes], line: bytes) -> None:
        if len(args) != 1:
            raise _Error("DELE takes one message number.")
        index = self._message(args[0])
        self._deleted.add(index)
        self._ok(f"Message {index + 1} marked for deletion.")

    def do_NOOP(self, args: list[bytes], line: bytes) -> None:
        self._no_args(args)
        self._ok()

    def do_RSET(self, args: list[bytes], line: bytes) -> None:
        self._no_args(args)
        self._deleted.clear()
        self._highest = 0
        count, octets = self._totals()
        self._ok(f"Maildrop has {count} message{'' if count == 1 else 's'} ({octets} octets).")

    def do_LAST(self, args: list[bytes], line: bytes) -> None:
        """RFC 1460's LAST (dropped by RFC 1725, still answered by Twisted)."""
        self._no_args(args)
        self._ok(str(self._highest))


def _address(peer: IAddress | None) -> str:
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    return f"{host}:{port}" if host is not None else str(peer)


def _loggable(line: bytes) -> str:
    """A command line for the debug log, with secrets left out."""
    words = line.split(None, 1)
    if words and words[0].upper() == b"PASS":
        return "PASS ***"
    if words and words[0].upper() == b"AUTH":
        words = line.split()
        line = b" ".join(words[:2] + [b"***"] * (len(words) > 2))
    return line[:100].decode("ascii", "replace")


def _logout(logout: Callable[[], None]) -> None:
    try:
        logout()
    except Exception:
        _log.failure("POP3: avatar logout failed")


def _is_hex(data: bytes) -> bool:
    return _HEX.fullmatch(data) is not None


def _b64decode(data: bytes) -> bytes | None:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


class POP3Factory(ServerFactory):
    """Builds :class:`POP3` sessions for a Portal whose realm gives IMaildrop avatars.

    ``implicit_tls`` tells the sessions the listener is already TLS (the
    caller wraps this factory in ``TLSMemoryBIOFactory``), so they accept
    plaintext passwords and do not offer STLS.
    """

    protocol = POP3
    noisy = False  # no "Starting factory" line per listener start

    def __init__(
        self,
        portal: Portal,
        policy: SessionPolicy | None = None,
        *,
        implicit_tls: bool = False,
        clock: IReactorTime | None = None,
    ) -> None:
        self.portal = portal
        self.policy = policy if policy is not None else SessionPolicy()
        self.implicit_tls = implicit_tls
        self.clock = clock

    def buildProtocol(self, addr: IAddress | None) -> POP3:
        protocol = POP3(self.portal, self.policy, secure=self.implicit_tls, clock=self.clock)
        protocol.factory = self
        return protocol
