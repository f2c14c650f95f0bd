"""A folder's writes made durable off the reactor thread.

A write to a Maildir folder waits: for the folder lock while another
process (a second worker, ``mailsrv deliver``) holds it, and for three
fsyncs (the message file, the UID list, ``cur/``).  Done on the reactor
thread, that wait holds up every session of the process, reads included.

:class:`ThreadedMailbox` is the daemon's :class:`MaildirMailbox`: reads stay
on the reactor thread as before; APPEND, STORE, EXPUNGE, COPY's placing and a
CHECK that must wait for the lock run in a :class:`FolderWriter`: one batch at
a time per folder, in the reactor's thread pool, on a second
:class:`MaildirMailbox` of the same folder used only there.  That second
object has its own SQLite connection and its own descriptor of
``mailsrv-lock``, whose ``flock`` excludes the reactor thread's exactly as it
excludes another process, so a write runs the same locked code as before, with
the same crash guarantees (UIDs fsynced before a file shows, cur/ fsynced
before an answer, nothing left by a NO): to the folder it is one more writer,
like a second worker.  The writes queued while a batch runs make the next one,
under one taking of the lock, with the messages of its APPENDs placed together
(group commit: one fsync of the UID list and one of cur/).  The reactor thread
then tells the sessions' listeners from the index, as it does for another
process's change.
"""

from __future__ import annotations

import datetime
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from mailsrv.errors import NoSuchMailbox
from mailsrv.interfaces import IMailbox, NewMessage, StoreResult, maybe_deferred
from mailsrv.log import get_logger
from mailsrv.storage.maildir import appending, transfer
from mailsrv.storage.maildir.folder import MaildirMailbox, _recovering
from mailsrv.storage.maildir.fulltext import FullText
from mailsrv.storage.maildir.keywords import KeywordTable
from mailsrv.storage.maildir.layout import disk_full
from mailsrv.storage.maildir.recovery import crash_point
from mailsrv.storage.maildir.watch import NO_WATCHER, Watcher

__all__ = ["FolderWriter", "ThreadedMailbox"]

# One namespace for the whole backend: log lines name it, not its modules.
log = get_logger("mailsrv.storage.maildir")

_T = TypeVar("_T")

#: A piece of work for the writer's own mailbox object (None: close it).
Work = Callable[[MaildirMailbox], Any]


@attrs.define
class _Job:
    """One write waiting in a :class:`FolderWriter`."""

    done: Deferred[Any]
    #: What to run on the writer's mailbox; None for a placement or a close.
    work: Work | None = None
    #: A placement: messages staged in tmp/ to be given UIDs and moved in.
    staged: Sequence[appending.Staged] = ()
    #: Whether the placement may share one UID list and cur/ fsync with
    #: others (no keywords: one that does not fit must fail alone).
    shared: bool = False
    closing: bool = False


class FolderWriter:
    """Runs one folder's writes in the reactor's thread pool, on the
    writer's own :class:`MaildirMailbox` (made in the pool at the first
    write, and again after a failure closed it).

    The writes queued while one batch runs are the next batch: it takes the
    folder lock once, places the messages of all its APPENDs together (one
    fsync of the UID list, one of ``cur/``: group commit) and runs the other
    writes in turn.  One batch at a time, so the writer's SQLite connection
    and lock descriptor are never used by two threads at once.
    """

    #: At most this many writes share one lock (others wait for the next).
    BATCH = 32

    def __init__(self, reactor: Any, make: Callable[[], MaildirMailbox], name: str) -> None:
        self._reactor = reactor
        self._make = make
        self._name = name
        self._own: MaildirMailbox | None = None
        self._queue: deque[_Job] = deque()
        self._busy = False
        self._closed = False

    def run(self, work: Callable[[MaildirMailbox], _T]) -> Deferred[_T]:
        """``work(mailbox)`` in the pool, under the folder lock."""
        return self._add(lambda done: _Job(done, work=work))

    def place(self, staged: Sequence[appending.Staged]) -> Deferred[list[int]]:
        """Messages staged in tmp/ given UIDs and moved into cur/, with the
        others queued meanwhile: all of them durable, or none in cur/."""
        shared = not any(item.keywords for item in staged)
        return self._add(lambda done: _Job(done, staged=staged, shared=shared))

    def _add(self, job: Callable[[Deferred[Any]], _Job]) -> Deferred[Any]:
        if self._closed:
            return fail(NoSuchMailbox(f"mailbox {self._name!r} was deleted or renamed"))
        done: Deferred[Any] = Deferred()
        self._queue.append(job(done))
        self._next()
        return done

    def close(self) -> None:
        """The folder was deleted or renamed: later writes fail; the writer's
        mailbox is closed after the writes already queued."""
        if not self._closed:
            self._closed = True
            self._queue.append(_Job(Deferred(), closing=True))
            self._next()

    def _next(self) -> None:
        if self._busy or not self._queue:
            return
        self._busy = True
        batch = [self._queue.popleft()]
        while (
            not batch[0].closing
            and self._queue
            and not self._queue[0].closing
            and len(batch) < self.BATCH
        ):
            batch.append(self._queue.popleft())
        pool = self._reactor.getThreadPool()
        ran: Deferred[list[object]] = deferToThreadPool(self._reactor, pool, self._call, batch)

        def finished(outcomes: list[object]) -> None:
            self._busy = False
            for job, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Failure):
                    job.done.errback(outcome)
                else:
                    job.done.callback(outcome)
            self._next()

        def broke(failure: Failure) -> None:
            self._busy = False
            for job in batch:
                job.done.errback(failure)
            self._next()

        ran.addCallbacks(finished, broke)

    def _call(self, batch: list[_Job]) -> list[object]:
        """In the pool thread: the batch under one lock, an outcome (value or
        Failure) per job."""
        if batch[0].closing:
            if self._own is not None:
                self._own.close()
            self._own = None
            return [None]
        own = self._own
        if own is None or own.closed:
            own = self._own = self._make()
        outcomes: list[object] = [None] * len(batch)
        with own._folder.locked():
            shared = [i for i, job in enumerate(batch) if job.shared]
            if shared:
                self._place_together(own, [batch[i] for i in shared], shared, outcomes)
            for i, job in enumerate(batch):
                if job.shared:
                    continue
                try:
                    if job.work is not None:
                        outcomes[i] = job.work(own)
                    else:
                        with disk_full():
                            outcomes[i] = own._place(job.staged)
                except Exception:
                    outcomes[i] = Failure()
        return outcomes

    @staticmethod
    def _place_together(
        own: MaildirMailbox, jobs: list[_Job], positions: list[int], outcomes: list[object]
    ) -> None:
        """One placement for the messages of several APPENDs (lock held):
        each gets its own UIDs; a failure fails them all, none placed."""
        try:
            with disk_full():
                uids = own._place([item for job in jobs for item in job.staged])
        except Exception:
            failure = Failure()
            for position in positions:
                outcomes[position] = failure
            return
        start = 0
        for job, position in zip(jobs, positions, strict=True):
            outcomes[position] = uids[start : start + len(job.staged)]
            start += len(job.staged)


class ThreadedMailbox(MaildirMailbox):
    """A :class:`MaildirMailbox` whose writes run in a :class:`FolderWriter`
    and answer with Deferreds (the contract's ``MaybeDeferred``), so the
    reactor thread never waits for the folder lock or an fsync of theirs.

    Its overrides return Deferreds where the base class returns values,
    which the contract allows (hence the ``override`` ignores)."""

    def __init__(
        self,
        root: str,
        path: str,
        name: str,
        *,
        watcher: Watcher,
        warn_once: Callable[[str], None],
        reactor: Any,
        fulltext: FullText | None = None,
    ) -> None:
        # The full-text index is this object's: the writer's own mailbox
        # (below) has none, so each change is indexed once, when announced.
        super().__init__(root, path, name, watcher=watcher, warn_once=warn_once, fulltext=fulltext)

        def make() -> MaildirMailbox:
            return MaildirMailbox(root, path, name, watcher=NO_WATCHER, warn_once=warn_once)

        self._reactor = reactor
        self._writer = FolderWriter(reactor, make, name)

    def close(self) -> None:
        super().close()
        self._writer.close()

    def _write(self, work: Callable[[MaildirMailbox], _T]) -> Deferred[_T]:
        """Run ``work`` in the writer, then tell this process's listeners
        what it changed (read from the index, as after another process's
        change), then answer."""
        try:
            self._follow_replaced()
        except Exception:
            return fail()
        return self._writer.run(work).addCallback(self._heard)

    def _heard(self, result: _T) -> _T:
        # The write is done and durable: it is answered all the same.
        self._follow_replaced_or_log()
        self._announce()
        return result

    def _follow_replaced_or_log(self) -> None:
        """:meth:`_follow_replaced` where a failure must not stop what
        follows (an answer, an announcement): logged."""
        try:
            self._follow_replaced()
        except Exception:
            log.failure("reopening the replaced index {path} failed", path=self.path)

    def _follow_replaced(self) -> None:
        """Open the index another process put in place of ours (``mailsrv
        reindex`` rebuilds it as a new file), before a write is queued and
        before listeners are told of one.

        The writer's own mailbox follows a replacement when it takes the
        lock.  This object's reads (a STORE's FETCH answer, the listeners'
        news of an APPEND) would otherwise stay on the old, unlinked file
        until this thread took the lock itself, which with the writer on
        rarely happens: a STORE was answered with the flags from before it,
        and an APPEND's messages never joined the sessions' views, so a UID
        STORE or EXPUNGE of them later did nothing while answering OK."""
        folder = self._folder
        index = folder.index
        if folder.closed or index is None or not index.replaced():
            return
        # Taking the lock reopens the index (IndexedFolder._lock); if another
        # writer holds it for a moment, wait for it here, once per
        # replacement, rather than answer from the old file.
        with folder.locked():
            pass

    # -- writes ---------------------------------------------------------------------

    def append(  # type: ignore[override]
        self,
        source: IO[bytes],
        flags: Iterable[str] = (),
        internal_date: datetime.datetime | None = None,
    ) -> Deferred[int]:
        added = self.append_many([NewMessage(source, list(flags), internal_date)])
        return added.addCallback(lambda uids: uids[0])

    def append_many(  # type: ignore[override]
        self, messages: Sequence[NewMessage]
    ) -> Deferred[list[int]]:
        """Written to tmp/ and fsynced in the pool (several at once, no lock
        held), then placed by the writer with the APPENDs queued meanwhile."""
        batch = list(messages)
        folder = self._folder  # only its tmp/ is used in the thread

        def stage() -> list[appending.Staged]:
            with disk_full():
                staged = appending.stage(folder, batch)
                try:
                    crash_point("append-written")
                except BaseException:
                    appending.drop(staged)
                    raise
            return staged

        def place(staged: list[appending.Staged]) -> Deferred[list[int]]:
            def dropped(result: object) -> object:
                appending.drop(staged)  # what a failure left in tmp/
                return result

            try:
                self._follow_replaced()
            except Exception:
                return fail().addBoth(dropped)
            return self._writer.place(staged).addBoth(dropped)

        pool = self._reactor.getThreadPool()
        staged: Deferred[list[appending.Staged]] = deferToThreadPool(self._reactor, pool, stage)
        return staged.addCallback(place).addCallback(self._heard)

    def store(  # type: ignore[override]
        self,
        uids: Iterable[int],
        flags: Iterable[str],
        mode: str,
        unchanged_since: int | None = None,
    ) -> Deferred[StoreResult]:
        wanted, wanted_flags = list(uids), list(flags)
        return self._write(lambda own: own.store(wanted, wanted_flags, mode, unchanged_since))

    def remove(self, uids: Iterable[int]) -> Deferred[Sequence[int]]:  # type: ignore[override]
        wanted = list(uids)
        return self._write(lambda own: own.remove(wanted))

    def expunge(  # type: ignore[override]
        self, uids: Iterable[int] | None = None
    ) -> Deferred[Sequence[int]]:
        wanted = None if uids is None else list(uids)
        return self._write(lambda own: own.expunge(wanted))

    def copy(  # type: ignore[override]
        self, uids: Iterable[int], destination: IMailbox
    ) -> Sequence[tuple[int, int]] | Deferred[Sequence[tuple[int, int]]]:
        """Links are made in the destination's tmp/ here (a link is no
        write to wait for); their placing, under the destination's lock
        with its fsyncs, in the destination's writer."""
        if not isinstance(destination, ThreadedMailbox):
            return super().copy(uids, destination)
        self._follow_replaced()  # the rows name the files to link
        staged = self._stage_copies(list(uids), destination)
        if not staged:
            return []
        keywords_path = self._folder.keywords.path

        def receive(own: MaildirMailbox) -> Sequence[tuple[int, int]]:
            # The source's keyword table, read afresh in this thread (the
            # reactor's is not to be shared): letters are never reassigned.
            keywords = KeywordTable(keywords_path)
            keywords.refresh()
            with disk_full():
                return own._receive(staged, keywords)

        def dropped(result: object) -> object:
            transfer.drop_staged(staged)
            return result

        received = destination._write(receive)
        received.addBoth(dropped)
        return received

    @_recovering
    def _stage_copies(self, uids: list[int], destination: ThreadedMailbox) -> list[transfer.Staged]:
        folder = self._folder
        folder.keywords.refresh()
        rows = folder.db.rows(uids)
        with disk_full():
            return transfer.stage_copies(folder, rows, destination._folder)

    def move(  # type: ignore[override]
        self, uids: Iterable[int], destination: IMailbox
    ) -> Sequence[tuple[int, int]] | Deferred[Sequence[tuple[int, int]]]:
        """Renames within a file system stay on this thread (both folders
        locked; no fsync of a message); across file systems a MOVE is a
        COPY, here threaded, then a removal."""
        wanted = list(uids)
        if not isinstance(destination, ThreadedMailbox) or transfer.same_device(
            self._folder, destination._folder
        ):
            return super().move(wanted, destination)
        copied = maybe_deferred(self.copy, wanted, destination)

        def remove(pairs: Sequence[tuple[int, int]]) -> Deferred[Sequence[tuple[int, int]]]:
            return self.remove([source for source, _ in pairs]).addCallback(lambda _: pairs)

        return copied.addCallback(remove)

    # -- catching up ------------------------------------------------------------------

    def check(self) -> Deferred[None] | None:  # type: ignore[override]
        """Catch up here if the folder lock is free.  If another writer
        holds it, that writer records its own change in the index (which
        the announcement reads); what a check must find itself is what
        programs that take no lock did to new/ and cur/, which their
        signatures show: only then does it wait, in the writer."""
        self._follow_replaced()
        look = self._gate.look(self._folder, self._watcher.quiet(self))
        if look is None:
            return None  # nothing can have changed since the last check (quiet.py)
        if self._check_if_free():
            self._announce()
            self._gate.looked(self._folder, look)
            return None
        if not self._needs_scan():
            self._announce()
            return None
        return self._write(lambda own: own.check())

    def refresh(self) -> None:
        """Another process pinged (its change is in the index): read it
        from the index file now in place, not one it replaced."""
        if not self._folder.closed:
            self._follow_replaced_or_log()
        super().refresh()

    @_recovering
    def _needs_scan(self) -> bool:
        return self._folder.needs_scan()

    @_recovering
    def _check_if_free(self) -> bool:
        with self._folder.locked_if_free() as held:
            if held:
                self._folder.sync()
            return held
