"""STORE and UID STORE (RFC 3501 6.4.6, 6.4.8).

``[UID] STORE set [(UNCHANGEDSINCE n)] [+|-]FLAGS[.SILENT] flags``: the
flags change in storage (:meth:`mailsrv.interfaces.IMailbox.store`) and,
unless ``.SILENT``, every message of the set is answered with its
``FETCH (FLAGS ...)`` (and ``UID`` for UID STORE).  The session's own change
is not repeated later as an unsolicited update; UNCHANGEDSINCE (RFC 7162)
parses but CONDSTORE is not offered.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer

from mailsrv.imap import syntax
from mailsrv.imap.fetch_items import FetchRequest
from mailsrv.imap.fetch_syntax import FetchAttribute
from mailsrv.imap.fetching import fetch_messages
from mailsrv.imap.lexer import ATOM_CHARS, Reader
from mailsrv.imap.output import Done, bad, no
from mailsrv.imap.registry import SELECTED, Command, CommandSpec
from mailsrv.imap.syntax import SequenceSet
from mailsrv.interfaces import StoreResult

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "Store"]

#: The sign before FLAGS -> :class:`mailsrv.interfaces.StoreMode` value.
_MODES = {"": "replace", "+": "add", "-": "remove"}


@attrs.frozen
class Store(Command):
    """STORE; ``mode`` is a :class:`mailsrv.interfaces.StoreMode` value."""

    uid: bool
    sequence_set: SequenceSet
    mode: str
    silent: bool
    flags: tuple[str, ...]
    unchanged_since: int | None = None


def parse_store(reader: Reader, tag: str, name: str, uid: bool) -> Store:
    reader.space()
    seqset = syntax.sequence_set(reader)
    reader.space()
    unchanged_since: int | None = None
    if reader.peek() == 0x28:
        for param, value in syntax.parameters(reader):
            if param != "UNCHANGEDSINCE" or not isinstance(value, int):
                raise reader.error(f"unknown or malformed STORE modifier {param}")
            unchanged_since = value
        reader.space()
    word = reader.run(ATOM_CHARS | {ord("+")}, "FLAGS, +FLAGS or -FLAGS").decode().upper()
    sign = word[0] if word[:1] in ("+", "-") else ""
    rest = word[len(sign) :]
    if rest not in ("FLAGS", "FLAGS.SILENT"):
        raise reader.error(f"expected FLAGS, +FLAGS or -FLAGS, found {word!r}")
    reader.space()
    if reader.peek() == 0x28:
        flags = syntax.flag_list(reader)
    else:
        items = [syntax.flag(reader)]
        while reader.peek() == 0x20:
            reader.space()
            items.append(syntax.flag(reader))
        flags = tuple(dict.fromkeys(items))
    reader.end()
    return Store(
        tag, name, uid, seqset, _MODES[sign], rest.endswith(".SILENT"), flags, unchanged_since
    )


@defer.inlineCallbacks
def handle_store(session: Session, command: Store) -> Generator[defer.Deferred[Any], Any, Done]:
    view = session.view()
    if view.readonly:
        raise no("Mailbox is read-only", "READ-ONLY")
    if command.unchanged_since is not None:
        raise bad("UNCHANGEDSINCE needs CONDSTORE, which is not supported")
    pairs = session.resolve(command.sequence_set, command.uid)
    uids = pairs.uids()
    if not uids:
        return Done(text="STORE completed")
    result: StoreResult = yield defer.maybeDeferred(
        view.mailbox.store, uids, command.flags, command.mode, None
    )
    view.forget_flags(result.updated)
    if not command.silent:
        items = (FetchAttribute("UID"),) if command.uid else ()
        request = FetchRequest(
            view,
            view.mailbox,
            session.output(),
            session.clock,
            (*items, FetchAttribute("FLAGS")),
            command.uid,
        )
        yield fetch_messages(request, pairs)
    return Done(text="STORE completed")


# RFC 3501 7.4.1: no EXPUNGE response while STORE runs.
COMMANDS = (
    CommandSpec(
        "STORE",
        parse_store,
        handle_store,
        SELECTED,
        expunges_allowed=False,
        names_messages=True,
    ),
    CommandSpec(
        "STORE",
        parse_store,
        handle_store,
        SELECTED,
        uid=True,
        expunges_allowed=False,
        names_messages=True,
    ),
)
