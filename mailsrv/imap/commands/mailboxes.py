"""CREATE (with RFC 6154's USE), DELETE, RENAME, SUBSCRIBE and UNSUBSCRIBE
(RFC 3501 6.3.3-6.3.7)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from mailsrv.errors import MailboxNotEmpty
from mailsrv.imap import syntax
from mailsrv.imap.commands.list import list_line
from mailsrv.imap.lexer import Reader
from mailsrv.imap.output import Done, no
from mailsrv.imap.registry import AUTHENTICATED, Command, CommandSpec, Result
from mailsrv.imap.session import creatable, existing
from mailsrv.imap.syntax import NormalizedName
from mailsrv.interfaces import SPECIAL_USES

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "Create", "MailboxCommand", "Rename"]


@attrs.frozen
class MailboxCommand(Command):
    """DELETE, SUBSCRIBE, UNSUBSCRIBE: one mailbox argument."""

    mailbox: str


@attrs.frozen
class Create(Command):
    """CREATE, with RFC 6154 ``(USE (\\Drafts ...))`` special uses."""

    mailbox: str
    special_use: tuple[str, ...] = ()


@attrs.frozen
class Rename(Command):
    old: str
    new: str


def parse_mailbox(reader: Reader, tag: str, name: str, uid: bool) -> MailboxCommand:
    reader.space()
    mailbox = syntax.mailbox(reader)
    reader.end()
    return MailboxCommand(tag, name, mailbox)


def parse_create(reader: Reader, tag: str, name: str, uid: bool) -> Create:
    reader.space()
    mailbox = syntax.mailbox(reader)
    uses: list[str] = []
    if reader.peek() == 0x20:
        reader.space()
        for param, value in syntax.parameters(reader):
            if param != "USE" or not isinstance(value, tuple):
                raise reader.error(f"unknown CREATE parameter {param}")
            for use in value:
                if not isinstance(use, str) or not use.startswith("\\"):
                    raise reader.error("USE takes a list of special-use attributes")
                uses.append(use)
    reader.end()
    return Create(tag, name, mailbox, tuple(uses))


def parse_rename(reader: Reader, tag: str, name: str, uid: bool) -> Rename:
    reader.space()
    old = syntax.mailbox(reader)
    reader.space()
    new = syntax.mailbox(reader)
    reader.end()
    return Rename(tag, name, old, new)


def handle_create(session: Session, command: Create) -> Result:
    uses = []
    for use in command.special_use:
        canonical = next((u for u in SPECIAL_USES if u.lower() == use.lower()), None)
        if canonical is None:
            raise no(f"Unknown special use {use}", "USEATTR")
        uses.append(canonical)
    name = creatable(command.mailbox)
    account = session.logged_in_account()
    d = defer.maybeDeferred(account.create_mailbox, name, uses)

    def created(_: object) -> Done:
        if isinstance(name, NormalizedName) and session.utf8:
            # RFC 9051 6.3.4: the name was created in NFC; say which.
            session.send(list_line(name, account.delimiter, True))
        return Done(text="CREATE completed")

    return d.addCallback(created)


def handle_delete(session: Session, command: MailboxCommand) -> Result:
    if command.mailbox == "INBOX":
        raise no("INBOX cannot be deleted", "CANNOT")
    account = session.logged_in_account()
    name = existing(command.mailbox)
    d = defer.maybeDeferred(account.delete_mailbox, name)

    def deleted(_: object) -> Done:
        if isinstance(name, NormalizedName) and session.utf8:
            # RFC 9051 6.3.5: the NFC name is the one that went.
            session.send(list_line(name, account.delimiter, True, ["\\NonExistent"]))
        return Done(text="DELETE completed")

    def has_children(failure: Failure) -> Done:
        # RFC 9051 7.1 gave this case its own code; IMAP4rev1 clients keep
        # RFC 5530's INUSE, which they know.
        failure.trap(MailboxNotEmpty)
        code = "HASCHILDREN" if session.rev2 else MailboxNotEmpty.code
        return Done("NO", str(failure.value), code)

    return d.addCallbacks(deleted, has_children)


def handle_rename(session: Session, command: Rename) -> Result:
    old, new = existing(command.old), creatable(command.new)
    account = session.logged_in_account()
    d = defer.maybeDeferred(account.rename_mailbox, old, new)

    def renamed(_: object) -> Done:
        normalized = isinstance(old, NormalizedName) or isinstance(new, NormalizedName)
        if normalized and session.utf8:
            # RFC 9051 6.3.6: the NFC new name, with the old one as sent.
            supplied = old.supplied if isinstance(old, NormalizedName) else old
            session.send(list_line(str(new), account.delimiter, True, oldname=supplied))
        return Done(text="RENAME completed")

    return d.addCallback(renamed)


def handle_subscribe(session: Session, command: MailboxCommand) -> Result:
    d = defer.maybeDeferred(session.logged_in_account().subscribe, existing(command.mailbox))
    return d.addCallback(lambda _: Done(text="SUBSCRIBE completed"))


def handle_unsubscribe(session: Session, command: MailboxCommand) -> Result:
    d = defer.maybeDeferred(session.logged_in_account().unsubscribe, existing(command.mailbox))
    return d.addCallback(lambda _: Done(text="UNSUBSCRIBE completed"))


COMMANDS = (
    CommandSpec("CREATE", parse_create, handle_create, AUTHENTICATED),
    CommandSpec("DELETE", parse_mailbox, handle_delete, AUTHENTICATED),
    CommandSpec("RENAME", parse_rename, handle_rename, AUTHENTICATED),
    CommandSpec("SUBSCRIBE", parse_mailbox, handle_subscribe, AUTHENTICATED),
    CommandSpec("UNSUBSCRIBE", parse_mailbox, handle_unsubscribe, AUTHENTICATED),
)
