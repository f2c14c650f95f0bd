"""``mailsrv deliver`` into PostgreSQL: one message from the MTA, streamed in.

The storage is used without a reactor, so every call answers in this
thread; the message is committed (body, row, NOTIFY to the daemons' IDLE
sessions) before :func:`deliver` returns, and anything that stops it
before the commit leaves nothing behind: the transaction is rolled back,
by PostgreSQL itself if this process is killed.
"""

from __future__ import annotations

from typing import IO

from mailsrv.errors import InvalidMailboxName, NoSuchMailbox
from mailsrv.log import get_logger
from mailsrv.storage import names
from mailsrv.storage.deliver import EmptyMessage, _Peeked
from mailsrv.storage.postgres.blobs import CHUNK
from mailsrv.storage.postgres.mailbox import PostgresMailbox
from mailsrv.storage.postgres.storage import PostgresAccount

__all__ = ["deliver"]

log = get_logger(__name__)


def _mailbox(account: PostgresAccount, folder: str) -> PostgresMailbox:
    """The target folder, or INBOX when it is missing or invalid (as the
    Maildir delivery and Dovecot's LDA do)."""
    if not names.is_inbox(folder):
        try:
            found: PostgresMailbox = account.get_mailbox(folder)
            return found
        except (NoSuchMailbox, InvalidMailboxName) as exc:
            log.warn(
                "deliver to {user}: folder {folder!r} unusable ({reason}); delivering to INBOX",
                user=account.username,
                folder=folder,
                reason=str(exc),
            )
    inbox: PostgresMailbox = account.get_mailbox(names.INBOX)
    return inbox


def deliver(account: PostgresAccount, source: IO[bytes], folder: str = names.INBOX) -> int:
    """Store the message read from ``source`` in ``folder``; return its UID.

    ``account`` comes from a storage without a reactor.  Raises
    :class:`EmptyMessage` for empty input and TemporaryFailure when the
    database is unreachable.
    """
    first = source.read(CHUNK)
    if not first:
        raise EmptyMessage("empty message refused: standard input held no bytes")
    mailbox = _mailbox(account, folder)
    uid: int = mailbox.append(_Peeked(first, source))  # type: ignore[arg-type]
    log.info(
        "delivered UID {uid} to {user} {folder}",
        uid=uid,
        user=account.username,
        folder=mailbox.name,
    )
    return uid
