"""Session plumbing shared by the IMAP and POP3 servers.

Each connection composes two small objects:

* :class:`SessionGuard` decides who may do what on the connection: it
  counts the connection against its address's limit and the logged-in user
  against the user's (and gives both slots back), keeps the failed-login
  rule (a refusal is counted, answered ``failure_delay`` after the attempt
  began and, at ``max_failures``, is the last answer before hanging up; a
  checker or realm error is *unavailable*, neither counted nor delayed),
  and answers whether TLS can start and whether a password may be sent in
  the clear.
* :class:`SessionTimer` is the autologout timer: restarted by each complete
  command, capped before login by the login deadline (``timeouts.login``),
  and after a timeout a short grace period for the goodbye.

Both are driven by an injected clock (a ``task.Clock`` in tests) and know
nothing of either protocol's wording: each protocol logs and answers in
its own words from what they decide.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias, TypeVar, cast

import attrs
from twisted.cred.credentials import ICredentials
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
    ITCPTransport,
    ITLSTransport,
    IUNIXTransport,
)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailsrv import log
from mailsrv.auth import challengers
from mailsrv.auth.channel import ChannelBindings, bindings_of
from mailsrv.policy import CLOSE_GRACE, ConnectionLimits, SessionPolicy

__all__ = [
    "Expiry",
    "LoggedIn",
    "LoginRefused",
    "LoginResult",
    "LoginUnavailable",
    "SessionFactory",
    "SessionGuard",
    "SessionTimer",
    "no_delay",
    "resolve_clock",
]

_T = TypeVar("_T")
_S = TypeVar("_S", bound=Protocol)


def resolve_clock(clock: IReactorTime | None) -> IReactorTime:
    """``clock``, or the global reactor when None (tests pass a ``task.Clock``)."""
    if clock is not None:
        return clock
    from twisted.internet import reactor

    return cast(IReactorTime, reactor)


def no_delay(transport: object) -> None:
    """Switch Nagle's algorithm off on a TCP connection (TLS over TCP too).

    With it on, a small answer written while the previous one is not yet
    acknowledged waits for the client's delayed ACK (40 ms on Linux): 35 ms
    more per round trip of pipelined commands, and on every IDLE push.  A
    TLS or PROXY wrapper provides the interfaces of the TCP transport under
    it and passes the call down to it.  A Unix socket has no such option
    (setting it fails with EOPNOTSUPP), though Twisted's Unix transport
    claims ITCPTransport, being a subclass of the TCP one.
    """
    if ITCPTransport.providedBy(transport) and not IUNIXTransport.providedBy(transport):
        transport.setTcpNoDelay(True)


# -- logins -------------------------------------------------------------------


@attrs.frozen
class LoggedIn:
    """The portal accepted the credentials: the avatar and its logout."""

    avatar: Any
    logout: Callable[[], None]


@attrs.frozen
class LoginRefused:
    """A failed login, counted.

    Answer it when :meth:`SessionGuard.answer_refusal` fires (``wait``
    seconds from the moment it was counted); ``disconnect`` says the answer
    is the last one: ``max_failures`` has been reached, so hang up after it.
    """

    failures: int
    wait: float
    disconnect: bool


@attrs.frozen
class LoginUnavailable:
    """The checker or the realm failed (an unreadable users file or home).

    Not the client's guess: neither counted nor delayed, answered at once
    as a temporary failure (IMAP ``NO [UNAVAILABLE]``, RFC 5530 3; POP3
    ``-ERR [SYS/TEMP]``, RFC 3206); the protocol logs ``failure`` as an
    error.
    """

    failure: Failure


#: What :meth:`SessionGuard.login` fires with.
LoginResult: TypeAlias = LoggedIn | LoginRefused | LoginUnavailable


class SessionGuard:
    """Limits, failed logins and TLS/plaintext decisions for one connection.

    ``secure`` says the connection is TLS from the start (an implicit-TLS
    listener); :meth:`start_tls` makes it so later.  A cleanup step that
    fails is logged to the protocol's ``logger``, the line starting with
    its ``name`` ("IMAP", "POP3").
    """

    def __init__(
        self,
        policy: SessionPolicy,
        clock: IReactorTime,
        *,
        secure: bool,
        name: str,
        logger: Logger,
    ) -> None:
        self.policy = policy
        self._name = name
        self._log = logger
        self.clock = clock
        self.secure = secure
        #: The client's address, known from :meth:`open`.
        self.peer: IAddress | None = None
        #: The user counted in the per-user limit, from :meth:`admit_user`
        #: until :meth:`release_user`.
        self.user: str | None = None
        #: Failed logins so far on this connection.
        self.failures = 0
        self._address_counted = False
        self._closed = False
        self._answer: IDelayedCall | None = None

    # -- connection limits ----------------------------------------------------

    def open(self, peer: IAddress | None) -> bool | defer.Deferred[bool]:
        """Count a new connection from ``peer``; False (and nothing counted)
        if its address is over ``limits.max_connections_per_ip``.

        The answer is a Deferred when the limits are counted elsewhere (by
        the parent of several worker processes, :mod:`mailsrv.workers`):
        the session then waits for it before it greets or reads."""
        self.peer = peer
        limits = self.policy.connections
        if limits is None:
            return True
        answer = limits.open_ip(peer)
        if isinstance(answer, defer.Deferred):
            return answer.addCallback(self._address_answered, limits)
        return self._address_answered(answer, limits)

    def _address_answered(self, admitted: bool, limits: ConnectionLimits) -> bool:
        if admitted and self._closed:
            limits.close_ip(self.peer)  # the client left while we asked
            return False
        self._address_counted = admitted
        return admitted

    def admit_user(self, user: str) -> bool | defer.Deferred[bool]:
        """Count a login of ``user``; False (and nothing counted) if the user
        is over ``limits.max_connections_per_user``.  IMAP and POP3
        connections count together: they share one ConnectionLimits.  A
        session holds one user's slot at a time (release it before a
        second admission).  A Deferred answer as for :meth:`open`; a
        connection gone meanwhile is answered False, its slot given back."""
        limits = self.policy.connections
        if limits is None:
            self.user = user
            return True
        answer = limits.open_user(user)
        if isinstance(answer, defer.Deferred):
            return answer.addCallback(self._user_answered, user, limits)
        return self._user_answered(answer, user, limits)

    def _user_answered(self, admitted: bool, user: str, limits: ConnectionLimits) -> bool:
        if admitted and self._closed:
            limits.close_user(user)
            return False
        if admitted:
            self.user = user
        return admitted

    def release_user(self) -> None:
        """Give the user's slot back (when the session gives up its avatar);
        does nothing if none is held, so it is safe to call twice."""
        user, self.user = self.user, None
        if user is not None and self.policy.connections is not None:
            self.policy.connections.close_user(user)

    def close(self) -> None:
        """The connection is gone: drop a failed login's pending answer and
        give the address's slot back, each step whatever the other did.

        The user's slot is the session's to give back with
        :meth:`release_user`, which may be later (POP3's commit at QUIT
        finishes after the client left, holding its maildrop till then).
        """
        self._closed = True
        log.call_each(self._log, self._name, self._cancel_answer, self._release_address)

    def _cancel_answer(self) -> None:
        answer, self._answer = self._answer, None
        if answer is not None and answer.active():
            answer.cancel()

    def _release_address(self) -> None:
        if self._address_counted and self.policy.connections is not None:
            self._address_counted = False
            self.policy.connections.close_ip(self.peer)

    # -- TLS and plaintext ----------------------------------------------------

    def tls_available(self, transport: object) -> bool:
        """Can STARTTLS/STLS start TLS on ``transport`` now?"""
        return (
            not self.secure
            and self.policy.tls_context is not None
            and ITLSTransport.providedBy(transport)
        )

    def start_tls(self, transport: Any) -> None:
        """Start the server side of TLS on ``transport`` (an ITLSTransport)."""
        transport.startTLS(self.policy.tls_context)
        self.secure = True

    def plaintext_allowed(self) -> bool:
        """May a password be sent in the clear on this connection
        (``auth.plaintext``: never, loopback or always; TLS always may)?"""
        return self.policy.plaintext_allowed(self.peer, self.secure)

    def channel_bindings(self, transport: object) -> ChannelBindings | None:
        """The TLS channel bindings of ``transport`` (SCRAM-SHA-256-PLUS),
        once TLS is up; None before."""
        return bindings_of(transport) if self.secure else None

    def mechanisms(self, bindings: ChannelBindings | None = None) -> list[str]:
        """The SASL mechanisms to offer on this connection now: mailsrv's
        (-PLUS variants only with ``bindings``), then the application's."""
        return challengers.offered(self.policy, self.secure, self.peer, bindings)

    # -- logins ---------------------------------------------------------------

    def login(
        self, portal: Portal, credentials: ICredentials, interface: Any
    ) -> defer.Deferred[LoginResult]:
        """Ask ``portal`` for an ``interface`` avatar.

        Fires as soon as the portal answers, never with a failure of the
        portal's: :class:`LoggedIn`; :class:`LoginRefused` for credentials
        the checker rejected (counted, its wait measured from now); or
        :class:`LoginUnavailable` for any other error.
        """
        started = self.clock.seconds()
        d: defer.Deferred[Any] = portal.login(credentials, None, interface)
        return d.addCallbacks(self._logged_in, self._login_error, errbackArgs=(started,))

    @staticmethod
    def _logged_in(result: tuple[Any, Any, Callable[[], None]]) -> LoginResult:
        _interface, avatar, logout = result
        return LoggedIn(avatar, logout)

    def _login_error(self, failure: Failure, started: float) -> LoginResult:
        if isinstance(failure.value, (UnauthorizedLogin, UnhandledCredentials)):
            return self.refuse(started)
        return LoginUnavailable(failure)

    def refuse(self, started: float | None = None) -> LoginRefused:
        """Count a failed login whose attempt began at ``started`` (clock
        time; None: now, as for a SASL exchange the mechanism refused).

        The answer is due ``failure_delay`` after the attempt began
        (:meth:`SessionPolicy.failure_wait`): the same moment whatever the
        check cost, so timing tells nothing about the user or the hash.
        """
        self.failures += 1
        return LoginRefused(
            failures=self.failures,
            wait=self.policy.failure_wait(started, self.clock.seconds()),
            disconnect=self.failures >= self.policy.max_failures,
        )

    def answer_refusal(self, refused: LoginRefused, value: _T) -> defer.Deferred[_T]:
        """A Deferred firing with ``value`` when ``refused`` is to be
        answered; it never fires if the connection closes first.  (Commands
        run one at a time, so one answer at most is pending.)"""
        d: defer.Deferred[_T] = defer.Deferred()

        def due() -> None:
            self._answer = None
            d.callback(value)

        self._answer = self.clock.callLater(refused.wait, due)
        return d


# -- the autologout timer -------------------------------------------------------


class Expiry(enum.Enum):
    """Why :class:`SessionTimer` fired."""

    #: No complete command for the idle timeout.
    IDLE = "idle"
    #: The client did not log in within ``timeouts.login`` of connecting.
    LOGIN_DEADLINE = "login deadline"
    #: The timer fired again after a timeout: the goodbye did not get out
    #: (an unfinished TLS handshake holds it back for ever); abort.
    GRACE = "grace"


class SessionTimer:
    """The autologout timer, with the login deadline.

    Only complete commands restart it (:meth:`activity`): RFC 1939 3 and
    RFC 3501 5.4 count commands, so one byte a second must not hold a
    connection.  Before login it never runs past the deadline set at
    :meth:`start`, however busy the client keeps the line (a CAPA or NOOP
    loop, a SASL exchange, a TLS handshake).  After the first expiry any
    further one is :attr:`Expiry.GRACE`.

    ``on_expiry`` is called with the reason; ``idle_before_login`` is the
    idle timeout until :meth:`logged_in` gives the one after.
    """

    def __init__(
        self,
        clock: IReactorTime,
        on_expiry: Callable[[Expiry], object],
        *,
        idle_before_login: float,
        login_timeout: float,
    ) -> None:
        self.clock = clock
        self._on_expiry = on_expiry
        self._idle_before_login = idle_before_login
        self.login_timeout = login_timeout
        #: Clock time by which the client must have logged in; None after.
        self.login_by: float | None = None
        self._period: float | None = None
        self._call: IDelayedCall | None = None
        self._expired = False
        self._stopped = False

    def start(self) -> None:
        """The connection is open: the login deadline runs from now."""
        self.login_by = self.clock.seconds() + self.login_timeout
        self.activity()

    def activity(self) -> None:
        """A whole command arrived: restart the idle timeout (before login,
        no further than the login deadline)."""
        if self.login_by is None:
            if self._call is not None and self._period is not None:  # progress(), inlined
                self._call.reset(self._period)
            return
        left = self.login_by - self.clock.seconds()
        self._arm(max(0.0, min(self._idle_before_login, left)))

    def progress(self) -> None:
        """Restart the running timeout with its current period (output that
        keeps moving, a literal that keeps coming); nothing if stopped or
        already fired."""
        if self._call is not None and self._period is not None:
            self._call.reset(self._period)

    def logged_in(self, idle: float) -> None:
        """The client logged in: no deadline any more, ``idle`` seconds
        without a command from now on."""
        self.login_by = None
        self._arm(idle)

    def set_idle(self, idle: float) -> None:
        """Change the idle timeout, starting now (IMAP's IDLE raises it to
        at least 31 minutes, RFC 2177, and lowers it again after)."""
        self._arm(idle)

    def grace(self) -> None:
        """The goodbye is written: allow :data:`~mailsrv.policy.CLOSE_GRACE`
        for it to go out before :attr:`Expiry.GRACE`."""
        self._arm(CLOSE_GRACE)

    def stop(self) -> None:
        """The connection is gone: cancel the timer for good."""
        self._stopped = True
        self._period = None
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    @property
    def past_login_deadline(self) -> bool:
        return self.login_by is not None and self.clock.seconds() >= self.login_by

    def _arm(self, period: float) -> None:
        if self._stopped:
            return
        self._period = period
        if self._call is not None:
            self._call.reset(period)
        else:
            self._call = self.clock.callLater(period, self._fired)

    def _fired(self) -> None:
        self._call = None
        if self._expired:
            reason = Expiry.GRACE
        elif self.past_login_deadline:
            reason = Expiry.LOGIN_DEADLINE
        else:
            reason = Expiry.IDLE
        self._expired = True
        self._on_expiry(reason)


# -- the factory ------------------------------------------------------------------


class SessionFactory(ServerFactory):
    """What the IMAP and POP3 factories share: the Portal, the policy, and
    whether the listener is implicit TLS (the caller wraps the factory in
    ``TLSMemoryBIOFactory``; its sessions start secure); ``clock`` is for
    tests; ``challengers`` are an application's SASL mechanisms, in
    twisted.mail's form (:mod:`mailsrv.auth.challengers`)."""

    noisy = False  # the service logs each listener once, with its endpoint

    def __init__(
        self,
        portal: Portal,
        policy: SessionPolicy | None = None,
        *,
        implicit_tls: bool = False,
        clock: IReactorTime | None = None,
        challengers: Mapping[str | bytes, Callable[[], Any]] | None = None,
    ) -> None:
        self.portal = portal
        self.policy = policy if policy is not None else SessionPolicy()
        if challengers:
            # twisted.mail's mapping: offered beside mailsrv's mechanisms.
            merged: dict[str | bytes, Callable[[], Any]] = {}
            merged.update(self.policy.challengers)
            merged.update(challengers)
            self.policy = attrs.evolve(self.policy, challengers=merged)
        self.implicit_tls = implicit_tls
        self.clock = clock

    def build(self, session: Callable[..., _S]) -> _S:
        """A ``session`` protocol for one connection, built with this
        factory's portal, policy, TLS and clock."""
        protocol = session(self.portal, self.policy, secure=self.implicit_tls, clock=self.clock)
        protocol.factory = self
        return protocol
