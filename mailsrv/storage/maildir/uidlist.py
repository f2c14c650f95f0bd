"""``mailsrv-uidlist``: the durable record of a folder's UIDs.

The truth for UIDVALIDITY, UIDNEXT and the UID of each file, in Dovecot's
``dovecot-uidlist`` v3 format.  It is append-only between compactions: a
UID is written (and fsynced) here before a file becomes visible with it, so
a crash or a lost index can never hand it out again (RFC 3501 2.3.1.1).
A list torn by a crash in mid-append is read with care (:class:`UidListData`)
and repaired before anything is appended to it (see
:mod:`mailsrv.storage.maildir.recovery`).
"""

from __future__ import annotations

import fcntl
import os
import re
import time
import uuid
from collections.abc import Iterable, Sequence

import attrs

from mailsrv.errors import TemporaryFailure
from mailsrv.storage.maildir.layout import UIDVALIDITY_NAME, write_atomically


class UidListTorn(TemporaryFailure):
    """The UID list does not end with a newline: it must be repaired before
    anything is appended to it."""


@attrs.define
class UidListData:
    """What a uidlist file says: header values and UID per base name.

    ``damaged`` counts complete lines that are not records (garbage, NUL
    bytes): a list with such lines cannot be trusted to name every UID it
    gave out.  ``torn`` is set when the last line has no newline (a crash
    in mid-append, or a file cut short): that line is never taken as a
    record, but the UID it held is in ``reserved`` and, when legible, in
    ``torn_uid`` with the legible start of its base name in ``torn_base``.
    """

    uidvalidity: int
    uidnext: int
    #: The header's ``G``: the folder's GUID (RFC 8474's MAILBOXID), "" if none.
    guid: str = ""
    entries: dict[str, int] = attrs.Factory(dict)
    pop3_uidls: dict[str, str] = attrs.Factory(dict)
    lines: int = 0
    damaged: int = 0
    torn: bool = False
    torn_uid: int | None = None
    torn_base: str = ""
    reserved: int = 0

    @property
    def next_free(self) -> int:
        """The lowest UID above the header's N, every line and a torn line."""
        highest = max(max(self.entries.values(), default=0), self.reserved)
        return max(self.uidnext, highest + 1)


#: What a GUID in the header may be: an RFC 8474 objectid, as Dovecot's
#: 32 hex digits are.
_GUID = re.compile(r"[A-Za-z0-9_-]{1,255}")


def folder_guid(data: UidListData) -> str:
    """The folder's GUID: the header's, else one worked out from the
    UIDVALIDITY (a list written without one, by an older mailsrv or a
    migration), which stays the same when the list is rewritten with it.
    UIDVALIDITYs are never reused within an account (:func:`mint_uidvalidity`),
    so no two folders of it share one (RFC 8474 4)."""
    if data.guid:
        return data.guid
    return uuid.uuid5(_GUID_NAMESPACE, f"uidvalidity:{data.uidvalidity}").hex


_GUID_NAMESPACE = uuid.UUID("6f1d6bb4-6a57-4b8a-9a43-2c6f1e0d9a11")


def _split_complete(text: str) -> tuple[list[str], str]:
    """(complete lines, the text after the last newline)."""
    lines = text.split("\n")
    return lines[:-1], lines[-1]


def _header_v3(fields: Iterable[str]) -> tuple[int, int, str]:
    """UIDVALIDITY, UIDNEXT and GUID of a v3 header's fields (0, 0, "": absent)."""
    uidvalidity = uidnext = 0
    guid = ""
    for field in fields:
        if field[:1] == "V" and field[1:].isdigit():
            uidvalidity = int(field[1:])
        elif field[:1] == "N" and field[1:].isdigit():
            uidnext = int(field[1:])
        elif field[:1] == "G" and _GUID.fullmatch(field[1:]):
            guid = field[1:]
    return uidvalidity, uidnext, guid


def _parse_uidlist(data: bytes) -> UidListData | None:
    """Parse a ``dovecot-uidlist`` (v1 or v3); None if the header is unusable.

    A header without its newline is unusable too: a cut ``N1543`` may read
    as ``N15``, and a UIDVALIDITY cut short is not the one clients know.
    """
    text = data.decode("utf-8", "surrogateescape")
    first, newline, body = text.partition("\n")
    if not newline or "\0" in first:
        return None
    header = first.split()
    uidvalidity = uidnext = 0
    guid = ""
    if not header:
        return None
    if header[0] == "3":
        uidvalidity, uidnext, guid = _header_v3(header[1:])
    elif header[0] == "1" and len(header) >= 3 and header[1].isdigit() and header[2].isdigit():
        uidvalidity, uidnext = int(header[1]), int(header[2])
    else:
        return None
    if not 0 < uidvalidity < 2**32:
        return None
    result = UidListData(uidvalidity=uidvalidity, uidnext=max(uidnext, 1), guid=guid)
    lines, rest = _split_complete(body)
    _parse_uidlist_lines(lines, result)
    if rest:
        _parse_torn(rest, result)
    return result


def _parse_uidlist_lines(lines: Iterable[str], result: UidListData) -> None:
    """Add complete lines (each had its newline) to ``result``."""
    for line in lines:
        if not line.strip():
            continue
        if " :" in line:
            head, _, filename = line.partition(" :")
            fields = head.split()
        else:
            parts = line.split()
            fields, filename = parts[:-1], parts[-1] if len(parts) > 1 else ""
        if "\0" in line or not fields or not fields[0].isdigit():
            result.damaged += 1
            continue
        uid = int(fields[0])
        if uid >= 2**32 or uid == 0:
            result.damaged += 1
            continue
        result.lines += 1
        base = filename.split(":", 1)[0]
        if base:
            result.entries[base] = uid
        else:
            result.entries.setdefault(f"\0{uid}", uid)
        for field in fields[1:]:
            if field[:1] == "P" and base:
                result.pop3_uidls[base] = field[1:]


def _parse_torn(text: str, result: UidListData) -> None:
    """Account for a last line without its newline (``result`` holds the rest).

    Its record is never trusted, but the UID it held stays used: the one
    it names when the number is legible (ended by a space), else the next
    UID after the complete lines, since UIDs are appended in ascending
    order.  A crash can also leave an append's tail as NUL bytes; each
    record is at least 4 bytes (``7 :x`` and a newline), so that many more
    UIDs are counted as used for the NULs, never too few.
    """
    legible = text.rstrip("\0")
    hidden = len(text) - len(legible)
    expected = result.next_free
    result.torn = True
    digits = legible[: len(legible) - len(legible.lstrip("0123456789"))]
    if digits and legible[len(digits) : len(digits) + 1] == " " and "\0" not in legible:
        uid = int(digits)
        if not 0 < uid < 2**32:
            result.damaged += 1
            return
        result.torn_uid = uid
        if " :" in legible:
            result.torn_base = legible.partition(" :")[2].split(":", 1)[0]
    elif "\0" in legible or (digits and not str(expected).startswith(digits)):
        # Not the start of the record that was due: nothing to go by.
        result.damaged += 1
        return
    else:
        uid = expected
    result.reserved = uid + (hidden + 3) // 4


class UidList:
    """The append-only ``mailsrv-uidlist`` of one folder.

    Callers hold the folder's lock for every write.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def signature(self) -> tuple[int, int]:
        """(inode, size): tells whether others appended since we last read."""
        st = os.stat(self.path)
        return st.st_ino, st.st_size

    def read(self) -> UidListData | None:
        """The whole file, or None if missing or without a usable header."""
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        return _parse_uidlist(data)

    def read_uidvalidity(self) -> int | None:
        """Just the header's UIDVALIDITY (cheap), or None if unusable."""
        parsed = self.read_header()
        return None if parsed is None else parsed.uidvalidity

    def read_header(self) -> UidListData | None:
        """Just the header (cheap: one line), or None if missing or unusable."""
        try:
            with open(self.path, "rb") as handle:
                header = handle.readline()
        except FileNotFoundError:
            return None
        return _parse_uidlist(header)

    def read_tail(self, offset: int) -> tuple[UidListData, int]:
        """Entries appended after byte ``offset`` and the new end offset."""
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
        result = UidListData(uidvalidity=1, uidnext=1)
        lines, rest = _split_complete(data.decode("utf-8", "surrogateescape"))
        _parse_uidlist_lines(lines, result)
        # A torn tail is only flagged: making sense of it needs the whole file.
        result.torn = bool(rest)
        return result, offset + len(data)

    def append(self, entries: Sequence[tuple[int, str, str | None]]) -> int:
        """Durably add ``(uid, base, pop3_uidl)`` lines; returns the new size."""
        text = "".join(_line(uid, base, uidl) for uid, base, uidl in entries)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # A record glued onto a torn line would be misread; the
                # caller repairs the list first (MaildirMailbox._prepare).
                raise UidListTorn(f"{self.path} ends in a torn line")
            data = text.encode("utf-8", "surrogateescape")
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def rewrite(
        self,
        uidvalidity: int,
        uidnext: int,
        entries: Iterable[tuple[int, str, str | None]],
        guid: str | None = None,
    ) -> int:
        """Replace the file (compaction, adoption); returns its size.

        The GUID is ``guid`` if given, else the list's own while the
        UIDVALIDITY stays (a compaction must not change the MAILBOXID
        clients were given), else a new one."""
        if guid is None:
            old = self.read_header()
            if old is not None and old.uidvalidity == uidvalidity:
                guid = folder_guid(old)
            else:
                guid = uuid.uuid4().hex
        header = f"3 V{uidvalidity} N{uidnext} G{guid}\n"
        body = "".join(_line(uid, base, uidl) for uid, base, uidl in sorted(entries))
        data = (header + body).encode("utf-8", "surrogateescape")
        write_atomically(self.path, data)
        return len(data)


def _line(uid: int, base: str, pop3_uidl: str | None) -> str:
    if pop3_uidl:
        return f"{uid} P{pop3_uidl} :{base}\n"
    return f"{uid} :{base}\n"


def mint_uidvalidity(root: str) -> int:
    """A UIDVALIDITY above any the account at ``root`` handed out before
    (``mailsrv-uidvalidity`` remembers the last one)."""
    path = os.path.join(root, UIDVALIDITY_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = os.read(fd, 64).strip()
        last = int(data) if data.isdigit() else 0
        value = max(int(time.time()), last + 1)
        if value >= 2**32:
            value = 1
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, f"{value}\n".encode("ascii"))
        os.fsync(fd)
        return value
    finally:
        os.close(fd)
