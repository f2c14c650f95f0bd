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

import attrs

from mailsrv.log import get_logger
from mailsrv.storage.maildir.buildlog import BuildLog
from mailsrv.storage.maildir.index import Index, Row
from mailsrv.storage.maildir.layout import (
    dir_signature,
    fsync_dir,
    saved_now,
    signature_parts,
    signature_value,
    size_fields,
    split_filename,
    unique_name,
    wire_size,
)

if TYPE_CHECKING:
    from mailsrv.storage.maildir.indexed import IndexedFolder, Write

__all__ = ["diff_cur", "examine", "list_dir", "stale", "sync", "take_new"]

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
    seen, trusted = signature_parts(db.get(key))
    if signature != seen:
        return True
    return not trusted and (trusted_now or recent_is_stale)


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


def examine(folder: IndexedFolder, strangers: dict[str, str], progress: BuildLog) -> list[Stranger]:
    """Stat the files the index did not know and work out their wire sizes
    (from the ``,W=`` field where the name has one); what cannot be read,
    or is not a regular file, is skipped with a warning. ``progress`` is
    told how far it got (the slow part of a big build: a file without
    ``,W=`` is read)."""
    added: list[Stranger] = []
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
    return added


def sync(folder: IndexedFolder, force: bool = False, rebuild: bool = False) -> None:
    """Bring the index in line with new/ and cur/ (lock held).

    ``force``: list both directories whatever their signatures say;
    ``rebuild``: a new index, whose messages are not \\Recent again.
    """
    db = folder.db
    write = folder.prepare()
    # UIDs in the list the index has not recorded: a writer died between
    # taking them and committing; its files get them now (see begin).
    force = force or bool(write.hints)
    # new/ is small (only what arrived since the last look): rescan it
    # while its signature is too recent to trust.  cur/ can hold 100,000
    # names: a matching recent signature is taken at its word until it
    # ages (see scan.stale).
    scan_new = force or stale(db, folder.new, "sig_new", recent_is_stale=True)
    scan_cur = force or stale(db, folder.cur, "sig_cur")
    if not (scan_new or scan_cur):
        _settle(folder, write)
        return
    taken: set[int] = set()
    arrived: dict[str, int] = {}  # base -> uid, moved from new/ now
    meta: dict[str, object] = {}
    if scan_new:
        arrived = take_new(folder, write, taken)
        signature, trusted = dir_signature(folder.new)
        meta["sig_new"] = signature_value(signature, trusted)
        if not arrived and not scan_cur:
            with db.transaction():
                db.put("sig_new", meta["sig_new"])
                folder.commit_meta(write)
            return
    # cur/ always changes when something arrived, so list it then too.
    listing, meta["sig_cur"] = list_dir(folder.cur)
    vanished, renamed, strangers = diff_cur(folder, set(listing))
    # Many files the index does not know (a first open of a big Maildir,
    # a rebuild): an operator sees the build advance in the log.
    progress = BuildLog("index of", folder.path, len(strangers), "files")
    rows = _new_rows(folder, write, strangers, taken, arrived, rebuild, progress)
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
        folder.commit_meta(write)
    progress.finished(len(rows))
    if rows or renamed or vanished:
        folder.changed()


def _settle(folder: IndexedFolder, write: Write) -> None:
    """Nothing to scan: record only what the UID list moved on (a tail
    appended by another process, a rewrite by a repair)."""
    db = folder.db
    if (
        write.uidnext != db.get_int("uidnext")
        or write.uidlist_off != db.get("uidlist_off")
        or write.uidlist_ino != db.get("uidlist_ino")  # rewritten by a repair
    ):
        with db.transaction():
            folder.commit_meta(write)


def _new_rows(
    folder: IndexedFolder,
    write: Write,
    strangers: dict[str, str],
    taken: set[int],
    arrived: dict[str, int],
    rebuild: bool,
    progress: BuildLog,
) -> list[Row]:
    """Index rows for files in cur/ the index did not know, UIDs assigned."""
    added = examine(folder, strangers, progress)
    if not added:
        return []
    added.sort(key=lambda item: (item[2].st_mtime_ns, item[0]))
    uid_of = folder.assign_uids(write, [base for base, _, _, _ in added], taken, arrived)
    modseq = write.next_modseq()
    saved = saved_now()
    rows: list[Row] = []
    for base, filename, st, size in added:
        row = Row(
            uid=uid_of[base],
            base=base,
            filename=filename,
            info=split_filename(filename)[1],
            mtime_ns=st.st_mtime_ns,
            size=size,
            raw=size == st.st_size,
            modseq=modseq,
            recent=base in arrived or not rebuild,
            # Found now (delivered by another program, RFC 8514 3's
            # arrival as far as we can know); a rebuild cannot know.
            saved=saved if base in arrived or not rebuild else None,
        )
        uidl = write.uidls.get(base) if write.hints.get(base) == row.uid else None
        rows.append(attrs.evolve(row, pop3_uidl=uidl) if uidl else row)
    return rows
