"""One folder's files, UID list and index, kept in step under the folder lock.

:class:`IndexedFolder` is what every operation of a
:class:`~mailsrv.storage.maildir.folder.MaildirMailbox` stands on:

* the lock: every change to a folder's files, UID list or index happens
  under an exclusive ``flock`` of its ``mailsrv-lock`` file, held for a
  short critical section, so several mailsrv processes (the daemon and
  ``mailsrv deliver``) can share one Maildir.  Programs that do not take
  the lock (Postfix, procmail, mutt) only ever rename and create files,
  which the catch-up scan (:mod:`.scan`) finds;
* the index, opened (or reopened after another process replaced it, or
  rebuilt from the files when it is damaged: :mod:`.recovery`) whenever the
  lock is taken;
* the bookkeeping of a change (:class:`Write`): UIDs are fsynced into the
  UID list before any file shows them, and the index records the change
  after the files do.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence

import attrs

from mailsrv import observe
from mailsrv.errors import LimitExceeded, NoSuchMailbox, StorageError
from mailsrv.log import get_logger
from mailsrv.storage.maildir import recovery, scan
from mailsrv.storage.maildir.index import Index, IndexCorrupt, Row, is_corruption
from mailsrv.storage.maildir.keywords import KeywordTable
from mailsrv.storage.maildir.layout import (
    INDEX_NAME,
    KEYWORDS_NAME,
    LOCK_NAME,
    TMP_MAX_AGE,
    UIDLIST_NAME,
    dir_signature,
    signature_parts,
    signature_value,
)
from mailsrv.storage.maildir.uidlist import UidList, UidListData, folder_guid

__all__ = ["IndexedFolder", "Write"]

# One namespace for the whole backend: log lines name it, not its modules.
log = get_logger("mailsrv.storage.maildir")


@attrs.define
class Write:
    """Meta values of one locked critical section, committed with its changes."""

    uidnext: int
    modseq: int
    uidlist_ino: int
    uidlist_off: int
    uidlist_lines: int
    hints: dict[str, int]
    uidls: dict[str, str] = attrs.Factory(dict)
    bumped: bool = False

    def next_modseq(self) -> int:
        if not self.bumped:
            self.modseq += 1
            self.bumped = True
        return self.modseq


class IndexedFolder:
    """The files, UID list, keyword table and index of the folder at ``path``.

    :param root: the account's Maildir root (where UIDVALIDITYs are minted).
    :param name: the mailbox name, for messages.
    :param warn_once: logs a warning about the tree once per storage.
    """

    def __init__(self, root: str, path: str, name: str, warn_once: Callable[[str], None]) -> None:
        self.root = root
        self.path = path
        self.name = name
        self.warn_once = warn_once
        self.cur = os.path.join(path, "cur")
        self.new = os.path.join(path, "new")
        self.tmp = os.path.join(path, "tmp")
        self.keywords = KeywordTable(os.path.join(path, KEYWORDS_NAME))
        self.uidlist = UidList(os.path.join(path, UIDLIST_NAME))
        self.index_path = os.path.join(path, INDEX_NAME)
        #: The open index; None before the first lock and after a failed rebuild.
        self.index: Index | None = None
        #: Why the next index built replaces one (for the metrics).
        self._rebuild_reason: str | None = None
        self.closed = False
        #: HIGHESTMODSEQ and UIDNEXT as the mailbox's listeners were last
        #: told: announcements start above them.
        self.seen_modseq = 0
        self.seen_uidnext = 0
        #: Called just before this object follows an index another process
        #: put in place of the one it has open (``mailsrv reindex``), while
        #: the old one can still be read: the mailbox tells its listeners
        #: what that one holds that they were not told yet.
        self.before_reopen: Callable[[], None] | None = None
        #: The UIDs of the index left behind at the last reopen, until the
        #: mailbox has told its listeners what the new one lacks of them.
        self.replaced_uids: tuple[int, ...] | None = None
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self._local_version = 0
        self._runs_cache: tuple[Index, tuple[int, object], list[tuple[int, int]]] | None = None
        self._names_cache: tuple[Index, tuple[int, int], set[str]] | None = None
        self._guid: tuple[int, str] | None = None
        with self.locked():  # opens the index, rebuilding it if it is damaged
            self._clean_tmp()
        self.seen_modseq = self.db.get_int("highest_modseq")
        self.seen_uidnext = self.db.get_int("uidnext")

    def mailbox_id(self, uidvalidity: int) -> str:
        """The folder's MAILBOXID (RFC 8474): the UID list's GUID, read once
        per UIDVALIDITY (the two change together, and only together)."""
        if self._guid is None or self._guid[0] != uidvalidity:
            header = self.uidlist.read_header()
            if header is None or header.uidvalidity != uidvalidity:
                # Mid-recovery: not to be remembered.
                return folder_guid(UidListData(uidvalidity=uidvalidity, uidnext=1))
            self._guid = (uidvalidity, folder_guid(header))
        return self._guid[1]

    # -- the lock and the open index ------------------------------------------------

    @property
    def db(self) -> Index:
        """The index, opened first if it is not."""
        if self.closed:
            raise NoSuchMailbox(f"mailbox {self.name!r} was deleted or renamed")
        if self.index is None:
            # A rebuild failed earlier (a full disk?): try again now.
            with self.locked():
                if self.index is None:
                    self.open_index()
        assert self.index is not None
        return self.index

    def close(self) -> None:
        """Forget the folder (it was deleted or renamed): later calls fail."""
        self.closed = True
        if self.index is not None:
            with contextlib.suppress(sqlite3.Error):
                self.index.close()
            self.index = None
        if self._lock_fd is not None and self._lock_depth == 0:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __del__(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock (re-entrant within this object); the index
        is open (opened, reopened or rebuilt as needed) inside."""
        if self.closed:
            raise NoSuchMailbox(f"mailbox {self.name!r} was deleted or renamed")
        if self._lock_depth == 0:
            self._lock()
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def locked_if_free(self) -> Iterator[bool]:
        """:meth:`locked` if the lock can be had at once; else yield False
        without waiting (a reactor thread must not wait for another
        process's or thread's write)."""
        if self.closed:
            raise NoSuchMailbox(f"mailbox {self.name!r} was deleted or renamed")
        if self._lock_depth > 0:
            with self.locked():
                yield True
            return
        try:
            self._lock(blocking=False)
        except BlockingIOError:
            yield False
            return
        self._lock_depth += 1
        try:
            yield True
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _lock(self, blocking: bool = True) -> None:
        """Take the lock and make sure the index is open and current
        (``blocking=False``: BlockingIOError if someone else holds it)."""
        if self._lock_fd is None:
            try:
                self._lock_fd = os.open(
                    os.path.join(self.path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600
                )
            except FileNotFoundError:
                raise NoSuchMailbox(f"mailbox {self.name!r} no longer exists") from None
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            if not os.path.isdir(self.path):
                raise NoSuchMailbox(f"mailbox {self.name!r} no longer exists")
            if self.index is None:
                self._lock_depth += 1
                try:
                    self.open_index()
                finally:
                    self._lock_depth -= 1
            elif self.index.replaced():
                self._reopen()
        except BaseException:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            raise

    def _reopen(self) -> None:
        """Another process replaced the index file: use the new one (lock held)."""
        log.info("index {path} was replaced; reopening it", path=self.index_path)
        if self.index is not None:
            if self.before_reopen is not None:
                self.before_reopen()
            with contextlib.suppress(sqlite3.Error):
                self.replaced_uids = self.index.uids()
            with contextlib.suppress(sqlite3.Error):
                self.index.close()
            self.index = None
        self._lock_depth += 1  # open_index may sync, which takes the lock again
        try:
            self.open_index()
        finally:
            self._lock_depth -= 1
        self.changed()
        # MODSEQs restart above the old ones after a rebuild; announcing every
        # message as changed would flood idle sessions, so start from here
        # (what arrived or went meanwhile is told by UID: replaced_uids).
        self.seen_modseq = self.db.get_int("highest_modseq")
        self.seen_uidnext = min(self.seen_uidnext, self.db.get_int("uidnext"))

    def changed(self) -> None:
        """This process changed the index: cached answers are stale, and
        other processes watching the folder are told (:meth:`ping`)."""
        self._local_version += 1
        self.ping()

    def ping(self) -> None:
        """Tell other processes that the index holds a change they have not
        announced: touch ``mailsrv-lock``, whose attribute change their
        watchers hear at once (:mod:`.watch`), after the change's
        transaction has committed, so what they read shows it.

        The change itself shows in ``cur/`` too, but an event there means
        anything (a mail reader's rename), so the watcher waits for a burst
        to settle and rescans; this one means "read the index"."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.utime(self._lock_fd)

    def version(self) -> tuple[int, int]:
        """Changes since the last call by another connection (SQLite's
        ``data_version``: another process, the writer thread) and by this one."""
        return self.db.data_version(), self._local_version

    def uids(self) -> tuple[int, ...]:
        """Every UID, ascending (from :meth:`uid_runs`)."""
        return tuple(itertools.chain.from_iterable(range(a, b + 1) for a, b in self.uid_runs()))

    def uid_runs(self) -> list[tuple[int, int]]:
        """Every UID as inclusive runs, ascending; cached until the set of
        UIDs changes (flag changes do not: a SELECT after another session's
        STORE need not read 100,000 rows again).  New messages only extend
        the cached runs: the version is read before the UIDs, so a change in
        between only costs a second read next time."""
        db = self.db
        key = db.uid_set_version()
        cached = self._runs_cache
        if cached is not None and cached[0] is db and cached[1] != key:
            runs = self._extended_runs(db, cached[1], key, cached[2])
            if runs is not None:
                self._runs_cache = cached = (db, key, runs)
        if cached is None or cached[0] is not db or cached[1] != key:
            self._runs_cache = cached = (db, key, db.uid_runs())
        return cached[2]

    @staticmethod
    def _extended_runs(
        db: Index, old: tuple[int, object], new: tuple[int, object], runs: list[tuple[int, int]]
    ) -> list[tuple[int, int]] | None:
        """``runs`` with the UIDs added above their last one, when nothing was
        deleted since (same deletion count) and those UIDs account for the
        whole growth of the message count; None otherwise (read them all)."""
        if old[1] != new[1] or new[0] <= old[0]:
            return None
        last = runs[-1][1] if runs else 0
        added = db.uid_runs(last)
        if sum(b - a + 1 for a, b in added) != new[0] - old[0]:
            return None  # a UID below the last one came too (a late writer's hint)
        runs = list(runs)
        if added and runs and added[0][0] == last + 1:
            runs[-1] = (runs[-1][0], added[0][1])
            added = added[1:]
        runs.extend(added)
        return runs

    def indexed_names(self) -> set[str]:
        """The file names in cur/ the index knows (cached until it changes):
        reading 100,000 names back from SQLite costs more than listing the
        directory."""
        # Keyed by the Index too: data_version numbers only one connection's
        # view, and a rebuilt index's new connection may count from the same
        # value, which would hand the new index the old one's names.
        db = self.db
        key = self.version()
        cached = self._names_cache
        if cached is None or cached[0] is not db or cached[1] != key:
            self._names_cache = cached = (db, key, db.filenames())
        return cached[2]

    def shed(self) -> None:
        """Drop what is cheap to read again and big to keep (the indexed file
        names: 100,000 names are megabytes) while nobody uses the folder."""
        self._names_cache = None

    # -- opening and rebuilding (lock held) -------------------------------------------

    def open_index(self) -> None:
        """Open the index and catch up with the files; a damaged index is
        moved aside and rebuilt, wherever the damage shows (lock held)."""
        for directory in (self.cur, self.new, self.tmp):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        try:
            self._load_index()
            self.sync()
        except Exception as exc:
            if not is_corruption(exc):
                raise
            self.discard_index(str(exc) or type(exc).__name__)
            self._load_index()
            self.sync()

    def _load_index(self) -> None:
        """Open the index, or build a new one from the files and the UID
        list (repaired or recreated first if need be)."""
        try:
            self.index = Index.open(self.index_path)
        except IndexCorrupt as exc:
            # An empty one is only replaced (Index.create below): a process
            # killed while creating it left nothing to keep or warn about.
            if os.path.exists(self.index_path) and not exc.empty:
                self.discard_index(str(exc))
            exc.close()
        floor = self.floor()
        if self.index is not None and self.index.get_int("highest_modseq") < floor:
            self.discard_index(
                f"its HIGHESTMODSEQ {self.index.get_int('highest_modseq')} is below {floor}, "
                "which was handed out: it lost changes"
            )
        index = self.index
        # The usual case: only the header is needed to cross-check.
        if index is not None and self.uidlist.read_uidvalidity() == index.get_int("uidvalidity"):
            return
        data = recovery.read_uidlist(self, index)
        fresh = False
        if data is None:  # no UID list at all
            fresh = recovery.recreate_uidlist(self, index)
            data = self.uidlist.read()
            if data is None:
                raise StorageError(f"cannot write {self.uidlist.path}")
        if index is not None and index.get_int("uidvalidity") != data.uidvalidity:
            log.warn(
                "index {path} disagrees with {uidlist} on UIDVALIDITY; rebuilding",
                path=self.index_path,
                uidlist=self.uidlist.path,
            )
            index.close()
            self.index = None
            self._rebuild_reason = "mismatch"
        if self.index is None:
            # A rebuilt index starts MODSEQ above anything handed out before
            # (microseconds since the epoch, and above the recorded floor),
            # so CONDSTORE clients refetch.
            modseq = 1 if fresh and not floor else max(time.time_ns() // 1000, floor + 1)
            self.index = Index.create(self.index_path, data.uidvalidity, data.next_free, modseq)
            self.sync(force=True, rebuild=True)
            reason, self._rebuild_reason = self._rebuild_reason, None
            if reason is not None or not fresh:
                # Not a new folder: an index built again from its files.
                observe.index_rebuilt("maildir", reason or "missing")

    def floor(self) -> int:
        """The highest MODSEQ this folder handed out (lock held)."""
        assert self._lock_fd is not None
        return recovery.read_floor(self._lock_fd)

    def discard_index(self, reason: str) -> None:
        """Move a damaged index aside, kept for diagnosis (lock held); the
        next open rebuilds it."""
        recovery.discard_index(self.index_path, self.index, reason)
        self.index = None
        self._rebuild_reason = "damaged"

    def rebuild_damaged(self, exc: BaseException) -> tuple[int, ...] | None:
        """The index failed with damage: move it aside and rebuild it from the
        files and the UID list (same UIDVALIDITY and UIDs), unless another
        process or an earlier call already did.  Returns the UIDs sessions
        were last given, if known, for the mailbox to tell what differs."""
        failed = self.index
        runs = self._runs_cache[2] if self._runs_cache is not None else None
        known = None
        if runs is not None:
            known = tuple(itertools.chain.from_iterable(range(a, b + 1) for a, b in runs))
        with self.locked():  # reopens an index another process replaced
            if self.index is failed and failed is not None:
                self.discard_index(str(exc) or type(exc).__name__)
                self.open_index()
            self.changed()
        return known

    def rebuild(self) -> int:
        """Throw the index away and rebuild it from the files; return the count."""
        with self.locked():
            if self.index is not None:
                with contextlib.suppress(sqlite3.Error):
                    self.index.close()
                self.index = None
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.index_path + suffix)
            recovery.crash_point("reindex-dropped")
            self._rebuild_reason = "requested"
            self.open_index()
            self.changed()
        self.seen_modseq = self.db.get_int("highest_modseq")
        self.seen_uidnext = self.db.get_int("uidnext")
        return self.db.counters()[0]

    def _clean_tmp(self) -> None:
        """Remove what crashed writers left in tmp/ 36 hours ago.

        Judged by the inode's change time, which creating, linking or
        dating a file sets to now: the modification time of a staged
        message is its INTERNALDATE (an APPEND of an old message, a COPY's
        link), which says nothing of when a writer put it there."""
        cutoff = time.time() - TMP_MAX_AGE
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.tmp):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_ctime < cutoff:
                        os.unlink(entry.path)

    # -- the bookkeeping of a change (lock held) --------------------------------------

    def prepare(self) -> Write:
        """Read meta and catch up with the UID list (lock held)."""
        db = self.db
        uidnext = db.get_int("uidnext")
        modseq = db.get_int("highest_modseq")
        ino = db.get("uidlist_ino")
        off = db.get("uidlist_off")
        lines = db.get("uidlist_lines")
        lines = lines if isinstance(lines, int) else 0
        hints: dict[str, int] = {}
        uidls: dict[str, str] = {}
        try:
            cur_ino, size = self.uidlist.signature()
        except FileNotFoundError:
            log.warn("{path} vanished; rewriting it from the index", path=self.uidlist.path)
            entries = db.uidlist_entries()
            self.uidlist.rewrite(db.get_int("uidvalidity"), uidnext, entries)
            cur_ino, size = self.uidlist.signature()
            ino, off, lines = cur_ino, size, len(entries)
        data: UidListData | None = None
        end = size
        if ino == cur_ino and isinstance(off, int) and off <= size:
            if size > off:
                tail, end = self.uidlist.read_tail(off)
                if tail.torn or tail.damaged:
                    data = recovery.read_uidlist(self, db)
                else:
                    hints, uidls = tail.entries, tail.pop3_uidls
                    lines += tail.lines
        else:
            # Replaced (by a compaction we missed, or from outside), or cut
            # short (records lost: the index knows them): read all of it.
            data = recovery.read_uidlist(self, db, replaced=ino is not None)
            if data is None:
                raise StorageError(f"{self.uidlist.path} is unreadable")
        if data is not None:
            if data.uidvalidity != db.get_int("uidvalidity"):
                raise IndexCorrupt("UIDVALIDITY changed under us")
            hints, uidls = data.entries, data.pop3_uidls
            uidnext = max(uidnext, data.next_free)
            cur_ino, end = self.uidlist.signature()
            lines = data.lines
        if hints:
            uidnext = max(uidnext, max(hints.values()) + 1)
        return Write(uidnext, modseq, cur_ino, end, lines, hints, uidls)

    def begin(self) -> Write:
        """:meth:`prepare` for a change (lock held).

        UIDs in the UID list's tail that the index has not recorded belong
        to files a crashed writer may have left in new/ or cur/.  They are
        indexed first: committing this change moves the recorded end of the
        list past them, after which their UIDs would be lost.
        """
        write = self.prepare()
        if write.hints:
            self.sync(force=True)
            write = self.prepare()
        return write

    def commit_meta(self, write: Write) -> None:
        """Record ``write``'s meta values (inside the change's transaction)."""
        db = self.db
        db.put("uidnext", write.uidnext)
        db.put("highest_modseq", write.modseq)
        db.put("uidlist_ino", write.uidlist_ino)
        db.put("uidlist_off", write.uidlist_off)
        db.put("uidlist_lines", write.uidlist_lines)
        lock_fd = self._lock_fd
        if lock_fd is not None:
            # The floor rises once the change is committed, still before it
            # is acknowledged.  Raised first, a process killed before COMMIT
            # left the floor above the index's HIGHESTMODSEQ, and the next
            # open threw a sound index away as one that had lost changes.
            modseq = write.modseq
            db.after_commit(lambda: recovery.raise_floor(lock_fd, modseq))
        recovery.crash_point("meta-recorded")

    def allocate(self, write: Write, entries: Sequence[tuple[str, str | None]]) -> list[int]:
        """Durably take UIDs for ``(base, pop3_uidl)`` before the files show."""
        if not entries:
            return []
        uids = list(range(write.uidnext, write.uidnext + len(entries)))
        if uids[-1] >= 2**32:
            raise LimitExceeded("UIDs of this mailbox are exhausted; run mailsrv reindex")
        write.uidlist_off = self.uidlist.append(
            [(uid, base, uidl) for uid, (base, uidl) in zip(uids, entries, strict=True)]
        )
        write.uidlist_ino = self.uidlist.signature()[0]
        write.uidlist_lines += len(uids)
        write.uidnext += len(uids)
        return uids

    def _hint(self, write: Write, base: str, taken: set[int]) -> int | None:
        uid = write.hints.get(base)
        if uid is None or uid in taken or uid >= write.uidnext:
            return None
        if self.db.row(uid) is not None or self.db.is_expunged(uid):
            return None
        return uid

    def assign_uids(
        self,
        write: Write,
        bases: Sequence[str],
        taken: set[int],
        known: dict[str, int] | None = None,
    ) -> dict[str, int]:
        """A UID for each base name: one already ``known``, else the UID list's
        hint (a file renamed or re-indexed keeps its UID), else a fresh one;
        the fresh ones are allocated (fsynced) together."""
        uid_of: dict[str, int] = {}
        needs: list[tuple[str, str | None]] = []
        for base in bases:
            uid = (known or {}).get(base) or self._hint(write, base, taken)
            if uid is None:
                needs.append((base, None))
            else:
                uid_of[base] = uid
                taken.add(uid)
        for (base, _), uid in zip(needs, self.allocate(write, needs), strict=True):
            uid_of[base] = uid
        return uid_of

    def maybe_compact(self, write: Write) -> None:
        """Rewrite the UID list when most of its lines name expunged files."""
        db = self.db
        messages = db.counters()[0]
        if write.uidlist_lines <= 2 * messages + 1000:
            return
        entries = db.uidlist_entries()
        size = self.uidlist.rewrite(db.get_int("uidvalidity"), write.uidnext, entries)
        recovery.crash_point("compact-rewritten")
        write.uidlist_ino = self.uidlist.signature()[0]
        write.uidlist_off = size
        write.uidlist_lines = len(entries)
        with db.transaction():
            self.commit_meta(write)

    # -- cur/ as this process changes it ----------------------------------------------

    def path_of(self, row: Row) -> str:
        return os.path.join(self.cur, row.filename)

    def cur_signature(self) -> str:
        return dir_signature(self.cur)[0]

    def own_cur_change(self, before: str) -> None:
        """After this process changed cur/ (lock held, inside the
        transaction that records the change): if cur/ was as the index last
        saw it (``before``, its signature then), record the new signature,
        so our own rename does not make the next command rescan the whole
        directory.  Otherwise leave it: the next sync must look."""
        if before != signature_parts(self.db.get("sig_cur"))[0]:
            return
        signature, trusted = dir_signature(self.cur)
        self.db.put("sig_cur", signature_value(signature, trusted))

    def cur_trusted(self) -> bool:
        """Whether cur/'s recorded signature is old enough to show any later
        change (see :func:`.scan.stale`)."""
        return signature_parts(self.db.get("sig_cur"))[1]

    def needs_scan(self) -> bool:
        """Whether :meth:`sync` would list ``new/`` or ``cur/``: read
        without the lock, from the signatures the index keeps."""
        db = self.db
        return scan.stale(db, self.new, "sig_new", recent_is_stale=True) or scan.stale(
            db, self.cur, "sig_cur"
        )

    def reload(self, uid: int) -> Row | None:
        """The row of ``uid`` after catching up with the files."""
        with self.locked():
            self.sync()
        return self.db.row(uid)

    # -- catching up with the files (lock held) ---------------------------------------

    def sync(self, force: bool = False, rebuild: bool = False) -> None:
        """Bring the index in line with new/ and cur/ (lock held): see
        :func:`.scan.sync`."""
        scan.sync(self, force, rebuild)
