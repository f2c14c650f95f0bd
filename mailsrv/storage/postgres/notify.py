"""The node's LISTEN connection: changes made on other nodes wake sessions here.

Every change to a mailbox sends ``NOTIFY mailsrv, 'mailbox_id modseq user'``
in its transaction.  Each node keeps one connection that LISTENs on that
channel.  Its socket is watched by the reactor itself (an
``IReadDescriptor``): when it is readable, libpq's non-blocking
``consume_input`` takes in what arrived and the notifications are handed to
the storage, which catches up the mailboxes it watches.  No thread sits
waiting, and no notification waits for a poll interval.

Connecting (and the LISTEN statement) runs in a worker thread.  When the
connection is lost -- the server restarted, a network cut, an
administrator's ``pg_terminate_backend`` -- notifications sent meanwhile
are lost with it, so after every (re)connection ``on_connected`` makes every
watched mailbox catch up from the MODSEQ its listeners last heard: changes
are recovered from the MODSEQ and expunge log, not missed.  Reconnection is
retried with a growing delay (0.1 s up to 5 s).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import psycopg
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from mailsrv.log import get_logger
from mailsrv.storage.postgres.db import Database
from mailsrv.storage.postgres.queries import CHANNEL

__all__ = ["Notifier"]

log = get_logger(__name__)

FIRST_DELAY = 0.1
MAX_DELAY = 5.0

#: TCP keepalives, so a dead peer behind a silent network is noticed in
#: about a minute rather than two hours (ignored on Unix sockets).
_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


@implementer(IReadDescriptor)
class Notifier:
    """Receives the mailsrv channel's notifications on the reactor thread."""

    def __init__(
        self,
        db: Database,
        reactor: Any,
        clock: Any,
        on_notify: Callable[[str], None],
        on_connected: Callable[[], None],
    ) -> None:
        self._db = db
        self._reactor = reactor
        self._clock = clock
        self._on_notify = on_notify
        self._on_connected = on_connected
        self._conn: psycopg.Connection[Any] | None = None
        self._fd = -1
        self._delay = FIRST_DELAY
        self._retry: Any = None
        self._connecting = False
        self._stopped = False
        #: Connections made so far (tests and logs tell reconnections apart).
        self.connections = 0

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def start(self) -> None:
        self._connect()

    def _connect(self) -> None:
        self._retry = None
        if self._stopped or self._connecting:
            return
        self._connecting = True
        d = self._db.in_thread(self._open)
        assert isinstance(d, Deferred)  # a notifier exists only with a reactor
        d.addCallbacks(self._opened, self._failed)

    def _open(self) -> psycopg.Connection[Any]:
        given = psycopg.conninfo.conninfo_to_dict(self._db.dsn)
        extra = {k: v for k, v in _KEEPALIVES.items() if k not in given}
        conn = self._db.connect(application_name="mailsrv-listen", **extra)
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _opened(self, conn: psycopg.Connection[Any]) -> None:
        self._connecting = False
        if self._stopped:
            conn.close()
            return
        self._conn = conn
        # The reactor watches a duplicate of libpq's socket: libpq closes
        # its own descriptor when the connection fails, and the number could
        # be reused at once; the duplicate stays valid until removed here.
        self._fd = os.dup(conn.pgconn.socket)
        self._delay = FIRST_DELAY
        self.connections += 1
        if self.connections > 1:
            log.info("mail database notifications: connected again")
        self._reactor.addReader(self)
        self._on_connected()
        # Anything that arrived with the LISTEN's answer is already buffered.
        self.doRead()

    def _failed(self, failure: Failure) -> None:
        self._connecting = False
        if self._stopped:
            return
        log.warn(
            "mail database notifications unavailable ({e}); retrying in {delay}s",
            e=failure.getErrorMessage(),
            delay=self._delay,
        )
        self._schedule()

    def _schedule(self) -> None:
        if self._stopped or self._retry is not None:
            return
        self._retry = self._clock.callLater(self._delay, self._connect)
        self._delay = min(self._delay * 2, MAX_DELAY)

    # -- IReadDescriptor ---------------------------------------------------------------

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "mailsrv-postgresql-listen"

    def doRead(self) -> Any:
        conn = self._conn
        if conn is None:
            return None
        pgconn = conn.pgconn
        try:
            pgconn.consume_input()
        except psycopg.OperationalError as exc:
            self._lost(str(exc))
            return None
        while True:
            notice = pgconn.notifies()
            if notice is None:
                break
            try:
                self._on_notify(notice.extra.decode("utf-8"))
            except Exception:
                log.failure("handling notification {n!r} failed", n=notice.extra)
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            self._lost("connection closed")
        return None

    def connectionLost(self, reason: Failure) -> None:
        if self._conn is not None:
            self._lost(reason.getErrorMessage())

    def _lost(self, why: str) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._forget_socket()
        try:
            conn.close()
        except psycopg.Error:  # pragma: no cover - a dead socket
            pass
        if self._stopped:
            return
        log.warn("mail database notifications lost ({why}); reconnecting", why=why.strip())
        self._schedule()

    def stop(self) -> None:
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        conn, self._conn = self._conn, None
        if conn is not None:
            self._forget_socket()
            conn.close()

    def _forget_socket(self) -> None:
        self._reactor.removeReader(self)
        os.close(self._fd)
        self._fd = -1
