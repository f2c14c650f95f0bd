"""OBJECTID (RFC 8474): EMAILID and THREADID, worked out from the message.

Neither is stored: both follow from what never changes about a message, so
they are the same after a restart, an index rebuild, a COPY or MOVE (which
keep the bytes and the internal date: RFC 8474 5.1's COPYUID rule) and even
a migration to another backend, with nothing to keep in step.  Each is kept
in the storage's message cache once worked out, so only the first FETCH or
SEARCH of a message pays for it.

EMAILID
    ``M`` and 24 hex digits of the SHA-256 of the internal date and the
    message's bytes: everything immutable about a ``{mailbox, UIDVALIDITY,
    UID}`` is the same for equal EMAILIDs (RFC 8474 5.1), and identical
    messages appended with the same date share one, as the RFC allows.
    The first time, the whole file is read.
THREADID
    ``T`` and 24 hex digits of the SHA-256 of the thread's first message-id
    as the message names it: the first of References (or In-Reply-To's),
    else its own Message-ID.  A reply and the message it answers share it,
    in any mailbox (5.2's SHOULD); it never changes once given (5.2's MUST
    NOT), and it depends on the header alone, so equal EMAILIDs have equal
    THREADIDs.  A message without any message-id is a thread of its own:
    ``T`` and its EMAILID's digits.  The root is read from the header once
    and cached (message-ids normalised as THREAD REFERENCES does).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, cast

from twisted.internet import defer

from mailsrv.imap import content
from mailsrv.imap.sortkeys import message_ids
from mailsrv.interfaces import IMailbox, IMessage
from mailsrv.mime.fields import read_header, split_fields

if TYPE_CHECKING:
    from mailsrv.imap.searching import Predicate, SearchContent, _Context, _Pending

__all__ = [
    "EMAIL_KIND",
    "KINDS",
    "SEARCH_KEYS",
    "THREAD_KIND",
    "email_ids",
    "object_ids",
    "thread_ids",
]

#: Cache kinds of EMAILIDs and of THREADIDs' roots (the rules' versions in
#: the names).
EMAIL_KIND = "emailid1"
THREAD_KIND = "threadroot1"
_DIGITS = 24
_READ = 64 * 1024


def _email_id(info: IMessage, source: IO[bytes]) -> bytes:
    digest = hashlib.sha256(b"%d\0" % int(info.internal_date.timestamp()))
    while chunk := source.read(_READ):
        digest.update(chunk)
    return b"M" + digest.hexdigest()[:_DIGITS].encode("ascii")


@defer.inlineCallbacks
def email_ids(
    mailbox: IMailbox, messages: Sequence[IMessage]
) -> Generator[defer.Deferred[Any], Any, dict[int, str]]:
    """``{uid: EMAILID}`` of the messages that still exist."""
    cache = content.cache_of(mailbox)
    uids = [m.uid for m in messages]
    cached: Mapping[int, bytes] = yield content.get_many(cache, uids, EMAIL_KIND)
    out = {uid: value.decode("ascii", "replace") for uid, value in cached.items()}
    info = {m.uid: m for m in messages if m.uid not in out}
    fresh: dict[int, bytes] = yield content.each_file(
        mailbox, list(info), lambda uid, source: _email_id(info[uid], source)
    )
    yield content.set_many(cache, EMAIL_KIND, fresh)
    out.update((uid, value.decode("ascii")) for uid, value in fresh.items())
    return out


def _thread_of(root: str) -> str:
    return "T" + hashlib.sha256(b"thread\0" + root.encode("utf-8")).hexdigest()[:_DIGITS]


def _thread_root(block: bytes) -> bytes:
    """The message-id a message's thread is named by, from its header (the
    first occurrence of each field counts, as for THREAD); b"" if none."""
    fields: dict[str, str] = {}
    for name, _raw, value in split_fields(block):
        if name in _THREAD_FIELDS and name not in fields:
            fields[name] = value.decode("latin-1")
    for name in _THREAD_FIELDS:
        ids = message_ids(fields.get(name))
        if ids:
            return ids[0].encode("utf-8", "surrogatepass")
    return b""


#: Where the root is looked for, in order: References' first id, else
#: In-Reply-To's, else the message's own (RFC 5256 REFERENCES's parents).
_THREAD_FIELDS = ("references", "in-reply-to", "message-id")


@defer.inlineCallbacks
def thread_ids(
    mailbox: IMailbox, messages: Sequence[IMessage]
) -> Generator[defer.Deferred[Any], Any, dict[int, str]]:
    """``{uid: THREADID}`` of the messages that still exist."""
    cache = content.cache_of(mailbox)
    uids = [m.uid for m in messages]
    roots: dict[int, bytes] = dict((yield content.get_many(cache, uids, THREAD_KIND)))
    missing = [uid for uid in uids if uid not in roots]
    fresh: dict[int, bytes] = yield content.each_file(
        mailbox, missing, lambda uid, source: _thread_root(read_header(source))
    )
    yield content.set_many(cache, THREAD_KIND, fresh)
    roots.update(fresh)
    out: dict[int, str] = {}
    alone: list[IMessage] = []
    for m in messages:
        root = roots.get(m.uid)
        if root is None:
            continue  # expunged meanwhile
        if root:
            out[m.uid] = _thread_of(root.decode("utf-8", "surrogatepass"))
        else:
            alone.append(m)
    if alone:
        emails = yield email_ids(mailbox, alone)
        out.update((uid, "T" + email[1:]) for uid, email in emails.items())
    return out


#: What each kind is worked out by.
KINDS: dict[
    str,
    Callable[[IMailbox, Sequence[IMessage]], defer.Deferred[dict[int, str]]],
] = {"EMAILID": email_ids, "THREADID": thread_ids}


@defer.inlineCallbacks
def object_ids(
    mailbox: IMailbox, messages: Sequence[IMessage], kinds: frozenset[str]
) -> Generator[defer.Deferred[Any], Any, dict[str, dict[int, str]]]:
    """``{kind: {uid: id}}`` for the kinds asked (EMAILID, THREADID)."""
    out: dict[str, dict[int, str]] = {}
    for kind in sorted(kinds):
        out[kind] = yield KINDS[kind](mailbox, messages)
    return out


# ---------------------------------------------------------------------------
# SEARCH EMAILID / THREADID (RFC 8474 6)
# ---------------------------------------------------------------------------


def _load(kind: str) -> Callable[[IMailbox, list[_Pending]], defer.Deferred[None]]:
    def load(mailbox: IMailbox, pending: list[_Pending]) -> defer.Deferred[None]:
        d = KINDS[kind](mailbox, [m for _, m, _ in pending])

        def fill(found: dict[int, str]) -> None:
            for _, m, c in pending:
                if c.ids is None:
                    c.ids = {}
                # Gone meanwhile: no ID, so no match.
                c.ids[kind] = found.get(m.uid, "")

        return d.addCallback(fill)

    return load


def _search_key(op: str, args: tuple[object, ...], context: _Context) -> Predicate:
    """Messages whose EMAILID or THREADID is exactly the value (ObjectIDs
    are case-sensitive: RFC 8474 7)."""
    wanted = cast(str, args[0])
    context.program.loaders[op] = _load(op)

    def test(seq: int, m: IMessage, c: SearchContent) -> bool | None:
        if c.ids is None or op not in c.ids:
            return None
        return c.ids[op] == wanted

    return test


SEARCH_KEYS = {"EMAILID": _search_key, "THREADID": _search_key}
