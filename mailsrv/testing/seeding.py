"""Messages in and out of the test server: what a test seeds, what it reads back."""

from __future__ import annotations

import datetime
import email
import email.message
import email.policy
import email.utils
import os
import re
from collections.abc import Iterable
from typing import IO, Any

import attrs

from mailsrv.interfaces import SYSTEM_FLAGS, canonical_flag

__all__ = ["MessageSource", "StoredMessage", "message_bytes", "message_date", "split_flags"]

#: What :meth:`MailServer.deliver` takes as a message.
MessageSource = bytes | bytearray | email.message.Message | os.PathLike[str] | IO[bytes]

# RFC 3501 date-time, as APPEND and INTERNALDATE write it.
_IMAP_DATE = re.compile(r"\d{1,2}-[A-Za-z]{3}-\d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}")


def message_bytes(message: MessageSource) -> bytes:
    """The bytes of ``message``: bytes as they are, an ``email`` message in
    SMTP form (CRLF), a path's file contents, or a binary file read to its end.

    A ``str`` is refused: it could be a message or a file name.
    """
    if isinstance(message, bytes | bytearray):
        return bytes(message)
    if isinstance(message, email.message.Message):
        return message.as_bytes(policy=email.policy.SMTP)
    if isinstance(message, os.PathLike):
        with open(os.fspath(message), "rb") as handle:
            return handle.read()
    if isinstance(message, str):
        raise TypeError(
            "a message is bytes, an email.message.Message, a pathlib.Path or a binary file; "
            "for text use .encode(), for a file name pathlib.Path(name)"
        )
    read = getattr(message, "read", None)
    if read is None:
        raise TypeError(f"cannot make a message of {type(message).__name__}")
    data = read()
    if not isinstance(data, bytes | bytearray):
        raise TypeError("a message file must be opened in binary mode")
    return bytes(data)


def message_date(date: Any) -> datetime.datetime | None:
    """An internal date from a ``datetime`` (naive means UTC), a POSIX
    timestamp, an RFC 5322 date (``Mon, 7 Feb 1994 21:52:25 -0800``) or an
    IMAP date-time (``07-Feb-1994 21:52:25 -0800``); None stays None (now)."""
    if date is None:
        return None
    if isinstance(date, datetime.datetime):
        return date if date.tzinfo is not None else date.replace(tzinfo=datetime.UTC)
    if isinstance(date, int | float):
        return datetime.datetime.fromtimestamp(date, datetime.UTC)
    if isinstance(date, str):
        text = date.strip()
        if _IMAP_DATE.fullmatch(text):
            return datetime.datetime.strptime(text, "%d-%b-%Y %H:%M:%S %z")
        try:
            parsed = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            parsed = None
        if parsed is None:
            raise ValueError(f"not a date: {date!r}")
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=datetime.UTC)
    raise TypeError(f"a date is a datetime, a timestamp or a string, not {type(date).__name__}")


def split_flags(flags: Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
    """System flags (canonically spelt) and keywords, apart."""
    system: set[str] = set()
    keywords: set[str] = set()
    for flag in flags:
        spelt = canonical_flag(flag)
        (system if spelt in SYSTEM_FLAGS else keywords).add(spelt)
    return frozenset(system), frozenset(keywords)


@attrs.frozen
class StoredMessage:
    """One message as the server keeps it now."""

    uid: int
    #: System flags and keywords (never ``\\Recent``).
    flags: frozenset[str]
    internal_date: datetime.datetime
    #: The bytes in wire form (CRLF), exactly as FETCH BODY[] and RETR give them.
    data: bytes
    modseq: int = 0

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def keywords(self) -> frozenset[str]:
        """The flags that are not system flags."""
        return split_flags(self.flags)[1]

    @property
    def seen(self) -> bool:
        return "\\Seen" in self.flags

    @property
    def deleted(self) -> bool:
        return "\\Deleted" in self.flags

    @property
    def message(self) -> email.message.EmailMessage:
        """The message parsed by the standard library (policy ``default``)."""
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed

    @property
    def subject(self) -> str | None:
        subject = self.message["Subject"]
        return None if subject is None else str(subject)
