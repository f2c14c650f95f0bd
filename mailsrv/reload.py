"""Live reload: SIGHUP re-reads the configuration and applies what it can.

What a connection is served with comes from its factory when it is made:
the :class:`~mailsrv.policy.SessionPolicy` (limits, timeouts, TLS context
for STARTTLS/STLS, plaintext rules), the Portal (the users file) and, for
LMTP, the user look-up.  A reload builds all of these anew from the new
file and hands them to the factories, so new connections get them while
connections already open keep what they started with (an IDLE session is
not disturbed).  Implicit-TLS listeners ask :class:`~mailsrv.tls.CurrentTLS`
at each handshake, so a renewed certificate serves the next client.

What cannot change while running -- the listeners and the storage
backend -- keeps its old value, and the log says each such key "needs a
restart".  A file that fails validation (or a certificate that does not
load) changes nothing: everything is built before anything is applied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.application import service
from twisted.cred.portal import Portal

from mailsrv import log, sdnotify
from mailsrv.config import Config, format_error
from mailsrv.errors import ConfigError
from mailsrv.observe import Observers, SessionLog
from mailsrv.policy import ConnectionLimits, SessionPolicy
from mailsrv.tls import CurrentTLS

_log = log.get_logger(__name__)

#: Sections and keys a running daemon cannot change: each keeps its old value.
RESTART_ONLY: dict[str, tuple[str, ...] | None] = {
    "imap": None,  # None: every key of the section
    "pop3": None,
    "lmtp": ("listen", "socket_mode", "socket_owner", "socket_group"),
    "storage": None,
    "metrics": None,
    "admin": None,
}


@attrs.frozen
class ReloadOutcome:
    """How a reload went: ``applied`` (the keys changed; maybe none),
    ``restart`` (applied, but the keys in :attr:`restart` keep their old
    values until a restart) or ``refused`` (nothing changed; ``reason`` says
    why).  True unless refused."""

    outcome: str
    applied: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    reason: str = ""

    def __bool__(self) -> bool:
        return self.outcome != "refused"


@attrs.frozen
class LiveParts:
    """What one configuration gives the factories."""

    policy: SessionPolicy
    portal: Portal
    #: The LMTP recipient look-up: user name -> record with ``name`` and ``home``, or None.
    users: Callable[[str], Any]
    tls_context: Any
    #: The portal's password checker (a PasswdFileChecker or a PostgresChecker).
    checker: Any = None


def _section_keys(config: Config) -> dict[str, Any]:
    """Every "section.key" of a configuration with its value."""
    found: dict[str, Any] = {}
    for field in attrs.fields(Config):
        if field.name in ("path", "from_command_line"):
            continue
        section = getattr(config, field.name)
        for inner in attrs.fields(type(section)):
            found[f"{field.name}.{inner.name}"] = getattr(section, inner.name)
    return found


def _restart_only(key: str) -> bool:
    section, name = key.split(".", 1)
    if section not in RESTART_ONLY:
        return False
    keys = RESTART_ONLY[section]
    return keys is None or name in keys


def split_changes(old: Config, new: Config) -> tuple[Config, list[str], list[str]]:
    """The configuration to run with after a reload, the changed keys that
    need a restart (kept at their old values) and the changed keys applied."""
    before, after = _section_keys(old), _section_keys(new)
    changed = [key for key in after if after[key] != before[key]]
    kept = [key for key in changed if _restart_only(key)]
    applied = [key for key in changed if not _restart_only(key)]
    effective = new
    for key in kept:
        section_name, name = key.split(".", 1)
        section = getattr(effective, section_name)
        section = attrs.evolve(section, **{name: before[key]})
        effective = attrs.evolve(effective, **{section_name: section})
    return effective, kept, applied


class MailService(service.MultiService):
    """The daemon's services, and the pieces a reload swaps.

    ``build`` turns a configuration into :class:`LiveParts` (at startup and
    at each reload alike); ``load`` reads the configuration again (the same
    file and command-line options as at startup); without it SIGHUP only
    reopens the log.  With ``systemd_notify``, READY=1 goes to systemd once
    the listeners are up, RELOADING=1/READY=1 around a reload and STOPPING=1
    when stopping.
    """

    def __init__(
        self,
        config: Config,
        build: Callable[[Config], LiveParts],
        load: Callable[[], Config] | None = None,
        *,
        systemd_notify: bool = False,
        connections: ConnectionLimits | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.build = build
        self.load = load
        self.systemd_notify = systemd_notify
        #: SIGHUP's work, when the daemon handles it (the plugin sets
        #: LogReopener.hangup): what the admin socket's reload does too.
        self.hangup: Callable[[], ReloadOutcome] | None = None
        #: What the admin commands ask (a :class:`mailsrv.admin.LocalAdmin`),
        #: set by ``make_service``.
        self.admin: Any = None
        #: The per-command log lines, whose level ``[logging] commands`` sets.
        self.session_log = SessionLog(config.logging.commands)
        #: Everyone who hears what sessions do: the log lines here, the
        #: admin socket's table and the metrics join (``make_service``).
        self.observer = Observers([self.session_log])
        self.parts = build(config)
        limits = self.parts.policy.connections or ConnectionLimits()
        if connections is not None:  # counted elsewhere (a worker's parent)
            connections.per_user, connections.per_ip = limits.per_user, limits.per_ip
            limits = connections
        self.connections = limits
        self.parts = attrs.evolve(
            self.parts,
            policy=attrs.evolve(
                self.parts.policy, connections=self.connections, observer=self.observer
            ),
        )
        #: The factories whose ``policy`` (and ``portal`` or ``users``) a reload replaces.
        self.factories: list[Any] = []
        #: What implicit-TLS listeners ask at each handshake; None without TLS.
        self.tls: CurrentTLS | None = (
            CurrentTLS(self.parts.tls_context) if self.parts.tls_context is not None else None
        )

    def add_factory(self, factory: Any) -> None:
        self.factories.append(factory)

    def startService(self) -> None:
        super().startService()
        if self.systemd_notify:
            sdnotify.ready("serving")

    def stopService(self) -> Any:
        if self.systemd_notify:
            sdnotify.stopping()
        return super().stopService()

    @property
    def can_reload(self) -> bool:
        return self.load is not None

    def reload(self) -> ReloadOutcome:
        """Re-read the configuration and apply it; how that went.

        Never raises: a bad file is logged and the configuration in force
        stays, as does everything else when building the new parts fails.
        """
        if self.load is None:
            return ReloadOutcome("refused", reason="this daemon has no configuration to reload")
        if self.systemd_notify:
            sdnotify.reloading()
        try:
            return self._reload(self.load)
        except ConfigError as e:
            error = format_error(e).removeprefix("mailsrv: ")
            _log.error("reload refused, the configuration in force is kept: {error}", error=error)
            return ReloadOutcome("refused", reason=error)
        except Exception as e:
            _log.failure("reload failed, the configuration in force is kept")
            return ReloadOutcome("refused", reason=f"internal error: {e!r} (see the log)")
        finally:
            if self.systemd_notify:
                sdnotify.ready("serving")

    def admin_reload(self) -> ReloadOutcome:
        """What the admin socket's ``reload`` does: SIGHUP's work (the
        log reopened first, when :attr:`hangup` is set), and its outcome."""
        return (self.hangup or self.reload)()

    def _reload(self, load: Callable[[], Config]) -> ReloadOutcome:
        new = load()
        effective, kept, applied = split_changes(self.config, new)
        for key in kept:
            _log.warn(
                "reload: {key} changed, which needs a restart; keeping {old!r} until then",
                key=key,
                old=_section_keys(self.config)[key],
            )
        parts = self.build(effective)  # may raise: nothing is applied yet
        self._apply(effective, parts)
        _log.info(
            "configuration reloaded from {path}: {what}",
            path=effective.path or "(command line)",
            what=("changed " + ", ".join(applied)) if applied else "no change applied",
        )
        if parts.tls_context is not None:
            _log.info(
                "TLS: serving the certificate {path} (valid until {until}) to new connections",
                path=effective.tls.certificate,
                until=_not_after(parts.tls_context),
            )
        return ReloadOutcome("restart" if kept else "applied", tuple(applied), tuple(kept))

    def _apply(self, config: Config, parts: LiveParts) -> None:
        # The counters are live state shared by every connection: keep them,
        # with the new limits.
        limits = parts.policy.connections
        if limits is not None:
            self.connections.per_user = limits.per_user
            self.connections.per_ip = limits.per_ip
            self.connections.total = limits.total
            self.connections.penalty.maximum = limits.penalty.maximum
        policy = attrs.evolve(parts.policy, connections=self.connections, observer=self.observer)
        self.parts = attrs.evolve(parts, policy=policy)
        log.set_level(config.logging.level)
        log.set_format(config.logging.format)
        self.session_log.commands = config.logging.commands
        if self.tls is not None and parts.tls_context is not None:
            self.tls.context = parts.tls_context
        for factory in self.factories:
            factory.policy = policy
            if hasattr(factory, "portal"):
                factory.portal = parts.portal
            if hasattr(factory, "users"):
                factory.users = parts.users
        self.config = config


def _not_after(context: Any) -> str:
    certificate = getattr(context, "certificate", None)
    try:
        stamp = certificate.get_notAfter().decode("ascii")  # type: ignore[union-attr]
    except Exception:
        return "unknown"
    return f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[8:10]}:{stamp[10:12]} UTC"
