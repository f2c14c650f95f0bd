"""EXPUNGE (RFC 3501 6.4.3) and UID EXPUNGE (RFC 4315 2.1); with QRESYNC,
VANISHED and the new HIGHESTMODSEQ (RFC 7162 3.2.7, 3.2.9)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

from mailsrv.imap import syntax
from mailsrv.imap.condstore import done_with_modseq
from mailsrv.imap.lexer import Reader
from mailsrv.imap.output import Done, no
from mailsrv.imap.registry import SELECTED, Command, CommandSpec, Result
from mailsrv.imap.syntax import SequenceSet
from mailsrv.interfaces import maybe_deferred

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "Expunge"]


@attrs.frozen
class Expunge(Command):
    """EXPUNGE, or UID EXPUNGE (RFC 4315) with its ``sequence_set``."""

    uid: bool = False
    sequence_set: SequenceSet | None = None


def parse_expunge(reader: Reader, tag: str, name: str, uid: bool) -> Expunge:
    reader.end()
    return Expunge(tag, name)


def parse_uid_expunge(reader: Reader, tag: str, name: str, uid: bool) -> Expunge:
    reader.space()
    seqset = syntax.sequence_set(reader)
    reader.end()
    return Expunge(tag, name, True, seqset)


def handle_expunge(session: Session, command: Expunge) -> Result:
    view = session.view()
    if view.readonly:
        raise no("Mailbox is read-only", "READ-ONLY")
    uids: list[int] | None = None
    if command.sequence_set is not None:
        uids = session.resolve(command.sequence_set, True).uids()
        if not uids:
            return Done(text="EXPUNGE completed")
    d = maybe_deferred(view.mailbox.expunge, uids)

    def done(removed: Sequence[int]) -> Result:
        view.note_expunged(removed)
        if removed and view.vanishes():
            return done_with_modseq(session, "EXPUNGE completed")
        return Done(text="EXPUNGE completed")

    return d.addCallback(done)


COMMANDS = (
    CommandSpec("EXPUNGE", parse_expunge, handle_expunge, SELECTED),
    CommandSpec(
        "EXPUNGE",
        parse_uid_expunge,
        handle_expunge,
        SELECTED,
        uid=True,
        capability="UIDPLUS",
        names_messages=True,
    ),
)
