"""STORE on disk: a message's flags are the letters after ``:2,`` in its
file name, so setting them renames the file, and the index records the
new name after (the file names are the truth).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs

from mailsrv.log import get_logger
from mailsrv.storage.maildir.index import Row
from mailsrv.storage.maildir.recovery import crash_point

if TYPE_CHECKING:
    from mailsrv.storage.maildir.indexed import IndexedFolder, Write

__all__ = ["Rename", "rename_files"]

# One namespace for the whole backend: log lines name it, not its modules.
log = get_logger("mailsrv.storage.maildir")

#: A row, its new flag letters and its new file name.
Rename = tuple[Row, str, str]


def rename_files(
    folder: IndexedFolder,
    write: Write,
    renames: Sequence[Rename],
    record: Callable[[Callable[[], None]], None],
) -> list[Row]:
    """Give messages their new flag letters by renaming their files, then
    have ``record`` commit the names to the index (lock held); the rows as
    they are now."""
    modseq = write.next_modseq()
    before = folder.cur_signature()
    done: list[Rename] = []
    try:
        for row, info, filename in renames:
            try:
                os.rename(folder.path_of(row), os.path.join(folder.cur, filename))
            except FileNotFoundError:
                continue  # changed or removed outside; the next sync sees it
            done.append((row, info, filename))
            crash_point("store-renaming")
    except OSError:
        # The STORE answers NO, so it must not have happened: give the
        # files renamed so far their old names back.
        _take_back(folder, done)
        raise
    crash_point("store-renamed")

    def commit() -> None:
        db = folder.db
        with db.transaction():
            for row, info, filename in done:
                db.update_file(row.uid, filename, info, modseq)
            folder.commit_meta(write)
            folder.own_cur_change(before)

    # The file names are the truth: the flags are set now.
    record(commit)
    return [
        attrs.evolve(row, filename=filename, info=info, modseq=modseq)
        for row, info, filename in done
    ]


def _take_back(folder: IndexedFolder, done: Sequence[Rename]) -> None:
    """Take back the renames of a STORE that failed part way (lock held).

    A file that cannot get its old name back keeps its new one: file
    names are the truth, so the next sync reads its flags from it.
    """
    for row, _, filename in reversed(done):
        try:
            os.rename(os.path.join(folder.cur, filename), folder.path_of(row))
        except OSError as exc:
            log.warn("cannot take back the flags of {name}: {error}", name=filename, error=exc)
