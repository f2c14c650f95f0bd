"""Telling idle sessions about changes made outside this process.

A folder with listeners (an IDLE or otherwise selected IMAP session) is
handed to the storage's :class:`FolderWatcher`, which calls its ``check()``
when inotify reports a change in ``new/`` or ``cur/`` (Postfix delivering,
mutt renaming), and every ``poll_interval`` seconds in any case (inotify is
missing on some systems and file systems, and events can be dropped).

A folder only knows the small :class:`Watcher` protocol of what it
is handed, so it does not depend on the storage that owns the watcher.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorFDSet, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from mailsrv.errors import NoSuchMailbox
from mailsrv.log import get_logger
from mailsrv.storage.maildir.layout import LOCK_NAME

# Imported here, not where first used: the first watch happens after twistd
# has dropped root, and the code may not be readable by the daemon's user.
if sys.platform.startswith("linux"):
    from twisted.internet import inotify
else:  # pragma: no cover
    inotify = None

__all__ = ["NO_WATCHER", "FolderWatcher", "WatchedFolder", "Watcher"]

# One namespace for the whole backend: log lines name it, not its modules.
log = get_logger("mailsrv.storage.maildir")

#: How long after an inotify event the folder is checked: a delivery is a
#: burst of events (create in tmp/, rename into new/), answered by one check.
_SETTLE = 0.05
#: The file another mailsrv process touches once its change is in the index.
_LOCK_NAME = LOCK_NAME.encode()


class WatchedFolder(Protocol):
    """What a watcher needs of a folder."""

    #: The folder's directory; one watch per path.
    path: str

    @property
    def closed(self) -> bool:
        """The folder was deleted or renamed: it is not watched again."""

    def watched_dirs(self) -> Sequence[str]:
        """The directories whose changes the folder wants to hear about."""

    def check(self) -> Deferred[None] | None:
        """Look for outside changes now and tell the folder's listeners (a
        Deferred when it waits for the folder lock in a thread)."""

    def refresh(self) -> None:
        """Another mailsrv process changed the index: tell the listeners
        what it recorded (no listing of the folder)."""


class Watcher(Protocol):
    """What a folder is handed: start and stop watching it."""

    def watch(self, folder: WatchedFolder) -> None:
        """Check ``folder`` when it may have changed, until :meth:`unwatch`."""

    def unwatch(self, folder: WatchedFolder) -> None:
        """Stop watching ``folder``; unknown folders are ignored."""


class _NoWatcher:
    """For folders nobody listens to from this object (a storage without a
    reactor, an index built in a thread): changes show at the next check."""

    def watch(self, folder: WatchedFolder) -> None:
        pass

    def unwatch(self, folder: WatchedFolder) -> None:
        pass


NO_WATCHER: Watcher = _NoWatcher()


class FolderWatcher:
    """Checks watched folders on inotify events where available, and by polling.

    :param reactor: the reactor whose clock polls, and whose file
        descriptors carry inotify (when it provides ``IReactorFDSet``).
    :param poll_interval: seconds between checks of every watched folder.
    """

    def __init__(self, reactor: IReactorTime, poll_interval: float) -> None:
        self._reactor = reactor
        self.poll_interval = poll_interval
        self._watched: dict[str, WatchedFolder] = {}
        self._poller: LoopingCall | None = None
        self._notifier: Any = None
        self._pending_checks: dict[str, IDelayedCall] = {}

    def watch(self, folder: WatchedFolder) -> None:
        if folder.closed:
            return
        key = folder.path
        if key in self._watched:
            return
        self._watched[key] = folder
        if self._poller is None:
            self._poller = LoopingCall(self._poll)
            self._poller.clock = self._reactor
            self._poller.start(self.poll_interval, now=False)
        self._inotify_watch(folder)

    def unwatch(self, folder: WatchedFolder) -> None:
        key = folder.path
        if self._watched.pop(key, None) is None:
            return
        if self._notifier is not None:
            for directory in (*folder.watched_dirs(), folder.path):
                with contextlib.suppress(Exception):
                    self._notifier.ignore(FilePath(directory.encode()))
        pending = self._pending_checks.pop(key, None)
        if pending is not None and pending.active():
            pending.cancel()
        if not self._watched and self._poller is not None and self._poller.running:
            # Stop polling, but keep the inotify descriptor: closing one
            # takes the kernel 8-14 ms, which every last LOGOUT would pay.
            self._poller.stop()
            self._poller = None

    def stop(self) -> None:
        """Stop watching everything (service shutdown); the next
        :meth:`watch` starts again."""
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        self._poller = None
        if self._notifier is not None:
            with contextlib.suppress(Exception):
                self._notifier.loseConnection()
            self._notifier = None
        for pending in self._pending_checks.values():
            if pending.active():
                pending.cancel()
        self._pending_checks.clear()
        self._watched.clear()

    def _inotify_watch(self, folder: WatchedFolder) -> None:
        if inotify is None:
            return
        try:
            if not IReactorFDSet.providedBy(self._reactor):
                return
            if self._notifier is None:
                notifier: Any = inotify.INotify  # untyped in Twisted
                self._notifier = notifier(self._reactor)
                self._notifier.startReading()
            mask = (
                inotify.IN_CREATE | inotify.IN_MOVED_TO | inotify.IN_MOVED_FROM | inotify.IN_DELETE
            )
            key = folder.path

            def changed(_watch: object, _path: object, _mask: int) -> None:
                self._schedule_check(key)

            def pinged(_watch: object, path: FilePath[bytes], _mask: int) -> None:
                if path.basename() == _LOCK_NAME:
                    self._refresh_one(key)

            for directory in folder.watched_dirs():
                self._notifier.watch(FilePath(directory.encode()), mask=mask, callbacks=[changed])
            # Another mailsrv process (a worker, `mailsrv deliver`) touches the
            # lock file once a change is in the index: no settling, no listing.
            self._notifier.watch(
                FilePath(folder.path.encode()), mask=inotify.IN_ATTRIB, callbacks=[pinged]
            )
        except Exception:
            log.failure("inotify unavailable; polling every {n}s", n=self.poll_interval)

    def _schedule_check(self, key: str) -> None:
        if key not in self._watched:
            return  # an event that was already queued when the folder was unwatched
        pending = self._pending_checks.get(key)
        if pending is not None and pending.active():
            return
        self._pending_checks[key] = self._reactor.callLater(_SETTLE, self._check_one, key)

    def _check_one(self, key: str) -> None:
        pending = self._pending_checks.pop(key, None)
        if pending is not None and pending.active():
            pending.cancel()  # the poller got here first; one check is enough
        folder = self._watched.get(key)
        if folder is None:
            return
        try:
            checked = folder.check()
        except Exception:
            self._check_failed(Failure(), folder, key)
            return
        if isinstance(checked, Deferred):
            checked.addErrback(self._check_failed, folder, key)

    def _check_failed(self, failure: Failure, folder: WatchedFolder, key: str) -> None:
        if failure.check(NoSuchMailbox):
            self.unwatch(folder)
        else:
            log.failure("checking {path} failed", failure, path=key)

    def _refresh_one(self, key: str) -> None:
        folder = self._watched.get(key)
        if folder is None:
            return
        try:
            folder.refresh()
        except NoSuchMailbox:
            self.unwatch(folder)
        except Exception:
            log.failure("reading changes of {path} failed", path=key)

    def _poll(self) -> None:
        for key in list(self._watched):
            self._check_one(key)
