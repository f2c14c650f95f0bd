"""Message contents for FETCH and SEARCH: parsed structures and header
blocks, read once and kept in the storage cache.

Storage gives bytes (``IMailbox.open``) and, when it implements
:class:`~mailsrv.interfaces.IMessageCache`, a place to keep what was worked
out from them.  This module is the one place that decides what is cached,
under which kind, and how a stale or corrupt value is treated (reparsed,
never trusted): FETCH and SEARCH only ask for "the structures of these
messages" or "their header blocks", a batch at a time, so a warm cache
answers a whole batch with one query and no file is opened.

Kinds:

``structure``
    :meth:`mailsrv.mime.structure.MessageStructure.to_bytes`: MIME tree, offsets,
    envelope fields.  Enough for ENVELOPE, BODY, BODYSTRUCTURE, every
    section's offsets, and SEARCH on the envelope fields (FROM, TO, CC,
    BCC, SUBJECT, Message-ID...) and SENT*.
``envelope.V``, ``body.V`` and ``bodystructure.V``
    The rendered FETCH ENVELOPE, BODY and BODYSTRUCTURE values, so a
    client listing a mailbox costs a cache read per message, not a decode
    of the structure and a parse of its addresses.
``fields:NAMES`` and ``fields.not:NAMES``
    BODY[HEADER.FIELDS (NAMES)] (or .NOT) of the whole message, for the
    field sets clients actually ask for (NAMES sorted, space separated).
    A client's first sync asks every message for the same few fields, so
    this is what makes the second one cheap, at a few hundred octets per
    message rather than the whole header.
``values:NAME``
    The unfolded values of one header field (every occurrence), for the
    header keys of SEARCH and SENT*.
``addresses.V:NAME``
    The addresses of one address field (FROM, TO, CC, BCC) as SEARCH
    matches them (:func:`mailsrv.mime.addresses.address_text`), every occurrence.
``folded.V:NAME`` and ``afolded.V:NAME``
    The same values (``values:NAME``) RFC 2047 decoded and case folded, or
    the address texts (``addresses.V:NAME``) case folded, as UTF-8: what
    SEARCH's substring match reads, so the storage can find a needle in a
    whole mailbox with one query (:func:`folded_values`).
``previewP.V``
    The RFC 8970 PREVIEW text (UTF-8), worked out once per message by
    :func:`mailsrv.mime.preview.preview_text` (``P`` is its
    :data:`~mailsrv.mime.preview.VERSION`); what ``PREVIEW (LAZY)`` serves
    without opening a file.
``sortR.V``
    :class:`mailsrv.imap.sortkeys.SortRecord`: everything SORT and THREAD
    compare (sent date, base subject, first addresses, display names,
    msg-ids), one short record per message, so a warm SORT or THREAD of a
    whole mailbox is one cache read per batch (``R`` is
    :data:`~mailsrv.imap.sortkeys.RECORD_VERSION`).

``V`` is :data:`mailsrv.mime.structure.FORMAT_VERSION`: what is worked out from a
message changes with the model, and a value cached by an older one must
never be served (the structure carries its version inside).  Values of an
older version stay in the cache unread until their message goes.

Values bigger than :data:`CACHE_LIMIT` are not cached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any, TypeVar

from twisted.internet import defer

from mailsrv import log
from mailsrv.errors import NoSuchMessage
from mailsrv.imap.render import body_structure, envelope, render_body_structure, render_envelope
from mailsrv.imap.sortkeys import RECORD_VERSION, SortRecord, record_from_header
from mailsrv.interfaces import IMailbox, IMessageCache
from mailsrv.mime.addresses import address_text
from mailsrv.mime.decoding import decode_words
from mailsrv.mime.fields import filter_fields, raw_fields, read_header
from mailsrv.mime.preview import VERSION as PREVIEW_VERSION
from mailsrv.mime.preview import preview_text
from mailsrv.mime.structure import FORMAT_VERSION, MessageStructure, parse

__all__ = [
    "CACHE_LIMIT",
    "RENDERED",
    "STRUCTURE",
    "address_texts",
    "each_file",
    "field_values",
    "fold_addresses",
    "fold_values",
    "folded_kind",
    "folded_values",
    "header_fields",
    "previews",
    "rendered",
    "sort_records",
    "structures",
]

_log = log.get_logger(__name__)

T = TypeVar("T")

STRUCTURE = "structure"

#: Values longer than this are worked out each time rather than cached (a
#: spam header of 200 KB would bloat the index for nothing).
CACHE_LIMIT = 16 * 1024
#: HEADER.FIELDS lists longer than this are not cached (each distinct list
#: is a cache kind of its own).
_CACHED_FIELD_NAMES = 32


def _versioned(kind: str) -> str:
    """The cache kind for values the message model works out."""
    return f"{kind}.{FORMAT_VERSION}"


def _cache(mailbox: IMailbox) -> Any:
    return IMessageCache(mailbox, None)


def _get_many(cache: Any, uids: list[int], kind: str) -> defer.Deferred[Mapping[int, bytes]]:
    if cache is None or not uids:
        return defer.succeed({})
    return defer.maybeDeferred(cache.get_cached_many, uids, kind)


def _set_many(cache: Any, kind: str, values: dict[int, bytes]) -> defer.Deferred[None]:
    if cache is None or not values:
        return defer.succeed(None)
    d = defer.maybeDeferred(cache.set_cached_many, kind, values)

    def failed(failure: Any) -> None:
        # A cache that cannot be written (read-only disk, a concurrent
        # rebuild) costs speed, never an answer.
        _log.failure("could not cache {kind} values", failure, kind=kind)

    return d.addErrback(failed)


#: For modules that keep cache kinds of their own (:mod:`mailsrv.imap.objectid`).
cache_of = _cache
get_many = _get_many
set_many = _set_many


@defer.inlineCallbacks
def structures(mailbox: IMailbox, uids: Iterable[int]) -> Any:
    """``{uid: MessageStructure}`` for the messages that still exist.

    Cached structures are used when they are of the current format;
    the rest are parsed from the files and cached for next time.
    """
    wanted = list(uids)
    cache = _cache(mailbox)
    cached: Mapping[int, bytes] = yield _get_many(cache, wanted, STRUCTURE)
    out: dict[int, MessageStructure] = {}
    for uid, data in cached.items():
        try:
            out[uid] = MessageStructure.from_bytes(data)
        except ValueError:
            pass  # an older format or damage: parse again
    missing = [u for u in wanted if u not in out]
    parsed = yield each_file(mailbox, missing, lambda uid, source: parse(source))
    out.update(parsed)
    yield _set_many(cache, STRUCTURE, {uid: s.to_bytes() for uid, s in parsed.items()})
    return out


@defer.inlineCallbacks
def each_file(
    mailbox: IMailbox, uids: Iterable[int], compute: Callable[[int, IO[bytes]], T]
) -> Any:
    """``{uid: compute(uid, file)}`` over each message's open file, closed
    after; messages expunged meanwhile are left out (the caller reports
    them)."""
    out: dict[int, T] = {}
    for uid in uids:
        try:
            source = mailbox.open(uid)
            if isinstance(source, defer.Deferred):
                source = yield source
        except NoSuchMessage:
            continue
        try:
            out[uid] = compute(uid, source)
        finally:
            source.close()
    return out


def _envelope(structure: MessageStructure) -> bytes:
    return render_envelope(envelope(structure))


def _body(structure: MessageStructure) -> bytes:
    return render_body_structure(body_structure(structure, False))


def _bodystructure(structure: MessageStructure) -> bytes:
    return render_body_structure(body_structure(structure, True))


#: FETCH items whose rendered value is cached, by cache kind.
RENDERED: dict[str, Callable[[MessageStructure], bytes]] = {
    "envelope": _envelope,
    "body": _body,
    "bodystructure": _bodystructure,
}


@defer.inlineCallbacks
def rendered(mailbox: IMailbox, uids: Iterable[int], kind: str) -> Any:
    """``{uid: bytes}``: the rendered FETCH value ``kind`` (a key of
    :data:`RENDERED`) from the cache, or worked out from the structure."""
    wanted = list(uids)
    cache = _cache(mailbox)
    cached: Mapping[int, bytes] = yield _get_many(cache, wanted, _versioned(kind))
    out = dict(cached)
    missing = [uid for uid in wanted if uid not in out]
    if missing:
        render = RENDERED[kind]
        found = yield structures(mailbox, missing)
        fresh = {uid: render(structure) for uid, structure in found.items()}
        out.update(fresh)
        small = {uid: v for uid, v in fresh.items() if len(v) <= CACHE_LIMIT}
        yield _set_many(cache, _versioned(kind), small)
    return out


@defer.inlineCallbacks
def _per_message(
    mailbox: IMailbox,
    uids: Iterable[int],
    kind: str | None,
    compute: Callable[[IO[bytes]], bytes],
    store: bool = True,
) -> Any:
    """``{uid: value}`` from the cache of ``kind`` or by ``compute`` over
    the message file (then cached, unless not ``store``); ``kind`` None:
    never cached."""
    wanted = list(uids)
    cache = _cache(mailbox) if kind is not None else None
    cached: Mapping[int, bytes] = yield _get_many(cache, wanted, kind or "")
    out: dict[int, bytes] = dict(cached)
    missing = [u for u in wanted if u not in out]
    computed = yield each_file(mailbox, missing, lambda uid, source: compute(source))
    out.update(computed)
    if kind is not None and store:
        fresh = {uid: v for uid, v in computed.items() if len(v) <= CACHE_LIMIT}
        yield _set_many(cache, kind, fresh)
    return out


def header_fields(
    mailbox: IMailbox, uids: Iterable[int], names: Sequence[str], negate: bool
) -> defer.Deferred[dict[int, bytes]]:
    """``{uid: BODY[HEADER.FIELDS (names)]}`` (``negate``: .NOT) of each
    whole message; only the header block is read from a file."""
    unique = sorted({name.upper() for name in names})
    kind: str | None = ("fields.not:" if negate else "fields:") + " ".join(unique)
    if len(unique) > _CACHED_FIELD_NAMES:
        kind = None

    def compute(source: IO[bytes]) -> bytes:
        return filter_fields(read_header(source), unique, negate)

    return _per_message(mailbox, uids, kind, compute)


def _encoded_values(name: str) -> Callable[[IO[bytes]], bytes]:
    """What :func:`field_values` caches for field ``name``, from a file."""

    def compute(source: IO[bytes]) -> bytes:
        values = raw_fields(read_header(source), name)
        return b"".join(b"\n" + v for v in values)

    return compute


def _encoded_addresses(name: str) -> Callable[[IO[bytes]], bytes]:
    """What :func:`address_texts` caches for field ``name``, from a file."""

    def compute(source: IO[bytes]) -> bytes:
        values = raw_fields(read_header(source), name)
        texts = (address_text(v.decode("latin-1")) for v in values)
        return b"".join(b"\n" + t.replace("\n", " ").encode("utf-8") for t in texts)

    return compute


def _values_kind(name: str) -> str:
    return "values:" + name.upper()


def _addresses_kind(name: str) -> str:
    return _versioned("addresses") + ":" + name.upper()


def _decoded_values(data: bytes) -> list[str]:
    return data.decode("latin-1").split("\n")[1:]


def _decoded_addresses(data: bytes) -> list[str]:
    return data.decode("utf-8", "replace").split("\n")[1:]


@defer.inlineCallbacks
def field_values(mailbox: IMailbox, uids: Iterable[int], name: str) -> Any:
    """``{uid: [value, ...]}``: the unfolded values (as sent, Latin-1
    decoded so every octet survives) of header field ``name`` in each
    whole message, for SEARCH HEADER.

    Cached as each value preceded by LF (unfolded values hold none), which
    decodes with one split: no JSON per message on a 100,000-message
    search."""
    encoded = yield _per_message(mailbox, uids, _values_kind(name), _encoded_values(name))
    return {uid: _decoded_values(data) for uid, data in encoded.items()}


@defer.inlineCallbacks
def address_texts(mailbox: IMailbox, uids: Iterable[int], name: str) -> Any:
    """``{uid: [text, ...]}``: each occurrence of address field ``name``
    in each whole message as SEARCH FROM/TO/CC/BCC match it
    (:func:`mailsrv.mime.addresses.address_text`).  Cached like
    :func:`field_values`, as UTF-8."""
    kind = _addresses_kind(name)
    encoded = yield _per_message(mailbox, uids, kind, _encoded_addresses(name))
    return {uid: _decoded_addresses(data) for uid, data in encoded.items()}


def folded_kind(name: str, address: bool) -> str:
    """The cache kind of :func:`folded_values` for field ``name``."""
    return _versioned("afolded" if address else "folded") + ":" + name.upper()


def _folded(texts: Iterable[str]) -> bytes:
    # "surrogatepass": a lone surrogate a decoder let through still encodes,
    # as octets no valid UTF-8 needle can match part of.
    return b"".join(b"\n" + t.encode("utf-8", "surrogatepass") for t in texts)


def fold_values(data: bytes) -> bytes:
    """:func:`folded_values`' value from :func:`field_values`' cached one:
    each value RFC 2047 decoded, then case folded (RFC 3501 6.4.4)."""
    return _folded(decode_words(v.encode("latin-1")).casefold() for v in _decoded_values(data))


def fold_addresses(data: bytes) -> bytes:
    """:func:`folded_values`' value from :func:`address_texts`' cached one."""
    return _folded(t.casefold() for t in _decoded_addresses(data))


@defer.inlineCallbacks
def folded_values(mailbox: IMailbox, uids: Iterable[int], name: str, address: bool) -> Any:
    """``{uid: value}``: header field ``name`` of each message as SEARCH
    HEADER (or, with ``address``, FROM/TO/CC/BCC) matches it, case folded,
    as UTF-8, each occurrence preceded by LF; worked out (from the cached
    raw values where there are some, else from the file) and cached under
    :func:`folded_kind`, so a search finds needles in it with one query
    (:class:`~mailsrv.interfaces.ICachedSearch`).  A needle with no LF is
    in it exactly when the plain matcher finds it in some occurrence."""
    raw_kind = _addresses_kind(name) if address else _values_kind(name)
    compute = _encoded_addresses(name) if address else _encoded_values(name)
    raw: dict[int, bytes] = yield _per_message(mailbox, uids, raw_kind, compute, store=False)
    cache = _cache(mailbox)
    fold = fold_addresses if address else fold_values
    out = {uid: fold(data) for uid, data in raw.items()}
    small = {uid: v for uid, v in out.items() if len(v) <= CACHE_LIMIT}
    yield _set_many(cache, folded_kind(name, address), small)
    return out


#: The cache kind of :func:`sort_records`.
SORT_KIND = _versioned(f"sort{RECORD_VERSION}")


@defer.inlineCallbacks
def sort_records(mailbox: IMailbox, uids: Iterable[int]) -> Any:
    """``{uid: SortRecord}``: what SORT and THREAD compare, from the cache
    or worked out from the header block (then cached); a cached value that
    does not decode is worked out again."""
    wanted = list(uids)
    cache = _cache(mailbox)
    cached: Mapping[int, bytes] = yield _get_many(cache, wanted, SORT_KIND)
    out: dict[int, SortRecord] = {}
    for uid, data in cached.items():
        try:
            out[uid] = SortRecord.from_bytes(data)
        except ValueError:
            pass  # damage: work it out again
    missing = [u for u in wanted if u not in out]
    if missing:
        found = yield each_file(
            mailbox, missing, lambda uid, source: record_from_header(read_header(source))
        )
        out.update(found)
        fresh = {uid: r.to_bytes() for uid, r in found.items()}
        yield _set_many(cache, SORT_KIND, {u: v for u, v in fresh.items() if len(v) <= CACHE_LIMIT})
    return out


#: The cache kind of :func:`previews`.
PREVIEW_KIND = _versioned(f"preview{PREVIEW_VERSION}")


@defer.inlineCallbacks
def previews(mailbox: IMailbox, uids: Iterable[int], compute: bool = True) -> Any:
    """``{uid: preview as UTF-8}`` from the cache; with ``compute``, the
    missing ones are worked out from the structure and the start of the
    text part (then cached), otherwise left out (PREVIEW's LAZY)."""
    wanted = list(uids)
    cache = _cache(mailbox)
    cached: Mapping[int, bytes] = yield _get_many(cache, wanted, PREVIEW_KIND)
    out = dict(cached)
    missing = [uid for uid in wanted if uid not in out]
    if compute and missing:
        found = yield structures(mailbox, missing)

        def work(uid: int, source: IO[bytes]) -> bytes:
            return preview_text(found[uid], source).encode("utf-8")

        fresh = yield each_file(mailbox, list(found), work)
        out.update(fresh)
        yield _set_many(cache, PREVIEW_KIND, fresh)
    return out
