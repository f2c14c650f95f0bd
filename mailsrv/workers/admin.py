"""The admin socket of several workers: the parent asks each, then merges.

The parent owns the admin socket (:class:`mailsrv.admin.AdminService`, the
same mode and group rules as one process) and answers it with
:class:`WorkersAdmin`: each command goes to every running worker over its
channel (:mod:`.channel`), and the answers are merged: ``who`` lists every
worker's sessions with a ``worker`` field, ``kick`` ends the sessions on
every worker and lists them all, ``stats`` sums the figures (and lists the
workers), ``reload`` checks the configuration in the parent, then reloads
every worker and reports each one's outcome.

A worker that does not answer within ``[admin] worker_timeout`` seconds
(or is being restarted) is named in the answer's ``unanswered`` lines, and
the CLI says so and exits with status 69: an admin command never hangs on
one busy or stopped worker, and never passes a partial answer off as whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from mailsrv import __version__
from mailsrv.admin import Gathered, ReloadReport, SessionTable, WorkerReload
from mailsrv.reload import ReloadOutcome

if TYPE_CHECKING:
    from mailsrv.workers.channel import WorkerLink
    from mailsrv.workers.supervisor import Supervisor

__all__ = ["Answer", "NoAnswer", "WorkersAdmin", "merge_stats", "within"]

_T = TypeVar("_T")


class NoAnswer(Exception):
    """A worker did not answer in time."""


@attrs.frozen
class Answer:
    """One worker's answer (``value``), or why there is none (``problem``)."""

    worker: int
    pid: int
    value: Any = None
    problem: str = ""

    @property
    def missing(self) -> str:
        return (
            f"worker {self.worker}"
            + (f" (pid {self.pid})" if self.pid else "")
            + (f": {self.problem}")
        )


def within(d: defer.Deferred[_T], seconds: float, reactor: Any) -> defer.Deferred[_T]:
    """``d``'s result, or a :class:`NoAnswer` failure after ``seconds``.

    ``d`` is cancelled then; AMP's question has no canceller, so its answer,
    should it come later, is dropped (a Deferred cancelled that way ignores
    its callback) and the channel goes on.
    """

    def late(failure: Failure) -> Failure:
        failure.trap(defer.TimeoutError)
        return Failure(NoAnswer(f"no answer within {seconds:g} s"))

    return d.addTimeout(seconds, reactor).addErrback(late)


class WorkersAdmin:
    """The admin commands over every worker of ``supervisor``; each worker
    gets ``timeout`` seconds to answer."""

    def __init__(self, supervisor: Supervisor, timeout: float, reactor: Any) -> None:
        self.supervisor = supervisor
        self.timeout = timeout
        self.reactor = reactor
        self.started = time.time()

    def ask(
        self, question: Callable[[WorkerLink], defer.Deferred[Any]]
    ) -> defer.Deferred[list[Answer]]:
        """``question`` put to every worker at once; the answers, in worker order."""
        asked = []
        for worker in self.supervisor.workers:
            link = worker.link
            if link is None or not worker.ready:
                asked.append(defer.succeed(Answer(worker.number, worker.pid, None, "restarting")))
                continue
            d = within(defer.maybeDeferred(question, link), self.timeout, self.reactor)
            d.addCallbacks(
                _answered,
                _failed,
                callbackArgs=(worker.number, worker.pid),
                errbackArgs=(worker.number, worker.pid),
            )
            asked.append(d)
        gathered: defer.Deferred[list[Answer]] = defer.gatherResults(asked)
        return gathered

    def who(self) -> defer.Deferred[Gathered]:
        return self.ask(lambda link: link.who()).addCallback(_sessions)

    def kick(self, user: str | None, ip: str | None) -> defer.Deferred[Gathered]:
        return self.ask(lambda link: link.kick(user, ip)).addCallback(_sessions)

    def stats(self) -> defer.Deferred[dict[str, Any]]:
        d = self.ask(lambda link: link.stats())
        return d.addCallback(merge_stats, time.time() - self.started)

    def reload(self) -> defer.Deferred[ReloadReport]:
        """SIGHUP's work: the parent's log reopened, then its reload."""
        report: defer.Deferred[ReloadReport] = defer.maybeDeferred(
            self.supervisor.hangup or self.supervisor.reload
        )
        return report


def _answered(value: Any, worker: int, pid: int) -> Answer:
    return Answer(worker, pid, value)


def _failed(failure: Failure, worker: int, pid: int) -> Answer:
    if failure.check(NoAnswer):
        problem = str(failure.value)
    else:
        problem = f"failed: {failure.getErrorMessage()}"
    return Answer(worker, pid, None, problem)


def _sessions(answers: list[Answer]) -> Gathered:
    sessions = []
    for answer in answers:
        if answer.value is not None:
            sessions += [{**s, "worker": answer.worker} for s in answer.value]
    return Gathered(sessions, tuple(a.missing for a in answers if a.value is None))


def reload_report(parent: ReloadOutcome, answers: list[Answer]) -> ReloadReport:
    """The parent's check and every worker's outcome as one report: applied
    (or needing a restart) if any worker applied it, refused otherwise."""
    workers = tuple(WorkerReload(a.worker, a.value, a.problem) for a in answers)
    done = [w.outcome for w in workers if w.outcome is not None and w.outcome]
    if not done:
        reasons = "; ".join(
            f"worker {w.worker}: {w.outcome.reason if w.outcome is not None else w.problem}"
            for w in workers
        )
        return ReloadReport(ReloadOutcome("refused", reason=reasons or "no worker"), workers)
    applied = sorted({key for outcome in done for key in outcome.applied})
    restart = sorted({key for outcome in done for key in outcome.restart})
    outcome = ReloadOutcome("restart" if restart else "applied", tuple(applied), tuple(restart))
    return ReloadReport(outcome, workers)


def _add(into: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            _add(into.setdefault(key, {}), value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            into[key] = into.get(key, 0) + value


_SUMMED = (
    "sessions",
    "sessions_by_state",
    "connections",
    "commands",
    "commands_per_second",
    "logins",
    "deliveries",
    "octets",
)


def merge_stats(answers: list[Answer], uptime: float) -> dict[str, Any]:
    """Every worker's ``stats`` summed (counts are since each worker's own
    start), with one entry per worker and the ones that did not answer."""
    total: dict[str, Any] = {"version": __version__, "uptime": round(uptime, 3)}
    empty = SessionTable().stats()  # every figure, at 0
    _add(total, {key: empty[key] for key in _SUMMED})
    workers = []
    for answer in answers:
        figures = answer.value
        if figures is None:
            workers.append({"worker": answer.worker, "pid": answer.pid, "problem": answer.problem})
            continue
        _add(total, {key: figures[key] for key in _SUMMED if key in figures})
        workers.append(
            {
                "worker": answer.worker,
                "pid": answer.pid,
                "uptime": figures["uptime"],
                "sessions": sum(figures["sessions"].values()),
            }
        )
    if "commands_per_second" in total:
        total["commands_per_second"] = round(total["commands_per_second"], 3)
    total["workers"] = workers
    total["unanswered"] = [a.missing for a in answers if a.value is None]
    return total
