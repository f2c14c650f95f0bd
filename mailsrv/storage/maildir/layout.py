"""How a Maildir++ folder lies on disk: file names, and reading and writing them.

The INBOX is the Maildir root (``cur``, ``new``, ``tmp``); folder ``A/B`` is
``.A.B`` beside them with a ``maildirfolder`` marker.  Message files are
named ``BASE:2,INFO``: a unique base name (with ``,S=`` and ``,W=`` sizes
where we wrote it) and flag letters.  Files are written to ``tmp/``, fsynced
and renamed into place, and the directory is fsynced, so a crash leaves
either the old state or the new one.  See docs/maildir.md.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import io
import itertools
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any

from mailsrv.errors import DiskFull, MailboxInUse, NoSuchMailbox
from mailsrv.storage.maildir.faults import crash_point
from mailsrv.storage.wire import to_crlf, wire_chunks

# Files of each folder.
INDEX_NAME = "mailsrv-index.sqlite"
UIDLIST_NAME = "mailsrv-uidlist"
DOVECOT_UIDLIST_NAME = "dovecot-uidlist"
KEYWORDS_NAME = "dovecot-keywords"
LOCK_NAME = "mailsrv-lock"
POP3_LOCK_NAME = "mailsrv-pop3-lock"
MAILDIRFOLDER_NAME = "maildirfolder"
# Files of each account, in its Maildir root.
SPECIAL_USE_NAME = "mailsrv-special-use"
#: RFC 5464 annotations: of a folder (in its directory, so they follow it
#: through a rename and go with it when it is deleted), and of the server
#: (in the root, beside INBOX's).
METADATA_NAME = "mailsrv-metadata"
SERVER_METADATA_NAME = "mailsrv-server-metadata"
UIDVALIDITY_NAME = "mailsrv-uidvalidity"
SUBSCRIPTIONS_NAME = "subscriptions"
STAGING_PREFIX = "mailsrv-tmp-"
TRASH_PREFIX = "mailsrv-trash-"

#: A directory whose mtime is this close to now may change again within the
#: same timestamp tick, so "unchanged" is not trusted for it.
TRUST_WINDOW_NS = 2_000_000_000
#: Files in tmp/ older than this are leftovers of crashed writers (the
#: Maildir specification says 36 hours).
TMP_MAX_AGE = 36 * 3600
CHUNK = 64 * 1024


# --------------------------------------------------------------------------
# File names


_counter = itertools.count()


def _hostname() -> str:
    host = socket.gethostname() or "localhost"
    return host.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


_HOST = _hostname()


def unique_name() -> str:
    """A Maildir unique name: time, microseconds, pid, counter, randomness, host."""
    micros = time.time_ns() // 1000
    seconds, usec = divmod(micros, 1_000_000)
    return f"{seconds}.M{usec}P{os.getpid()}Q{next(_counter)}R{os.urandom(4).hex()}.{_HOST}"


def split_filename(filename: str) -> tuple[str, str]:
    """(base, info letters) of a file name in ``cur/`` or ``new/``."""
    base, _, rest = filename.partition(":")
    info = rest[2:] if rest.startswith("2,") else ""
    return base, info


def size_fields(base: str) -> dict[str, int]:
    """The ``,S=`` and ``,W=`` fields of a base name (Maildir++/Dovecot)."""
    fields: dict[str, int] = {}
    for part in base.split(",")[1:]:
        key, eq, value = part.partition("=")
        if eq and key in ("S", "W") and value.isdigit():
            fields[key] = int(value)
    return fields


def wire_size(path: str, disk_size: int) -> int:
    """The size of a file once bare LFs are CRLF, reading it once in chunks."""
    extra = 0
    prev_cr = False
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            extra += chunk.count(b"\n") - chunk.count(b"\r\n")
            if prev_cr and chunk.startswith(b"\n"):
                extra -= 1
            prev_cr = chunk.endswith(b"\r")
    return disk_size + extra


class WireReader(io.RawIOBase):
    """A file stored with LF line ends, read as CRLF without loading it whole."""

    def __init__(self, path: str, size: int) -> None:
        super().__init__()
        self._path = path
        self._size = size
        self._file = open(path, "rb")
        self._pending = b""
        self._prev_cr = False
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = self._file.read(CHUNK)
            if not chunk:
                return 0
            self._pending = to_crlf(chunk, self._prev_cr)
            self._prev_cr = chunk.endswith(b"\r")
        view = memoryview(buffer).cast("B")
        count = min(len(view), len(self._pending))
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        self._pos += count
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence == io.SEEK_END:
            offset += self._size
        if offset < 0:
            raise ValueError("negative seek position")
        if offset < self._pos:
            self._file.seek(0)
            self._pending = b""
            self._prev_cr = False
            self._pos = 0
        while self._pos < offset:
            scratch = bytearray(min(CHUNK, offset - self._pos))
            if not self.readinto(scratch):
                break
        return self._pos

    def close(self) -> None:
        self._file.close()
        super().close()


@contextlib.contextmanager
def disk_full() -> Iterator[None]:
    """ENOSPC or EDQUOT while storing a message is :class:`DiskFull` (the
    caller removes what it wrote on the way out, so nothing is stored)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DiskFull("Not enough disk space to store the message") from exc


def write_tmp(tmp: str, source: IO[bytes], date_ns: int) -> tuple[str, int]:
    """Stream ``source`` into a new file in ``tmp`` as CRLF, dated
    ``date_ns``, and fsync it; returns (its path, its size)."""
    path = os.path.join(tmp, unique_name())
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            for data in wire_chunks(source, CHUNK):
                out.write(data)
                size += len(data)
                crash_point("append-writing")
            out.flush()
            os.utime(out.fileno(), ns=(date_ns, date_ns))
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return path, size


#: LF files up to this wire size are converted in one piece when opened.
WHOLE_LIMIT = 256 * 1024

#: CRLF files up to this size are read in one piece when opened.
RAW_WHOLE_LIMIT = 64 * 1024


def open_wire(path: str, raw: bool, size: int) -> IO[bytes]:
    """A message file read in wire form: as it is when stored ``raw`` (CRLF
    already), else converted: a small one at once (one read and one
    replace, where the chunked :class:`WireReader` costs several Python
    calls per read: most POP3 RETRs are a few KB), a larger one through
    :class:`WireReader` (``size``: its wire size).  A small file is read
    with one ``read`` on a plain descriptor: a buffered file object costs
    an ``ioctl``, an ``fstat`` and a second ``read`` to meet its end."""
    if raw:
        if size <= RAW_WHOLE_LIMIT:
            return io.BytesIO(_read_file(path, size))
        return open(path, "rb")
    if size <= WHOLE_LIMIT:
        return io.BytesIO(to_crlf(_read_file(path, size), False))
    return io.BufferedReader(WireReader(path, size))


def _read_file(path: str, size: int) -> bytes:
    """The whole file, which is expected to hold at most ``size`` octets."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, size + 1)
        if len(data) <= size:
            return data  # a regular file reads short only at its end
        parts = [data]  # longer than the index says: all of it all the same
        while chunk := os.read(fd, 1 << 16):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Directory signatures and dates


def dir_signature(path: str) -> tuple[str, bool]:
    """(signature, trusted): the directory's identity and whether it is old enough."""
    st = os.stat(path)
    trusted = time.time_ns() - st.st_mtime_ns >= TRUST_WINDOW_NS
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}", trusted


def signature_value(signature: str, trusted: bool) -> str:
    """How a directory signature is kept in the index meta table."""
    return f"{signature} {'trusted' if trusted else 'recent'}"


def signature_parts(value: object) -> tuple[str, bool]:
    """(signature, trusted) from a :func:`signature_value` as kept (None,
    nothing recorded: an empty signature, not trusted)."""
    signature, _, flag = str(value or "").partition(" ")
    return signature, flag == "trusted"


def needs_index(path: str) -> bool:
    """Whether opening the folder means indexing files first (no index yet)."""
    if os.path.exists(os.path.join(path, INDEX_NAME)):
        return False
    for sub in ("cur", "new"):
        try:
            with os.scandir(os.path.join(path, sub)) as entries:
                if any(not entry.name.startswith(".") for entry in entries):
                    return True
        except FileNotFoundError:
            continue
    return False


def datetime_ns(value: datetime.datetime | None) -> int:
    """An internal date as an mtime: whole seconds, as IMAP's INTERNALDATE has."""
    if value is None:
        return time.time_ns() // 1_000_000_000 * 1_000_000_000
    if value.tzinfo is None:
        value = value.astimezone()
    delta = value - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000


def ns_datetime(value: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(value // 1_000_000_000, datetime.UTC)


def saved_datetime(seconds: int | None) -> datetime.datetime | None:
    """An index row's save date (UTC seconds, None: not known) as a datetime."""
    return None if seconds is None else datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def saved_now() -> int:
    """A save date for a message arriving now (RFC 8514 3)."""
    return int(time.time())


# --------------------------------------------------------------------------
# Durable writes


def fsync_dir(path: str) -> None:
    """Make a rename or link in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``: write a temporary file, fsync, rename."""
    tmp = f"{path}.tmp.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(path) or ".")


def touch(path: str) -> None:
    """Create an empty file, private like everything else in the tree."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def lock_maildrop(path: str, name: str) -> Callable[[], None]:
    """Take the POP3 maildrop lock of folder ``path`` (named ``name``) for a
    session; return its release.

    An ``flock`` of ``mailsrv-pop3-lock``, held for the whole session
    (so not the short-lived ``mailsrv-lock``): every mailsrv process on
    this Maildir (two daemons, an old one still draining while a new
    one starts) sees it, and the kernel drops it if the holder dies.
    Raises :class:`MailboxInUse` when another session has it.
    """
    try:
        fd = os.open(os.path.join(path, POP3_LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:
        raise NoSuchMailbox(f"mailbox {name!r} no longer exists") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise MailboxInUse("maildrop is in use by another POP3 session") from None
    except BaseException:
        os.close(fd)
        raise
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            os.close(fd)  # drops the lock

    return release
