"""FETCH and UID FETCH (RFC 3501 6.4.5, 6.4.8; BINARY from RFC 3516), with
the MODSEQ item and the CHANGEDSINCE and VANISHED modifiers (RFC 7162).

The items' syntax is :mod:`mailsrv.imap.fetch_syntax`'s; the responses are
written in batches by :mod:`mailsrv.imap.fetching`, each item by its
handler in :mod:`mailsrv.imap.fetch_items`.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer

from mailsrv.imap import syntax
from mailsrv.imap.budget import CommandBudget, check_fetch_items
from mailsrv.imap.condstore import (
    QRESYNC,
    modseq_value,
    modseq_view,
    ranges_text,
    vanished_earlier,
)
from mailsrv.imap.downgrading import fetch_mailbox
from mailsrv.imap.fetch_items import HANDLERS, FetchRequest
from mailsrv.imap.fetch_syntax import FetchAttribute, fetch_items
from mailsrv.imap.fetching import Outcome, fetch_messages
from mailsrv.imap.lexer import Reader
from mailsrv.imap.output import Done, bad
from mailsrv.imap.registry import SELECTED, Command, CommandSpec
from mailsrv.imap.selected import MessageSet
from mailsrv.imap.syntax import SequenceSet
from mailsrv.interfaces import maybe_deferred

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


@attrs.frozen
class _Modifiers:
    """CHANGEDSINCE and VANISHED (RFC 7162 3.1.4.1, 3.2.6)."""

    changed_since: int | None = None
    vanished: bool = False


def _modifiers(session: Session, command: Fetch) -> _Modifiers:
    changed_since: int | None = None
    vanished = False
    for name, value in command.modifiers:
        if name == "CHANGEDSINCE":
            changed_since = modseq_value(value, "CHANGEDSINCE")
        elif name == "VANISHED" and value is None:
            if not command.uid:
                raise bad("VANISHED is a UID FETCH modifier (RFC 7162 3.2.6)")
            if QRESYNC not in session.enabled:
                raise bad("VANISHED needs QRESYNC enabled (send ENABLE QRESYNC first)")
            vanished = True
        else:
            raise bad(f"FETCH modifier {name} is not supported")
    if vanished and changed_since is None:
        raise bad("VANISHED needs CHANGEDSINCE (RFC 7162 3.2.6)")
    return _Modifiers(changed_since, vanished)


def handle_fetch(session: Session, command: Fetch) -> defer.Deferred[Done]:
    unsupported = [a for a in command.attributes if a.name not in HANDLERS]
    if unsupported:
        raise bad(f"FETCH {unsupported[0].response_name()} is not supported")
    check_fetch_items(len(command.attributes))
    modifiers = _modifiers(session, command)
    attributes = command.attributes
    if modifiers.changed_since is not None:
        modseq_view(session, "CHANGEDSINCE")
        if not any(a.name == "MODSEQ" for a in attributes):
            attributes = (*attributes, FetchAttribute("MODSEQ"))  # RFC 7162 3.1.4.1
    elif any(a.name == "MODSEQ" for a in attributes):
        modseq_view(session, "FETCH MODSEQ")
    messages = session.resolve(command.sequence_set, command.uid)
    view = session.view()
    # RFC 6855 3, 7: a session that did not enable UTF8=ACCEPT reads
    # synthetic messages in place of those with 8-bit headers (RFC 6858).
    mailbox = fetch_mailbox(view.mailbox, session.utf8, attributes)
    request = FetchRequest(
        view,
        mailbox,
        session.output(),
        session.clock,
        attributes,
        command.uid,
        CommandBudget(session.policy.command_cpu_seconds),
    )
    if modifiers.changed_since is None:
        return fetch_messages(request, messages).addCallback(_completion)
    return _fetch_changed(session, request, messages, modifiers).addCallback(_completion)


@defer.inlineCallbacks
def _fetch_changed(
    session: Session,
    request: FetchRequest,
    messages: MessageSet,
    modifiers: _Modifiers,
) -> Generator[defer.Deferred[Any], Any, Outcome]:
    """CHANGEDSINCE: only the messages whose MODSEQ is above it, found
    through the storage's MODSEQ index rather than by reading every
    message of the set; with VANISHED, the set's expunged UIDs first."""
    view = request.view
    since = modifiers.changed_since
    assert since is not None
    if modifiers.vanished:
        gone = yield vanished_earlier(view, since, messages.ranges)
        if gone:
            session.send(b"* VANISHED (EARLIER) %s\r\n" % ranges_text(gone))
    changed: Sequence[int] = yield maybe_deferred(view.mailbox.changed_uids, since)
    outcome: Outcome = yield fetch_messages(request, messages.among(changed))
    return outcome


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
