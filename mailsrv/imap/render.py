"""ENVELOPE, BODY and BODYSTRUCTURE (RFC 3501 7.4.2, 9) from the MIME model.

The values are built as nested Python values (:data:`ImapValue`): tuples
for parenthesized lists, ``bytes`` for strings, ``None`` for NIL, ``int``
for numbers.  :func:`render_envelope` and :func:`render_body_structure`
write them exactly as RFC 3501 section 9 spells them (no space between the
bodies of a multipart or the addresses of an address list), with strings
quoted by the response writer's one rule (:func:`mailsrv.imap.response.string`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

from mailsrv.imap.response import string
from mailsrv.mime.addresses import Group, Mailbox, parse_addresses
from mailsrv.mime.fields import Params
from mailsrv.mime.structure import ENVELOPE_FIELDS, MessageStructure, Part

__all__ = [
    "ImapValue",
    "address_list",
    "body_structure",
    "envelope",
    "render_body_structure",
    "render_envelope",
]

ImapValue: TypeAlias = "bytes | int | tuple[ImapValue, ...] | None"

#: Where the address lists are in ENVELOPE (and :data:`ENVELOPE_FIELDS`):
#: from, sender, reply-to, to, cc, bcc.
_ADDRESS_SLOTS = range(2, 8)


def _b(text: str | None) -> bytes | None:
    return None if text is None else text.encode("latin-1", "replace")


#: The address structure that ends a group; the one that starts it has the
#: group's name in the mailbox slot.  Both have a NIL host (RFC 3501 7.4.2).
_GROUP_END: ImapValue = (None, None, None, None)


def _mailbox_value(mailbox: Mailbox) -> ImapValue:
    name, route, local, domain = mailbox
    return (
        _b(name),
        _b(route),
        local.encode("latin-1", "replace"),
        domain.encode("latin-1", "replace"),
    )


def address_list(value: str | None) -> ImapValue:
    """An address field as ENVELOPE's list of address structures (RFC 3501
    7.4.2), each group between its start and end markers; NIL when the
    field is missing or holds no address."""
    if value is None:
        return None
    out: list[ImapValue] = []
    for item in parse_addresses(value):
        if isinstance(item, Group):
            out.append((None, None, _b(item.name), None))
            out.extend(map(_mailbox_value, item.members))
            out.append(_GROUP_END)
        else:
            out.append(_mailbox_value(item))
    return tuple(out) or None


def _envelope_of(fields: tuple[str | None, ...] | None) -> tuple[ImapValue, ...]:
    values: list[str | None] = list(fields or (None,) * len(ENVELOPE_FIELDS))
    out: list[ImapValue] = []
    for index, raw in enumerate(values):
        if index in _ADDRESS_SLOTS:
            out.append(address_list(raw))
        else:
            out.append(_b(raw))
    # Sender and Reply-To default to From when absent or empty.
    for slot in (3, 4):
        if out[slot] is None:
            out[slot] = out[2]
    return tuple(out)


def envelope(structure: MessageStructure) -> tuple[ImapValue, ...]:
    """The message's ENVELOPE as nested values."""
    return _envelope_of(structure.root.envelope_fields)


def _params_value(params: Params) -> ImapValue:
    if not params:
        return None
    flat: list[ImapValue] = []
    for name, value in params:
        flat.append(_b(name))
        flat.append(_b(value))
    return tuple(flat)


def _extension(part: Part) -> list[ImapValue]:
    disposition: ImapValue = None
    if part.disposition is not None:
        disposition = (_b(part.disposition[0]), _params_value(part.disposition[1]))
    language: ImapValue = tuple(_b(x) for x in part.language) if part.language else None
    return [disposition, language, _b(part.location)]


def _body_value(part: Part, extensible: bool) -> tuple[ImapValue, ...]:
    if part.children:
        multi: list[ImapValue] = [_body_value(c, extensible) for c in part.children]
        multi.append(_b(part.subtype))
        if extensible:
            multi.append(_params_value(part.params))
            multi.extend(_extension(part))
        return tuple(multi)
    out: list[ImapValue] = [
        _b(part.type),
        _b(part.subtype),
        _params_value(part.params),
        _b(part.id),
        _b(part.description),
        _b(part.encoding),
        part.body_size,
    ]
    if part.message is not None:
        out.append(_envelope_of(part.message.envelope_fields))
        out.append(_body_value(part.message, extensible))
        out.append(part.lines)
    elif part.type.lower() == "message" and part.subtype.lower() == "rfc822":
        # Not looked into (encoded, RFC 2046 5.2.1 forbids that): clients
        # parse "MESSAGE" "RFC822" as body-type-msg, so give an empty
        # envelope and body rather than break their parsers.
        empty = Part(
            part.body_offset,
            0,
            part.body_offset + part.body_size,
            0,
            0,
            params=(("charset", "us-ascii"),),
        )
        out.append(_envelope_of(None))
        out.append(_body_value(empty, extensible))
        out.append(part.lines)
    elif part.is_text:
        out.append(part.lines)
    if extensible:
        out.append(_b(part.md5))
        out.extend(_extension(part))
    return tuple(out)


def body_structure(structure: MessageStructure, extensible: bool) -> tuple[ImapValue, ...]:
    """BODYSTRUCTURE (``extensible``) or BODY as nested values."""
    return _body_value(structure.root, extensible)


def render(value: ImapValue) -> bytes:
    """Generic rendering: lists with SP between items, strings as the
    message's own text (:func:`~mailsrv.imap.response.string`'s ``verbatim``
    rule)."""
    if value is None:
        return b"NIL"
    if isinstance(value, bytes):
        return string(value, verbatim=True)
    if isinstance(value, int):
        return b"%d" % value
    return b"(" + b" ".join([render(v) for v in value]) + b")"


def _render_addresses(value: ImapValue) -> bytes:
    if value is None or isinstance(value, (bytes, int)):
        return render(value)
    return b"(" + b"".join([render(a) for a in value]) + b")"


def render_envelope(value: Sequence[ImapValue]) -> bytes:
    """ENVELOPE exactly as RFC 3501 9 writes it (``1*address``: no SP)."""
    items = [
        _render_addresses(v) if i in _ADDRESS_SLOTS else render(v) for i, v in enumerate(value)
    ]
    return b"(" + b" ".join(items) + b")"


def render_body_structure(value: Sequence[ImapValue]) -> bytes:
    """BODY/BODYSTRUCTURE exactly as RFC 3501 9 writes it (``1*body``)."""
    if value and isinstance(value[0], tuple):
        count = 0
        while count < len(value) and isinstance(value[count], tuple):
            count += 1
        bodies = b"".join([render_body_structure(v) for v in value[:count]])  # type: ignore[arg-type]
        rest = [render(v) for v in value[count:]]
        return b"(" + b" ".join([bodies, *rest]) + b")"
    items: list[bytes] = []
    is_message = (
        len(value) >= 10
        and isinstance(value[0], bytes)
        and isinstance(value[1], bytes)
        and value[0].lower() == b"message"
        and value[1].lower() == b"rfc822"
        and isinstance(value[7], tuple)
    )
    for index, item in enumerate(value):
        if is_message and index == 7:
            items.append(render_envelope(item))  # type: ignore[arg-type]
        elif is_message and index == 8:
            items.append(render_body_structure(item))  # type: ignore[arg-type]
        else:
            items.append(render(item))
    return b"(" + b" ".join(items) + b")"
