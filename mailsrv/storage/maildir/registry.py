"""The storage's open folders: one :class:`MaildirMailbox` per folder.

Every session that opens a folder gets the same object while anyone holds
it (the IAccount contract), so listeners hear each other's changes at once.
Accounts open folders through the registry they are handed; they never see
the storage.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from mailsrv.log import get_logger
from mailsrv.storage.maildir.cache import CACHE_KINDS
from mailsrv.storage.maildir.folder import MaildirMailbox
from mailsrv.storage.maildir.fulltext import FullText
from mailsrv.storage.maildir.layout import needs_index
from mailsrv.storage.maildir.watch import NO_WATCHER, Quiet, WatchedFolder, Watcher
from mailsrv.storage.maildir.writer import ThreadedMailbox

__all__ = ["KEEP_COUNT", "KEEP_SECONDS", "MailboxRegistry"]

#: How long a folder stays open after its last session leaves, and how many
#: folders are kept so at most.  A phone or fetchmail logs in, selects the
#: INBOX and logs out every few minutes; reopening a 100,000-message folder
#: (index connection, lock file, UID runs, keyword table) is most of what
#: such a SELECT costs.
KEEP_SECONDS = 300.0
KEEP_COUNT = 32

# One namespace for the whole backend: log lines name it, not its modules.
log = get_logger("mailsrv.storage.maildir")


class MailboxRegistry:
    """Opens and shares the folders of one storage.

    :param watcher: handed to every folder, which starts and stops being
        watched as listeners come and go.
    :param reactor: with a thread pool (``IReactorThreads``), a folder that
        must be indexed first is indexed in a thread (:meth:`open_in_thread`).
    :param keep_open: hold every folder opened until :meth:`close_all`
        (by default a folder no session uses is let go).
    :param fulltext: give folders a full-text index for SEARCH BODY and
        TEXT (:mod:`.fulltext`), kept current in the reactor's threads.
    :param keep_seconds, keep_count: otherwise a folder stays open that
        long after it was last opened or last listened to, and that many
        such folders at most (least recently used go first).
    :param clock: seconds, for the tests (default: ``time.monotonic``).
    :param threaded_writes: with a thread pool, folders are
        :class:`~.writer.ThreadedMailbox` objects: their writes wait for locks
        and fsyncs in a thread, and answer with Deferreds.
    :param cache_kinds: client-named cache kinds each folder's index keeps
        at most (:meth:`.index.Index.set_cached_many`).
    """

    def __init__(
        self,
        watcher: Watcher = NO_WATCHER,
        reactor: Any = None,
        *,
        keep_open: bool = False,
        fulltext: bool = True,
        keep_seconds: float = KEEP_SECONDS,
        keep_count: int = KEEP_COUNT,
        clock: Callable[[], float] = time.monotonic,
        threaded_writes: bool = False,
        cache_kinds: int = CACHE_KINDS,
    ) -> None:
        self._cache_kinds = cache_kinds
        self.watcher: Watcher = _KeepingWatcher(watcher, self._released)
        self._reactor = reactor
        self._fulltext = fulltext
        self._stopping: threading.Event | None = None
        self._threaded = threaded_writes and IReactorThreads.providedBy(reactor)
        self._mailboxes: weakref.WeakValueDictionary[str, MaildirMailbox] = (
            weakref.WeakValueDictionary()
        )
        self._kept: dict[str, MaildirMailbox] | None = {} if keep_open else None
        self._building: dict[str, list[Deferred[MaildirMailbox]]] = {}
        self._warned: set[str] = set()
        #: Folders kept open after use: key -> (when last used, mailbox).
        self._recent: OrderedDict[str, tuple[float, MaildirMailbox]] = OrderedDict()
        self._keep_seconds = keep_seconds
        self._keep_count = keep_count
        self._clock = clock

    def open(self, root: str, path: str, name: str) -> MaildirMailbox:
        """The shared mailbox of the folder at ``path`` (``root``: its account's)."""
        key = os.path.realpath(path)
        mailbox = self._mailboxes.get(key)
        if mailbox is not None and not mailbox.closed and not mailbox.listened:
            # Kept open while nobody listened, so unwatched: catch up with
            # what other processes did meanwhile, as opening it would.
            mailbox = self._caught_up(key, mailbox)
        if mailbox is None or mailbox.closed:
            text_index = self._text_index(path) if self._fulltext else None
            if self._threaded:
                mailbox = ThreadedMailbox(
                    root,
                    path,
                    name,
                    watcher=self.watcher,
                    warn_once=self.warn_once,
                    reactor=self._reactor,
                    fulltext=text_index,
                )
            else:
                mailbox = MaildirMailbox(
                    root,
                    path,
                    name,
                    watcher=self.watcher,
                    warn_once=self.warn_once,
                    fulltext=text_index,
                )
            mailbox.cache_kinds = self._cache_kinds
            self._mailboxes[key] = mailbox
            if self._kept is not None:
                self._kept[key] = mailbox
        self._keep(mailbox)
        return mailbox

    def _text_index(self, path: str) -> FullText:
        """A folder's full-text index, working in the reactor's threads
        (none without a reactor) and told when the reactor shuts down."""
        reactor = self._reactor
        if not IReactorThreads.providedBy(reactor):
            return FullText(path, None)
        if self._stopping is None:
            self._stopping = threading.Event()
            self._reactor.addSystemEventTrigger("before", "shutdown", self._stopping.set)

        def run(work: Callable[[], Any]) -> Deferred[Any]:
            return deferToThreadPool(reactor, reactor.getThreadPool(), work)

        return FullText(path, run, self._stopping)

    def _caught_up(self, key: str, mailbox: MaildirMailbox) -> MaildirMailbox | None:
        """``mailbox`` brought up to date with the files and the index, or
        None (forgotten) if that fails: a new object then tries afresh and
        reports the failure as opening would."""
        try:
            pending = mailbox.check()
        except Exception:
            self._recent.pop(key, None)
            self._mailboxes.pop(key, None)
            mailbox.close()
            return None
        if isinstance(pending, Deferred):
            # A threaded folder waiting for another writer's lock: what it
            # finds reaches the new session as untagged updates.
            pending.addErrback(lambda f: log.failure("catching up {path}", f, path=key))
        return mailbox

    def _released(self, folder: WatchedFolder) -> None:
        """The last listener of ``folder`` left: keep it from now on, without
        the memory only sessions need."""
        if isinstance(folder, MaildirMailbox) and not folder.closed:
            folder.shed()
        self._keep(folder)

    def _keep(self, folder: WatchedFolder) -> None:
        """Hold ``folder`` open for a while (it was just opened, or its last
        listener just left); forget those kept too long or too many."""
        if self._keep_count <= 0 or not isinstance(folder, MaildirMailbox):
            return
        now = self._clock()
        key = os.path.realpath(folder.path)
        self._recent.pop(key, None)
        if not folder.closed:
            self._recent[key] = (now, folder)
        recent = self._recent
        while recent:
            oldest, (used, _) = next(iter(recent.items()))
            if len(recent) <= self._keep_count and now - used < self._keep_seconds:
                break
            del recent[oldest]

    def open_in_thread(self, root: str, path: str, name: str) -> Deferred[MaildirMailbox] | None:
        """A Deferred if the folder must be indexed first and threads are at hand."""
        key = os.path.realpath(path)
        waiting = self._building.get(key)
        if waiting is not None:
            later: Deferred[MaildirMailbox] = Deferred()
            waiting.append(later)
            return later
        mailbox = self._mailboxes.get(key)
        if mailbox is not None and not mailbox.closed:
            return None
        if not IReactorThreads.providedBy(self._reactor) or not needs_index(path):
            return None
        waiters: list[Deferred[MaildirMailbox]] = []
        self._building[key] = waiters

        def build() -> None:
            # A throwaway object of its own (own SQLite connection, own lock
            # file descriptor) builds the index; the reactor thread then
            # opens the finished index in no time.
            MaildirMailbox(root, path, name, watcher=NO_WATCHER, warn_once=self.warn_once).close()

        def built(_: None) -> MaildirMailbox:
            del self._building[key]
            mailbox = self.open(root, path, name)
            for waiter in waiters:
                waiter.callback(mailbox)
            return mailbox

        def failed(reason: Failure) -> Failure:
            del self._building[key]
            for waiter in waiters:
                waiter.errback(reason)
            return reason

        pool = self._reactor.getThreadPool()
        started: Deferred[None] = deferToThreadPool(self._reactor, pool, build)
        return started.addCallbacks(built, failed)

    def close_all(self) -> None:
        """Close every open mailbox (index connection, lock file)."""
        for mailbox in list(self._mailboxes.values()):
            mailbox.close()
        self._mailboxes.clear()
        self._recent.clear()
        if self._kept is not None:
            self._kept.clear()

    def close(self, path: str) -> None:
        """The folder at ``path`` is being deleted or renamed: its mailbox
        object fails from now on, and the next open makes a new one."""
        key = os.path.realpath(path)
        mailbox = self._mailboxes.pop(key, None)
        self._recent.pop(key, None)
        if self._kept is not None:
            self._kept.pop(key, None)
        if mailbox is not None:
            mailbox.close()

    def warn_once(self, message: str) -> None:
        """Log a warning about the tree (an odd file, a bad name) once per storage."""
        if message not in self._warned:
            self._warned.add(message)
            # Not "message": the legacy log bridge empties that key for
            # every observer after it, and the line would read "()".
            log.warn("{problem}", problem=message)


class _KeepingWatcher:
    """The watcher handed to folders: the storage's own, and the registry
    told when a folder's last listener leaves, so the folder is kept open
    from then on rather than from when it was opened."""

    def __init__(self, watcher: Watcher, released: Callable[[WatchedFolder], None]) -> None:
        self._watcher = watcher
        self._released = released

    def watch(self, folder: WatchedFolder) -> None:
        self._watcher.watch(folder)

    def unwatch(self, folder: WatchedFolder) -> None:
        self._watcher.unwatch(folder)
        self._released(folder)

    def quiet(self, folder: WatchedFolder) -> Quiet | None:
        return self._watcher.quiet(folder)
