"""The parent's side of the admin commands with workers, in one process.

A parent's :class:`~mailsrv.workers.channel.WorkerLink` and a worker's
:class:`~mailsrv.workers.channel.ParentLink` speak over an in-memory
connection whose bytes the test moves (``iosim``), with a clock the test
advances: sessions come page after page, a worker that does not answer is
named once its time is up, and its late answer leaves the channel working.
(tests/test_workers_ops.py does the same over a real daemon.)
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import task
from twisted.test import iosim
from twisted.trial import unittest

from mailsrv.admin import PAGE, Gathered, LocalAdmin, SessionTable
from mailsrv.observe import SessionInfo
from mailsrv.reload import ReloadOutcome
from mailsrv.workers.admin import WorkersAdmin
from mailsrv.workers.channel import Counters, ParentLink, WorkerLink


def table_of(count: int, user: str = "alice") -> SessionTable:
    table = SessionTable()
    for i in range(count):
        table.session_opened(
            SessionInfo(
                id=f"s{i:04d}",
                protocol="imap",
                remote=f"192.0.2.1:{10000 + i}",
                host="192.0.2.1",
                since=1000.0 + i,
                state="authenticated",
                user=user,
            )
        )
    return table


@attrs.define
class Slot:
    """What WorkersAdmin reads of a supervisor's worker slot."""

    number: int
    pid: int
    link: WorkerLink | None
    ready: bool = True


@attrs.define
class Parent:
    workers: list[Slot]
    hangup: Any = None


def linked(number: int, table: SessionTable) -> tuple[WorkerLink, ParentLink, iosim.IOPump]:
    """A worker's channel to the parent, in memory; the pump moves its bytes."""
    worker = ParentLink(on_lost=lambda: None)
    worker.admin = LocalAdmin(table, lambda: ReloadOutcome("applied"))
    parent = WorkerLink(number, Counters(), lambda link: None, lambda link: None)
    client, server, pump = iosim.connectedServerAndClient(lambda: worker, lambda: parent)
    return client, server, pump


class WorkersAdminTests(unittest.TestCase):
    def test_every_page_of_a_worker_s_sessions(self) -> None:
        count = 2 * PAGE + 17
        link, _, pump = linked(1, table_of(count))
        d = link.who()
        pump.flush()
        sessions = self.successResultOf(d)
        self.assertEqual([s["id"] for s in sessions], [f"s{i:04d}" for i in range(count)])

    def test_a_worker_that_does_not_answer_is_named_and_its_late_answer_is_dropped(self) -> None:
        clock = task.Clock()
        one, _, pump_one = linked(1, table_of(2, "alice"))
        two, _, pump_two = linked(2, table_of(3, "bob"))
        parent = Parent([Slot(1, 101, one), Slot(2, 102, two), Slot(3, 103, None, False)])
        admin = WorkersAdmin(parent, 2.0, clock)  # type: ignore[arg-type]

        d = admin.who()
        pump_one.flush()  # worker 1 answers; worker 2's bytes are not moved
        self.assertNoResult(d)
        clock.advance(2.0)
        gathered = self.successResultOf(d)
        self.assertEqual(
            [(s["worker"], s["user"]) for s in gathered.sessions], [(1, "alice"), (1, "alice")]
        )
        self.assertEqual(
            gathered.unanswered,
            ("worker 2 (pid 102): no answer within 2 s", "worker 3 (pid 103): restarting"),
        )

        # The late answer comes: nothing breaks, and worker 2 answers the next time.
        pump_two.flush()
        self.assertTrue(two.connected)
        d = admin.who()
        pump_one.flush()
        pump_two.flush()
        gathered = self.successResultOf(d)
        self.assertEqual(len(gathered.sessions), 5)
        self.assertEqual(gathered.unanswered, ("worker 3 (pid 103): restarting",))

    def test_kick_and_stats_add_up(self) -> None:
        one, _, pump_one = linked(1, table_of(2, "alice"))
        two, _, pump_two = linked(2, table_of(3, "alice"))
        parent = Parent([Slot(1, 101, one), Slot(2, 102, two)])
        admin = WorkersAdmin(parent, 2.0, task.Clock())  # type: ignore[arg-type]

        d = admin.stats()
        pump_one.flush()
        pump_two.flush()
        figures = self.successResultOf(d)
        self.assertEqual(figures["sessions"], {"imap": 5, "pop3": 0, "lmtp": 0})
        self.assertEqual(figures["sessions_by_state"]["imap"], {"authenticated": 5})
        self.assertEqual([w["sessions"] for w in figures["workers"]], [2, 3])

        kicked = admin.kick("alice", None)
        pump_one.flush()
        pump_two.flush()
        gathered: Gathered = self.successResultOf(kicked)
        self.assertEqual(sorted(s["worker"] for s in gathered.sessions), [1, 1, 2, 2, 2])
