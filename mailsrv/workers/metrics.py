"""One metrics endpoint for several workers, served by the parent.

Each worker counts in prometheus_client's multiprocess mode: every
counter, histogram and gauge value lives in a memory-mapped file of its
own (``counter_<pid>.db``, ...) in a private directory the parent creates
(``PROMETHEUS_MULTIPROC_DIR`` in the workers' environment only) and removes
when it stops.  The parent, which owns the listening sockets, serves
``[metrics] listen`` and reads those files at each scrape
(:class:`WorkersCollector`):

* counters and histograms are summed over every worker that ever ran,
  dead ones included: a value is in the file as soon as it is counted, so
  even a worker killed with SIGKILL loses nothing, and a restart never
  makes a counter go backwards.  When a worker ends, its files are folded
  into ``*_retired.db`` (:meth:`WorkerFiles.ended`), so the directory does
  not grow with restarts;
* gauges (``mailsrv_sessions``, the thread pools) are each live worker's,
  labelled ``worker`` with its number (1..N, which a restarted worker
  keeps; not its pid, which changes); a dead worker's are dropped
  (``mark_process_dead``), so its lost sessions leave the gauges.

Why files rather than asking each worker over its channel at a scrape: a
scrape then never waits on a busy or hung worker, and nothing counted
between the last scrape and a worker's death is lost.

The parent adds its own figures: ``mailsrv_build_info``,
``mailsrv_worker_up`` and ``mailsrv_worker_restarts_total`` per worker.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Info, mmap_dict, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from mailsrv import __version__, log

__all__ = ["ENVIRONMENT", "WorkerFiles", "WorkersCollector", "parent_registry"]

_log = log.get_logger("mailsrv.workers")

#: prometheus_client's multiprocess helpers carry no annotations: called through Any.
_multiprocess: Any = multiprocess
_mmap: Any = mmap_dict

#: The variable that puts prometheus_client in multiprocess mode; read when
#: it is first imported, so it must be in a worker's environment at start.
ENVIRONMENT = "PROMETHEUS_MULTIPROC_DIR"
#: What the files of dead workers are folded into.
RETIRED = "retired"


class WorkerFiles:
    """The directory of the workers' metric files, and which live pid is
    which worker.  The reactor's thread changes it (a worker started or
    ended) while a scrape reads it in a thread of the pool: one lock."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.lock = threading.Lock()
        #: Live workers: pid -> worker number.
        self.workers: dict[int, int] = {}

    def create(self) -> str:
        """A new private directory (mode 0700, this process's user: the
        workers', as it is made after twistd drops privileges)."""
        self.path = tempfile.mkdtemp(prefix="mailsrv-metrics-")
        return self.path

    def remove(self) -> None:
        with self.lock:
            path, self.path = self.path, None
            self.workers.clear()
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

    def started(self, pid: int, number: int) -> None:
        with self.lock:
            self.workers[pid] = number

    def ended(self, pid: int) -> None:
        """Worker ``pid`` is gone: drop its gauges and fold its counters and
        histograms into the retired files (a scrape meanwhile waits, so it
        never sees them twice or not at all)."""
        with self.lock:
            self.workers.pop(pid, None)
            if self.path is None:
                return
            _multiprocess.mark_process_dead(pid, self.path)
            for kind in ("counter", "histogram"):
                try:
                    _retire(self.path, kind, pid)
                except Exception:  # the figures stay in the dead file: still counted
                    _log.failure("cannot fold the {kind} figures of pid {pid}", kind=kind, pid=pid)

    def collect(self) -> list[Metric]:
        """Every worker's figures, merged; gauges labelled by worker."""
        with self.lock:
            if self.path is None:
                return []
            files = glob.glob(os.path.join(self.path, "*.db"))
            metrics = list(_multiprocess.MultiProcessCollector.merge(files, accumulate=True))
            workers = dict(self.workers)
        for metric in metrics:
            if metric.type == "gauge":
                metric.samples = list(_by_worker(metric.samples, workers))
        return metrics


def _by_worker(samples: Iterable[Any], workers: dict[int, int]) -> Iterator[Any]:
    """Gauge samples with the worker's number instead of its pid; those of
    a pid that is no worker's now (ended a moment ago) are left out."""
    for sample in samples:
        labels = dict(sample.labels)
        pid = labels.pop("pid", None)
        number = workers.get(int(pid)) if pid is not None and pid.isdigit() else None
        if number is None:
            continue
        labels["worker"] = str(number)
        yield sample._replace(labels=labels)


def _retire(path: str, kind: str, pid: int) -> None:
    """Add ``<kind>_<pid>.db`` to ``<kind>_retired.db`` and remove it."""
    dead = os.path.join(path, f"{kind}_{pid}.db")
    if not os.path.exists(dead):
        return
    retired = os.path.join(path, f"{kind}_{RETIRED}.db")
    sources = [f for f in (retired, dead) if os.path.exists(f)]
    merged = _multiprocess.MultiProcessCollector.merge(sources, accumulate=False)
    staging = os.path.join(path, f"{kind}_{RETIRED}.new")  # not *.db: never read as it is written
    if os.path.exists(staging):
        os.unlink(staging)
    out = _mmap.MmapedDict(staging)
    try:
        for metric in merged:
            for sample in metric.samples:
                names, values = list(sample.labels), list(sample.labels.values())
                key = _mmap.mmap_key(metric.name, sample.name, names, values, metric.documentation)
                out.write_value(key, sample.value, 0.0)
    finally:
        out.close()
    os.replace(staging, retired)
    os.unlink(dead)


class WorkersCollector(Collector):
    """What a scrape of the parent gets from the workers' files."""

    def __init__(self, files: WorkerFiles) -> None:
        self.files = files

    def collect(self) -> Iterator[Metric]:
        yield from self.files.collect()


class SupervisionCollector(Collector):
    """The parent's own figures per worker slot: ``up`` (1 while ready) and
    restarts, from ``slots`` (worker number -> (ready, restarts))."""

    def __init__(self, slots: Callable[[], dict[int, tuple[bool, int]]]) -> None:
        self.slots = slots

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "mailsrv_worker_up", "1 while the worker serves, 0 while it restarts", labels=["worker"]
        )
        restarts = CounterMetricFamily(
            "mailsrv_worker_restarts", "Times the worker was started again", labels=["worker"]
        )
        for number, (ready, count) in sorted(self.slots().items()):
            up.add_metric([str(number)], 1 if ready else 0)
            restarts.add_metric([str(number)], count)
        yield up
        yield restarts


def parent_registry(
    files: WorkerFiles, slots: Callable[[], dict[int, tuple[bool, int]]]
) -> CollectorRegistry:
    """The registry the parent's ``/metrics`` serves."""
    registry = CollectorRegistry()
    Info("mailsrv_build", "The mailsrv version serving", registry=registry).info(
        {"version": __version__}
    )
    registry.register(WorkersCollector(files))
    registry.register(SupervisionCollector(slots))
    return registry
