"""Local delivery into a Maildir: the heart of ``mailsrv deliver USER``.

An MTA (Postfix ``mailbox_command``, procmail, fetchmail ``--mda``) pipes one
message in; :func:`deliver` stores it and returns only once it is durable
(written to ``tmp/``, fsynced, renamed into ``cur/``, the directory fsynced,
its UID fsynced into ``mailsrv-uidlist`` and committed to the index).  The
message lands in ``cur/`` already indexed and \\Recent, so the next IMAP
session sees it without a directory scan.

Failures are :mod:`mailsrv.errors`: :class:`TemporaryFailure` for anything
the administrator or time can fix (disk full, I/O error, permissions, a
locked index), which the CLI turns into EX_TEMPFAIL (75) so the MTA keeps
the message and retries.
"""

from __future__ import annotations

import errno
import sqlite3
from typing import IO

from mailsrv.errors import InvalidMailboxName, NoSuchMailbox, StorageError, TemporaryFailure
from mailsrv.log import get_logger
from mailsrv.storage import names
from mailsrv.storage.maildir import MaildirAccount, MaildirMailbox, reindex
from mailsrv.storage.maildir.layout import CHUNK

__all__ = ["EmptyMessage", "deliver", "reindex"]

log = get_logger(__name__)


class EmptyMessage(StorageError):
    """Standard input held no bytes at all: there is no message to store.

    The MTA sends at least a header, so this is a broken caller; the CLI
    answers EX_DATAERR instead of filing an empty file as mail.
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


def _mailbox(account: MaildirAccount, folder: str) -> MaildirMailbox:
    """The target folder, or INBOX when it is missing or invalid (as Dovecot's LDA)."""
    if names.is_inbox(folder):
        return account.open_mailbox(names.INBOX)
    try:
        return account.open_mailbox(folder)
    except (NoSuchMailbox, InvalidMailboxName) as exc:
        log.warn(
            "deliver to {user}: folder {folder!r} unusable ({reason}); delivering to INBOX",
            user=account.username,
            folder=folder,
            reason=str(exc),
        )
        return account.open_mailbox(names.INBOX)


def deliver(account: MaildirAccount, source: IO[bytes], folder: str = names.INBOX) -> int:
    """Store the message read from ``source`` in ``folder``; return its UID.

    The message is streamed (never held in memory whole) and bare LF line
    ends are stored as CRLF.  A missing or invalid ``folder`` falls back to
    INBOX and is logged.  Raises :class:`EmptyMessage` for empty input and
    :class:`TemporaryFailure` when the message could not be stored but a
    later attempt may succeed.
    """
    try:
        first = source.read(CHUNK)
        if not first:
            raise EmptyMessage("empty message refused: standard input held no bytes")
        mailbox = _mailbox(account, folder)
        uid = mailbox.append(_Peeked(first, source))  # type: ignore[arg-type]
    except StorageError:
        raise
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno or 0, "error")
        raise TemporaryFailure(
            f"cannot store message for {account.username}: {reason}: {exc}"
        ) from exc
    except sqlite3.Error as exc:
        raise TemporaryFailure(f"index of {account.username} unavailable: {exc}") from exc
    log.info(
        "delivered UID {uid} to {user} {folder}",
        uid=uid,
        user=account.username,
        folder=mailbox.name,
    )
    return uid
