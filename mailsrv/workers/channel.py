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
* **the admin commands** (parent to worker): the parent owns the admin
  socket and asks every worker :class:`mailsrv.admin.Who`,
  :class:`~mailsrv.admin.Kick`, :class:`~mailsrv.admin.Stats` and
  :class:`~mailsrv.admin.Reload` (SIGHUP reaches the parent, which forwards
  it the same way), the commands the CLI sends, answered from the worker's
  own table (:mod:`mailsrv.workers.admin` merges the answers).

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

import json
from collections import Counter
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer
from twisted.protocols import amp
from twisted.python.failure import Failure

from mailsrv import admin, log
from mailsrv.admin import LocalAdmin
from mailsrv.reload import ReloadOutcome

__all__ = [
    "Acquire",
    "Counters",
    "ParentGone",
    "ParentLink",
    "Release",
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

    # -- the admin commands, asked of the worker ------------------------------------

    @defer.inlineCallbacks
    def who(self) -> Generator[defer.Deferred[Any], Any, list[dict[str, Any]]]:
        """Every session of the worker (page after page)."""
        found: list[dict[str, Any]] = []
        while True:
            answer = yield self.callRemote(admin.Who, offset=len(found))
            found.extend(answer["sessions"])
            if not answer["sessions"] or len(found) >= answer["total"]:
                return found

    def kick(self, user: str | None, ip: str | None) -> defer.Deferred[list[dict[str, Any]]]:
        arguments = {k: v for k, v in (("user", user), ("ip", ip)) if v is not None}
        d: defer.Deferred[dict[str, Any]] = self.callRemote(admin.Kick, **arguments)
        return d.addCallback(lambda answer: list(answer["sessions"]))

    def stats(self) -> defer.Deferred[dict[str, Any]]:
        d: defer.Deferred[dict[str, Any]] = self.callRemote(admin.Stats)
        return d.addCallback(lambda answer: dict(json.loads(answer["stats"])))

    def reload(self) -> defer.Deferred[ReloadOutcome]:
        """Ask the worker to reload; its outcome."""
        d: defer.Deferred[dict[str, Any]] = self.callRemote(admin.Reload)
        return d.addCallback(
            lambda a: ReloadOutcome(
                a["outcome"], tuple(a["applied"]), tuple(a["restart"]), a["reason"]
            )
        )


class ParentLink(_Channel):
    """A worker's end of its channel to the parent.

    ``admin`` (the worker's :class:`~mailsrv.admin.LocalAdmin`, set once its
    service is built) answers the admin commands; ``on_lost`` is called
    once the parent is gone, and the worker stops then.
    """

    def __init__(self, on_lost: Callable[[], object]) -> None:
        super().__init__()
        self._on_lost = on_lost
        self.connected = False
        self.admin: LocalAdmin | None = None
        #: ``who`` is paged: later pages come from the list taken at offset 0.
        self._sessions: list[dict[str, Any]] = []

    def connectionMade(self) -> None:
        super().connectionMade()
        self.connected = True

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected = False
        super().connectionLost(reason)
        self._on_lost()

    def _local(self) -> LocalAdmin:
        if self.admin is None:
            raise amp.RemoteAmpError(b"STARTING", "the worker is still starting")
        return self.admin

    @admin.Who.responder
    def who(self, offset: int) -> dict[str, Any]:
        if offset <= 0:
            self._sessions = self._local().who().sessions
        page = self._sessions[max(0, offset) : max(0, offset) + admin.PAGE]
        return {"sessions": page, "total": len(self._sessions)}

    @admin.Kick.responder
    def kick(self, user: str | None = None, ip: str | None = None) -> dict[str, Any]:
        return {"sessions": self._local().kick(user, ip).sessions}

    @admin.Stats.responder
    def stats(self) -> dict[str, Any]:
        return {"stats": json.dumps(self._local().stats())}

    @admin.Reload.responder
    def reload(self) -> dict[str, Any]:
        return admin.outcome_box(self._local().reload().outcome)

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
