"""Fault points for the crash and fault-injection tests.

The write paths of the Maildir backend call :func:`crash_point` with a
name at each step a crash could interrupt (:data:`CRASH_POINTS`).  Unless a
test sets ``MAILSRV_CRASH_AT`` or ``MAILSRV_FAIL_AT`` in a process's
environment, a call costs one test of an empty string.
"""

from __future__ import annotations

import errno
import os
import signal

__all__ = ["CRASH_POINTS", "crash_point"]

#: Fault injection for the crash tests (tests/test_maildir_crash.py,
#: tests/test_faults.py; the kill soak, tests/stress/killsoak.py, kills at
#: random moments instead): with
#: ``MAILSRV_CRASH_AT=NAME`` (or ``NAME@N``: the Nth time) in its
#: environment, a process kills itself with SIGKILL when it reaches the
#: point called NAME, so a test can stop a real daemon at an exact instant;
#: with ``MAILSRV_FAIL_AT=NAME[@N]:ERRNO`` (``append-writing:EIO``) the
#: point raises that OSError instead, as a failing disk would.  Unset, as
#: they always are outside tests, they do nothing.
_CRASH_AT = os.environ.get("MAILSRV_CRASH_AT", "")
_FAIL_AT = os.environ.get("MAILSRV_FAIL_AT", "")
_crash_counts: dict[str, int] = {}

#: Every fault point, by write path, so a test can pick among them.
CRASH_POINTS = (
    "append-writing",  # a piece of the message written to tmp/
    "append-written",  # in tmp/, fsynced, no UID yet
    "append-allocated",  # UID in the UID list, file still in tmp/
    "append-placed",  # in cur/, the index not told
    "store-renaming",  # one file renamed to its new flags
    "store-renamed",  # all renamed, the index not told
    "expunge-unlinking",  # one file removed
    "expunge-unlinked",  # all removed, the index not told
    "copy-staged",  # links in the destination's tmp/
    "copy-placing",  # one copy in the destination's cur/
    "copy-placed",  # all placed and fsynced, the index not told
    "move-allocated",  # the destination's UIDs taken, nothing moved
    "move-renamed",  # one file moved
    "move-indexed",  # the destination's index told, the source's not
    "create-staged",  # the new folder built aside
    "create-renamed",  # renamed into place, not fsynced
    "rename-moving",  # one folder of a hierarchy renamed
    "rename-moved",  # all renamed, special uses not updated
    "delete-renamed",  # the folder moved aside, not removed
    "delete-removed",  # removed, special uses not updated
    "reindex-dropped",  # the index files removed, not rebuilt
    "compact-rewritten",  # the UID list rewritten, the index not told
    "meta-recorded",  # any change: the index's meta values written, not committed
    "index-creating",  # a new index file created, its tables not yet committed
)


def crash_point(name: str) -> None:
    """Die here (SIGKILL), or fail with an OSError, if the test in
    progress asks for ``name``."""
    if not (_CRASH_AT or _FAIL_AT):
        return
    if _reached(_CRASH_AT, name):
        os.kill(os.getpid(), signal.SIGKILL)
    if _FAIL_AT:
        where, _, code = _FAIL_AT.rpartition(":")
        if _reached(where, name):
            number = getattr(errno, code)
            raise OSError(number, f"{os.strerror(number)} (MAILSRV_FAIL_AT {_FAIL_AT})")


def _reached(spec: str, name: str) -> bool:
    point, _, nth = spec.partition("@")
    if point != name:
        return False
    key = spec
    _crash_counts[key] = _crash_counts.get(key, 0) + 1
    return _crash_counts[key] == int(nth or 1)
