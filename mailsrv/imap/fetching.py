"""FETCH's engine: streamed ``* n FETCH`` responses for a set of messages.

The entry point is :func:`fetch_messages` (FETCH's and STORE's).  It walks
the requested messages in batches of :data:`BATCH` (one ``IMailbox.fetch``
call per batch, never a list of the whole set), gathers what the batch's items need in a few bulk
calls (parsed structures and HEADER.FIELDS values come from the storage
cache through :mod:`mailsrv.imap.content`), writes one response per
message through the session's :class:`~mailsrv.imap.output.ResponseWriter`,
and waits whenever the writer is paused because the client is not reading.
Between batches it gives the reactor a turn so one huge FETCH does not
stall other sessions.  The items themselves (what each needs, how each is
written) are :mod:`mailsrv.imap.fetch_items`'s.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any

import attrs
from twisted.internet import defer, task

from mailsrv.errors import NoSuchMessage
from mailsrv.imap import content, fetch_columns, fetch_rows, objectid
from mailsrv.imap.budget import unbudgeted
from mailsrv.imap.fetch_items import (
    HANDLERS,
    INDEX_ITEMS,
    FetchMessage,
    FetchRequest,
    FetchResponse,
    decode_binary,
    is_root_fields,
    needs_structure,
    render_flags,
    render_modseq,
    rendered_kind,
    sets_seen,
)
from mailsrv.imap.output import write_lines
from mailsrv.imap.pacing import Pacer
from mailsrv.imap.selected import SelectedMailbox
from mailsrv.interfaces import SEEN, IMessage, StoreMode, StoreResult

__all__ = ["BATCH", "Outcome", "fetch_messages"]

#: Messages whose metadata is read from storage in one call.
BATCH = 500


@attrs.define
class Outcome:
    """How a FETCH went: messages found expunged, a BINARY that could not
    be decoded."""

    missing: int = 0
    unknown_cte: bool = False


@defer.inlineCallbacks
def _set_seen(
    request: FetchRequest, found: Sequence[IMessage]
) -> Generator[defer.Deferred[Any], Any, dict[int, IMessage]]:
    """Set \\Seen on the batch's unseen messages; their new metadata by UID."""
    unseen = [m.uid for m in found if SEEN not in m.flags]
    if not unseen:
        return {}
    result: StoreResult = yield defer.maybeDeferred(
        request.mailbox.store, unseen, [SEEN], StoreMode.ADD, None
    )
    # Our own responses carry the new flags; no untagged FETCH for them later.
    request.view.forget_flags(result.updated)
    return {m.uid: m for m in result.updated}


@defer.inlineCallbacks
def _load(
    request: FetchRequest, found: Sequence[IMessage]
) -> Generator[defer.Deferred[Any], Any, list[FetchMessage]]:
    """What the batch's items need, in bulk: new flags, structures, cached
    header fields."""
    attributes = request.attributes
    changed: dict[int, IMessage] = {}
    if not request.view.readonly and any(sets_seen(a) for a in attributes):
        changed = yield _set_seen(request, found)
    batch = [FetchMessage(changed.get(m.uid, m), flags_changed=m.uid in changed) for m in found]
    uids = [m.uid for m in batch]
    if any(needs_structure(a) for a in attributes):
        structures = yield content.structures(request.mailbox, uids)
        for m in batch:
            m.structure = structures.get(m.uid)
    for kind in {k for k in map(rendered_kind, attributes) if k is not None}:
        values = yield content.rendered(request.mailbox, uids, kind)
        for m in batch:
            value = values.get(m.uid)
            if value is not None:
                m.rendered[kind] = value
    root_fields = [a for a in attributes if is_root_fields(a)]
    for attribute in root_fields:
        assert attribute.section is not None
        values = yield content.header_fields(
            request.mailbox,
            uids,
            attribute.section.fields,
            attribute.section.text == "HEADER.FIELDS.NOT",
        )
        for m in batch:
            value = values.get(m.uid)
            if value is not None:
                m.fields[attribute] = value
    previews = yield _load_previews(request, batch)
    ids = yield _load_ids(request, batch)
    # Keep the messages for which everything was found (the rest were
    # expunged meanwhile, and the caller counts them as missing).
    kinds = len({k for k in map(rendered_kind, attributes) if k is not None})
    structure = any(needs_structure(a) for a in attributes)
    return [
        m
        for m in batch
        if len(m.rendered) == kinds
        and len(m.fields) == len(set(root_fields))
        and (m.structure is not None or not structure)
        and (m.preview is not None or previews != "computed")
        and len(m.ids) == ids
    ]


@defer.inlineCallbacks
def _load_ids(
    request: FetchRequest, batch: list[FetchMessage]
) -> Generator[defer.Deferred[Any], Any, int]:
    """EMAILID and THREADID (RFC 8474); how many kinds were asked."""
    kinds = frozenset(a.name for a in request.attributes) & objectid.KINDS.keys()
    if kinds:
        # The stored message's, whatever the session reads (RFC 8474 5.1:
        # an EMAILID names the message, not one rendering of it).
        found = yield objectid.object_ids(request.view.mailbox, [m.info for m in batch], kinds)
        for m in batch:
            m.ids = {kind: by_uid[m.uid] for kind, by_uid in found.items() if m.uid in by_uid}
    return len(kinds)


@defer.inlineCallbacks
def _load_previews(
    request: FetchRequest, batch: list[FetchMessage]
) -> Generator[defer.Deferred[Any], Any, str]:
    """PREVIEW's texts: "none" asked, "lazy" (only those ready in the
    cache: RFC 8970 4.1) or "computed" (every one, worked out if need be)."""
    asked = [a for a in request.attributes if a.name == "PREVIEW"]
    if not asked:
        return "none"
    compute = not all(a.lazy for a in asked)
    values = yield content.previews(request.mailbox, [m.uid for m in batch], compute)
    for m in batch:
        m.preview = values.get(m.uid)
    return "computed" if compute else "lazy"


@defer.inlineCallbacks
def fetch_messages(
    request: FetchRequest, messages: Iterable[tuple[int, int]]
) -> Generator[defer.Deferred[Any], Any, Outcome]:
    """Write the responses for ``(seq, uid)`` pairs; fire with an outcome
    telling how many of them were gone from storage (expunged by another
    session meanwhile) and whether a BINARY item met an unknown encoding.

    STORE uses this too for its ``FETCH (FLAGS)`` answers.
    """
    outcome: Outcome
    if all(a.name == "UID" for a in request.attributes):
        outcome = yield _fetch_uids(request, messages)
    elif fetch_rows.covers(request):
        if fetch_columns.covers(request):
            missing = yield from fetch_columns.answer(request, messages)
        else:
            missing = yield fetch_rows.fetch_rows(request, messages, _fetch_loaded)
        outcome = Outcome(missing)
    elif all(a.name in INDEX_ITEMS for a in request.attributes):
        outcome = yield _fetch_index_only(request, messages)
    else:
        outcome = yield _fetch_loaded(request, messages)
    return outcome


@defer.inlineCallbacks
def _fetch_uids(
    request: FetchRequest, messages: Iterable[tuple[int, int]]
) -> Generator[defer.Deferred[Any], Any, Outcome]:
    """``FETCH set (UID)`` (what sync clients ask to learn the UIDs): the
    session's view knows every answer, so storage is not asked.  A message
    another session expunged is still answered while this session has not
    been told (RFC 2180 4.1.2), as Dovecot answers it."""
    writer = request.writer
    pairs = iter(messages)
    while chunk := list(itertools.islice(pairs, BATCH)):
        writer.write(b"".join(b"* %d FETCH (UID %d)\r\n" % pair for pair in chunk))
        if writer.paused:
            yield writer.ready()
        if writer.closed:
            break
    return Outcome()


@defer.inlineCallbacks
def _fetch_index_only(
    request: FetchRequest, messages: Iterable[tuple[int, int]]
) -> Generator[defer.Deferred[Any], Any, Outcome]:
    """The first-sync path (FLAGS, UID, RFC822.SIZE, INTERNALDATE only): a
    few writes per batch of 500 responses, no object per message."""
    writer = request.writer
    renderers = [INDEX_ITEMS[a.name] for a in request.attributes]
    pairs = iter(messages)
    outcome = Outcome()
    chunk = list(itertools.islice(pairs, BATCH))
    while chunk:
        if writer.closed:
            return outcome
        seq_of = dict((uid, seq) for seq, uid in chunk)
        found = request.mailbox.fetch(list(seq_of))
        if isinstance(found, defer.Deferred):
            found = yield found
        telling = request.tell_keywords(m.flags for m in found) if request.shows_flags else None
        if telling is not None:
            yield telling
        lines = _index_lines(request.view, found, seq_of, renderers)
        outcome.missing += len(chunk) - len(lines)
        going_on = yield write_lines(writer, lines)
        if not going_on:
            return outcome
        chunk = list(itertools.islice(pairs, BATCH))
        if chunk:
            yield task.deferLater(request.clock, 0, lambda: None)
    return outcome


def _index_lines(
    view: SelectedMailbox,
    found: Sequence[IMessage],
    seq_of: dict[int, int],
    renderers: list[Callable[[SelectedMailbox, IMessage], bytes]],
) -> list[bytes]:
    """The ``* n FETCH (...)`` lines of a batch, for the messages found."""
    lines = []
    for m in found:
        seq = seq_of.get(m.uid)
        if seq is None:
            continue
        items = b" ".join([render(view, m) for render in renderers])
        lines.append(b"* %d FETCH (%s)\r\n" % (seq, items))
    return lines


@defer.inlineCallbacks
def _fetch_loaded(
    request: FetchRequest, messages: Iterable[tuple[int, int]]
) -> Generator[defer.Deferred[Any], Any, Outcome]:
    """Every other FETCH: per batch, what its items need is loaded in bulk,
    then each message is answered (its file open while it is)."""
    pairs = iter(messages)
    outcome = Outcome()
    first = True
    pacer = Pacer(BATCH, request.budget)
    while True:
        if not first:
            # A long FETCH gives other sessions a turn between batches.
            yield task.deferLater(request.clock, 0, lambda: None)
        if request.budget is not None:
            # Between batches only: every response written is whole, and
            # no \Seen is set for a message left unanswered.
            request.budget.check()
        chunk = list(itertools.islice(pairs, pacer.next_size()))
        if not chunk:
            return outcome
        first = False
        if request.writer.closed:
            return outcome
        seq_of = {uid: seq for seq, uid in chunk}
        found: Sequence[IMessage] = yield defer.maybeDeferred(
            request.mailbox.fetch, [uid for _, uid in chunk]
        )
        batch = yield _load(request, [m for m in found if m.uid in seq_of])
        outcome.missing += len(chunk) - len(batch)
        going_on = yield _write_batch(request, batch, seq_of, pacer, outcome)
        if not going_on:
            return outcome
        pacer.done(len(chunk))


@defer.inlineCallbacks
def _write_batch(
    request: FetchRequest,
    batch: list[FetchMessage],
    seq_of: dict[int, int],
    pacer: Pacer,
    outcome: Outcome,
) -> Generator[defer.Deferred[Any], Any, bool]:
    """Answer a loaded batch; False if the connection went meanwhile."""
    writer = request.writer
    wants_file = request.wants_file
    shows_flags = request.shows_flags
    telling = request.tell_keywords(m.info.flags for m in batch if shows_flags or m.flags_changed)
    if telling is not None:
        yield telling
    for msg in batch:
        if wants_file:
            try:
                opened = request.mailbox.open(msg.uid)
                if isinstance(opened, defer.Deferred):
                    opened = yield opened
            except NoSuchMessage:
                outcome.missing += 1
                continue
            msg.file = opened
        try:
            written = _respond(request, msg, seq_of[msg.uid], shows_flags)
            if isinstance(written, defer.Deferred):
                # A value streams at the client's pace: the other sessions'
                # turns meanwhile are not this command's cost.
                written = yield unbudgeted(request.budget, written)
        finally:
            msg.close_file()
        if not written:
            outcome.unknown_cte = True
        if writer.paused:
            pacer.done(1)  # the wait for the client is not our cost
            yield writer.ready()
            pacer.next_size()
        if writer.closed:
            return False
    return True


def _respond(
    request: FetchRequest, msg: FetchMessage, seq: int, shows_flags: bool
) -> bool | defer.Deferred[bool]:
    """Write one message's response; False if a BINARY item cannot be
    decoded, in which case nothing was written for the message (RFC 3516
    4.3 fails the command with [UNKNOWN-CTE]).

    Synchronous (no Deferred, no generator per message: a 100,000-message
    FETCH FLAGS pays for neither) unless an item streams its value.
    """
    attributes = request.attributes
    if request.has_binary and not decode_binary(attributes, msg):
        return False
    response = FetchResponse(request.writer, seq)
    for index, attribute in enumerate(attributes):
        pending = HANDLERS[attribute.name](request, attribute, msg, response)
        if pending is not None:
            return _respond_rest(request, msg, response, index + 1, pending, shows_flags)
    _end_response(request, msg, response, shows_flags)
    return True


@defer.inlineCallbacks
def _respond_rest(
    request: FetchRequest,
    msg: FetchMessage,
    response: FetchResponse,
    start: int,
    pending: defer.Deferred[None],
    shows_flags: bool,
) -> Generator[defer.Deferred[Any], Any, bool]:
    """The rest of a response after an item that streams."""
    yield pending
    for attribute in request.attributes[start:]:
        more = HANDLERS[attribute.name](request, attribute, msg, response)
        if more is not None:
            yield more
    _end_response(request, msg, response, shows_flags)
    return True


def _end_response(
    request: FetchRequest, msg: FetchMessage, response: FetchResponse, shows_flags: bool
) -> None:
    if msg.flags_changed:
        if not shows_flags:
            # RFC 3501 6.4.5: the implicitly set \Seen SHOULD be reported.
            response.item(render_flags(request.view, msg.info))
        if request.view.condstore and not request.view.nomodseq:
            # RFC 7162 3.2.4: with UID and MODSEQ, for a CONDSTORE client.
            names = {a.name for a in request.attributes}
            if "UID" not in names:
                response.item(b"UID %d" % msg.uid)
            if "MODSEQ" not in names:
                response.item(render_modseq(request.view, msg.info))
    response.end()
