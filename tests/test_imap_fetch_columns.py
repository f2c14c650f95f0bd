"""The columns FETCH path (:mod:`mailsrv.imap.fetch_columns`) writes the
bytes the general path writes.

The property: for a mailbox of random flags, keywords, dates (before 1970
too, and in zones where the backend keeps them), sizes and UID gaps, seen
by a session that got \\Recent for part of it, after another session
changed flags, expunged messages (which the session still holds: RFC 2180
4.1) and added one, every index-only FETCH answers the same through the
columns (every run read as columns, or only long ones), through the rows
path and through the general path.  Each path gets a world of its own,
built the same way, since the first command of a session after other
sessions' changes also carries their news.

Also: the command's CPU budget stops this path between batches.
"""

from __future__ import annotations

import datetime
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from fuzz.strategies import fuzz_settings
from mailsrv.imap import budget, fetch_columns, fetch_rows, pacing
from mailsrv.interfaces import NewMessage, StoreMode
from mailsrv.policy import SessionPolicy
from mailsrv.storage.maildir import MaildirStorage
from tests.imap_helpers import ServerTestBase, bare_storage, in_process
from tests.test_imap_budget import FakeClock

SYSTEM = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
KEYWORDS = ("$Work", "Later", "todo", "$Junk")
#: Zones in minutes east of UTC (the memory backend keeps them).
ZONES = (0, 0, 330, -210, 345, -720)


@attrs.frozen
class World:
    """A mailbox and what happens to it around the session under test."""

    #: (flags, UTC seconds, zone minutes, body length, raw UTF-8 in the
    #: header) per message; the last is shown downgraded (RFC 6858) to a
    #: session without UTF8=ACCEPT, with the synthetic message's size.
    messages: list[tuple[frozenset[str], int, int, int, bool]]
    #: Indexes of messages expunged before any session selects (UID gaps).
    gaps: frozenset[int]
    #: Messages appended before an earlier session selects (it takes
    #: their \\Recent); the others are \\Recent to the session under test.
    early: int
    #: After the session selects: flags another session sets, by index...
    changes: dict[int, frozenset[str]]
    #: ...and messages it expunges.
    gone: frozenset[int]
    #: A message set for one of the commands.
    message_set: str


@st.composite
def worlds(draw: Any) -> World:
    count = draw(st.integers(1, 70))
    flag_sets = st.frozensets(st.sampled_from(SYSTEM + KEYWORDS), max_size=4)
    messages = [
        (
            draw(flag_sets),
            draw(st.integers(-400_000_000, 2_600_000_000)),
            draw(st.sampled_from(ZONES)),
            draw(st.integers(0, 400)),
            draw(st.integers(0, 4)) == 0,
        )
        for _ in range(count)
    ]
    indexes = st.integers(0, count - 1)
    gaps = draw(st.frozensets(indexes, max_size=count // 3))
    changes = draw(st.dictionaries(indexes, flag_sets, max_size=5))
    gone = draw(st.frozensets(indexes, max_size=4))
    low = draw(st.integers(1, count))
    high = draw(st.integers(low, count + 3))
    extra = draw(st.integers(1, count))
    return World(
        messages,
        gaps,
        draw(st.integers(0, count)),
        changes,
        gone,
        f"{extra},{low}:{high},{extra}",
    )


COMMANDS = [
    "FETCH 1:* (FLAGS)",
    "FETCH 1:* (UID RFC822.SIZE INTERNALDATE)",
    "FETCH 1:* (INTERNALDATE FLAGS MODSEQ RFC822.SIZE UID)",
    "FETCH {set} (FLAGS UID)",
    "FETCH {set} (MODSEQ INTERNALDATE)",
]


def _message(number: int, length: int, eight_bit: bool = False) -> bytes:
    subject = f"Subject: café {number}" if eight_bit else f"Subject: m{number}"
    return subject.encode() + b"\r\n\r\n%s\r\n" % (b"x" * length)


class _Session:
    """An in-process session driven by a fake clock."""

    def __init__(self, storage: Any, clock: task.Clock) -> None:
        self.clock = clock
        self.server, self.transport = in_process(storage, clock=clock)
        self.tags = 0

    def command(self, text: str) -> bytes:
        self.tags += 1
        tag = b"t%d" % self.tags
        self.transport.clear()
        self.server.dataReceived(tag + b" " + text.encode() + b"\r\n")
        done = re.compile(rb"(?:^|\r\n)" + tag + rb" (?:OK|NO|BAD) [^\r\n]*\r\n$")
        for _ in range(100_000):
            data: bytes = self.transport.value()
            if done.search(data):
                return data
            self.clock.advance(0)  # the turns a long FETCH gives others
        raise AssertionError(f"no answer to {text!r}: {self.transport.value()[-200:]!r}")

    def select(self) -> None:
        assert self.command("LOGIN joe secret").startswith(b"t1 OK")
        assert b" OK" in self.command("ENABLE CONDSTORE")
        assert b"OK [READ-WRITE]" in self.command("SELECT INBOX")

    def close(self) -> None:
        self.command("LOGOUT")


def _answers(make: Callable[[], tuple[Any, Any]], world: World) -> list[bytes]:
    """The session's answers to :data:`COMMANDS` in a world built afresh."""
    storage, inbox = make()
    clock = task.Clock()
    new = [
        NewMessage(
            io.BytesIO(_message(n, length, eight_bit)),
            sorted(flags),
            datetime.datetime.fromtimestamp(
                seconds, datetime.timezone(datetime.timedelta(minutes=zone))
            ),
        )
        for n, (flags, seconds, zone, length, eight_bit) in enumerate(world.messages)
    ]
    uids = list(inbox.append_many(new[: world.early]))
    early = _Session(storage, clock)
    early.select()
    uids += inbox.append_many(new[world.early :])
    inbox.remove([uids[n] for n in world.gaps])
    session = _Session(storage, clock)
    session.select()
    for n, flags in world.changes.items():
        inbox.store([uids[n]], sorted(flags), StoreMode.REPLACE)
    inbox.remove([uids[n] for n in world.gone])
    inbox.append_many([NewMessage(io.BytesIO(_message(999, 3)), [], new[0].internal_date)])
    answers = [session.command(c.format(set=world.message_set)) for c in COMMANDS]
    session.close()
    early.close()
    return answers


@contextmanager
def _patched(module: Any, name: str, value: Any) -> Iterator[None]:
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


class SameBytesTests(SynchronousTestCase):
    def check(self, make: Callable[[], tuple[Any, Any]], world: World) -> None:
        taken: list[bool] = []
        real = fetch_columns.covers

        def counted(request: Any) -> bool:
            taken.append(real(request))
            return taken[-1]

        with _patched(fetch_columns, "covers", counted):
            with _patched(fetch_columns, "MIN_RUN", 1):
                every_run = _answers(make, world)
            long_runs = _answers(make, world)
        self.assertTrue(taken and all(taken))
        with _patched(fetch_columns, "covers", lambda request: False):
            rows = _answers(make, world)
        with _patched(fetch_rows, "covers", lambda request: False):
            general = _answers(make, world)
        for n, command in enumerate(COMMANDS):
            for answers in (every_run, long_runs, rows):
                self.assertEqual(answers[n], general[n], command)
        # The world was what it was meant to be.
        recent = [line for line in every_run[0].split(b"\r\n") if b"\\Recent" in line]
        if world.early < len(world.messages) and not world.gone | world.gaps:
            self.assertTrue(recent, every_run[0])
        if world.gone - world.gaps:
            self.assertIn(b"OK [EXPUNGEISSUED]", every_run[0])
        if any(m[4] for m in world.messages):
            # Some sizes are those of synthetic messages (the same in every
            # path): a session without UTF8=ACCEPT reads downgraded ones.
            self.assertIn(b"RFC822.SIZE", every_run[1])

    @fuzz_settings(40)
    @given(worlds())
    def test_memory(self, world: World) -> None:
        def make() -> tuple[Any, Any]:
            storage = bare_storage("joe")
            return storage, storage.account("joe").get_mailbox("INBOX")

        self.check(make, world)

    @fuzz_settings(15)
    @given(worlds())
    def test_maildir(self, world: World) -> None:
        # Durability is not what is tested here: thousands of fsyncs would
        # make the test slow on a busy disk.
        self.patch(os, "fsync", lambda fd: None)
        directories: list[str] = []

        def make() -> tuple[Any, Any]:
            directories.append(tempfile.mkdtemp(prefix="fetchcolumns-"))
            storage = MaildirStorage(directories[-1] + "/{user}")
            return storage, storage.account("joe").open_mailbox("INBOX")

        try:
            self.check(make, world)
        finally:
            for directory in directories:
                shutil.rmtree(directory, ignore_errors=True)

    def test_decimals(self) -> None:
        for start in [*range(0, 230), 9_950, 99_999, 1_234_567]:
            for count in (0, 1, 2, 99, 100, 101, 250, 1000):
                expected = [f"* {n}" for n in range(start, start + count)]
                self.assertEqual(fetch_columns.decimals(start, count, "* "), expected)


class BudgetTests(ServerTestBase):
    """``limits.command_cpu_seconds`` stops a FETCH of this path between
    batches, every response written whole (a fake CPU clock: 0.2 s a
    reading, a budget of 1 s)."""

    policy = SessionPolicy(failure_delay=0.0, command_cpu_seconds=1.0)

    @defer.inlineCallbacks
    def test_fetch_flags_over_budget_answers_no_limit(self) -> Any:
        for i in range(3000):
            self.deliver(b"Subject: %d\r\n\r\nx\r\n" % i, ["\\Seen"] if i % 2 else [])
        self.patch(fetch_columns, "LARGEST", 100)
        client = yield self.selected()
        self.patch(budget, "cpu_clock", FakeClock(0.2))
        response = yield client.command("a", "FETCH 1:* (FLAGS)")
        lines = response.split(b"\r\n")
        self.assertEqual(lines[-2], b"a NO [LIMIT] " + budget.EXCEEDED.encode())
        answered = lines[:-2]
        self.assertGreater(len(answered), 0)
        self.assertLess(len(answered), 3000)
        for seq, line in enumerate(answered, 1):
            self.assertRegex(line, rb"^\* %d FETCH \(FLAGS \([^()]*\)\)$" % seq)
        self.patch(budget, "cpu_clock", FakeClock(0.0))
        response = yield client.command("b", "FETCH 2999:* (FLAGS)")
        self.assertEqual(response.count(b" FETCH (FLAGS "), 2)


class SameTurnTests(SynchronousTestCase):
    """A FETCH whose messages fit in one batch is answered at once: the
    tagged completion follows the data in the same reactor turn, not after a
    turn given to other sessions for nothing (the pause is only between
    batches).  The clock is never advanced here."""

    def answer(self, command: str, turns: int = 0) -> bytes:
        storage = bare_storage("joe")
        inbox = storage.account("joe").get_mailbox("INBOX")
        inbox.append_many([NewMessage(io.BytesIO(_message(n, 10)), [], None) for n in range(3)])
        clock = task.Clock()
        session = _Session(storage, clock)
        session.select()
        session.transport.clear()
        session.server.dataReceived(b"f " + command.encode() + b"\r\n")
        for _ in range(turns):
            clock.advance(0)
        data: bytes = session.transport.value()
        return data

    def test_column_fetch(self) -> None:
        data = self.answer("FETCH 1:3 (UID FLAGS)")
        self.assertTrue(data.startswith(b"* 1 FETCH (UID 1 FLAGS (\\Recent))\r\n"), data)
        self.assertTrue(data.endswith(b"f OK FETCH completed\r\n"), data)

    def test_row_fetch(self) -> None:
        command = "FETCH 2 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"
        with _patched(fetch_columns, "covers", lambda request: False):
            data = self.answer(command)
        self.assertTrue(data.startswith(b"* 2 FETCH (FLAGS (\\Recent) BODY[HEADER.FIELDS"), data)
        self.assertTrue(data.endswith(b"f OK FETCH completed\r\n"), data)

    def test_long_fetch_still_gives_turns(self) -> None:
        """Past one batch, the rest waits for a turn (pacing.py)."""
        self.patch(fetch_columns, "LARGEST", 1)
        self.patch(pacing, "SMALLEST", 1)
        data = self.answer("FETCH 1:3 (UID FLAGS)")
        self.assertNotIn(b"f OK", data)
        self.assertIn(b"* 1 FETCH", data)
        self.assertTrue(
            self.answer("FETCH 1:3 (UID FLAGS)", turns=3).endswith(b"f OK FETCH completed\r\n")
        )
