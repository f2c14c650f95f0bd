"""When a folder's check may skip listing it: nothing can have changed.

A check (IMAP NOOP and CHECK, STATUS, the watcher's poll) lists ``new/`` and
``cur/`` when their signatures say so, under the folder lock, and reads the
index for what the listeners were not told.  Where inotify watches the
folder (:meth:`.watch.FolderWatcher.quiet`), every change to those
directories raises an event, so a check that finds, after reading the
events already queued, all of these as they were at the start of the last
complete check has nothing to find, and is skipped:

* the watcher's count of events for the folder (creates, renames and
  deletions in ``new/`` and ``cur/``; pings of ``mailsrv-lock``, which every
  mailsrv process touches after committing a change; the directories'
  own removal or renaming), with no queue overflow and no lost watch;
* the index: SQLite's ``data_version`` (a commit by any other connection:
  another worker, ``mailsrv deliver``, this process's writer thread, even
  one that died before its ping), this process's own change count, and the
  index file still being the one open (``mailsrv reindex`` replaces it);
* the UID list's inode and size (another process took UIDs).

The start of the check, not its end, is the reference: an event that
arrives while it runs makes the next check a full one.  One more rule keeps
what :func:`.scan.stale` guards against: a change within the same clock tick
as the recorded signature of ``cur/`` leaves that signature alone, and the
full check only lists ``cur/`` once the signature has aged.  So a check after
events in ``cur/`` is only remembered as complete if the recorded signature
is trusted; until then every check is a full one, as without inotify.
"""

from __future__ import annotations

import attrs

from mailsrv.storage.maildir.indexed import IndexedFolder
from mailsrv.storage.maildir.watch import Quiet

__all__ = ["Look", "QuietGate"]


@attrs.frozen
class Look:
    """The state a check started from (None parts: not known, so not quiet)."""

    quiet: Quiet | None
    version: tuple[int, int] | None = None
    uidlist: tuple[int, int] | None = None
    #: Whether ``cur/`` had events since the last complete check: how the
    #: check got here, not part of the state it is compared on.
    cur_touched: bool = attrs.field(default=True, eq=False)


class QuietGate:
    """Remembers where the folder's last complete check started."""

    def __init__(self) -> None:
        self._clean: Look | None = None

    def look(self, folder: IndexedFolder, quiet: Quiet | None) -> Look | None:
        """The state now, or None when the check may be skipped."""
        index = folder.index
        if quiet is None or folder.closed or index is None or index.replaced():
            self._clean = None
            return Look(None)
        try:
            uidlist: tuple[int, int] | None = folder.uidlist.signature()
        except OSError:
            uidlist = None
        now = Look(quiet, folder.version(), uidlist)
        clean = self._clean
        if clean is not None and uidlist is not None and now == clean:
            return None
        touched = (
            clean is None
            or clean.quiet is None
            or quiet.epoch != clean.quiet.epoch
            or quiet.cur_events != clean.quiet.cur_events
        )
        return attrs.evolve(now, cur_touched=touched)

    def looked(self, folder: IndexedFolder, look: Look) -> None:
        """A full check that started at ``look`` is done: later checks are
        compared with it, unless ``cur/`` changed and its recorded
        signature is too recent to tell a same-tick change (see module)."""
        if look.quiet is None or look.uidlist is None:
            return
        if look.cur_touched and not folder.cur_trusted():
            return
        self._clean = look

    def forget(self) -> None:
        """The next check is a full one."""
        self._clean = None
