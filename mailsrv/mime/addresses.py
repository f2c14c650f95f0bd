"""RFC 5322 address lists (3.4), with the obsolete forms of 4.4 tolerated."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, TypeAlias

from mailsrv.mime.decoding import decode_words
from mailsrv.mime.fields import read_comment, read_quoted

__all__ = ["Address", "Group", "Mailbox", "address_text", "parse_addresses"]

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


#: One mailbox: ``(display name, source route, local part, domain)``, the
#: name and route (``@a,@b``) None when not given, local part and domain as
#: written (quotes kept, comments dropped).  A plain tuple, not a NamedTuple:
#: an address list is parsed for every ENVELOPE worked out, and a tuple is
#: half the cost to make.
Mailbox: TypeAlias = tuple[str | None, str | None, str, str]


class Group(NamedTuple):
    """A group (RFC 5322 3.4): its display name and its mailboxes."""

    name: str
    members: tuple[Mailbox, ...]


Address: TypeAlias = Mailbox | Group


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


def _mailbox(tokens: list[tuple[int, str]]) -> Mailbox | None:
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
    # A missing local part or domain is filled in as Dovecot does, so every
    # mailbox has both (IMAP's ENVELOPE would read a NIL host as a group).
    return (name, route, local or "MISSING_MAILBOX", domain or "MISSING_DOMAIN")


def _elements(tokens: list[tuple[int, str]]) -> list[tuple[list[tuple[int, str]], str]]:
    """An address list's tokens cut at its structure: each element's tokens
    and what ends it, ``,`` or a group's ``:`` (the tokens are its name) or
    ``;``.  The end of the list ends the last element as ``,``, or as ``;``
    in an unterminated group.  Groups do not nest, so a ``:`` inside one (or
    a ``;`` outside) is an ordinary special, as is anything in ``<...>``."""
    out: list[tuple[list[tuple[int, str]], str]] = []
    current: list[tuple[int, str]] = []
    in_angle = in_group = False
    for token in tokens:
        kind, text = token
        if kind == _SPECIAL:
            if in_angle:
                in_angle = text != ">"
            elif text == "," or text == (";" if in_group else ":"):
                out.append((current, text))
                current = []
                if text != ",":
                    in_group = text == ":"
                continue
            else:
                in_angle = text == "<"
        current.append(token)
    out.append((current, ";" if in_group else ","))
    return out


def parse_addresses(value: str) -> tuple[Address, ...]:
    """An RFC 5322 address list: mailboxes and groups, in order.

    An unterminated group ends with the list.  Empty elements (``a@b, ,
    c@d``, or only comments) are left out.
    """
    out: list[Address] = []
    members: list[Mailbox] | None = None
    group = ""
    for tokens, end in _elements(_address_tokens(value)):
        if end == ":":
            group, members = _phrase(tokens) or "", []
            continue
        mailbox = _mailbox(tokens)
        if mailbox is not None:
            (out if members is None else members).append(mailbox)
        if end == ";":
            out.append(Group(group, tuple(members or ())))
            members = None
    return tuple(out)


def address_text(value: str) -> str:
    """One address field written out for searching it, as Dovecot writes
    it for SEARCH FROM, TO, CC and BCC.

    Each mailbox is ``name <local@domain>`` (``<@route:local@domain>``; no
    name: ``<local@domain>``; a name that is not one atom is quoted), a
    group ``name: members;``, all joined by ``", "``; encoded words are
    decoded.  Comments and folding white space are no part of an address
    (RFC 5322 3.2.2), so ``<user (comment)@ (comment) domain.org>`` reads
    ``<user@domain.org>``."""
    out: list[str] = []
    for item in parse_addresses(value):
        if isinstance(item, Group):
            members = ", ".join(_mailbox_text(m) for m in item.members)
            out.append(f"{item.name}: {members};" if members else f"{item.name}:;")
        else:
            out.append(_mailbox_text(item))
    return decode_words(", ".join(out).encode("latin-1", "replace"))


def _mailbox_text(mailbox: Mailbox) -> str:
    name, route, local, domain = mailbox
    spec = f"<{route}:{local}@{domain}>" if route else f"<{local}@{domain}>"
    return f"{_display_name(name)} {spec}" if name else spec


#: RFC 5322 3.2.3 atext; anything beyond ASCII counts too (RFC 6532 allows
#: UTF-8 there, and the Latin-1 reading of a header keeps octets as is).
_ATEXT = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-/=?^_`{|}~"
)


def _display_name(name: str) -> str:
    """A display name as written in a header: quoted unless it is one atom
    (so ``"Bob Example" <bob@example.net>``, as Dovecot searches it)."""
    if all(char in _ATEXT or char > "\x7f" for char in name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
