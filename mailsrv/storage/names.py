"""Mailbox names: the rules every backend applies, and Maildir++ directory names.

IMAP names use ``/`` as the hierarchy delimiter; Maildir++ stores folder
``A/B`` as the directory ``.A.B`` beside the INBOX's ``cur``/``new``/``tmp``,
each component in modified UTF-7 as Dovecot writes it.  Everything here is
pure (no I/O), so the rules that keep a name inside the user's tree are in
one place and easy to test.
"""

from __future__ import annotations

from mailsrv import mutf7
from mailsrv.errors import InvalidMailboxName

__all__ = [
    "DELIMITER",
    "INBOX",
    "MAX_DIRNAME_BYTES",
    "MAX_NAME_LENGTH",
    "dirname_to_name",
    "is_inbox",
    "name_to_dirname",
    "normalize",
    "normalize_maildir",
    "parents",
]

DELIMITER = "/"
INBOX = "INBOX"
#: Longest mailbox name any backend accepts, in characters.
MAX_NAME_LENGTH = 1000
#: Longest directory name we create; file systems stop at 255 bytes and a
#: rename needs room.
MAX_DIRNAME_BYTES = 200


def is_inbox(name: str) -> bool:
    """Whether ``name`` is the INBOX (case-insensitive, RFC 3501 5.1)."""
    return name.upper() == INBOX


def normalize(name: str) -> str:
    """Check a client's mailbox name and return its canonical form.

    These are the rules every backend applies: a trailing delimiter is
    dropped and ``inbox`` in any case, also as the first level, becomes
    ``INBOX``.  Raises :class:`InvalidMailboxName` with the reason for
    control characters, broken Unicode, LIST wildcards, empty, ``.`` and
    ``..`` levels, and names longer than :data:`MAX_NAME_LENGTH`.
    """
    if not isinstance(name, str):
        raise InvalidMailboxName("mailbox name must be text")
    if name.endswith(DELIMITER) and name != DELIMITER:
        name = name[:-1]
    if not name:
        raise InvalidMailboxName("empty mailbox name")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidMailboxName(f"mailbox name longer than {MAX_NAME_LENGTH} characters")
    _check_characters(name)
    parts = name.split(DELIMITER)
    for part in parts:
        if not part:
            raise InvalidMailboxName("empty hierarchy level in mailbox name")
        if part in (".", ".."):
            raise InvalidMailboxName(f"{part!r} is not allowed as a level of a mailbox name")
    if is_inbox(parts[0]):
        parts[0] = INBOX
    return DELIMITER.join(parts)


def _check_characters(name: str) -> None:
    """Refuse control characters, broken Unicode and LIST wildcards."""
    for char in name:
        if ord(char) < 0x20 or ord(char) == 0x7F or 0x80 <= ord(char) < 0xA0:
            raise InvalidMailboxName("control characters are not allowed in mailbox names")
        if 0xD800 <= ord(char) <= 0xDFFF:
            raise InvalidMailboxName("mailbox name is not valid Unicode")
    if "*" in name or "%" in name:
        raise InvalidMailboxName("'*' and '%' are LIST wildcards, not allowed in mailbox names")


def normalize_maildir(name: str) -> str:
    """:func:`normalize`, plus what Maildir++ cannot hold.

    Maildir++ separates levels with ``.`` on disk, so a ``.`` inside a name
    is refused (Dovecot does the same), and the directory name must fit.
    """
    canonical = normalize(name)
    if "." in canonical:
        raise InvalidMailboxName(
            "'.' is not allowed in mailbox names: Maildir++ uses it to separate levels"
        )
    if canonical != INBOX and len(name_to_dirname(canonical).encode("ascii")) > MAX_DIRNAME_BYTES:
        raise InvalidMailboxName("mailbox name too long")
    return canonical


def name_to_dirname(name: str) -> str:
    """The Maildir++ directory of a normalized, non-INBOX name (``.A.B``)."""
    return "." + ".".join(mutf7.encode(part) for part in name.split(DELIMITER))


def dirname_to_name(dirname: str) -> str | None:
    """The mailbox name of a Maildir++ directory, or None if it is not one.

    Directories that do not start with a single ``.``, have empty levels, or
    hold invalid modified UTF-7 or characters :func:`normalize` rejects are
    not mailboxes (the caller logs and skips them).
    """
    if not dirname.startswith(".") or dirname in (".", ".."):
        return None
    parts = dirname[1:].split(".")
    names: list[str] = []
    for part in parts:
        if not part:
            return None
        try:
            decoded = mutf7.decode(part)
        except ValueError:
            return None
        names.append(decoded)
    name = DELIMITER.join(names)
    try:
        if normalize_maildir(name) != name or is_inbox(name):
            return None
    except InvalidMailboxName:
        return None
    return name


def parents(name: str) -> list[str]:
    """The superior names of ``name``, outermost first (``a/b/c`` -> a, a/b)."""
    parts = name.split(DELIMITER)
    return [DELIMITER.join(parts[:i]) for i in range(1, len(parts))]
