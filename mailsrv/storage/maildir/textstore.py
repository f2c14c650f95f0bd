"""The full-text index file of one folder, ``mailsrv-fulltext.sqlite``.

What it holds for each message is exactly what the search scan compares:
:func:`mailsrv.mime.decoding.search_texts` of the message, its decoded
header and body text, case-folded.  Two tables:

``docs``
    ``uid -> zlib(header NUL body)`` (UTF-8): the texts themselves, about
    40 % of their size.  Every candidate the trigram index proposes is
    confirmed against them with Python's ``in``, the scan's own
    comparison, so an answer is the scan's answer whatever the tokenizer
    does; and they are what deleting a row from the contentless ``terms``
    table needs (SQLite 3.40 wants the old values back).
``terms``
    An FTS5 table with the ``trigram`` tokenizer (``case_sensitive 1``: the
    texts are case-folded already), ``detail=none`` (no positions: a
    quarter of the size of ``detail=full``; positions are not needed since
    every candidate is confirmed) and no content of its own.  A needle's
    trigrams, all required, find the candidates.

Two characters never reach the tokenizer as they are: NUL, where SQLite's
tokenizer stops reading, and lone surrogates, which UTF-8 cannot carry.
Both are stored as U+FFFF, and a needle holding NUL or U+FFFF is never
looked up here (the caller scans): for every other needle, replacing
characters it cannot contain by one it does not contain changes no match.

The file is a cache: it is rebuilt from the messages whenever it is
missing, damaged, of another version or of another UIDVALIDITY, and no
answer is ever taken from a file in doubt.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import IO

from mailsrv.mime.decoding import search_texts
from mailsrv.mime.structure import FORMAT_VERSION, parse
from mailsrv.storage.maildir.schema import is_corruption

__all__ = [
    "FULLTEXT_NAME",
    "MIN_NEEDLE",
    "Damaged",
    "TextStore",
    "looked_up",
    "message_texts",
    "remove_files",
]

FULLTEXT_NAME = "mailsrv-fulltext.sqlite"
#: Of what is stored: a change of it (or of the message model's
#: :data:`~mailsrv.mime.structure.FORMAT_VERSION`) rebuilds every file.
VERSION = f"1.{FORMAT_VERSION}"
#: Needles shorter than a trigram cannot be looked up.
MIN_NEEDLE = 3
#: A long needle is looked up by this many of its trigrams, spread over it
#: (each candidate is confirmed, so any subset finds every match).
_MAX_TRIGRAMS = 12

_UNSAFE = re.compile("[\x00\ud800-\udfff]")
_SEPARATOR = "\x00"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE docs (uid INTEGER PRIMARY KEY, texts BLOB NOT NULL);
CREATE VIRTUAL TABLE terms USING fts5(
    header, body, tokenize = 'trigram case_sensitive 1', detail = none,
    content = '', columnsize = 0
);
"""


class Damaged(Exception):
    """The file cannot be trusted: it is thrown away and rebuilt."""


def message_texts(source: IO[bytes]) -> tuple[str, str]:
    """A message file's ``(header, body)`` as SEARCH compares them."""
    return search_texts(parse(source), source)


def looked_up(needle: str) -> bool:
    """Whether ``needle`` can be answered from the index (else: scan)."""
    return len(needle) >= MIN_NEEDLE and "\x00" not in needle and "\uffff" not in needle


def _storable(text: str) -> str:
    return _UNSAFE.sub("\uffff", text)


def _query(needle: str) -> str:
    """An FTS5 query requiring trigrams of ``needle`` (each a quoted string)."""
    grams = sorted({needle[i : i + 3] for i in range(len(needle) - 2)})
    if len(grams) > _MAX_TRIGRAMS:
        step = len(grams) / _MAX_TRIGRAMS
        grams = [grams[int(i * step)] for i in range(_MAX_TRIGRAMS)]
    return " AND ".join('"' + gram.replace('"', '""') + '"' for gram in grams)


def remove_files(path: str) -> None:
    """Delete an index file and its WAL (it is rebuilt from the messages)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)


class TextStore:
    """One connection to a folder's full-text file (one thread at a time)."""

    def __init__(self, path: str, uidvalidity: int, *, create: bool = True) -> None:
        """Open the file at ``path``, or make it; a file of another version
        or UIDVALIDITY, or one SQLite finds damaged, is made anew.  Without
        ``create`` (for answering), such a file raises :class:`Damaged`."""
        self.path = path
        self.uidvalidity = uidvalidity
        if not create and not os.path.exists(path):
            raise Damaged("missing")
        try:
            self._db, self.inode = self._open()
        except (sqlite3.Error, Damaged) as exc:
            if not create:
                raise Damaged(str(exc)) from exc
            remove_files(path)
            self._db, self.inode = self._open()

    def _open(self) -> tuple[sqlite3.Connection, int]:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            # A lost tail costs a re-index of those messages, never a wrong
            # answer (what is missing is scanned): no fsync per batch.
            db.execute("PRAGMA synchronous = OFF")
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            if "meta" not in tables:
                self._create(db)
            else:
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
                if meta.get("version") != VERSION or meta.get("uidvalidity") != self.uidvalidity:
                    raise Damaged("another version or UIDVALIDITY")
                if not {"docs", "terms"} <= tables:
                    raise Damaged("tables missing")
            return db, os.stat(self.path).st_ino
        except BaseException:
            db.close()
            raise

    def _create(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'meta'").fetchone()[0]:
                db.execute("COMMIT")  # another process made it meanwhile
                return
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [("version", VERSION), ("uidvalidity", self.uidvalidity)],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def replaced(self) -> bool:
        """Whether the file at our path is another one now (a reindex)."""
        try:
            return os.stat(self.path).st_ino != self.inode
        except FileNotFoundError:
            return True

    # -- reading ------------------------------------------------------------------

    def uids(self) -> set[int]:
        """Every UID whose text is stored."""
        return {row[0] for row in self._guarded("SELECT uid FROM docs")}

    def stored(self, uids: Iterable[int]) -> set[int]:
        """Those of ``uids`` whose text is stored."""
        wanted = list(uids)
        found: set[int] = set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT uid FROM docs WHERE uid IN ({marks})"
            found.update(row[0] for row in self._guarded(query, chunk))
        return found

    def matches(self, needle: str, body_only: bool) -> set[int]:
        """The stored messages whose body (``body_only``) or header or body
        contains ``needle``: candidates from the trigrams, each confirmed
        against its stored texts by the scan's own comparison."""
        found: set[int] = set()
        # The trigram match drives the join: one primary-key look-up per
        # candidate (SQLite would otherwise walk docs).
        query = "SELECT d.uid, d.texts FROM terms(?) AS t CROSS JOIN docs AS d ON d.uid = t.rowid"
        for uid, packed in self._guarded(query, (_query(needle),)):
            header, body = self._unpack(packed)
            if needle in body or (not body_only and needle in header):
                found.add(uid)
        return found

    @staticmethod
    def _unpack(packed: bytes) -> tuple[str, str]:
        try:
            text = zlib.decompress(packed).decode("utf-8")
        except (zlib.error, UnicodeDecodeError) as exc:
            raise Damaged(f"unreadable texts: {exc}") from exc
        header, separator, body = text.partition(_SEPARATOR)
        if not separator:
            raise Damaged("texts without a separator")
        return header, body

    def _guarded(self, query: str, parameters: Sequence[object] = ()) -> list[tuple[int, bytes]]:
        try:
            rows: list[tuple[int, bytes]] = self._db.execute(query, parameters).fetchall()
        except sqlite3.Error as exc:
            if is_corruption(exc):
                raise Damaged(str(exc)) from exc
            raise
        return rows

    # -- writing ------------------------------------------------------------------

    def add(self, texts: Sequence[tuple[int, str, str]]) -> None:
        """Store ``(uid, header, body)`` for each message, in one transaction;
        a message stored already (by another process) is left as it is."""
        self._write(lambda db: self._insert(db, texts))

    @staticmethod
    def _insert(db: sqlite3.Connection, texts: Sequence[tuple[int, str, str]]) -> None:
        for uid, header, body in texts:
            header, body = _storable(header), _storable(body)
            packed = zlib.compress((header + _SEPARATOR + body).encode("utf-8"), 1)
            cursor = db.execute("INSERT OR IGNORE INTO docs VALUES (?, ?)", (uid, packed))
            if cursor.rowcount:
                db.execute(
                    "INSERT INTO terms (rowid, header, body) VALUES (?, ?, ?)", (uid, header, body)
                )

    def remove(self, uids: Iterable[int]) -> None:
        """Forget expunged messages (their texts give the terms to delete)."""
        wanted = sorted(set(uids))
        if wanted:
            self._write(lambda db: self._delete(db, wanted))

    def _delete(self, db: sqlite3.Connection, uids: Sequence[int]) -> None:
        for uid in uids:
            row = db.execute("SELECT texts FROM docs WHERE uid = ?", (uid,)).fetchone()
            if row is None:
                continue
            header, body = self._unpack(row[0])
            db.execute(
                "INSERT INTO terms (terms, rowid, header, body) VALUES ('delete', ?, ?, ?)",
                (uid, header, body),
            )
            db.execute("DELETE FROM docs WHERE uid = ?", (uid,))

    def _write(self, change: Callable[[sqlite3.Connection], None]) -> None:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                change(db)
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if is_corruption(exc):
                raise Damaged(str(exc)) from exc
            raise

    def size(self) -> int:
        """Octets on disk (the file and its WAL)."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(self.path + suffix).st_size
        return total
