"""COPY and UID COPY (RFC 3501 6.4.7), MOVE and UID MOVE (RFC 6851), with
COPYUID (RFC 4315) and the quota (RFC 9208)."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer

from mailsrv import quota
from mailsrv.errors import NoSuchMailbox
from mailsrv.imap import response, syntax
from mailsrv.imap.commands.quota import limits_of
from mailsrv.imap.condstore import done_with_modseq
from mailsrv.imap.lexer import Reader
from mailsrv.imap.output import Done, no
from mailsrv.imap.registry import SELECTED, Command, CommandSpec
from mailsrv.imap.session import existing
from mailsrv.imap.syntax import SequenceSet
from mailsrv.interfaces import IMailbox, IMessage

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "Copy"]


@attrs.frozen
class Copy(Command):
    """COPY and MOVE (``name == "MOVE"``)."""

    uid: bool
    sequence_set: SequenceSet
    mailbox: str


def parse_copy(reader: Reader, tag: str, name: str, uid: bool) -> Copy:
    reader.space()
    seqset = syntax.sequence_set(reader)
    reader.space()
    mailbox = syntax.mailbox(reader)
    reader.end()
    return Copy(tag, name, uid, seqset, mailbox)


@defer.inlineCallbacks
def handle_copy(session: Session, command: Copy) -> Generator[defer.Deferred[Any], Any, Done]:
    view = session.view()
    moving = command.name == "MOVE"
    if moving and view.readonly:
        raise no("Mailbox is read-only", "READ-ONLY")
    uids = session.resolve(command.sequence_set, command.uid).uids()
    name = existing(command.mailbox)
    try:
        destination: IMailbox = yield defer.maybeDeferred(
            session.logged_in_account().get_mailbox, name
        )
    except NoSuchMailbox:
        raise no(f"Mailbox {command.mailbox} does not exist", "TRYCREATE") from None
    if not uids:
        return Done(text=f"{command.name} completed")
    if not moving:
        # RFC 9208 4.3.1: NO [OVERQUOTA], and nothing copied, when the
        # copies would not fit.  A MOVE stays under the user's one quota
        # root, so it adds nothing and is never refused for quota.
        infos: Sequence[IMessage] = yield defer.maybeDeferred(view.mailbox.fetch, uids)
        octets = sum(info.size for info in infos)
        account = session.logged_in_account()
        yield quota.check(account, limits_of(session), octets, len(infos))
    operation = view.mailbox.move if moving else view.mailbox.copy
    mapping: Sequence[tuple[int, int]] = yield defer.maybeDeferred(operation, uids, destination)
    code = None
    if mapping:
        sources = _uid_set(src for src, _ in mapping)
        targets = _uid_set(dst for _, dst in mapping)
        code = f"COPYUID {destination.uidvalidity} {sources} {targets}"
    if moving:
        view.note_expunged(src for src, _ in mapping)
        if code is not None:
            session.send(response.untagged_status("OK", "Moved", code))
        if mapping and view.vanishes():
            done: Done = yield done_with_modseq(session, "MOVE completed")  # RFC 6851 4.4
            return done
        return Done(text="MOVE completed")
    return Done(text="COPY completed", code=code)


def _uid_set(uids: Iterable[int]) -> str:
    """UIDs in order as a compact uid-set (runs of consecutive numbers)."""
    parts: list[str] = []
    start = prev = -1
    for uid in uids:
        if uid == prev + 1 and start >= 0:
            prev = uid
            continue
        if start >= 0:
            parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    if start >= 0:
        parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)


COMMANDS = (
    CommandSpec("COPY", parse_copy, handle_copy, SELECTED, names_messages=True),
    CommandSpec("COPY", parse_copy, handle_copy, SELECTED, uid=True, names_messages=True),
    CommandSpec("MOVE", parse_copy, handle_copy, SELECTED, capability="MOVE", names_messages=True),
    CommandSpec(
        "MOVE",
        parse_copy,
        handle_copy,
        SELECTED,
        uid=True,
        capability="MOVE",
        names_messages=True,
    ),
)
