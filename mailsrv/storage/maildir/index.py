"""The per-folder SQLite index, ``mailsrv-index.sqlite``.

A cache (SQLite, WAL mode) of everything the protocols ask without opening
message files: UID <-> file, flag letters, internal date, wire size, MODSEQ,
\\Recent, the expunge log and cached parsed data.  Counters for STATUS are
kept by triggers, so STATUS costs the same in a mailbox of any size.  Losing
it loses nothing: it is rebuilt from the files and the UID list
(:mod:`mailsrv.storage.maildir.uidlist`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import attrs

from mailsrv.storage.maildir import schema
from mailsrv.storage.maildir.cache import CachedValues
from mailsrv.storage.maildir.schema import IndexCorrupt, is_corruption

# IndexCorrupt and is_corruption are what callers of Index.open catch.
__all__ = ["EXPUNGE_LOG_LIMIT", "Index", "IndexCorrupt", "Row", "Summary", "is_corruption"]

#: SQL of each ``IMessageColumns`` column; the date is the floor of the
#: mtime in seconds (SQLite's ``/`` truncates towards zero, and a date
#: before 1970 is negative).
_COLUMN_SQL = {
    "flags": "info",
    "dates": "(mtime_ns - (mtime_ns % 1000000000 + 1000000000) % 1000000000) / 1000000000",
    "sizes": "size",
    "modseqs": "modseq",
}

#: Entries the expunge log keeps (RFC 7162 5.3 suggests bounding it): about
#: 3 MB of index at most.  Older ones are dropped at the next expunge and
#: the ``expunged_floor`` meta value rises to the highest MODSEQ dropped.
EXPUNGE_LOG_LIMIT = 100_000


@attrs.frozen
class Row:
    """One message as the index knows it."""

    uid: int
    base: str
    filename: str
    info: str
    mtime_ns: int
    size: int
    raw: bool
    modseq: int
    recent: bool
    pop3_uidl: str | None = None
    #: When it was saved into the folder (RFC 8514), UTC seconds; None if
    #: not known (indexed before save dates were kept, or by a rebuild).
    saved: int | None = None


_COLUMNS = "uid, base, filename, info, mtime_ns, size, raw, modseq, recent, pop3_uidl, saved"


def _row(values: Sequence[object]) -> Row:
    try:
        return _checked_row(values)
    except (TypeError, ValueError) as exc:
        raise IndexCorrupt(f"unreadable row {values!r}: {exc}") from exc


def _checked_row(values: Sequence[object]) -> Row:
    uid, base, filename, info, mtime_ns, size, raw, modseq, recent, uidl, saved = values
    return Row(
        uid=int(uid),  # type: ignore[call-overload]
        base=str(base),
        filename=str(filename),
        info=str(info),
        mtime_ns=int(mtime_ns),  # type: ignore[call-overload]
        size=int(size),  # type: ignore[call-overload]
        raw=bool(raw),
        modseq=int(modseq),  # type: ignore[call-overload]
        recent=bool(recent),
        pop3_uidl=None if uidl is None else str(uidl),
        saved=None if saved is None else int(saved),  # type: ignore[call-overload]
    )


#: What :meth:`Index.summaries` gives per message.
Summary = tuple[int, str, int, int, int, "int | None"]


class Index(CachedValues):
    """A connection to one folder's index.

    Reads may happen any time; writes go through :meth:`transaction` while
    the caller holds the folder lock, so processes never interleave them.
    """

    def __init__(self, connection: sqlite3.Connection, path: str) -> None:
        self.db = connection
        self.path = path
        self.inode = os.stat(path).st_ino
        self._after_commit: list[Callable[[], None]] = []
        CachedValues.__init__(self)

    def replaced(self) -> bool:
        """Whether the file at our path is no longer the one we have open
        (another process rebuilt the index, or the folder was recreated)."""
        try:
            return os.stat(self.path).st_ino != self.inode
        except FileNotFoundError:
            return True

    # -- opening ------------------------------------------------------------
    @classmethod
    def open(cls, path: str) -> Index:
        """Open an existing index; :class:`IndexCorrupt` if unusable
        (:func:`.schema.open_checked` says what is checked)."""
        return cls(schema.open_checked(path), path)

    @classmethod
    def create(cls, path: str, uidvalidity: int, uidnext: int, highest_modseq: int) -> Index:
        """Create a fresh, empty index, replacing whatever was at ``path``."""
        return cls(schema.create(path, uidvalidity, uidnext, highest_modseq), path)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic write (BEGIN IMMEDIATE ... COMMIT), then what
        :meth:`after_commit` asked for."""
        self.db.execute("BEGIN IMMEDIATE")
        self._after_commit = []
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self._after_commit = []
            # A damaged or full database may fail the ROLLBACK too; the
            # error that matters is the first one.
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise
        actions, self._after_commit = self._after_commit, []
        for action in actions:
            action()

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the transaction in progress has committed
        (never if it rolls back); at once outside a transaction."""
        if self.db.in_transaction:
            self._after_commit.append(action)
        else:
            action()

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Several reads that see one state of the index (a read transaction)."""
        self.db.execute("BEGIN")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- meta -----------------------------------------------------------------

    def get(self, key: str) -> object:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, value: object) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def get_int(self, key: str) -> int:
        return schema.meta_int(self.db, key)

    def data_version(self) -> int:
        """Changes by other connections since the last call show as a new value."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    # -- reads ----------------------------------------------------------------

    def counters(self) -> tuple[int, int, int, int, int]:
        """(messages, unseen, deleted, size, recent)."""
        row = self.db.execute(
            "SELECT messages, unseen, deleted, size, recent FROM counters WHERE id = 0"
        ).fetchone()
        if row is None or not all(isinstance(value, int) for value in row):
            raise IndexCorrupt(f"counters are {row!r}")
        return int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4])

    def uids(self) -> tuple[int, ...]:
        return tuple(r[0] for r in self.db.execute("SELECT uid FROM messages ORDER BY uid"))

    def uid_runs(self, above: int = 0) -> list[tuple[int, int]]:
        """The UIDs above ``above`` as inclusive ``(first, last)`` runs of
        consecutive UIDs, ascending, found in one pass over the primary key.

        (SQLite 3.40's window-function form, ``GROUP BY uid - row_number()
        OVER (ORDER BY uid)``, sorts, and took 2-4 times as long as this walk
        on 100,000 rows.)
        """
        runs: list[tuple[int, int]] = []
        cursor = self.db.execute("SELECT uid FROM messages WHERE uid > ? ORDER BY uid", (above,))
        first = last = -2
        for (uid,) in cursor:
            if uid != last + 1:
                if first >= 0:
                    runs.append((first, last))
                first = uid
            last = uid
        if first >= 0:
            runs.append((first, last))
        return runs

    def uids_where(self, condition: str, args: Sequence[object]) -> list[int]:
        """UIDs, ascending, of the rows meeting an SQL ``condition``
        (:mod:`mailsrv.storage.maildir.sqlsearch` writes them)."""
        # One JSON array built by SQLite and parsed by the json module, both
        # in C: a row per UID through sqlite3 costs twice as much (30,000
        # unseen messages: 4.7 against 7.1 ms).
        row = self.db.execute(
            "SELECT json_group_array(uid) FROM "
            f"(SELECT uid FROM messages WHERE {condition} ORDER BY uid)",
            args,
        ).fetchone()
        found: list[int] = json.loads(row[0])
        # SQLite does not promise an aggregate keeps its subquery's order;
        # sorting what is in order already is one pass.
        found.sort()
        return found

    def pop3_listing(self) -> list[tuple[int, int, bool]]:
        """``(uid, size, seen)`` of every message, by UID."""
        cursor = self.db.execute(
            "SELECT uid, size, instr(info, 'S') > 0 FROM messages ORDER BY uid"
        )
        return [(uid, size, bool(seen)) for uid, size, seen in cursor]

    def uid_set_version(self) -> tuple[int, object]:
        """A value that changes whenever the set of UIDs does, and only
        then: the message count (every insert raises it) and the number of
        messages ever deleted (:meth:`delete` counts them).  Flag changes
        leave it alone, so a cached UID list outlives them."""
        row = self.db.execute("SELECT messages FROM counters WHERE id = 0").fetchone()
        return int(row[0]), self.get("deletions")

    def row(self, uid: int) -> Row | None:
        values = self.db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE uid = ?", (uid,)
        ).fetchone()
        return None if values is None else _row(values)

    def file_of(self, uid: int) -> tuple[str, bool, int] | None:
        """``(file name in cur/, raw, size)`` of a message: what opening
        it needs, without a :class:`Row` (POP3 RETR asks once a message)."""
        found = self.db.execute(
            "SELECT filename, raw, size FROM messages WHERE uid = ?", (uid,)
        ).fetchone()
        return None if found is None else (str(found[0]), bool(found[1]), int(found[2]))

    def rows(self, uids: Iterable[int] | None = None) -> list[Row]:
        """Rows for ``uids`` (all if None), ascending by UID."""
        if uids is None:
            cursor = self.db.execute(f"SELECT {_COLUMNS} FROM messages ORDER BY uid")
            return [_row(v) for v in cursor]
        wanted = sorted(set(uids))
        if not wanted:
            return []
        if len(wanted) > 400:
            low, high = wanted[0], wanted[-1]
            wanted_set = set(wanted)
            cursor = self.db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE uid BETWEEN ? AND ? ORDER BY uid",
                (low, high),
            )
            return [_row(v) for v in cursor if v[0] in wanted_set]
        result: list[Row] = []
        for start in range(0, len(wanted), 200):
            chunk = wanted[start : start + 200]
            marks = ",".join("?" * len(chunk))
            cursor = self.db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE uid IN ({marks}) ORDER BY uid", chunk
            )
            result.extend(_row(v) for v in cursor)
        return result

    def rows_with_letter(self, letter: str, uids: Iterable[int] | None = None) -> list[Row]:
        """Rows whose flag letters include ``letter`` (among ``uids`` if given)."""
        cursor = self.db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE instr(info, ?) > 0 ORDER BY uid", (letter,)
        )
        found = [_row(v) for v in cursor]
        if uids is None:
            return found
        wanted = set(uids)
        return [row for row in found if row.uid in wanted]

    # The MODSEQ queries sort in Python: with "ORDER BY uid" SQLite scans the
    # whole table instead of using the MODSEQ index.

    def changed_since(self, modseq: int) -> list[Row]:
        cursor = self.db.execute(f"SELECT {_COLUMNS} FROM messages WHERE modseq > ?", (modseq,))
        return sorted((_row(v) for v in cursor), key=lambda row: row.uid)

    def changed_uids(self, modseq: int) -> list[int]:
        cursor = self.db.execute("SELECT uid FROM messages WHERE modseq > ?", (modseq,))
        return sorted(int(r[0]) for r in cursor)

    def expunged_floor(self) -> int:
        """The highest MODSEQ the expunge log no longer accounts for."""
        value = self.get("expunged_floor")
        return value if isinstance(value, int) else 0

    def vanished_since(self, modseq: int) -> list[int] | None:
        """UIDs expunged after ``modseq``; None if the log does not reach
        back that far (call it in a snapshot)."""
        if modseq < self.expunged_floor():
            return None
        cursor = self.db.execute("SELECT uid FROM expunged WHERE modseq > ?", (modseq,))
        return sorted(int(r[0]) for r in cursor)

    def expunged_since(self, modseq: int) -> list[int]:
        """UIDs expunged after ``modseq``; beyond the log, every UID below
        UIDNEXT that no message has (call it in a snapshot)."""
        found = self.vanished_since(modseq)
        if found is not None:
            return found
        missing: list[int] = []
        expected = 1
        for uid in self.uids():
            missing.extend(range(expected, uid))
            expected = uid + 1
        missing.extend(range(expected, self.get_int("uidnext")))
        return missing

    def is_expunged(self, uid: int) -> bool:
        found = self.db.execute("SELECT 1 FROM expunged WHERE uid = ?", (uid,)).fetchone()
        return found is not None

    def base_map(self) -> dict[str, tuple[int, str]]:
        """base name -> (uid, file name in cur/)."""
        cursor = self.db.execute("SELECT base, uid, filename FROM messages")
        return {base: (uid, filename) for base, uid, filename in cursor}

    def by_base(self, base: str) -> tuple[int, str] | None:
        """(uid, file name) of the message with this base name."""
        found = self.db.execute(
            "SELECT uid, filename FROM messages WHERE base = ?", (base,)
        ).fetchone()
        return None if found is None else (int(found[0]), str(found[1]))

    def filenames(self) -> set[str]:
        """The names of every indexed file in cur/."""
        names: set[str] = {name for (name,) in self.db.execute("SELECT filename FROM messages")}
        return names

    def summaries(self, uids: Iterable[int] | None = None) -> list[Summary]:
        """(uid, info, mtime_ns, size, modseq, saved) for ``uids`` (all if
        None), by UID.

        The fast path of FETCH FLAGS over a whole mailbox.
        """
        columns = "uid, info, mtime_ns, size, modseq, saved"
        if uids is None:
            return self.db.execute(f"SELECT {columns} FROM messages ORDER BY uid").fetchall()
        return self._rows_of(columns, uids)

    def row_tuples(self, uids: Iterable[int]) -> list[tuple[int, str, int, int, int]]:
        """(uid, info, mtime_ns, size, modseq) for ``uids``, by UID: what
        ``IMessageRows`` needs."""
        return self._rows_of("uid, info, mtime_ns, size, modseq", uids)

    def column_texts(
        self, first: int, last: int, names: Sequence[str]
    ) -> tuple[int, list[str | None]]:
        """How many messages UIDs ``first`` to ``last`` have, and each of
        ``names``' values (``IMessageColumns`` names) joined with ``/``
        (which no value holds: ``info`` comes from a file name), by UID.
        One aggregate over the UID range: SQLite builds the strings, so no
        row becomes a Python object.  The aggregates of one query see the
        rows in one order, the rowid range scan's (ascending UID)."""
        selects = "".join(f", group_concat({_COLUMN_SQL[name]}, '/')" for name in names)
        found = self.db.execute(
            f"SELECT count(*){selects} FROM messages WHERE uid BETWEEN ? AND ?", (first, last)
        ).fetchone()
        return int(found[0]), list(found[1:])

    def _rows_of(self, columns: str, uids: Iterable[int]) -> list[Any]:
        """``columns`` (the first being ``uid``) of the rows of ``uids``, by
        UID.  Consecutive UIDs (a FETCH batch, the common case) are one
        range scan taken as it comes; a dense set, one range scan filtered;
        a sparse one (a search's hits), only its rows, 200 at a time."""
        wanted = sorted(set(uids))
        if not wanted:
            return []
        low, high = wanted[0], wanted[-1]
        contiguous = high - low + 1 == len(wanted)
        if contiguous or (len(wanted) > 400 and high - low < 4 * len(wanted)):
            rows = self.db.execute(
                f"SELECT {columns} FROM messages WHERE uid BETWEEN ? AND ? ORDER BY uid",
                (low, high),
            ).fetchall()
            if contiguous:
                return rows
            wanted_set = set(wanted)
            return [row for row in rows if row[0] in wanted_set]
        result: list[Any] = []
        for start in range(0, len(wanted), 200):
            chunk = wanted[start : start + 200]
            marks = ",".join("?" * len(chunk))
            cursor = self.db.execute(
                f"SELECT {columns} FROM messages WHERE uid IN ({marks}) ORDER BY uid", chunk
            )
            result.extend(cursor)
        return result

    def uidlist_entries(self) -> list[tuple[int, str, str | None]]:
        return [
            (int(uid), str(base), None if uidl is None else str(uidl))
            for uid, base, uidl in self.db.execute("SELECT uid, base, pop3_uidl FROM messages")
        ]

    def pop3_uidls(self) -> dict[int, str]:
        cursor = self.db.execute("SELECT uid, pop3_uidl FROM messages WHERE pop3_uidl IS NOT NULL")
        return {int(uid): str(uidl) for uid, uidl in cursor}

    # -- writes (inside transaction()) ------------------------------------------

    def insert(self, rows: Iterable[Row]) -> None:
        self.db.executemany(
            f"INSERT INTO messages ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    r.uid,
                    r.base,
                    r.filename,
                    r.info,
                    r.mtime_ns,
                    r.size,
                    int(r.raw),
                    r.modseq,
                    int(r.recent),
                    r.pop3_uidl,
                    r.saved,
                )
                for r in rows
            ),
        )

    def update_file(self, uid: int, filename: str, info: str, modseq: int) -> None:
        self.db.execute(
            "UPDATE messages SET filename = ?, info = ?, modseq = ? WHERE uid = ?",
            (filename, info, modseq, uid),
        )

    def delete(self, uids: Iterable[int], modseq: int) -> None:
        pairs = [(uid,) for uid in uids]
        self.db.executemany("DELETE FROM messages WHERE uid = ?", pairs)
        self.db.executemany(
            "INSERT OR REPLACE INTO expunged VALUES (?, ?)", [(u, modseq) for (u,) in pairs]
        )
        deletions = self.get("deletions")
        self.put("deletions", (deletions if isinstance(deletions, int) else 0) + len(pairs))
        rows = self.get("expunged_rows")
        if not isinstance(rows, int):  # an index from before the count was kept
            rows = int(self.db.execute("SELECT count(*) FROM expunged").fetchone()[0])
        else:
            rows += len(pairs)
        if rows > EXPUNGE_LOG_LIMIT:
            rows -= self.prune_expunged(EXPUNGE_LOG_LIMIT)
        self.put("expunged_rows", rows)

    def prune_expunged(self, keep: int) -> int:
        """Drop the oldest entries of the expunge log beyond ``keep`` (whole
        MODSEQs at a time); ``expunged_floor`` rises to the highest MODSEQ
        dropped, in the same transaction.  Returns how many went."""
        row = self.db.execute(
            "SELECT modseq FROM expunged ORDER BY modseq DESC LIMIT 1 OFFSET ?", (keep,)
        ).fetchone()
        if row is None:
            return 0
        cut = int(row[0])
        gone = self.db.execute("DELETE FROM expunged WHERE modseq <= ?", (cut,)).rowcount
        if cut > self.expunged_floor():
            self.put("expunged_floor", cut)
        return int(gone)

    def claim_recent(self) -> list[int]:
        cursor = self.db.execute("UPDATE messages SET recent = 0 WHERE recent = 1 RETURNING uid")
        return [int(r[0]) for r in cursor]
