"""Configuration: a TOML file loaded into validated attrs objects.

Every problem is reported as one :class:`~mailsrv.errors.ConfigError` naming
the file, the key and the reason (``etc/mailsrv.toml: imap.listen[0]: ...``),
so an administrator never has to read a traceback.  Command-line options
(``--imap``, ``--passwd``, ...) override the file key by key and are
validated by the same rules; their errors name the option.

Relative paths are resolved against the working directory at load time, the
way ``twistd`` and shells treat them, and stored absolute.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from mailsrv.errors import ConfigError

if TYPE_CHECKING:
    from mailsrv.quota import QuotaLimits

COMMAND_LINE = "command line"

#: Endpoint strings are parsed for validation only, never listened on here;
#: importing the reactor at load time would pre-empt twistd's --reactor.
_NO_REACTOR: Any = None

#: The most reactor processes ``[server] workers`` may ask for.
MAX_WORKERS = 256

#: Interfaces that mean "every address": they clash with any interface.
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def _check_range(
    low: float | None = None, high: float | None = None
) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if low is not None and value < low:
            return f"must be at least {low}, not {value}"
        if high is not None and value > high:
            return f"must be at most {high}, not {value}"
        return None

    return check


def _check_choice(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value not in choices:
            return f"must be one of {', '.join(map(repr, choices))}, not {value!r}"
        return None

    return check


def _meta(
    check: Callable[[Any], str | None] | None = None,
    path: bool = False,
    section: type | None = None,
) -> dict[str, Any]:
    """A field's checks: ``check`` the value, resolve it as a ``path``, or
    read it as a ``section`` of its own (a sub-table, ``[auth.oauth]``)."""
    return {"check": check, "path": path, "section": section}


def _check_networks(value: tuple[str, ...]) -> str | None:
    from mailsrv.proxy import parse_networks

    return parse_networks(value)[1]


def _check_id_name(value: str) -> str | None:
    # RFC 2971 3.3: a value is at most 1024 octets; it goes out quoted.
    if not value or len(value.encode("utf-8")) > 1024 or not value.isprintable():
        return f"must be 1 to 1024 octets of printable text, not {value!r}"
    return None


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


#: TLS 1.2 cipher suites by default: ECDHE key exchange (forward secrecy)
#: with an AEAD cipher only, as RFC 9325 4.1 and 4.2 recommend; no static
#: RSA, no CBC, no SHA-1.  TLS 1.3 suites are all AEAD and forward secret,
#: and this list does not touch them.
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _check_ciphers(value: str) -> str | None:
    """An OpenSSL cipher string that selects some TLS 1.2 suite and no
    suite without authentication or encryption."""
    # Imported here: only a file that sets tls.ciphers pays for it.
    from OpenSSL import SSL

    def expand(ciphers: str) -> list[str]:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_cipher_list(ciphers.encode("ascii"))
        # TLS 1.3 suites (TLS_*) are listed whatever the string says.
        return [
            c for c in SSL.Connection(context, None).get_cipher_list() if not c.startswith("TLS_")
        ]

    if not value.isascii() or not value.strip():
        return f"not an OpenSSL cipher string: {value!r}"
    try:
        selected = expand(value)
    except SSL.Error:
        selected = []
    if not selected:
        return (
            f"{value!r} selects no TLS 1.2 cipher suite this OpenSSL knows "
            f"(the default is {DEFAULT_CIPHERS!r}; `openssl ciphers -v STRING` lists a selection)"
        )
    unsafe = sorted(set(selected) & set(expand("aNULL:eNULL")))
    if unsafe:
        return (
            f"{value!r} selects suites without authentication or encryption "
            f"({', '.join(unsafe[:5])}{', ...' if len(unsafe) > 5 else ''}); add ':!aNULL:!eNULL'"
        )
    return None


def _check_mode(value: int) -> str | None:
    if not 0 <= value <= 0o777:
        return (
            f"{value} is not a permission mode; write it in octal as TOML allows, "
            "e.g. 0o660 (not 660)"
        )
    return None


def _check_user(value: str) -> str | None:
    import pwd

    try:
        pwd.getpwnam(value)
    except KeyError:
        return f"no such user {value!r} on this system"
    return None


def _check_group(value: str) -> str | None:
    import grp

    try:
        grp.getgrnam(value)
    except KeyError:
        return f"no such group {value!r} on this system"
    return None


def _check_delimiter(value: str) -> str | None:
    if len(value) > 1 or value in ("@", "<", ">", " ", '"', "\\"):
        return f"must be one character (such as '+' or '-') or empty to turn it off, not {value!r}"
    return None


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


_TOKEN_MECHANISMS = ("OAUTHBEARER", "XOAUTH2")


def _check_mechanisms(value: tuple[str, ...]) -> str | None:
    for name in value:
        if name not in _TOKEN_MECHANISMS:
            return f"unknown mechanism {name!r} (known: {', '.join(_TOKEN_MECHANISMS)})"
    return None


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


def _check_size(value: str) -> str | None:
    from mailsrv.quota import parse_size

    if value == "":
        return None
    try:
        parse_size(value)
    except ValueError as e:
        return str(e)
    return None


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


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _convert(value: Any, annotation: str, where: str) -> Any:
    """Check ``value`` against a field's annotation; return the stored form."""
    if annotation == "tuple[SNICertificate, ...]":
        return _sni_certificates(value, where)
    converter = _CONVERTERS.get(annotation)
    if converter is None:
        raise AssertionError(f"no converter for {annotation}")
    try:
        return converter(value)
    except _WrongType as e:
        raise _error(where, f"expected {e}, got {_type_name(value)} {value!r}") from None


class _WrongType(Exception):
    """A value of another type than the field's; the message says what was expected."""


def _to_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _WrongType("true or false")
    return value


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _WrongType("an integer")
    return value


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _WrongType("a number")
    return float(value)


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _WrongType("a string")
    return value


def _to_strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _WrongType("a list of strings")
    return tuple(value)


#: The converter for each field annotation the sections use.
_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "bool": _to_bool,
    "int": _to_int,
    "int | None": _to_int,
    "float": _to_float,
    "str": _to_str,
    "str | None": _to_str,
    "tuple[str, ...]": _to_strings,
}


def _sni_certificates(value: Any, where: str) -> tuple[SNICertificate, ...]:
    """``[[tls.sni]]`` tables: each a ``certificate`` and a ``key`` path."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise _error(
            where,
            f"expected tables ([[{where}]] with certificate and key), got {_type_name(value)}",
        )
    pairs = []
    for i, table in enumerate(value):
        here = f"{where}[{i}]"
        if not isinstance(table, dict):
            raise _error(
                here, f"expected a table with certificate and key, got {_type_name(table)}"
            )
        unknown = sorted(set(table) - {"certificate", "key"})
        if unknown:
            raise _error(f"{here}.{unknown[0]}", "unknown key (known keys: certificate, key)")
        paths = []
        for name in ("certificate", "key"):
            path = table.get(name)
            if not isinstance(path, str) or not path:
                raise _error(f"{here}.{name}", "required: the path of a PEM file")
            paths.append(os.path.abspath(os.path.expanduser(path)))
        pairs.append(SNICertificate(*paths))
    return tuple(pairs)


class _Errors:
    """Carries the file name into nested helpers."""

    path = ""


def _error(key: str, reason: str) -> ConfigError:
    """An error at ``key``: a file key, or an option (``--imap[0]``)."""
    return ConfigError(COMMAND_LINE if key.startswith("--") else _Errors.path, key, reason)


def _build_section(
    name: str,
    cls: type,
    table: Mapping[str, Any],
    overrides: Mapping[str, tuple[str, Any]],
) -> Any:
    fields = {f.name: f for f in attrs.fields(cls)}
    for key in table:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise _error(f"{name}.{key}", f"unknown key (known keys of [{name}]: {known})")
    values: dict[str, Any] = {}
    for key, field in fields.items():
        if key in overrides:
            where, raw = overrides[key]
        elif key in table:
            where, raw = f"{name}.{key}", table[key]
        else:
            continue
        values[key] = _field_value(field, raw, where)
    if name == "storage":
        _check_storage(values, overrides)
    return cls(**values)


def _check_storage(values: dict[str, Any], overrides: Mapping[str, tuple[str, Any]]) -> None:
    """[storage]: the Maildir path template, the PostgreSQL DSN."""
    if "maildir" in values:
        where = overrides.get("maildir", ("storage.maildir", None))[0]
        values["maildir"] = _check_template(values["maildir"], where)
    if values.get("backend") == "postgresql":
        _check_postgresql(values.get("dsn", ""))


def _field_value(field: Any, raw: Any, where: str) -> Any:
    """One key's value, converted and checked as its field's metadata says;
    a table inside a section (``[auth.oauth]``) is built as a section."""
    inner = field.metadata.get("section")
    if inner is not None:
        if not isinstance(raw, dict):
            raise _error(where, f"expected a table [{where}], got {_type_name(raw)}")
        return _build_section(where, inner, raw, {})
    value = _convert(raw, str(field.type), where)
    check = field.metadata.get("check")
    if check is not None and value is not None:
        problem = check(value)
        if problem:
            raise _error(where, problem)
    if field.metadata.get("path") and isinstance(value, str):
        if not value:
            raise _error(where, "must not be empty")
        value = os.path.abspath(os.path.expanduser(value))
    return value


def _admin_section(section: AdminSection) -> AdminSection:
    """``[admin] socket`` made absolute, and short enough for a Unix socket."""
    if not section.socket:
        return section
    path = os.path.abspath(os.path.expanduser(section.socket))
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise _error(
            "admin.socket",
            f"{path} is longer than the {_MAX_SOCKET_PATH} bytes a Unix socket's path may have",
        )
    return attrs.evolve(section, socket=path)


def _check_postgresql(dsn: str, section: str = "storage", other: str = "") -> None:
    """The PostgreSQL backend needs psycopg and a DSN libpq can parse.

    Only the syntax is checked here; whether the server is reachable and
    its schema current is checked when the daemon starts.  ``other`` names
    a key whose value would have been used instead of an empty ``dsn``.
    """
    try:
        from psycopg import ProgrammingError, conninfo
    except ImportError:
        raise _error(
            f"{section}.backend",
            "'postgresql' needs psycopg 3, which is not installed: "
            "pip install 'mailsrv[postgresql]'",
        ) from None
    if not dsn:
        instead = f" (or set {other})" if other else ""
        raise _error(
            f"{section}.dsn",
            f"required when {section}.backend is 'postgresql'{instead}: a libpq connection "
            "string ('host=/run/postgresql dbname=mail') or a postgresql:// URI",
        )
    try:
        conninfo.conninfo_to_dict(dsn)
    except ProgrammingError as e:
        raise _error(f"{section}.dsn", f"not a valid PostgreSQL connection string: {e}") from None


def _check_tls(config: Config) -> None:
    """What the profile excludes cannot be asked for, and extra
    certificates need the default one (for clients that send no name)."""
    tls = config.tls
    if tls.profile == "modern" and tls.min_version == "1.2":
        raise _error(
            "tls.min_version",
            "profile 'modern' is TLS 1.3 only; set tls.profile = 'intermediate' to accept 1.2",
        )
    if tls.ciphers is not None and tls.minimum_version == "1.3":
        raise _error(
            "tls.ciphers",
            "TLS 1.2 suites have no use when TLS 1.3 is the minimum "
            f"(tls.profile = {tls.profile!r}, tls.min_version = {tls.min_version!r}); "
            "TLS 1.3 suites are all forward-secret AEAD",
        )
    if tls.sni and tls.certificate is None:
        raise _error(
            "tls.sni",
            "needs tls.certificate and tls.key: the certificate for clients that send no name",
        )


def _check_auth(config: Config) -> None:
    """Users in PostgreSQL need a database: [auth] dsn, or else [storage] dsn's."""
    auth = config.auth
    if auth.backend != "postgresql":
        return
    if auth.dsn:
        _check_postgresql(auth.dsn, "auth")
    else:
        _check_postgresql(config.storage.dsn, "auth", "storage.dsn")


def _check_workers(config: Config) -> None:
    """The memory backend lives in one process: asking it for several
    workers is an error (0, one per CPU, quietly means one there)."""
    if config.storage.backend == "memory" and config.server.workers > 1:
        raise _error(
            _origin(config, "server.workers"),
            f"storage.backend 'memory' keeps mail inside one process, so it cannot be shared "
            f"by {config.server.workers} workers; set workers to 1 (or use maildir or "
            "postgresql storage)",
        )


def _check_template(template: str, where: str) -> str:
    """Validate a Maildir path template; return it with a relative path made
    absolute (a template starting with {home} is absolute once filled in)."""
    if "{user}" not in template and "{home}" not in template:
        raise _error(where, f"path template {template!r} must contain {{user}} or {{home}}")
    try:
        template.format(user="u", home="/h")
    except (KeyError, IndexError, ValueError) as e:
        raise _error(
            where, f"bad path template {template!r}: only {{user}} and {{home}} allowed ({e})"
        ) from e
    if template.startswith("{home}"):
        return template
    return os.path.abspath(os.path.expanduser(template))


def _endpoint_address(endpoint: Any) -> tuple[str, int] | None:
    """(interface, port) of a TCP endpoint, for clash detection; else None."""
    port = getattr(endpoint, "_port", None)
    interface = getattr(endpoint, "_interface", "")
    if isinstance(port, int) and port != 0:
        return (interface if isinstance(interface, str) else "", port)
    return None


_SYSTEMD_DOMAINS = ("INET", "INET6", "UNIX")


def _systemd_problem(endpoint: str) -> str | None:
    """What is wrong with a ``systemd:`` endpoint string, checked without the
    inherited sockets.

    Twisted looks the socket up while parsing, so outside the service
    (``mailsrv check-config`` as systemd's ExecStartPre, which inherits no
    sockets) every systemd endpoint would look broken; the syntax is checked
    here instead, and the socket itself when the daemon starts.
    """
    params: dict[str, str] = {}
    for part in endpoint.split(":")[1:]:
        key, eq, value = part.partition("=")
        if not eq or key in params:
            return "expected systemd:domain=INET:index=N (or name=NAME)"
        params[key] = value
    unknown = set(params) - {"domain", "index", "name"}
    if unknown:
        return f"unknown parameter {sorted(unknown)[0]!r} (systemd takes domain, index or name)"
    if params.get("domain") not in _SYSTEMD_DOMAINS:
        return f"domain must be one of {', '.join(_SYSTEMD_DOMAINS)}"
    if ("index" in params) == ("name" in params):
        return "give exactly one of index=N or name=NAME"
    if "index" in params and not params["index"].isdigit():
        return f"index must be a number, not {params['index']!r}"
    if "name" in params and not params["name"]:
        return "name must not be empty"
    return None


def _check_listeners(config: Config, required: bool) -> None:
    listeners = config.listeners
    if not listeners and required:
        raise _error(
            "imap.listen",
            "no listeners configured: set imap.listen, imap.listen_tls, pop3.listen, "
            "pop3.listen_tls or lmtp.listen (or give --imap/--imaps/--pop3/--pop3s/--lmtp)",
        )
    seen: dict[tuple[str, int], Listener] = {}
    paths: dict[str, Listener] = {}
    # The metrics endpoint is checked as a listener is: valid, on a port of its own.
    metrics = Listener("metrics", config.metrics.listen, False, "metrics.listen")
    for listener in [*listeners, metrics] if config.metrics.listen else listeners:
        listener = _without_proxy_mark(config, listener)
        if listener.endpoint.split(":", 1)[0] == "systemd":
            problem = _systemd_problem(listener.endpoint)
            if problem is not None:
                raise _error(listener.origin, f"{listener.endpoint!r}: {problem}")
            _check_tls_available(config, listener)
            continue
        endpoint = _parse_endpoint(listener)
        _claim_socket_path(listener, endpoint, paths)
        if listener.implicit_tls and listener.endpoint.split(":", 1)[0] in ("ssl", "tls"):
            raise _error(
                listener.origin,
                f"{listener.endpoint!r}: give a plain endpoint such as 'tcp:993'; "
                "mailsrv wraps it in TLS with the [tls] certificate",
            )
        address = _endpoint_address(endpoint)
        if address is None:
            continue
        _claim_port(listener, address, seen)
        _check_tls_available(config, listener)


def _without_proxy_mark(config: Config, listener: Listener) -> Listener:
    """``listener`` with its endpoint bare of ``haproxy:``, which needs
    trusted proxies and may be given once."""
    if listener.proxy and not config.server.trusted_proxies:
        raise _error(
            listener.origin,
            f"{listener.endpoint!r} expects PROXY headers: list the load balancers' "
            'addresses in server.trusted_proxies (e.g. ["10.0.0.10", "10.0.0.11"])',
        )
    if listener.bare_endpoint.startswith(Listener.PROXY_PREFIX):
        raise _error(listener.origin, f"{listener.endpoint!r}: 'haproxy:' given twice")
    return attrs.evolve(listener, endpoint=listener.bare_endpoint)


def _parse_endpoint(listener: Listener) -> Any:
    """The listener's endpoint, built without a reactor (nothing binds)."""
    # Imported here: it costs a fifth of a second, which `mailsrv
    # deliver`, run by the MTA once per message, should not pay.
    from twisted.internet import endpoints

    try:
        return endpoints.serverFromString(_NO_REACTOR, listener.endpoint)
    except Exception as e:  # Twisted raises assorted types for bad strings
        raise _error(
            listener.origin, f"not a valid endpoint string {listener.endpoint!r}: {e}"
        ) from e


def _claim_socket_path(listener: Listener, endpoint: Any, paths: dict[str, Listener]) -> None:
    """A Unix socket's path, unless another listener has it."""
    path = getattr(endpoint, "_address", None)  # a UNIX socket's path
    if not isinstance(path, str):
        return
    other = paths.get(os.path.abspath(path))
    if other is not None:
        raise _error(
            listener.origin,
            f"{listener.endpoint!r}: socket {path} is also used by {other.origin}",
        )
    paths[os.path.abspath(path)] = listener


def _claim_port(
    listener: Listener, address: tuple[str, int], seen: dict[tuple[str, int], Listener]
) -> None:
    """A TCP port, unless out of range or another listener's on the same
    interface (or either is a wildcard)."""
    interface, port = address
    if not 0 < port < 65536:
        raise _error(listener.origin, f"port {port} is out of range 1-65535")
    for (other_interface, other_port), other in seen.items():
        if other_port == port and (
            interface == other_interface
            or interface in _WILDCARD_HOSTS
            or other_interface in _WILDCARD_HOSTS
        ):
            raise _error(
                listener.origin,
                f"{listener.endpoint!r}: port {port} is also used by "
                f"{other.origin} ({other.endpoint!r})",
            )
    seen[address] = listener


def _check_tls_available(config: Config, listener: Listener) -> None:
    if listener.implicit_tls and not config.tls_enabled:
        raise _error(listener.origin, "implicit TLS listener needs tls.certificate and tls.key")


def _check_metrics(config: Config) -> None:
    """``[metrics] listen`` needs prometheus_client to serve it (the
    endpoint itself is checked with the listeners)."""
    import importlib.util

    if config.metrics.listen.startswith(Listener.PROXY_PREFIX):
        raise _error("metrics.listen", "the metrics endpoint takes no PROXY header")
    if config.metrics.listen and importlib.util.find_spec("prometheus_client") is None:
        raise _error(
            "metrics.listen",
            "serving metrics needs prometheus_client, which is not installed: "
            "pip install 'mailsrv[metrics]'",
        )


def _origin(config: Config, key: str) -> str:
    return config.from_command_line.get(key, key)


def _check_files(config: Config) -> None:
    tls = config.tls
    if (tls.certificate is None) != (tls.key is None):
        given, missing = (
            ("tls.certificate", "tls.key") if tls.key is None else ("tls.key", "tls.certificate")
        )
        if given in config.from_command_line:  # say it in the words the user typed
            option = {"tls.certificate": "--tls-cert", "tls.key": "--tls-key"}[missing]
            raise _error(option, "--tls-cert and --tls-key must be given together")
        raise _error(_origin(config, missing), "tls.certificate and tls.key must be given together")
    files: list[tuple[str, str | None]] = []
    if tls.certificate is not None and not tls.generate_self_signed:
        files += [("tls.certificate", tls.certificate), ("tls.key", tls.key)]
    for i, pair in enumerate(tls.sni):
        files += [(f"tls.sni[{i}].certificate", pair.certificate), (f"tls.sni[{i}].key", pair.key)]
    for key, path in files:
        assert path is not None
        if not os.path.isfile(path):
            raise _error(_origin(config, key), f"file not found: {path}")
        if not os.access(path, os.R_OK):
            raise _error(_origin(config, key), f"file not readable: {path}")
    users = config.users
    if config.auth.backend != "passwd-file":
        return  # users are in the database: no users file to find
    if not users.create_if_missing and not os.path.isfile(users.passwd_file):
        raise _error(_origin(config, "users.passwd_file"), f"file not found: {users.passwd_file}")


def load_config(
    path: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    check_files: bool = True,
    require_listeners: bool = True,
) -> Config:
    """Read, validate and return the configuration.

    ``overrides`` maps option names of :data:`OVERRIDES` (``imap``,
    ``passwd``, ...) to values; ``None`` values and empty lists are ignored.
    With ``check_files`` false, referenced files need not exist yet (the
    ``mailsrv user add`` command creates the users file); admin commands
    also pass ``require_listeners=False``.
    """
    _Errors.path = path or COMMAND_LINE
    data = _read_file(path) if path is not None else {}
    by_section = _overrides_by_section(overrides or {})
    sections = {
        name: _build_section(name, cls, data.get(name, {}), by_section.get(name, {}))
        for name, cls in _SECTIONS.items()
    }
    sections["admin"] = _admin_section(sections["admin"])
    from_command_line = {
        f"{section}.{key}": origin
        for section, keys in by_section.items()
        for key, (origin, _value) in keys.items()
    }
    config = Config(
        path=os.path.abspath(path) if path else None,
        from_command_line=from_command_line,
        **sections,
    )
    _check_auth(config)
    _check_workers(config)
    _check_tls(config)
    _check_metrics(config)
    from mailsrv.auth.oauth_config import check_oauth

    check_oauth(config.auth.oauth, _Errors.path, check_files)
    _check_listeners(config, require_listeners)
    if check_files:
        _check_files(config)
    return config


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask: taskset, cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def resolved_workers(config: Config) -> int:
    """How many reactor processes ``[server] workers`` asks for: 0 is one
    per CPU, except on the memory backend, which lives in one process."""
    if config.storage.backend == "memory":
        return 1
    return config.server.workers or cpu_count()


def _read_file(path: str) -> dict[str, Any]:
    """The TOML file's tables, each a known section."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        # tomllib decodes the whole file first; TOML is UTF-8 (TOML 1.0).
        raise ConfigError(
            path, "", f"not valid TOML: not UTF-8 (octet {e.object[e.start]:#04x} at {e.start})"
        ) from None
    for name, value in data.items():
        if name not in _SECTIONS:
            raise _error(name, f"unknown section (known: {', '.join(_SECTIONS)})")
        if not isinstance(value, dict):
            raise _error(name, f"expected a table [{name}], got {_type_name(value)}")
    return data


def _overrides_by_section(
    overrides: Mapping[str, Any],
) -> dict[str, dict[str, tuple[str, Any]]]:
    """Command-line values by section and key, each with its option's name;
    None and empty lists are no value."""
    by_section: dict[str, dict[str, tuple[str, Any]]] = {}
    for option, value in overrides.items():
        if option not in OVERRIDES:
            raise AssertionError(f"unknown override {option!r}")
        if value is None or value == [] or value == ():
            continue
        section, key = OVERRIDES[option]
        by_section.setdefault(section, {})[key] = ("--" + option.replace("_", "-"), value)
    return by_section


def format_error(error: ConfigError) -> str:
    """The one line printed when startup is refused."""
    return f"mailsrv: configuration error: {error}"


def redact_dsn(dsn: str) -> str:
    """A DSN fit for logs and output: its password replaced by ``***``."""
    try:
        from psycopg import conninfo

        params = conninfo.conninfo_to_dict(dsn)
    except Exception:
        return "(unparsable DSN)"
    if "password" in params:
        params["password"] = "***"
    return " ".join(f"{key}={value}" for key, value in params.items())


def describe(config: Config) -> Sequence[str]:
    """A short human summary, printed by ``mailsrv check-config``."""
    lines = [f"configuration {config.path or '(built-in defaults)'} is valid"]
    for listener in config.listeners:
        kind = "implicit TLS" if listener.implicit_tls else "plain"
        if listener.proxy:
            kind += ", PROXY header first"
        lines.append(f"  {listener.protocol} {kind}: {listener.endpoint} ({listener.origin})")
    if config.auth.backend == "postgresql":
        lines.append(f"  users: postgresql {redact_dsn(config.auth_dsn)}")
    else:
        lines.append(f"  users file: {config.users.passwd_file}")
    if config.storage.backend == "postgresql":
        lines.append(f"  storage: postgresql {redact_dsn(config.storage.dsn)}")
    else:
        lines.append(f"  storage: {config.storage.backend} {config.storage.maildir}")
    oauth = config.auth.oauth
    if oauth.validator:
        lines.append(f"  OAuth tokens: {oauth.validator} ({', '.join(oauth.mechanisms)})")
    tls = config.tls.certificate or "none (STARTTLS/STLS not offered)"
    lines.append(f"  TLS certificate: {tls}")
    count = resolved_workers(config)
    how = " (one per CPU)" if config.server.workers == 0 and count > 1 else ""
    lines.append(f"  workers: {count}{how}")
    if config.tls_enabled:
        versions = "1.3 only" if config.tls.minimum_version == "1.3" else "1.2 and 1.3"
        suites = config.tls.cipher_list
        lines.append(
            f"  TLS profile {config.tls.profile}: TLS {versions}"
            + (f", TLS 1.2 suites {suites}" if suites else "")
        )
    quota = config.quota
    limits = [f"storage {quota.storage}"] if quota.storage not in ("", "0") else []
    limits += [f"{quota.messages} messages"] if quota.messages else []
    over = "retried (tempfail)" if quota.delivery == "tempfail" else "bounced"
    lines.append(f"  default quota: {', '.join(limits) or 'none'}; a delivery over quota is {over}")
    return lines
