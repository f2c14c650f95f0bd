"""The one line-end rule every backend stores by: wire form, each line end CRLF.

APPEND and delivery hand a backend the message as its source gives it, bare
LFs and all (a local MTA writes LF); stored with CRLF, it has the same size
and bytes through FETCH, RFC822.SIZE and POP3 on every backend (RFC 5322
2.3 and RFC 3501 2.3.4 count the message as it is on the wire).  A bare CR
stays as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

from mailsrv.errors import StorageError

__all__ = ["to_crlf", "wire_chunks"]


def to_crlf(chunk: bytes, previous_cr: bool) -> bytes:
    """``chunk`` with every line end as CRLF; ``previous_cr`` says the chunk
    before it ended in CR, so a LF starting this one has its CR already."""
    if b"\n" not in chunk:
        return chunk
    if previous_cr and chunk.startswith(b"\n"):
        return b"\n" + chunk[1:].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def wire_chunks(source: IO[bytes], size: int) -> Iterator[bytes]:
    """``source`` read ``size`` bytes at a time, in wire form; StorageError
    [CANNOT] if it gives anything but bytes."""
    previous_cr = False
    while chunk := source.read(size):
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise StorageError("message source must give bytes", code="CANNOT")
        data = bytes(chunk)
        yield to_crlf(data, previous_cr)
        previous_cr = data.endswith(b"\r")
