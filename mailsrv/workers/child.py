"""A worker process: ``python -P -m mailsrv.workers``, started by the parent.

The parent writes a pickled :class:`WorkerSpec` to the worker's standard
input and closes it.  The worker then:

1. logs through its standard output, one JSON event per line, which the
   parent publishes in the daemon's log (:mod:`.logpipe`);
2. adopts the channel to its parent (descriptor 3) and builds the same
   service a single process would (:func:`mailsrv.service.make_service`),
   from the configuration the parent loaded and with the files the parent
   read as root (:mod:`mailsrv.preload`), except that each listener adopts
   the socket the parent bound (:mod:`.ports`) and the connection counts
   are the parent's (:mod:`.limits`);
3. starts it and tells the parent it is ready.

SIGTERM stops it as it stops a single process.  SIGHUP and SIGINT are
ignored: the parent forwards a reload over the channel, and a Ctrl-C at
a terminal reaches the parent, which stops every worker.  A worker whose
parent is gone (its channel closed) stops by itself.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
from typing import Any

import attrs

from mailsrv import log, preload
from mailsrv.config import Config, Listener, format_error, load_config
from mailsrv.errors import ConfigError
from mailsrv.workers.channel import ParentLink
from mailsrv.workers.logpipe import PipeObserver

__all__ = ["EXIT_CONFIG", "InheritedListener", "WorkerSpec", "main"]

_log = log.get_logger("mailsrv.workers")

#: Exit status of a worker that cannot build its service (sysexits' EX_CONFIG).
EXIT_CONFIG = 78
#: The worker's end of the channel to its parent.
CHANNEL_FD = 3


@attrs.frozen
class InheritedListener:
    """A listening socket the parent bound: the listener's configuration
    key (``imap.listen[0]``), its descriptor number in the worker and its
    address family."""

    origin: str
    fd: int
    family: int


@attrs.frozen
class WorkerSpec:
    """Everything a worker is started with."""

    number: int
    config: Config
    #: What a reload reads: the file and command-line options of the start.
    config_path: str | None
    overrides: dict[str, Any]
    #: Files the parent read as root: :func:`mailsrv.preload.read`.
    files: dict[str, tuple[bytes, preload.Stamp]]
    listeners: tuple[InheritedListener, ...]


class Worker:
    """One worker's life, from its spec to the reactor's stop."""

    def __init__(self, spec: WorkerSpec, reactor: Any) -> None:
        self.spec = spec
        self.reactor = reactor
        self.service: Any = None
        self.exit_status = 0
        self.stopping = False
        self.link = ParentLink(on_lost=self._parent_gone)
        self._fds = {item.origin: item for item in spec.listeners}

    def start(self) -> None:
        from twisted.internet.protocol import Factory

        self.reactor.addSystemEventTrigger("before", "shutdown", self._stopping)
        factory = Factory.forProtocol(lambda: self.link)
        self.reactor.adoptStreamConnection(CHANNEL_FD, socket.AF_UNIX, factory)
        os.close(CHANNEL_FD)
        try:
            self._build()
        except ConfigError as e:
            _log.critical(
                "worker {number} cannot start: {error}",
                number=self.spec.number,
                error=format_error(e).removeprefix("mailsrv: "),
            )
            self._exit(EXIT_CONFIG)
            return
        except Exception:
            _log.failure("worker {number} cannot start", number=self.spec.number)
            self._exit(1)
            return
        self.link.ready().addErrback(lambda f: None)  # the parent may be gone already

    def _build(self) -> None:
        from mailsrv.service import make_service
        from mailsrv.workers.limits import SharedConnectionLimits

        spec = self.spec
        limits = spec.config.limits
        connections = SharedConnectionLimits(
            self.link,
            per_user=limits.max_connections_per_user,
            per_ip=limits.max_connections_per_ip,
            total=limits.max_connections,
            penalty_max=spec.config.auth.penalty_max,
        )
        self.service = make_service(
            spec.config,
            self.reactor,
            load=self._load,
            endpoints=self._endpoint,
            connections=connections,
            worker=True,
        )
        self.service.privilegedStartService()
        self.service.startService()
        self.link.admin = self.service.admin

    def _load(self) -> Config:
        return load_config(self.spec.config_path, self.spec.overrides)

    def _endpoint(self, listener: Listener) -> Any:
        from mailsrv.workers.ports import InheritedEndpoint

        inherited = self._fds.get(listener.origin)
        if inherited is None:
            raise ConfigError(
                self.spec.config_path or "command line",
                listener.origin,
                "the parent passed no socket for this listener (restart the daemon)",
            )
        return InheritedEndpoint(self.reactor, inherited.fd, inherited.family, listener.endpoint)

    def _stopping(self) -> Any:
        self.stopping = True
        if self.service is not None and self.service.running:
            return self.service.stopService()
        return None

    def _parent_gone(self) -> None:
        if self.stopping:
            return
        _log.warn("worker {number}: the parent process is gone; stopping", number=self.spec.number)
        self._exit(1)

    def _exit(self, status: int) -> None:
        self.exit_status = self.exit_status or status
        if not self.stopping:
            self.stopping = True
            self.reactor.stop()


def run(spec: WorkerSpec) -> int:
    """Run the worker until it stops; its exit status."""
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([PipeObserver(1)], redirectStandardIO=False)
    log.set_level(spec.config.logging.level)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Twisted leaves an ignored SIGINT alone
    preload.install(spec.files)
    from twisted.internet import reactor

    worker = Worker(spec, reactor)
    reactor.callWhenRunning(worker.start)
    reactor.run()
    return worker.exit_status


def main() -> None:
    spec = pickle.load(sys.stdin.buffer)
    sys.stdin.close()
    if not isinstance(spec, WorkerSpec):
        raise SystemExit(f"mailsrv worker: expected a WorkerSpec on standard input, got {spec!r}")
    sys.exit(run(spec))
