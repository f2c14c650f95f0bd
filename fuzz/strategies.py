"""Hypothesis strategies: IMAP commands with the object each must parse to.

A strategy here draws a command as a client may write it (each string as an
atom, a quoted string, a synchronizing literal or a LITERAL+ one; keywords
in any case) together with the command object the server's parser must
make of it, so ``parse(render(x)) == x`` is one assertion.  The suites in
``tests/test_fuzz_*.py`` use them with :func:`fuzz_settings`.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from mailsrv import mutf7
from mailsrv.imap import syntax
from mailsrv.imap.catenate import Text
from mailsrv.imap.commands.append import Append, AppendMessage
from mailsrv.imap.commands.auth import Login
from mailsrv.imap.commands.copy import Copy
from mailsrv.imap.commands.expunge import Expunge
from mailsrv.imap.commands.fetch import Fetch
from mailsrv.imap.commands.general import Enable, Id
from mailsrv.imap.commands.list import List
from mailsrv.imap.commands.mailboxes import Create, MailboxCommand, Rename
from mailsrv.imap.commands.search import Search
from mailsrv.imap.commands.select import Select
from mailsrv.imap.commands.status import Status
from mailsrv.imap.commands.store import Store
from mailsrv.imap.fetch_syntax import FetchAttribute, Section
from mailsrv.imap.lexer import ASTRING_CHARS, ATOM_CHARS, LIST_CHARS, TAG_CHARS
from mailsrv.imap.registry import Command, Simple
from mailsrv.imap.search_syntax import SearchKey
from mailsrv.imap.syntax import STAR, SequenceSet

__all__ = ["Rendered", "commands", "fuzz_settings"]

Draw = Callable[[st.SearchStrategy[Any]], Any]

#: Examples per property in a normal run; MAILSRV_FUZZ_EXAMPLES raises it
#: (the long form: e.g. 20000), and then examples are random, not the
#: fixed ones CI runs.
EXAMPLES = int(os.environ.get("MAILSRV_FUZZ_EXAMPLES", "0"))


def fuzz_settings(examples: int) -> settings:
    """``examples`` per property, deterministic, no deadline; or, with
    MAILSRV_FUZZ_EXAMPLES set, that many random ones."""
    if EXAMPLES:
        return settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


@attrs.frozen
class Rendered:
    """A command's wire form (CRLF included) and what it must parse to."""

    wire: bytes
    expected: Command


def _chars(allowed: frozenset[int]) -> st.SearchStrategy[str]:
    return st.sampled_from(sorted(chr(c) for c in allowed))


def _any_case(draw: Draw, word: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.lower() if flip else c for c, flip in zip(word, flips, strict=True))


# -- strings --------------------------------------------------------------------------


def _literal(draw: Draw, data: bytes) -> bytes:
    plus = draw(st.booleans())
    return b"{%d%s}\r\n" % (len(data), b"+" if plus else b"") + data


def _quoted(data: bytes) -> bytes:
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def string_form(draw: Draw, data: bytes, *, atom_chars: frozenset[int] = ASTRING_CHARS) -> bytes:
    """``data`` as an atom (when it can be one), quoted string or literal."""
    forms = ["literal"]
    if not any(c in (0x00, 0x0A, 0x0D) for c in data) and len(data) < 2000:
        forms.append("quoted")
    if data and all(c in atom_chars for c in data) and data.upper() != b"NIL":
        forms.append("atom")
    form = draw(st.sampled_from(forms))
    if form == "atom":
        return data
    if form == "quoted":
        return _quoted(data)
    return _literal(draw, data)


def _bytes(min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(min_size=min_size, max_size=max_size),
        st.text(
            st.characters(codec="ascii", exclude_characters="\r\n\0"),
            min_size=min_size,
            max_size=max_size,
        ).map(str.encode),
    )


tags = st.text(_chars(TAG_CHARS), min_size=1, max_size=8)
#: Mailbox names: any Unicode a mailbox can have (no lone surrogates).
names = st.text(
    st.characters(exclude_categories=["Cs"]), min_size=0, max_size=20
) | st.sampled_from(["INBOX", "inbox", "Inbox", "Sent Items", "a/b", "&", "~x"])


def mailbox_form(draw: Draw, name: str) -> tuple[bytes, str]:
    """A mailbox name on the wire and the name the server must read."""
    wire = string_form(draw, mutf7.encode(name).encode("ascii"))
    return wire, "INBOX" if name.upper() == "INBOX" else name


# -- argument pieces ------------------------------------------------------------------

_numbers = st.integers(1, 0xFFFFFFFF) | st.integers(1, 20)
_seq_numbers = _numbers | st.just(STAR)


@st.composite
def sequence_sets(draw: Draw) -> tuple[bytes, SequenceSet]:
    if draw(st.integers(0, 15)) == 0:
        return b"$", syntax.SAVED
    ranges = draw(st.lists(st.tuples(_seq_numbers, _seq_numbers), min_size=1, max_size=6))
    parts = []
    for low, high in ranges:
        one = [b"*" if n == STAR else str(n).encode() for n in (low, high)]
        parts.append(one[0] if low == high and draw(st.booleans()) else b":".join(one))
    return b",".join(parts), SequenceSet(tuple(ranges))


_SYSTEM = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"]
_keywords = st.text(_chars(ATOM_CHARS), min_size=1, max_size=12)


@st.composite
def flags(draw: Draw) -> tuple[bytes, str]:
    if draw(st.booleans()):
        flag = draw(st.sampled_from(_SYSTEM))
        return _any_case(draw, flag).encode(), flag
    keyword = draw(_keywords)
    return keyword.encode(), keyword


@st.composite
def flag_lists(draw: Draw) -> tuple[bytes, tuple[str, ...]]:
    drawn = draw(st.lists(flags(), max_size=6))
    wire = b"(" + b" ".join(w for w, _ in drawn) + b")"
    return wire, tuple(dict.fromkeys(f for _, f in drawn))


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_dates = st.dates(datetime.date(1, 1, 1), datetime.date(9999, 12, 31))


@st.composite
def dates(draw: Draw) -> tuple[bytes, datetime.date]:
    day = draw(_dates)
    month = _any_case(draw, _MONTHS[day.month - 1])
    text = f"{day.day}-{month}-{day.year:04d}".encode()
    return (_quoted(text) if draw(st.booleans()) else text), day


@st.composite
def date_times(draw: Draw) -> tuple[bytes, datetime.datetime]:
    offset = datetime.timedelta(minutes=draw(st.integers(-(24 * 60 - 1), 24 * 60 - 1)))
    when = draw(
        st.datetimes(datetime.datetime(1000, 1, 1), datetime.datetime(9999, 12, 30))
    ).replace(microsecond=0, tzinfo=datetime.timezone(offset))
    return b'"' + syntax.format_date_time(when).encode() + b'"', when


# -- SEARCH -----------------------------------------------------------------------------

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "RECENT": ("\\Recent", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_field_names = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":"),
    min_size=1,
    max_size=12,
)


Leaf = tuple[bytes, SearchKey]


def _leaf_flag(draw: Draw) -> Leaf:
    word = draw(st.sampled_from(sorted(_FLAG_KEYS)))
    return _any_case(draw, word).encode(), SearchKey("FLAG", _FLAG_KEYS[word])


def _leaf_all(draw: Draw) -> Leaf:
    return _any_case(draw, "ALL").encode(), SearchKey("ALL")


def _leaf_new(draw: Draw) -> Leaf:
    return b"NEW", SearchKey(
        "AND", (SearchKey("FLAG", ("\\Recent", True)), SearchKey("FLAG", ("\\Seen", False)))
    )


def _leaf_old(draw: Draw) -> Leaf:
    return b"OLD", SearchKey("FLAG", ("\\Recent", False))


def _leaf_keyword(draw: Draw) -> Leaf:
    word = draw(st.sampled_from(["KEYWORD", "UNKEYWORD"]))
    wire, flag = draw(flags())
    return word.encode() + b" " + wire, SearchKey("FLAG", (flag, word == "KEYWORD"))


def _leaf_text(kind: str) -> Callable[[Draw], Leaf]:
    words = {"address": ["FROM", "TO", "CC", "BCC"], "subject": ["SUBJECT"]}.get(
        kind, ["BODY", "TEXT"]
    )

    def leaf(draw: Draw) -> Leaf:
        word = draw(st.sampled_from(words))
        value = draw(_bytes())
        wire = _any_case(draw, word).encode() + b" " + string_form(draw, value)
        if kind == "address":
            return wire, SearchKey("ADDRESS", (word, value))
        if kind == "subject":
            return wire, SearchKey("HEADER", ("SUBJECT", value))
        return wire, SearchKey(word, (value,))

    return leaf


def _leaf_header(draw: Draw) -> Leaf:
    field = draw(_field_names)
    value = draw(_bytes())
    wire = b"HEADER " + string_form(draw, field.encode()) + b" " + string_form(draw, value)
    return wire, SearchKey("HEADER", (field.upper(), value))


def _leaf_date(draw: Draw) -> Leaf:
    word = draw(st.sampled_from(["BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"]))
    wire, day = draw(dates())
    return word.encode() + b" " + wire, SearchKey(word, (day,))


def _leaf_size(draw: Draw) -> Leaf:
    word = draw(st.sampled_from(["LARGER", "SMALLER"]))
    size = draw(st.integers(0, 0xFFFFFFFF))
    return b"%s %d" % (word.encode(), size), SearchKey(word, (size,))


def _leaf_uid(draw: Draw) -> Leaf:
    wire, seqset = draw(sequence_sets())
    return b"UID " + wire, SearchKey("UID", (seqset,))


def _leaf_seq(draw: Draw) -> Leaf:
    wire, seqset = draw(sequence_sets())
    return wire, SearchKey("SEQ", (seqset,))


#: One drawer per kind of search key that is no combination of others.
_LEAVES: dict[str, Callable[[Draw], Leaf]] = {
    "flag": _leaf_flag,
    "all": _leaf_all,
    "new": _leaf_new,
    "old": _leaf_old,
    "keyword": _leaf_keyword,
    "address": _leaf_text("address"),
    "subject": _leaf_text("subject"),
    "text": _leaf_text("text"),
    "header": _leaf_header,
    "date": _leaf_date,
    "size": _leaf_size,
    "uid": _leaf_uid,
    "seq": _leaf_seq,
}


@st.composite
def _search_leaf(draw: Draw) -> Leaf:
    return _LEAVES[draw(st.sampled_from(list(_LEAVES)))](draw)


def _search_node(
    children: st.SearchStrategy[tuple[bytes, SearchKey]],
) -> st.SearchStrategy[tuple[bytes, SearchKey]]:
    @st.composite
    def node(draw: Draw) -> tuple[bytes, SearchKey]:
        kind = draw(st.sampled_from(["not", "or", "list"]))
        if kind == "not":
            wire, key = draw(children)
            return b"NOT " + wire, SearchKey("NOT", (key,))
        if kind == "or":
            (left, lkey), (right, rkey) = draw(children), draw(children)
            return b"OR " + left + b" " + right, SearchKey("OR", (lkey, rkey))
        items = draw(st.lists(children, min_size=1, max_size=4))
        wire = b"(" + b" ".join(w for w, _ in items) + b")"
        keys = tuple(k for _, k in items)
        return wire, keys[0] if len(keys) == 1 else SearchKey("AND", keys)

    return node()


search_keys = st.recursive(_search_leaf(), _search_node, max_leaves=12)


# -- FETCH ------------------------------------------------------------------------------

_SIMPLE_ITEMS = (
    "ENVELOPE",
    "FLAGS",
    "INTERNALDATE",
    "RFC822",
    "RFC822.HEADER",
    "RFC822.SIZE",
    "RFC822.TEXT",
    "BODYSTRUCTURE",
    "UID",
    "BODY",
)
_parts = st.lists(st.integers(1, 0xFFFFFFFF) | st.integers(1, 9), max_size=4).map(tuple)


@st.composite
def sections(draw: Draw, binary: bool) -> tuple[bytes, Section]:
    parts = draw(_parts)
    wire = b".".join(b"%d" % p for p in parts)
    if binary:
        return b"[" + wire + b"]", Section(parts)
    texts = [None, "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"]
    if parts:
        texts.append("MIME")
    text = draw(st.sampled_from(texts))
    fields: tuple[str, ...] = ()
    if text is not None:
        wire = (wire + b"." if wire else b"") + _any_case(draw, text).encode()
        if text.startswith("HEADER.FIELDS"):
            names = draw(st.lists(_field_names, min_size=1, max_size=4))
            wire += b" (" + b" ".join(string_form(draw, n.encode()) for n in names) + b")"
            fields = tuple(n.upper() for n in names)
    return b"[" + wire + b"]", Section(parts, text, fields)


@st.composite
def fetch_attributes(draw: Draw) -> tuple[bytes, FetchAttribute]:
    kind = draw(st.sampled_from(["simple", "body", "binary", "binary.size"]))
    if kind == "simple":
        name = draw(st.sampled_from(_SIMPLE_ITEMS))
        return _any_case(draw, name).encode(), FetchAttribute(name)
    partial = draw(st.none() | st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(1, 0xFFFFFFFF)))
    after = b"" if partial is None else b"<%d.%d>" % partial
    if kind == "binary.size":
        wire, section = draw(sections(True))
        return b"BINARY.SIZE" + wire, FetchAttribute("BINARY.SIZE", section)
    peek = draw(st.booleans())
    name = "BODY" if kind == "body" else "BINARY"
    wire, section = draw(sections(kind == "binary"))
    word = name + (".PEEK" if peek else "")
    return (
        _any_case(draw, word).encode() + wire + after,
        FetchAttribute(name, section, partial, peek),
    )


# -- whole commands ---------------------------------------------------------------------


def _command(draw: Draw, tag: str, words: str, *args: bytes) -> bytes:
    return b" ".join([tag.encode(), _any_case(draw, words).encode(), *args]) + b"\r\n"


@st.composite
def login(draw: Draw, tag: str) -> Rendered:
    user, password = draw(_bytes(1)), draw(_bytes(1))
    wire = _command(draw, tag, "LOGIN", string_form(draw, user), string_form(draw, password))
    return Rendered(wire, Login(tag, "LOGIN", user, password))


@st.composite
def mailbox_commands(draw: Draw, tag: str) -> Rendered:
    word = draw(
        st.sampled_from(["SELECT", "EXAMINE", "CREATE", "DELETE", "SUBSCRIBE", "UNSUBSCRIBE"])
    )
    wire, name = mailbox_form(draw, draw(names))
    expected: Command
    if word in ("SELECT", "EXAMINE"):
        expected = Select(tag, word, name, readonly=word == "EXAMINE")
    elif word == "CREATE":
        expected = Create(tag, word, name)
    else:
        expected = MailboxCommand(tag, word, name)
    return Rendered(_command(draw, tag, word, wire), expected)


@st.composite
def rename(draw: Draw, tag: str) -> Rendered:
    (old_wire, old), (new_wire, new) = (
        mailbox_form(draw, draw(names)),
        mailbox_form(draw, draw(names)),
    )
    return Rendered(
        _command(draw, tag, "RENAME", old_wire, new_wire), Rename(tag, "RENAME", old, new)
    )


@st.composite
def status(draw: Draw, tag: str) -> Rendered:
    wire, name = mailbox_form(draw, draw(names))
    items = draw(
        st.lists(
            st.sampled_from(["MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE"]),
            min_size=1,
            max_size=6,
        )
    )
    listed = b"(" + b" ".join(_any_case(draw, i).encode() for i in items) + b")"
    return Rendered(
        _command(draw, tag, "STATUS", wire, listed), Status(tag, "STATUS", name, tuple(items))
    )


@st.composite
def list_command(draw: Draw, tag: str) -> Rendered:
    word = draw(st.sampled_from(["LIST", "LSUB"]))
    reference_wire, reference = mailbox_form(draw, draw(names))
    pattern = draw(names | st.sampled_from(["*", "%", "a/%", "*x*"]))
    encoded = mutf7.encode(pattern).encode("ascii")
    pattern_wire = string_form(draw, encoded, atom_chars=LIST_CHARS)
    expected_pattern = "INBOX" if pattern.upper() == "INBOX" else pattern
    return Rendered(
        _command(draw, tag, word, reference_wire, pattern_wire),
        List(tag, word, reference, (expected_pattern,)),
    )


@st.composite
def copy_move(draw: Draw, tag: str) -> Rendered:
    uid = draw(st.booleans())
    word = draw(st.sampled_from(["COPY", "MOVE"]))
    seq_wire, seqset = draw(sequence_sets())
    wire, name = mailbox_form(draw, draw(names))
    words = ("UID " if uid else "") + word
    return Rendered(_command(draw, tag, words, seq_wire, wire), Copy(tag, word, uid, seqset, name))


@st.composite
def store(draw: Draw, tag: str) -> Rendered:
    uid = draw(st.booleans())
    seq_wire, seqset = draw(sequence_sets())
    sign = draw(st.sampled_from(["", "+", "-"]))
    silent = draw(st.booleans())
    word = sign + _any_case(draw, "FLAGS" + (".SILENT" if silent else ""))
    if draw(st.booleans()):
        flags_wire, flag_tuple = draw(flag_lists())
    else:
        drawn = draw(st.lists(flags(), min_size=1, max_size=4))
        flags_wire = b" ".join(w for w, _ in drawn)
        flag_tuple = tuple(dict.fromkeys(f for _, f in drawn))
    mode = {"": "replace", "+": "add", "-": "remove"}[sign]
    return Rendered(
        _command(draw, tag, ("UID " if uid else "") + "STORE", seq_wire, word.encode(), flags_wire),
        Store(tag, "STORE", uid, seqset, mode, silent, flag_tuple),
    )


@st.composite
def fetch(draw: Draw, tag: str) -> Rendered:
    uid = draw(st.booleans())
    seq_wire, seqset = draw(sequence_sets())
    macro = draw(st.sampled_from([None, None, None, "ALL", "FAST", "FULL"]))
    if macro is not None:
        items_wire = _any_case(draw, macro).encode()
        names = {
            "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
            "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
            "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
        }[macro]
        attributes = tuple(FetchAttribute(n) for n in names)
    else:
        drawn = draw(st.lists(fetch_attributes(), min_size=1, max_size=5))
        if len(drawn) == 1 and draw(st.booleans()):
            items_wire = drawn[0][0]
        else:
            items_wire = b"(" + b" ".join(w for w, _ in drawn) + b")"
        attributes = tuple(a for _, a in drawn)
    if uid and not any(a.name == "UID" for a in attributes):
        attributes += (FetchAttribute("UID"),)  # RFC 3501 6.4.8: UID is implied
    return Rendered(
        _command(draw, tag, ("UID " if uid else "") + "FETCH", seq_wire, items_wire),
        Fetch(tag, "FETCH", uid, seqset, attributes),
    )


@st.composite
def search(draw: Draw, tag: str) -> Rendered:
    uid = draw(st.booleans())
    # Each option once: a second ALL is BAD (RFC 5267 4.4).
    options = draw(
        st.none()
        | st.lists(st.sampled_from(["MIN", "MAX", "ALL", "COUNT", "SAVE"]), max_size=3, unique=True)
    )
    charset = draw(st.none() | st.sampled_from(["UTF-8", "US-ASCII", "utf-8"]))
    keys = draw(st.lists(search_keys, min_size=1, max_size=3))
    args = []
    if options is not None:
        args.append(b"RETURN (" + b" ".join(_any_case(draw, o).encode() for o in options) + b")")
    if charset is not None:
        args.append(b"CHARSET " + string_form(draw, charset.encode()))
    args.extend(w for w, _ in keys)
    key = keys[0][1] if len(keys) == 1 else SearchKey("AND", tuple(k for _, k in keys))
    return Rendered(
        _command(draw, tag, ("UID " if uid else "") + "SEARCH", *args),
        Search(
            tag,
            "SEARCH",
            uid,
            None if charset is None else charset.upper(),
            key,
            None if options is None else tuple(options),
        ),
    )


@st.composite
def append(draw: Draw, tag: str) -> Rendered:
    wire, name = mailbox_form(draw, draw(names))
    args = [wire]
    flag_tuple: tuple[str, ...] = ()
    when: datetime.datetime | None = None
    if draw(st.booleans()):
        flags_wire, flag_tuple = draw(flag_lists())
        args.append(flags_wire)
    if draw(st.booleans()):
        date_wire, when = draw(date_times())
        args.append(date_wire)
    message = draw(st.binary(min_size=1, max_size=300))
    binary = draw(st.booleans())
    plus = draw(st.booleans())
    args.append(
        b"%s{%d%s}\r\n" % (b"~" if binary else b"", len(message), b"+" if plus else b"") + message
    )
    return Rendered(
        _command(draw, tag, "APPEND", *args),
        Append(
            tag,
            "APPEND",
            name,
            (AppendMessage(flag_tuple, when, (Text(message),), binary=binary),),
        ),
    )


@st.composite
def expunge(draw: Draw, tag: str) -> Rendered:
    if draw(st.booleans()):
        seq_wire, seqset = draw(sequence_sets())
        return Rendered(
            _command(draw, tag, "UID EXPUNGE", seq_wire), Expunge(tag, "EXPUNGE", True, seqset)
        )
    return Rendered(_command(draw, tag, "EXPUNGE"), Expunge(tag, "EXPUNGE"))


@st.composite
def enable(draw: Draw, tag: str) -> Rendered:
    capabilities = draw(
        st.lists(st.text(_chars(ATOM_CHARS), min_size=1, max_size=12), min_size=1, max_size=5)
    )
    wire = b" ".join(c.encode() for c in capabilities)
    return Rendered(
        _command(draw, tag, "ENABLE", wire),
        Enable(tag, "ENABLE", tuple(c.upper() for c in capabilities)),
    )


_id_text = st.text(st.characters(codec="ascii", exclude_characters="\r\n\0"), max_size=30)


@st.composite
def id_command(draw: Draw, tag: str) -> Rendered:
    # RFC 2971 3.3: a field name occurs once (compared without case).
    fields = st.lists(
        st.tuples(_id_text, st.none() | _id_text), max_size=5, unique_by=lambda p: p[0].lower()
    )
    pairs = draw(st.none() | fields)
    if pairs is None:
        return Rendered(_command(draw, tag, "ID", b"NIL"), Id(tag, "ID", None))
    items = []
    for key, value in pairs:
        items.append(string_form(draw, key.encode(), atom_chars=frozenset()))
        items.append(
            b"NIL" if value is None else string_form(draw, value.encode(), atom_chars=frozenset())
        )
    return Rendered(
        _command(draw, tag, "ID", b"(" + b" ".join(items) + b")"), Id(tag, "ID", tuple(pairs))
    )


_SIMPLE_COMMANDS = (
    "CAPABILITY",
    "NOOP",
    "LOGOUT",
    "CHECK",
    "CLOSE",
    "UNSELECT",
    "IDLE",
    "NAMESPACE",
)


@st.composite
def simple(draw: Draw, tag: str) -> Rendered:
    word = draw(st.sampled_from(_SIMPLE_COMMANDS))
    return Rendered(_command(draw, tag, word), Simple(tag, word))


_KINDS = (
    login,
    mailbox_commands,
    rename,
    status,
    list_command,
    copy_move,
    store,
    fetch,
    search,
    append,
    expunge,
    enable,
    id_command,
    simple,
)


@st.composite
def commands(draw: Draw) -> Rendered:
    """Any command of the kinds above, with a random tag."""
    tag = draw(tags)
    kind = draw(st.sampled_from(_KINDS))
    rendered: Rendered = draw(kind(tag))
    return rendered
