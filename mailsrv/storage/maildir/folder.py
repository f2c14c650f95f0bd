"""One Maildir++ folder as an :class:`~mailsrv.interfaces.IMailbox`.

:class:`MaildirMailbox` answers the protocols over an
:class:`~mailsrv.storage.maildir.indexed.IndexedFolder` (the files, UID list
and index under the folder's lock): it makes each change on disk first and
records it in the index after (:meth:`MaildirMailbox._record`), rebuilds a
damaged index wherever the damage shows (:func:`_recovering`), and tells
listeners what changed.  COPY and MOVE between folders are in
:mod:`.transfer`.
"""

from __future__ import annotations

import datetime
import functools
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, TypeVar

from twisted.internet.defer import Deferred
from zope.interface import implementer

from mailsrv.criteria import Criterion
from mailsrv.errors import NoSuchMessage, StorageError
from mailsrv.interfaces import (
    ICachedSearch,
    IFullTextSearch,
    IIndexSearch,
    IMailbox,
    IMailboxListener,
    IMaildropLocking,
    IMessage,
    IMessageCache,
    IMessageColumns,
    IMessageRows,
    IPop3Listing,
    IPop3UidSource,
    MailboxStatus,
    MessageColumns,
    MessageInfo,
    MessageRow,
    NewMessage,
    StoreMode,
    StoreResult,
    TextMatches,
)
from mailsrv.log import get_logger
from mailsrv.storage.maildir import announce, appending, columns, renaming, sqlsearch, transfer
from mailsrv.storage.maildir.cache import CACHE_KINDS
from mailsrv.storage.maildir.fulltext import FullText, Progress
from mailsrv.storage.maildir.index import Row, is_corruption
from mailsrv.storage.maildir.indexed import IndexedFolder, Write
from mailsrv.storage.maildir.keywords import KeywordTable, split_flags
from mailsrv.storage.maildir.layout import (
    disk_full,
    lock_maildrop,
    ns_datetime,
    open_wire,
    saved_datetime,
)
from mailsrv.storage.maildir.quiet import QuietGate
from mailsrv.storage.maildir.recovery import crash_point
from mailsrv.storage.maildir.watch import Watcher

__all__ = ["MaildirMailbox"]

# One namespace for the whole backend: log lines name it, not its modules.
log = get_logger("mailsrv.storage.maildir")

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


@implementer(
    IMailbox,
    IMessageCache,
    IMessageRows,
    IMessageColumns,
    IMaildropLocking,
    IPop3UidSource,
    IPop3Listing,
    IIndexSearch,
    IFullTextSearch,
    ICachedSearch,
)
class MaildirMailbox:
    """One Maildir++ folder, shared by every session of one storage instance.

    :meth:`MaildirAccount.get_mailbox` hands out this same object to every
    caller for a folder (while someone holds it), so listeners of all
    sessions hear each other's changes at once.

    :param root: the account's Maildir root; ``path``: the folder's.
    :param watcher: told to watch the folder while it has listeners.
    :param warn_once: logs a warning about the tree once per storage.
    :param fulltext: the folder's full-text index (None: switched off).
    """

    #: Client-named cache kinds the folder's index keeps at most (the
    #: registry sets it from ``[limits] max_cache_kinds``).
    cache_kinds: int = CACHE_KINDS

    def __init__(
        self,
        root: str,
        path: str,
        name: str,
        *,
        watcher: Watcher,
        warn_once: Callable[[str], None],
        fulltext: FullText | None = None,
    ) -> None:
        self._watcher = watcher
        self._fulltext = fulltext
        self.path = path
        self.name = name
        self.special_use: frozenset[str] = frozenset()
        self._listeners: list[IMailboxListener] = []
        self._folder = IndexedFolder(root, path, name, warn_once)
        self._gate = QuietGate()
        self._folder.before_reopen = self._announce
        #: Files of the messages after the last one opened (see :meth:`open`),
        #: the last UID among them, and the UID opened last.
        self._ahead: dict[int, tuple[str, bool, int]] = {}
        self._ahead_end = -1
        self._last_opened = -1

    def __repr__(self) -> str:
        return f"<MaildirMailbox {self.name!r} at {self.path!r}>"

    def close(self) -> None:
        """Forget the folder (it was deleted or renamed): later calls fail."""
        self._folder.close()
        self._watcher.unwatch(self)
        if self._fulltext is not None:
            self._fulltext.close()

    # -- a damaged index --------------------------------------------------------

    def _recover(self, exc: BaseException) -> None:
        """The index failed with damage: rebuild it (see
        :meth:`IndexedFolder.rebuild_damaged`) and tell listeners what the
        rebuilt one shows differently."""
        self._rebuilt(self._folder.rebuild_damaged(exc))

    def _rebuilt(self, known: Sequence[int] | None) -> None:
        """Tell listeners what a rebuilt index shows differently from ``known``."""
        announce.tell(self._listeners, self, announce.news_after_rebuild(self._folder, known))

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
                    path=self._folder.index_path,
                    error=str(error) or type(error).__name__,
                )
            except Exception:
                log.failure(
                    "recording a change in {path} failed; the next look at the folder catches up",
                    path=self._folder.index_path,
                )
        self._folder.changed()

    def _begin_recovering(self) -> Write:
        """:meth:`IndexedFolder.begin` on a folder other than the one an
        operation runs on (a MOVE's destination): its damaged index is its
        own to rebuild."""
        try:
            return self._folder.begin()
        except Exception as exc:
            if not is_corruption(exc):
                raise
            self._recover(exc)
            return self._folder.begin()

    # -- telling listeners ------------------------------------------------------------

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
        news = announce.news_since_seen(self._folder, bool(self._listeners))
        if news is None:
            return
        if self._fulltext is not None:
            self._fulltext.changed()
        announce.tell(self._listeners, self, news)

    def _info(self, row: Row) -> MessageInfo:
        return announce.message_info(self._folder.keywords, row)

    # -- IMailbox: reading ----------------------------------------------------

    @property
    @_recovering
    def uidvalidity(self) -> int:
        return self._folder.db.get_int("uidvalidity")

    @property
    @_recovering
    def uidnext(self) -> int:
        return self._folder.db.get_int("uidnext")

    @property
    @_recovering
    def highest_modseq(self) -> int:
        return self._folder.db.get_int("highest_modseq")

    @_recovering
    def status(self) -> MailboxStatus:
        db = self._folder.db
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
            mailbox_id=self._folder.mailbox_id(uidvalidity),
        )

    @_recovering
    def uids(self) -> Sequence[int]:
        return self._folder.uids()

    def keywords(self) -> Sequence[str]:
        """From ``dovecot-keywords`` (a stat when it did not change)."""
        self._folder.keywords.refresh()
        return self._folder.keywords.names()

    @property
    def keyword_limit(self) -> int:
        """26 letters, less those taken by names IMAP cannot show."""
        self._folder.keywords.refresh()
        return self._folder.keywords.room()

    @_recovering
    def fetch(self, uids: Iterable[int]) -> Sequence[IMessage]:
        table = self._folder.keywords
        table.refresh()
        flags = table.flags
        dates: dict[int, datetime.datetime] = {}
        result: list[IMessage] = []
        for uid, info, mtime_ns, size, modseq, saved in self._folder.db.summaries(uids):
            seconds = mtime_ns // 1_000_000_000
            date = dates.get(seconds)
            if date is None:
                date = dates[seconds] = ns_datetime(mtime_ns)
            info_ = MessageInfo(uid, flags(info), date, size, modseq, saved_datetime(saved))
            result.append(info_)
        return result

    @_recovering
    def message_rows(self, uids: Iterable[int]) -> list[MessageRow]:
        """:meth:`fetch` as tuples (IMessageRows): the flag sets come from
        the keyword table's memo of each distinct flag-letter string, the
        date stays the index's integer seconds (Maildir dates are UTC)."""
        table = self._folder.keywords
        table.refresh()
        found = self._folder.db.row_tuples(uids)
        flags = {info: table.flags(info) for info in {row[1] for row in found}}
        return [
            (uid, flags[info], mtime_ns // 1_000_000_000, 0, size, modseq)
            for uid, info, mtime_ns, size, modseq in found
        ]

    @_recovering
    def message_columns(
        self, first: int, last: int, names: frozenset[str]
    ) -> MessageColumns | None:
        """IMessageColumns, from one aggregate query on the index."""
        table = self._folder.keywords
        table.refresh()
        return columns.message_columns(self._folder.db, table, first, last, names)

    @_recovering
    def uid_runs(self) -> Sequence[tuple[int, int]]:
        return self._folder.uid_runs()

    @_recovering
    def pop3_listing(self) -> Sequence[tuple[int, int, bool]]:
        return self._folder.db.pop3_listing()

    @_recovering
    def search_index(self, criterion: Criterion) -> Sequence[int]:
        """One query on the index (:mod:`.sqlsearch`): no row becomes an object."""
        table = self._folder.keywords
        table.refresh()
        condition, args = sqlsearch.where(criterion, table)
        return self._folder.db.uids_where(condition, args)

    @_recovering
    def open(self, uid: int) -> IO[bytes]:
        folder = self._folder
        last, self._last_opened = self._last_opened, uid
        ahead = self._ahead.get(uid)
        if ahead is not None:  # a message's file is only ever renamed or removed
            try:
                return open_wire(os.path.join(folder.cur, ahead[0]), ahead[1], ahead[2])
            except FileNotFoundError:
                self._ahead = {}  # the index knows where it went, if anywhere
        for attempt in range(2):
            if attempt == 0 and (uid == last + 1 or (uid > last == self._ahead_end)):
                # Reading on in UID order (POP3 RETR, a FETCH 1:* BODY[]): the
                # next UID, or one past the names read ahead right after the
                # last of them: the next messages' files in the same query.
                self._ahead = folder.db.files_from(uid, 32)
                self._ahead_end = max(self._ahead, default=-1)
                found = self._ahead.get(uid)
            else:
                found = folder.db.file_of(uid)
            if found is None:
                break
            filename, raw, size = found
            try:
                return open_wire(os.path.join(folder.cur, filename), raw, size)
            except FileNotFoundError:
                if attempt == 0:
                    # Renamed (flags) or removed by someone else: catch up.
                    with folder.locked():
                        folder.sync()
        raise NoSuchMessage(f"message UID {uid} no longer exists")

    @_recovering
    def changed_since(self, modseq: int) -> Sequence[IMessage]:
        self._folder.keywords.refresh()
        return [self._info(row) for row in self._folder.db.changed_since(modseq)]

    @_recovering
    def changed_uids(self, modseq: int) -> Sequence[int]:
        return self._folder.db.changed_uids(modseq)

    @_recovering
    def expunged_since(self, modseq: int) -> Sequence[int]:
        with self._folder.db.snapshot():
            return self._folder.db.expunged_since(modseq)

    @_recovering
    def vanished_since(self, modseq: int) -> Sequence[int] | None:
        with self._folder.db.snapshot():
            return self._folder.db.vanished_since(modseq)

    @property
    def announced_modseq(self) -> int:
        """What the last look at the index (:meth:`_tell_listeners`) told."""
        return self._folder.seen_modseq

    # -- IMaildropLocking, IPop3UidSource ------------------------------------------

    def lock_maildrop(self) -> Callable[[], None]:
        """The POP3 maildrop lock of this folder (:func:`.layout.lock_maildrop`)."""
        return lock_maildrop(self.path, self.name)

    @_recovering
    def pop3_uidls(self) -> dict[int, str]:
        """POP3 UIDLs carried over from a migration (``P`` fields of the uidlist)."""
        return self._folder.db.pop3_uidls()

    # -- IMessageCache --------------------------------------------------------

    @_recovering
    def get_cached(self, uid: int, kind: str) -> bytes | None:
        return self._folder.db.get_cached(uid, kind)

    def set_cached(self, uid: int, kind: str, value: bytes) -> None:
        self.set_cached_many(kind, {uid: value})

    @_recovering
    def get_cached_many(self, uids: Iterable[int], kind: str) -> Mapping[int, bytes]:
        return self._folder.db.get_cached_many(uids, kind)

    @_recovering
    def search_cached(
        self, kind: str, needle: bytes, low: int, high: int
    ) -> tuple[Sequence[int], Sequence[int]]:
        return self._folder.db.search_cached(kind, needle, low, high)

    @_recovering
    def set_cached_many(self, kind: str, values: Mapping[int, bytes]) -> None:
        if not values:
            return
        db = self._folder.db
        with db.transaction():
            db.set_cached_many(kind, values, self.cache_kinds)

    # -- IMailbox: writing ------------------------------------------------------

    def append(
        self,
        source: IO[bytes],
        flags: Iterable[str] = (),
        internal_date: datetime.datetime | None = None,
    ) -> int:
        (uid,) = self.append_many([NewMessage(source, flags, internal_date)])
        return uid

    def append_many(self, messages: Sequence[NewMessage]) -> list[int]:
        """Write every message to tmp/, then place them all (see
        :mod:`.appending`)."""
        with disk_full():
            staged = appending.stage(self._folder, messages)
            try:
                crash_point("append-written")
                uids = self._place(staged)
            finally:
                appending.drop(staged)
        self._announce()
        return uids

    def _place(self, staged: Sequence[appending.Staged]) -> list[int]:
        """Give staged messages their UIDs and move them into cur/."""
        try:
            with self._folder.locked():
                return appending.place(self._folder, staged, self._record)
        except Exception as exc:
            if not is_corruption(exc):
                raise
            # Damage found before the files were placed: they are still in
            # tmp/, so rebuild and place them.
            self._recover(exc)
            with self._folder.locked():
                return appending.place(self._folder, staged, self._record)

    @_recovering
    def remove(self, uids: Iterable[int]) -> Sequence[int]:
        return self._remove(list(uids), only_deleted=False)

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
        folder = self._folder
        updated: list[Row] = []
        conflicts: list[int] = []
        with folder.locked():
            folder.keywords.refresh()
            letters = folder.keywords.letters(system, keywords, allocate=mode != StoreMode.REMOVE)
            write = folder.begin()
            renames: list[renaming.Rename] = []
            for row in folder.db.rows(wanted):
                if unchanged_since is not None and row.modseq > unchanged_since:
                    conflicts.append(row.uid)
                    continue
                info = folder.keywords.stored_info(row.info, letters, mode)
                if info != row.info:
                    renames.append((row, info, f"{row.base}:2,{info}"))
            if renames:
                updated = renaming.rename_files(folder, write, renames, self._record)
        self._announce()
        return StoreResult(
            updated=tuple(self._info(row) for row in updated), conflicts=tuple(conflicts)
        )

    @_recovering
    def copy(self, uids: Iterable[int], destination: IMailbox) -> Sequence[tuple[int, int]]:
        folder = self._folder
        folder.keywords.refresh()
        rows = folder.db.rows(uids)
        if not rows:
            return []
        if not isinstance(destination, MaildirMailbox):
            return transfer.copy_elsewhere(rows, destination, self.open, folder.keywords)
        with disk_full():
            staged = transfer.stage_copies(folder, rows, destination._folder)
            try:
                return destination._receive(staged, folder.keywords)
            finally:
                transfer.drop_staged(staged)

    @_recovering
    def _receive(
        self, staged: Sequence[transfer.Staged], source_keywords: KeywordTable
    ) -> list[tuple[int, int]]:
        """Take staged copies (in our tmp/) into cur/ with fresh UIDs."""
        if not staged:
            return []
        with self._folder.locked():
            pairs = transfer.place_copies(self._folder, staged, source_keywords, self._record)
        self._announce()
        return pairs

    @_recovering
    def move(self, uids: Iterable[int], destination: IMailbox) -> Sequence[tuple[int, int]]:
        if isinstance(destination, MaildirMailbox) and transfer.same_device(
            self._folder, destination._folder
        ):
            sides = transfer.MoveSides(
                source=self._folder,
                destination=destination._folder,
                begin_destination=destination._begin_recovering,
                record_source=self._record,
                record_destination=destination._record,
            )
            pairs = transfer.move_files(sides, list(uids))
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

    @_recovering
    def expunge(self, uids: Iterable[int] | None = None) -> Sequence[int]:
        return self._remove(None if uids is None else list(uids), only_deleted=True)

    def _remove(self, uids: list[int] | None, only_deleted: bool) -> list[int]:
        folder = self._folder
        removed: list[int] = []
        with folder.locked():
            db = folder.db
            write = folder.begin()
            rows = db.rows_with_letter("T", uids) if only_deleted else db.rows(uids)
            before = folder.cur_signature()
            for row in rows:
                if only_deleted and "T" not in row.info:
                    continue
                try:
                    os.unlink(folder.path_of(row))
                except FileNotFoundError:
                    continue  # renamed or gone outside; the next sync settles it
                removed.append(row.uid)
                crash_point("expunge-unlinking")
            if removed:
                crash_point("expunge-unlinked")
                modseq = write.next_modseq()

                def commit() -> None:
                    db = folder.db
                    with db.transaction():
                        db.delete(removed, modseq)
                        folder.commit_meta(write)
                        folder.own_cur_change(before)
                    folder.maybe_compact(write)

                # The files are gone: the expunge happened.
                self._record(commit)
        self._announce()
        return removed

    @_recovering
    def claim_recent(self) -> frozenset[int]:
        db = self._folder.db
        if db.counters()[4] == 0:
            # Another session claimed them (every session of the mailbox
            # asks when a message arrives): no write transaction, which
            # would wait for the writers' on this thread.
            return frozenset()
        with db.transaction():
            claimed = db.claim_recent()
        return frozenset(claimed)

    @_recovering
    def check(self) -> None:
        look = self._gate.look(self._folder, self._watcher.quiet(self))
        if look is None:
            return  # nothing can have changed since the last check (quiet.py)
        with self._folder.locked():
            self._folder.sync()
        self._announce()
        self._gate.looked(self._folder, look)

    def refresh(self) -> None:
        """Tell listeners what another process recorded in the index (the
        watcher calls it when that process pings, :meth:`IndexedFolder.ping`):
        no lock and no listing, only the index read."""
        if not self._folder.closed:
            self._announce()

    def rebuild(self) -> int:
        """Throw the index away and rebuild it from the files; return the count."""
        return self._folder.rebuild()

    # -- IFullTextSearch ------------------------------------------------------------

    def search_text(self, needle: str, body_only: bool) -> Deferred[TextMatches | None] | None:
        if self._fulltext is None or self._folder.closed:
            return None
        return self._fulltext.search(needle, body_only)

    def rebuild_fulltext(self, progress: Progress | None = None) -> tuple[int, int] | None:
        """``mailsrv reindex``: (messages, octets); None if switched off."""
        return None if self._fulltext is None else self._fulltext.rebuild(progress)

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
        return self._folder.closed

    def shed(self) -> None:
        """Nobody uses the mailbox for now (kept open for the next session):
        let go of the memory a session needed."""
        self._folder.shed()

    @property
    def listened(self) -> bool:
        """Whether someone listens (so the watcher keeps it current)."""
        return bool(self._listeners)

    def watched_dirs(self) -> tuple[str, str]:
        return self._folder.new, self._folder.cur
