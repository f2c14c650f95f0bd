"""SELECT and EXAMINE (RFC 3501 6.3.1, 6.3.2) with RFC 7162's CONDSTORE and
QRESYNC parameters, CHECK and CLOSE (6.4.1, 6.4.2) and UNSELECT (RFC 3691)."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from mailsrv.errors import NoSuchMailbox
from mailsrv.imap import syntax
from mailsrv.imap.commands.list import list_line
from mailsrv.imap.condstore import (
    CONDSTORE,
    QRESYNC,
    Qresync,
    enable_condstore,
    known_or_all,
    parse_qresync,
    ranges_text,
    vanished_earlier,
)
from mailsrv.imap.fetch_items import FetchRequest
from mailsrv.imap.fetch_syntax import FetchAttribute
from mailsrv.imap.fetching import fetch_messages
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
from mailsrv.imap.selected import SelectedMailbox, UidMap
from mailsrv.imap.session import existing
from mailsrv.interfaces import IMailbox, IMessageRows, MailboxStatus, maybe_deferred

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


def _select_params(session: Session, params: tuple[tuple[str, object], ...]) -> Qresync | None:
    """Check RFC 4466 select-params before the mailbox is opened (RFC 7162
    3.2.5: a BAD leaves no mailbox selected): CONDSTORE turns CONDSTORE on;
    QRESYNC needs ENABLE QRESYNC first."""
    qresync: Qresync | None = None
    names = [name for name, _ in params]
    for name, value in params:
        if names.count(name) > 1:
            raise bad(f"SELECT parameter {name} is given twice")
        if name == CONDSTORE and value is None:
            continue
        if name == QRESYNC:
            if QRESYNC not in session.enabled:
                raise bad("QRESYNC is not enabled (send ENABLE QRESYNC first, RFC 7162 3.2.3)")
            qresync = parse_qresync(value)
            continue
        raise bad(f"SELECT parameter {name} is not supported")
    if CONDSTORE in names:
        enable_condstore(session)
    return qresync


@attrs.define
class _Opened:
    """What SELECT learnt of the mailbox while building the view."""

    status: MailboxStatus
    keywords: Sequence[str]
    recent: int
    first_unseen: int = 0
    vanished: list[tuple[int, int]] = attrs.Factory(list)
    changed: list[tuple[int, int]] = attrs.Factory(list)


@defer.inlineCallbacks
def _open(
    mailbox: IMailbox, view: SelectedMailbox, qresync: Qresync | None
) -> Generator[defer.Deferred[Any], Any, _Opened]:
    # The counters (HIGHESTMODSEQ above all) are read before the UIDs: a
    # change after them is in the view or queued by its listener, so the
    # HIGHESTMODSEQ the client is given never covers a change it missed.
    status: MailboxStatus = yield defer.maybeDeferred(mailbox.status)
    if IMessageRows.providedBy(mailbox):
        uid_runs = yield maybe_deferred(mailbox.uid_runs)
        view.map = UidMap.from_runs(uid_runs)
    else:
        uids: Sequence[int] = yield defer.maybeDeferred(mailbox.uids)
        view.map = UidMap.of(uids)
    view.nomodseq = status.highest_modseq == 0
    view.modseq = status.highest_modseq
    view.uid_limit = status.uidnext
    # Like Dovecot, FLAGS lists the keywords already defined, so a
    # client knows them before any FETCH shows one (RFC 3501 7.2.6).
    keywords: Sequence[str] = yield defer.maybeDeferred(mailbox.keywords)
    if view.rev2:
        recent = 0  # RFC 9051 has no \Recent: leave it to IMAP4rev1 sessions
    elif view.readonly:
        recent = status.recent
    else:
        claimed = yield defer.maybeDeferred(mailbox.claim_recent)
        view.recent.update(claimed)
        recent = len(view.recent)
    opened = _Opened(status, keywords, recent)
    if status.unseen and not view.rev2:
        opened.first_unseen = yield view.first_unseen(status.unseen, BATCH)
    # RFC 7162 3.2.5: another UIDVALIDITY, or no MODSEQs, and the client
    # gets a plain SELECT.
    if qresync is not None and qresync.uidvalidity == status.uidvalidity and not view.nomodseq:
        known = known_or_all(qresync, view)
        opened.vanished = yield vanished_earlier(view, qresync.modseq, known, qresync)
        changed: Sequence[int] = yield maybe_deferred(mailbox.changed_uids, qresync.modseq)
        opened.changed = _known_pairs(view, changed, known)
    return opened


def _known_pairs(
    view: SelectedMailbox, uids: Sequence[int], known: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """``(seq, uid)`` of ``uids`` that are in the view and among ``known``."""
    pairs: list[tuple[int, int]] = []
    ranges = iter(known)
    current = next(ranges, None)
    for uid in uids:
        while current is not None and current[1] < uid:
            current = next(ranges, None)
        if current is None:
            break
        seq = view.map.seq(uid)
        if uid >= current[0] and seq is not None:
            pairs.append((seq, uid))
    return pairs


@defer.inlineCallbacks
def handle_select(session: Session, command: Select) -> Generator[defer.Deferred[Any], Any, Done]:
    if session.selected is not None:
        session.deselect()
        # RFC 7162 3.2.11: what follows is about the newly selected mailbox.
        session.send(b"* OK [CLOSED] Previous mailbox closed\r\n")
    qresync = _select_params(session, command.params)
    mailbox: IMailbox = yield defer.maybeDeferred(
        session.logged_in_account().get_mailbox, existing(command.mailbox)
    )
    view = SelectedMailbox(mailbox, (), command.readonly)
    view.condstore = CONDSTORE in session.enabled
    view.qresync = QRESYNC in session.enabled
    view.rev2 = session.rev2
    mailbox.add_listener(view)
    try:
        opened: _Opened = yield _open(mailbox, view, qresync)
    except BaseException:
        view.close()
        raise
    if session.lost:
        view.close()
        return Done("NO", "Connection lost")
    session.selected = view
    session.state = State.SELECTED
    lines = [f"* {view.exists} EXISTS\r\n"]
    if view.rev2:
        # RFC 9051 6.3.2: a LIST response names the mailbox (RECENT and
        # UNSEEN are gone, appendix E items 11 and 12).
        lines.append(_list_line(session, command.mailbox))
    else:
        lines.append(f"* {opened.recent} RECENT\r\n")
    if opened.first_unseen:
        lines.append(f"* OK [UNSEEN {opened.first_unseen}] First unseen\r\n")
    lines.extend(_identity_lines(mailbox, view, opened))
    session.send(view.flags_response(opened.keywords) + "".join(lines).encode("utf-8"))
    if opened.changed:
        # RFC 7162 3.2.5.1: as UID FETCH known-uids (FLAGS) (CHANGEDSINCE m).
        items = (FetchAttribute("UID"), FetchAttribute("FLAGS"), FetchAttribute("MODSEQ"))
        request = FetchRequest(view, mailbox, session.output(), session.clock, items, True)
        yield fetch_messages(request, opened.changed)
    mode = "READ-ONLY" if command.readonly else "READ-WRITE"
    return Done(text=f"{command.name} completed", code=mode)


def _identity_lines(mailbox: IMailbox, view: SelectedMailbox, opened: _Opened) -> list[str]:
    """UIDVALIDITY, UIDNEXT, MAILBOXID, HIGHESTMODSEQ and VANISHED lines."""
    status = opened.status
    lines = [f"* OK [UIDVALIDITY {mailbox.uidvalidity}] UIDs valid\r\n"]
    # A message added between the counters and the UIDs is in the view.
    uidnext = max(status.uidnext, view.map.last_uid + 1)
    lines.append(f"* OK [UIDNEXT {uidnext}] Predicted next UID\r\n")
    if status.mailbox_id:
        lines.append(f"* OK [MAILBOXID ({status.mailbox_id})] Ok\r\n")  # RFC 8474 4.2
    if view.condstore:
        # RFC 7162 3.1.2: one or the other once CONDSTORE is on.
        if view.nomodseq:
            lines.append("* OK [NOMODSEQ] This mailbox keeps no MODSEQs\r\n")
        else:
            lines.append(f"* OK [HIGHESTMODSEQ {view.modseq}] Highest\r\n")
    if opened.vanished:
        lines.append(f"* VANISHED (EARLIER) {ranges_text(opened.vanished).decode()}\r\n")
    return lines


def _list_line(session: Session, name: str) -> str:
    """SELECT's ``* LIST () "/" name`` in IMAP4rev2, with ``OLDNAME`` when
    the client's name was not in NFC (RFC 9051 6.3.2, 6.3.9.7)."""
    delimiter = session.logged_in_account().delimiter
    return list_line(name, delimiter, session.utf8).decode("utf-8")


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
