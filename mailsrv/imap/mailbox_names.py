"""Mailbox names as commands take them: a name that did not decode
(not valid modified UTF-7, or UTF-8 in a session that enabled it) is
answered NO, not BAD."""

from __future__ import annotations

from mailsrv.imap.output import no
from mailsrv.imap.syntax import UndecodedName

__all__ = ["creatable", "existing"]


def existing(name: str) -> str:
    """``name``, or NO [NONEXISTENT] if it is not valid modified UTF-7
    (UTF-8 in a session that enabled it).

    No mailbox can have such a name, but it is a syntactically valid one
    (RFC 3501 5.1.3), so the answer is NO, not BAD, as Dovecot's.
    """
    if isinstance(name, UndecodedName):
        raise no(
            f"No mailbox has this name: not valid {name.encoding} ({name.reason})", "NONEXISTENT"
        )
    return name


def creatable(name: str) -> str:
    """``name``, or NO [CANNOT] if it is not valid modified UTF-7 (UTF-8)
    or holds U+2028 or U+2029."""
    if isinstance(name, UndecodedName):
        raise no(f"Mailbox names must be valid {name.encoding} ({name.reason})", "CANNOT")
    if "\u2028" in name or "\u2029" in name:
        # RFC 6855 3: no line or paragraph separator in a name (the control
        # characters are refused by every backend, mailsrv.storage.names).
        raise no("Mailbox names must not contain line or paragraph separators", "CANNOT")
    return name
