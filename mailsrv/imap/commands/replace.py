"""REPLACE and UID REPLACE (RFC 8508): APPEND, then expunge the message
replaced, as one action for the client.

The new message is stored first (with CATENATE parts, as APPEND stores
them); only then is the old one removed, by UID and whatever its flags
(:meth:`~mailsrv.interfaces.IMailbox.remove`; RFC 8508 3.4: no STORE of
``\\Deleted`` is seen, and other ``\\Deleted`` messages stay).  If the
removal fails, the new message is taken back and the answer is NO, so the
client sees neither half (3.4: no EXPUNGE unless everything succeeded).
The APPENDUID goes out in an untagged OK before the EXPUNGE (4.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
from twisted.internet import defer

from mailsrv import log, quota
from mailsrv.imap import response, syntax
from mailsrv.imap.commands.append import (
    AppendMessage,
    append_message,
    batch_octets,
    check_not_empty,
    check_offered,
    close_messages,
    new_messages,
    target_mailbox,
)
from mailsrv.imap.commands.quota import limits_of
from mailsrv.imap.condstore import done_with_modseq
from mailsrv.imap.lexer import Reader
from mailsrv.imap.output import Done, no
from mailsrv.imap.registry import SELECTED, Command, CommandSpec
from mailsrv.imap.syntax import SequenceSet
from mailsrv.interfaces import IMailbox, IMessage, NewMessage, maybe_deferred

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "Replace"]

_log = log.get_logger(__name__)


@attrs.frozen
class Replace(Command):
    """REPLACE (``uid`` False: ``number`` is a sequence number) or UID REPLACE."""

    uid: bool
    number: int
    mailbox: str
    message: AppendMessage


def parse_replace(reader: Reader, tag: str, name: str, uid: bool) -> Replace:
    # replace = "REPLACE" SP seq-number SP mailbox append-message (RFC 8508 5)
    reader.space()
    number = reader.number32("a UID" if uid else "a message number", nonzero=True)
    reader.space()
    mailbox = syntax.mailbox(reader)
    reader.space()
    message = append_message(reader)
    reader.end()
    return Replace(tag, name, uid, number, mailbox, message)


async def _replace(session: Session, command: Replace) -> Done:
    try:
        view = session.view()
        if view.readonly:
            raise no("Mailbox is read-only", "READ-ONLY")
        old = session.resolve(SequenceSet(((command.number, command.number),)), command.uid)
        uids = old.uids()
        if not uids:
            raise no("No such message to replace")
        check_offered(session, [command.message])
        check_not_empty([command.message])
        target = await target_mailbox(session, command.mailbox)
        (new,) = await new_messages(session, [command.message])
        try:
            await _check_quota(session, view.mailbox, uids, new)
            (uid,) = await maybe_deferred(target.append_many, [new])
        finally:
            new.source.close()
    finally:
        close_messages([command.message])
    try:
        removed: Sequence[int] = await maybe_deferred(view.mailbox.remove, uids)
    except BaseException:
        await _take_back(target, uid)
        raise
    code = f"APPENDUID {target.uidvalidity} {uid}"
    session.send(response.untagged_status("OK", "Replacement message ready", code))
    view.note_expunged(removed)
    if removed and view.vanishes():
        # RFC 8508 4.5: as a UID EXPUNGE, so VANISHED and the new
        # HIGHESTMODSEQ under QRESYNC (RFC 7162 3.2.9).
        done: Done = await done_with_modseq(session, f"{command.name} completed")
        return done
    return Done(text=f"{command.name} completed")


async def _check_quota(
    session: Session, mailbox: IMailbox, old: Sequence[int], new: NewMessage
) -> None:
    """RFC 9208 4.3.1 for a REPLACE: the old message goes as the new one
    comes, so only growth counts (NO [OVERQUOTA] if it does not fit)."""
    infos: Sequence[IMessage] = await maybe_deferred(mailbox.fetch, old)
    growth = batch_octets([new]) - sum(info.size for info in infos)
    account = session.logged_in_account()
    await quota.check(account, limits_of(session), max(growth, 0), 0)


async def _take_back(target: IMailbox, uid: int) -> None:
    """The old message could not be removed: remove the new one, so the NO
    that follows is true (RFC 8508 3.4)."""
    try:
        await maybe_deferred(target.remove, [uid])
    except Exception:
        _log.failure("IMAP: REPLACE could not take back message {uid}", uid=uid)


def handle_replace(session: Session, command: Replace) -> defer.Deferred[Done]:
    return defer.Deferred.fromCoroutine(_replace(session, command))


COMMANDS = (
    CommandSpec(
        "REPLACE",
        parse_replace,
        handle_replace,
        SELECTED,
        capability="REPLACE",
        names_messages=True,
    ),
    CommandSpec(
        "REPLACE",
        parse_replace,
        handle_replace,
        SELECTED,
        uid=True,
        capability="REPLACE",
        names_messages=True,
    ),
)
