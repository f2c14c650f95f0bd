"""SEARCH's argument syntax: search keys, CHARSET and ESEARCH's RETURN.

RFC 3501 6.4.4 and 9 (``search-key``), RFC 4731 (``RETURN`` options),
RFC 5182 (``$`` and SAVE), RFC 5267 (``CONTEXT``, ``UPDATE`` and
``PARTIAL``, which SORT shares), RFC 7162 (the MODSEQ key, parsed so that
it can be refused clearly).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from mailsrv.imap import syntax
from mailsrv.imap.lexer import Reader

__all__ = ["SearchKey", "parse_return_options", "partial_range", "search_arguments", "search_key"]


@attrs.frozen
class SearchKey:
    """One node of a SEARCH program.

    ``op`` names the test and ``args`` its operands:

    * ``AND`` (keys...), ``OR`` (left, right), ``NOT`` (key,), ``ALL`` ()
    * ``FLAG`` (flag, present) for ANSWERED/UNSEEN/KEYWORD x/...; NEW and
      OLD are spelt with AND/NOT over ``\\Recent`` and ``\\Seen``
    * ``SEQ`` (SequenceSet,) and ``UID`` (SequenceSet,)
    * ``BEFORE``/``ON``/``SINCE`` and ``SENTBEFORE``/``SENTON``/``SENTSINCE``
      (datetime.date,)
    * ``LARGER``/``SMALLER`` (int,)
    * ``HEADER`` (field name upper-cased, bytes value); SUBJECT becomes
      HEADER
    * ``ADDRESS`` (FROM, TO, CC or BCC, bytes value): matched against the
      addresses, not the field's text (RFC 3501 6.4.4)
    * ``BODY``/``TEXT`` (bytes,)
    * ``MODSEQ`` (int,) (RFC 7162)
    """

    op: str
    args: tuple[object, ...] = ()


_SEARCH_FLAG_KEYS = {
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
_SEARCH_ADDRESS_KEYS = frozenset({"BCC", "CC", "FROM", "TO"})
_SEARCH_DATE_KEYS = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"})
_SEARCH_ESEARCH_OPTIONS = frozenset(
    {"MIN", "MAX", "ALL", "COUNT", "SAVE", "CONTEXT", "UPDATE", "PARTIAL"}
)


def search_key(reader: Reader, depth: int) -> SearchKey:
    """One search key (a parenthesised list is the AND of its keys)."""
    if depth > reader.max_depth:
        raise reader.error("search keys nested too deeply", "LIMIT")
    char = reader.peek()
    if char == 0x28:  # (
        reader.pos += 1
        keys = [search_key(reader, depth + 1)]
        while not reader.accept(b")"):
            reader.space()
            keys.append(search_key(reader, depth + 1))
        return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
    if char is not None and (0x30 <= char <= 0x39 or char in (0x2A, 0x24)):  # digit * $
        return SearchKey("SEQ", (syntax.sequence_set(reader),))
    word = reader.atom("a search key").upper()
    key = _KEYS_ALONE.get(word)
    if key is not None:
        return key
    parse = _KEYS_WITH_ARGUMENTS.get(word)
    if parse is None:
        raise reader.error(f"unknown search key {word!r}")
    reader.space()
    return parse(reader, word, depth)


#: Keys without arguments.  NEW and OLD are spelt with \Recent and \Seen.
_KEYS_ALONE: dict[str, SearchKey] = {
    "ALL": SearchKey("ALL"),
    **{word: SearchKey("FLAG", flag) for word, flag in _SEARCH_FLAG_KEYS.items()},
    "NEW": SearchKey(
        "AND", (SearchKey("FLAG", ("\\Recent", True)), SearchKey("FLAG", ("\\Seen", False)))
    ),
    "OLD": SearchKey("FLAG", ("\\Recent", False)),
}


def _keyword(reader: Reader, word: str, depth: int) -> SearchKey:
    flag = syntax.flag(reader, allow_recent=True)
    return SearchKey("FLAG", (flag, word == "KEYWORD"))


def _not(reader: Reader, word: str, depth: int) -> SearchKey:
    return SearchKey("NOT", (search_key(reader, depth + 1),))


def _or(reader: Reader, word: str, depth: int) -> SearchKey:
    left = search_key(reader, depth + 1)
    reader.space()
    right = search_key(reader, depth + 1)
    return SearchKey("OR", (left, right))


def _address(reader: Reader, word: str, depth: int) -> SearchKey:
    return SearchKey("ADDRESS", (word, reader.astring("a search string")))


def _subject(reader: Reader, word: str, depth: int) -> SearchKey:
    return SearchKey("HEADER", (word, reader.astring("a search string")))


def _header(reader: Reader, word: str, depth: int) -> SearchKey:
    field = reader.astring("a header field name")
    if not field or any(c < 0x21 or c > 0x7E or c == 0x3A for c in field):
        raise reader.error("invalid header field name")
    reader.space()
    return SearchKey("HEADER", (field.decode("ascii").upper(), reader.astring()))


def _text(reader: Reader, word: str, depth: int) -> SearchKey:
    return SearchKey(word, (reader.astring("a search string"),))


def _date(reader: Reader, word: str, depth: int) -> SearchKey:
    return SearchKey(word, (syntax.date(reader),))


def _size(reader: Reader, word: str, depth: int) -> SearchKey:
    return SearchKey(word, (reader.number64("a size"),))


def _uid(reader: Reader, word: str, depth: int) -> SearchKey:
    return SearchKey("UID", (syntax.sequence_set(reader),))


def _modseq(reader: Reader, word: str, depth: int) -> SearchKey:
    if reader.peek() == 0x22:  # entry-name entry-type-req (RFC 7162)
        reader.quoted()
        reader.space()
        reader.atom("an entry type")
        reader.space()
    value = reader.number("a mod-sequence value")
    if value > 2**63 - 1:  # mod-sequence-valzer (RFC 7162 7)
        raise reader.error("a mod-sequence value is at most 9223372036854775807")
    return SearchKey("MODSEQ", (value,))


#: Keys with arguments: the parser of what follows the key and a space.
_KEYS_WITH_ARGUMENTS: dict[str, Callable[[Reader, str, int], SearchKey]] = {
    "KEYWORD": _keyword,
    "UNKEYWORD": _keyword,
    "NOT": _not,
    "OR": _or,
    **dict.fromkeys(_SEARCH_ADDRESS_KEYS, _address),
    "SUBJECT": _subject,
    "HEADER": _header,
    "BODY": _text,
    "TEXT": _text,
    **dict.fromkeys(_SEARCH_DATE_KEYS, _date),
    "LARGER": _size,
    "SMALLER": _size,
    "UID": _uid,
    "MODSEQ": _modseq,
}


def parse_return_options(reader: Reader) -> tuple[str, ...]:
    """``RETURN`` options after the word and its space: "(" [option *(SP
    option)] ")", upper-cased.  ``PARTIAL low:high`` (RFC 5267 4.4) is kept
    as one option spelt ``PARTIAL low:high`` with ``low <= high``; more than
    one PARTIAL or ALL is BAD (4.4)."""
    reader.expect(b"(")
    options: list[str] = []
    if not reader.accept(b")"):
        while True:
            word = reader.atom("a RETURN option").upper()
            if word not in _SEARCH_ESEARCH_OPTIONS:
                raise reader.error(f"unknown RETURN option {word}")
            if word == "PARTIAL":
                reader.space()
                low = reader.number32("a PARTIAL range", nonzero=True)
                reader.expect(b":")
                high = reader.number32("a PARTIAL range", nonzero=True)
                low, high = min(low, high), max(low, high)
                word = f"PARTIAL {low}:{high}"
            options.append(word)
            if reader.accept(b")"):
                break
            reader.space()
    if sum(1 for o in options if o == "ALL" or o.startswith("PARTIAL ")) > 1:
        raise reader.error("only one of PARTIAL and ALL may be given (RFC 5267 4.4)")
    return tuple(options)


def partial_range(options: tuple[str, ...]) -> tuple[int, int] | None:
    """The ``(low, high)`` of a PARTIAL option, if one was given."""
    for option in options:
        if option.startswith("PARTIAL "):
            low, high = option[8:].split(":")
            return int(low), int(high)
    return None


def search_arguments(
    reader: Reader,
) -> tuple[tuple[str, ...] | None, str | None, SearchKey]:
    """SEARCH's arguments after the command name: ``(return options or
    None, charset or None, key)``; the key is the AND of the top-level keys."""
    return_options: tuple[str, ...] | None = None
    charset: str | None = None
    if reader.keyword_ahead(b"RETURN"):
        reader.pos += len(b"RETURN")
        reader.space()
        return_options = parse_return_options(reader)
        reader.space()
    if reader.keyword_ahead(b"CHARSET"):
        reader.pos += len(b"CHARSET")
        reader.space()
        try:
            charset = reader.astring("a charset name").decode("ascii").upper()
        except UnicodeDecodeError:
            raise reader.error("invalid charset name") from None
        reader.space()
    keys = [search_key(reader, 1)]
    while reader.peek() == 0x20:
        reader.space()
        keys.append(search_key(reader, 1))
    key = keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
    return return_options, charset, key
