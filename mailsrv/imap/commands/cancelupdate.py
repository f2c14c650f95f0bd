"""CANCELUPDATE (RFC 5267 4.3.5): end UPDATE contexts by their tags.

Declares CONTEXT=SEARCH: SEARCH's CONTEXT, UPDATE and PARTIAL return
options are :mod:`mailsrv.imap.commands.search`'s, run by
:mod:`mailsrv.imap.contexts`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from mailsrv.imap.contexts import Contexts
from mailsrv.imap.lexer import Reader
from mailsrv.imap.output import Done, bad
from mailsrv.imap.registry import SELECTED, Command, CommandSpec

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "CancelUpdate"]


@attrs.frozen
class CancelUpdate(Command):
    tags: tuple[str, ...]


def parse_cancelupdate(reader: Reader, tag: str, name: str, uid: bool) -> CancelUpdate:
    """ "CANCELUPDATE" 1*(SP quoted) (RFC 5267 5)."""
    tags: list[str] = []
    while True:
        reader.space()
        tags.append(reader.quoted().decode("ascii", "replace"))
        if reader.peek() != 0x20:
            break
    reader.end()
    return CancelUpdate(tag, name, tuple(tags))


def handle_cancelupdate(session: Session, command: CancelUpdate) -> Done:
    """Every tag must name a context of this session; none is cancelled
    otherwise (the client learns which one it got wrong)."""
    contexts = Contexts.of(session.view(), session.clock)
    unknown = [t for t in command.tags if t not in contexts.active]
    if unknown:
        raise bad(f"No UPDATE context has the tag {unknown[0]}")
    for tag in command.tags:
        del contexts.active[tag]
    return Done(text="CANCELUPDATE completed, no further updates")


COMMANDS = (
    CommandSpec(
        "CANCELUPDATE",
        parse_cancelupdate,
        handle_cancelupdate,
        SELECTED,
        capability="CONTEXT=SEARCH",
    ),
)
