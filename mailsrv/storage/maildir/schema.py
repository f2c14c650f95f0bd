"""The shape of the per-folder index file: its schema, the upgrades of
older schemas in place, the checks an index must pass to be believed, and
what counts as damage (rebuild it) rather than an error (report it).

:mod:`.index` reads and writes through a checked connection; only this
module creates, upgrades or judges the file.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3

from mailsrv.storage.maildir.cache import CACHE_KINDS_TABLE
from mailsrv.storage.maildir.faults import crash_point
from mailsrv.storage.maildir.layout import fsync_dir

__all__ = [
    "SCHEMA_VERSION",
    "IndexCorrupt",
    "connect",
    "create",
    "is_corruption",
    "move_aside",
    "open_checked",
]

SCHEMA_VERSION = 4
#: The unseen messages' UIDs, kept by SQLite: SEARCH UNSEEN (the search
#: clients send most) reads only them.  The condition is spelt exactly as
#: :mod:`.sqlsearch` writes it, or SQLite does not use the index.
_UNSEEN_INDEX = (
    "CREATE INDEX IF NOT EXISTS messages_unseen ON messages (uid) WHERE instr(info, 'S') = 0"
)

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


def configure(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode = WAL")
    # NORMAL in WAL mode survives a killed process; the uidlist, not the
    # index, is what must survive a power cut.
    db.execute("PRAGMA synchronous = NORMAL")


def connect(path: str) -> sqlite3.Connection:
    """A connection in the mode every index connection uses."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    configure(db)
    return db


def open_checked(path: str) -> sqlite3.Connection:
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
        configure(db)
        _check(db)
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
    return db


def meta_int(db: sqlite3.Connection, key: str) -> int:
    """An integer meta value; :class:`IndexCorrupt` if missing or not one."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    value = None if row is None else row[0]
    if not isinstance(value, int):
        raise IndexCorrupt(f"meta {key} is {value!r}")
    return value


def _check(db: sqlite3.Connection) -> None:
    """Raise :class:`IndexCorrupt` unless ``db`` meets the invariants
    :func:`open_checked` promises (upgrading an older schema first)."""
    if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
        empty = IndexCorrupt("empty: its creation never committed")
        empty.empty = True
        raise empty
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is not None and row[0] in _UPGRADES:
        _upgrade(db, row[0])
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is None or row[0] != SCHEMA_VERSION:
        raise IndexCorrupt(f"schema {row!r}")
    values = {key: meta_int(db, key) for key in ("uidvalidity", "uidnext", "highest_modseq")}
    tables = {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
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


def create(path: str, uidvalidity: int, uidnext: int, highest_modseq: int) -> sqlite3.Connection:
    """Create a fresh, empty index, replacing whatever was at ``path``."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)
    # It caches headers and envelopes: private like the messages (SQLite
    # would make it 0644 under the usual umask; -wal and -shm follow it).
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    db = connect(path)
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
    return db
