"""Files the daemon's parent process read for its workers, each used once.

twistd reads the TLS key and the users file while it is still root, then
drops to ``--uid``; a key only root may read keeps working until the next
restart (docs/admin-guide.md).  Worker processes (:mod:`mailsrv.workers`)
start after that drop, so the parent hands them the bytes it read, and
the first read of each path at the worker's startup takes them from here
instead of the file.  Every later read (a reload, a users file that
changed) goes to the file, as it does in a single process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

__all__ = ["Stamp", "install", "read", "take"]

#: (device, inode, size, mtime in ns) of what was read: the users file
#: compares it with a fresh ``stat`` to see whether to read again.
Stamp = tuple[int, int, int, int]

_files: dict[str, tuple[bytes, Stamp]] = {}


def read(paths: Iterable[str]) -> dict[str, tuple[bytes, Stamp]]:
    """The contents and stamps of the files at ``paths`` that can be read
    now (the parent, as root); the others are left to the workers, whose
    own read then reports the problem."""
    found: dict[str, tuple[bytes, Stamp]] = {}
    for path in paths:
        try:
            with open(path, "rb") as handle:
                st = os.fstat(handle.fileno())
                found[path] = (handle.read(), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            continue
    return found


def install(files: Mapping[str, tuple[bytes, Stamp]]) -> None:
    """Make ``files`` the answers of the first :func:`take` of each path."""
    _files.clear()
    _files.update(files)


def take(path: str) -> tuple[bytes, Stamp] | None:
    """The preloaded contents of ``path`` (once), or None: read the file."""
    return _files.pop(path, None)
