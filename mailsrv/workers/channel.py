"""The channel between the parent and each worker: AMP over a socketpair.

What must hold across every worker of one daemon lives in the parent, and
workers ask it over this channel:

* **counters** (:class:`Counters`): how many connections each client
  address and each user holds, so ``[limits] max_connections_per_ip`` and
  ``max_connections_per_user`` count every worker's sessions.  A worker
  asks :class:`Acquire` (one round trip, answered at once by the parent)
  and gives a slot back with :class:`Release` (one message, no answer).
  The parent keeps which worker holds what, so a worker that dies gives
  its slots back at once (:meth:`Counters.forget`);
* **readiness** (:class:`WorkerReady`): the worker's listeners and services
  are up, so the parent can tell systemd READY=1 once all are;
* **reload** (:class:`Reload`, parent to worker): SIGHUP reaches the parent,
  which forwards it and hears each worker's outcome.

Adding to it: a new :class:`~twisted.protocols.amp.Command` here, its
responder on the side that answers (:class:`WorkerLink` in the parent,
:class:`ParentLink` in a worker) and a method that calls it on the other.
Counters with their own names and limits need nothing new: any
``(counter, key)`` pair works, e.g. ``("connections", "")`` for a limit
on all connections of the daemon.  State that outlives a connection (a
penalty after failed logins) belongs in the parent the same way, since a
worker, and everything it holds, may be restarted at any time.

Cost per connection, measured (docs/performance.md): one round trip when
it opens and one at login, one message each when they end.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.protocols import amp
from twisted.python.failure import Failure

from mailsrv import log

__all__ = [
    "Acquire",
    "Counters",
    "ParentGone",
    "ParentLink",
    "Release",
    "Reload",
    "WorkerLink",
    "WorkerReady",
]

_log = log.get_logger(__name__)


class WorkerReady(amp.Command):
    """Worker to parent: listeners adopted, services started."""


class Acquire(amp.Command):
    """Worker to parent: take one slot of ``counter``/``key`` unless the
    daemon already holds ``limit`` of them; ``ok`` says whether it did."""

    arguments = [
        (b"counter", amp.Unicode()),
        (b"key", amp.Unicode()),
        (b"limit", amp.Integer()),
    ]
    response = [(b"ok", amp.Boolean())]


class Release(amp.Command):
    """Worker to parent: give back a slot :class:`Acquire` took."""

    arguments = [(b"counter", amp.Unicode()), (b"key", amp.Unicode())]
    requiresAnswer = False


class Reload(amp.Command):
    """Parent to worker: read the configuration again (SIGHUP's work) and
    say whether it was applied."""

    response = [(b"applied", amp.Boolean())]


class ParentGone(Exception):
    """The channel to the parent is closed (the parent died or is stopping)."""


class Counters:
    """The daemon-wide counts, kept by the parent; per worker as well, so
    that a worker's death gives back exactly what it held."""

    def __init__(self) -> None:
        self._totals: Counter[tuple[str, str]] = Counter()
        self._held: dict[int, Counter[tuple[str, str]]] = {}

    def acquire(self, worker: int, counter: str, key: str, limit: int) -> bool:
        slot = (counter, key)
        if self._totals[slot] >= limit:
            return False
        self._totals[slot] += 1
        self._held.setdefault(worker, Counter())[slot] += 1
        return True

    def release(self, worker: int, counter: str, key: str) -> None:
        slot = (counter, key)
        held = self._held.get(worker)
        if held is None or held[slot] <= 0:
            _log.warn(
                "worker {worker} gave back a {counter} slot of {key!r} it did not hold",
                worker=worker,
                counter=counter,
                key=key,
            )
            return
        self._drop(held, slot, 1)

    def forget(self, worker: int) -> int:
        """The worker is gone: give back everything it held; how many slots."""
        held = self._held.pop(worker, Counter())
        total = sum(held.values())
        for slot, count in list(held.items()):
            self._drop(held, slot, count)
        return total

    def count(self, counter: str, key: str) -> int:
        return self._totals[(counter, key)]

    def _drop(self, held: Counter[tuple[str, str]], slot: tuple[str, str], count: int) -> None:
        held[slot] -= count
        if held[slot] <= 0:
            del held[slot]
        self._totals[slot] -= count
        if self._totals[slot] <= 0:
            del self._totals[slot]


class _Channel(amp.BinaryBoxProtocol, amp.BoxDispatcher, amp.CommandLocator):
    """AMP without its log lines at each connect and disconnect: a channel
    opens with every worker's start and is not news."""

    def __init__(self) -> None:
        amp.BoxDispatcher.__init__(self, self)
        amp.BinaryBoxProtocol.__init__(self, self)


class WorkerLink(_Channel):
    """The parent's end of one worker's channel."""

    def __init__(
        self,
        number: int,
        counters: Counters,
        on_ready: Callable[[WorkerLink], object],
        on_lost: Callable[[WorkerLink], object],
    ) -> None:
        super().__init__()
        self.number = number
        self.counters = counters
        self._on_ready = on_ready
        self._on_lost = on_lost
        self.connected = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.connected = True

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected = False
        super().connectionLost(reason)
        self._on_lost(self)

    @WorkerReady.responder
    def ready(self) -> dict[str, Any]:
        self._on_ready(self)
        return {}

    @Acquire.responder
    def acquire(self, counter: str, key: str, limit: int) -> dict[str, Any]:
        return {"ok": self.counters.acquire(self.number, counter, key, limit)}

    @Release.responder
    def release(self, counter: str, key: str) -> dict[str, Any]:
        self.counters.release(self.number, counter, key)
        return {}

    def reload(self) -> defer.Deferred[bool]:
        """Ask the worker to reload; whether it applied the configuration."""
        d: defer.Deferred[dict[str, Any]] = self.callRemote(Reload)
        return d.addCallback(lambda answer: bool(answer["applied"]))


class ParentLink(_Channel):
    """A worker's end of its channel to the parent.

    ``reload`` is what the parent's :class:`Reload` runs (the worker's
    :meth:`~mailsrv.reload.MailService.reload`); ``on_lost`` is called
    once the parent is gone, and the worker stops then.
    """

    def __init__(self, reload: Callable[[], bool], on_lost: Callable[[], object]) -> None:
        super().__init__()
        self.reload_here = reload
        self._on_lost = on_lost
        self.connected = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.connected = True

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected = False
        super().connectionLost(reason)
        self._on_lost()

    @Reload.responder
    def reload(self) -> dict[str, Any]:
        return {"applied": bool(self.reload_here())}

    def ready(self) -> defer.Deferred[None]:
        d: defer.Deferred[dict[str, Any]] = self.callRemote(WorkerReady)
        return d.addCallback(lambda _: None)

    def acquire(self, counter: str, key: str, limit: int) -> defer.Deferred[bool]:
        if not self.connected:
            return defer.fail(ParentGone("the daemon's parent process is gone"))
        d: defer.Deferred[dict[str, Any]] = self.callRemote(
            Acquire, counter=counter, key=key, limit=limit
        )
        return d.addCallback(lambda answer: bool(answer["ok"]))

    def release(self, counter: str, key: str) -> None:
        if self.connected:
            self.callRemote(Release, counter=counter, key=key)
