"""Catching up with new/ and cur/: what changed on disk that the index lacks.

Other programs change a Maildir without taking our lock: an MTA drops
files into new/, a mail reader renames files in cur/ to change flags or
unlinks them.  :meth:`IndexedFolder.sync
<mailsrv.storage.maildir.indexed.IndexedFolder.sync>` looks only when a
directory's signature (inode, size, mtime) says it may have changed
(:func:`stale`), and then compares names only, so an unchanged folder of
100,000 messages costs two set builds.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING

from mailsrv.log import get_logger
from mailsrv.storage.maildir.buildlog import BuildLog
from mailsrv.storage.maildir.index import Index
from mailsrv.storage.maildir.layout import (
    dir_signature,
    fsync_dir,
    signature_value,
    size_fields,
    split_filename,
    unique_name,
    wire_size,
)

if TYPE_CHECKING:
    from mailsrv.storage.maildir.indexed import IndexedFolder, Write

__all__ = ["diff_cur", "examine", "list_dir", "stale", "take_new"]

# One namespace for the whole backend: log lines name it, not its modules.
log = get_logger("mailsrv.storage.maildir")

#: A file in cur/ the index does not know: (base, file name, its stat, wire size).
Stranger = tuple[str, str, os.stat_result, int]


def stale(db: Index, path: str, key: str, recent_is_stale: bool = False) -> bool:
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
    recorded = str(db.get(key) or "")
    seen, _, flag = recorded.partition(" ")
    if signature != seen:
        return True
    return flag != "trusted" and (trusted_now or recent_is_stale)


def list_dir(path: str) -> tuple[list[str], str]:
    """The names in ``path`` (not dot files) and its signature as the index
    keeps it, taken from one listing the directory did not change under."""
    for _attempt in range(5):
        before, _ = dir_signature(path)
        listing = [n for n in os.listdir(path) if not n.startswith(".")]
        after, trusted = dir_signature(path)
        if before == after:
            break
    return listing, signature_value(after, trusted)


def take_new(folder: IndexedFolder, write: Write, taken: set[int]) -> dict[str, int]:
    """Move messages delivered into new/ to cur/ with UIDs taken first."""
    found = []
    for filename in sorted(os.listdir(folder.new)):
        if filename.startswith(".") or not os.path.isfile(os.path.join(folder.new, filename)):
            continue
        base, info = split_filename(filename)
        found.append((filename, base, info))
    if not found:
        return {}
    uids = folder.assign_uids(write, [base for _, base, _ in found], taken)
    arrived: dict[str, int] = {}
    for filename, base, info in found:
        target = os.path.join(folder.cur, f"{base}:2,{info}")
        if os.path.lexists(target):
            # Already in cur/ under this very name: a duplicate delivery.
            base = unique_name()
            target = os.path.join(folder.cur, f"{base}:2,{info}")
        try:
            os.rename(os.path.join(folder.new, filename), target)
        except FileNotFoundError:
            continue  # someone else moved it; the cur/ scan finds it
        arrived[base] = uids.get(base) or folder.allocate(write, [(base, None)])[0]
    if arrived:
        fsync_dir(folder.cur)
        fsync_dir(folder.new)
    return arrived


def diff_cur(
    folder: IndexedFolder, disk: set[str]
) -> tuple[list[int], list[tuple[int, str]], dict[str, str]]:
    """Compare a listing of cur/ with the index.

    Returns (vanished UIDs, (UID, new file name) of renamed messages,
    base -> file name of files the index does not know).  Only names
    that differ are looked at, so an unchanged mailbox costs two set
    builds however large it is.
    """
    db = folder.db
    indexed = folder.indexed_names()
    appeared = disk - indexed
    disappeared = indexed - disk
    if not appeared and not disappeared:
        return [], [], {}
    lookup = db.base_map() if len(appeared) + len(disappeared) > 1000 else None

    def known(base: str) -> tuple[int, str] | None:
        return lookup.get(base) if lookup is not None else db.by_base(base)

    renamed, strangers = _appeared(folder.cur, appeared, disappeared, known)
    renamed_bases = {split_filename(filename)[0] for _uid, filename in renamed}
    vanished: list[int] = []
    for filename in disappeared:
        base = split_filename(filename)[0]
        if base in renamed_bases or os.path.lexists(os.path.join(folder.cur, filename)):
            continue
        entry = known(base)
        if entry is not None:
            vanished.append(entry[0])
    return sorted(vanished), renamed, strangers


def _appeared(
    cur: str,
    appeared: set[str],
    disappeared: set[str],
    known: Callable[[str], tuple[int, str] | None],
) -> tuple[list[tuple[int, str]], dict[str, str]]:
    """Sort names new to the index into renamed messages (UID, new name) and
    strangers (base -> name): files it has never seen."""
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
            fresh = _separate_duplicate(cur, filename)
            if fresh is not None:
                strangers[split_filename(fresh)[0]] = fresh
        else:
            strangers[base] = filename
    return renamed, strangers


def _separate_duplicate(cur: str, filename: str) -> str | None:
    """Give a file whose base name is taken a fresh name; None if it is gone."""
    base, info = split_filename(filename)
    fresh = f"{unique_name()}:2,{info}"
    try:
        os.rename(os.path.join(cur, filename), os.path.join(cur, fresh))
    except FileNotFoundError:
        return None
    log.warn("two files share base name {base}; renamed one to {fresh}", base=base, fresh=fresh)
    return fresh


def examine(folder: IndexedFolder, strangers: dict[str, str]) -> list[Stranger]:
    """Stat the files the index did not know and work out their wire sizes
    (from the ``,W=`` field where the name has one); what cannot be read,
    or is not a regular file, is skipped with a warning."""
    added: list[Stranger] = []
    # Many files the index does not know: a first open of a big Maildir,
    # or a rebuild; an operator sees it advance in the log.
    progress = BuildLog("index of", folder.path, len(strangers), "files")
    for count, (base, filename) in enumerate(strangers.items()):
        if count % 500 == 0:
            progress.step(count)
        path = os.path.join(folder.cur, filename)
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                folder.warn_once(f"{path} is not a regular file; ignored")
                continue
            fields = size_fields(base)
            size = fields["W"] if "W" in fields else wire_size(path, st.st_size)
        except FileNotFoundError:
            continue  # renamed meanwhile; the next scan finds the new name
        except OSError as exc:
            folder.warn_once(f"cannot read {path}: {exc}; ignored")
            continue
        added.append((base, filename, st, size))
    progress.finished(len(added))
    return added
