"""Prometheus metrics: an observer of the sessions, served over HTTP.

:class:`Metrics` is an :class:`~mailsrv.observe.Observer`: it turns what the
probes report into counters, gauges and histograms in a registry of its own
(not prometheus_client's global one, so two daemons in one test process
never mix).  :func:`metrics_site` serves it with prometheus_client's Twisted
resource, at ``/metrics`` on ``[metrics] listen``.

prometheus_client is optional (``pip install 'mailsrv[metrics]'``); this
module imports it, so nothing else imports this module unless
``[metrics]`` is configured.

Labels are few and bounded: protocol, command name (the protocol's own
commands, else ``UNKNOWN``), result, state, mechanism, outcome, storage
operation.  No user name, address or mailbox is ever a label.  The scrape
is answered in a thread of the reactor's pool (prometheus_client's resource
is WSGI); the metrics themselves are thread-safe, and everything here is
updated from the reactor's thread except the storage's events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.application import service
from twisted.internet import task
from twisted.web.resource import Resource
from twisted.web.server import Site

from mailsrv import __version__
from mailsrv.observe import Completed, Observer, SessionInfo

__all__ = ["STATES", "Metrics", "SampledThreadPools", "ThreadPools", "metrics_site"]

#: Each protocol's states, as the ``state`` label shows them: the gauge has
#: a series for each from the start, at 0 when no session is in it.
STATES = {
    "imap": ("not_authenticated", "authenticated", "selected", "logout"),
    "pop3": ("authorization", "transaction", "update"),
    "lmtp": ("connected",),
}

#: Seconds: commands from well under a millisecond (NOOP) to minutes (a
#: big FETCH to a slow client, IDLE).
COMMAND_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)
#: Seconds: a storage call, from a cached answer to a slow disk.
STORAGE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    10,
)
#: Seconds: the failed-login delay (``auth.failure_delay``, 0 to 60).
DELAY_BUCKETS = (0.1, 0.5, 1, 2, 3, 5, 10, 30, 60)


def _label(state: str) -> str:
    return state.lower().replace(" ", "_")


class Metrics(Observer):
    """The daemon's metrics, in :attr:`registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        Info("mailsrv_build", "The mailsrv version serving", registry=r).info(
            {"version": __version__}
        )
        self.sessions = Gauge(
            "mailsrv_sessions",
            "Open sessions by protocol and state",
            ["protocol", "state"],
            registry=r,
            # With workers: each live worker's own (the parent labels them
            # with the worker's number; a dead worker's are dropped).
            multiprocess_mode="liveall",
        )
        for protocol, states in STATES.items():
            for state in states:
                self.sessions.labels(protocol, state)
        self.connections = Counter(
            "mailsrv_connections", "Connections accepted", ["protocol"], registry=r
        )
        self.commands = Counter(
            "mailsrv_commands",
            "Commands answered, by name and result",
            ["protocol", "command", "result"],
            registry=r,
        )
        self.command_seconds = Histogram(
            "mailsrv_command_duration_seconds",
            "Time from a command's arrival to its answer",
            ["protocol", "command"],
            buckets=COMMAND_BUCKETS,
            registry=r,
        )
        self.logins = Counter(
            "mailsrv_logins",
            "Login attempts by mechanism and outcome",
            ["protocol", "mechanism", "outcome"],
            registry=r,
        )
        self.login_delays = Histogram(
            "mailsrv_login_failure_delay_seconds",
            "Delays applied before answering a failed login",
            ["protocol"],
            buckets=DELAY_BUCKETS,
            registry=r,
        )
        self.received = Counter(
            "mailsrv_received_bytes", "Octets read from clients", ["protocol"], registry=r
        )
        self.sent = Counter(
            "mailsrv_sent_bytes", "Octets written to clients", ["protocol"], registry=r
        )
        self.storage_seconds = Histogram(
            "mailsrv_storage_operation_duration_seconds",
            "Time storage contract calls took",
            ["operation"],
            buckets=STORAGE_BUCKETS,
            registry=r,
        )
        self.storage_errors = Counter(
            "mailsrv_storage_operation_errors",
            "Storage contract calls that failed",
            ["operation"],
            registry=r,
        )
        self.index_rebuilds = Counter(
            "mailsrv_index_rebuilds",
            "Mailbox indexes built again from the messages",
            ["backend", "reason"],
            registry=r,
        )
        self.deliveries = Counter(
            "mailsrv_deliveries",
            "Messages stored for a recipient, by result",
            ["result"],
            registry=r,
        )
        for result in ("delivered", "deferred", "rejected"):
            self.deliveries.labels(result)
        self.delivery_seconds = Histogram(
            "mailsrv_delivery_duration_seconds",
            "Time to store one recipient's copy",
            buckets=COMMAND_BUCKETS,
            registry=r,
        )
        self.delivered_bytes = Counter(
            "mailsrv_delivered_bytes", "Octets of messages delivered", registry=r
        )
        # The labelled children met so far: looking one up by its labels
        # costs more than counting, and a command does it twice.
        self._per_command: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._octets: dict[str, tuple[Any, Any]] = {}

    # -- sessions ---------------------------------------------------------------------

    def session_opened(self, session: SessionInfo) -> None:
        self.connections.labels(session.protocol).inc()
        self.sessions.labels(session.protocol, _label(session.state)).inc()

    def session_changed(self, session: SessionInfo, state: str) -> None:
        if state != session.state:
            self.sessions.labels(session.protocol, _label(state)).dec()
            self.sessions.labels(session.protocol, _label(session.state)).inc()

    def session_closed(self, session: SessionInfo) -> None:
        self.sessions.labels(session.protocol, _label(session.state)).dec()

    def command_done(self, session: SessionInfo, command: Completed) -> None:
        key = (session.protocol, command.name, command.result)
        children = self._per_command.get(key)
        if children is None:
            children = self._per_command[key] = (
                self.commands.labels(*key),
                self.command_seconds.labels(session.protocol, command.name),
            )
        children[0].inc()
        children[1].observe(command.duration)

    def traffic(self, session: SessionInfo, received: int, sent: int) -> None:
        children = self._octets.get(session.protocol)
        if children is None:
            children = self._octets[session.protocol] = (
                self.received.labels(session.protocol),
                self.sent.labels(session.protocol),
            )
        if received:
            children[0].inc(received)
        if sent:
            children[1].inc(sent)

    def login(self, session: SessionInfo, mechanism: str, outcome: str) -> None:
        self.logins.labels(session.protocol, mechanism, outcome).inc()

    def login_delayed(self, session: SessionInfo, seconds: float) -> None:
        self.login_delays.labels(session.protocol).observe(seconds)

    def delivery(
        self, session: SessionInfo, user: str, result: str, duration: float, size: int
    ) -> None:
        self.deliveries.labels(result).inc()
        self.delivery_seconds.observe(duration)
        if result == "delivered":
            self.delivered_bytes.inc(size)

    # -- the storage (any thread) -----------------------------------------------------

    def storage_operation(self, operation: str, seconds: float, failed: bool) -> None:
        self.storage_seconds.labels(operation).observe(seconds)
        if failed:
            self.storage_errors.labels(operation).inc()

    def index_rebuilt(self, backend: str, reason: str) -> None:
        self.index_rebuilds.labels(backend, reason).inc()


class ThreadPools(Collector):
    """The worker threads of the daemon's pools, read at each scrape:
    ``reactor`` (password hashing, first indexing of a Maildir folder, the
    scrape itself) and ``postgresql`` (the storage's database connections).

    ``pools`` maps a pool's name to a function giving the pool (a
    ThreadPool) or None while it has not started.
    """

    def __init__(self, pools: dict[str, Callable[[], Any]]) -> None:
        self.pools = pools

    def collect(self) -> Iterator[GaugeMetricFamily]:
        threads = GaugeMetricFamily(
            "mailsrv_threadpool_threads", "Worker threads started", labels=["pool"]
        )
        busy = GaugeMetricFamily(
            "mailsrv_threadpool_busy_threads", "Worker threads at work", labels=["pool"]
        )
        limit = GaugeMetricFamily(
            "mailsrv_threadpool_max_threads", "Worker threads at most", labels=["pool"]
        )
        for name, get in self.pools.items():
            pool = get()
            if pool is None:
                continue
            threads.add_metric([name], pool.workers)
            busy.add_metric([name], len(pool.working))
            limit.add_metric([name], pool.max)
        yield threads
        yield busy
        yield limit


class SampledThreadPools(service.Service):
    """A worker's thread pools, as :class:`ThreadPools` reports them, but
    written every :attr:`INTERVAL` seconds into gauges: a worker is not
    asked at a scrape (its parent reads every worker's figures from the
    multiprocess files, :mod:`mailsrv.workers.metrics`), so figures read at
    a scrape are sampled instead."""

    INTERVAL = 5.0

    def __init__(
        self, registry: CollectorRegistry, pools: dict[str, Callable[[], Any]], reactor: Any
    ) -> None:
        self.pools = pools
        self.reactor = reactor
        self.gauges = {
            family.name: Gauge(
                family.name,
                family.documentation,
                ["pool"],
                registry=registry,
                multiprocess_mode="liveall",
            )
            for family in ThreadPools({}).collect()
        }
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call,unused-ignore]
        self._loop = task.LoopingCall(self.sample)
        self._loop.clock = self.reactor
        self._loop.start(self.INTERVAL, now=True)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call,unused-ignore]
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def sample(self) -> None:
        for family in ThreadPools(self.pools).collect():
            gauge = self.gauges[family.name]
            for sample in family.samples:
                gauge.labels(sample.labels["pool"]).set(sample.value)


class _Site(Site):
    """A site that does not log each request: Prometheus scrapes every few
    seconds, and those lines would bury the rest of the log."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def metrics_site(registry: CollectorRegistry) -> Site:
    """``/metrics`` for ``registry``, with prometheus_client's Twisted resource."""
    from prometheus_client.twisted import MetricsResource

    # twisted.web and the resource carry no annotations: called through Any.
    web: Any = Resource
    root = web()
    root.putChild(b"metrics", cast(Any, MetricsResource)(registry))
    site: Any = _Site
    return cast(Site, site(root))
