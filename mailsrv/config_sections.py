"""The configuration's sections: one attrs class per TOML table, whose
field metadata (:func:`~mailsrv.config_values._meta`) carries each key's
check, and :class:`Config`, which holds them all.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs

from mailsrv.config_values import (
    _TOKEN_MECHANISMS,
    DEFAULT_CIPHERS,
    _check_choice,
    _check_ciphers,
    _check_delimiter,
    _check_group,
    _check_id_name,
    _check_mechanisms,
    _check_mode,
    _check_networks,
    _check_range,
    _check_size,
    _check_user,
    _meta,
)

if TYPE_CHECKING:
    from mailsrv.quota import QuotaLimits

#: The most reactor processes ``[server] workers`` may ask for.
MAX_WORKERS = 256


@attrs.frozen
class ServerSection:
    hostname: str = attrs.field(factory=socket.getfqdn, metadata=_meta())
    #: What IMAP's ID (RFC 2971) answers as the server's "name", and whether
    #: the "version" goes with it.
    id_name: str = attrs.field(default="mailsrv", metadata=_meta(_check_id_name))
    id_version: bool = attrs.field(default=True, metadata=_meta())
    #: Addresses or networks of the load balancers whose PROXY headers are
    #: believed; required by any ``haproxy:`` listener.
    trusted_proxies: tuple[str, ...] = attrs.field(default=(), metadata=_meta(_check_networks))
    #: Reactor processes sharing the listeners (mailsrv/workers/); 0 means
    #: one per CPU this process may run on, 1 the single process of old.
    workers: int = attrs.field(default=0, metadata=_meta(_check_range(0, MAX_WORKERS)))


@attrs.frozen
class ListenSection:
    """Listeners of one protocol, as Twisted endpoint strings.

    ``listen`` endpoints speak plaintext and offer STARTTLS/STLS when a
    certificate is configured; ``listen_tls`` endpoints are plain endpoint
    strings (``tcp:993``) that mailsrv wraps in implicit TLS.
    """

    listen: tuple[str, ...] = attrs.field(default=(), metadata=_meta())
    listen_tls: tuple[str, ...] = attrs.field(default=(), metadata=_meta())


@attrs.frozen
class LMTPSection:
    """The LMTP listener (RFC 2033) an MTA delivers through.

    LMTP clients are trusted (no authentication), so listen on a Unix
    socket only the MTA may connect to, or on loopback.
    """

    listen: tuple[str, ...] = attrs.field(default=(), metadata=_meta())
    #: Mode, owner and group of ``unix:`` listener sockets; Postfix's lmtp(8)
    #: connects as its own user. The owner and group need a daemon started as root.
    socket_mode: int = attrs.field(default=0o660, metadata=_meta(_check_mode))
    socket_owner: str | None = attrs.field(default=None, metadata=_meta(_check_user))
    socket_group: str | None = attrs.field(default=None, metadata=_meta(_check_group))
    #: ``alice+lists@example.org`` delivers to alice's folder ``lists`` when it
    #: exists (to INBOX otherwise); empty turns detail addressing off.
    recipient_delimiter: str = attrs.field(default="+", metadata=_meta(_check_delimiter))
    #: RCPT commands accepted per message (RFC 5321 4.5.3.1.8 asks for 100).
    max_recipients: int = attrs.field(default=100, metadata=_meta(_check_range(1, 100000)))


#: ``tls.profile``: the lowest TLS version and the TLS 1.2 suites of each
#: (RFC 9325 4): "modern" is TLS 1.3 only, "intermediate" (the default)
#: adds TLS 1.2 with forward-secret AEAD suites, for clients from before 1.3.
TLS_PROFILES: dict[str, tuple[str, str | None]] = {
    "modern": ("1.3", None),
    "intermediate": ("1.2", DEFAULT_CIPHERS),
}


@attrs.frozen
class SNICertificate:
    """One more certificate and its key (``[[tls.sni]]``), served to clients
    that ask for one of the names it is for (RFC 6066 3, Server Name
    Indication)."""

    certificate: str
    key: str


@attrs.frozen
class TLSSection:
    certificate: str | None = attrs.field(default=None, metadata=_meta(path=True))
    key: str | None = attrs.field(default=None, metadata=_meta(path=True))
    #: "modern" or "intermediate": see :data:`TLS_PROFILES`.
    profile: str = attrs.field(default="intermediate", metadata=_meta(_check_choice(*TLS_PROFILES)))
    #: Raises the profile's lowest version ("1.3" with "intermediate").
    min_version: str | None = attrs.field(default=None, metadata=_meta(_check_choice("1.2", "1.3")))
    #: OpenSSL cipher string for TLS 1.2 instead of the profile's (TLS 1.3
    #: suites are not affected).
    ciphers: str | None = attrs.field(default=None, metadata=_meta(_check_ciphers))
    #: Further certificates, each served to clients asking for its names.
    sni: tuple[SNICertificate, ...] = attrs.field(default=(), metadata=_meta())
    #: Create a self-signed certificate and key at the paths above when they
    #: are missing (development only).
    generate_self_signed: bool = attrs.field(default=False, metadata=_meta())

    @property
    def minimum_version(self) -> str:
        """The lowest TLS version accepted: ``min_version``, else the profile's."""
        return self.min_version or TLS_PROFILES[self.profile][0]

    @property
    def cipher_list(self) -> str | None:
        """The TLS 1.2 suites: ``ciphers``, else the profile's (None: no TLS 1.2)."""
        if self.minimum_version == "1.3":
            return None
        return self.ciphers if self.ciphers is not None else DEFAULT_CIPHERS


@attrs.frozen
class UsersSection:
    passwd_file: str = attrs.field(default="/etc/mailsrv/passwd", metadata=_meta(path=True))
    default_scheme: str = attrs.field(
        default="ARGON2ID",
        metadata=_meta(_check_choice("ARGON2ID", "BLF-CRYPT", "SCRAM-SHA-256", "PLAIN")),
    )
    #: Create an empty users file when it is missing (development only).
    create_if_missing: bool = attrs.field(default=False, metadata=_meta())


@attrs.frozen
class OAuthSection:
    """``[auth.oauth]``: logins with OAuth 2.0 bearer tokens (OAUTHBEARER,
    XOAUTH2), offered only when ``validator`` is set.  The rest is checked
    when the file is loaded (:func:`_check_oauth`)."""

    #: "jwt" (signed tokens, checked with a key), "introspection" (RFC 7662:
    #: the authorization server is asked), or "" (no OAuth).
    validator: str = attrs.field(
        default="", metadata=_meta(_check_choice("", "jwt", "introspection"))
    )
    mechanisms: tuple[str, ...] = attrs.field(
        default=_TOKEN_MECHANISMS, metadata=_meta(_check_mechanisms)
    )
    #: Claims naming the user, first present wins; empty: "email" then
    #: "sub" (introspection: "username" first).
    user_claims: tuple[str, ...] = attrs.field(default=(), metadata=_meta())
    #: When set, the token's "iss" / "aud" must be this; its scope must
    #: include ``scope`` (also told to clients in the error challenge).
    issuer: str = attrs.field(default="", metadata=_meta())
    audience: str = attrs.field(default="", metadata=_meta())
    scope: str = attrs.field(default="", metadata=_meta())
    #: Told to clients in the error challenge (RFC 7628 3.2.2).
    openid_configuration: str = attrs.field(default="", metadata=_meta())
    #: Seconds of clock skew allowed on "exp" and "nbf".
    leeway: float = attrs.field(default=60.0, metadata=_meta(_check_range(0, 3600)))
    #: validator = "jwt": a PEM public key (RS256, ES256) or a file holding
    #: a shared secret (HS256); exactly one.
    jwt_public_key: str | None = attrs.field(default=None, metadata=_meta(path=True))
    jwt_secret_file: str | None = attrs.field(default=None, metadata=_meta(path=True))
    #: validator = "introspection": the endpoint and this server's client
    #: credentials there (the secret inline or in a file).
    introspection_url: str = attrs.field(default="", metadata=_meta())
    client_id: str = attrs.field(default="", metadata=_meta())
    client_secret: str = attrs.field(default="", metadata=_meta())
    client_secret_file: str | None = attrs.field(default=None, metadata=_meta(path=True))
    timeout: float = attrs.field(default=5.0, metadata=_meta(_check_range(0.1, 60)))
    #: Seconds an active token's answer is remembered (never past its exp).
    cache_seconds: float = attrs.field(default=60.0, metadata=_meta(_check_range(0, 3600)))
    cache_size: int = attrs.field(default=10000, metadata=_meta(_check_range(0, 10**6)))


@attrs.frozen
class AuthSection:
    #: Where plaintext LOGIN/USER/AUTHENTICATE is allowed before TLS:
    #: "never", "loopback" (connections from 127.0.0.0/8 and ::1) or "always".
    plaintext: str = attrs.field(
        default="loopback", metadata=_meta(_check_choice("never", "loopback", "always"))
    )
    failure_delay: float = attrs.field(default=2.0, metadata=_meta(_check_range(0, 60)))
    max_failures: int = attrs.field(default=3, metadata=_meta(_check_range(1, 100)))
    #: Longest spacing of the checks earned by failed logins from one
    #: address or for one user, across connections (mailsrv/penalty.py);
    #: 0 turns the penalty off.
    penalty_max: float = attrs.field(default=15.0, metadata=_meta(_check_range(0, 300)))
    #: Where users and passwords live: the users file ([users] passwd_file)
    #: or the ``users`` table of a PostgreSQL database.
    backend: str = attrs.field(
        default="passwd-file", metadata=_meta(_check_choice("passwd-file", "postgresql"))
    )
    #: backend = "postgresql": the database; empty means storage.dsn's.
    dsn: str = attrs.field(default="", metadata=_meta())
    #: Derives the SCRAM salts shown for unknown users (and users with a
    #: PLAIN secret); nodes serving the same users should share one, or an
    #: unknown user's salt would differ between them where a real user's
    #: does not.  Empty: a random one at each start.
    salt_secret: str = attrs.field(default="", metadata=_meta())
    oauth: OAuthSection = attrs.field(factory=OAuthSection, metadata=_meta(section=OAuthSection))


@attrs.frozen
class StorageSection:
    backend: str = attrs.field(
        default="maildir", metadata=_meta(_check_choice("maildir", "memory", "postgresql"))
    )
    #: Path template with {user} and/or {home} (the passwd file's home field).
    maildir: str = attrs.field(default="/var/mail/{user}/Maildir", metadata=_meta())
    #: Seconds between checks for outside changes while a client idles,
    #: where inotify is not available.
    poll_interval: float = attrs.field(default=5.0, metadata=_meta(_check_range(0.1, 3600)))
    #: backend = "postgresql": a libpq connection string or postgresql:// URI.
    dsn: str = attrs.field(default="", metadata=_meta())
    #: backend = "postgresql": worker threads, hence database connections, per process.
    pool_size: int = attrs.field(default=10, metadata=_meta(_check_range(1, 1000)))
    #: backend = "postgresql": days ``mailsrv db prune`` keeps the expunge log
    #: and deleted mailboxes' tombstones.
    retention_days: int = attrs.field(default=30, metadata=_meta(_check_range(1, 3650)))
    #: backend = "maildir": keep a full-text index per folder (SQLite FTS5,
    #: ``mailsrv-fulltext.sqlite``) that SEARCH BODY and TEXT answer from.
    fulltext: bool = attrs.field(default=True, metadata=_meta())
    #: backend = "maildir": writes wait for the folder lock and their fsyncs
    #: in a per-folder writer thread (mailsrv/storage/maildir/writer.py), so
    #: the reactor answers meanwhile; false writes on the reactor thread.
    threaded_writes: bool = attrs.field(default=True, metadata=_meta())


@attrs.frozen
class LimitsSection:
    #: Longest command line, literals excluded (RFC 7162 3.1.1 asks for 8192).
    max_line_length: int = attrs.field(default=65536, metadata=_meta(_check_range(1024)))
    #: Largest literal and message (IMAP APPENDLIMIT), in octets.
    max_message_size: int = attrs.field(
        default=64 * 1024 * 1024, metadata=_meta(_check_range(1024))
    )
    max_nesting_depth: int = attrs.field(default=32, metadata=_meta(_check_range(2, 1000)))
    max_pending_commands: int = attrs.field(default=64, metadata=_meta(_check_range(1, 10000)))
    #: CPU seconds one SEARCH, SORT, THREAD or FETCH may spend (counted
    #: over its batches) before it is answered NO [LIMIT]; 0 for no limit.
    command_cpu_seconds: float = attrs.field(default=30.0, metadata=_meta(_check_range(0, 86400)))
    #: Keys reading message contents (TEXT, BODY, HEADER, SUBJECT, FROM, TO,
    #: CC, BCC) in one SEARCH, SORT or THREAD program; more is NO [LIMIT].
    max_search_content_keys: int = attrs.field(default=100, metadata=_meta(_check_range(1, 100000)))
    max_connections_per_user: int = attrs.field(default=20, metadata=_meta(_check_range(1)))
    max_connections_per_ip: int = attrs.field(default=50, metadata=_meta(_check_range(1)))
    #: Connections open at once over all listeners (IMAP, POP3).
    max_connections: int = attrs.field(default=1000, metadata=_meta(_check_range(1)))
    #: Largest IMAP METADATA value, in octets (RFC 5464 4.3: ``[METADATA MAXSIZE n]``).
    max_metadata_size: int = attrs.field(
        default=64 * 1024, metadata=_meta(_check_range(1, 16 * 1024 * 1024))
    )
    #: Annotations per mailbox (and on the server, per user): ``[METADATA TOOMANY]``.
    max_metadata_entries: int = attrs.field(default=100, metadata=_meta(_check_range(1, 100000)))
    #: Maildir: cache kinds named after what clients asked for (each
    #: HEADER.FIELDS set FETCHed, each field SEARCHed) one folder's index
    #: keeps; past it the least recently used one's values are dropped.
    max_cache_kinds: int = attrs.field(default=32, metadata=_meta(_check_range(1, 10000)))


@attrs.frozen
class QuotaSection:
    """Default quota of every user (the users file's ``userdb_quota_rule``
    fields override it per user); empty or 0 is no limit."""

    #: Octets of messages, as ``2048``, ``100k``, ``500M``, ``1G``.
    storage: str = attrs.field(default="", metadata=_meta(_check_size))
    #: Number of messages.
    messages: int = attrs.field(default=0, metadata=_meta(_check_range(0)))
    #: What ``mailsrv deliver`` and LMTP answer for a message that does not
    #: fit: "tempfail" (exit 75, LMTP 452 4.2.2: the MTA keeps it and
    #: retries) or "bounce" (exit 73, LMTP 552 5.2.2: returned to sender).
    delivery: str = attrs.field(
        default="tempfail", metadata=_meta(_check_choice("tempfail", "bounce"))
    )


@attrs.frozen
class TimeoutsSection:
    #: Seconds without a complete command before login.
    imap_unauthenticated: float = attrs.field(default=60.0, metadata=_meta(_check_range(5)))
    #: After login; RFC 3501 5.4 requires at least 30 minutes, which also
    #: covers an IDLE that clients renew every 29 minutes (RFC 2177).
    imap_authenticated: float = attrs.field(default=1800.0, metadata=_meta(_check_range(1800)))
    #: RFC 1939 section 3 requires at least 10 minutes.
    pop3: float = attrs.field(default=600.0, metadata=_meta(_check_range(600)))
    #: From connect to a successful login, however busy the client keeps
    #: the connection (IMAP and POP3).
    login: float = attrs.field(default=120.0, metadata=_meta(_check_range(5, 3600)))
    #: LMTP: seconds without a complete command or a piece of message data
    #: (RFC 5321 4.5.3.2.7 asks servers to wait 5 minutes).
    lmtp: float = attrs.field(default=300.0, metadata=_meta(_check_range(5, 3600)))


@attrs.frozen
class LoggingSection:
    level: str = attrs.field(
        default="info", metadata=_meta(_check_choice("debug", "info", "warn", "error"))
    )
    #: "text" (twistd's lines) or "json" (one JSON object per line).
    format: str = attrs.field(default="text", metadata=_meta(_check_choice("text", "json")))
    #: One line per IMAP, POP3 and LMTP command at info level (else at debug only).
    commands: bool = attrs.field(default=False, metadata=_meta())


@attrs.frozen
class MetricsSection:
    #: Where Prometheus scrapes ``/metrics``: a Twisted endpoint string
    #: ("tcp:9154:interface=127.0.0.1"); "" serves no metrics.
    listen: str = attrs.field(default="", metadata=_meta())


#: The longest path a Unix socket may have (sun_path is 108 bytes with its NUL).
_MAX_SOCKET_PATH = 107

#: The admin socket unless ``[admin] socket`` says otherwise: in the run
#: directory systemd makes for the service (``RuntimeDirectory=mailsrv``).
DEFAULT_ADMIN_SOCKET = "/run/mailsrv/admin.sock"


@attrs.frozen
class AdminSection:
    #: The Unix socket ``mailsrv who/kick/stats/reload`` talk to; "" for none.
    socket: str = attrs.field(default=DEFAULT_ADMIN_SOCKET, metadata=_meta())
    #: A group whose members may use the socket too (mode 0660); "" for the
    #: daemon's user only (mode 0600).
    group: str | None = attrs.field(default=None, metadata=_meta(_check_group))
    #: Seconds the parent of several workers waits for each worker's answer
    #: to an admin command before reporting that worker as not answering.
    worker_timeout: float = attrs.field(default=10.0, metadata=_meta(_check_range(0.1, 300)))


@attrs.frozen
class Listener:
    """One socket to listen on, with where in the configuration it came from."""

    protocol: str  # "imap", "pop3" or "lmtp"
    endpoint: str
    implicit_tls: bool
    origin: str  # "imap.listen[0]" or "--imap"

    #: The prefix that marks a listener behind a load balancer: every
    #: connection starts with a PROXY header (v1 or v2).
    PROXY_PREFIX = "haproxy:"

    @property
    def proxy(self) -> bool:
        return self.endpoint.startswith(self.PROXY_PREFIX)

    @property
    def bare_endpoint(self) -> str:
        """The endpoint string without the ``haproxy:`` mark."""
        return self.endpoint.removeprefix(self.PROXY_PREFIX)


@attrs.frozen
class Config:
    path: str | None
    server: ServerSection = ServerSection()
    imap: ListenSection = ListenSection()
    pop3: ListenSection = ListenSection()
    lmtp: LMTPSection = LMTPSection()
    tls: TLSSection = TLSSection()
    users: UsersSection = UsersSection()
    auth: AuthSection = AuthSection()
    storage: StorageSection = StorageSection()
    limits: LimitsSection = LimitsSection()
    quota: QuotaSection = QuotaSection()
    timeouts: TimeoutsSection = TimeoutsSection()
    logging: LoggingSection = LoggingSection()
    metrics: MetricsSection = MetricsSection()
    admin: AdminSection = AdminSection()
    #: Keys ("imap.listen") whose value came from a command-line option,
    #: mapped to that option ("--imap"), so errors name what the user typed.
    from_command_line: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def listeners(self) -> list[Listener]:
        found = []
        for protocol in ("imap", "pop3", "lmtp"):
            section: ListenSection | LMTPSection = getattr(self, protocol)
            kinds = (
                (("listen", False),)
                if protocol == "lmtp"
                else (("listen", False), ("listen_tls", True))
            )
            for field, tls in kinds:
                key = f"{protocol}.{field}"
                origin = self.from_command_line.get(key, key)
                for i, ep in enumerate(getattr(section, field)):
                    found.append(Listener(protocol, ep, tls, f"{origin}[{i}]"))
        return found

    @property
    def tls_enabled(self) -> bool:
        return self.tls.certificate is not None

    @property
    def quota_default(self) -> QuotaLimits:
        """The ``[quota]`` section as limits (0 and empty: no limit)."""
        from mailsrv.quota import QuotaLimits, parse_size

        storage = parse_size(self.quota.storage) if self.quota.storage else 0
        return QuotaLimits(storage or None, self.quota.messages or None)

    @property
    def auth_dsn(self) -> str:
        """The database of users kept in PostgreSQL ([auth] dsn, else [storage] dsn)."""
        return self.auth.dsn or self.storage.dsn


_SECTIONS: dict[str, type] = {
    "server": ServerSection,
    "imap": ListenSection,
    "pop3": ListenSection,
    "lmtp": LMTPSection,
    "tls": TLSSection,
    "users": UsersSection,
    "auth": AuthSection,
    "storage": StorageSection,
    "limits": LimitsSection,
    "quota": QuotaSection,
    "timeouts": TimeoutsSection,
    "logging": LoggingSection,
    "metrics": MetricsSection,
    "admin": AdminSection,
}

#: Command-line options: option name -> (section, key).
OVERRIDES: dict[str, tuple[str, str]] = {
    "imap": ("imap", "listen"),
    "imaps": ("imap", "listen_tls"),
    "pop3": ("pop3", "listen"),
    "pop3s": ("pop3", "listen_tls"),
    "lmtp": ("lmtp", "listen"),
    "maildir": ("storage", "maildir"),
    "passwd": ("users", "passwd_file"),
    "tls_cert": ("tls", "certificate"),
    "tls_key": ("tls", "key"),
    "workers": ("server", "workers"),
}
