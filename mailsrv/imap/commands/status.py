"""STATUS (RFC 3501 6.3.10), with SIZE (RFC 8438), DELETED (RFC 9051),
DELETED-STORAGE (RFC 9208 4.1.4), HIGHESTMODSEQ (RFC 7162) and APPENDLIMIT
(RFC 7889).  LIST-STATUS (:mod:`mailsrv.imap.commands.list`) answers with
the same lines."""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer

from mailsrv.imap import response, syntax
from mailsrv.imap.condstore import enable_condstore
from mailsrv.imap.lexer import Reader
from mailsrv.imap.output import Done, bad
from mailsrv.imap.registry import AUTHENTICATED, Command, CommandSpec, Result
from mailsrv.imap.session import existing
from mailsrv.interfaces import DELETED, IMailbox, IMessage, MailboxStatus, maybe_deferred

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = [
    "COMMANDS",
    "Status",
    "check_items",
    "mailbox_status_line",
    "status_items",
    "status_line",
]

_STATUS_ITEMS = frozenset(
    {
        "MESSAGES",
        "RECENT",
        "UIDNEXT",
        "UIDVALIDITY",
        "UNSEEN",
        "SIZE",  # RFC 8438
        "DELETED",  # RFC 9051
        "DELETED-STORAGE",  # RFC 9208
        "HIGHESTMODSEQ",  # RFC 7162
        "APPENDLIMIT",  # RFC 7889
    }
)


@attrs.frozen
class Status(Command):
    mailbox: str
    items: tuple[str, ...]


def status_items(reader: Reader) -> tuple[str, ...]:
    """``"(" status-att *(SP status-att) ")"``, upper-cased."""
    items = syntax.paren_atoms(reader, "a STATUS item")
    if not items:
        raise reader.error("STATUS needs at least one item")
    for item in items:
        if item not in _STATUS_ITEMS:
            raise reader.error(f"unknown STATUS item {item}")
    return items


def parse_status(reader: Reader, tag: str, name: str, uid: bool) -> Status:
    reader.space()
    mailbox = syntax.mailbox(reader)
    reader.space()
    items = status_items(reader)
    reader.end()
    return Status(tag, name, mailbox, items)


def status_line(
    session: Session,
    name: str,
    status: MailboxStatus,
    items: Iterable[str],
    deleted_storage: int = 0,
) -> bytes:
    """``* STATUS name (item value ...)`` with CRLF."""
    values = {
        "MESSAGES": status.messages,
        "RECENT": status.recent,
        "UIDNEXT": status.uidnext,
        "UIDVALIDITY": status.uidvalidity,
        "UNSEEN": status.unseen,
        "SIZE": status.size,
        "DELETED": status.deleted,
        "DELETED-STORAGE": deleted_storage,
        "HIGHESTMODSEQ": status.highest_modseq,
        "APPENDLIMIT": session.policy.max_message_size,
    }
    pairs = b" ".join(b"%s %d" % (item.encode(), values[item]) for item in items)
    return b"* STATUS %s (%s)\r\n" % (response.mailbox(name, utf8=session.utf8), pairs)


def check_items(session: Session, items: Iterable[str]) -> None:
    """BAD for RECENT in an IMAP4rev2 session: RFC 9051 removed it from
    status-att along with \\Recent (appendix E item 12)."""
    if session.rev2 and "RECENT" in items:
        raise bad("RECENT is not a STATUS item in IMAP4rev2 (RFC 9051 has no \\Recent)")


@defer.inlineCallbacks
def mailbox_status_line(
    session: Session, name: str, items: tuple[str, ...]
) -> Generator[defer.Deferred[Any], Any, bytes]:
    """The ``* STATUS`` line of mailbox ``name`` (STATUS and LIST-STATUS)."""
    account = session.logged_in_account()
    status: MailboxStatus = yield maybe_deferred(account.status, name)
    deleted_storage = 0
    if "DELETED-STORAGE" in items and status.deleted:
        # RFC 9208 4.1.4 allows the sum of the \Deleted messages' sizes;
        # the counters do not keep it, so it is read (only when asked).
        mailbox: IMailbox = yield maybe_deferred(account.get_mailbox, name)
        uids = yield maybe_deferred(mailbox.uids)
        infos: list[IMessage] = yield maybe_deferred(mailbox.fetch, uids)
        deleted_storage = sum(info.size for info in infos if DELETED in info.flags)
    return status_line(session, name, status, items, deleted_storage)


def handle_status(session: Session, command: Status) -> Result:
    check_items(session, command.items)
    if "HIGHESTMODSEQ" in command.items:
        enable_condstore(session)  # RFC 7162 3.1: a CONDSTORE enabling command
    d = mailbox_status_line(session, existing(command.mailbox), command.items)

    def report(line: bytes) -> Done:
        session.send(line)
        return Done(text="STATUS completed")

    return d.addCallback(report)


COMMANDS = (CommandSpec("STATUS", parse_status, handle_status, AUTHENTICATED),)
