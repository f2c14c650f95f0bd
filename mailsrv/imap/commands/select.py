"""SELECT and EXAMINE (RFC 3501 6.3.1, 6.3.2), CHECK and CLOSE (6.4.1,
6.4.2) and UNSELECT (RFC 3691)."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from mailsrv.errors import NoSuchMailbox
from mailsrv.imap import syntax
from mailsrv.imap.lexer import Reader
from mailsrv.imap.output import Done, bad
from mailsrv.imap.registry import (
    AUTHENTICATED,
    SELECTED,
    Command,
    CommandSpec,
    Result,
    Simple,
    State,
    no_arguments,
)
from mailsrv.imap.selected import SelectedMailbox
from mailsrv.imap.session import existing
from mailsrv.interfaces import IMailbox, MailboxStatus

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "Select"]

#: Messages whose metadata is read at once looking for the first unseen.
BATCH = 500


@attrs.frozen
class Select(Command):
    """SELECT and EXAMINE (``readonly``); ``params`` are RFC 4466
    select-params such as ``(("CONDSTORE", None),)``."""

    mailbox: str
    readonly: bool = False
    params: tuple[tuple[str, object], ...] = ()


def parse_select(reader: Reader, tag: str, name: str, uid: bool) -> Select:
    reader.space()
    mailbox = syntax.mailbox(reader)
    params: tuple[tuple[str, object], ...] = ()
    if reader.peek() == 0x20:
        reader.space()
        params = syntax.parameters(reader)
    reader.end()
    return Select(tag, name, mailbox, name == "EXAMINE", params)


@defer.inlineCallbacks
def handle_select(session: Session, command: Select) -> Generator[defer.Deferred[Any], Any, Done]:
    session.deselect()
    if command.params:
        raise bad(f"SELECT parameter {command.params[0][0]} is not supported")
    mailbox: IMailbox = yield defer.maybeDeferred(
        session.logged_in_account().get_mailbox, existing(command.mailbox)
    )
    view = SelectedMailbox(mailbox, (), command.readonly)
    mailbox.add_listener(view)
    try:
        uids: Sequence[int] = yield defer.maybeDeferred(mailbox.uids)
        view.map.extend(uids)
        # Like Dovecot, FLAGS lists the keywords already defined, so a
        # client knows them before any FETCH shows one (RFC 3501 7.2.6).
        keywords: Sequence[str] = yield defer.maybeDeferred(mailbox.keywords)
        status: MailboxStatus = yield defer.maybeDeferred(mailbox.status)
        if command.readonly:
            recent_count = status.recent
        else:
            claimed = yield defer.maybeDeferred(mailbox.claim_recent)
            view.recent.update(claimed)
            recent_count = len(view.recent)
        first_unseen = 0
        if status.unseen:
            first_unseen = yield view.first_unseen(status.unseen, BATCH)
    except BaseException:
        view.close()
        raise
    if session.lost:
        view.close()
        return Done("NO", "Connection lost")
    session.selected = view
    session.state = State.SELECTED
    lines = [
        f"* {view.exists} EXISTS\r\n",
        f"* {recent_count} RECENT\r\n",
    ]
    if first_unseen:
        lines.append(f"* OK [UNSEEN {first_unseen}] First unseen\r\n")
    lines.append(f"* OK [UIDVALIDITY {mailbox.uidvalidity}] UIDs valid\r\n")
    lines.append(f"* OK [UIDNEXT {status.uidnext}] Predicted next UID\r\n")
    session.send(view.flags_response(keywords) + "".join(lines).encode("ascii"))
    mode = "READ-ONLY" if command.readonly else "READ-WRITE"
    return Done(text=f"{command.name} completed", code=mode)


def handle_check(session: Session, command: Simple) -> Result:
    d = defer.maybeDeferred(session.view().mailbox.check)
    return d.addCallback(lambda _: Done(text="CHECK completed"))


def handle_close(session: Session, command: Simple) -> Result:
    view = session.view()
    session.deselect()
    if view.readonly:
        return Done(text="CLOSE completed")
    d = defer.maybeDeferred(view.mailbox.expunge)

    def missing(failure: Failure) -> Failure | None:
        # Deleted or renamed by another session: nothing is left to
        # expunge, and CLOSE answers OK or BAD only (RFC 3501 6.4.2).
        return None if isinstance(failure.value, NoSuchMailbox) else failure

    return d.addErrback(missing).addCallback(lambda _: Done(text="CLOSE completed"))


def handle_unselect(session: Session, command: Simple) -> Done:
    session.deselect()
    return Done(text="UNSELECT completed")


COMMANDS = (
    CommandSpec("SELECT", parse_select, handle_select, AUTHENTICATED),
    CommandSpec("EXAMINE", parse_select, handle_select, AUTHENTICATED),
    CommandSpec("CHECK", no_arguments, handle_check, SELECTED),
    CommandSpec("CLOSE", no_arguments, handle_close, SELECTED),
    CommandSpec("UNSELECT", no_arguments, handle_unselect, SELECTED, capability="UNSELECT"),
)
