"""Undoing what MIME encodes: transfer encodings, charsets, encoded words.

Lenient throughout: a part or header that cannot be decoded cleanly gives
the best text it can (errors replaced), never an exception.  This is what
searching message text and serving decoded parts rest on.
"""

from __future__ import annotations

import binascii
import codecs
import re
from collections.abc import Iterator, Sequence

from mailsrv.mime.fields import split_fields
from mailsrv.mime.structure import MessageStructure, Part, Source, find_part, read_range

__all__ = [
    "decode_base64",
    "decode_part",
    "decode_part_start",
    "decode_quoted_printable",
    "decode_text",
    "decode_words",
    "decoded_header_text",
    "decoded_size",
    "search_texts",
    "text_parts",
]

# ---------------------------------------------------------------------------
# Transfer encodings (RFC 2045 6)
# ---------------------------------------------------------------------------

_BASE64_KEEP = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_BASE64_DROP = bytes(c for c in range(256) if c not in _BASE64_KEEP)


def decode_base64(data: bytes) -> bytes:
    """Lenient base64: ignore anything outside the alphabet, stop at the
    padding, and drop an incomplete final group rather than fail."""
    clean = data.translate(None, _BASE64_DROP)
    pad = clean.find(b"=")
    if pad >= 0:
        clean = clean[:pad]
    usable = len(clean) - len(clean) % 4
    tail = clean[usable:]
    out = binascii.a2b_base64(clean[:usable]) if usable else b""
    if len(tail) >= 2:
        out += binascii.a2b_base64(tail + b"=" * (4 - len(tail)))
    return out


_QP_TRAILING_SPACE = re.compile(rb"[ \t]+(?=\r?\n|$)")


def decode_quoted_printable(data: bytes) -> bytes:
    """Quoted-printable (RFC 2045 6.7), dropping transport padding; bad
    ``=`` sequences are kept as they are."""
    return binascii.a2b_qp(_QP_TRAILING_SPACE.sub(b"", data))


def _decode_body(encoding: str, body: bytes) -> bytes | None:
    lowered = encoding.lower()
    if lowered in ("7bit", "8bit", "binary", ""):
        return body
    if lowered == "base64":
        return decode_base64(body)
    if lowered == "quoted-printable":
        return decode_quoted_printable(body)
    return None


def decode_part(structure: MessageStructure, source: Source, part: Sequence[int]) -> bytes | None:
    """The body of the part ``part`` numbers (see
    :func:`~mailsrv.mime.structure.find_part`) with its transfer encoding
    undone (what IMAP's BINARY, RFC 3516, serves).

    None means the encoding is unknown or the part does not exist.
    ``part == ()`` is the whole message as is; a multipart or message/rfc822
    part is its body as is.
    """
    if not part:
        return read_range(source, 0, structure.size)
    node = find_part(structure, part)
    if node is None:
        return None
    body = read_range(source, node.body_offset, node.body_size)
    if node.children or node.message is not None:
        return body
    return _decode_body(node.encoding, body)


def decode_part_start(part: Part, source: Source, limit: int) -> bytes:
    """The first ``limit`` octets of a leaf part's body (as sent), with its
    transfer encoding undone; empty for an encoding not known (a preview
    shows nothing rather than encoded text)."""
    body = read_range(source, part.body_offset, min(part.body_size, limit))
    return _decode_body(part.encoding, body) or b""


def decoded_size(structure: MessageStructure, source: Source, part: Sequence[int]) -> int | None:
    """How many octets :func:`decode_part` would return (None: it would
    return None), without decoding when the encoding is an identity."""
    if not part:
        return structure.size
    node = find_part(structure, part)
    if node is not None and node.encoding.lower() in ("7bit", "8bit", "binary"):
        return node.body_size
    decoded = decode_part(structure, source, part)
    return None if decoded is None else len(decoded)


# ---------------------------------------------------------------------------
# Charsets and encoded words (RFC 2047)
# ---------------------------------------------------------------------------


def _codec(charset: str | None) -> str:
    """A Python codec for a MIME charset; unknown ones read as UTF-8 (with
    replacement), as does US-ASCII, whose 8-bit violators are usually UTF-8."""
    if not charset:
        return "utf-8"
    name = charset.strip().strip('"').lower()
    if name in ("us-ascii", "ascii", "unknown-8bit", "x-unknown"):
        return "utf-8"
    try:
        return codecs.lookup(name).name
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        return "utf-8"


def decode_text(data: bytes, charset: str | None) -> str:
    """Octets in a charset to text, never failing.

    The sender names the charset, and Python's codec registry also holds
    bytes transforms (``base64``, ``zlib``...) and codecs that refuse the
    "replace" handler (``idna``, ``punycode``, ``undefined``): with "replace"
    no character set raises, so whatever does is no character set, and the
    text reads as UTF-8, as with an unknown name.
    """
    try:
        return data.decode(_codec(charset), "replace")
    except (LookupError, UnicodeError):
        return data.decode("utf-8", "replace")


_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_WORD_GAP = re.compile(rb"^[ \t\r\n]*$")


def _raw_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def decode_words(value: bytes) -> str:
    """Decode RFC 2047 encoded words in an unfolded header value; whitespace
    between adjacent encoded words disappears (RFC 2047 6.2), bare 8-bit
    text is read as UTF-8 (else Windows-1252)."""
    out: list[str] = []
    pos = 0
    previous_encoded = False
    for match in _ENCODED_WORD.finditer(value):
        gap = value[pos : match.start()]
        if not (previous_encoded and _WORD_GAP.match(gap)):
            out.append(_raw_text(gap))
        charset = match.group(1).decode("ascii", "replace").split("*", 1)[0]
        text = match.group(3)
        if match.group(2) in b"bB":
            octets = decode_base64(text)
        else:
            octets = binascii.a2b_qp(text.replace(b"_", b" "), header=False)
        out.append(decode_text(octets, charset))
        pos = match.end()
        previous_encoded = True
    out.append(_raw_text(value[pos:]))
    return "".join(out)


def decoded_header_text(block: bytes) -> str:
    """A whole header block as text to search: every field's name and
    RFC 2047-decoded value, one per line."""
    return "\n".join(
        f"{field}: {decode_words(value)}" for field, _, value in split_fields(block) if field
    )


def text_parts(structure: MessageStructure, source: Source) -> Iterator[str]:
    """The decoded text of every text/* part, embedded messages included:
    transfer encoding undone, then the charset (errors replaced)."""
    for part in structure.root.walk():
        if part.children or part.message is not None or not part.is_text:
            continue
        body = read_range(source, part.body_offset, part.body_size)
        decoded = _decode_body(part.encoding, body)
        if decoded is None:
            decoded = body
        yield decode_text(decoded, part.param("charset"))


def search_texts(structure: MessageStructure, source: Source) -> tuple[str, str]:
    """``(header, body)`` as SEARCH TEXT and BODY compare them (RFC 3501
    6.4.4: case-insensitive substrings): the decoded header block and the
    decoded text parts joined by LF, both case-folded.  The one definition
    the search scan and a full-text index both use, so they cannot differ."""
    header = read_range(source, 0, structure.root.header_size)
    body = "\n".join(text_parts(structure, source))
    return decoded_header_text(header).casefold(), body.casefold()
