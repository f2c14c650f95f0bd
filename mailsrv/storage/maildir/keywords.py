"""Flags in Maildir file names, and the folder's keyword table.

A message's flags are the info letters of its file name (``:2,FRS``): the
upper-case letters are the system flags (the Maildir specification's
``D F R S T``), and ``a``-``z`` stand for keywords, numbered per folder in
``dovecot-keywords`` (Dovecot's own format, so both servers read one tree).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from mailsrv.errors import LimitExceeded
from mailsrv.interfaces import ANSWERED, DELETED, DRAFT, FLAGGED, SEEN, StoreMode
from mailsrv.storage.flags import check_flags, is_keyword
from mailsrv.storage.maildir.layout import write_atomically

#: Letters ``a``-``z``: a folder defines at most this many keywords.
MAX_KEYWORDS = 26

#: Maildir info letters of the IMAP system flags.  ``P`` (passed) and other
#: letters have no IMAP flag: they are kept in the name but not reported.
LETTER_FLAGS: dict[str, str] = {
    "D": DRAFT,
    "F": FLAGGED,
    "R": ANSWERED,
    "S": SEEN,
    "T": DELETED,
}
FLAG_LETTERS: dict[str, str] = {flag: letter for letter, flag in LETTER_FLAGS.items()}


def sorted_info(letters: Iterable[str]) -> str:
    return "".join(sorted(set(letters)))


# --------------------------------------------------------------------------
# dovecot-keywords


def read_keywords(path: str) -> list[str | None]:
    """The keyword of each letter ``a``.. (index 0..25); None for unused ones.

    A missing file means no keywords; malformed lines are ignored, as
    Dovecot does.
    """
    slots: list[str | None] = [None] * MAX_KEYWORDS
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return slots
    for raw in data.decode("utf-8", "replace").splitlines():
        number, _, keyword = raw.strip().partition(" ")
        if not number.isdigit() or not keyword:
            continue
        position = int(number)
        if position < MAX_KEYWORDS:
            slots[position] = keyword
    return slots


def write_keywords(path: str, slots: Sequence[str | None]) -> None:
    """Write the keyword table atomically in Dovecot's format."""
    lines = [f"{i} {keyword}\n" for i, keyword in enumerate(slots) if keyword]
    write_atomically(path, "".join(lines).encode("utf-8"))


# --------------------------------------------------------------------------
# The table


def split_flags(flags: Iterable[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    """Split storable flags into (system flags, keywords in a stable order)."""
    stored = check_flags(flags)
    system = frozenset(f for f in stored if f.startswith("\\"))
    return system, tuple(sorted(stored - system))


class KeywordTable:
    """The folder's ``dovecot-keywords``: letters ``a``-``z`` <-> keyword names.

    A name written by another program that IMAP cannot carry (``my flag``,
    ``NIL``: not :func:`is_keyword`) keeps its letter but is hidden: no
    message shows it, and its letter is left alone when flags change.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.slots: list[str | None] = [None] * MAX_KEYWORDS
        self._signature: tuple[int, int, int] | None = None
        self._flags_cache: dict[str, frozenset[str]] = {}
        self._shown: list[str | None] = list(self.slots)

    def refresh(self) -> None:
        try:
            st = os.stat(self.path)
            signature: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            signature = None
        # No file now and none before: no keywords, as the table holds (a
        # folder whose messages never had one, read on every FETCH and STORE).
        if signature != self._signature:
            self.slots = read_keywords(self.path)
            self._shown = [k if k is not None and is_keyword(k) else None for k in self.slots]
            self._signature = signature
            self._flags_cache.clear()

    def names(self) -> list[str]:
        """The keywords IMAP can show, in letter order."""
        return [keyword for keyword in self._shown if keyword is not None]

    def room(self) -> int:
        """How many keywords IMAP can see at most: the letters not taken by
        hidden names."""
        return sum(1 for slot, shown in zip(self.slots, self._shown, strict=True) if slot == shown)

    def flags(self, info: str) -> frozenset[str]:
        cached = self._flags_cache.get(info)
        if cached is None:
            found: set[str] = set()
            for letter in info:
                if letter in LETTER_FLAGS:
                    found.add(LETTER_FLAGS[letter])
                elif "a" <= letter <= "z":
                    keyword = self._shown[ord(letter) - 97]
                    if keyword:
                        found.add(keyword)
            cached = self._flags_cache[info] = frozenset(found)
        return cached

    def letters_of(self, keyword: str) -> list[str]:
        """The letters that show as exactly ``keyword`` in :meth:`flags`
        (several if another program defined it twice), for SEARCH in SQL."""
        return [chr(97 + i) for i, shown in enumerate(self._shown) if shown == keyword]

    def letter(self, keyword: str, allocate: bool) -> str | None:
        """The letter of ``keyword`` (matched case-insensitively), added if asked."""
        lowered = keyword.lower()
        for position, known in enumerate(self._shown):
            if known is not None and known.lower() == lowered:
                return chr(97 + position)
        if not allocate:
            return None
        for position, known in enumerate(self.slots):
            if known is None:
                self.slots[position] = keyword
                write_keywords(self.path, self.slots)
                self._signature = None
                self.refresh()
                return chr(97 + position)
        raise LimitExceeded(f"a Maildir folder holds at most {MAX_KEYWORDS} keywords")

    def managed(self, letter: str) -> bool:
        """Whether ``letter`` stands for an IMAP flag (others are preserved)."""
        if letter in LETTER_FLAGS:
            return True
        return "a" <= letter <= "z" and self._shown[ord(letter) - 97] is not None

    def letters(self, system: Iterable[str], keywords: Sequence[str], allocate: bool) -> set[str]:
        if allocate:
            # All or nothing: a refused STORE must not leave some of its new
            # keywords defined (and announced to every session).
            new = {k.lower(): k for k in keywords if self.letter(k, False) is None}
            if len(new) > self.slots.count(None):
                first = min(new.values())
                raise LimitExceeded(
                    f"no room for keyword {first}: a Maildir folder holds at most "
                    f"{MAX_KEYWORDS} keywords"
                )
        result = {FLAG_LETTERS[flag] for flag in system}
        for keyword in keywords:
            letter = self.letter(keyword, allocate)
            if letter is not None:
                result.add(letter)
        return result

    def stored_info(self, info: str, letters: set[str], mode: str) -> str:
        """The flag letters a message with ``info`` gets from a STORE of
        ``letters`` in ``mode`` (a :class:`StoreMode`); letters without an
        IMAP flag are kept."""
        old = set(info)
        if mode == StoreMode.ADD:
            new = old | letters
        elif mode == StoreMode.REMOVE:
            new = old - letters
        else:
            new = {c for c in old if not self.managed(c)} | letters
        return sorted_info(new)
