"""Where a FETCH ``BODY[section]`` lies in a message (RFC 3501 6.4.5).

The section spec's part numbers and its HEADER, HEADER.FIELDS(.NOT), TEXT
and MIME are IMAP's; this module maps them onto the parts the MIME model
(:mod:`mailsrv.mime.structure`) located, so a section is served by slicing
the message file, never by re-serializing it.
"""

from __future__ import annotations

from collections.abc import Sequence

from mailsrv.mime.fields import filter_fields
from mailsrv.mime.structure import MessageStructure, Part, Source, find_part, read_range

__all__ = ["header_fields", "section_range"]


def section_range(
    structure: MessageStructure,
    part: Sequence[int],
    kind: str | None,
) -> tuple[int, int] | None:
    """``(offset, length)`` of the octets a BODY[section] names, or None if
    the section does not exist in this message.

    ``kind`` is None (the part itself), HEADER, HEADER.FIELDS(.NOT) (the
    range of the header block to filter, see :func:`header_fields`), TEXT
    or MIME.  HEADER, TEXT and their kin with part numbers need a
    message/rfc822 part; MIME needs part numbers.
    """
    upper = None if kind is None else kind.upper()
    if not part:
        if upper is None:
            return (0, structure.size)
        return _text_or_header(structure.root, upper)
    node = find_part(structure, part)
    if node is None:
        return None
    if upper is None:
        return (node.body_offset, node.body_size)
    if upper == "MIME":
        return (node.header_offset, node.header_size)
    if node.message is None:
        return None
    return _text_or_header(node.message, upper)


def _text_or_header(message: Part, kind: str) -> tuple[int, int] | None:
    """TEXT or HEADER (HEADER.FIELDS and .NOT filter it) of a message."""
    if kind == "TEXT":
        return (message.body_offset, message.body_size)
    if kind in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        return (message.header_offset, message.header_size)
    return None


def header_fields(
    structure: MessageStructure,
    source: Source,
    names: Sequence[str],
    negate: bool,
    part: Sequence[int] = (),
) -> bytes | None:
    """BODY[HEADER.FIELDS (names)] (or .NOT with ``negate``): the matching
    fields as sent, in message order, then the blank line (RFC 3501 6.4.5).

    A last field without a line end gets CRLF; the blank line is added only
    when the header has one (a headers-only message has none, and its
    BODY[HEADER] has none either).  None if the section names no header.
    """
    where = section_range(structure, part, "HEADER")
    if where is None:
        return None
    return filter_fields(read_range(source, *where), names, negate)
