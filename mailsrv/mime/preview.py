"""A message's preview: the start of what its author wrote, as plain text.

RFC 8970 3.3 asks for UTF-8 plain text of at most 200 characters (never
more than 256), without transfer encoding or markup, and an empty string
when nothing meaningful can be shown.  The text comes from the first
text/plain part that is not an attachment (else the first text/html one,
with its markup dropped); quoted lines (``>``) and what follows a
signature separator (``-- ``) are left out, and white space runs become
one space, so a preview says something new rather than repeating the
thread.  Only the start of a part is read: :data:`READ_LIMIT` octets are
plenty for 200 characters.

Pure: a parsed structure and the open message in, text out; IMAP's cache
of the result is :mod:`mailsrv.imap.content`'s.
"""

from __future__ import annotations

import html
import re

from mailsrv.mime.decoding import decode_part_start, decode_text
from mailsrv.mime.structure import MessageStructure, Part, Source

__all__ = ["LENGTH", "READ_LIMIT", "VERSION", "preview_text"]

#: Preview characters (RFC 8970 3.3: SHOULD at most 200).
LENGTH = 200
#: Octets of a part's body read at most (encoded form).
READ_LIMIT = 32 * 1024
#: Changes when the rule above changes, so cached previews are redone.
VERSION = 1

_SPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_INVISIBLE = re.compile(r"<(script|style|head|title)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_BREAKS = re.compile(r"<\s*(br|/p|/div|/tr|/li|/h\d)\b[^>]*>", re.IGNORECASE)


def _choose(structure: MessageStructure) -> Part | None:
    """The first inline text/plain part outside embedded messages, else
    the first such text/html part."""
    html_part: Part | None = None
    stack = [structure.root]
    while stack:
        part = stack.pop(0)
        if part.children:
            stack[:0] = part.children
            continue
        if part.message is not None or not part.is_text:
            continue
        if part.disposition is not None and part.disposition[0].lower() == "attachment":
            continue
        subtype = part.subtype.lower()
        if subtype == "plain":
            return part
        if subtype == "html" and html_part is None:
            html_part = part
    return html_part


def _plain_lines(text: str) -> str:
    """The lines worth showing, up to a little more than a preview needs."""
    kept: list[str] = []
    length = 0
    for line in text.splitlines():
        if line.rstrip() == "--":  # "-- " signature separator (RFC 3676 4.3)
            break
        if line.lstrip().startswith(">"):
            continue
        kept.append(line)
        length += len(line) + 1
        if length > 2 * LENGTH:
            break
    return " ".join(kept)


def _html_text(text: str) -> str:
    text = _COMMENT.sub(" ", _INVISIBLE.sub(" ", text))
    text = _TAG.sub(" ", _BREAKS.sub("\n", text))
    return html.unescape(text)


def preview_text(structure: MessageStructure, source: Source) -> str:
    """The preview of a message; ``""`` if it has no text to show."""
    part = _choose(structure)
    if part is None:
        return ""
    data = decode_part_start(part, source, READ_LIMIT)
    text = decode_text(data, part.param("charset"))
    text = _html_text(text) if part.subtype.lower() == "html" else _plain_lines(text)
    # Control characters have no place in a one-line preview; white space
    # runs (line ends included) become one space.
    text = _SPACE.sub(" ", _CONTROL.sub(" ", text)).strip()
    return text[:LENGTH].rstrip()
