"""The storage's open folders: one :class:`MaildirMailbox` per folder.

Every session that opens a folder gets the same object while anyone holds
it (the IAccount contract), so listeners hear each other's changes at once.
Accounts open folders through the registry they are handed; they never see
the storage.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from mailsrv.log import get_logger
from mailsrv.storage.maildir.folder import MaildirMailbox
from mailsrv.storage.maildir.layout import needs_index
from mailsrv.storage.maildir.watch import NO_WATCHER, Watcher
from mailsrv.storage.maildir.writer import ThreadedMailbox

__all__ = ["MailboxRegistry"]

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
    :param threaded_writes: with a thread pool, folders are
        :class:`~.writer.ThreadedMailbox` objects: their writes wait for locks
        and fsyncs in a thread, and answer with Deferreds.
    """

    def __init__(
        self,
        watcher: Watcher = NO_WATCHER,
        reactor: Any = None,
        *,
        keep_open: bool = False,
        threaded_writes: bool = False,
    ) -> None:
        self.watcher = watcher
        self._reactor = reactor
        self._threaded = threaded_writes and IReactorThreads.providedBy(reactor)
        self._mailboxes: weakref.WeakValueDictionary[str, MaildirMailbox] = (
            weakref.WeakValueDictionary()
        )
        self._kept: dict[str, MaildirMailbox] | None = {} if keep_open else None
        self._building: dict[str, list[Deferred[MaildirMailbox]]] = {}
        self._warned: set[str] = set()

    def open(self, root: str, path: str, name: str) -> MaildirMailbox:
        """The shared mailbox of the folder at ``path`` (``root``: its account's)."""
        key = os.path.realpath(path)
        mailbox = self._mailboxes.get(key)
        if mailbox is None or mailbox.closed:
            if self._threaded:
                mailbox = ThreadedMailbox(
                    root,
                    path,
                    name,
                    watcher=self.watcher,
                    warn_once=self.warn_once,
                    reactor=self._reactor,
                )
            else:
                mailbox = MaildirMailbox(
                    root, path, name, watcher=self.watcher, warn_once=self.warn_once
                )
            self._mailboxes[key] = mailbox
            if self._kept is not None:
                self._kept[key] = mailbox
        return mailbox

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
        if self._kept is not None:
            self._kept.clear()

    def close(self, path: str) -> None:
        """The folder at ``path`` is being deleted or renamed: its mailbox
        object fails from now on, and the next open makes a new one."""
        key = os.path.realpath(path)
        mailbox = self._mailboxes.pop(key, None)
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
