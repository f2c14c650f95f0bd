"""STATUS (RFC 3501 6.3.10), with SIZE (RFC 8438), DELETED (RFC 9051),
HIGHESTMODSEQ (RFC 7162), APPENDLIMIT (RFC 7889) and MAILBOXID (RFC 8474).  LIST-STATUS
(:mod:`mailsrv.imap.commands.list`) answers with the same lines."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import attrs

from mailsrv.imap import response, syntax
from mailsrv.imap.condstore import enable_condstore
from mailsrv.imap.lexer import Reader
from mailsrv.imap.output import Done
from mailsrv.imap.registry import AUTHENTICATED, Command, CommandSpec, Result
from mailsrv.imap.session import existing
from mailsrv.interfaces import MailboxStatus, maybe_deferred

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "Status", "status_items", "status_line"]

_STATUS_ITEMS = frozenset(
    {
        "MESSAGES",
        "RECENT",
        "UIDNEXT",
        "UIDVALIDITY",
        "UNSEEN",
        "SIZE",  # RFC 8438
        "DELETED",  # RFC 9051
        "HIGHESTMODSEQ",  # RFC 7162
        "APPENDLIMIT",  # RFC 7889
        "MAILBOXID",  # RFC 8474
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


def status_line(session: Session, name: str, status: MailboxStatus, items: Iterable[str]) -> bytes:
    """``* STATUS name (item value ...)`` with CRLF."""
    values = {
        "MESSAGES": status.messages,
        "RECENT": status.recent,
        "UIDNEXT": status.uidnext,
        "UIDVALIDITY": status.uidvalidity,
        "UNSEEN": status.unseen,
        "SIZE": status.size,
        "DELETED": status.deleted,
        "HIGHESTMODSEQ": status.highest_modseq,
        "APPENDLIMIT": session.policy.max_message_size,
    }
    pairs = b" ".join(
        b"MAILBOXID (%s)" % status.mailbox_id.encode("ascii")  # RFC 8474 4.3
        if item == "MAILBOXID"
        else b"%s %d" % (item.encode(), values[item])
        for item in items
    )
    return b"* STATUS %s (%s)\r\n" % (response.mailbox(name), pairs)


def handle_status(session: Session, command: Status) -> Result:
    if "HIGHESTMODSEQ" in command.items:
        enable_condstore(session)  # RFC 7162 3.1: a CONDSTORE enabling command
    d = maybe_deferred(session.logged_in_account().status, existing(command.mailbox))

    def report(status: MailboxStatus) -> Done:
        session.send(status_line(session, command.mailbox, status, command.items))
        return Done(text="STATUS completed")

    return d.addCallback(report)


COMMANDS = (CommandSpec("STATUS", parse_status, handle_status, AUTHENTICATED),)
