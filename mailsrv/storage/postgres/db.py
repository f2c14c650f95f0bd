"""Connections to PostgreSQL, used only from a bounded pool of worker threads.

The daemon runs on twistd's default (epoll) reactor, so queries run on
synchronous psycopg connections in a thread pool of ``pool_size`` threads,
one connection per thread, never on the reactor thread
(docs/scale-out.md has the measurements behind this choice).  Without a
reactor (``mailsrv deliver``, tools) the same work runs in the caller's
thread.

Each unit of work is a function ``work(conn, *args)`` run inside one
transaction.  Failures are translated once, here:

* a lost or refused connection (PostgreSQL restarting, unreachable) becomes
  :class:`~mailsrv.errors.TemporaryFailure` (IMAP ``NO [UNAVAILABLE]``,
  POP3 ``-ERR [SYS/TEMP]``, ``mailsrv deliver`` exit 75);
* serialization failures and deadlocks are retried a few times;
* a connection found dead before anything was sent in this transaction
  (left over from before a server restart) is replaced and the work run
  once more, so the first command after a restart does not fail.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from mailsrv.errors import TemporaryFailure
from mailsrv.log import get_logger

__all__ = ["Database", "connection_kwargs", "unavailable"]

log = get_logger(__name__)

T = TypeVar("T")

#: Serialization failures and deadlocks are retried this many times.
RETRIES = 5
#: Seconds to wait for a connection unless the DSN says otherwise.
CONNECT_TIMEOUT = 10

#: Isolation levels a unit of work may ask for.
READ_COMMITTED = psycopg.IsolationLevel.READ_COMMITTED
REPEATABLE_READ = psycopg.IsolationLevel.REPEATABLE_READ


def connection_kwargs(dsn: str, application_name: str) -> dict[str, Any]:
    """Connection parameters mailsrv adds unless the DSN sets them itself."""
    given = psycopg.conninfo.conninfo_to_dict(dsn)
    extra: dict[str, Any] = {}
    if "connect_timeout" not in given:
        extra["connect_timeout"] = CONNECT_TIMEOUT
    if "application_name" not in given:
        extra["application_name"] = application_name
    return extra


def unavailable(exc: BaseException) -> TemporaryFailure:
    """The error a client sees while the database cannot be reached."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TemporaryFailure(f"mail database unavailable: {reason}")


class _Thread(threading.local):
    conn: psycopg.Connection[Any] | None = None
    generation = -1


class Database:
    """A PostgreSQL database reached through worker threads.

    :param dsn: a libpq connection string or URI.
    :param pool_size: worker threads, hence connections, at most.
    :param reactor: runs the work in threads and answers with Deferreds;
        without one, :meth:`run` works in the calling thread.
    """

    def __init__(self, dsn: str, pool_size: int = 10, reactor: Any = None) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.reactor = reactor
        self._kwargs = connection_kwargs(dsn, "mailsrv")
        self._thread = _Thread()
        self._pool: ThreadPool | None = None
        self._shutdown_trigger: Any = None
        #: Bumped whenever a connection is found broken: every thread then
        #: replaces its own before its next use (after a server restart they
        #: are all dead, and finding that out one failed command at a time
        #: would fail one command per thread).
        self._generation = 0
        self._mutex = threading.Lock()
        self._open: set[psycopg.Connection[Any]] = set()
        self.closed = False

    def __repr__(self) -> str:
        return f"<Database pool_size={self.pool_size}>"

    @property
    def pool(self) -> ThreadPool | None:
        """The worker threads, once the first query started them (for the metrics)."""
        return self._pool

    # -- threads ------------------------------------------------------------------

    def _start(self) -> ThreadPool:
        if self._pool is None:
            if self.closed:
                raise TemporaryFailure("mail database connection is shut down")
            self._pool = ThreadPool(minthreads=0, maxthreads=self.pool_size, name="mailsrv-pg")
            self._pool.start()
            self._shutdown_trigger = self.reactor.addSystemEventTrigger(
                "during", "shutdown", self.close
            )
        return self._pool

    def in_thread(self, function: Callable[..., T], *args: Any) -> Deferred[T] | T:
        """Run ``function(*args)`` in a worker thread (or here, without a reactor)."""
        if self.reactor is None:
            return function(*args)
        return deferToThreadPool(self.reactor, self._start(), function, *args)

    def run(
        self,
        work: Callable[..., T],
        *args: Any,
        isolation: psycopg.IsolationLevel = READ_COMMITTED,
        read_only: bool = False,
        transaction: bool = True,
    ) -> Deferred[T] | T:
        """Run ``work(conn, *args)`` in one transaction in a worker thread.

        ``transaction=False`` is for work of one statement: it runs on its
        own (autocommit), saving the BEGIN and COMMIT round trips.
        """
        return self.in_thread(self.call, work, args, isolation, read_only, transaction)

    def close(self) -> None:
        """Stop the threads and close every connection (daemon shutdown)."""
        if self.closed:
            return
        self.closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
        if self._shutdown_trigger is not None and self.reactor is not None:
            try:
                self.reactor.removeSystemEventTrigger(self._shutdown_trigger)
            except (ValueError, KeyError):
                pass  # running as that trigger
            self._shutdown_trigger = None
        with self._mutex:
            connections, self._open = self._open, set()
        for conn in connections:
            conn.close()

    # -- connections ----------------------------------------------------------------

    def connect(self, **overrides: Any) -> psycopg.Connection[Any]:
        """A new autocommit connection; the caller owns it."""
        kwargs = dict(self._kwargs)
        kwargs.update(overrides)
        try:
            return psycopg.connect(self.dsn, autocommit=True, **kwargs)
        except (psycopg.OperationalError, OSError, ValueError) as exc:
            # ValueError: a host name that cannot even be looked up.
            raise unavailable(exc) from exc

    def _connection(self) -> tuple[psycopg.Connection[Any], bool]:
        """This thread's connection, and whether it was made just now."""
        local = self._thread
        conn = local.conn
        stale = conn is not None and local.generation != self._generation
        if conn is not None and (stale or conn.broken or conn.closed):
            self._discard(conn)
            conn = None
        if conn is not None:
            return conn, False
        conn = self.connect()
        with self._mutex:
            if self.closed:
                conn.close()
                raise TemporaryFailure("mail database connection is shut down")
            self._open.add(conn)
        local.conn = conn
        local.generation = self._generation
        return conn, True

    def _discard(self, conn: psycopg.Connection[Any]) -> None:
        with self._mutex:
            self._open.discard(conn)
        if self._thread.conn is conn:
            self._thread.conn = None
        try:
            conn.close()
        except psycopg.Error:  # pragma: no cover - closing a dead socket
            pass

    # -- one unit of work -------------------------------------------------------------

    def _connection_failed(
        self, conn: psycopg.Connection[Any], exc: Exception, give_up: bool
    ) -> None:
        """A unit of work failed on its connection: raise :func:`unavailable`,
        unless the connection went stale and one retry on a new one is
        allowed (``give_up`` false)."""
        if not (conn.broken or conn.closed):
            raise unavailable(exc) from exc
        self._discard(conn)
        with self._mutex:
            self._generation += 1
        if give_up:
            raise unavailable(exc) from exc

    def call(
        self,
        work: Callable[..., T],
        args: tuple[Any, ...] = (),
        isolation: psycopg.IsolationLevel = READ_COMMITTED,
        read_only: bool = False,
        transaction: bool = True,
    ) -> T:
        """Run ``work(conn, *args)`` in a transaction, here and now.

        ``work`` may be run more than once (a retried deadlock, a stale
        connection), so it must read its inputs afresh each time.
        """
        attempt = 0
        stale_retry_done = False
        while True:
            conn, fresh = self._connection()
            committing = False
            try:
                if not transaction:
                    return work(conn, *args)
                _configure(conn, isolation, read_only)
                with conn.transaction():
                    result = work(conn, *args)
                    committing = True
                return result
            except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected) as exc:
                attempt += 1
                if attempt > RETRIES:
                    raise TemporaryFailure(f"mail database busy: {exc}") from exc
                continue
            except pg_errors.UndefinedTable as exc:
                raise TemporaryFailure(
                    f"the mail database has no mailsrv schema ({exc}): run `mailsrv db upgrade`"
                ) from exc
            except (pg_errors.QueryCanceled, pg_errors.LockNotAvailable) as exc:
                raise TemporaryFailure(f"mail database busy: {exc}") from exc
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                # The commit's fate is unknown, or a new connection failed
                # too: the server is really away.
                self._connection_failed(conn, exc, committing or fresh or stale_retry_done)
                stale_retry_done = True
                log.info("mail database connection lost ({e}); reconnecting", e=str(exc).strip())


def _configure(
    conn: psycopg.Connection[Any], isolation: psycopg.IsolationLevel, read_only: bool
) -> None:
    """Set the transaction characteristics a unit of work asked for."""
    if conn.isolation_level != isolation:
        conn.isolation_level = isolation
    if conn.read_only != read_only:
        conn.read_only = read_only
