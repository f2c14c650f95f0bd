"""A folder's full-text index, kept in step with the folder in a thread.

:class:`FullText` answers SEARCH BODY and TEXT for the messages its file
(:mod:`.textstore`) covers and says which those are, so the search scans
only the rest; it never claims a message it has not indexed.  What it
knows is a :class:`_Coverage`: every UID up to ``highest`` is indexed or
gone, except those in ``missing`` and those the folder's index changed
after ``modseq`` (each answer looks those up: a row inserted since, for
instance by a rebuilt index, is never taken for indexed).

The index catches up in a worker thread (the reactor's pool), one job at
a time per folder: after every change the folder announces (APPEND, COPY,
MOVE, EXPUNGE, a delivery by ``mailsrv deliver`` or LMTP, a file dropped
into ``new/`` found by a sync), it reads the folder's index for rows
changed since the last job and indexes what is new, in batches, each its
own transaction.  A folder without a full-text file gets one at its first
SEARCH BODY or TEXT, which scans meanwhile.  Each thread works on
connections of its own: answers never wait for a batch being written.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mailsrv.interfaces import TextMatches
from mailsrv.log import get_logger
from mailsrv.storage.maildir.buildlog import BuildLog
from mailsrv.storage.maildir.layout import INDEX_NAME, open_wire
from mailsrv.storage.maildir.textstore import (
    FULLTEXT_NAME,
    Damaged,
    TextStore,
    looked_up,
    message_texts,
    remove_files,
)

__all__ = ["FULLTEXT_NAME", "FullText", "Progress", "Runner"]

log = get_logger("mailsrv.storage.maildir")

_T = TypeVar("_T")
#: Runs a function in a worker thread: ``deferToThreadPool`` bound to a reactor.
Runner = Callable[[Callable[[], Any]], "Deferred[Any]"]
#: ``(indexed so far, to index)``, told after each batch of a rebuild.
Progress = Callable[[int, int], None]

#: Messages indexed per transaction.
BATCH = 64


@attrs.define
class _Coverage:
    """What the full-text file holds, as far as answers may rely on it."""

    highest: int
    missing: set[int]
    modseq: int
    main_inode: int
    store_inode: int
    uidvalidity: int


def _uncovered_runs(highest: int, unindexed: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """``1..highest`` without ``unindexed``, as inclusive runs."""
    runs: list[tuple[int, int]] = []
    start = 1
    for uid in sorted(u for u in set(unindexed) if 1 <= u <= highest):
        if uid > start:
            runs.append((start, uid - 1))
        start = uid + 1
    if start <= highest:
        runs.append((start, highest))
    return tuple(runs)


class _Replaced(Exception):
    """A file changed under an answer: compare the two again."""


class _Main:
    """A read-only connection to the folder's own index, and its inode."""

    def __init__(self, path: str) -> None:
        self.inode = os.stat(path).st_ino
        uri = "file:" + urllib.parse.quote(path) + "?mode=ro"
        self.db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        if os.stat(path).st_ino != self.inode:
            self.db.close()
            raise sqlite3.OperationalError("index replaced while opening it")
        # A new index (mailsrv reindex, a rebuild) is an empty file until
        # its creation commits: nothing to compare with yet, and no error.
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
            self.db.close()
            raise _Replaced("the folder's index is being created")

    def close(self) -> None:
        self.db.close()

    def meta_int(self, key: str) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row is not None else 0

    def uids(self, query: str, parameters: Sequence[object] = ()) -> list[int]:
        return [row[0] for row in self.db.execute(query, parameters)]


class FullText:
    """The full-text index of one folder (see the module's docstring).

    :param folder: the folder's directory.
    :param run: runs jobs in a worker thread; None (no reactor, as in
        ``mailsrv deliver``): no answers and no background work, only
        :meth:`rebuild`.
    :param stopping: set when the reactor shuts down: a job stops after
        its batch, so shutting down never waits for a whole build.
    """

    def __init__(
        self, folder: str, run: Runner | None, stopping: threading.Event | None = None
    ) -> None:
        self.path = os.path.join(folder, FULLTEXT_NAME)
        self._index_path = os.path.join(folder, INDEX_NAME)
        self._cur = os.path.join(folder, "cur")
        self._run = run
        self._stopping = stopping or threading.Event()
        self._state_lock = threading.Lock()  # guards _coverage and its missing set
        self._read_lock = threading.Lock()  # the answering connections
        self._write_lock = threading.Lock()  # the catching-up connections
        self._coverage: _Coverage | None = None
        self._reader: TextStore | None = None
        self._reader_main: _Main | None = None
        self._writer: TextStore | None = None
        self._busy = False
        self._again = False
        self._closed = False

    # -- in the reactor thread ----------------------------------------------------

    def search(self, needle: str, body_only: bool) -> Deferred[TextMatches | None] | None:
        """The answer for ``needle`` (case-folded), or None: scan."""
        if self._run is None or self._closed or not looked_up(needle):
            return None
        if self._coverage is None and (self._busy or not os.path.exists(self.path)):
            self._schedule()  # the first text search builds the index
            return None
        if self._coverage is None:
            # A file from before (an earlier run, mailsrv reindex): usable
            # once compared with the folder, without waiting for a job.
            d: Deferred[TextMatches | None] = self._run(
                lambda: self._compare_and_answer(needle, body_only)
            )
            d.addCallback(self._then_fill)
        else:
            d = self._run(lambda: self._answer(needle, body_only))

        def failed(reason: Failure) -> None:
            if reason.check(Damaged):
                # Damage the next job might not see (it reads other
                # tables): start from nothing.
                log.warn(
                    "{path} is damaged ({error}); rebuilding it",
                    path=self.path,
                    error=reason.getErrorMessage(),
                )
                remove_files(self.path)
            elif not reason.check(_Replaced):
                log.failure("full-text search in {path} failed", reason, path=self.path)
            self._forget()
            return None

        return d.addErrback(failed)

    def _then_fill(self, answer: TextMatches | None) -> TextMatches | None:
        self._schedule()
        return answer

    def changed(self) -> None:
        """The folder changed: catch up (if this folder has an index)."""
        if self._run is None or self._closed:
            return
        if self._coverage is None and not os.path.exists(self.path):
            return
        self._schedule()

    def _forget(self) -> None:
        with self._state_lock:
            self._coverage = None
        if self._run is not None and not self._closed:
            self._schedule()

    def _schedule(self) -> None:
        if self._busy:
            self._again = True
            return
        assert self._run is not None
        self._busy = True
        self._run(self._catch_up).addBoth(self._job_done)

    def _job_done(self, result: object) -> None:
        self._busy = False
        if isinstance(result, Failure):
            if result.check(Damaged):
                log.warn(
                    "{path} is damaged ({error}); rebuilding it",
                    path=self.path,
                    error=result.getErrorMessage(),
                )
                # Start from nothing: the same damage would fail the next
                # job again.
                remove_files(self.path)
                with self._state_lock:
                    self._coverage = None
                self._again = True
            elif result.check(_Replaced):
                # The folder's index is being made anew: its maker (a
                # reindex rebuilds this file too, a rebuild announces its
                # messages) brings the next change, which tries again.
                log.debug("full-text index {path} waits for a new index", path=self.path)
            else:
                # The folder's index busy or away: the next change tries again.
                log.warn(
                    "indexing {path} for full-text search failed: {error}",
                    path=self.path,
                    error=result.getErrorMessage(),
                )
        if self._closed:
            self._run_closing()
        elif self._again:
            self._again = False
            self._schedule()

    def close(self) -> None:
        """The folder is let go: close the connections once no job uses them."""
        self._closed = True
        if not self._busy:
            self._run_closing()

    def _run_closing(self) -> None:
        with self._read_lock:
            for connection in (self._reader, self._reader_main):
                if connection is not None:
                    connection.close()
            self._reader = self._reader_main = None
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    # -- for mailsrv reindex (no reactor) --------------------------------------------

    def rebuild(self, progress: Progress | None = None) -> tuple[int, int]:
        """Throw the file away and index every message now:
        ``(messages indexed, octets on disk)``."""
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            remove_files(self.path)
            with self._state_lock:
                self._coverage = None
        self._catch_up(progress)
        with self._write_lock:
            assert self._writer is not None
            count = len(self._writer.uids())
            size = self._writer.size()
            self._writer.close()
            self._writer = None
        return count, size

    # -- in a worker thread: answering --------------------------------------------------

    def _answer(self, needle: str, body_only: bool) -> TextMatches | None:
        with self._state_lock:
            coverage = self._coverage
            if coverage is None:
                return None
            missing = set(coverage.missing)
            highest, modseq = coverage.highest, coverage.modseq
        with self._read_lock:
            if self._closed:
                return None
            main = self._answering_main()
            store = self._answering_store(coverage.uidvalidity)
            if main.inode != coverage.main_inode or store.inode != coverage.store_inode:
                # Replaced since the last job (a reindex, a rebuild): the
                # next job compares them again.
                raise _Replaced()
            # Rows changed since the last job looked (new, or back after a
            # rebuild): those not stored are not covered.
            changed = main.uids(
                "SELECT uid FROM messages WHERE modseq > ? AND uid <= ?", (modseq, highest)
            )
            late = set(changed) - store.stored(changed)
            matched = store.matches(needle, body_only)
        return TextMatches(frozenset(matched), _uncovered_runs(highest, missing | late))

    def _answering_main(self) -> _Main:
        main = self._reader_main
        if main is not None and os.stat(self._index_path).st_ino != main.inode:
            main.close()
            main = self._reader_main = None
        if main is None:
            main = self._reader_main = _Main(self._index_path)
        return main

    def _answering_store(self, uidvalidity: int) -> TextStore:
        store = self._reader
        if store is not None and (store.replaced() or store.uidvalidity != uidvalidity):
            store.close()
            store = self._reader = None
        if store is None:
            store = self._reader = TextStore(self.path, uidvalidity, create=False)
        return store

    # -- in a worker thread: catching up -------------------------------------------------

    def _catch_up(self, progress: Progress | None = None, fill: bool = True) -> None:
        """Compare or advance, then (``fill``) index what is missing."""
        with self._write_lock:
            if self._closed and progress is None:
                return
            main = _Main(self._index_path)
            try:
                uidvalidity = main.meta_int("uidvalidity")
                store = self._writing_store(uidvalidity)
                with self._state_lock:
                    coverage = self._coverage
                if (
                    coverage is None
                    or coverage.main_inode != main.inode
                    or coverage.store_inode != store.inode
                    or coverage.uidvalidity != uidvalidity
                ):
                    coverage = self._compare(main, store, uidvalidity)
                    store = self._writing_store(uidvalidity)
                else:
                    self._advance(main, store, coverage)
                if fill:
                    self._fill(main, store, coverage, progress)
            finally:
                main.close()

    def _compare_and_answer(self, needle: str, body_only: bool) -> TextMatches | None:
        """The first answer of this process: compare the file with the
        folder (quick: two lists of UIDs), answer, and leave the indexing
        of what is missing to a job."""
        self._catch_up(fill=False)
        return self._answer(needle, body_only)

    def _writing_store(self, uidvalidity: int) -> TextStore:
        store = self._writer
        if store is not None and (store.replaced() or store.uidvalidity != uidvalidity):
            store.close()
            store = self._writer = None
        if store is None:
            try:
                store = TextStore(self.path, uidvalidity)
            except Damaged:
                remove_files(self.path)
                store = TextStore(self.path, uidvalidity)
            self._writer = store
        return store

    def _compare(self, main: _Main, store: TextStore, uidvalidity: int) -> _Coverage:
        """Everything the folder has against everything stored."""
        main.db.execute("BEGIN")
        try:
            modseq = main.meta_int("highest_modseq")
            present = set(main.uids("SELECT uid FROM messages"))
        finally:
            main.db.execute("COMMIT")
        try:
            stored = store.uids()
            store.remove(stored - present)
        except Damaged:
            self._writer = None
            store.close()
            remove_files(self.path)
            store = self._writing_store(uidvalidity)
            stored = set()
        coverage = _Coverage(
            highest=max(present, default=0),
            missing=present - stored,
            modseq=modseq,
            main_inode=main.inode,
            store_inode=store.inode,
            uidvalidity=uidvalidity,
        )
        with self._state_lock:
            self._coverage = coverage
        return coverage

    def _advance(self, main: _Main, store: TextStore, coverage: _Coverage) -> None:
        """What changed in the folder since the last job."""
        main.db.execute("BEGIN")
        try:
            modseq = main.meta_int("highest_modseq")
            changed = main.uids("SELECT uid FROM messages WHERE modseq > ?", (coverage.modseq,))
            gone = main.uids("SELECT uid FROM expunged WHERE modseq > ?", (coverage.modseq,))
        finally:
            main.db.execute("COMMIT")
        new = set(changed) - store.stored(changed)
        with self._state_lock:
            coverage.missing |= new
            coverage.missing -= set(gone)
            coverage.highest = max(coverage.highest, *changed) if changed else coverage.highest
            coverage.modseq = modseq
        store.remove(gone)

    def _fill(
        self, main: _Main, store: TextStore, coverage: _Coverage, progress: Progress | None
    ) -> None:
        """Index the messages still missing, a batch per transaction."""
        with self._state_lock:
            todo = sorted(coverage.missing)
        logged = BuildLog("full-text index", self.path, len(todo), "messages")
        for start in range(0, len(todo), BATCH):
            if progress is None and (self._closed or self._stopping.is_set()):
                return  # the next job (or the next run of the daemon) goes on
            batch = todo[start : start + BATCH]
            texts, settled = self._read_batch(main, batch)
            store.add(texts)
            with self._state_lock:
                coverage.missing -= settled
            if progress is not None:
                progress(start + len(batch), len(todo))
            logged.step(start + len(batch))
        logged.finished(len(todo))
        if logged.active:
            log.info("full-text index {path}: {size} octets", path=self.path, size=store.size())

    def _read_batch(
        self, main: _Main, uids: Sequence[int]
    ) -> tuple[list[tuple[int, str, str]], set[int]]:
        """The texts of those of ``uids`` still in the folder, and the UIDs
        settled (indexed now, or gone); a file that cannot be read stays
        missing (scanned) until the next job."""
        marks = ",".join("?" * len(uids))
        rows = main.db.execute(
            f"SELECT uid, filename, raw, size FROM messages WHERE uid IN ({marks})", list(uids)
        ).fetchall()
        settled = set(uids) - {row[0] for row in rows}  # expunged meanwhile
        texts: list[tuple[int, str, str]] = []
        for uid, filename, raw, size in rows:
            found = self._texts(main, uid, filename, bool(raw), size)
            if found is not None:
                texts.append((uid, *found))
                settled.add(uid)
        return texts, settled

    def _texts(
        self, main: _Main, uid: int, filename: str, raw: bool, size: int
    ) -> tuple[str, str] | None:
        for _attempt in range(2):
            try:
                with open_wire(os.path.join(self._cur, filename), raw, size) as source:
                    return message_texts(source)
            except FileNotFoundError:
                # Renamed for a flag change meanwhile: its name now.
                row = main.db.execute(
                    "SELECT filename FROM messages WHERE uid = ?", (uid,)
                ).fetchone()
                if row is None:
                    return None
                filename = row[0]
            except Exception:
                log.failure("cannot index message {uid} of {path}", uid=uid, path=self.path)
                return None
        return None
