"""RFC 5322 address lists (3.4), with the obsolete forms of 4.4 tolerated."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

from mailsrv.mime.decoding import decode_words
from mailsrv.mime.fields import read_comment, read_quoted

__all__ = ["Address", "address_text", "parse_addresses"]

_ADDRESS_SPECIALS = frozenset('()<>[]:;@\\,."')

# Token kinds.
_WORD, _QUOTED, _SPECIAL, _COMMENT, _LITERAL = range(5)


def _address_tokens(text: str) -> list[tuple[int, str]]:
    tokens: list[tuple[int, str]] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char in " \t\r\n":
            pos += 1
        elif char == "(":
            comment, pos = read_comment(text, pos)
            tokens.append((_COMMENT, comment))
        elif char == '"':
            quoted, pos = read_quoted(text, pos)
            tokens.append((_QUOTED, quoted))
        elif char == "[":
            close = text.find("]", pos)
            stop = len(text) if close < 0 else close + 1
            tokens.append((_LITERAL, text[pos:stop]))
            pos = stop
        elif char in _ADDRESS_SPECIALS:
            tokens.append((_SPECIAL, char))
            pos += 1
        else:
            start = pos
            while (
                pos < len(text)
                and text[pos] not in _ADDRESS_SPECIALS
                and text[pos] not in " \t\r\n"
            ):
                pos += 1
            tokens.append((_WORD, text[start:pos]))
    return tokens


Address: TypeAlias = tuple[bytes | None, bytes | None, bytes | None, bytes | None]


def _b(text: str | None) -> bytes | None:
    return None if text is None else text.encode("latin-1", "replace")


def _phrase(tokens: Sequence[tuple[int, str]]) -> str | None:
    """Display-name text: words joined by one space, quotes removed."""
    out = ""
    for kind, text in tokens:
        if kind == _COMMENT:
            continue
        if kind == _SPECIAL and text == ".":
            out += "."
            continue
        if kind == _SPECIAL:
            continue
        out = f"{out} {text}" if out else text
    return out or None


def _spec_text(tokens: Sequence[tuple[int, str]]) -> str:
    """A local part or domain as written, without comments or spaces."""
    out: list[str] = []
    for kind, text in tokens:
        if kind == _COMMENT:
            continue
        out.append(f'"{text}"' if kind == _QUOTED else text)
    return "".join(out)


def _mailbox(tokens: list[tuple[int, str]]) -> Address | None:
    """One mailbox (name-addr or addr-spec) from its tokens.

    Comments are no part of an address (RFC 5322 3.2.2): a list element of
    nothing but comments is an empty element (RFC 5322 4.4, obs-mbox-list
    and obs-group-list), not a mailbox, and a comment never names an
    angle-addr.  Only the old ``addr-spec (Full Name)`` form takes its name
    from a comment: the last one after the address starts, as Dovecot does.
    """
    first_word = next((i for i, (kind, _) in enumerate(tokens) if kind != _COMMENT), None)
    if first_word is None:
        return None
    angle = next((i for i, (k, t) in enumerate(tokens) if k == _SPECIAL and t == "<"), None)
    route: str | None = None
    if angle is not None:
        name = _phrase(tokens[:angle])
        close = next(
            (i for i, (k, t) in enumerate(tokens) if i > angle and k == _SPECIAL and t == ">"),
            len(tokens),
        )
        inner = [t for t in tokens[angle + 1 : close] if t[0] != _COMMENT]
        colon = next((i for i, (k, t) in enumerate(inner) if k == _SPECIAL and t == ":"), None)
        if colon is not None and inner and inner[0] == (_SPECIAL, "@"):
            route = _spec_text(inner[:colon]) or None
            inner = inner[colon + 1 :]
        spec = inner
    else:
        spec = [t for t in tokens if t[0] != _COMMENT]
        comments = [text for kind, text in tokens[first_word:] if kind == _COMMENT]
        name = (comments[-1].strip() or None) if comments else None
    at = max((i for i, (k, t) in enumerate(spec) if k == _SPECIAL and t == "@"), default=None)
    if at is None:
        local, domain = _spec_text(spec), None
    else:
        local, domain = _spec_text(spec[:at]), _spec_text(spec[at + 1 :])
    if not local and not domain and name is None:
        return None
    # A missing domain must not read as group syntax (host NIL): it is
    # filled in as Dovecot does, as is a missing local part.
    return (_b(name), _b(route), _b(local or "MISSING_MAILBOX"), _b(domain or "MISSING_DOMAIN"))


def parse_addresses(value: str | None) -> tuple[Address, ...] | None:
    """An RFC 5322 address list as IMAP envelope addresses (RFC 3501
    7.4.2), group start/end markers included; None when there are none."""
    if value is None:
        return None
    tokens = _address_tokens(value)
    out: list[Address] = []
    current: list[tuple[int, str]] = []
    in_group = False
    in_angle = False
    for token in tokens:
        kind, text = token
        if kind == _SPECIAL:
            if text == "<":
                in_angle = True
            elif text == ">":
                in_angle = False
            elif text == "," and not in_angle:
                address = _mailbox(current)
                if address is not None:
                    out.append(address)
                current = []
                continue
            elif text == ":" and not in_angle and not in_group:
                out.append((None, None, _b(_phrase(current) or ""), None))
                current = []
                in_group = True
                continue
            elif text == ";" and not in_angle and in_group:
                address = _mailbox(current)
                if address is not None:
                    out.append(address)
                current = []
                out.append((None, None, None, None))
                in_group = False
                continue
        current.append(token)
    address = _mailbox(current)
    if address is not None:
        out.append(address)
    if in_group:
        out.append((None, None, None, None))
    return tuple(out) or None


def address_text(value: str) -> str:
    """What SEARCH FROM, TO, CC and BCC look in for one address field:
    "the envelope structure's" field (RFC 3501 6.4.4), written out.

    Each mailbox is ``name <local@domain>`` (``<@route:local@domain>``; no
    name: ``<local@domain>``; a name that is not one atom is quoted), a
    group ``name: members;``, all joined by ``", "``, as Dovecot writes them
    for its search; encoded words are decoded.  Comments and folding white
    space are no part of an address (RFC 5322 3.2.2), so
    ``<user (comment)@ (comment) domain.org>`` reads ``<user@domain.org>``."""
    out: list[bytes] = []
    group: bytes | None = None
    members: list[bytes] = []
    for name, route, local, domain in parse_addresses(value) or ():
        if domain is None:
            if local is not None:  # a group starts
                group, members = local, []
            elif group is not None:  # the group ends
                out.append(
                    (group + b": " + b", ".join(members) if members else group + b":") + b";"
                )
                group = None
            continue
        spec = b"<" + (route + b":" if route else b"") + (local or b"") + b"@" + domain + b">"
        text = _display_name(name) + b" " + spec if name else spec
        (members if group is not None else out).append(text)
    return decode_words(b", ".join(out))


#: RFC 5322 3.2.3 atext, and 8-bit octets (RFC 6532 allows UTF-8 there).
_ATEXT = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-/=?^_`{|}~"
) | frozenset(range(0x80, 0x100))


def _display_name(name: bytes) -> bytes:
    """A display name as written in a header: quoted unless it is one atom
    (so ``"Bob Example" <bob@example.net>``, as Dovecot searches it)."""
    if all(octet in _ATEXT for octet in name):
        return name
    return b'"' + name.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
