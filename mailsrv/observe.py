"""What sessions do, told once to whoever watches: metrics, logs, ``who``.

The protocol servers report through a :class:`Probe` (one per connection):
a session opened, its state or user changed, a command finished (name,
result, duration, octets), a login attempt ended (mechanism, outcome), a
failed login's answer was delayed, a message was delivered, the session
closed.  The probe turns those few calls into events for an
:class:`Observer`; the daemon's observers are the Prometheus metrics
(:mod:`mailsrv.metrics`), the session log lines (:class:`SessionLog`) and
the table of live sessions the admin socket answers from
(:class:`mailsrv.admin.SessionTable`), joined by :class:`Observers`.  So a
protocol module calls its probe a handful of times and contains no metric
or log code of its own, and a new consumer of these events is one more
observer, not a change to every protocol.

Events nobody's session owns (a storage operation's latency, an index
rebuilt) go to the same observers through :func:`storage_operation` and
:func:`index_rebuilt`, which the storage calls wherever it is (an index is
rebuilt in a worker thread): observers must take those from any thread.

Every :class:`Observer` method does nothing; an observer overrides what it
wants.  Labels stay few: a command name outside the protocol's own set is
reported as ``UNKNOWN``, and no user name is ever a metric label.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import attrs
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger

from mailsrv import log

__all__ = [
    "DEFAULT",
    "NULL",
    "UNKNOWN",
    "Completed",
    "LineTap",
    "Observer",
    "Observers",
    "Probe",
    "SessionInfo",
    "SessionLog",
    "index_rebuilt",
    "storage_operation",
    "subscribe",
    "unsubscribe",
]

#: The command label of anything that is not one of the protocol's commands.
UNKNOWN = "UNKNOWN"

#: Login outcomes: the credentials were accepted; refused (a failure,
#: counted toward ``auth.max_failures``); or could not be checked (the
#: users database or the storage away).
LOGIN_OUTCOMES = ("success", "failure", "unavailable")

_log = log.get_logger(__name__)


@attrs.define(eq=False)
class SessionInfo:
    """One connection as ``mailsrv who`` shows it, kept current by its probe."""

    #: Unique within the daemon's life; the ``session`` field of log lines.
    id: str
    #: "imap", "pop3" or "lmtp".
    protocol: str
    #: "203.0.113.5:51234", "[2001:db8::1]:51234" or "unix".
    remote: str
    #: The client's IP address alone (``kick --ip``); None for a Unix socket.
    host: str | None
    #: When the connection was made (seconds since the epoch).
    since: float
    #: The protocol's state: "not authenticated", "selected", "transaction", ...
    state: str
    user: str | None = None
    #: IMAP: the selected mailbox.
    mailbox: str | None = None
    #: Ends the session as an administrator's kick does (the protocol's way).
    kick: Callable[[], None] | None = attrs.field(default=None, repr=False)


class Completed(NamedTuple):
    """A command's end: its name, its result as the client saw it (``OK``,
    ``NO``, ``BAD``; ``+OK``, ``-ERR``; an SMTP code), how long it took and
    the octets read and written for it.  (A tuple: one is made per command.)"""

    name: str
    result: str
    duration: float
    received: int = 0
    sent: int = 0


class Observer:
    """Receives what sessions and the storage do; every method is a no-op."""

    def session_opened(self, session: SessionInfo) -> None:
        """A connection was accepted."""

    def session_changed(self, session: SessionInfo, state: str) -> None:
        """The session's state, user or mailbox changed; ``state`` is the
        state it was in before (equal to ``session.state`` when only the
        user or mailbox changed)."""

    def session_closed(self, session: SessionInfo) -> None:
        """The connection is gone."""

    def command_done(self, session: SessionInfo, command: Completed) -> None:
        """A command was answered."""

    def traffic(self, session: SessionInfo, received: int, sent: int) -> None:
        """Octets read from and written to the client since the last report."""

    def login(self, session: SessionInfo, mechanism: str, outcome: str) -> None:
        """A login attempt ended (:data:`LOGIN_OUTCOMES`); ``mechanism`` is
        the SASL mechanism, or ``LOGIN`` (IMAP's command), ``USER`` (POP3's
        USER/PASS), ``APOP``."""

    def login_delayed(self, session: SessionInfo, seconds: float) -> None:
        """A failed login's answer was held back ``seconds`` (``auth.failure_delay``)."""

    def delivery(
        self, session: SessionInfo, user: str, result: str, duration: float, size: int
    ) -> None:
        """A message was stored for one recipient (``result``: ``delivered``,
        ``deferred`` for a temporary failure, ``rejected``)."""

    def wants_lines(self) -> bool:
        """Whether :meth:`line` should be called: the protocol lines cost
        something to make, so they are made only for an observer that asks."""
        return False

    def line(self, session: SessionInfo, direction: str, text: str) -> None:
        """A protocol line, secrets and literal contents left out;
        ``direction`` is ``C`` (from the client) or ``S``."""

    def storage_operation(self, operation: str, seconds: float, failed: bool) -> None:
        """A storage contract call (``mailbox.fetch``) took ``seconds``."""

    def index_rebuilt(self, backend: str, reason: str) -> None:
        """A mailbox index was built again from the messages (any thread)."""


#: An observer that does nothing: what a session reports to when nobody
#: watches (an embedding application that set none).
NULL = Observer()


#: The events, by the name of the Observer method that takes them.
EVENTS = (
    "session_opened",
    "session_changed",
    "session_closed",
    "command_done",
    "traffic",
    "login",
    "login_delayed",
    "delivery",
    "line",
    "storage_operation",
    "index_rebuilt",
)


class Observers(Observer):
    """Several observers as one, in order.  One that raises is logged and
    the others are told all the same: watching must never break a session.

    Each event goes only to the observers that take it (override its
    method): a command costs one call per observer that counts it.
    """

    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        self.observers: list[Observer] = []
        self._takers: dict[str, list[Callable[..., None]]] = {name: [] for name in EVENTS}
        #: The wants_lines of those that may want lines (asked every command).
        self._line_askers: list[Callable[[], bool]] = []
        for observer in observers:
            self.add(observer)

    def add(self, observer: Observer) -> None:
        self.observers.append(observer)
        for name in EVENTS:
            if getattr(type(observer), name) is not getattr(Observer, name):
                self._takers[name].append(getattr(observer, name))
        if type(observer).wants_lines is not Observer.wants_lines:
            self._line_askers.append(observer.wants_lines)

    def _each(self, name: str, *args: Any) -> None:
        for method in self._takers[name]:
            try:
                method(*args)
            except Exception:
                _log.failure("observer {observer} failed in {name}", observer=method, name=name)

    def session_opened(self, session: SessionInfo) -> None:
        self._each("session_opened", session)

    def session_changed(self, session: SessionInfo, state: str) -> None:
        self._each("session_changed", session, state)

    def session_closed(self, session: SessionInfo) -> None:
        self._each("session_closed", session)

    def command_done(self, session: SessionInfo, command: Completed) -> None:
        for method in self._takers["command_done"]:
            try:
                method(session, command)
            except Exception:
                _log.failure("observer {observer} failed in command_done", observer=method)

    def traffic(self, session: SessionInfo, received: int, sent: int) -> None:
        self._each("traffic", session, received, sent)

    def login(self, session: SessionInfo, mechanism: str, outcome: str) -> None:
        self._each("login", session, mechanism, outcome)

    def login_delayed(self, session: SessionInfo, seconds: float) -> None:
        self._each("login_delayed", session, seconds)

    def delivery(
        self, session: SessionInfo, user: str, result: str, duration: float, size: int
    ) -> None:
        self._each("delivery", session, user, result, duration, size)

    def wants_lines(self) -> bool:
        for asks in self._line_askers:
            if asks():
                return True
        return False

    def line(self, session: SessionInfo, direction: str, text: str) -> None:
        self._each("line", session, direction, text)

    def storage_operation(self, operation: str, seconds: float, failed: bool) -> None:
        self._each("storage_operation", operation, seconds, failed)

    def index_rebuilt(self, backend: str, reason: str) -> None:
        self._each("index_rebuilt", backend, reason)


# -- what the storage reports, from wherever it runs ---------------------------------

_process_observers: list[Observer] = []
_process_lock = threading.Lock()


def subscribe(observer: Observer) -> None:
    """Send the storage's events (:func:`storage_operation`,
    :func:`index_rebuilt`) to ``observer`` too, until :func:`unsubscribe`."""
    with _process_lock:
        _process_observers.append(observer)


def unsubscribe(observer: Observer) -> None:
    with _process_lock:
        if observer in _process_observers:
            _process_observers.remove(observer)


def _process_each(method: str, *args: Any) -> None:
    with _process_lock:
        observers = list(_process_observers)
    for observer in observers:
        try:
            getattr(observer, method)(*args)
        except Exception:
            _log.failure("observer {observer} failed in {method}", observer=observer, method=method)


def storage_operation(operation: str, seconds: float, failed: bool = False) -> None:
    """A storage call took ``seconds`` (see :mod:`mailsrv.storage.timed`)."""
    _process_each("storage_operation", operation, seconds, failed)


def index_rebuilt(backend: str, reason: str) -> None:
    """A backend built a mailbox's index again from the messages (``reason``:
    ``damaged``, ``missing`` or ``mismatch``)."""
    _process_each("index_rebuilt", backend, reason)


# -- the protocol's side ---------------------------------------------------------------


class LineTap:
    """Splits what a session writes into lines for the debug log, each
    literal's contents replaced by its size (``{5120}`` then ``<5120 octets>``),
    so no message text reaches the log."""

    def __init__(self, emit: Callable[[str], None], limit: int = 200) -> None:
        self._emit = emit
        self._limit = limit
        self._partial = bytearray()
        self._cr = False  # the last octet fed was a CR
        self._skip = 0  # literal octets still to come

    def feed(self, data: bytes) -> None:
        i, end = 0, len(data)
        while i < end:
            if self._skip:
                taken = min(self._skip, end - i)
                self._skip -= taken
                i += taken
                continue
            if self._cr:
                self._cr = False
                if data[i] == 0x0A:
                    i += 1
                    self._line_done()
                    continue
                self._keep(b"\r")
            cr = data.find(b"\r", i)
            if cr < 0:
                self._keep(data[i:])
                return
            self._keep(data[i:cr])
            self._cr = True
            i = cr + 1

    def _keep(self, text: bytes) -> None:
        room = self._limit - len(self._partial)
        if room > 0:
            self._partial += text[:room]

    def _line_done(self) -> None:
        line = bytes(self._partial)
        self._partial.clear()
        size = _literal_size(line)
        if size is not None:
            self._skip = size
            line += b" <%d octets>" % size
        self._emit(line.decode("utf-8", "replace"))


def _literal_size(line: bytes) -> int | None:
    """N if ``line`` ends in a literal's ``{N}`` (``{N+}``, ``~{N}``)."""
    if not line.endswith(b"}"):
        return None
    start = line.rfind(b"{")
    digits = line[start + 1 : -1].rstrip(b"+")
    return int(digits) if start >= 0 and digits.isdigit() and len(digits) < 20 else None


class Probe:
    """One connection's reports, for the observer it was made with.

    The protocol calls :meth:`opened` once it has the peer, :meth:`update`
    after anything that may change its state, user or mailbox,
    :meth:`command_started` and :meth:`command_done` around each command,
    :meth:`received` and :meth:`sent` with the octets read and written (the
    traffic counted per protocol, reported at each command's end and at
    the close), and :meth:`closed` (safe to call twice).  ``commands`` says
    which names are the protocol's own: anything else is reported as
    :data:`UNKNOWN`.
    """

    def __init__(
        self,
        observer: Observer,
        protocol: str,
        state: str,
        commands: Callable[[str], bool] | None = None,
    ) -> None:
        self.observer = observer
        self.info = SessionInfo(
            id=log.new_session_id(),
            protocol=protocol,
            remote="unknown",
            host=None,
            since=time.time(),
            state=state,
        )
        self._known = commands
        self._open = False
        #: Whether protocol lines are wanted (asked again at each command).
        self.lines = False
        self._received = 0
        self._sent = 0
        self._reported = (0, 0)
        self._command: str | None = None
        self._started = 0.0
        self._size = 0
        self._sent_before = 0
        self._tap: LineTap | None = None

    @property
    def id(self) -> str:
        return self.info.id

    def opened(self, peer: IAddress | None, kick: Callable[[], None] | None = None) -> None:
        info = self.info
        info.remote = log.format_remote(peer)
        host = getattr(peer, "host", None)
        info.host = host if isinstance(host, str) else None
        info.kick = kick
        self._open = True
        self.lines = self.observer.wants_lines()
        self.observer.session_opened(info)

    def update(self, state: str, user: str | None, mailbox: str | None = None) -> None:
        """The session's state, user and mailbox now; observers hear of a change."""
        info = self.info
        if (state, user, mailbox) == (info.state, info.user, info.mailbox):
            return
        before = info.state
        info.state, info.user, info.mailbox = state, user, mailbox
        if self._open:
            self.observer.session_changed(info, before)

    def name(self, name: str) -> str:
        """``name`` as a label: itself if it is one of the protocol's commands."""
        known = self._known
        return name if known is None or known(name) else UNKNOWN

    def command_started(self, name: str, size: int = 0) -> None:
        """A command of ``size`` octets (its line, and literals) begins."""
        self._command = self.name(name)
        self._started = time.perf_counter()
        self._size = size
        self._sent_before = self._sent
        self.lines = self.observer.wants_lines()

    def command_done(self, result: str) -> None:
        """The command begun with :meth:`command_started` was answered ``result``."""
        command, self._command = self._command, None
        if command is None:
            return
        completed = Completed(
            command,
            result,
            time.perf_counter() - self._started,
            self._size,
            self._sent - self._sent_before,
        )
        self.observer.command_done(self.info, completed)
        self._flush_traffic()

    def command_refused(self, name: str, result: str) -> None:
        """A command answered before it could start (a line too long, a
        literal refused): ``name`` as far as it is known, or ``UNKNOWN``.
        A command running meanwhile (IDLE) is left as it is."""
        self.observer.command_done(self.info, Completed(self.name(name), result, 0.0))

    def received(self, octets: int) -> None:
        self._received += octets

    def sent(self, octets: int) -> None:
        self._sent += octets

    def wrote(self, data: bytes) -> None:
        """``data`` went to the client: counted, and when lines are wanted,
        split into lines with literal contents left out (:class:`LineTap`)."""
        self._sent += len(data)
        if self.lines:
            if self._tap is None:
                self._tap = LineTap(self.server_line)
            self._tap.feed(data)

    def client_line(self, text: str) -> None:
        if self.lines:
            self.observer.line(self.info, "C", text)

    def server_line(self, text: str) -> None:
        if self.lines:
            self.observer.line(self.info, "S", text)

    def login(self, mechanism: str, outcome: str) -> None:
        self.observer.login(self.info, mechanism, outcome)

    def login_delayed(self, seconds: float) -> None:
        self.observer.login_delayed(self.info, seconds)

    def delivery(self, user: str, result: str, duration: float, size: int) -> None:
        self.observer.delivery(self.info, user, result, duration, size)

    def closed(self) -> None:
        if not self._open:
            return
        self._open = False
        self._flush_traffic()
        self.observer.session_closed(self.info)

    def _flush_traffic(self) -> None:
        received, sent = self._received, self._sent
        before_in, before_out = self._reported
        if received != before_in or sent != before_out:
            self._reported = (received, sent)
            self.observer.traffic(self.info, received - before_in, sent - before_out)


# -- the session log ---------------------------------------------------------------------


class SessionLog(Observer):
    """Session events as log lines with the :data:`mailsrv.log.SESSION_KEYS`
    fields, under each protocol's own namespace (``mailsrv.imap.server``...).

    One line per command (``IMAP 203.0.113.5:51234 FETCH OK (0.0031 s)``) at debug
    at info with ``[logging] commands = true``; at debug level also each
    protocol line, both ways, as :class:`Probe` hands them over.
    """

    def __init__(self, commands: bool = False) -> None:
        #: Log the per-command lines at info rather than debug.
        self.commands = commands

    def wants_lines(self) -> bool:
        return log.debug_enabled()

    def session_opened(self, session: SessionInfo) -> None:
        _logger(session).debug(_prefix(session, "connection from {remote}"), **_fields(session))

    def session_closed(self, session: SessionInfo) -> None:
        _logger(session).debug(
            _prefix(session, "connection from {remote} closed"), **_fields(session)
        )

    def command_done(self, session: SessionInfo, command: Completed) -> None:
        if not self.commands and not log.debug_enabled():
            return
        logger = _logger(session)
        emit = logger.info if self.commands else logger.debug
        emit(
            _prefix(session, "{remote} {command} {result} ({duration} s)"),
            command=command.name,
            result=command.result,
            duration=round(command.duration, 6),
            received=command.received,
            sent=command.sent,
            **_fields(session),
        )

    def line(self, session: SessionInfo, direction: str, text: str) -> None:
        _logger(session).debug(
            _prefix(session, "{remote} {direction}: {line}"),
            direction=direction,
            line=text,
            **_fields(session),
        )


#: Where each protocol's session lines have always been logged.
_LOGGERS = {
    "imap": log.get_logger("mailsrv.imap.server"),
    "pop3": log.get_logger("mailsrv.pop3.server"),
    "lmtp": log.get_logger("mailsrv.lmtp.server"),
}


def _logger(session: SessionInfo) -> Logger:
    return _LOGGERS.get(session.protocol) or _log


def _prefix(session: SessionInfo, text: str) -> str:
    """A log format starting with the protocol's name (``IMAP ...``); the
    protocol is one of three fixed words, never text from a client."""
    return f"{session.protocol.upper()} {text}"


#: What a session reports to when nobody set an observer (an embedding
#: application): the session log lines alone.
DEFAULT = SessionLog()


def _fields(session: SessionInfo) -> dict[str, Any]:
    fields: dict[str, Any] = {
        log.SESSION: session.id,
        log.PROTOCOL: session.protocol,
        log.REMOTE: session.remote,
    }
    if session.user is not None:
        fields[log.USER] = session.user
    return fields
