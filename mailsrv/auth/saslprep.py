"""SASLprep (RFC 4013), the stringprep profile SCRAM prepares names and
passwords with, built on the standard library's :mod:`stringprep` tables."""

from __future__ import annotations

import stringprep
import unicodedata

__all__ = ["saslprep"]

# RFC 4013 2.3: the tables of characters that must not appear in the output.
_PROHIBITED = (
    stringprep.in_table_c12,  # non-ASCII space
    stringprep.in_table_c21,  # ASCII control characters
    stringprep.in_table_c22,  # non-ASCII control characters
    stringprep.in_table_c3,  # private use
    stringprep.in_table_c4,  # non-character code points
    stringprep.in_table_c5,  # surrogate codes
    stringprep.in_table_c6,  # inappropriate for plain text
    stringprep.in_table_c7,  # inappropriate for canonical representation
    stringprep.in_table_c8,  # change display properties or deprecated
    stringprep.in_table_c9,  # tagging characters
)


def saslprep(text: str, *, stored: bool = True) -> str:
    """``text`` prepared by SASLprep; ValueError saying why if it cannot be.

    ``stored`` applies the rules for stored strings (RFC 3454 7: unassigned
    code points are refused), which RFC 5802 2.2 asks for passwords; a
    query string (a user name the client sent, RFC 5802 5.1) allows them.
    """
    # RFC 4013 2.1: non-ASCII spaces become SPACE, "commonly mapped to
    # nothing" characters (B.1) disappear.
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c)
    )
    # RFC 4013 2.2: Unicode normalization form KC.
    prepared = unicodedata.normalize("NFKC", mapped)
    for char in prepared:
        if any(table(char) for table in _PROHIBITED):
            raise ValueError(f"prohibited character U+{ord(char):04X}")
        if stored and stringprep.in_table_a1(char):
            raise ValueError(f"unassigned code point U+{ord(char):04X}")
    _check_bidi(prepared)
    return prepared


def _check_bidi(text: str) -> None:
    """RFC 3454 6: right-to-left text must be only that, and start and end
    with a right-to-left character."""
    if not any(stringprep.in_table_d1(c) for c in text):
        return
    if any(stringprep.in_table_d2(c) for c in text):
        raise ValueError("mixes right-to-left and left-to-right characters")
    if not (stringprep.in_table_d1(text[0]) and stringprep.in_table_d1(text[-1])):
        raise ValueError("right-to-left text must start and end with a right-to-left character")
