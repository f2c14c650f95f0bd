"""The CPU budget of one command: what a hostile client's SEARCH may cost.

A read-only command that walks the mailbox (SEARCH, SORT, THREAD, FETCH)
works in paced batches (:mod:`mailsrv.imap.pacing`), giving other sessions
a turn between them, so it does not hold the reactor; but a program of
thousands of TEXT keys over a large mailbox would still keep the process
busy for hours.  :class:`CommandBudget` adds up the CPU time of the
reactor's thread spent inside the command's batches (from a batch's start
to its end: the waits for a client that does not read and the other
sessions' turns between batches are not counted) and, once it is over
``limits.command_cpu_seconds``, ends the command with ``NO [LIMIT]`` (RFC
9051 7.1, RFC 5530 3: "the operation ... exceeds a limit").

The check comes between batches, and for SEARCH before each message's
test, never inside the writing of a response, so what the client was
sent is complete: whole ``* n FETCH`` responses, a ``* SEARCH`` line
ended.  Commands that change the mailbox (STORE, COPY, MOVE, EXPUNGE)
have no budget: they are bounded by the size of their input and their
storage work, and stopping them part way would leave part of a change
(docs/security.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from twisted.internet.defer import Deferred

from mailsrv.imap.output import CommandError, no
from mailsrv.imap.search_syntax import SearchKey

__all__ = [
    "CONTENT_KEYS",
    "MAX_FETCH_ITEMS",
    "MAX_HEADER_FIELDS",
    "BudgetExceeded",
    "CommandBudget",
    "check_content_keys",
    "check_fetch_items",
    "unbudgeted",
]

#: The text of the answer (after ``NO [LIMIT]``).
EXCEEDED = "Command exceeds the server's CPU limit; ask for less at a time"

_T = TypeVar("_T")

#: The CPU clock of the calling thread (tests replace it).
cpu_clock: Callable[[], float] = time.thread_time


class BudgetExceeded(CommandError):
    """A command spent its CPU budget: ``NO [LIMIT]``."""

    def __init__(self) -> None:
        super().__init__("NO", EXCEEDED, "LIMIT")


class CommandBudget:
    """CPU seconds one command may spend, counted over its batches.

    ``limit`` None or 0 is no limit (only the counting).  ``clock`` is the
    CPU clock of the calling thread (the reactor's): :data:`cpu_clock`.
    """

    __slots__ = ("_clock", "_since", "limit", "spent")

    def __init__(self, limit: float | None, clock: Callable[[], float] | None = None) -> None:
        self.limit = limit or None
        self.spent = 0.0
        self._clock = clock or cpu_clock
        self._since: float | None = None

    def resume(self) -> None:
        """A batch starts: count from now."""
        if self._since is None:
            self._since = self._clock()

    def pause(self) -> None:
        """A batch ended (or waits for the client): stop counting."""
        if self._since is not None:
            self.spent += self._clock() - self._since
            self._since = None

    def used(self) -> float:
        """Seconds spent so far, the running batch included."""
        running = 0.0 if self._since is None else self._clock() - self._since
        return self.spent + running

    def check(self) -> None:
        """Raise :class:`BudgetExceeded` once the budget is spent."""
        if self.limit is not None and self.used() > self.limit:
            self.pause()
            raise BudgetExceeded()

    def guard(self, test: Callable[..., _T]) -> Callable[..., _T]:
        """``test`` checking the budget before each call (SEARCH's
        predicate: one message's test may be thousands of keys)."""
        if self.limit is None:
            return test
        check = self.check

        def guarded(*args: object) -> _T:
            check()
            return test(*args)

        return guarded


def unbudgeted(budget: CommandBudget | None, waiting: Deferred[_T]) -> Deferred[_T]:
    """``waiting``, with ``budget`` paused until it fires: a wait (a value
    streamed at the client's pace) during which the reactor serves other
    sessions, whose CPU time is not the command's."""
    if budget is None:
        return waiting
    budget.pause()

    def resumed(result: _T) -> _T:
        budget.resume()
        return result

    return waiting.addBoth(resumed)


#: Search keys that read a message's contents: header fields (HEADER,
#: SUBJECT, FROM, TO, CC, BCC) or its text (BODY, TEXT).  Each one costs a
#: pass over what it reads, per message, so their number is what makes a
#: single message's test expensive.
CONTENT_KEYS = frozenset({"HEADER", "ADDRESS", "BODY", "TEXT"})
#: Distinct header fields one search program may name (HEADER, SUBJECT,
#: FROM, TO, CC, BCC).  Each is read from every message's header and
#: cached per message, tens of microseconds each: a hundred names cost a
#: 3,000-message mailbox 20 s of CPU and held the reactor seconds at once.
MAX_HEADER_FIELDS = 16
#: FETCH items (and sections) in one FETCH: each is answered for every
#: message (2,000 partial sections over 3,000 messages: 25 s of CPU).
MAX_FETCH_ITEMS = 256


def check_content_keys(key: SearchKey, limit: int) -> None:
    """Refuse a search program of more than ``limit`` content keys with
    ``NO [LIMIT]`` before any work: the budget is checked between
    messages, and one message's test of thousands of TEXT keys over a
    64 MiB body would hold the reactor for minutes."""
    count = 0
    fields: set[object] = set()
    pending = [key]
    while pending:
        node = pending.pop()
        if node.op in CONTENT_KEYS:
            count += 1
            if node.op in ("HEADER", "ADDRESS"):
                fields.add(node.args[0])
        elif node.op in ("AND", "OR", "NOT"):
            pending.extend(k for k in node.args if isinstance(k, SearchKey))
    if limit and count > limit:
        raise no(
            f"Search program has {count} keys that read message contents; "
            f"this server allows {limit}",
            "LIMIT",
        )
    if len(fields) > MAX_HEADER_FIELDS:
        raise no(
            f"Search program names {len(fields)} header fields; "
            f"this server allows {MAX_HEADER_FIELDS}",
            "LIMIT",
        )


def check_fetch_items(count: int) -> None:
    """Refuse a FETCH of more than :data:`MAX_FETCH_ITEMS` items with
    ``NO [LIMIT]`` before any work."""
    if count > MAX_FETCH_ITEMS:
        raise no(f"FETCH asks for {count} items; this server allows {MAX_FETCH_ITEMS}", "LIMIT")
