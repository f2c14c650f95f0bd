"""The one rule for which flags a backend stores (RFC 3501 2.3.2)."""

from __future__ import annotations

from collections.abc import Iterable

from mailsrv.errors import StorageError
from mailsrv.interfaces import RECENT, SYSTEM_FLAGS, canonical_flag

#: Characters a keyword may not contain: RFC 3501 atom-specials (CTLs and
#: SPACE are checked by range).
ATOM_SPECIALS = frozenset('(){ %*"\\]')


def is_keyword(flag: str) -> bool:
    """Whether ``flag`` is a valid keyword: a non-empty atom without ``\\``,
    and not ``NIL``.

    RFC 3501's ``flag-keyword = atom`` admits ``NIL``, but in a response
    (``FLAGS (NIL)``) clients read it as nil, not as a keyword: it could
    never be fetched back as what was stored.
    """
    return (
        bool(flag)
        and flag.upper() != "NIL"
        and not any(ord(c) <= 0x20 or ord(c) >= 0x7F or c in ATOM_SPECIALS for c in flag)
    )


def check_flags(flags: Iterable[str]) -> frozenset[str]:
    """The flags to store: system flags respelt canonically, \\Recent dropped.

    Unknown system flags (``\\Foo``) and keywords that are not atoms are
    refused with [CANNOT]: a client could never fetch ``my flag`` back.
    """
    result: set[str] = set()
    for flag in flags:
        if not isinstance(flag, str) or not flag:
            raise StorageError(f"invalid flag {flag!r}", code="CANNOT")
        canonical = canonical_flag(flag)
        if canonical == RECENT:
            continue  # session state, never stored
        if canonical.startswith("\\"):
            if canonical not in SYSTEM_FLAGS:
                raise StorageError(f"{flag} is not a flag that can be stored", code="CANNOT")
        elif canonical.upper() == "NIL":
            raise StorageError("NIL cannot be a keyword: clients read it as nil", code="CANNOT")
        elif not is_keyword(canonical):
            raise StorageError(f"invalid keyword {flag!r}", code="CANNOT")
        result.add(canonical)
    return frozenset(result)
