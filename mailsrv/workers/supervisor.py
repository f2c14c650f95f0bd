"""The parent of the workers: binds, spawns, supervises, forwards.

:func:`make_supervised_service` is what the twistd plugin runs instead of
:func:`mailsrv.service.make_service` when ``[server] workers`` asks for
more than one process.  The parent:

* builds the single-process service once, without starting it, so every
  configuration problem stops startup with its usual one line and exit
  status 1, and reads the TLS certificate and key and the users file while
  it is still root (:mod:`mailsrv.preload`);
* binds every listener in ``privilegedStartService``, before twistd drops
  root, and never accepts on them itself;
* starts the workers in ``startService``, after the drop, so they run as
  the unprivileged user; each gets the listening sockets, a channel to the
  parent (:mod:`.channel`), its log pipe (:mod:`.logpipe`) and its spec on
  standard input (:mod:`.child`);
* restarts a worker that dies, at once the first time and then with a
  growing delay while it keeps dying young; the others keep their sessions;
* on SIGHUP (through :class:`~mailsrv.service.LogReopener`, which reopens
  the log first) reads the configuration for its own log settings and
  forwards the reload to every worker; on SIGTERM stops every worker and
  waits for them; tells systemd READY=1 once every worker is up;
* serves the admin socket (:mod:`.admin`: each command asked of every
  worker, the answers merged) and the metrics endpoint (:mod:`.metrics`:
  every worker's figures, from the files they count in).
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IProcessTransport
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from mailsrv import log, preload, sdnotify
from mailsrv.admin import ReloadReport
from mailsrv.config import Config, format_error
from mailsrv.errors import ConfigError
from mailsrv.reload import ReloadOutcome
from mailsrv.workers.admin import WorkersAdmin, reload_report
from mailsrv.workers.channel import Counters, WorkerLink
from mailsrv.workers.child import CHANNEL_FD, InheritedListener, WorkerSpec
from mailsrv.workers.logpipe import LogRelay

__all__ = ["Supervisor", "make_supervised_service"]

_log = log.get_logger("mailsrv.workers")

#: A worker that dies within this many seconds of its start died young:
#: the next restart waits (1 s, then twice as long each time, up to
#: :data:`MAX_BACKOFF`); one that ran longer is restarted at once.
YOUNG = 10.0
MAX_BACKOFF = 30.0
#: Seconds a worker has to stop after SIGTERM before it gets SIGKILL.
STOP_TIMEOUT = 30.0
#: Environment of the parent that is not the workers' business: systemd's
#: socket activation (the parent adopted those sockets) and notify socket
#: (only the parent speaks to systemd).
_PRIVATE_ENV = (
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    # prometheus_client's multiprocess mode: the workers get the parent's
    # own directory, or none when there are no metrics.
    "PROMETHEUS_MULTIPROC_DIR",
    "prometheus_multiproc_dir",
)


class _Worker:
    """One worker slot: its number stays, its process changes on restart."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.process: IProcessTransport | None = None
        self.pid = 0
        self.link: WorkerLink | None = None
        self.ready = False
        self.started = 0.0
        #: Consecutive deaths within YOUNG seconds of a start.
        self.young_deaths = 0
        #: Times this slot's worker was started again.
        self.restarts = 0
        self.restart: IDelayedCall | None = None
        #: Fired when the running process has ended (while stopping).
        self.ended: defer.Deferred[None] | None = None


class _WorkerProcess(ProcessProtocol):
    """The parent's side of one worker process: its spec in, its log out."""

    def __init__(self, supervisor: Supervisor, worker: _Worker, spec: bytes) -> None:
        self.supervisor = supervisor
        self.worker = worker
        self.spec = spec
        self.log = LogRelay(worker.number)
        self.stderr = LogRelay(worker.number, LogLevel.error)

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.writeToChild(0, self.spec)
        transport.closeChildFD(0)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        (self.log if childFD == 1 else self.stderr).feed(data)

    def processEnded(self, reason: Failure) -> None:
        self.log.flush()
        self.stderr.flush()
        self.supervisor.worker_ended(self.worker, reason)


class Supervisor(service.MultiService):
    """The parent process's service: the listeners, bound only, and the workers.

    ``validated`` is the single-process service built from ``config``
    (never started): its listener services bind the sockets here.
    """

    def __init__(
        self,
        config: Config,
        count: int,
        validated: service.MultiService,
        *,
        reactor: Any,
        load: Callable[[], Config] | None,
        overrides: dict[str, Any],
        files: dict[str, tuple[bytes, preload.Stamp]],
        systemd_notify: bool = False,
    ) -> None:
        super().__init__()
        from mailsrv.service import ListenerService

        self.config = config
        self.count = count
        self.reactor = reactor
        self.load = load
        self.overrides = overrides
        self.files = files
        self.systemd_notify = systemd_notify
        self.counters = Counters()
        self.workers = [_Worker(n) for n in range(1, count + 1)]
        self.stopping = False
        self._announced = False
        #: (origin, descriptor, family) of each bound listener.
        self.sockets: list[tuple[str, int, int]] = []
        self.listeners = [
            s
            for s in list(validated)
            if isinstance(s, ListenerService) and s.listener.protocol != "metrics"
        ]
        for listener in self.listeners:
            listener.disownServiceParent()
            listener.setServiceParent(self)
        #: SIGHUP's work (the plugin sets LogReopener.hangup), which the
        #: admin socket's reload does too.
        self.hangup: Callable[[], Any] | None = None
        self.admin = WorkersAdmin(self, config.admin.worker_timeout, reactor)
        self.metric_files: Any = None
        self._serve_admin_and_metrics(config)

    def _serve_admin_and_metrics(self, config: Config) -> None:
        """The admin socket and the metrics endpoint, the parent's own."""
        from mailsrv.service import admin_service, metrics_listener

        where = config.path or "command line"
        if config.admin.socket:
            admin_service(config, self.admin, self.reactor, where).setServiceParent(self)
        if not config.metrics.listen:
            return
        from mailsrv.metrics import metrics_site
        from mailsrv.workers.metrics import WorkerFiles, parent_registry

        self.metric_files = WorkerFiles()
        registry = parent_registry(self.metric_files, self._slots)
        metrics_listener(config, metrics_site(registry), self.reactor, where).setServiceParent(self)

    def _slots(self) -> dict[int, tuple[bool, int]]:
        """Each worker slot: whether it serves, and its restarts (for the metrics)."""
        return {w.number: (w.ready, w.restarts) for w in self.workers}

    # -- binding ------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # binds every listener, the admin socket, metrics
        for listener in self.listeners:
            port = _bound_port(listener)
            # The workers accept; the parent only keeps the socket open.
            port.stopReading()  # type: ignore[attr-defined]
            sock: socket.socket = port.socket  # type: ignore[attr-defined]
            self.sockets.append((listener.listener.origin, sock.fileno(), sock.family))

    # -- the workers --------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.metric_files is not None:  # after the drop: the workers' user owns it
            self.metric_files.create()
        _log.info("starting {count} workers", count=self.count)
        for worker in self.workers:
            self._spawn(worker)

    def _spawn(self, worker: _Worker) -> None:
        worker.restart = None
        worker.ready = False
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        link = WorkerLink(worker.number, self.counters, self._ready, self._link_lost)
        try:
            factory = Factory.forProtocol(lambda: link)
            self.reactor.adoptStreamConnection(parent_end.fileno(), socket.AF_UNIX, factory)
            fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r", CHANNEL_FD: child_end.fileno()}
            inherited = []
            for n, (origin, fd, family) in enumerate(self.sockets):
                number = CHANNEL_FD + 1 + n
                fds[number] = fd
                inherited.append(InheritedListener(origin, number, family))
            spec = WorkerSpec(
                number=worker.number,
                config=self.config,
                config_path=self.config.path,
                overrides=self.overrides,
                files=self.files,
                listeners=tuple(inherited),
            )
            protocol = _WorkerProcess(self, worker, pickle.dumps(spec))
            executable = sys.executable
            worker.process = self.reactor.spawnProcess(
                protocol,
                executable,
                [executable, "-P", "-m", "mailsrv.workers"],
                env=self._worker_env(),
                childFDs=fds,
            )
        finally:
            parent_end.close()
            child_end.close()
        worker.link = link
        worker.pid = worker.process.pid or 0
        worker.started = self.reactor.seconds()
        if self.metric_files is not None:
            self.metric_files.started(worker.pid, worker.number)
        _log.info("worker {number} started (pid {pid})", number=worker.number, pid=worker.pid)

    def _ready(self, link: WorkerLink) -> None:
        worker = self.workers[link.number - 1]
        if worker.link is not link:
            return
        worker.ready = True
        _log.info("worker {number} (pid {pid}) is ready", number=worker.number, pid=worker.pid)
        if not self._announced and all(w.ready for w in self.workers):
            self._announced = True
            _log.info("all {count} workers are ready", count=self.count)
            if self.systemd_notify:
                sdnotify.ready(f"serving with {self.count} workers")

    def _link_lost(self, link: WorkerLink) -> None:
        """A channel closed: its worker is ending (processEnded follows), and
        is no longer asked to reload."""
        worker = self.workers[link.number - 1]
        if worker.link is link:
            worker.ready = False

    def worker_ended(self, worker: _Worker, reason: Failure) -> None:
        """A worker's process ended: give back its connection slots, and
        restart it unless the daemon is stopping."""
        pid, worker.process, worker.link, worker.ready = worker.pid, None, None, False
        released = self.counters.forget(worker.number)
        if self.metric_files is not None:
            self.metric_files.ended(pid)
        if self.stopping:
            ended, worker.ended = worker.ended, None
            if ended is not None:
                ended.callback(None)
            return
        lived = self.reactor.seconds() - worker.started
        worker.young_deaths = worker.young_deaths + 1 if lived < YOUNG else 1
        delay = _backoff(worker.young_deaths)
        _log.warn(
            "worker {number} (pid {pid}) {how} after {lived:.1f} s{slots}; restarting it{when}",
            number=worker.number,
            pid=pid,
            how=_how_it_ended(reason),
            lived=lived,
            slots=f", holding {released} connection slots" if released else "",
            when=f" in {delay:g} s" if delay else "",
        )
        worker.restarts += 1
        worker.restart = self.reactor.callLater(delay, self._spawn, worker)

    # -- stopping -----------------------------------------------------------------------

    def stopService(self) -> defer.Deferred[Any]:
        self.stopping = True
        if self.systemd_notify:
            sdnotify.stopping()
        waits = []
        for worker in self.workers:
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
            worker.restart = None
            if worker.process is not None:
                waits.append(self._stop(worker))
        if waits:
            _log.info("stopping {count} workers", count=len(waits))
        d: defer.Deferred[Any] = defer.DeferredList(waits)
        d.addCallback(self._stopped)
        return d

    def _stopped(self, _: object) -> Any:
        if self.metric_files is not None:
            self.metric_files.remove()
        return super().stopService()

    def _worker_env(self) -> dict[str, str]:
        env = _worker_env()
        if self.metric_files is not None and self.metric_files.path is not None:
            from mailsrv.workers.metrics import ENVIRONMENT

            env[ENVIRONMENT] = self.metric_files.path
        return env

    def _stop(self, worker: _Worker) -> defer.Deferred[None]:
        ended: defer.Deferred[None] = defer.Deferred()
        worker.ended = ended
        process = worker.process
        assert process is not None

        def kill() -> None:
            _log.warn(
                "worker {number} (pid {pid}) did not stop within {seconds:g} s; killing it",
                number=worker.number,
                pid=worker.pid,
                seconds=STOP_TIMEOUT,
            )
            _signal(process, "KILL")

        late = self.reactor.callLater(STOP_TIMEOUT, kill)
        ended.addBoth(lambda result: (late.cancel() if late.active() else None, result)[1])
        _signal(process, "TERM")
        return ended

    # -- reload -------------------------------------------------------------------------

    def reload(self) -> defer.Deferred[ReloadReport]:
        """SIGHUP's work after the log is reopened: check the configuration
        here (the parent's own log level and format come from it), then
        have every worker reload; the outcome, each worker's with it."""
        if self.load is None:
            refused = ReloadOutcome("refused", reason="this daemon has no configuration to reload")
            return defer.succeed(ReloadReport(refused))
        if self.systemd_notify:
            sdnotify.reloading()
        try:
            config = self.load()
        except ConfigError as e:
            error = format_error(e).removeprefix("mailsrv: ")
            _log.error("reload refused, the configuration in force is kept: {error}", error=error)
            self._serving()
            return defer.succeed(ReloadReport(ReloadOutcome("refused", reason=error)))
        log.set_level(config.logging.level)
        log.set_format(config.logging.format)
        if config.server.workers != self.config.server.workers:
            _log.warn(
                "reload: server.workers changed, which needs a restart; keeping {count} workers",
                count=self.count,
            )
        d = self.admin.ask(lambda link: link.reload())
        return d.addCallback(self._reloaded)

    def _reloaded(self, answers: list[Any]) -> ReloadReport:
        report = reload_report(ReloadOutcome("applied"), answers)
        applied = sum(1 for w in report.workers if w.outcome)
        _log.info(
            "reload: {applied} of {asked} workers applied the configuration",
            applied=applied,
            asked=len(report.workers),
        )
        for w in report.workers:
            if not w.outcome:
                _log.warn(
                    "reload: worker {number}: {problem}",
                    number=w.worker,
                    problem=w.outcome.reason if w.outcome is not None else w.problem,
                )
        self._serving()
        return report

    def _serving(self) -> None:
        if self.systemd_notify:
            sdnotify.ready(f"serving with {self.count} workers")


def _backoff(young_deaths: int) -> float:
    """Seconds before a restart: none after one early death, then 1, 2, 4, ..."""
    if young_deaths <= 1:
        return 0.0
    return float(min(MAX_BACKOFF, 2.0 ** (young_deaths - 2)))


def _bound_port(listener: Any) -> IListeningPort:
    """The port a started ListenerService bound (its endpoint answered at once)."""
    found: list[IListeningPort] = []

    def keep(port: IListeningPort) -> IListeningPort:
        found.append(port)
        return port

    waiting: defer.Deferred[IListeningPort] = listener._waitingForPort
    waiting.addCallback(keep)
    if not found:
        raise RuntimeError(f"{listener.listener.origin}: the socket was not bound at once")
    return found[0]


def _signal(process: IProcessTransport, name: str) -> None:
    try:
        process.signalProcess(name)
    except Exception:  # already gone: processEnded is on its way
        pass


def _how_it_ended(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, ProcessTerminated) and value.signal is not None:
        return f"was killed by signal {value.signal}"
    if isinstance(value, ProcessTerminated | ProcessDone):
        return f"exited with status {value.exitCode}"
    return f"ended ({value})"


def _worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}


def make_supervised_service(
    config: Config,
    count: int,
    *,
    load: Callable[[], Config] | None,
    overrides: dict[str, Any],
    reactor: Any = None,
    systemd_notify: bool = False,
) -> Supervisor:
    """The parent of ``count`` workers (see the module's docstring).

    Raises :class:`~mailsrv.errors.ConfigError` as :func:`make_service`
    does: the same configuration is built here first.
    """
    from mailsrv.service import make_service

    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    validated = make_service(config, reactor)
    paths = []
    if config.tls_enabled and config.tls.certificate and config.tls.key:
        paths += [config.tls.certificate, config.tls.key]
    if config.auth.backend == "passwd-file":
        paths.append(config.users.passwd_file)
    return Supervisor(
        config,
        count,
        validated,
        reactor=reactor,
        load=load,
        overrides=overrides,
        files=preload.read(paths),
        systemd_notify=systemd_notify,
    )
