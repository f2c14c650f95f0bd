"""FETCH and UID FETCH (RFC 3501 6.4.5, 6.4.8; BINARY from RFC 3516).

The items' syntax is :mod:`mailsrv.imap.fetch_syntax`'s; the responses are
written in batches by :mod:`mailsrv.imap.fetching`, each item by its
handler in :mod:`mailsrv.imap.fetch_items`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from twisted.internet import defer

from mailsrv.imap import syntax
from mailsrv.imap.fetch_items import HANDLERS, FetchRequest
from mailsrv.imap.fetch_syntax import FetchAttribute, fetch_items
from mailsrv.imap.fetching import Outcome, fetch_messages
from mailsrv.imap.lexer import Reader
from mailsrv.imap.output import Done, bad
from mailsrv.imap.registry import SELECTED, Command, CommandSpec
from mailsrv.imap.syntax import SequenceSet

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "Fetch"]


@attrs.frozen
class Fetch(Command):
    uid: bool
    sequence_set: SequenceSet
    attributes: tuple[FetchAttribute, ...]
    modifiers: tuple[tuple[str, object], ...] = ()


def parse_fetch(reader: Reader, tag: str, name: str, uid: bool) -> Fetch:
    reader.space()
    seqset = syntax.sequence_set(reader)
    reader.space()
    attributes = fetch_items(reader)
    modifiers: tuple[tuple[str, object], ...] = ()
    if reader.peek() == 0x20:
        reader.space()
        modifiers = syntax.parameters(reader)
    reader.end()
    if uid and not any(a.name == "UID" for a in attributes):
        attributes.append(FetchAttribute("UID"))  # RFC 3501 6.4.8: UID is implied
    return Fetch(tag, name, uid, seqset, tuple(attributes), modifiers)


def handle_fetch(session: Session, command: Fetch) -> defer.Deferred[Done]:
    unsupported = [a for a in command.attributes if a.name not in HANDLERS]
    if unsupported:
        # MODSEQ parses (RFC 7162) but CONDSTORE is not offered.
        raise bad(f"FETCH {unsupported[0].response_name()} is not supported")
    if command.modifiers:
        raise bad(f"FETCH modifier {command.modifiers[0][0]} is not supported")
    messages = session.resolve(command.sequence_set, command.uid)
    view = session.view()
    request = FetchRequest(
        view, view.mailbox, session.output(), session.clock, command.attributes, command.uid
    )
    return fetch_messages(request, messages).addCallback(_completion)


def _completion(outcome: Outcome) -> Done:
    if outcome.unknown_cte:
        return Done("NO", "Unknown Content-Transfer-Encoding in a BINARY part", "UNKNOWN-CTE")
    if outcome.missing:
        # RFC 5530 3 (its example is an OK) and RFC 2180 4.1: answer
        # what still exists; the client learns the rest at its next
        # NOOP.  A NO here makes clients such as imaplib give up on
        # the whole FETCH, as Dovecot's OK does not.
        return Done(text="Some messages were already expunged", code="EXPUNGEISSUED")
    return Done(text="FETCH completed")


# RFC 3501 7.4.1: no EXPUNGE response while FETCH runs.
COMMANDS = (
    CommandSpec(
        "FETCH",
        parse_fetch,
        handle_fetch,
        SELECTED,
        expunges_allowed=False,
        names_messages=True,
    ),
    CommandSpec(
        "FETCH",
        parse_fetch,
        handle_fetch,
        SELECTED,
        uid=True,
        expunges_allowed=False,
        names_messages=True,
    ),
)
