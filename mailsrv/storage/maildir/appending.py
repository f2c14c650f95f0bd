"""APPEND of one or several messages into a Maildir folder, all or none.

Each message is first written to the folder's tmp/ and fsynced, with no
lock held (a big message does not hold up the folder's other writers);
then, under the lock, the batch gets its UIDs (fsynced into the UID list)
and is renamed into cur/, and cur/ is fsynced once.  If anything fails
before that fsync succeeds, the files already renamed are taken back, so
a NO leaves the folder as it was (RFC 3502: no partial appending); the
UIDs allocated stay used, which only leaves a gap.

A crash during the renames can leave the first messages of an
unacknowledged batch in cur/ (a Maildir has no way to rename several
files at once); the client, having had no answer, may append them again.
Nothing acknowledged is ever lost.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence

import attrs

from mailsrv.interfaces import NewMessage
from mailsrv.storage.maildir.index import Row
from mailsrv.storage.maildir.indexed import IndexedFolder
from mailsrv.storage.maildir.keywords import sorted_info, split_flags
from mailsrv.storage.maildir.layout import (
    datetime_ns,
    fsync_dir,
    saved_now,
    unique_name,
    write_tmp,
)
from mailsrv.storage.maildir.recovery import crash_point

__all__ = ["Staged", "drop", "place", "stage"]

#: Records an index change the files already show (``MaildirMailbox._record``).
Record = Callable[[Callable[[], None]], None]


@attrs.frozen
class Staged:
    """One message written to tmp/, waiting for its UID."""

    tmp_path: str
    size: int
    date_ns: int
    system: frozenset[str]
    keywords: tuple[str, ...]


def stage(folder: IndexedFolder, messages: Sequence[NewMessage]) -> list[Staged]:
    """Write every message to tmp/ (flags checked first); on any failure
    nothing is left there."""
    staged: list[Staged] = []
    try:
        for message in messages:
            system, keywords = split_flags(message.flags)
            date_ns = datetime_ns(message.internal_date)
            path, size = write_tmp(folder.tmp, message.source, date_ns)
            staged.append(Staged(path, size, date_ns, system, keywords))
    except BaseException:
        drop(staged)
        raise
    return staged


def drop(staged: Sequence[Staged]) -> None:
    """Remove what is left in tmp/ (placed messages are gone from it)."""
    for item in staged:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(item.tmp_path)


def place(folder: IndexedFolder, staged: Sequence[Staged], record: Record) -> list[int]:
    """Move staged messages into cur/ under fresh UIDs (lock held); their
    UIDs, in order.  Either every message is placed and durable, or none
    is in cur/ when this raises."""
    if not staged:
        return []
    folder.keywords.refresh()
    infos = [
        sorted_info(folder.keywords.letters(item.system, item.keywords, allocate=True))
        for item in staged
    ]
    bases = [f"{unique_name()},S={item.size},W={item.size}" for item in staged]
    write = folder.begin()
    uids = folder.allocate(write, [(base, None) for base in bases])
    crash_point("append-allocated")
    modseq = write.next_modseq()
    before = folder.cur_signature()
    rows: list[Row] = []
    placed: list[str] = []
    saved = saved_now()
    try:
        for item, info, base, uid in zip(staged, infos, bases, uids, strict=True):
            filename = f"{base}:2,{info}"
            target = os.path.join(folder.cur, filename)
            os.rename(item.tmp_path, target)
            placed.append(target)
            rows.append(
                Row(
                    uid=uid,
                    base=base,
                    filename=filename,
                    info=info,
                    mtime_ns=item.date_ns,
                    size=item.size,
                    raw=True,
                    modseq=modseq,
                    recent=True,
                    saved=saved,  # RFC 8514 3: when it arrived
                )
            )
        fsync_dir(folder.cur)
    except BaseException:
        # Not known to be durable, so not acknowledged: take every placed
        # file back, or the client's retry would store them twice.
        for path in placed:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    crash_point("append-placed")

    def commit() -> None:
        db = folder.db
        with db.transaction():
            db.insert(rows)
            folder.commit_meta(write)
            folder.own_cur_change(before)

    record(commit)
    return uids
