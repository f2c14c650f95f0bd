"""The admin socket: live sessions, kicks, figures and reloads over AMP.

The daemon listens on a Unix socket (``[admin] socket``, mode 0600: only
its owner, and root, may connect; with ``[admin] group``, mode 0660 and
that group's members too) speaking AMP, for ``mailsrv who``, ``kick``,
``stats`` and ``reload`` (:mod:`mailsrv.admin_client`).

:class:`SessionTable` is an :class:`~mailsrv.observe.Observer` like the
metrics: it keeps the open sessions (user, protocol, address, mailbox,
since) and the counts ``stats`` prints.  A kick calls the session's own
``kick`` (IMAP: ``* BYE`` and close; POP3: ``-ERR`` and close without
UPDATE; LMTP: ``421`` and close).

Commands are versioned in their names (``who/1``): a command whose
arguments or answer change gets a new name, and the daemon keeps answering
the old one as long as it can (an optional answer field, which a CLI that
does not know it ignores, keeps the name: ``who/1``'s ``worker``).  A CLI
newer than the daemon then asks for a name the daemon does not know, gets
AMP's UNHANDLED error, and says so with both versions (``version``, which
never changes, tells the daemon's).
"""

from __future__ import annotations

import collections
import grp
import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Protocol

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from mailsrv import __version__, log
from mailsrv.config import DEFAULT_ADMIN_SOCKET as DEFAULT_SOCKET
from mailsrv.errors import ConfigError
from mailsrv.interfaces import MaybeDeferred, maybe_deferred
from mailsrv.observe import Completed, Observer, SessionInfo
from mailsrv.reload import ReloadOutcome

__all__ = [
    "COMMANDS",
    "DEFAULT_SOCKET",
    "AdminBackend",
    "AdminService",
    "Gathered",
    "Kick",
    "LocalAdmin",
    "Reload",
    "ReloadOutcome",
    "ReloadReport",
    "SessionTable",
    "Stats",
    "Version",
    "Who",
    "WorkerReload",
]

_log = log.get_logger(__name__)

#: twisted.protocols.amp's argument types carry no annotations: called through Any.
_types: Any = amp

#: Sessions per ``who`` answer (an AMP value holds at most 64 KiB).
PAGE = 100

#: Seconds over which ``stats`` gives commands per second.
RATE_WINDOW = 60


# -- the commands -------------------------------------------------------------------


def _session_fields() -> list[tuple[bytes, amp.Argument]]:
    return [
        (b"id", _types.Unicode()),
        (b"protocol", _types.Unicode()),
        (b"remote", _types.Unicode()),
        (b"state", _types.Unicode()),
        (b"since", _types.Float()),
        (b"user", _types.Unicode(optional=True)),
        (b"mailbox", _types.Unicode(optional=True)),
        # Which worker serves it, when the daemon has several.
        (b"worker", _types.Integer(optional=True)),
    ]


def _unanswered() -> tuple[bytes, amp.Argument]:
    """The workers that did not answer (their part is missing), as lines."""
    return (b"unanswered", _types.ListOf(_types.Unicode(), optional=True))


class Version(amp.Command):
    """Which mailsrv answers and the commands it knows; never changes."""

    commandName = b"version"
    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    response = [
        (b"mailsrv", _types.Unicode()),
        (b"commands", _types.ListOf(_types.Unicode())),
    ]


class Who(amp.Command):
    """The open sessions from ``offset`` on, at most :data:`PAGE`, and how many there are."""

    commandName = b"who/1"
    arguments = [(b"offset", _types.Integer())]
    response = [
        (b"sessions", _types.AmpList(_session_fields())),
        (b"total", _types.Integer()),
        _unanswered(),
    ]


class Kick(amp.Command):
    """End the sessions of ``user`` and/or from ``ip``; the ones ended."""

    commandName = b"kick/1"
    arguments = [(b"user", _types.Unicode(optional=True)), (b"ip", _types.Unicode(optional=True))]
    response = [(b"sessions", _types.AmpList(_session_fields())), _unanswered()]


class Stats(amp.Command):
    """The figures ``mailsrv stats`` prints, as a JSON object."""

    commandName = b"stats/1"
    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    response = [(b"stats", _types.Unicode())]


class Reload(amp.Command):
    """What SIGHUP does (reopen the log, reload the configuration), and how it went."""

    commandName = b"reload/1"
    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    response = [
        (b"outcome", _types.Unicode()),
        (b"applied", _types.ListOf(_types.Unicode())),
        (b"restart", _types.ListOf(_types.Unicode())),
        (b"reason", _types.Unicode()),
        # Each worker's own outcome, when the daemon has several.
        (
            b"workers",
            _types.AmpList(
                [
                    (b"worker", _types.Integer()),
                    (b"outcome", _types.Unicode()),
                    (b"applied", _types.ListOf(_types.Unicode())),
                    (b"restart", _types.ListOf(_types.Unicode())),
                    (b"reason", _types.Unicode()),
                ],
                optional=True,
            ),
        ),
    ]


COMMANDS: tuple[type[amp.Command], ...] = (Version, Who, Kick, Stats, Reload)


# -- the table of sessions ---------------------------------------------------------------


class SessionTable(Observer):
    """The open sessions and the counts ``stats`` shows."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.started = clock()
        self.sessions: dict[str, SessionInfo] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        #: Commands answered per whole second, for the last RATE_WINDOW seconds.
        self._per_second: collections.deque[list[int]] = collections.deque()

    def session_opened(self, session: SessionInfo) -> None:
        self.sessions[session.id] = session
        self.counts[f"connections.{session.protocol}"] += 1

    def session_closed(self, session: SessionInfo) -> None:
        self.sessions.pop(session.id, None)

    def command_done(self, session: SessionInfo, command: Completed) -> None:
        self.counts[f"commands.{session.protocol}"] += 1
        second = int(self.clock())
        window = self._per_second
        if window and window[-1][0] == second:
            window[-1][1] += 1
        else:
            window.append([second, 1])
            while window[0][0] <= second - RATE_WINDOW:
                window.popleft()

    def traffic(self, session: SessionInfo, received: int, sent: int) -> None:
        self.counts["octets.received"] += received
        self.counts["octets.sent"] += sent

    def login(self, session: SessionInfo, mechanism: str, outcome: str) -> None:
        self.counts[f"logins.{outcome}"] += 1

    def delivery(
        self, session: SessionInfo, user: str, result: str, duration: float, size: int
    ) -> None:
        self.counts[f"deliveries.{result}"] += 1

    # -- what the admin commands ask ------------------------------------------------

    def who(self) -> list[SessionInfo]:
        """The open sessions, oldest first."""
        return sorted(self.sessions.values(), key=lambda s: (s.since, s.id))

    def kick(self, user: str | None, ip: str | None) -> list[SessionInfo]:
        """End the sessions of ``user`` (if given) from ``ip`` (if given)."""
        chosen = [
            s
            for s in self.who()
            if (user is None or s.user == user) and (ip is None or _same_ip(s.host, ip))
        ]
        for session in chosen:
            if session.kick is not None:
                _log.info(
                    "admin: ending the {protocol} session {session} of {user} from {remote}",
                    protocol=session.protocol.upper(),
                    session=session.id,
                    user=session.user or "(not logged in)",
                    remote=session.remote,
                )
                session.kick()
        return chosen

    def rate(self) -> float:
        """Commands per second over the last :data:`RATE_WINDOW` seconds
        (or since the start, if that is shorter)."""
        now = self.clock()
        since = max(self.started, now - RATE_WINDOW)
        count = sum(n for second, n in self._per_second if second > now - RATE_WINDOW)
        return count / max(now - since, 1.0)

    def stats(self) -> dict[str, Any]:
        """The figures, as ``mailsrv stats --json`` prints them."""
        protocols = ("imap", "pop3", "lmtp")
        open_by: dict[str, dict[str, int]] = {p: {} for p in protocols}
        for session in self.sessions.values():
            states = open_by.setdefault(session.protocol, {})
            states[session.state] = states.get(session.state, 0) + 1
        counts = self.counts
        return {
            "version": __version__,
            "uptime": round(self.clock() - self.started, 3),
            "sessions": {p: sum(open_by[p].values()) for p in open_by},
            "sessions_by_state": open_by,
            "connections": {p: counts[f"connections.{p}"] for p in protocols},
            "commands": {p: counts[f"commands.{p}"] for p in protocols},
            "commands_per_second": round(self.rate(), 3),
            "logins": {o: counts[f"logins.{o}"] for o in ("success", "failure", "unavailable")},
            "deliveries": {
                r: counts[f"deliveries.{r}"] for r in ("delivered", "deferred", "rejected")
            },
            "octets": {"received": counts["octets.received"], "sent": counts["octets.sent"]},
        }


def _same_ip(host: str | None, ip: str) -> bool:
    """Whether a session's address is ``ip`` (an IPv4 address also matches
    its IPv6-mapped form, as a dual-stack listener reports it)."""
    if host is None:
        return False
    return host == ip or host.removeprefix("::ffff:") == ip.removeprefix("::ffff:")


def session_box(session: SessionInfo) -> dict[str, Any]:
    """A session as the ``who`` and ``kick`` answers carry it."""
    box: dict[str, Any] = {
        "id": session.id,
        "protocol": session.protocol,
        "remote": session.remote,
        "state": session.state,
        "since": session.since,
    }
    if session.user is not None:
        box["user"] = session.user
    if session.mailbox is not None:
        box["mailbox"] = session.mailbox
    return box


# -- what answers the commands ------------------------------------------------------------


@attrs.frozen
class Gathered:
    """Sessions (as :func:`session_box` gives them) and the workers that did
    not answer, one line each (their sessions are missing)."""

    sessions: list[dict[str, Any]]
    unanswered: tuple[str, ...] = ()


@attrs.frozen
class WorkerReload:
    """One worker's part of a reload: its outcome, or None and why not."""

    worker: int
    outcome: ReloadOutcome | None
    problem: str = ""


@attrs.frozen
class ReloadReport:
    """A reload's outcome, and each worker's when the daemon has several."""

    outcome: ReloadOutcome
    workers: tuple[WorkerReload, ...] = ()


class AdminBackend(Protocol):
    """What the admin socket asks: one process's table (:class:`LocalAdmin`)
    or the parent of several workers, which asks each of them
    (:class:`mailsrv.workers.admin.WorkersAdmin`)."""

    def who(self) -> MaybeDeferred[Gathered]: ...

    def kick(self, user: str | None, ip: str | None) -> MaybeDeferred[Gathered]: ...

    def stats(self) -> MaybeDeferred[dict[str, Any]]: ...

    def reload(self) -> MaybeDeferred[ReloadReport]: ...


class LocalAdmin:
    """The admin commands answered from this process's :class:`SessionTable`;
    ``reload`` is the daemon's (SIGHUP's work)."""

    def __init__(self, table: SessionTable, reload: Callable[[], ReloadOutcome]) -> None:
        self.table = table
        self.reload_daemon = reload

    def who(self) -> Gathered:
        return Gathered([session_box(s) for s in self.table.who()])

    def kick(self, user: str | None, ip: str | None) -> Gathered:
        return Gathered([session_box(s) for s in self.table.kick(user, ip)])

    def stats(self) -> dict[str, Any]:
        return self.table.stats()

    def reload(self) -> ReloadReport:
        return ReloadReport(self.reload_daemon())


def outcome_box(outcome: ReloadOutcome) -> dict[str, Any]:
    return {
        "outcome": outcome.outcome,
        "applied": list(outcome.applied),
        "restart": list(outcome.restart),
        "reason": outcome.reason,
    }


# -- the server -------------------------------------------------------------------------


class AdminProtocol(amp.AMP):
    """One admin connection (the CLI: one command, then it hangs up).

    ``who`` is paged (an AMP value holds at most 64 KiB): the list is taken
    at offset 0 and later pages come from that snapshot, so a session
    opening or closing meanwhile neither repeats nor hides another."""

    def __init__(self, backend: AdminBackend) -> None:
        super().__init__()  # type: ignore[no-untyped-call,unused-ignore]
        self.backend = backend
        self._snapshot: Gathered | None = None

    @Version.responder
    def version(self) -> dict[str, Any]:
        return {
            "mailsrv": __version__,
            "commands": [c.commandName.decode("ascii") for c in COMMANDS],
        }

    @Who.responder
    def who(self, offset: int) -> defer.Deferred[dict[str, Any]]:
        if offset <= 0 or self._snapshot is None:
            d = maybe_deferred(self.backend.who).addCallback(self._take)
        else:
            d = defer.succeed(self._snapshot)
        return d.addCallback(self._page, max(0, offset))

    def _take(self, gathered: Gathered) -> Gathered:
        """The snapshot later pages come from: oldest session first."""
        ordered = sorted(gathered.sessions, key=lambda s: (s["since"], s["id"]))
        self._snapshot = attrs.evolve(gathered, sessions=ordered)
        return self._snapshot

    def _page(self, gathered: Gathered, offset: int) -> dict[str, Any]:
        sessions = gathered.sessions
        answer: dict[str, Any] = {
            "sessions": sessions[offset : offset + PAGE],
            "total": len(sessions),
        }
        if gathered.unanswered:
            answer["unanswered"] = list(gathered.unanswered)
        return answer

    @Kick.responder
    def kick(self, user: str | None = None, ip: str | None = None) -> Any:
        if user is None and ip is None:
            raise _types.RemoteAmpError(b"USAGE", "name a user or an address")
        d = maybe_deferred(self.backend.kick, user, ip)
        return d.addCallback(_kicked)

    @Stats.responder
    def stats(self) -> defer.Deferred[dict[str, Any]]:
        d = maybe_deferred(self.backend.stats)
        return d.addCallback(lambda figures: {"stats": json.dumps(figures)})

    @Reload.responder
    def reload(self) -> defer.Deferred[dict[str, Any]]:
        _log.info("admin: reload requested")
        return maybe_deferred(self.backend.reload).addCallback(_reload_answer)


def _kicked(gathered: Gathered) -> dict[str, Any]:
    answer: dict[str, Any] = {"sessions": gathered.sessions}
    if gathered.unanswered:
        answer["unanswered"] = list(gathered.unanswered)
    return answer


def _reload_answer(report: ReloadReport) -> dict[str, Any]:
    answer = outcome_box(report.outcome)
    if report.workers:
        answer["workers"] = [
            {"worker": w.worker, **outcome_box(w.outcome)}
            if w.outcome is not None
            else {
                "worker": w.worker,
                "outcome": "unanswered",
                "applied": [],
                "restart": [],
                "reason": w.problem,
            }
            for w in report.workers
        ]
    return answer


class _AdminFactory(Factory):
    noisy = False

    def __init__(self, backend: AdminBackend) -> None:
        self.backend = backend

    def buildProtocol(self, addr: Any) -> AdminProtocol:
        protocol = AdminProtocol(self.backend)
        protocol.factory = self
        return protocol


class AdminService(service.Service):
    """The admin socket at ``path``: mode 0600, or 0660 and owned by
    ``group`` when one is given.

    Bound in ``privilegedStartService``, as the listeners are.  ``required``
    (the path was configured) makes a failure to listen a configuration
    error naming ``admin.socket``; at the default path it is only logged,
    so a machine without ``/run/mailsrv`` (a development checkout) still
    starts.
    """

    def __init__(
        self,
        path: str,
        backend: AdminBackend,
        *,
        config_path: str,
        required: bool,
        group: str | None = None,
        reactor: Any = None,
    ) -> None:
        self.path = path
        self.group = group
        self.factory = _AdminFactory(backend)
        self.config_path = config_path
        self.required = required
        self.reactor = reactor
        self.port: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call,unused-ignore]
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor
        problem: str | None = None
        if not os.path.isdir(os.path.dirname(self.path) or "."):
            problem = f"directory {os.path.dirname(self.path)} does not exist"
        else:
            try:
                self.port = self._listen(reactor)
            except CannotListenError as e:
                problem = str(e.socketError) if e.socketError else "in use by another daemon"
        if problem is None:
            _log.info("admin socket listening on {path}", path=self.path)
            return
        if self.required:
            raise ConfigError(
                self.config_path, "admin.socket", f"cannot listen on {self.path}: {problem}"
            )
        _log.warn(
            "no admin socket ({problem}): mailsrv who/kick/stats/reload will not reach this "
            'daemon; set admin.socket to a writable path, or to "" to say none is wanted',
            problem=problem,
        )

    def _listen(self, reactor: Any) -> Any:
        """Listen at the path, with the mode and group the configuration asks."""
        if not self.group:
            return reactor.listenUNIX(self.path, self.factory, mode=0o600, wantPID=True)
        port = reactor.listenUNIX(self.path, self.factory, mode=0o600, wantPID=True)
        # Opened to the group only once the socket is the group's.
        try:
            os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
            os.chmod(self.path, 0o660)
        except (OSError, KeyError) as e:
            port.stopListening()
            why = e.strerror if isinstance(e, OSError) else "no such group"
            raise ConfigError(
                self.config_path,
                "admin.group",
                f"cannot give {self.path} to group {self.group!r}: {why}",
            ) from None
        return port

    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call,unused-ignore]
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


def sessions_text(sessions: Iterable[dict[str, Any]]) -> list[str]:
    """Sessions as ``who`` prints them (also ``kick``'s report), with a
    WORKER column when the daemon has several."""
    sessions = list(sessions)
    workers = any(s.get("worker") is not None for s in sessions)
    rows: list[tuple[str, ...]] = [("USER", "PROTOCOL", "REMOTE", "MAILBOX", "STATE", "SINCE")]
    if workers:
        rows[0] += ("WORKER",)
    for s in sessions:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["since"]))
        row: tuple[str, ...] = (
            s.get("user") or "-",
            s["protocol"],
            s["remote"],
            s.get("mailbox") or "-",
            s["state"],
            since,
        )
        if workers:
            worker = s.get("worker")
            row += ("-" if worker is None else str(worker),)
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
