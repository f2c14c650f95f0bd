"""The response serializer: how values and responses are written.

:func:`serialize` chooses the atom, quoted or literal form of strings,
writes NIL, numbers and parenthesised lists; :func:`string`,
:func:`astring` and :func:`mailbox` are the one rule for quoting a string
on the wire (quoted when every octet is printable 7-bit and it is short,
a literal otherwise); :func:`tagged`, :func:`untagged` and
:func:`untagged_status` build complete response lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import attrs

from mailsrv import mutf7
from mailsrv.imap.lexer import ASTRING_CHARS

__all__ = [
    "MAX_QUOTED",
    "Atom",
    "Value",
    "astring",
    "flag_list",
    "mailbox",
    "serialize",
    "string",
    "tagged",
    "untagged",
    "untagged_status",
]


@attrs.frozen
class Atom:
    """A value written as itself (flags, keywords, status names)."""

    text: str


Value: TypeAlias = "int | str | bytes | Atom | Sequence[Value] | None"

#: Strings longer than this go out as literals: easier on clients' parsers.
MAX_QUOTED = 1024

#: Octets :func:`string` quotes (as ``translate`` deletions): printable
#: ASCII, the quoted-specials escaped.
_PRINTABLE = bytes(range(0x20, 0x7F))
#: And for a UTF-8 session (RFC 6855 3's uQUOTED-CHAR): the octets of
#: UTF-8 sequences too (a name's text is valid UTF-8 by construction).
_PRINTABLE_UTF8 = _PRINTABLE + bytes(range(0x80, 0x100))
#: Octets :func:`string` quotes ``verbatim``: every TEXT-CHAR (RFC 3501 9:
#: any CHAR but CR and LF, so tab and other controls too) except the
#: quoted-specials ``"`` and ``\\``, which make it a literal instead.
_VERBATIM = bytes(c for c in range(0x01, 0x80) if c not in b'\r\n"\\')


def string(value: str | bytes, *, verbatim: bool = False) -> bytes:
    """A string in quoted form when safe, else as a literal: the one rule
    for every string the server writes.

    The server's own strings (mailbox names, ID values...) are quoted when
    printable ASCII of at most :data:`MAX_QUOTED` octets, ``"`` and ``\\``
    escaped.  ``verbatim`` is for text taken from a message (ENVELOPE,
    BODYSTRUCTURE), which goes out as the same octets, never escaped: quoted
    when it is TEXT-CHARs without a quoted-special and shorter than
    :data:`MAX_QUOTED`, else a literal.  A literal for ``"`` and ``\\`` is
    what Dovecot sends too, and it spares clients whose quoted-string
    parsers mishandle escapes.
    """
    data = value.encode("utf-8") if isinstance(value, str) else value
    if verbatim:
        if len(data) < MAX_QUOTED and not data.translate(None, _VERBATIM):
            return b'"' + data + b'"'
    elif len(data) <= MAX_QUOTED and not data.translate(None, _PRINTABLE):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def astring(value: str | bytes) -> bytes:
    """An astring: bare when every byte is an ASTRING-CHAR (and not NIL)."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    if data and data.upper() != b"NIL" and all(c in ASTRING_CHARS for c in data):
        return data
    return string(data)


def mailbox(name: str, *, utf8: bool = False) -> bytes:
    """A mailbox name on the wire, in astring form: modified UTF-7, or
    UTF-8 for a session that enabled it (RFC 6855 3, RFC 9051), quoted even
    when it is not ASCII (only such a session may be sent UTF-8 quoted
    strings)."""
    if not utf8:
        return astring(mutf7.encode(name))
    data = name.encode("utf-8")
    if len(data) <= MAX_QUOTED and not data.translate(None, _PRINTABLE_UTF8):
        if data and data.upper() != b"NIL" and all(c in ASTRING_CHARS for c in data):
            return data
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def serialize(value: Value) -> bytes:
    """Write a response value: None is NIL, int a number, str/bytes a string
    (quoted or literal), :class:`Atom` bare, sequences parenthesised."""
    if value is None:
        return b"NIL"
    if isinstance(value, bool):
        raise TypeError("booleans have no IMAP form")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("IMAP numbers are unsigned")
        return str(value).encode("ascii")
    if isinstance(value, (str, bytes)):
        return string(value)
    if isinstance(value, Atom):
        return value.text.encode("utf-8")
    return b"(" + b" ".join(serialize(item) for item in value) + b")"


def _text(text: str) -> bytes:
    """resp-text: 7-bit (RFC 3501 TEXT-CHAR), never CR or LF, never empty."""
    clean = text.replace("\r", " ").replace("\n", " ").strip() or "done"
    return clean.encode("ascii", "replace")


def tagged(tag: str, status: str, text: str, code: str | None = None) -> bytes:
    """``tag OK|NO|BAD [code] text`` with CRLF."""
    coded = b"[" + code.encode("ascii") + b"] " if code else b""
    return (
        tag.encode("ascii", "replace")
        + b" "
        + status.encode()
        + b" "
        + coded
        + _text(text)
        + b"\r\n"
    )


def untagged(*parts: bytes | str) -> bytes:
    """``* part part...`` with CRLF; str parts are encoded as UTF-8 as-is."""
    encoded = [p.encode("utf-8") if isinstance(p, str) else p for p in parts]
    return b"* " + b" ".join(encoded) + b"\r\n"


def untagged_status(status: str, text: str, code: str | None = None) -> bytes:
    """``* OK|NO|BAD|BYE|PREAUTH [code] text`` with CRLF."""
    return tagged("*", status, text, code)


def flag_list(flags: Sequence[str] | frozenset[str]) -> bytes:
    """A parenthesised flag list for FLAGS responses: system flags first,
    in a stable order."""
    ordered = sorted(flags, key=lambda f: (not f.startswith("\\"), f.lower()))
    return serialize([Atom(flag) for flag in ordered])
