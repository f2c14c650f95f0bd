"""Batch sizes that keep one long command from stalling every session.

FETCH and SEARCH walk a mailbox in batches and give the reactor a turn
between them.  What a batch costs varies a thousandfold: 500 messages of
index metadata take a few milliseconds, 500 messages whose files must be
read and decoded take a tenth of a second, during which no other session
is served.  :class:`Pacer` times each batch and sizes the next one so a
batch takes about :data:`TARGET` seconds, between :data:`SMALLEST` and the
caller's largest size.  Given a :class:`~mailsrv.imap.budget.CommandBudget`,
it counts the CPU time of its batches there (from ``next_size`` to
``done``), which is what the command's budget measures.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailsrv.imap.budget import CommandBudget

__all__ = ["GIL_SWITCH_INTERVAL", "SMALLEST", "TARGET", "Pacer"]

#: Seconds one batch should hold the reactor.  A session whose command is
#: ready while another's long command runs waits for the rest of the batch
#: (up to TARGET), so this bounds its answer time (issue 15: a bystander's
#: NOOP under 5 ms at p99 during a SEARCH of 100,000 messages); each batch
#: costs one more reactor turn, a few tens of microseconds.
TARGET = 0.003

#: The interpreter's thread switch interval the daemon runs with (seconds;
#: Python's default is 0.005).  A busy worker thread (the full-text index
#: filling, the writer thread) keeps the GIL until the interval is up each
#: time the reactor thread wants it back, after every poll: that wait adds
#: to every answer, and between two batches of a long command it hands the
#: thread up to one interval, so with 5 ms and a 3 ms batch a long command
#: would get under 40 % of the interpreter.  1 ms keeps both small.
GIL_SWITCH_INTERVAL = 0.001
#: Never fewer messages per batch than this (each batch has a fixed cost).
SMALLEST = 16


class Pacer:
    """Batch sizes from the time the previous batches took."""

    __slots__ = ("_budget", "_largest", "_size", "_started")

    def __init__(self, largest: int, budget: CommandBudget | None = None) -> None:
        self._largest = largest
        self._budget = budget
        # Start small: the first batch's cost is unknown.
        self._size = min(largest, 4 * SMALLEST)
        self._started = 0.0

    def next_size(self) -> int:
        """The size of the batch about to start (and start its clock)."""
        self._started = time.perf_counter()
        if self._budget is not None:
            self._budget.resume()
        return self._size

    def done(self, count: int) -> None:
        """The batch just finished held ``count`` messages."""
        if self._budget is not None:
            self._budget.pause()
        if count <= 0:
            return
        spent = time.perf_counter() - self._started
        per_message = spent / count
        if per_message <= 0:
            self._size = self._largest
            return
        wanted = int(TARGET / per_message)
        self._size = max(SMALLEST, min(self._largest, wanted))
