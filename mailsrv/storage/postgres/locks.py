"""POP3's maildrop lock across nodes: PostgreSQL advisory locks.

RFC 1939 8 lets a server refuse a second session on a maildrop; with
several nodes the lock must be visible to all of them, and must vanish when
a node dies.  Each node keeps one connection for these locks and takes a
session-level advisory lock per POP3 session on it: PostgreSQL drops every
lock of a connection that ends, so a node killed with SIGKILL (or cut off
from the database) frees its users' maildrops.

Advisory locks are re-entrant on one connection, so two sessions of one
node are kept apart by :mod:`mailsrv.storage.maildrop`'s in-process lock,
which is taken first; this module only keeps the nodes apart.

If the lock connection drops while sessions hold locks, those locks are
gone; the sessions keep running (their QUIT still only flags and expunges
what their client chose), and new logins take fresh locks on a new
connection.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from twisted.internet.defer import Deferred

from mailsrv.errors import MailboxInUse, StorageError
from mailsrv.log import get_logger
from mailsrv.storage.postgres.db import Database, unavailable
from mailsrv.storage.postgres.mailbox import then

__all__ = ["AdvisoryLocks", "lock_key"]

log = get_logger(__name__)


def lock_key(user: str) -> int:
    """The 64-bit advisory lock key of a user's maildrop."""
    digest = hashlib.sha256(b"mailsrv-pop3\x00" + user.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class AdvisoryLocks:
    """The node's lock connection, used from worker threads one at a time."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._mutex = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        #: Bumped with every new connection: a release for a lock taken on
        #: an earlier connection has nothing left to release.
        self._generation = 0

    def _run(self, statement: str, key: int, generation: int | None = None) -> tuple[bool, int]:
        with self._mutex:
            if generation is not None and generation != self._generation:
                return False, self._generation  # that connection is gone, its locks with it
            conn = self._conn
            if conn is None or conn.broken or conn.closed:
                conn = self._conn = self._db.connect(application_name="mailsrv-locks")
                self._generation += 1
            try:
                row = conn.execute(statement, (key,)).fetchone()
                assert row is not None
            except psycopg.OperationalError as exc:
                conn.close()
                self._conn = None
                raise unavailable(exc) from exc
            return bool(row[0]), self._generation

    def acquire(self, user: str) -> Any:
        """Lock ``user``'s maildrop; answers with the release function.

        Raises :class:`MailboxInUse` when a session on another node holds it.
        """
        key = lock_key(user)

        def taken(result: tuple[bool, int]) -> Callable[[], None]:
            got, generation = result
            if not got:
                raise MailboxInUse("maildrop is in use by another POP3 session")
            return self._releaser(key, generation)

        found = self._db.in_thread(self._run, "SELECT pg_try_advisory_lock(%s)", key)
        return then(found, taken)

    def _releaser(self, key: int, generation: int) -> Callable[[], Any]:
        released = False

        def release() -> Any:
            """Unlock; answers a Deferred that fires (never fails) once done."""
            nonlocal released
            if released or self._db.closed:
                return None
            released = True
            try:
                result = self._db.in_thread(
                    self._run, "SELECT pg_advisory_unlock(%s)", key, generation
                )
            except StorageError as exc:
                log.info("POP3 lock release failed: {e}", e=exc)
                return None
            if isinstance(result, Deferred):
                result.addCallbacks(lambda _: None, self._release_failed)
                return result
            return None

        return release

    @staticmethod
    def _release_failed(failure: Any) -> None:
        # The connection is gone (and its locks with it) or the server is away.
        log.info("POP3 lock release failed: {e}", e=failure.value)

    def close(self) -> None:
        with self._mutex:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
