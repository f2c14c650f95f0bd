"""Local delivery: the one code path of ``mailsrv deliver USER`` and LMTP.

An MTA hands over one message, through a pipe (``mailsrv deliver``, run by
Postfix's ``pipe(8)``, procmail, fetchmail ``--mda``) or over LMTP;
:func:`store` files it in any :class:`~mailsrv.interfaces.IStorage` account
and fires only once the backend says it is durable.  For Maildir that is:
written to ``tmp/``, fsynced, its UID fsynced into ``mailsrv-uidlist``,
renamed into ``cur/``, the directory fsynced, then committed to the index
(the message lands already indexed and \\Recent, so the next IMAP session
sees it without a directory scan); for PostgreSQL, the transaction that
holds the body and the row committed.

Every backend call may answer directly or with a Deferred (the daemon's
storages use threads); :func:`store` chains them either way, so without a
reactor (``mailsrv deliver``) the result is there when it returns and
:func:`deliver` hands it back synchronously.

Failures are :mod:`mailsrv.errors`: :class:`TemporaryFailure` for anything
the administrator or time can fix (disk full, I/O error, permissions, a
locked index, the database away), which ``mailsrv deliver`` turns into
EX_TEMPFAIL (75) and LMTP into ``451 4.3.0``, so the MTA keeps the message
and retries.
"""

from __future__ import annotations

import errno
import sqlite3
import tempfile
from typing import IO, Any, cast

from twisted.internet import defer
from twisted.python.failure import Failure

from mailsrv import log, quota
from mailsrv.errors import InvalidMailboxName, NoSuchMailbox, StorageError, TemporaryFailure
from mailsrv.interfaces import IAccount, IMailbox, IStorage, maybe_deferred
from mailsrv.quota import UNLIMITED, QuotaLimits
from mailsrv.storage import names

__all__ = ["EmptyMessage", "deliver", "open_account", "reindex", "store"]

_log = log.get_logger(__name__)

#: Bytes read at once from the message source.
CHUNK = 64 * 1024


class EmptyMessage(StorageError):
    """The source held no bytes at all: there is no message to store.

    The MTA sends at least a header, so this is a broken caller; the CLI
    answers EX_DATAERR and LMTP 554 instead of filing an empty file as mail.
    """

    code = "CANNOT"


class _Peeked:
    """A source with its first chunk already read, handed back first."""

    def __init__(self, first: bytes, rest: IO[bytes]) -> None:
        self._first: bytes | None = first
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return self._rest.read(size)


def _mailbox(account: IAccount, folder: str, quiet: bool) -> defer.Deferred[IMailbox]:
    """The target folder, or INBOX when it is missing or invalid (as Dovecot's LDA)."""
    if names.is_inbox(folder):
        return maybe_deferred(account.get_mailbox, names.INBOX)

    def fall_back(failure: Failure) -> Any:
        failure.trap(NoSuchMailbox, InvalidMailboxName)
        emit = _log.info if quiet else _log.warn
        emit(
            "deliver to {user}: folder {folder!r} unusable ({reason}); delivering to INBOX",
            user=account.username,
            folder=folder,
            reason=str(failure.value),
        )
        return account.get_mailbox(names.INBOX)

    return maybe_deferred(account.get_mailbox, folder).addErrback(fall_back)


def _temporary(failure: Failure, user: str) -> Failure:
    """A file-system or index error becomes a TemporaryFailure naming it;
    storage errors and anything unexpected pass unchanged."""
    exc = failure.value
    if isinstance(exc, StorageError):
        return failure
    if isinstance(exc, OSError):
        reason = errno.errorcode.get(exc.errno or 0, "error")
        return Failure(TemporaryFailure(f"cannot store message for {user}: {reason}: {exc}"))
    if isinstance(exc, sqlite3.Error):
        return Failure(TemporaryFailure(f"index of {user} unavailable: {exc}"))
    return failure


def open_account(storage: IStorage, user: str, home: str | None) -> defer.Deferred[IAccount]:
    """The recipient's account; a file-system error opening it (a Maildir
    that cannot be created) is a :class:`TemporaryFailure`, as in :func:`store`."""
    opened = maybe_deferred(storage.account, user, home)
    return opened.addErrback(_temporary, user)


def store(
    account: IAccount,
    source: IO[bytes],
    folder: str = names.INBOX,
    *,
    quiet: bool = False,
    limits: QuotaLimits = UNLIMITED,
    size: int | None = None,
) -> defer.Deferred[tuple[str, int]]:
    """Store the message read from ``source`` in ``folder``; fire with the
    name of the mailbox it landed in and its UID.

    The message is streamed (never held in memory whole) and bare LF line
    ends are stored as CRLF.  A missing or invalid ``folder`` falls back to
    INBOX, logged as a warning (as information with ``quiet``: LMTP's
    ``+detail`` names a folder that may well not exist).  Fails with
    :class:`EmptyMessage` for empty input and :class:`TemporaryFailure`
    when the message could not be stored but a later attempt may succeed.

    With quota ``limits``, the message is measured first (``size``, its
    wire size, when the caller knows it; else it is spooled to a temporary
    file and counted) and refused whole with :class:`OverQuota` when it
    would not fit, before anything is written.
    """
    user = account.username
    try:
        first = source.read(CHUNK)
    except Exception:
        return defer.fail().addErrback(_temporary, user)
    if not first:
        return defer.fail(EmptyMessage("empty message refused: the input held no bytes"))
    if limits.limited:
        if size is None:
            try:
                source, size = _spool(first, source)
                first = source.read(CHUNK)
            except Exception:
                return defer.fail().addErrback(_temporary, user)
        checked = quota.check(account, limits, size)
        found = checked.addCallback(lambda _: _mailbox(account, folder, quiet))
    else:
        found = _mailbox(account, folder, quiet)

    def append(mailbox: IMailbox) -> defer.Deferred[tuple[str, int]]:
        # append only reads its source: _Peeked is enough of an IO for it.
        peeked = cast("IO[bytes]", _Peeked(first, source))
        appended = maybe_deferred(mailbox.append, peeked)
        return appended.addCallback(lambda uid: (mailbox.name, uid))

    def done(landed: tuple[str, int]) -> tuple[str, int]:
        _log.info(
            "delivered UID {uid} to {user} {folder}", uid=landed[1], user=user, folder=landed[0]
        )
        return landed

    return found.addCallback(append).addCallbacks(done, _temporary, errbackArgs=(user,))


def _spool(first: bytes, rest: IO[bytes]) -> tuple[IO[bytes], int]:
    """The message in a temporary file (on disk past 1 MiB), rewound, and
    its size in wire form (each bare LF will be stored as CRLF)."""
    spool = tempfile.SpooledTemporaryFile(max_size=1024 * 1024, prefix="mailsrv-deliver-")
    size, after_cr = 0, False
    chunk = first
    while chunk:
        spool.write(chunk)
        bare = chunk.count(b"\n") - chunk.count(b"\r\n")
        if chunk[0:1] == b"\n" and after_cr:
            bare -= 1  # its CR ended the previous chunk
        size += len(chunk) + bare
        after_cr = chunk.endswith(b"\r")
        chunk = rest.read(CHUNK)
    spool.seek(0)
    return cast("IO[bytes]", spool), size


def deliver(
    account: IAccount,
    source: IO[bytes],
    folder: str = names.INBOX,
    limits: QuotaLimits = UNLIMITED,
) -> int:
    """:func:`store`, for an account whose storage has no reactor (so every
    call answers at once, as ``mailsrv deliver`` needs); return the UID."""
    outcome: list[Any] = []
    store(account, source, folder, limits=limits).addBoth(outcome.append)
    if not outcome:
        raise RuntimeError("deliver() needs a storage without a reactor; use store()")
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    uid: int = outcome[0][1]
    return uid


def reindex(account: Any, skipped: list[str] | None = None) -> dict[str, int]:
    """Rebuild a Maildir account's indexes (``mailsrv reindex``); folders
    deleted meanwhile are named in ``skipped``."""
    from mailsrv.storage.maildir import reindex as maildir_reindex

    counts: dict[str, int] = maildir_reindex(account, skipped)
    return counts
