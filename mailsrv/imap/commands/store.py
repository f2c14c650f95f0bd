"""STORE and UID STORE (RFC 3501 6.4.6, 6.4.8).

``[UID] STORE set [(UNCHANGEDSINCE n)] [+|-]FLAGS[.SILENT] flags``: the
flags change in storage (:meth:`mailsrv.interfaces.IMailbox.store`) and,
unless ``.SILENT``, every message of the set is answered with its
``FETCH (FLAGS ...)`` (and ``UID`` for UID STORE).  The session's own change
is not repeated later as an unsolicited update.  With ``UNCHANGEDSINCE``
(RFC 7162 3.1.3) messages changed since are left alone and named in
``[MODIFIED ...]``; once CONDSTORE is on, the responses carry UID and MODSEQ.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer

from mailsrv.imap import syntax
from mailsrv.imap.condstore import modseq_view
from mailsrv.imap.fetch_items import FetchRequest
from mailsrv.imap.fetch_syntax import FetchAttribute
from mailsrv.imap.fetching import fetch_messages
from mailsrv.imap.lexer import ATOM_CHARS, Reader
from mailsrv.imap.output import Done, no
from mailsrv.imap.registry import SELECTED, Command, CommandSpec
from mailsrv.imap.selected import ranges_text, runs
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
            if unchanged_since is not None:  # RFC 7162 7: only one
                raise reader.error("UNCHANGEDSINCE is given twice")
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
        modseq_view(session, "UNCHANGEDSINCE")
    pairs = session.resolve(command.sequence_set, command.uid)
    uids = pairs.uids()
    if not uids:
        return Done(text="STORE completed")
    result: StoreResult = yield defer.maybeDeferred(
        view.mailbox.store, uids, command.flags, command.mode, command.unchanged_since
    )
    view.forget_flags(result.updated)
    modseqs = view.condstore and not view.nomodseq
    conflicts = set(result.conflicts)
    # RFC 7162 3.2.4: UID and MODSEQ in every FETCH once CONDSTORE is on.
    items = [FetchAttribute(name) for name, wanted in _ITEMS if wanted(command, modseqs)]
    if not command.silent:
        shown = [(seq, uid) for seq, uid in pairs if uid not in conflicts]
    elif modseqs:
        # .SILENT leaves out FLAGS, not the new MODSEQ of what changed
        # (RFC 7162 3.1.3), as Dovecot does.
        shown = pairs.among(m.uid for m in result.updated)
    else:
        shown = []
    if shown:
        yield fetch_messages(_request(session, command, items), shown)
    if not conflicts:
        return Done(text="STORE completed")
    # RFC 7162 3.1.3: the messages left alone, told by the number the
    # command used; with their flags and MODSEQ, so the client need not ask.
    failed = pairs.among(sorted(conflicts))
    names = ("UID", "MODSEQ", "FLAGS") if modseqs else ("UID", "FLAGS")
    yield fetch_messages(_request(session, command, [FetchAttribute(n) for n in names]), failed)
    numbers = [uid for _, uid in failed] if command.uid else [seq for seq, _ in failed]
    code = "MODIFIED " + ranges_text(runs(sorted(numbers))).decode()
    return Done(text="Conditional STORE failed for some messages", code=code)


#: The items of STORE's FETCH responses: (name, wanted(command, modseqs)).
_ITEMS: tuple[tuple[str, Callable[[Store, bool], bool]], ...] = (
    ("UID", lambda command, modseqs: command.uid or modseqs),
    ("MODSEQ", lambda command, modseqs: modseqs),
    ("FLAGS", lambda command, modseqs: not command.silent),
)


def _request(session: Session, command: Store, items: list[FetchAttribute]) -> FetchRequest:
    view = session.view()
    return FetchRequest(
        view, view.mailbox, session.output(), session.clock, tuple(items), command.uid
    )


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
