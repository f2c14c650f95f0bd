"""The per-message cache of a folder's index (:class:`~mailsrv.interfaces.IMessageCache`).

Values worked out from messages (structures, rendered items, header
fields, folded values for SEARCH) live in the index's ``cache`` table by
``(uid, kind)`` and go with their message (a trigger).  Kinds named after
what a client asked for (a ``:`` in the name: HEADER.FIELDS sets, fields
SEARCHed) are listed in ``cache_kinds`` with when each was last used, and
at most ``[limits] max_cache_kinds`` of them are kept: storing a new one
past that drops the least recently used one's values, so a client asking
for ever new names cannot grow the index (outside its quota) without bound.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping

__all__ = ["CACHE_KINDS", "CACHE_KINDS_TABLE", "CachedValues"]

#: The table of client-named kinds (schema 4).
CACHE_KINDS_TABLE = (
    "CREATE TABLE IF NOT EXISTS cache_kinds (kind TEXT PRIMARY KEY, used REAL NOT NULL) "
    "WITHOUT ROWID"
)
#: Client-named cache kinds one folder keeps by default (``[limits]
#: max_cache_kinds``).
CACHE_KINDS = 32


class CachedValues:
    """The cache part of :class:`~mailsrv.storage.maildir.index.Index`."""

    db: sqlite3.Connection

    def __init__(self) -> None:
        #: Client-named cache kinds read since the last write, and when.
        self._kinds_read: dict[str, float] = {}
        self._last_use = 0.0

    def get_cached(self, uid: int, kind: str) -> bytes | None:
        row = self.db.execute(
            "SELECT value FROM cache WHERE uid = ? AND kind = ?", (uid, kind)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def _now(self) -> float:
        """Wall-clock seconds (other processes share the order), strictly
        increasing in this process, so one use never ties with the next."""
        self._last_use = max(time.time(), self._last_use + 1e-6)
        return self._last_use

    def _note_kind(self, kind: str, kinds: int) -> None:
        """Record ``kind`` as used now (with the kinds read since the last
        write), making room for it if it is new."""
        now = self._now()
        read, self._kinds_read = self._kinds_read, {}
        self.db.executemany(
            "UPDATE cache_kinds SET used = max(used, ?) WHERE kind = ?",
            [(when, name) for name, when in read.items()],
        )
        if self.db.execute("SELECT 1 FROM cache_kinds WHERE kind = ?", (kind,)).fetchone():
            self.db.execute("UPDATE cache_kinds SET used = ? WHERE kind = ?", (now, kind))
            return
        (count,) = self.db.execute("SELECT count(*) FROM cache_kinds").fetchone()
        for (victim,) in self.db.execute(
            "SELECT kind FROM cache_kinds ORDER BY used, kind LIMIT max(?, 0)",
            (count - max(kinds, 1) + 1,),
        ).fetchall():
            self.db.execute("DELETE FROM cache WHERE kind = ?", (victim,))
            self.db.execute("DELETE FROM cache_kinds WHERE kind = ?", (victim,))
        self.db.execute("INSERT INTO cache_kinds VALUES (?, ?)", (kind, now))

    def get_cached_many(self, uids: Iterable[int], kind: str) -> dict[int, bytes]:
        if ":" in kind:
            # Recorded at the next write (reads take no write lock).
            self._kinds_read[kind] = self._now()
        wanted = sorted(set(uids))
        out: dict[int, bytes] = {}
        if not wanted:
            return out
        if len(wanted) > 400 or wanted[-1] - wanted[0] + 1 == len(wanted):
            # A contiguous batch: one range scan beats a long IN list.
            cursor = self.db.execute(
                "SELECT uid, value FROM cache WHERE kind = ? AND uid BETWEEN ? AND ?",
                (kind, wanted[0], wanted[-1]),
            )
            if wanted[-1] - wanted[0] + 1 == len(wanted):
                # Every UID in the range is wanted: no filter (BLOBs come as bytes).
                found: dict[int, bytes] = dict(cursor.fetchall())
                return found
            wanted_set = set(wanted)
            for uid, value in cursor:
                if uid in wanted_set:
                    out[int(uid)] = bytes(value)
            return out
        for start in range(0, len(wanted), 200):
            chunk = wanted[start : start + 200]
            marks = ",".join("?" * len(chunk))
            cursor = self.db.execute(
                f"SELECT uid, value FROM cache WHERE kind = ? AND uid IN ({marks})",
                (kind, *chunk),
            )
            for uid, value in cursor:
                out[int(uid)] = bytes(value)
        return out

    def search_cached(
        self, kind: str, needle: bytes, low: int, high: int
    ) -> tuple[list[int], list[int]]:
        """:meth:`~mailsrv.interfaces.ICachedSearch.search_cached`: one
        joined scan of the messages in the range; only the matches and
        the messages without a value come back as rows."""
        if ":" in kind:
            self._kinds_read[kind] = self._now()
        test = "length(c.value) > 0" if not needle else "instr(c.value, ?) > 0"
        args: tuple[object, ...] = (kind, low, high) + ((needle,) if needle else ())
        cursor = self.db.execute(
            "SELECT m.uid, c.value IS NULL FROM messages AS m "
            "LEFT JOIN cache AS c ON c.uid = m.uid AND c.kind = ? "
            f"WHERE m.uid BETWEEN ? AND ? AND (c.value IS NULL OR {test}) ORDER BY m.uid",
            args,
        )
        matched: list[int] = []
        missing: list[int] = []
        for uid, absent in cursor:
            (missing if absent else matched).append(uid)
        return matched, missing

    def set_cached_many(
        self, kind: str, values: Mapping[int, bytes], kinds: int = CACHE_KINDS
    ) -> None:
        """Store values of ``kind`` (in the caller's transaction).  A kind
        named after what a client asked for (a ``:`` in it) counts against
        ``kinds``: storing a new one past that many first drops the least
        recently used one's values, so a client asking for ever new field
        sets cannot grow the file without bound."""
        if ":" in kind:
            self._note_kind(kind, kinds)
        self.db.executemany(
            "INSERT OR REPLACE INTO cache SELECT ?, ?, ? WHERE EXISTS "
            "(SELECT 1 FROM messages WHERE uid = ?)",
            ((uid, kind, bytes(value), uid) for uid, value in values.items()),
        )
