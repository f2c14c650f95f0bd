"""COPY and MOVE between two Maildir folders of one storage, as files.

A copy is a hard link (a real copy across file systems) staged in the
destination's tmp/ and renamed into its cur/ under UIDs fsynced first; a
MOVE within one file system renames each file straight into the
destination, so whatever instant the process dies at, a message is in
exactly one of the two folders (RFC 6851 3.3).  The mailbox objects
(:mod:`.folder`) lock, record and tell their listeners; the functions here
do the file work and hand back the index changes to record.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Sequence
from typing import IO

import attrs
from twisted.internet.defer import Deferred

from mailsrv.errors import StorageError
from mailsrv.interfaces import SYSTEM_FLAGS, IMailbox
from mailsrv.storage.maildir.index import Row
from mailsrv.storage.maildir.indexed import IndexedFolder, Write
from mailsrv.storage.maildir.keywords import KeywordTable, sorted_info
from mailsrv.storage.maildir.layout import fsync_dir, ns_datetime, saved_now, unique_name
from mailsrv.storage.maildir.recovery import crash_point

__all__ = ["Staged", "move_files", "place_copies", "same_device", "stage_copies"]

#: A message copied into the destination's tmp/: (its row in the source,
#: the staged file's path, the base name it gets in the destination).
Staged = tuple[Row, str, str]

#: Records an index change the files already show (``MaildirMailbox._record``).
Record = Callable[[Callable[[], None]], None]


def same_device(source: IndexedFolder, destination: IndexedFolder) -> bool:
    """Whether a rename reaches from one folder to the other."""
    return os.stat(source.cur).st_dev == os.stat(destination.cur).st_dev


def _link_into(source: IndexedFolder, row: Row, target: str) -> None:
    """Put a copy of the message at ``target``: a hard link where possible."""
    path = source.path_of(row)
    try:
        os.link(path, target)
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    shutil.copyfile(path, target)
    os.utime(target, ns=(row.mtime_ns, row.mtime_ns))
    with open(target, "rb") as handle:
        os.fsync(handle.fileno())


def _translated_info(destination: IndexedFolder, row: Row, source_keywords: KeywordTable) -> str:
    """The flag letters in ``destination`` of a message from another folder
    (each folder numbers its keywords itself); letters without an IMAP flag
    are kept."""
    flags = source_keywords.flags(row.info)
    system = frozenset(f for f in flags if f in SYSTEM_FLAGS)
    keywords = tuple(sorted(f for f in flags if f not in SYSTEM_FLAGS))
    kept = {c for c in row.info if not source_keywords.managed(c) and not ("a" <= c <= "z")}
    return sorted_info(destination.keywords.letters(system, keywords, allocate=True) | kept)


# --------------------------------------------------------------------------
# COPY


def stage_copies(
    source: IndexedFolder, rows: Sequence[Row], destination: IndexedFolder
) -> list[Staged]:
    """Copy the messages of ``rows`` into ``destination``'s tmp/; messages
    gone meanwhile are left out.  On failure nothing staged is left behind."""
    staged: list[Staged] = []
    try:
        for row in rows:
            disk = row.size if row.raw else os.stat(source.path_of(row)).st_size
            base = f"{unique_name()},S={disk},W={row.size}"
            tmp_path = os.path.join(destination.tmp, base)
            try:
                _link_into(source, row, tmp_path)
            except FileNotFoundError:
                # Renamed by a flag change elsewhere, or expunged: catch up.
                fresh = source.reload(row.uid)
                if fresh is None:
                    continue
                row = fresh
                try:
                    _link_into(source, row, tmp_path)
                except FileNotFoundError:
                    continue
            staged.append((row, tmp_path, base))
        crash_point("copy-staged")
    except BaseException:
        drop_staged(staged)
        raise
    return staged


def drop_staged(staged: Sequence[Staged]) -> None:
    """Remove what is left of staged copies (placed ones are gone already)."""
    for _row, tmp_path, _base in staged:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)


def place_copies(
    destination: IndexedFolder,
    staged: Sequence[Staged],
    source_keywords: KeywordTable,
    record: Record,
) -> list[tuple[int, int]]:
    """Take staged copies (in the destination's tmp/) into its cur/ with
    fresh UIDs (lock held); ``(source UID, new UID)`` pairs."""
    destination.keywords.refresh()
    infos = [_translated_info(destination, row, source_keywords) for row, _tmp, _base in staged]
    write = destination.begin()
    uids = destination.allocate(write, [(base, None) for _row, _tmp, base in staged])
    modseq = write.next_modseq()
    before = destination.cur_signature()
    rows: list[Row] = []
    pairs: list[tuple[int, int]] = []
    placed: list[str] = []
    saved = saved_now()
    try:
        for (row, tmp_path, base), info, uid in zip(staged, infos, uids, strict=True):
            filename = f"{base}:2,{info}"
            os.rename(tmp_path, os.path.join(destination.cur, filename))
            placed.append(os.path.join(destination.cur, filename))
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
                    saved=saved,  # RFC 8514 3: the copy's own, never the source's
                )
            )
            pairs.append((row.uid, uid))
            crash_point("copy-placing")
        fsync_dir(destination.cur)
        crash_point("copy-placed")
    except Exception:
        # The COPY answers NO, so it must not have happened: take back the
        # copies already placed (their UIDs stay used).
        for path in placed:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise

    def commit() -> None:
        db = destination.db
        with db.transaction():
            db.insert(rows)
            destination.commit_meta(write)
            destination.own_cur_change(before)

    record(commit)
    return pairs


# --------------------------------------------------------------------------
# MOVE


@attrs.frozen
class MoveSides:
    """The two folders of a MOVE (the same one for a MOVE within a folder),
    with what the mailboxes contribute: the destination's :meth:`begin`
    that rebuilds its own damaged index, and each side's ``record``."""

    source: IndexedFolder
    destination: IndexedFolder
    begin_destination: Callable[[], Write]
    record_source: Record
    record_destination: Record


def move_files(sides: MoveSides, uids: list[int]) -> list[tuple[int, int]]:
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
    file with its UID in the tail of its UID list (see
    :meth:`IndexedFolder.begin`), the source finds it gone and records
    the expunge.
    """
    source, destination = sides.source, sides.destination
    # Both folders are locked, always in the same order, so two MOVEs
    # in opposite directions cannot deadlock.
    folders = sorted({source, destination}, key=lambda folder: folder.path)
    with contextlib.ExitStack() as stack:
        for folder in folders:
            stack.enter_context(folder.locked())
        source.keywords.refresh()
        destination.keywords.refresh()
        source_write = source.begin()
        plan = _plan_move(source, uids, destination)
        if not plan:
            return []
        target_write = source_write if destination is source else sides.begin_destination()
        new_uids = destination.allocate(target_write, [(base, None) for _r, base, _i in plan])
        crash_point("move-allocated")
        source_before = source.cur_signature()
        target_before = destination.cur_signature()
        moved: list[tuple[Row, Row]] = []
        try:
            for (row, base, info), uid in zip(plan, new_uids, strict=True):
                filename = f"{base}:2,{info}"
                try:
                    os.rename(source.path_of(row), os.path.join(destination.cur, filename))
                except FileNotFoundError:
                    continue  # renamed outside meanwhile: it stays where it is
                moved.append(
                    (row, attrs.evolve(row, uid=uid, base=base, filename=filename, info=info))
                )
                crash_point("move-renamed")
            fsync_dir(destination.cur)
            fsync_dir(source.cur)
        finally:
            # What was renamed is moved, even if a later rename failed.
            if moved:
                _record_move(
                    sides, moved, (source_write, source_before), (target_write, target_before)
                )
    return [(row.uid, new.uid) for row, new in moved]


def _plan_move(
    source: IndexedFolder, uids: list[int], destination: IndexedFolder
) -> list[tuple[Row, str, str]]:
    """(row, new base name, flag letters in the destination) of each message
    still in place."""
    plan: list[tuple[Row, str, str]] = []
    for row in source.db.rows(uids):
        try:
            disk = row.size if row.raw else os.stat(source.path_of(row)).st_size
        except FileNotFoundError:
            continue  # renamed outside meanwhile: it stays where it is
        base = f"{unique_name()},S={disk},W={row.size}"
        plan.append((row, base, _translated_info(destination, row, source.keywords)))
    return plan


def _record_move(
    sides: MoveSides,
    moved: Sequence[tuple[Row, Row]],
    source_side: tuple[Write, str],
    target_side: tuple[Write, str],
) -> None:
    """Step 3 of :func:`move_files`: both indexes learn what the files show
    (each side: its write and cur/'s signature before the renames)."""
    source, destination = sides.source, sides.destination
    (source_write, source_before), (target_write, target_before) = source_side, target_side
    saved = saved_now()  # RFC 8514 3: a moved message is saved anew
    added = [
        attrs.evolve(
            new, modseq=target_write.next_modseq(), recent=True, pop3_uidl=None, saved=saved
        )
        for _row, new in moved
    ]
    gone = [row.uid for row, _new in moved]

    def commit_target() -> None:
        db = destination.db
        with db.transaction():
            db.insert(added)
            if destination is source:
                db.delete(gone, source_write.next_modseq())
            destination.commit_meta(target_write)
            destination.own_cur_change(target_before)

    def commit_source() -> None:
        db = source.db
        with db.transaction():
            db.delete(gone, source_write.next_modseq())
            source.commit_meta(source_write)
            source.own_cur_change(source_before)
        source.maybe_compact(source_write)

    sides.record_destination(commit_target)
    if destination is not source:
        crash_point("move-indexed")
        sides.record_source(commit_source)


def copy_elsewhere(
    rows: Sequence[Row],
    destination: IMailbox,
    open_message: Callable[[int], IO[bytes]],
    keywords: KeywordTable,
) -> list[tuple[int, int]]:
    """COPY to a mailbox of another backend: append the messages one by one
    (their flags from ``keywords``, their dates from the files)."""
    pairs: list[tuple[int, int]] = []
    for row in rows:
        with open_message(row.uid) as handle:
            result = destination.append(handle, keywords.flags(row.info), ns_datetime(row.mtime_ns))
        if isinstance(result, Deferred):
            raise StorageError("copy needs a destination that appends synchronously")
        pairs.append((row.uid, int(result)))
    return pairs
