"""Message bodies: stored once by content, counted, streamed in and out.

A body is addressed by the SHA-256 of its wire form (CRLF line ends), so a
COPY, a MOVE and the same message delivered to a thousand users all share
one stored body; each message row holds one reference, and the last
reference to go deletes the body.

:class:`IBlobStore` is what the rest of the backend needs from a blob
store, always inside the transaction that changes the message rows, so a
crash anywhere leaves references and bodies consistent.
:class:`PostgresBlobStore`, the shipped one, keeps the bodies in the same
database, in chunks; docs/scale-out.md says what an S3-compatible store
would change.

Bodies never sit whole in memory: :class:`Spool` reads a message from its
source in chunks into a temporary file (in memory only while small),
computing the digest on the way, and :meth:`IBlobStore.read_into` writes
one out the same way.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator, Mapping
from typing import IO, Any

from zope.interface import Interface, implementer

from mailsrv.errors import StorageError
from mailsrv.storage.wire import wire_chunks

__all__ = ["CHUNK", "IBlobStore", "PostgresBlobStore", "Spool", "new_spool"]

#: Bytes per stored chunk, and per read from a message source.
CHUNK = 256 * 1024
#: A spool moves from memory to a temporary file beyond this size.
SPOOL_IN_MEMORY = 1024 * 1024


def new_spool() -> IO[bytes]:
    """A temporary file that stays in memory while it is small."""
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)


class Spool:
    """A message read from its source, in wire form, with digest and size."""

    def __init__(self, source: IO[bytes]) -> None:
        self.file = new_spool()
        digest = hashlib.sha256()
        size = 0
        try:
            for data in wire_chunks(source, CHUNK):
                digest.update(data)
                size += len(data)
                self.file.write(data)
        except BaseException:
            self.file.close()
            raise
        self.digest = digest.digest()
        self.size = size

    def chunks(self) -> Iterator[bytes]:
        """The wire form in chunks of :data:`CHUNK`, from the start each time."""
        self.file.seek(0)
        while True:
            data = self.file.read(CHUNK)
            if not data:
                return
            yield data

    def close(self) -> None:
        self.file.close()


class IBlobStore(Interface):
    """Where message bodies live; every method runs inside the caller's
    database transaction (``conn``), in a worker thread."""

    def put(conn: Any, spool: Spool) -> bytes:
        """Add one reference to the body in ``spool``, storing it if it is
        new; return its digest."""

    def add_references(conn: Any, counts: Mapping[bytes, int]) -> None:
        """Add references to bodies already stored (COPY)."""

    def drop_references(conn: Any, counts: Mapping[bytes, int]) -> None:
        """Drop references; bodies left with none are deleted."""

    def read_into(conn: Any, digest: bytes, target: IO[bytes]) -> None:
        """Write the body to ``target`` chunk by chunk."""


@implementer(IBlobStore)
class PostgresBlobStore:
    """Bodies in the ``blobs`` and ``blob_chunks`` tables of the same database.

    Reference counts change under row locks taken in digest order, so two
    transactions touching the same bodies cannot deadlock each other.
    """

    def put(self, conn: Any, spool: Spool) -> bytes:
        row = conn.execute(
            "INSERT INTO blobs (digest, size, refcount) VALUES (%s, %s, 1) "
            "ON CONFLICT (digest) DO UPDATE SET refcount = blobs.refcount + 1 "
            "RETURNING (xmax = 0) AS inserted",
            (spool.digest, spool.size),
        ).fetchone()
        if row[0]:
            with conn.cursor() as cursor:
                with cursor.copy(
                    "COPY blob_chunks (digest, seq, data) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["bytea", "int4", "bytea"])
                    for seq, data in enumerate(spool.chunks()):
                        copy.write_row((spool.digest, seq, data))
        return spool.digest

    @staticmethod
    def _lock(conn: Any, digests: list[bytes]) -> None:
        conn.execute(
            "SELECT 1 FROM blobs WHERE digest = ANY(%s) ORDER BY digest FOR UPDATE",
            (digests,),
        )

    def add_references(self, conn: Any, counts: Mapping[bytes, int]) -> None:
        if not counts:
            return
        digests = sorted(counts)
        self._lock(conn, digests)
        updated = conn.execute(
            "UPDATE blobs b SET refcount = b.refcount + v.n "
            "FROM unnest(%s::bytea[], %s::bigint[]) AS v(digest, n) WHERE b.digest = v.digest",
            (digests, [counts[d] for d in digests]),
        ).rowcount
        if updated != len(digests):
            raise StorageError("a message body to copy is missing", code="SERVERBUG")

    def drop_references(self, conn: Any, counts: Mapping[bytes, int]) -> None:
        if not counts:
            return
        digests = sorted(counts)
        numbers = [counts[d] for d in digests]
        self._lock(conn, digests)
        conn.execute(
            "DELETE FROM blobs b USING unnest(%s::bytea[], %s::bigint[]) AS v(digest, n) "
            "WHERE b.digest = v.digest AND b.refcount <= v.n",
            (digests, numbers),
        )
        conn.execute(
            "UPDATE blobs b SET refcount = b.refcount - v.n "
            "FROM unnest(%s::bytea[], %s::bigint[]) AS v(digest, n) WHERE b.digest = v.digest",
            (digests, numbers),
        )

    def read_into(self, conn: Any, digest: bytes, target: IO[bytes]) -> None:
        # A few chunks per query: one round trip for most messages, bounded
        # memory for the rest.
        batch = 4
        seq = 0
        with conn.cursor(binary=True) as cursor:
            while True:
                rows = cursor.execute(
                    "SELECT seq, data FROM blob_chunks WHERE digest = %s AND seq >= %s "
                    "ORDER BY seq LIMIT %s",
                    (digest, seq, batch),
                ).fetchall()
                for number, data in rows:
                    target.write(data)
                    seq = number + 1
                if len(rows) < batch:
                    return
