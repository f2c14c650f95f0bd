"""One Maildir++ folder as an :class:`~mailsrv.interfaces.IMailbox`.

Each folder keeps a SQLite index (:mod:`mailsrv.storage.maildir.index`), a
cache rebuilt from the files when lost, and ``mailsrv-uidlist``
(:mod:`mailsrv.storage.maildir.uidlist`), the durable record that keeps UIDs
from ever being reused.

Concurrency: every change to a folder's files, UID list or index happens
under an exclusive ``flock`` of the folder's ``mailsrv-lock`` file, held
for a short critical section, so several mailsrv processes (the daemon and
``mailsrv deliver``) can share one Maildir.  Programs that do not take the
lock (Postfix, procmail, mutt) only ever rename and create files, which the
directory scan of :meth:`MaildirMailbox.check` picks up.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import functools
import os
import shutil
import signal
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from mailsrv.errors import (
    LimitExceeded,
    MailboxInUse,
    NoSuchMailbox,
    NoSuchMessage,
    StorageError,
)
from mailsrv.interfaces import (
    SYSTEM_FLAGS,
    IMailbox,
    IMailboxListener,
    IMessage,
    IMessageCache,
    MailboxStatus,
    MessageInfo,
    StoreMode,
    StoreResult,
)
from mailsrv.storage.maildir.index import Index, IndexCorrupt, Row, is_corruption, move_aside
from mailsrv.storage.maildir.keywords import KeywordTable, sorted_info, split_flags
from mailsrv.storage.maildir.layout import (
    CHUNK,
    DOVECOT_UIDLIST_NAME,
    INDEX_NAME,
    KEYWORDS_NAME,
    LOCK_NAME,
    POP3_LOCK_NAME,
    TMP_MAX_AGE,
    UIDLIST_NAME,
    datetime_ns,
    dir_signature,
    fsync_dir,
    lf_to_crlf,
    ns_datetime,
    open_wire,
    signature_value,
    size_fields,
    split_filename,
    unique_name,
    wire_size,
)
from mailsrv.storage.maildir.uidlist import UidList, UidListData, mint_uidvalidity
from mailsrv.storage.maildir.watch import Watcher

# One namespace for the whole backend: admins' log lines name it, not its modules.
log = Logger(namespace="mailsrv.storage.maildir")

# --------------------------------------------------------------------------
# Crash tests

#: Fault injection for the crash tests (tests/test_maildir_crash.py): with
#: ``MAILSRV_CRASH_AT=NAME`` (or ``NAME@N``: the Nth time) in its
#: environment, a process kills itself with SIGKILL when it reaches the
#: point called NAME, so a test can stop a real daemon at an exact instant.
#: Unset, as it always is outside tests, it does nothing.
_CRASH_AT = os.environ.get("MAILSRV_CRASH_AT", "")
_crash_counts: dict[str, int] = {}


def _crash_point(name: str) -> None:
    if not _CRASH_AT:
        return
    point, _, nth = _CRASH_AT.partition("@")
    if point == name:
        _crash_counts[name] = _crash_counts.get(name, 0) + 1
        if _crash_counts[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------
# One folder

_T = TypeVar("_T")


def _recovering(method: Callable[..., _T]) -> Callable[..., _T]:
    """Run a mailbox operation once more after rebuilding a damaged index.

    Index damage can surface at any query ("database disk image is
    malformed" deep inside a FETCH), so every operation that reads the
    index gets this.  Running one twice is safe: each either changes no
    file, or changes files only after its last index read and records the
    change through :meth:`MaildirMailbox._record`, which never raises.
    Iterator arguments are read into lists first, for the second run.
    """

    @functools.wraps(method)
    def run(self: MaildirMailbox, *args: Any, **kwargs: Any) -> _T:
        args = tuple(list(arg) if isinstance(arg, Iterator) else arg for arg in args)
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            if not is_corruption(exc):
                raise
            self._recover(exc)
        return method(self, *args, **kwargs)

    return run


@attrs.define
class _Write:
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


@implementer(IMailbox, IMessageCache)
class MaildirMailbox:
    """One Maildir++ folder, shared by every session of one storage instance.

    :meth:`MaildirAccount.get_mailbox` hands out this same object to every
    caller for a folder (while someone holds it), so listeners of all
    sessions hear each other's changes at once.
    """

    def __init__(
        self,
        root: str,
        path: str,
        name: str,
        *,
        watcher: Watcher,
        warn_once: Callable[[str], None],
    ) -> None:
        self._watcher = watcher
        self._warn_once = warn_once
        self._root = root
        self.path = path
        self.name = name
        self.special_use: frozenset[str] = frozenset()
        self._cur = os.path.join(path, "cur")
        self._new = os.path.join(path, "new")
        self._tmp = os.path.join(path, "tmp")
        self._listeners: list[IMailboxListener] = []
        self._closed = False
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self._keywords = KeywordTable(os.path.join(path, KEYWORDS_NAME))
        self._uidlist = UidList(os.path.join(path, UIDLIST_NAME))
        self._index_path = os.path.join(path, INDEX_NAME)
        self._index: Index | None = None
        self._local_version = 0
        self._uids_cache: tuple[tuple[int, int], tuple[int, ...]] | None = None
        self._names_cache: tuple[tuple[int, int], set[str]] | None = None
        self._seen_modseq = 0
        self._seen_uidnext = 0
        with self._locked():  # opens the index, rebuilding it if it is damaged
            self._clean_tmp()
        self._seen_modseq = self._db.get_int("highest_modseq")
        self._seen_uidnext = self._db.get_int("uidnext")

    def __repr__(self) -> str:
        return f"<MaildirMailbox {self.name!r} at {self.path!r}>"

    # -- plumbing -----------------------------------------------------------

    @property
    def _db(self) -> Index:
        if self._closed:
            raise NoSuchMailbox(f"mailbox {self.name!r} was deleted or renamed")
        if self._index is None:
            # A rebuild failed earlier (a full disk?): try again now.
            with self._locked():
                if self._index is None:
                    self._open_index()
        assert self._index is not None
        return self._index

    def close(self) -> None:
        """Forget the folder (it was deleted or renamed): later calls fail."""
        self._closed = True
        if self._index is not None:
            with contextlib.suppress(sqlite3.Error):
                self._index.close()
            self._index = None
        if self._lock_fd is not None and self._lock_depth == 0:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._watcher.unwatch(self)

    def __del__(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the folder's lock (re-entrant within this object); the index
        is open (opened, reopened or rebuilt as needed) inside."""
        if self._closed:
            raise NoSuchMailbox(f"mailbox {self.name!r} was deleted or renamed")
        if self._lock_depth == 0:
            if self._lock_fd is None:
                try:
                    self._lock_fd = os.open(
                        os.path.join(self.path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600
                    )
                except FileNotFoundError:
                    raise NoSuchMailbox(f"mailbox {self.name!r} no longer exists") from None
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                if not os.path.isdir(self.path):
                    raise NoSuchMailbox(f"mailbox {self.name!r} no longer exists")
                if self._index is None:
                    self._lock_depth += 1
                    try:
                        self._open_index()
                    finally:
                        self._lock_depth -= 1
                elif self._index.replaced():
                    self._reopen()
            except BaseException:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                raise
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _reopen(self) -> None:
        """Another process replaced the index file: use the new one (lock held)."""
        log.info("index {path} was replaced; reopening it", path=self._index_path)
        if self._index is not None:
            with contextlib.suppress(sqlite3.Error):
                self._index.close()
            self._index = None
        self._lock_depth += 1  # _open_index may sync, which takes the lock again
        try:
            self._open_index()
        finally:
            self._lock_depth -= 1
        self._changed()
        # MODSEQs restart above the old ones after a rebuild; announcing every
        # message as changed would flood idle sessions, so start from here.
        self._seen_modseq = self._db.get_int("highest_modseq")
        self._seen_uidnext = min(self._seen_uidnext, self._db.get_int("uidnext"))

    def _changed(self) -> None:
        self._local_version += 1

    def _info(self, row: Row) -> MessageInfo:
        return MessageInfo(
            uid=row.uid,
            flags=self._keywords.flags(row.info),
            internal_date=ns_datetime(row.mtime_ns),
            size=row.size,
            modseq=row.modseq,
        )

    # -- a damaged index --------------------------------------------------------

    def _floor(self) -> int:
        """The highest MODSEQ this folder handed out (lock held), kept in
        ``mailsrv-lock`` outside the index: an index whose HIGHESTMODSEQ is
        below it went back in time (its WAL lost or from another time, an
        old copy put back) and would hand out MODSEQs clients already saw."""
        assert self._lock_fd is not None
        value = os.pread(self._lock_fd, 32, 0).strip()
        return int(value) if value.isdigit() else 0

    def _raise_floor(self, modseq: int) -> None:
        """Record ``modseq`` as handed out (lock held; a write that survives
        the process being killed, as the index's WAL does)."""
        if self._lock_fd is not None and modseq > self._floor():
            os.pwrite(self._lock_fd, b"%020d\n" % modseq, 0)

    def _discard_index(self, reason: str) -> None:
        """Move a damaged index aside, kept for diagnosis (lock held); the
        next open rebuilds it."""
        # Renamed before the connection is closed: SQLite then leaves the
        # files as they are (closing would apply the WAL and delete it).
        kept = move_aside(self._index_path)
        if self._index is not None:
            with contextlib.suppress(sqlite3.Error):
                self._index.close()
            self._index = None
        log.warn(
            "index {path} cannot be used ({reason}); kept as {kept}, rebuilding it from the files",
            path=self._index_path,
            reason=reason,
            kept=kept,
        )

    def _recover(self, exc: BaseException) -> None:
        """The index failed with damage: move it aside and rebuild it from the
        files and the UID list (same UIDVALIDITY and UIDs), unless another
        process or an earlier call already did."""
        failed = self._index
        known = self._uids_cache[1] if self._uids_cache is not None else None
        with self._locked():  # reopens an index another process replaced
            if self._index is failed and failed is not None:
                self._discard_index(str(exc) or type(exc).__name__)
                self._open_index()
            self._changed()
        self._rebuilt(known)

    def _rebuilt(self, known: Sequence[int] | None) -> None:
        """Tell listeners what a rebuilt index shows differently from ``known``
        (the UIDs sessions were last given).  Every MODSEQ restarted above
        the old ones, so flags are not announced again."""
        db = self._db
        uids = db.uids()
        present = set(uids)
        gone = [uid for uid in known if uid not in present] if known is not None else []
        added = [uid for uid in uids if uid >= self._seen_uidnext]
        self._seen_modseq = db.get_int("highest_modseq")
        self._seen_uidnext = db.get_int("uidnext")
        for listener in list(self._listeners):
            try:
                if added:
                    listener.messages_added(self, added)
                if gone:
                    listener.messages_expunged(self, gone)
            except Exception:
                log.failure("mailbox listener {listener!r} failed", listener=listener)

    def _record(self, commit: Callable[[], None]) -> None:
        """Commit to the index a change the files already show (lock held).

        Once a message file is in place the change is done (RFC 3501
        6.3.11: a NO to APPEND means the message was not appended, and a
        client retries it), so failing to record it must neither fail the
        command nor undo it.  A damaged index is rebuilt from the files,
        which include the change; after any other failure the index stays
        behind, and the next look at the folder catches up: the UID list's
        tail names the new files' UIDs and cur/'s signature shows the change.
        """
        try:
            commit()
        except Exception as exc:
            try:
                if not is_corruption(exc):
                    raise
                self._recover(exc)
            except (sqlite3.Error, OSError, StorageError) as error:
                log.warn(
                    "could not record a change in {path} ({error}); "
                    "the next look at the folder catches up",
                    path=self._index_path,
                    error=str(error) or type(error).__name__,
                )
            except Exception:
                log.failure(
                    "recording a change in {path} failed; the next look at the folder catches up",
                    path=self._index_path,
                )
        self._changed()

    # -- opening, the UID list and synchronisation (all under the lock) ------

    def _open_index(self) -> None:
        """Open the index and catch up with the files; a damaged index is
        moved aside and rebuilt, wherever the damage shows (lock held)."""
        for directory in (self._cur, self._new, self._tmp):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        try:
            self._load_index()
            self._sync()
        except Exception as exc:
            if not is_corruption(exc):
                raise
            self._discard_index(str(exc) or type(exc).__name__)
            self._load_index()
            self._sync()

    def _load_index(self) -> None:
        try:
            self._index = Index.open(self._index_path)
        except IndexCorrupt as exc:
            if os.path.exists(self._index_path):
                self._discard_index(str(exc))
            exc.close()
        floor = self._floor()
        if self._index is not None and self._index.get_int("highest_modseq") < floor:
            self._discard_index(
                f"its HIGHESTMODSEQ {self._index.get_int('highest_modseq')} is below {floor}, "
                "which was handed out: it lost changes"
            )
        index = self._index
        fresh = False
        if index is not None:
            # The usual case: only the header is needed to cross-check.
            validity = self._uidlist.read_uidvalidity()
            if validity == index.get_int("uidvalidity"):
                return
        data = self._read_uidlist(index)
        if data is None:  # no UID list at all
            if index is not None:
                self._uidlist.rewrite(
                    index.get_int("uidvalidity"),
                    index.get_int("uidnext"),
                    index.uidlist_entries(),
                )
            else:
                adopted = UidList(os.path.join(self.path, DOVECOT_UIDLIST_NAME)).read()
                if adopted is not None:
                    log.info(
                        "adopting {path}: UIDVALIDITY {uidvalidity}, UIDNEXT {uidnext}",
                        path=os.path.join(self.path, DOVECOT_UIDLIST_NAME),
                        uidvalidity=adopted.uidvalidity,
                        uidnext=adopted.next_free,
                    )
                    self._uidlist.rewrite(
                        adopted.uidvalidity,
                        adopted.next_free,
                        [
                            (uid, base, adopted.pop3_uidls.get(base))
                            for base, uid in adopted.entries.items()
                            if not base.startswith("\0")
                        ],
                    )
                else:
                    fresh = True
                    self._uidlist.rewrite(mint_uidvalidity(self._root), 1, [])
            data = self._uidlist.read()
            if data is None:
                raise StorageError(f"cannot write {self._uidlist.path}")
        if index is not None and index.get_int("uidvalidity") != data.uidvalidity:
            log.warn(
                "index {path} disagrees with {uidlist} on UIDVALIDITY; rebuilding",
                path=self._index_path,
                uidlist=self._uidlist.path,
            )
            index.close()
            self._index = None
        if self._index is None:
            # A rebuilt index starts MODSEQ above anything handed out before
            # (microseconds since the epoch, and above the recorded floor),
            # so CONDSTORE clients refetch.
            modseq = 1 if fresh and not floor else max(time.time_ns() // 1000, floor + 1)
            self._index = Index.create(self._index_path, data.uidvalidity, data.next_free, modseq)
            self._sync(force=True, rebuild=True)

    def _read_uidlist(self, index: Index | None, replaced: bool = False) -> UidListData | None:
        """The whole UID list, repaired first if it cannot be taken as it is
        (lock held); None if there is none.  ``replaced``: it is not the
        file the index last read (cut short, or put back from a backup), so
        it may lack records the index knows."""
        data = self._uidlist.read()
        if data is None and not self._uidlist.exists():
            return None
        if data is None or data.torn or data.damaged or (replaced and self._lacks(data, index)):
            data = self._repair_uidlist(data, index)
        return data

    @staticmethod
    def _lacks(data: UidListData, index: Index | None) -> bool:
        """Whether the index knows UIDs the list does not (same UIDVALIDITY)."""
        if index is None or index.get_int("uidvalidity") != data.uidvalidity:
            return False
        if index.get_int("uidnext") > data.next_free:
            return True
        return any(base not in data.entries for _uid, base, _uidl in index.uidlist_entries())

    def _repair_uidlist(self, data: UidListData | None, index: Index | None) -> UidListData:
        """Make a damaged UID list trustworthy again before anything reads
        UIDs from it or appends to it (lock held).

        RFC 3501 2.3.1.1: under one UIDVALIDITY a UID names one message
        forever.  So a torn last line is never appended to, and the UID it
        held stays used (its file gets it back when the line names the file
        legibly); records the index still knows are put back; and a list
        whose header is unreadable or that holds lines that are not records
        is replaced: from the index when the index agrees on UIDVALIDITY,
        else with a new UIDVALIDITY (clients download the folder again)
        rather than guessing.
        """
        path = self._uidlist.path
        trusted = (
            index
            if index is not None
            and (data is None or index.get_int("uidvalidity") == data.uidvalidity)
            else None
        )
        broken = path + ".broken"
        entries: dict[str, int] = {}
        uidls: dict[str, str] = {}
        uidnext = 1
        if data is not None:
            entries = {b: u for b, u in data.entries.items() if not b.startswith("\0")}
            uidls = dict(data.pop3_uidls)
            uidnext = data.next_free
        if data is None or data.damaged:
            shutil.copyfile(path, broken)
            if trusted is None:
                validity = mint_uidvalidity(self._root)
                self._uidlist.rewrite(validity, 1, [])
                log.warn(
                    "{path} cannot be trusted (unreadable header or lines) and no index knows "
                    "its UIDs; kept as {broken}; UIDVALIDITY changes from {old} to {new}, so "
                    "clients download the folder again",
                    path=path,
                    broken=broken,
                    old=data.uidvalidity if data is not None else "unknown",
                    new=validity,
                )
                fresh = self._uidlist.read()
                assert fresh is not None
                return fresh
            what = f"kept as {broken}; rewritten from the index"
        else:
            what = "repaired" if data.torn else "records restored from the index"
        validity = data.uidvalidity if data is not None else 0
        if trusted is not None:
            validity = trusted.get_int("uidvalidity")
            taken = set(entries.values())
            for uid, base, uidl in trusted.uidlist_entries():
                if base not in entries and uid not in taken:
                    entries[base] = uid
                    taken.add(uid)
                    if uidl:
                        uidls[base] = uidl
            uidnext = max(uidnext, trusted.get_int("uidnext"))
        torn = ""
        if data is not None and data.torn:
            owner = self._torn_owner(data, entries)
            if owner is not None and data.torn_uid is not None:
                entries[owner] = data.torn_uid
            torn = f"; its torn last line counts UID {data.reserved} as used" + (
                f" and gives it back to {owner}" if owner else ""
            )
        self._uidlist.rewrite(
            validity, uidnext, [(uid, base, uidls.get(base)) for base, uid in entries.items()]
        )
        log.warn(
            "{path} was damaged{torn}; {what}; UIDVALIDITY {validity} kept",
            path=path,
            torn=torn,
            what=what,
            validity=validity,
        )
        repaired = self._uidlist.read()
        if repaired is None or repaired.torn or repaired.damaged:
            raise StorageError(f"cannot repair {path}")
        return repaired

    def _torn_owner(self, data: UidListData, entries: Mapping[str, int]) -> str | None:
        """The file a torn last line was written for, if its start names exactly one."""
        if data.torn_uid is None or not data.torn_base or data.torn_uid in entries.values():
            return None
        found = {
            split_filename(name)[0]
            for directory in (self._cur, self._new)
            for name in os.listdir(directory)
            if name.startswith(data.torn_base)
        }
        found -= set(entries)
        return found.pop() if len(found) == 1 else None

    def _prepare(self) -> _Write:
        """Read meta and catch up with the UID list (lock held)."""
        db = self._db
        uidnext = db.get_int("uidnext")
        modseq = db.get_int("highest_modseq")
        ino = db.get("uidlist_ino")
        off = db.get("uidlist_off")
        lines = db.get("uidlist_lines")
        lines = lines if isinstance(lines, int) else 0
        hints: dict[str, int] = {}
        uidls: dict[str, str] = {}
        try:
            cur_ino, size = self._uidlist.signature()
        except FileNotFoundError:
            log.warn("{path} vanished; rewriting it from the index", path=self._uidlist.path)
            entries = db.uidlist_entries()
            self._uidlist.rewrite(db.get_int("uidvalidity"), uidnext, entries)
            cur_ino, size = self._uidlist.signature()
            ino, off, lines = cur_ino, size, len(entries)
        data: UidListData | None = None
        end = size
        if ino == cur_ino and isinstance(off, int) and off <= size:
            if size > off:
                tail, end = self._uidlist.read_tail(off)
                if tail.torn or tail.damaged:
                    data = self._read_uidlist(db)
                else:
                    hints, uidls = tail.entries, tail.pop3_uidls
                    lines += tail.lines
        else:
            # Replaced (by a compaction we missed, or from outside), or cut
            # short (records lost: the index knows them): read all of it.
            data = self._read_uidlist(db, replaced=ino is not None)
            if data is None:
                raise StorageError(f"{self._uidlist.path} is unreadable")
        if data is not None:
            if data.uidvalidity != db.get_int("uidvalidity"):
                raise IndexCorrupt("UIDVALIDITY changed under us")
            hints, uidls = data.entries, data.pop3_uidls
            uidnext = max(uidnext, data.next_free)
            cur_ino, end = self._uidlist.signature()
            lines = data.lines
        if hints:
            uidnext = max(uidnext, max(hints.values()) + 1)
        return _Write(uidnext, modseq, cur_ino, end, lines, hints, uidls)

    def _begin(self) -> _Write:
        """:meth:`_prepare` for a change (lock held).

        UIDs in the UID list's tail that the index has not recorded belong
        to files a crashed writer may have left in new/ or cur/.  They are
        indexed first: committing this change moves the recorded end of the
        list past them, after which their UIDs would be lost.
        """
        write = self._prepare()
        if write.hints:
            self._sync(force=True)
            write = self._prepare()
        return write

    def _begin_recovering(self) -> _Write:
        """:meth:`_begin` on a folder other than the one an operation runs on
        (a MOVE's destination): its damaged index is its own to rebuild."""
        try:
            return self._begin()
        except Exception as exc:
            if not is_corruption(exc):
                raise
            self._recover(exc)
            return self._begin()

    def _commit_meta(self, write: _Write) -> None:
        db = self._db
        db.put("uidnext", write.uidnext)
        db.put("highest_modseq", write.modseq)
        self._raise_floor(write.modseq)
        db.put("uidlist_ino", write.uidlist_ino)
        db.put("uidlist_off", write.uidlist_off)
        db.put("uidlist_lines", write.uidlist_lines)

    def _allocate(self, write: _Write, entries: Sequence[tuple[str, str | None]]) -> list[int]:
        """Durably take UIDs for ``(base, pop3_uidl)`` before the files show."""
        if not entries:
            return []
        uids = list(range(write.uidnext, write.uidnext + len(entries)))
        if uids[-1] >= 2**32:
            raise LimitExceeded("UIDs of this mailbox are exhausted; run mailsrv reindex")
        write.uidlist_off = self._uidlist.append(
            [(uid, base, uidl) for uid, (base, uidl) in zip(uids, entries, strict=True)]
        )
        write.uidlist_ino = self._uidlist.signature()[0]
        write.uidlist_lines += len(uids)
        write.uidnext += len(uids)
        return uids

    def _hint(self, write: _Write, base: str, taken: set[int]) -> int | None:
        uid = write.hints.get(base)
        if uid is None or uid in taken or uid >= write.uidnext:
            return None
        if self._db.row(uid) is not None or self._db.is_expunged(uid):
            return None
        return uid

    def _assign_uids(
        self,
        write: _Write,
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
        for (base, _), uid in zip(needs, self._allocate(write, needs), strict=True):
            uid_of[base] = uid
        return uid_of

    def _sync(self, force: bool = False, rebuild: bool = False) -> None:
        """Bring the index in line with new/ and cur/ (lock held)."""
        db = self._db
        write = self._prepare()
        # UIDs in the list the index has not recorded: a writer died between
        # taking them and committing; its files get them now (see _begin).
        force = force or bool(write.hints)
        # new/ is small (only what arrived since the last look): rescan it
        # while its signature is too recent to trust.  cur/ can hold 100,000
        # names: a matching recent signature is taken at its word until it
        # ages (see _stale).
        scan_new = force or self._stale(self._new, "sig_new", recent_is_stale=True)
        scan_cur = force or self._stale(self._cur, "sig_cur")
        if not (scan_new or scan_cur):
            if (
                write.uidnext != db.get_int("uidnext")
                or write.uidlist_off != db.get("uidlist_off")
                or write.uidlist_ino != db.get("uidlist_ino")  # rewritten by a repair
            ):
                with db.transaction():
                    self._commit_meta(write)
            return
        taken: set[int] = set()
        arrived: dict[str, int] = {}  # base -> uid, moved from new/ now
        meta: dict[str, object] = {}
        if scan_new:
            arrived = self._take_new(write, taken)
            signature, trusted = dir_signature(self._new)
            meta["sig_new"] = signature_value(signature, trusted)
            if not arrived and not scan_cur:
                with db.transaction():
                    db.put("sig_new", meta["sig_new"])
                    self._commit_meta(write)
                return
        # cur/ always changes when something arrived, so list it then too.
        for _attempt in range(5):
            before, _ = dir_signature(self._cur)
            listing = [n for n in os.listdir(self._cur) if not n.startswith(".")]
            after, trusted = dir_signature(self._cur)
            if before == after:
                break
        meta["sig_cur"] = signature_value(after, trusted)
        vanished, renamed, strangers = self._diff_cur(set(listing))
        added: list[tuple[str, str, os.stat_result]] = []
        sizes: dict[str, int] = {}
        for base, filename in strangers.items():
            path = os.path.join(self._cur, filename)
            try:
                st = os.stat(path)
                if not stat.S_ISREG(st.st_mode):
                    self._warn_once(f"{path} is not a regular file; ignored")
                    continue
                fields = size_fields(base)
                sizes[base] = fields["W"] if "W" in fields else wire_size(path, st.st_size)
            except FileNotFoundError:
                continue  # renamed meanwhile; the next scan finds the new name
            except OSError as exc:
                self._warn_once(f"cannot read {path}: {exc}; ignored")
                continue
            added.append((base, filename, st))
        rows: list[Row] = []
        if added:
            added.sort(key=lambda item: (item[2].st_mtime_ns, item[0]))
            uid_of = self._assign_uids(write, [base for base, _, _ in added], taken, arrived)
            modseq = write.next_modseq()
            for base, filename, st in added:
                row = Row(
                    uid=uid_of[base],
                    base=base,
                    filename=filename,
                    info=split_filename(filename)[1],
                    mtime_ns=st.st_mtime_ns,
                    size=sizes[base],
                    raw=sizes[base] == st.st_size,
                    modseq=modseq,
                    recent=base in arrived or not rebuild,
                )
                uidl = write.uidls.get(base) if write.hints.get(base) == row.uid else None
                rows.append(attrs.evolve(row, pop3_uidl=uidl) if uidl else row)
        if vanished or renamed:
            write.next_modseq()
        with db.transaction():
            if rows:
                db.insert(rows)
            for uid, filename in renamed:
                db.update_file(uid, filename, split_filename(filename)[1], write.modseq)
            if vanished:
                db.delete(vanished, write.modseq)
            for key, value in meta.items():
                db.put(key, value)
            self._commit_meta(write)
        if rows or renamed or vanished:
            self._changed()

    def _stale(self, path: str, key: str, recent_is_stale: bool = False) -> bool:
        """Whether the directory may hold changes the index has not seen.

        The index keeps the signature (inode, size, mtime) of each directory
        as last seen, and whether that mtime was old enough to be trusted: a
        change in the same clock tick as the last one leaves the mtime
        alone.  So a directory looks changed when its signature differs, or
        when the recorded one was too recent to trust and has now aged (one
        rescan settles it).  A recent, untrusted signature that still
        matches means nothing new unless a same-tick change hid, which the
        rescan after the window (the next command or poll) finds.
        """
        signature, trusted_now = dir_signature(path)
        recorded = str(self._db.get(key) or "")
        seen, _, flag = recorded.partition(" ")
        if signature != seen:
            return True
        return flag != "trusted" and (trusted_now or recent_is_stale)

    def _own_cur_change(self, before: str) -> None:
        """After this process changed cur/ (lock held, inside the
        transaction that records the change): if cur/ was as the index last
        saw it (``before``, its signature then), record the new signature,
        so our own rename does not make the next command rescan the whole
        directory.  Otherwise leave it: the next sync must look."""
        if before != str(self._db.get("sig_cur") or "").partition(" ")[0]:
            return
        signature, trusted = dir_signature(self._cur)
        self._db.put("sig_cur", signature_value(signature, trusted))

    def _cur_signature(self) -> str:
        return dir_signature(self._cur)[0]

    def _diff_cur(self, disk: set[str]) -> tuple[list[int], list[tuple[int, str]], dict[str, str]]:
        """Compare a listing of cur/ with the index.

        Returns (vanished UIDs, (UID, new file name) of renamed messages,
        base -> file name of files the index does not know).  Only names
        that differ are looked at, so an unchanged mailbox costs two set
        builds however large it is.
        """
        db = self._db
        key = (db.data_version(), self._local_version)
        if self._names_cache is None or self._names_cache[0] != key:
            # Kept between scans: reading 100,000 names back from SQLite
            # cost more than listing the directory.
            self._names_cache = (key, db.filenames())
        indexed = self._names_cache[1]
        appeared = disk - indexed
        disappeared = indexed - disk
        if not appeared and not disappeared:
            return [], [], {}
        lookup = db.base_map() if len(appeared) + len(disappeared) > 1000 else None

        def known(base: str) -> tuple[int, str] | None:
            return lookup.get(base) if lookup is not None else db.by_base(base)

        renamed: list[tuple[int, str]] = []
        renamed_bases: set[str] = set()
        strangers: dict[str, str] = {}
        for filename in sorted(appeared):
            base = split_filename(filename)[0]
            entry = known(base)
            if entry is not None and entry[1] in disappeared and base not in renamed_bases:
                renamed.append((entry[0], filename))
                renamed_bases.add(base)
            elif entry is not None or base in strangers:
                # Two files, one base name: the newcomer gets a name of its
                # own, so both messages stay.
                fresh = self._separate_duplicate(filename)
                if fresh is not None:
                    strangers[split_filename(fresh)[0]] = fresh
            else:
                strangers[base] = filename
        vanished: list[int] = []
        for filename in disappeared:
            base = split_filename(filename)[0]
            if base in renamed_bases or os.path.lexists(os.path.join(self._cur, filename)):
                continue
            entry = known(base)
            if entry is not None:
                vanished.append(entry[0])
        return sorted(vanished), renamed, strangers

    def _take_new(self, write: _Write, taken: set[int]) -> dict[str, int]:
        """Move messages delivered into new/ to cur/ with UIDs taken first."""
        found = []
        for filename in sorted(os.listdir(self._new)):
            if filename.startswith(".") or not os.path.isfile(os.path.join(self._new, filename)):
                continue
            base, info = split_filename(filename)
            found.append((filename, base, info))
        if not found:
            return {}
        uids = self._assign_uids(write, [base for _, base, _ in found], taken)
        arrived: dict[str, int] = {}
        for filename, base, info in found:
            target = os.path.join(self._cur, f"{base}:2,{info}")
            if os.path.lexists(target):
                # Already in cur/ under this very name: a duplicate delivery.
                base = unique_name()
                target = os.path.join(self._cur, f"{base}:2,{info}")
            try:
                os.rename(os.path.join(self._new, filename), target)
            except FileNotFoundError:
                continue  # someone else moved it; the cur/ scan finds it
            arrived[base] = uids.get(base) or self._allocate(write, [(base, None)])[0]
        if arrived:
            fsync_dir(self._cur)
            fsync_dir(self._new)
        return arrived

    def _separate_duplicate(self, filename: str) -> str | None:
        """Give a file whose base name is taken a fresh name; None if it is gone."""
        base, info = split_filename(filename)
        fresh = f"{unique_name()}:2,{info}"
        try:
            os.rename(os.path.join(self._cur, filename), os.path.join(self._cur, fresh))
        except FileNotFoundError:
            return None
        log.warn("two files share base name {base}; renamed one to {fresh}", base=base, fresh=fresh)
        return fresh

    def _clean_tmp(self) -> None:
        cutoff = time.time() - TMP_MAX_AGE
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._tmp):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)

    def _announce(self) -> None:
        """Tell listeners what changed since they last heard (from the index).

        Runs after a change is done, so it never fails the change: a
        damaged index is rebuilt (and listeners told), other errors logged.
        """
        try:
            self._tell_listeners()
        except Exception as exc:
            try:
                if not is_corruption(exc):
                    raise
                self._recover(exc)
            except Exception:
                log.failure("telling listeners about changes in {path} failed", path=self.path)

    def _tell_listeners(self) -> None:
        db = self._db
        with db.snapshot():
            highest = db.get_int("highest_modseq")
            uidnext = db.get_int("uidnext")
            if highest == self._seen_modseq and uidnext == self._seen_uidnext:
                return
            rows = db.changed_since(self._seen_modseq) if self._listeners else []
            gone = db.expunged_since(self._seen_modseq) if self._listeners else []
        added = [row.uid for row in rows if row.uid >= self._seen_uidnext]
        # Another process may have defined the keywords these rows carry.
        self._keywords.refresh()
        changed = [self._info(row) for row in rows if row.uid < self._seen_uidnext]
        expunged = [uid for uid in gone if uid < self._seen_uidnext]
        self._seen_modseq, self._seen_uidnext = highest, uidnext
        for listener in list(self._listeners):
            try:
                if added:
                    listener.messages_added(self, added)
                if changed:
                    listener.flags_changed(self, changed)
                if expunged:
                    listener.messages_expunged(self, expunged)
            except Exception:
                log.failure("mailbox listener {listener!r} failed", listener=listener)

    # -- IMailbox: reading ----------------------------------------------------

    @property
    @_recovering
    def uidvalidity(self) -> int:
        return self._db.get_int("uidvalidity")

    @property
    @_recovering
    def uidnext(self) -> int:
        return self._db.get_int("uidnext")

    @property
    @_recovering
    def highest_modseq(self) -> int:
        return self._db.get_int("highest_modseq")

    @_recovering
    def status(self) -> MailboxStatus:
        db = self._db
        with db.snapshot():
            messages, unseen, deleted, size, recent = db.counters()
            uidnext = db.get_int("uidnext")
            uidvalidity = db.get_int("uidvalidity")
            modseq = db.get_int("highest_modseq")
        return MailboxStatus(
            messages=messages,
            recent=recent,
            unseen=unseen,
            deleted=deleted,
            size=size,
            uidnext=uidnext,
            uidvalidity=uidvalidity,
            highest_modseq=modseq,
        )

    @_recovering
    def uids(self) -> Sequence[int]:
        db = self._db
        key = (db.data_version(), self._local_version)
        if self._uids_cache is None or self._uids_cache[0] != key:
            self._uids_cache = (key, db.uids())
        return self._uids_cache[1]

    def keywords(self) -> Sequence[str]:
        """From ``dovecot-keywords`` (a stat when it did not change)."""
        self._keywords.refresh()
        return self._keywords.names()

    @property
    def keyword_limit(self) -> int:
        """26 letters, less those taken by names IMAP cannot show."""
        self._keywords.refresh()
        return self._keywords.room()

    @_recovering
    def fetch(self, uids: Iterable[int]) -> Sequence[IMessage]:
        self._keywords.refresh()
        flags = self._keywords.flags
        dates: dict[int, datetime.datetime] = {}
        result: list[IMessage] = []
        for uid, info, mtime_ns, size, modseq in self._db.summaries(uids):
            seconds = mtime_ns // 1_000_000_000
            date = dates.get(seconds)
            if date is None:
                date = dates[seconds] = ns_datetime(mtime_ns)
            result.append(MessageInfo(uid, flags(info), date, size, modseq))
        return result

    @_recovering
    def open(self, uid: int) -> IO[bytes]:
        for attempt in range(2):
            row = self._db.row(uid)
            if row is None:
                break
            try:
                return open_wire(os.path.join(self._cur, row.filename), row.raw, row.size)
            except FileNotFoundError:
                if attempt == 0:
                    # Renamed (flags) or removed by someone else: catch up.
                    with self._locked():
                        self._sync()
        raise NoSuchMessage(f"message UID {uid} no longer exists")

    @_recovering
    def changed_since(self, modseq: int) -> Sequence[IMessage]:
        self._keywords.refresh()
        return [self._info(row) for row in self._db.changed_since(modseq)]

    @_recovering
    def expunged_since(self, modseq: int) -> Sequence[int]:
        return self._db.expunged_since(modseq)

    def lock_maildrop(self) -> Callable[[], None]:
        """Take the POP3 maildrop lock of this folder for a session; return its release.

        An ``flock`` of ``mailsrv-pop3-lock``, held for the whole session
        (so not the short-lived ``mailsrv-lock``): every mailsrv process on
        this Maildir (two daemons, an old one still draining while a new
        one starts) sees it, and the kernel drops it if the holder dies.
        Raises :class:`MailboxInUse` when another session has it.
        """
        try:
            fd = os.open(os.path.join(self.path, POP3_LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:
            raise NoSuchMailbox(f"mailbox {self.name!r} no longer exists") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MailboxInUse("maildrop is in use by another POP3 session") from None
        except BaseException:
            os.close(fd)
            raise
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                os.close(fd)  # drops the lock

        return release

    @_recovering
    def pop3_uidls(self) -> dict[int, str]:
        """POP3 UIDLs carried over from a migration (``P`` fields of the uidlist)."""
        return self._db.pop3_uidls()

    # -- IMessageCache --------------------------------------------------------

    @_recovering
    def get_cached(self, uid: int, kind: str) -> bytes | None:
        return self._db.get_cached(uid, kind)

    def set_cached(self, uid: int, kind: str, value: bytes) -> None:
        self.set_cached_many(kind, {uid: value})

    @_recovering
    def get_cached_many(self, uids: Iterable[int], kind: str) -> Mapping[int, bytes]:
        return self._db.get_cached_many(uids, kind)

    @_recovering
    def set_cached_many(self, kind: str, values: Mapping[int, bytes]) -> None:
        if not values:
            return
        db = self._db
        with db.transaction():
            db.set_cached_many(kind, values)

    # -- IMailbox: writing ------------------------------------------------------

    def _write_tmp(self, source: IO[bytes], date_ns: int) -> tuple[str, int]:
        """Stream ``source`` into tmp/ as CRLF, dated ``date_ns``; fsync; (path, size)."""
        path = os.path.join(self._tmp, unique_name())
        size = 0
        prev_cr = False
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                while True:
                    chunk = source.read(CHUNK)
                    if not chunk:
                        break
                    if not isinstance(chunk, bytes | bytearray | memoryview):
                        raise StorageError("message source must give bytes", code="CANNOT")
                    chunk = bytes(chunk)
                    converted = lf_to_crlf(chunk, prev_cr)
                    prev_cr = chunk.endswith(b"\r")
                    out.write(converted)
                    size += len(converted)
                out.flush()
                os.utime(out.fileno(), ns=(date_ns, date_ns))
                os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        return path, size

    def append(
        self,
        source: IO[bytes],
        flags: Iterable[str] = (),
        internal_date: datetime.datetime | None = None,
    ) -> int:
        system, keywords = split_flags(flags)
        date_ns = datetime_ns(internal_date)
        tmp_path, size = self._write_tmp(source, date_ns)
        try:
            try:
                uid = self._place(tmp_path, size, date_ns, system, keywords)
            except Exception as exc:
                if not is_corruption(exc):
                    raise
                # Damage found before the file was placed: the message is
                # still in tmp/, so rebuild and place it.
                self._recover(exc)
                uid = self._place(tmp_path, size, date_ns, system, keywords)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_path)
        self._announce()
        return uid

    def _place(
        self,
        tmp_path: str,
        size: int,
        date_ns: int,
        system: frozenset[str],
        keywords: tuple[str, ...],
    ) -> int:
        """Move a message written to tmp/ into cur/ under a fresh UID.

        The UID is fsynced into the UID list first, then the file renamed
        and the directory fsynced: from then on the message is stored
        (whatever happens to the index, see :meth:`_record`), and its UID
        is returned.
        """
        base = f"{unique_name()},S={size},W={size}"
        with self._locked():
            self._keywords.refresh()
            info = sorted_info(self._keywords.letters(system, keywords, allocate=True))
            write = self._begin()
            (uid,) = self._allocate(write, [(base, None)])
            filename = f"{base}:2,{info}"
            target = os.path.join(self._cur, filename)
            before = self._cur_signature()
            os.rename(tmp_path, target)
            try:
                fsync_dir(self._cur)
            except OSError:
                # Not known to be durable, so not acknowledged: take it back,
                # or the client's retry would store it twice.
                with contextlib.suppress(OSError):
                    os.unlink(target)
                raise
            _crash_point("append-placed")
            row = Row(
                uid=uid,
                base=base,
                filename=filename,
                info=info,
                mtime_ns=date_ns,
                size=size,
                raw=True,
                modseq=write.next_modseq(),
                recent=True,
            )

            def commit() -> None:
                db = self._db
                with db.transaction():
                    db.insert([row])
                    self._commit_meta(write)
                    self._own_cur_change(before)

            self._record(commit)
        return uid

    @_recovering
    def store(
        self,
        uids: Iterable[int],
        flags: Iterable[str],
        mode: str,
        unchanged_since: int | None = None,
    ) -> StoreResult:
        if mode not in (StoreMode.REPLACE, StoreMode.ADD, StoreMode.REMOVE):
            raise StorageError(f"unknown store mode {mode!r}", code="CANNOT")
        system, keywords = split_flags(flags)
        wanted = list(uids)
        updated: list[Row] = []
        conflicts: list[int] = []
        with self._locked():
            db = self._db
            self._keywords.refresh()
            letters = self._keywords.letters(system, keywords, allocate=mode != StoreMode.REMOVE)
            write = self._begin()
            renames: list[tuple[Row, str, str]] = []
            for row in db.rows(wanted):
                if unchanged_since is not None and row.modseq > unchanged_since:
                    conflicts.append(row.uid)
                    continue
                old = set(row.info)
                if mode == StoreMode.ADD:
                    new = old | letters
                elif mode == StoreMode.REMOVE:
                    new = old - letters
                else:
                    new = {c for c in old if not self._keywords.managed(c)} | letters
                info = sorted_info(new)
                if info != row.info:
                    renames.append((row, info, f"{row.base}:2,{info}"))
            if renames:
                modseq = write.next_modseq()
                before = self._cur_signature()
                done: list[tuple[Row, str, str]] = []
                for row, info, filename in renames:
                    try:
                        os.rename(
                            os.path.join(self._cur, row.filename),
                            os.path.join(self._cur, filename),
                        )
                    except FileNotFoundError:
                        continue  # changed or removed outside; the next sync sees it
                    done.append((row, info, filename))
                    updated.append(attrs.evolve(row, filename=filename, info=info, modseq=modseq))
                _crash_point("store-renamed")

                def commit() -> None:
                    db = self._db
                    with db.transaction():
                        for row, info, filename in done:
                            db.update_file(row.uid, filename, info, modseq)
                        self._commit_meta(write)
                        self._own_cur_change(before)

                # The file names are the truth: the flags are set now.
                self._record(commit)
        self._announce()
        return StoreResult(
            updated=tuple(self._info(row) for row in updated), conflicts=tuple(conflicts)
        )

    def _link_into(self, row: Row, target: str) -> None:
        """Put a copy of the message at ``target``: a hard link where possible."""
        source = os.path.join(self._cur, row.filename)
        try:
            os.link(source, target)
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
        shutil.copyfile(source, target)
        os.utime(target, ns=(row.mtime_ns, row.mtime_ns))
        with open(target, "rb") as handle:
            os.fsync(handle.fileno())

    @_recovering
    def copy(self, uids: Iterable[int], destination: IMailbox) -> Sequence[tuple[int, int]]:
        self._keywords.refresh()
        rows = self._db.rows(uids)
        if not rows:
            return []
        if not isinstance(destination, MaildirMailbox):
            pairs: list[tuple[int, int]] = []
            for row in rows:
                with self.open(row.uid) as handle:
                    result = destination.append(
                        handle, self._keywords.flags(row.info), ns_datetime(row.mtime_ns)
                    )
                if isinstance(result, Deferred):
                    raise StorageError("copy needs a destination that appends synchronously")
                pairs.append((row.uid, int(result)))
            return pairs
        staged: list[tuple[Row, str, str]] = []  # row, tmp path, new base
        try:
            for row in rows:
                path = os.path.join(self._cur, row.filename)
                disk = row.size if row.raw else os.stat(path).st_size
                base = f"{unique_name()},S={disk},W={row.size}"
                tmp_path = os.path.join(destination._tmp, base)
                try:
                    self._link_into(row, tmp_path)
                except FileNotFoundError:
                    # Renamed by a flag change elsewhere, or expunged: catch up.
                    fresh = self._reload(row.uid)
                    if fresh is None:
                        continue
                    row = fresh
                    try:
                        self._link_into(row, tmp_path)
                    except FileNotFoundError:
                        continue
                staged.append((row, tmp_path, base))
            return destination._receive(staged, self._keywords)
        finally:
            for _row, tmp_path, _base in staged:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp_path)

    def _reload(self, uid: int) -> Row | None:
        with self._locked():
            self._sync()
        return self._db.row(uid)

    def _translated_info(self, row: Row, source_keywords: KeywordTable) -> str:
        """The flag letters here of a message from another folder (each
        folder numbers its keywords itself); letters without an IMAP flag
        are kept."""
        flags = source_keywords.flags(row.info)
        system = frozenset(f for f in flags if f in SYSTEM_FLAGS)
        keywords = tuple(sorted(f for f in flags if f not in SYSTEM_FLAGS))
        kept = {c for c in row.info if not source_keywords.managed(c) and not ("a" <= c <= "z")}
        return sorted_info(self._keywords.letters(system, keywords, allocate=True) | kept)

    @_recovering
    def _receive(
        self, staged: Sequence[tuple[Row, str, str]], source_keywords: KeywordTable
    ) -> list[tuple[int, int]]:
        """Take staged copies (in our tmp/) into cur/ with fresh UIDs."""
        if not staged:
            return []
        pairs: list[tuple[int, int]] = []
        with self._locked():
            self._keywords.refresh()
            infos = [self._translated_info(row, source_keywords) for row, _tmp, _base in staged]
            write = self._begin()
            uids = self._allocate(write, [(base, None) for _row, _tmp, base in staged])
            modseq = write.next_modseq()
            before = self._cur_signature()
            rows: list[Row] = []
            placed: list[str] = []
            try:
                for (row, tmp_path, base), info, uid in zip(staged, infos, uids, strict=True):
                    filename = f"{base}:2,{info}"
                    os.rename(tmp_path, os.path.join(self._cur, filename))
                    placed.append(os.path.join(self._cur, filename))
                    rows.append(
                        Row(
                            uid=uid,
                            base=base,
                            filename=filename,
                            info=info,
                            mtime_ns=row.mtime_ns,
                            size=row.size,
                            raw=row.raw,
                            modseq=modseq,
                            recent=True,
                        )
                    )
                    pairs.append((row.uid, uid))
                fsync_dir(self._cur)
            except Exception:
                # The COPY answers NO, so it must not have happened: take
                # back the copies already placed (their UIDs stay used).
                for path in placed:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                raise

            def commit() -> None:
                db = self._db
                with db.transaction():
                    db.insert(rows)
                    self._commit_meta(write)
                    self._own_cur_change(before)

            self._record(commit)
        self._announce()
        return pairs

    @_recovering
    def move(self, uids: Iterable[int], destination: IMailbox) -> Sequence[tuple[int, int]]:
        if isinstance(destination, MaildirMailbox) and self._same_device(destination):
            pairs = self._move_files(list(uids), destination)
            self._announce()
            if destination is not self:
                destination._announce()
            return pairs
        # Another backend, or a folder on another file system: no rename
        # reaches it.  Copy first, then remove: a crash in between leaves
        # two copies, never none.
        copied = self.copy(uids, destination)
        self._remove([source for source, _ in copied], only_deleted=False)
        return copied

    def _same_device(self, other: MaildirMailbox) -> bool:
        return os.stat(self._cur).st_dev == os.stat(other._cur).st_dev

    def _move_files(self, uids: list[int], destination: MaildirMailbox) -> list[tuple[int, int]]:
        """MOVE by renaming each file into the destination's cur/ (RFC 6851
        3.3: each message is moved or unaffected, never in both mailboxes),
        whatever instant the process dies at:

        1. the destination's UIDs are fsynced into its UID list (a crash
           now only leaves those UIDs unused);
        2. each file is renamed, under a new base name and with its flags
           in the destination's letters; a rename is atomic, so the message
           is in exactly one of the two folders;
        3. the destination's index records the new messages, then the
           source's records the old ones expunged.

        After a crash in 2 or 3 the indexes are behind the files and the
        next look at each folder catches up: the destination finds each
        file with its UID in the tail of its UID list (see :meth:`_begin`),
        the source finds it gone and records the expunge.
        """
        # Both folders are locked, always in the same order, so two MOVEs
        # in opposite directions cannot deadlock.
        folders = sorted({self, destination}, key=lambda folder: folder.path)
        with contextlib.ExitStack() as stack:
            for folder in folders:
                stack.enter_context(folder._locked())
            self._keywords.refresh()
            destination._keywords.refresh()
            source_write = self._begin()
            plan: list[tuple[Row, str, str]] = []  # row, new base, new flag letters
            for row in self._db.rows(uids):
                try:
                    disk = row.size if row.raw else os.stat(self._path_of(row)).st_size
                except FileNotFoundError:
                    continue  # renamed outside meanwhile: it stays where it is
                base = f"{unique_name()},S={disk},W={row.size}"
                plan.append((row, base, destination._translated_info(row, self._keywords)))
            if not plan:
                return []
            target_write = source_write if destination is self else destination._begin_recovering()
            new_uids = destination._allocate(target_write, [(base, None) for _r, base, _i in plan])
            _crash_point("move-allocated")
            source_before = self._cur_signature()
            target_before = destination._cur_signature()
            moved: list[tuple[Row, Row]] = []
            try:
                for (row, base, info), uid in zip(plan, new_uids, strict=True):
                    filename = f"{base}:2,{info}"
                    try:
                        os.rename(self._path_of(row), os.path.join(destination._cur, filename))
                    except FileNotFoundError:
                        continue  # renamed outside meanwhile: it stays where it is
                    moved.append(
                        (row, attrs.evolve(row, uid=uid, base=base, filename=filename, info=info))
                    )
                    _crash_point("move-renamed")
                fsync_dir(destination._cur)
                fsync_dir(self._cur)
            finally:
                # What was renamed is moved, even if a later rename failed.
                if moved:
                    self._record_move(
                        destination, moved, source_write, target_write, source_before, target_before
                    )
        return [(row.uid, new.uid) for row, new in moved]

    def _path_of(self, row: Row) -> str:
        return os.path.join(self._cur, row.filename)

    def _record_move(
        self,
        destination: MaildirMailbox,
        moved: Sequence[tuple[Row, Row]],
        source_write: _Write,
        target_write: _Write,
        source_before: str,
        target_before: str,
    ) -> None:
        """Step 3 of :meth:`_move_files`: both indexes learn what the files show."""
        added = [
            attrs.evolve(new, modseq=target_write.next_modseq(), recent=True, pop3_uidl=None)
            for _row, new in moved
        ]
        gone = [row.uid for row, _new in moved]

        def commit_target() -> None:
            db = destination._db
            with db.transaction():
                db.insert(added)
                if destination is self:
                    db.delete(gone, source_write.next_modseq())
                destination._commit_meta(target_write)
                destination._own_cur_change(target_before)

        def commit_source() -> None:
            db = self._db
            with db.transaction():
                db.delete(gone, source_write.next_modseq())
                self._commit_meta(source_write)
                self._own_cur_change(source_before)
            self._maybe_compact(source_write)

        destination._record(commit_target)
        if destination is not self:
            _crash_point("move-indexed")
            self._record(commit_source)

    @_recovering
    def expunge(self, uids: Iterable[int] | None = None) -> Sequence[int]:
        return self._remove(None if uids is None else list(uids), only_deleted=True)

    def _remove(self, uids: list[int] | None, only_deleted: bool) -> list[int]:
        removed: list[int] = []
        with self._locked():
            db = self._db
            write = self._begin()
            rows = db.rows_with_letter("T", uids) if only_deleted else db.rows(uids)
            before = self._cur_signature()
            for row in rows:
                if only_deleted and "T" not in row.info:
                    continue
                try:
                    os.unlink(os.path.join(self._cur, row.filename))
                except FileNotFoundError:
                    continue  # renamed or gone outside; the next sync settles it
                removed.append(row.uid)
            if removed:
                modseq = write.next_modseq()

                def commit() -> None:
                    db = self._db
                    with db.transaction():
                        db.delete(removed, modseq)
                        self._commit_meta(write)
                        self._own_cur_change(before)
                    self._maybe_compact(write)

                # The files are gone: the expunge happened.
                self._record(commit)
        self._announce()
        return removed

    def _maybe_compact(self, write: _Write) -> None:
        """Rewrite the UID list when most of its lines name expunged files."""
        db = self._db
        messages = db.counters()[0]
        if write.uidlist_lines <= 2 * messages + 1000:
            return
        entries = db.uidlist_entries()
        size = self._uidlist.rewrite(db.get_int("uidvalidity"), write.uidnext, entries)
        write.uidlist_ino = self._uidlist.signature()[0]
        write.uidlist_off = size
        write.uidlist_lines = len(entries)
        with db.transaction():
            self._commit_meta(write)

    @_recovering
    def claim_recent(self) -> frozenset[int]:
        db = self._db
        with db.transaction():
            claimed = db.claim_recent()
        return frozenset(claimed)

    @_recovering
    def check(self) -> None:
        with self._locked():
            self._sync()
        self._announce()

    def rebuild(self) -> int:
        """Throw the index away and rebuild it from the files; return the count."""
        with self._locked():
            if self._index is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._index.close()
                self._index = None
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._index_path + suffix)
            self._open_index()
            self._changed()
        self._seen_modseq = self._db.get_int("highest_modseq")
        self._seen_uidnext = self._db.get_int("uidnext")
        return self._db.counters()[0]

    # -- listeners --------------------------------------------------------------

    def add_listener(self, listener: IMailboxListener) -> None:
        if listener not in self._listeners:
            self._listeners.append(listener)
        self._watcher.watch(self)

    def remove_listener(self, listener: IMailboxListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)
        if not self._listeners:
            self._watcher.unwatch(self)

    # -- what the watcher needs (watch.WatchedFolder) ----------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def watched_dirs(self) -> tuple[str, str]:
        return self._new, self._cur
