"""Session policy shared by the IMAP, POP3 and LMTP servers.

One object carries what the configuration decides about a connection
(timeouts, limits, TLS, when plaintext passwords are acceptable), so the
protocol factories take ``(portal, policy)`` whether they are started by the
twistd plugin or embedded in someone else's application.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress

from mailsrv import __version__, observe
from mailsrv.auth.challengers import normalise
from mailsrv.config import Config
from mailsrv.hooks import SessionHooks
from mailsrv.observe import Observer
from mailsrv.penalty import LoginPenalty
from mailsrv.quota import Quotas, quotas_from_config

if TYPE_CHECKING:
    from mailsrv.auth.sasl import SaslServices

#: Seconds a timed-out connection has to take its goodbye before it is cut.
CLOSE_GRACE = 10.0


def _never() -> bool:
    return False


@attrs.frozen
class SessionPolicy:
    hostname: str = "localhost"
    #: Server TLS context (an IOpenSSLServerConnectionCreator such as
    #: CertificateOptions) for STARTTLS/STLS; None means TLS is not offered.
    tls_context: Any = None
    #: "never", "loopback" or "always": where plaintext passwords are
    #: accepted on a connection that is not (yet) TLS.
    plaintext: str = "loopback"
    failure_delay: float = 2.0
    max_failures: int = 3
    max_line_length: int = 65536
    max_message_size: int = 64 * 1024 * 1024
    max_nesting_depth: int = 32
    max_pending_commands: int = 64
    #: CPU seconds one SEARCH, SORT, THREAD or FETCH may spend before it is
    #: answered ``NO [LIMIT]`` (:mod:`mailsrv.imap.budget`); 0: no limit.
    command_cpu_seconds: float = 30.0
    #: Keys reading message contents (TEXT, BODY, HEADER, SUBJECT, FROM...)
    #: one SEARCH, SORT or THREAD program may hold; more is ``NO [LIMIT]``.
    max_search_content_keys: int = 100
    #: RFC 5464: largest annotation value, and annotations per mailbox.
    max_metadata_size: int = 64 * 1024
    max_metadata_entries: int = 100
    imap_timeout_unauthenticated: float = 60.0
    imap_timeout_authenticated: float = 1800.0
    pop3_timeout: float = 600.0
    #: Seconds from connect to a successful login, IMAP and POP3 alike: a
    #: client that keeps the line busy (NOOP, a SASL exchange, a TLS
    #: handshake) without logging in is bounded all the same.
    login_timeout: float = 120.0
    #: LMTP: seconds without a complete command or message data.
    lmtp_timeout: float = 300.0
    #: LMTP: RCPT commands accepted per message.
    lmtp_max_recipients: int = 100
    #: LMTP: separates a local part from its detail (alice+lists); "" for none.
    recipient_delimiter: str = "+"
    #: True when some user has a plaintext-equivalent secret, so CRAM-MD5 and
    #: APOP can succeed; asked at each connection, since the users file may
    #: change.
    challenge_auth_available: Callable[[], bool] = _never
    connections: ConnectionLimits | None = None
    #: Each user's quota limits (none by default): IMAP, LMTP and
    #: ``mailsrv deliver`` check them before storing.
    quotas: Quotas = attrs.field(factory=Quotas)
    #: IMAP's ID answer (RFC 2971): field/value pairs, from ``[server]
    #: id_name`` and ``id_version``.
    id_fields: tuple[tuple[str, str], ...] = (("name", "mailsrv"), ("version", __version__))
    #: What SCRAM and the OAuth mechanisms need (users' SCRAM secrets, a
    #: token validator); None offers neither.
    sasl: SaslServices | None = None
    #: SASL mechanisms of the embedding application, as twisted.mail's
    #: ``challengers``: mechanism name -> a callable that makes a fresh
    #: ``IChallengeResponse`` credentials object per attempt
    #: (:mod:`mailsrv.auth.challengers`).  Offered by IMAP and POP3 beside
    #: mailsrv's own; a name of mailsrv's own is replaced.
    challengers: Mapping[str, Callable[[], Any]] = attrs.field(factory=dict, converter=normalise)
    #: What an embedding application changes in sessions (mailsrv.testing's
    #: emulation, the twisted.mail bridge); None in the daemon.
    hooks: SessionHooks | None = None
    #: Who hears what sessions do (:mod:`mailsrv.observe`): live state like
    #: ``connections``, kept across reloads; by default the session log lines.
    observer: Observer = observe.DEFAULT

    @classmethod
    def from_config(
        cls,
        config: Config,
        tls_context: Any = None,
        challenge_auth_available: Callable[[], bool] = _never,
        sasl: SaslServices | None = None,
        quotas: Quotas | None = None,
    ) -> SessionPolicy:
        limits, timeouts = config.limits, config.timeouts
        return cls(
            hostname=config.server.hostname,
            tls_context=tls_context,
            plaintext=config.auth.plaintext,
            failure_delay=config.auth.failure_delay,
            max_failures=config.auth.max_failures,
            max_line_length=limits.max_line_length,
            max_message_size=limits.max_message_size,
            max_nesting_depth=limits.max_nesting_depth,
            max_pending_commands=limits.max_pending_commands,
            command_cpu_seconds=limits.command_cpu_seconds,
            max_search_content_keys=limits.max_search_content_keys,
            max_metadata_size=limits.max_metadata_size,
            max_metadata_entries=limits.max_metadata_entries,
            imap_timeout_unauthenticated=timeouts.imap_unauthenticated,
            imap_timeout_authenticated=timeouts.imap_authenticated,
            pop3_timeout=timeouts.pop3,
            login_timeout=timeouts.login,
            lmtp_timeout=timeouts.lmtp,
            lmtp_max_recipients=config.lmtp.max_recipients,
            recipient_delimiter=config.lmtp.recipient_delimiter,
            challenge_auth_available=challenge_auth_available,
            sasl=sasl,
            connections=ConnectionLimits(
                per_user=limits.max_connections_per_user,
                per_ip=limits.max_connections_per_ip,
                total=limits.max_connections,
                penalty_max=config.auth.penalty_max,
            ),
            quotas=quotas if quotas is not None else quotas_from_config(config),
            id_fields=(("name", config.server.id_name),)
            + ((("version", __version__),) if config.server.id_version else ()),
        )

    def failure_wait(self, started: float | None, now: float) -> float:
        """Seconds until a failed login is answered: ``failure_delay`` after
        the attempt began (``started``; None: now), never sooner.

        Counting from the start, not from the checker's verdict, makes the
        answer come at the same moment whatever the check cost: an unknown
        user (a dummy argon2 hash), a PLAIN user and a bcrypt user look
        alike to a client with a stopwatch, as long as hashing takes less
        than the delay.  IMAP and POP3 both answer this way.
        """
        begun = now if started is None else started
        return max(0.0, begun + self.failure_delay - now)

    def plaintext_allowed(self, peer: IAddress | None, secure: bool) -> bool:
        """May a password be sent in the clear on this connection?"""
        if secure or self.plaintext == "always":
            return True
        if self.plaintext == "never":
            return False
        return is_loopback(peer)


def is_loopback(peer: IAddress | None) -> bool:
    host = getattr(peer, "host", None)
    if not isinstance(host, str):
        return False
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class ConnectionLimits:
    """Counts open connections (in all, per client IP and per logged-in
    user) and remembers failed logins (:class:`LoginPenalty`).

    Shared by every factory of one service, so a user's IMAP and POP3
    connections count together, as they load the same mailbox, and a
    reload keeps the counts and the failures.  This one counts in the
    process and answers at once; the worker processes of one daemon count
    with their parent instead
    (:class:`mailsrv.workers.limits.SharedConnectionLimits`), whose
    ``open_*`` answer Deferreds, which :class:`mailsrv.session.SessionGuard`
    waits for.
    """

    def __init__(
        self, per_user: int = 20, per_ip: int = 50, total: int = 1000, penalty_max: float = 15.0
    ) -> None:
        self.per_user = per_user
        self.per_ip = per_ip
        self.total = total
        self.penalty = LoginPenalty(penalty_max)
        self._ips: Counter[str] = Counter()
        self._users: Counter[str] = Counter()
        self._open = 0

    def open_ip(self, peer: IAddress | None) -> bool | Deferred[bool]:
        """Count a new connection; False if its IP, or the service, is over
        its limit."""
        host = str(getattr(peer, "host", ""))
        if self._ips[host] >= self.per_ip or self._open >= self.total:
            return False
        self._ips[host] += 1
        self._open += 1
        return True

    def close_ip(self, peer: IAddress | None) -> None:
        host = str(getattr(peer, "host", ""))
        self._open -= 1
        self._ips[host] -= 1
        if self._ips[host] <= 0:
            del self._ips[host]

    def over_total(self) -> bool:
        """Is the service at its connection limit (so the refusal was not
        the address's)?"""
        return self._open >= self.total

    def open_user(self, user: str) -> bool | Deferred[bool]:
        """Count a login; False if the user is over the limit."""
        if self._users[user] >= self.per_user:
            return False
        self._users[user] += 1
        return True

    def close_user(self, user: str) -> None:
        self._users[user] -= 1
        if self._users[user] <= 0:
            del self._users[user]
