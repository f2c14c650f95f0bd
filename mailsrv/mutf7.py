"""Modified UTF-7 (RFC 3501 section 5.1.3), the encoding of IMAP mailbox names.

Printable US-ASCII other than ``&`` stands for itself, ``&`` is written
``&-``, and every other run of characters becomes ``&`` + UTF-16BE in
base64 (``,`` instead of ``/``, no padding) + ``-``.  Used on the wire by
IMAP and on disk by Maildir++ folder names (as Dovecot writes them).

:func:`decode` is strict: it accepts only the one spelling :func:`encode`
produces, so two different byte strings never name the same mailbox.
"""

from __future__ import annotations

import base64
import binascii
import codecs

__all__ = ["decode", "encode"]


def _direct(char: str) -> bool:
    """Whether ``char`` is written as itself (printable ASCII but ``&``)."""
    return " " <= char <= "~" and char != "&"


# UTF-16 goes through the codec functions themselves, not str.encode and
# bytes.decode: those look the codec up by name, which imports
# encodings.utf_16_be on first use.  In a daemon that first use comes after
# twistd dropped root, when the standard library may not be readable any
# more (a Python below /root): the lookup then fails with LookupError, which
# no caller expects, and the IMAP connection that sent the name was dropped.


def _encode_run(run: str) -> str:
    data, _ = codecs.utf_16_be_encode(run, "surrogatepass")
    text = base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",")
    return "&" + text + "-"


def encode(name: str) -> str:
    """Encode a Unicode mailbox name in modified UTF-7.

    Raises :class:`ValueError` for lone surrogates, which no UTF-16 can carry.
    """
    out: list[str] = []
    run: list[str] = []
    for char in name:
        if _direct(char):
            if run:
                out.append(_encode_run("".join(run)))
                run = []
            out.append(char)
        elif char == "&":
            if run:
                out.append(_encode_run("".join(run)))
                run = []
            out.append("&-")
        else:
            if 0xD800 <= ord(char) <= 0xDFFF:
                raise ValueError(f"lone surrogate U+{ord(char):04X} in mailbox name")
            run.append(char)
    if run:
        out.append(_encode_run("".join(run)))
    return "".join(out)


def _decode_run(text: str) -> str:
    if not text:
        raise ValueError("empty base64 run (only '&-' is allowed)")
    if "=" in text or "/" in text:
        raise ValueError("invalid character in modified base64")
    # Bits left over must be zero and a whole number of UTF-16 units present.
    padded = text.replace(",", "/") + "=" * (-len(text) % 4)
    if len(text) % 4 == 1:
        raise ValueError("truncated modified base64")
    try:
        data = base64.b64decode(padded, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid modified base64: {exc}") from None
    if len(data) % 2:
        raise ValueError("modified base64 does not hold whole UTF-16 units")
    if base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",") != text:
        raise ValueError("non-canonical modified base64 (stray bits)")
    try:
        decoded, _ = codecs.utf_16_be_decode(data, "strict", True)
    except UnicodeDecodeError as exc:
        raise ValueError(f"invalid UTF-16 in modified base64: {exc.reason}") from None
    if any(_direct(char) or char == "&" for char in decoded):
        raise ValueError("printable ASCII must not be base64-encoded")
    return decoded


def decode(text: str) -> str:
    """Decode a modified UTF-7 mailbox name to Unicode.

    Raises :class:`ValueError` for anything :func:`encode` would not have
    written: bytes outside printable ASCII, an unterminated or empty shift,
    bad base64, encoded printable ASCII, or two adjacent encoded runs.
    """
    out: list[str] = []
    i = 0
    length = len(text)
    last_was_run = False
    while i < length:
        char = text[i]
        if char == "&":
            end = text.find("-", i + 1)
            if end < 0:
                raise ValueError(f"unterminated '&' shift at offset {i}")
            if end == i + 1:
                out.append("&")
                last_was_run = False
            else:
                if last_was_run:
                    raise ValueError(f"adjacent encoded runs at offset {i}")
                out.append(_decode_run(text[i + 1 : end]))
                last_was_run = True
            i = end + 1
            continue
        if not _direct(char):
            raise ValueError(f"character {char!r} at offset {i} is not allowed in modified UTF-7")
        out.append(char)
        last_was_run = False
        i += 1
    return "".join(out)
