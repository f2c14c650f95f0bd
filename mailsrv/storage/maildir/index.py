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

from mailsrv.storage.maildir.cache import CACHE_KINDS_TABLE, CachedValues
from mailsrv.storage.maildir.faults import crash_point
from mailsrv.storage.maildir.layout import fsync_dir

SCHEMA_VERSION = 4
#: The unseen messages' UIDs, kept by SQLite: SEARCH UNSEEN (the search
#: clients send most) reads only them.  The condition is spelt exactly as
#: :mod:`.sqlsearch` writes it, or SQLite does not use the index.
_UNSEEN_INDEX = (
    "CREATE INDEX IF NOT EXISTS messages_unseen ON messages (uid) WHERE instr(info, 'S') = 0"
)
#: SQL of each ``IMessageColumns`` column; the date is the floor of the
#: mtime in seconds (SQLite's ``/`` truncates towards zero, and a date
#: before 1970 is negative).
_COLUMN_SQL = {
    "flags": "info",
    "dates": "(mtime_ns - (mtime_ns % 1000000000 + 1000000000) % 1000000000) / 1000000000",
    "sizes": "size",
    "modseqs": "modseq",
}

#: The UIDs of the messages with each system flag (\\Seen, \\Flagged,
#: \\Answered, \\Deleted, \\Draft), so ``SEARCH FLAGGED`` reads 5,000 index
#: entries rather than testing 100,000 rows' letters (an entry of about 10
#: octets per message with the flag); spelt as :mod:`.sqlsearch` writes the
#: test, as for the unseen index.
_FLAG_INDEXES = tuple(
    f"CREATE INDEX IF NOT EXISTS messages_{name} ON messages (uid) "
    f"WHERE instr(info, '{letter}') > 0"
    for name, letter in (
        ("seen", "S"),
        ("flagged", "F"),
        ("answered", "R"),
        ("deleted", "T"),
        ("draft", "D"),
    )
)
#: Older schemas :meth:`Index.open` brings up to date in place (what each
#: lacks, added without touching the rest), rather than rebuilding; each
#: step is one statement or several.
_UPGRADES: dict[int, str | tuple[str, ...]] = {
    # 2: messages.saved, the RFC 8514 save date (NULL: not known).
    1: "ALTER TABLE messages ADD COLUMN saved INTEGER",
    # 3: the index of unseen messages.
    2: _UNSEEN_INDEX,
    # 4: the client-named cache kinds, with those already cached; the
    # indexes of the system flags.
    3: (
        *_FLAG_INDEXES,
        CACHE_KINDS_TABLE,
        "INSERT OR IGNORE INTO cache_kinds SELECT DISTINCT kind, 0 FROM cache "
        "WHERE instr(kind, ':') > 0",
    ),
}

#: Entries the expunge log keeps (RFC 7162 5.3 suggests bounding it): about
#: 3 MB of index at most.  Older ones are dropped at the next expunge and
#: the ``expunged_floor`` meta value rises to the highest MODSEQ dropped.
EXPUNGE_LOG_LIMIT = 100_000


class IndexCorrupt(Exception):
    """The index file cannot be used and must be rebuilt from the files.

    Raised by :meth:`Index.open` with the connection still open in
    ``connection``: closing it would apply the WAL to the damaged file and
    delete it, so the caller moves the files aside first, then calls
    :meth:`close`.
    """

    connection: sqlite3.Connection | None = None
    #: The file holds no table at all: a creation that never committed
    #: (its process killed), with nothing in it to keep or report.
    empty: bool = False

    def close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(sqlite3.Error):
                self.connection.close()
            self.connection = None


#: SQLite's primary result codes that mean the file itself is damaged
#: (SQLITE_CORRUPT, SQLITE_FORMAT, SQLITE_NOTADB): rebuilding cures them.
_DAMAGE_CODES = frozenset({11, 24, 26})


def is_corruption(exc: BaseException) -> bool:
    """Whether ``exc`` says the index is damaged or inconsistent (rebuild it).

    Corruption can surface at any query, not only at open: a page read deep
    inside a command answers "database disk image is malformed".  A busy,
    full or unwritable database is not damage (rebuilding would not help,
    or would throw away a healthy index), so those stay errors.
    """
    if isinstance(exc, IndexCorrupt | sqlite3.IntegrityError):
        return True
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _DAMAGE_CODES:
        return True
    if type(exc) is sqlite3.DatabaseError:
        return True  # what the sqlite3 module raises for those codes
    # A damaged schema shows as missing tables rather than as SQLITE_CORRUPT.
    return isinstance(exc, sqlite3.OperationalError) and str(exc).startswith("no such table")


def move_aside(path: str) -> str:
    """Rename a damaged index and its -wal and -shm to ``PATH.broken``
    (``.broken-wal``, ``.broken-shm``) for diagnosis; returns the new name.

    Only the latest damaged index is kept: an older one is replaced, so
    repeated damage cannot fill the disk.
    """
    kept = path + ".broken"
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(kept + suffix)
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            if suffix == "-journal":
                os.unlink(path + suffix)
            else:
                os.rename(path + suffix, kept + suffix)
    fsync_dir(os.path.dirname(path) or ".")
    return kept


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

_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE messages (
    uid INTEGER PRIMARY KEY,
    base TEXT NOT NULL UNIQUE,
    filename TEXT NOT NULL,
    info TEXT NOT NULL,
    mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    raw INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    recent INTEGER NOT NULL,
    pop3_uidl TEXT,
    saved INTEGER
);
CREATE INDEX messages_modseq ON messages (modseq);
CREATE INDEX messages_recent ON messages (recent) WHERE recent = 1;
{_UNSEEN_INDEX};
{";".join(_FLAG_INDEXES)};
CREATE TABLE expunged (uid INTEGER PRIMARY KEY, modseq INTEGER NOT NULL);
CREATE INDEX expunged_modseq ON expunged (modseq);
CREATE TABLE cache (
    uid INTEGER NOT NULL,
    kind TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (uid, kind)
) WITHOUT ROWID;
{CACHE_KINDS_TABLE};
CREATE TABLE counters (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    messages INTEGER NOT NULL,
    unseen INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    size INTEGER NOT NULL,
    recent INTEGER NOT NULL
);
INSERT INTO counters VALUES (0, 0, 0, 0, 0, 0);
CREATE TRIGGER messages_insert AFTER INSERT ON messages BEGIN
    UPDATE counters SET
        messages = messages + 1,
        unseen = unseen + (instr(NEW.info, 'S') = 0),
        deleted = deleted + (instr(NEW.info, 'T') > 0),
        size = size + NEW.size,
        recent = recent + NEW.recent
    WHERE id = 0;
END;
CREATE TRIGGER messages_delete AFTER DELETE ON messages BEGIN
    UPDATE counters SET
        messages = messages - 1,
        unseen = unseen - (instr(OLD.info, 'S') = 0),
        deleted = deleted - (instr(OLD.info, 'T') > 0),
        size = size - OLD.size,
        recent = recent - OLD.recent
    WHERE id = 0;
    DELETE FROM cache WHERE uid = OLD.uid;
END;
CREATE TRIGGER messages_update AFTER UPDATE OF info, size, recent ON messages BEGIN
    UPDATE counters SET
        unseen = unseen - (instr(OLD.info, 'S') = 0) + (instr(NEW.info, 'S') = 0),
        deleted = deleted - (instr(OLD.info, 'T') > 0) + (instr(NEW.info, 'T') > 0),
        size = size - OLD.size + NEW.size,
        recent = recent - OLD.recent + NEW.recent
    WHERE id = 0;
END;
INSERT INTO meta VALUES ('schema', {SCHEMA_VERSION});
"""


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
    def _connect(cls, path: str) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        cls._configure(db)
        return db

    @staticmethod
    def _configure(db: sqlite3.Connection) -> None:
        db.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode survives a killed process; the uidlist, not the
        # index, is what must survive a power cut.
        db.execute("PRAGMA synchronous = NORMAL")

    @classmethod
    def open(cls, path: str) -> Index:
        """Open an existing index; :class:`IndexCorrupt` if unusable.

        Besides the file being readable, a few invariants are checked at
        the cost of an index lookup each, so an index that is readable but
        does not add up (a WAL from another time replayed onto it) is
        rebuilt instead of believed.
        """
        if not os.path.exists(path):
            raise IndexCorrupt("missing")
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        try:
            cls._configure(db)
            index = cls._checked(db, path)
        except IndexCorrupt as exc:
            exc.connection = db
            raise
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                db.close()
                raise
            corrupt = IndexCorrupt(str(exc))
            corrupt.connection = db
            raise corrupt from exc
        except BaseException:
            db.close()
            raise
        return index

    @classmethod
    def _checked(cls, db: sqlite3.Connection, path: str) -> Index:
        """The index on ``db`` if it meets the invariants :meth:`open` checks."""
        if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
            empty = IndexCorrupt("empty: its creation never committed")
            empty.empty = True
            raise empty
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is not None and row[0] in _UPGRADES:
            cls._upgrade(db, row[0])
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None or row[0] != SCHEMA_VERSION:
            raise IndexCorrupt(f"schema {row!r}")
        index = cls(db, path)
        values = {key: index.get_int(key) for key in ("uidvalidity", "uidnext", "highest_modseq")}
        tables = {
            str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        missing = {"meta", "messages", "expunged", "cache", "cache_kinds", "counters"} - tables
        if missing:
            raise IndexCorrupt(f"tables missing: {sorted(missing)}")
        if db.execute("SELECT count(*) FROM counters").fetchone()[0] != 1:
            raise IndexCorrupt("counters missing")
        # One aggregate a query: SQLite answers each from an index then.
        top_uid = db.execute("SELECT max(uid) FROM messages").fetchone()[0]
        top_modseq = db.execute("SELECT max(modseq) FROM messages").fetchone()[0]
        if top_uid is not None and top_uid >= values["uidnext"]:
            raise IndexCorrupt(f"UID {top_uid} is not below UIDNEXT {values['uidnext']}")
        if top_modseq is not None and top_modseq > values["highest_modseq"]:
            raise IndexCorrupt(f"MODSEQ {top_modseq} is above HIGHESTMODSEQ")
        return index

    @staticmethod
    def _upgrade(db: sqlite3.Connection, found: int) -> None:
        """Bring an older schema up to date in one transaction (the caller
        holds the folder lock, as for every write)."""
        db.execute("BEGIN IMMEDIATE")
        try:
            for version in range(found, SCHEMA_VERSION):
                step = _UPGRADES[version]
                for statement in (step,) if isinstance(step, str) else step:
                    db.execute(statement)
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION,))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @classmethod
    def create(cls, path: str, uidvalidity: int, uidnext: int, highest_modseq: int) -> Index:
        """Create a fresh, empty index, replacing whatever was at ``path``."""
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + suffix)
        # It caches headers and envelopes: private like the messages (SQLite
        # would make it 0644 under the usual umask; -wal and -shm follow it).
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        db = cls._connect(path)
        crash_point("index-creating")
        # A new index knows no expunge before its first MODSEQ: a rebuilt
        # one must not claim that nothing was expunged before it.
        meta = (
            f"INSERT INTO meta VALUES ('uidvalidity', {int(uidvalidity)});"
            f"INSERT INTO meta VALUES ('uidnext', {int(uidnext)});"
            f"INSERT INTO meta VALUES ('highest_modseq', {int(highest_modseq)});"
            f"INSERT INTO meta VALUES ('expunged_floor', {int(highest_modseq) - 1});"
            "INSERT INTO meta VALUES ('expunged_rows', 0);"
        )
        db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + meta + "COMMIT;")
        return cls(db, path)

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
        value = self.get(key)
        if not isinstance(value, int):
            raise IndexCorrupt(f"meta {key} is {value!r}")
        return value

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

    def files_from(self, uid: int, count: int) -> dict[int, tuple[str, bool, int]]:
        """:meth:`file_of` of ``uid`` and of the messages after it, ``count``
        in all, by UID (one query for a client reading messages in order)."""
        cursor = self.db.execute(
            "SELECT uid, filename, raw, size FROM messages WHERE uid >= ? ORDER BY uid LIMIT ?",
            (uid, count),
        )
        return {int(u): (str(f), bool(r), int(s)) for u, f, r, s in cursor}

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
