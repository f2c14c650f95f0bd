"""Exceptions shared by storage, authentication and the protocols.

Each storage error carries the RFC 5530 response code a protocol should send
with it, so IMAP and POP3 translate errors with one rule instead of a table
per command.
"""

from __future__ import annotations


class MailsrvError(Exception):
    """Base class of every error mailsrv raises on purpose."""


class ConfigError(MailsrvError):
    """A configuration problem, already phrased for the administrator.

    The message names the file, the key and the reason, e.g.
    ``etc/mailsrv.toml: imap.listen[0]: not a valid endpoint string``.
    """

    def __init__(self, path: str, key: str, reason: str) -> None:
        self.path = path
        self.key = key
        self.reason = reason
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {reason}")


class StorageError(MailsrvError):
    """A mailbox operation failed; ``code`` is the RFC 5530 response code."""

    code: str | None = None

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class NoSuchMailbox(StorageError):
    code = "NONEXISTENT"


class MailboxExists(StorageError):
    code = "ALREADYEXISTS"


class InvalidMailboxName(StorageError):
    code = "CANNOT"


class MailboxNotEmpty(StorageError):  # deleting a folder with children
    code = "INUSE"


class NoSuchMessage(StorageError):
    code = "NONEXISTENT"


class MailboxInUse(StorageError):  # the POP3 maildrop lock is held
    code = "INUSE"


class LimitExceeded(StorageError):
    """A size or count limit: APPENDLIMIT, quota, too many keywords."""

    code = "LIMIT"


class OverQuota(StorageError):
    """Storing would take the account past a quota limit (RFC 9208 4.3:
    ``[OVERQUOTA]``; RFC 3463 X.2.2 for delivery)."""

    code = "OVERQUOTA"


class MetadataTooMany(StorageError):
    """Setting annotations would pass the per-mailbox entry limit (RFC 5464
    4.3: ``[METADATA TOOMANY]``)."""

    code = "METADATA TOOMANY"


class TemporaryFailure(StorageError):
    """Try again later (disk full, lock timeout); delivery exits EX_TEMPFAIL."""

    code = "UNAVAILABLE"


class DiskFull(TemporaryFailure):
    """No space left (ENOSPC, EDQUOT) to store a message: nothing was stored.

    IMAP answers ``NO [OVERQUOTA]`` (RFC 5530 3, as Dovecot does for a full
    disk); delivery exits EX_TEMPFAIL, so the MTA keeps the message.
    """

    code = "OVERQUOTA"
