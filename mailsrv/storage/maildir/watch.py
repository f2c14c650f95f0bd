"""Telling idle sessions about changes made outside this process.

A folder with listeners (an IDLE or otherwise selected IMAP session) is
handed to the storage's :class:`FolderWatcher`, which calls its ``check()``
when inotify reports a change in ``new/`` or ``cur/`` (Postfix delivering,
mutt renaming), and every ``poll_interval`` seconds in any case (inotify is
missing on some systems and file systems, and events can be dropped).

Where inotify watches every directory of a folder on a local file system,
the watcher also counts the events it read for it (:meth:`FolderWatcher.quiet`,
after reading what is already queued): a folder whose counts did not move
since its last complete check has nothing new in ``new/`` or ``cur/``, and
its check needs no listing and no lock (:mod:`.quiet`).  A lost event queue
(``IN_Q_OVERFLOW``), a watch that could not be added or that the kernel
dropped, or a file system whose changes inotify may not see (NFS, FUSE)
leave the folder to the full check.

A folder only knows the small :class:`Watcher` protocol of what it
is handed, so it does not depend on the storage that owns the watcher.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from collections.abc import Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorFDSet, IReactorTime
from twisted.internet.main import CONNECTION_LOST
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
#: Whether this platform has inotify at all.
INOTIFY = inotify is not None

__all__ = [
    "INOTIFY",
    "NO_WATCHER",
    "FolderWatcher",
    "Quiet",
    "WatchedFolder",
    "Watcher",
    "local_fs_type",
]

# One namespace for the whole backend: log lines name it, not its modules.
log = get_logger("mailsrv.storage.maildir")

#: How long after an inotify event the folder is checked: a delivery is a
#: burst of events (create in tmp/, rename into new/), answered by one check.
_SETTLE = 0.05
#: The file another mailsrv process touches once its change is in the index.
_LOCK_NAME = LOCK_NAME.encode()
#: File systems on which inotify sees every change to a directory, whoever
#: makes it: local ones.  On NFS, CIFS or FUSE another host's (or the FUSE
#: server's own) changes raise no event, so no check is ever skipped there.
_LOCAL_FS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "jfs", "reiserfs", "overlay"}
)


@attrs.frozen
class Quiet:
    """What the watcher heard of one folder so far: equal values at two
    checks mean no change in ``new/`` or ``cur/`` and no ping in between."""

    #: Which watch (a folder watched again starts afresh) and how many
    #: event queue overflows so far: events may have been lost between two
    #: values that differ here.
    epoch: tuple[int, int]
    #: Events read for the folder's directories, and for ``cur/`` alone.
    events: int
    cur_events: int


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

    def quiet(self, folder: WatchedFolder) -> Quiet | None:
        """What was heard of ``folder`` so far, after reading the events
        already queued; None unless every change to it raises an event."""


class _NoWatcher:
    """For folders nobody listens to from this object (a storage without a
    reactor, an index built in a thread): changes show at the next check."""

    def watch(self, folder: WatchedFolder) -> None:
        pass

    def unwatch(self, folder: WatchedFolder) -> None:
        pass

    def quiet(self, folder: WatchedFolder) -> Quiet | None:
        return None


NO_WATCHER: Watcher = _NoWatcher()


@attrs.define
class _Heard:
    """The events read for one watched folder (see :class:`Quiet`)."""

    epoch: int
    events: int = 0
    cur_events: int = 0
    #: Every directory of the folder is watched on a local file system,
    #: and no watch was dropped by the kernel since.
    complete: bool = False


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
        self._heard: dict[str, _Heard] = {}
        self._poller: LoopingCall | None = None
        self._notifier: Any = None
        self._pending_checks: dict[str, IDelayedCall] = {}
        self._epochs = 0
        self._overflows = 0
        self._fs_types: dict[int, str | None] = {}

    def watch(self, folder: WatchedFolder) -> None:
        if folder.closed:
            return
        key = folder.path
        if key in self._watched:
            return
        self._watched[key] = folder
        self._epochs += 1
        self._heard[key] = _Heard(self._epochs)
        if self._poller is None:
            self._poller = LoopingCall(self._poll)
            self._poller.clock = self._reactor
            self._poller.start(self.poll_interval, now=False)
        self._heard[key].complete = self._inotify_watch(folder)

    def unwatch(self, folder: WatchedFolder) -> None:
        key = folder.path
        if self._watched.pop(key, None) is None:
            return
        self._heard.pop(key, None)
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

    def quiet(self, folder: WatchedFolder) -> Quiet | None:
        heard = self._heard.get(folder.path)
        notifier = self._notifier
        if heard is None or not heard.complete or notifier is None:
            return None
        # What is queued now was caused before this call: read it, so a
        # change made before the command arrived is counted.
        if not notifier.drain() or not heard.complete or self._heard.get(folder.path) is not heard:
            return None
        return Quiet((heard.epoch, self._overflows), heard.events, heard.cur_events)

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
        self._heard.clear()

    def _inotify_watch(self, folder: WatchedFolder) -> bool:
        """Watch the folder's directories; whether every change to them will
        raise an event (all watches added, on a local file system)."""
        if inotify is None:
            return False
        try:
            if not IReactorFDSet.providedBy(self._reactor):
                return False
            if self._notifier is None or self._notifier.broken:
                self._notifier = _Notifier(self._reactor, self._overflowed)
                self._notifier.startReading()
            mask = (
                inotify.IN_CREATE
                | inotify.IN_MOVED_TO
                | inotify.IN_MOVED_FROM
                | inotify.IN_DELETE
                | inotify.IN_MOVE_SELF
            )
            key = folder.path
            new, cur = folder.watched_dirs()

            def changed(_watch: object, _path: object, event: int) -> None:
                self._count(key, event)
                self._schedule_check(key)

            def changed_cur(_watch: object, _path: object, event: int) -> None:
                heard = self._heard.get(key)
                if heard is not None:
                    heard.cur_events += 1
                changed(_watch, _path, event)

            def pinged(_watch: object, path: FilePath[bytes], event: int) -> None:
                self._count(key, event)
                if event & inotify.IN_ATTRIB and path.basename() == _LOCK_NAME:
                    self._refresh_one(key)

            self._notifier.watch(FilePath(new.encode()), mask=mask, callbacks=[changed])
            self._notifier.watch(FilePath(cur.encode()), mask=mask, callbacks=[changed_cur])
            # Another mailsrv process (a worker, `mailsrv deliver`) touches the
            # lock file once a change is in the index: no settling, no listing.
            self._notifier.watch(
                FilePath(folder.path.encode()),
                mask=inotify.IN_ATTRIB | inotify.IN_MOVE_SELF,
                callbacks=[pinged],
            )
        except Exception:
            log.failure("inotify unavailable; polling every {n}s", n=self.poll_interval)
            return False
        return all(self._local(path) for path in (new, cur, folder.path))

    def _local(self, path: str) -> bool:
        try:
            device = os.stat(path).st_dev
        except OSError:
            return False
        if device not in self._fs_types:
            self._fs_types[device] = local_fs_type(path)
        return self._fs_types[device] in _LOCAL_FS

    def _count(self, key: str, event: int) -> None:
        heard = self._heard.get(key)
        if heard is None or inotify is None:
            return
        heard.events += 1
        if event & (inotify.IN_IGNORED | inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF):
            # The directory went away or moved (the folder was deleted or
            # renamed), or the kernel dropped the watch: later changes raise
            # no event for it, so every check is a full one from now on.
            heard.complete = False

    def _overflowed(self) -> None:
        """Events were lost: every folder's next check is a full one."""
        self._overflows += 1
        log.warn("inotify event queue overflowed; checking every watched folder")
        for key in list(self._watched):
            self._schedule_check(key)

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


def local_fs_type(path: str) -> str | None:
    """The type of the file system ``path`` is on (``ext4``, ``nfs4``), from
    the mount point that is its longest prefix; None if unknown."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
        target = os.path.realpath(path)
    except OSError:
        return None
    best, found = -1, None
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not rest:
            continue
        # Spaces and such in mount points are octal escapes (\040).
        point = parts[4].encode().decode("unicode_escape")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:
            best, found = len(point), rest.split()[0]
    return found


if inotify is not None:

    class _Notifier(inotify.INotify):
        """Twisted's inotify reader, reading events our way: an overflow of
        the kernel's queue is reported (Twisted drops it), a watch the kernel
        removed is forgotten, and a deleted directory does not close the
        descriptor every other folder shares (Twisted closes it)."""

        def __init__(self, reactor: Any, overflowed: Any) -> None:
            super().__init__(reactor)  # type: ignore[no-untyped-call]
            self._overflowed = overflowed
            self.broken = False

        def drain(self) -> bool:
            """Read every event already queued, without waiting; False if
            the descriptor failed (nothing can be trusted from it)."""
            while not self.broken:
                try:
                    data = os.read(self._fd, 65536)
                except BlockingIOError:
                    return True
                except OSError:
                    self.broken = True
                    break
                if not data:
                    self.broken = True
                    break
                self._doRead(data)
            return False

        def connectionLost(self, reason: Any) -> None:
            super().connectionLost(reason)  # type: ignore[no-untyped-call]
            self._fd = -1  # closed: never read or closed again (see doRead)
            self.broken = True

        def doRead(self) -> Any:
            if self._fd < 0:
                # A reactor may still hand over an event it polled before a
                # cleanup in the same turn closed the descriptor.
                return None
            if not self.drain():
                log.warn("the inotify descriptor failed; polling from now on")
                return CONNECTION_LOST
            return None

        def _doRead(self, data: bytes) -> None:
            self._buffer += data
            while len(self._buffer) >= 16:
                wd, mask, _cookie, size = struct.unpack_from("=LLLL", self._buffer)
                if len(self._buffer) < 16 + size:
                    return  # the rest of this event comes with the next read
                name = self._buffer[16 : 16 + size].rstrip(b"\0")
                self._buffer = self._buffer[16 + size :]
                if mask & inotify.IN_Q_OVERFLOW:
                    self._overflowed()
                    continue
                watch = self._watchpoints.get(wd)
                if watch is None:
                    continue  # removed by us since the event was queued
                path = watch.path.asBytesMode()
                watch._notify(path.child(name) if name else path, mask)
                if mask & inotify.IN_IGNORED:
                    # The kernel removed the watch itself (its directory was
                    # deleted, or its file system unmounted).
                    self._watchpoints.pop(wd, None)
                    if self._watchpaths.get(watch.path) == wd:
                        del self._watchpaths[watch.path]
