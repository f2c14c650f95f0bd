"""FETCH's argument syntax: items, sections and partial ranges.

RFC 3501 6.4.5 and 9 (``fetch-att``, ``section``), RFC 3516 (BINARY,
BINARY.PEEK, BINARY.SIZE).  The command itself (sequence set, modifiers,
the implied UID of UID FETCH) is parsed in :mod:`mailsrv.imap.commands.fetch`.
"""

from __future__ import annotations

import attrs

from mailsrv.imap.lexer import Reader

__all__ = ["FetchAttribute", "Section", "fetch_attribute", "fetch_items"]


@attrs.frozen
class Section:
    """A BODY/BINARY section: ``part`` numbers, then an optional ``text``.

    ``text`` is one of HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    (upper case) or None; ``fields`` the upper-cased HEADER.FIELDS names.
    """

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        out = ".".join(str(p) for p in self.part)
        if self.text is not None:
            out = f"{out}.{self.text}" if out else self.text
        if self.fields:
            out += " (" + " ".join(self.fields) + ")"
        return out


@attrs.frozen
class FetchAttribute:
    """One FETCH item.

    ``name`` is the upper-cased item without ``.PEEK`` (``BODY``, ``BINARY``,
    ``BINARY.SIZE``, ``FLAGS``, ``RFC822.HEADER``...); ``section`` is given
    for ``BODY[...]``/``BINARY[...]`` forms (``BODY`` alone is the structure
    item); ``partial`` is ``(origin, octets)``.
    """

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False

    def response_name(self) -> str:
        """How the item is named in the FETCH response (RFC 3501 7.4.2)."""
        if self.section is None:
            return self.name
        out = f"{self.name}[{self.section}]"
        if self.partial is not None:
            out += f"<{self.partial[0]}>"
        return out


_FETCH_SIMPLE = frozenset(
    {
        "ENVELOPE",
        "FLAGS",
        "INTERNALDATE",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.SIZE",
        "RFC822.TEXT",
        "BODYSTRUCTURE",
        "UID",
        "MODSEQ",
        "BODY",
    }
)
_FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_FETCH_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-")


def _section(reader: Reader, binary: bool) -> Section:
    reader.expect(b"[")
    if reader.accept(b"]"):
        return Section()
    parts: list[int] = []
    text: str | None = None
    fields: tuple[str, ...] = ()
    while True:
        char = reader.peek()
        if char is not None and 0x30 <= char <= 0x39:
            parts.append(reader.number32("a section part number", nonzero=True))
            if reader.accept(b"."):
                continue
            break
        if binary:
            raise reader.error("BINARY sections are part numbers only")
        word = reader.run(_FETCH_NAME_CHARS, "a section name").decode("ascii").upper()
        allowed = {"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"}
        if parts:
            allowed.add("MIME")
        if word not in allowed:
            raise reader.error(f"invalid section {word!r}")
        text = word
        if word.startswith("HEADER.FIELDS"):
            reader.space()
            fields = _header_list(reader)
        break
    reader.expect(b"]")
    return Section(tuple(parts), text, fields)


def _header_list(reader: Reader) -> tuple[str, ...]:
    reader.expect(b"(")
    names: list[str] = []
    while True:
        raw = reader.astring("a header field name")
        # field-name = 1*<printable US-ASCII except ':'> (RFC 5322 3.6.8)
        if not raw or any(c < 0x21 or c > 0x7E or c == 0x3A for c in raw):
            raise reader.error("invalid header field name")
        names.append(raw.decode("ascii").upper())
        if reader.accept(b")"):
            return tuple(names)
        reader.space()


def _partial(reader: Reader) -> tuple[int, int] | None:
    if not reader.accept(b"<"):
        return None
    origin = reader.number64("a partial origin")
    reader.expect(b".")
    count = reader.number64("a partial length", nonzero=True)
    reader.expect(b">")
    return origin, count


def fetch_attribute(reader: Reader) -> FetchAttribute:
    word = reader.run(_FETCH_NAME_CHARS, "a FETCH item").decode("ascii").upper()
    if word in ("BODY", "BODY.PEEK") and reader.peek() == 0x5B:
        section = _section(reader, binary=False)
        return FetchAttribute("BODY", section, _partial(reader), peek=word == "BODY.PEEK")
    if word in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        if reader.peek() != 0x5B:
            raise reader.error(f"{word} needs a section")
        section = _section(reader, binary=True)
        if word == "BINARY.SIZE":
            return FetchAttribute(word, section)
        return FetchAttribute("BINARY", section, _partial(reader), peek=word == "BINARY.PEEK")
    if word in _FETCH_SIMPLE:
        return FetchAttribute(word)
    raise reader.error(f"unknown FETCH item {word!r}")


def fetch_items(reader: Reader) -> list[FetchAttribute]:
    """A parenthesised list of FETCH items, a macro (ALL, FAST, FULL), or
    one item."""
    attributes: list[FetchAttribute] = []
    if reader.accept(b"("):
        while True:
            attributes.append(fetch_attribute(reader))
            if reader.accept(b")"):
                break
            reader.space()
    else:
        start = reader.pos
        word = reader.run(_FETCH_NAME_CHARS, "a FETCH item").decode("ascii").upper()
        if word in _FETCH_MACROS:
            attributes.extend(FetchAttribute(name) for name in _FETCH_MACROS[word])
        else:
            reader.pos = start
            attributes.append(fetch_attribute(reader))
    return attributes
