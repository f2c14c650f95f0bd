"""What keeps a folder consistent through crashes and damage.

The files are the truth, the UID list keeps UIDs from ever being reused,
and the index is a cache (docs/maildir.md, "What happens on a crash"):

* a damaged index is moved aside for diagnosis and rebuilt from the files
  and the UID list, keeping UIDVALIDITY and every UID (:func:`discard_index`);
* an index that went back in time (its WAL lost, an old copy put back) is
  caught by the MODSEQ floor kept in ``mailsrv-lock`` (:func:`read_floor`);
* a UID list torn by a crash in mid-append, cut short or put back from a
  backup is repaired before anything reads UIDs from it or appends to it
  (:func:`read_uidlist`), and a missing one is recreated from the index,
  adopted from Dovecot's ``dovecot-uidlist``, or started afresh
  (:func:`recreate_uidlist`);
* the crash tests stop a real process at named points (:func:`crash_point`,
  kept in :mod:`.faults`).

Everything here runs under the folder's lock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections.abc import Mapping
from typing import TYPE_CHECKING

from mailsrv.errors import StorageError
from mailsrv.log import get_logger
from mailsrv.storage.maildir.faults import CRASH_POINTS, crash_point
from mailsrv.storage.maildir.index import Index
from mailsrv.storage.maildir.layout import DOVECOT_UIDLIST_NAME, split_filename
from mailsrv.storage.maildir.schema import move_aside
from mailsrv.storage.maildir.uidlist import UidList, UidListData, folder_guid, mint_uidvalidity

if TYPE_CHECKING:
    from mailsrv.storage.maildir.indexed import IndexedFolder

__all__ = [
    "CRASH_POINTS",
    "crash_point",
    "discard_index",
    "raise_floor",
    "read_floor",
    "read_uidlist",
    "recreate_uidlist",
]

# One namespace for the whole backend: log lines name it, not its modules.
log = get_logger("mailsrv.storage.maildir")

# --------------------------------------------------------------------------
# The index


def read_floor(lock_fd: int) -> int:
    """The highest MODSEQ the folder handed out, kept in ``mailsrv-lock``
    (open as ``lock_fd``) outside the index: an index whose HIGHESTMODSEQ is
    below it went back in time (its WAL lost or from another time, an old
    copy put back) and would hand out MODSEQs clients already saw."""
    value = os.pread(lock_fd, 32, 0).strip()
    return int(value) if value.isdigit() else 0


def raise_floor(lock_fd: int, modseq: int) -> None:
    """Record ``modseq`` as handed out (a write that survives the process
    being killed, as the index's WAL does)."""
    if modseq > read_floor(lock_fd):
        os.pwrite(lock_fd, b"%020d\n" % modseq, 0)


def discard_index(path: str, index: Index | None, reason: str) -> None:
    """Move the damaged index at ``path`` aside, kept for diagnosis, and
    close ``index`` (its open connection); the next open rebuilds it."""
    # Renamed before the connection is closed: SQLite then leaves the
    # files as they are (closing would apply the WAL and delete it).
    kept = move_aside(path)
    if index is not None:
        with contextlib.suppress(sqlite3.Error):
            index.close()
    log.warn(
        "index {path} cannot be used ({reason}); kept as {kept}, rebuilding it from the files",
        path=path,
        reason=reason,
        kept=kept,
    )


# --------------------------------------------------------------------------
# The UID list


def recreate_uidlist(folder: IndexedFolder, index: Index | None) -> bool:
    """There is no UID list at all: write one from the index, else from
    Dovecot's ``dovecot-uidlist`` (UIDVALIDITY, UIDs and POP3 UIDLs kept),
    else a new one.  True if it is new (nothing was known about the folder)."""
    if index is not None:
        folder.uidlist.rewrite(
            index.get_int("uidvalidity"), index.get_int("uidnext"), index.uidlist_entries()
        )
        return False
    dovecot = os.path.join(folder.path, DOVECOT_UIDLIST_NAME)
    adopted = UidList(dovecot).read()
    if adopted is None:
        folder.uidlist.rewrite(mint_uidvalidity(folder.root), 1, [])
        return True
    log.info(
        "adopting {path}: UIDVALIDITY {uidvalidity}, UIDNEXT {uidnext}",
        path=dovecot,
        uidvalidity=adopted.uidvalidity,
        uidnext=adopted.next_free,
    )
    folder.uidlist.rewrite(
        adopted.uidvalidity,
        adopted.next_free,
        [
            (uid, base, adopted.pop3_uidls.get(base))
            for base, uid in adopted.entries.items()
            if not base.startswith("\0")
        ],
        guid=folder_guid(adopted),  # Dovecot's mailbox GUID: the same MAILBOXID
    )
    return False


def read_uidlist(
    folder: IndexedFolder, index: Index | None, replaced: bool = False
) -> UidListData | None:
    """The whole UID list, repaired first if it cannot be taken as it is;
    None if there is none.  ``replaced``: it is not the file the index last
    read (cut short, or put back from a backup), so it may lack records the
    index knows."""
    data = folder.uidlist.read()
    if data is None and not folder.uidlist.exists():
        return None
    if data is None or data.torn or data.damaged or (replaced and _lacks(data, index)):
        data = _repair(folder, data, index)
    return data


def _lacks(data: UidListData, index: Index | None) -> bool:
    """Whether the index knows UIDs the list does not (same UIDVALIDITY)."""
    if index is None or index.get_int("uidvalidity") != data.uidvalidity:
        return False
    if index.get_int("uidnext") > data.next_free:
        return True
    return any(base not in data.entries for _uid, base, _uidl in index.uidlist_entries())


def _repair(folder: IndexedFolder, data: UidListData | None, index: Index | None) -> UidListData:
    """Make a damaged UID list trustworthy again before anything reads UIDs
    from it or appends to it.

    RFC 3501 2.3.1.1: under one UIDVALIDITY a UID names one message
    forever.  So a torn last line is never appended to, and the UID it
    held stays used (its file gets it back when the line names the file
    legibly); records the index still knows are put back; and a list
    whose header is unreadable or that holds lines that are not records
    is replaced: from the index when the index agrees on UIDVALIDITY,
    else with a new UIDVALIDITY (clients download the folder again)
    rather than guessing.
    """
    path = folder.uidlist.path
    trusted = (
        index
        if index is not None and (data is None or index.get_int("uidvalidity") == data.uidvalidity)
        else None
    )
    broken = path + ".broken"
    if data is None or data.damaged:
        shutil.copyfile(path, broken)
        if trusted is None:
            return _start_afresh(folder, data, broken)
        what = f"kept as {broken}; rewritten from the index"
    else:
        what = "repaired" if data.torn else "records restored from the index"
    entries: dict[str, int] = {}
    uidls: dict[str, str] = {}
    uidnext = 1
    validity = 0
    if data is not None:
        entries = {b: u for b, u in data.entries.items() if not b.startswith("\0")}
        uidls = dict(data.pop3_uidls)
        uidnext = data.next_free
        validity = data.uidvalidity
    if trusted is not None:
        validity = trusted.get_int("uidvalidity")
        uidnext = max(uidnext, _restore(trusted, entries, uidls))
    torn = ""
    if data is not None and data.torn:
        owner = _torn_owner(folder, data, entries)
        if owner is not None and data.torn_uid is not None:
            entries[owner] = data.torn_uid
        torn = f"; its torn last line counts UID {data.reserved} as used" + (
            f" and gives it back to {owner}" if owner else ""
        )
    # The GUID (MAILBOXID) goes with the UIDVALIDITY it was given with.
    guid = folder_guid(data) if data is not None and data.uidvalidity == validity else None
    folder.uidlist.rewrite(
        validity,
        uidnext,
        [(uid, base, uidls.get(base)) for base, uid in entries.items()],
        guid=guid,
    )
    log.warn(
        "{path} was damaged{torn}; {what}; UIDVALIDITY {validity} kept",
        path=path,
        torn=torn,
        what=what,
        validity=validity,
    )
    repaired = folder.uidlist.read()
    if repaired is None or repaired.torn or repaired.damaged:
        raise StorageError(f"cannot repair {path}")
    return repaired


def _start_afresh(folder: IndexedFolder, data: UidListData | None, broken: str) -> UidListData:
    """A UID list nothing vouches for: a new UIDVALIDITY, rather than a guess."""
    validity = mint_uidvalidity(folder.root)
    folder.uidlist.rewrite(validity, 1, [])
    log.warn(
        "{path} cannot be trusted (unreadable header or lines) and no index knows "
        "its UIDs; kept as {broken}; UIDVALIDITY changes from {old} to {new}, so "
        "clients download the folder again",
        path=folder.uidlist.path,
        broken=broken,
        old=data.uidvalidity if data is not None else "unknown",
        new=validity,
    )
    fresh = folder.uidlist.read()
    assert fresh is not None
    return fresh


def _restore(index: Index, entries: dict[str, int], uidls: dict[str, str]) -> int:
    """Put back into ``entries`` (and ``uidls``) the records ``index`` knows
    that the list lost, where neither base name nor UID is taken; returns
    the index's UIDNEXT."""
    taken = set(entries.values())
    for uid, base, uidl in index.uidlist_entries():
        if base not in entries and uid not in taken:
            entries[base] = uid
            taken.add(uid)
            if uidl:
                uidls[base] = uidl
    return index.get_int("uidnext")


def _torn_owner(folder: IndexedFolder, data: UidListData, entries: Mapping[str, int]) -> str | None:
    """The file a torn last line was written for, if its start names exactly one."""
    if data.torn_uid is None or not data.torn_base or data.torn_uid in entries.values():
        return None
    found = {
        split_filename(name)[0]
        for directory in (folder.cur, folder.new)
        for name in os.listdir(directory)
        if name.startswith(data.torn_base)
    }
    found -= set(entries)
    return found.pop() if len(found) == 1 else None
