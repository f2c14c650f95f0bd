"""A twisted.mail ``pop3.IMailbox`` served as a mailsrv :class:`~mailsrv.interfaces.IMaildrop`.

twisted.mail's POP3 mailbox numbers messages from 0 and deletes them one at
a time, then ``sync()``; mailsrv's maildrop is listed at login and changed
only at QUIT (RFC 1939 6).  The adapter lists the mailbox at ``open()``
(``listMessages()``, ``getUidl(i)``), uses index + 1 as the message's
identity, and at ``commit`` calls ``deleteMessage(i)`` for each deleted
message and then ``sync()``, exactly what twisted.mail's server does at QUIT.
"""

from __future__ import annotations

import io
import re
import weakref
from collections.abc import Iterable, Sequence
from typing import IO, Any

from twisted.internet import defer
from zope.interface import implementer

from mailsrv.errors import MailboxInUse, NoSuchMessage
from mailsrv.interfaces import IMaildrop, MaildropEntry, maybe_deferred
from mailsrv.twistedmail.mailbox import storage_error

__all__ = ["TwistedMaildrop"]

_LINE_END = re.compile(rb"\r?\n")

#: twisted.mail mailboxes held by a POP3 session of this process (it has
#: no lock of its own; RFC 1939 8 wants one).
_held: weakref.WeakSet[Any] = weakref.WeakSet()


@implementer(IMaildrop)
class TwistedMaildrop:
    """A twisted.mail ``pop3.IMailbox`` avatar, as mailsrv's POP3 sees it."""

    def __init__(self, mailbox: Any) -> None:
        self.twisted = mailbox
        self._sizes: dict[int, int] = {}
        self._locked = False

    def open(self) -> defer.Deferred[Sequence[MaildropEntry]]:
        return defer.Deferred.fromCoroutine(self._open())

    async def _open(self) -> Sequence[MaildropEntry]:
        try:
            if self.twisted in _held:
                raise MailboxInUse("maildrop is in use")
            _held.add(self.twisted)
        except TypeError:
            pass  # not weakly referenceable: no lock
        self._locked = True
        try:
            sizes = list(await maybe_deferred(self.twisted.listMessages))
            entries = []
            for index, size in enumerate(sizes):
                if not size:
                    continue  # twisted.mail gives 0 for a deleted message
                uidl = await maybe_deferred(self.twisted.getUidl, index)
                text = uidl.decode("ascii", "replace") if isinstance(uidl, bytes) else str(uidl)
                entries.append(MaildropEntry(uid=index + 1, size=int(size), unique_id=text))
        except MailboxInUse:
            raise
        except Exception as e:
            self._unlock()
            raise storage_error(e) from e
        self._sizes = {entry.uid: entry.size for entry in entries}
        return entries

    def retrieve(self, uid: int) -> defer.Deferred[IO[bytes]]:
        if uid not in self._sizes:
            return defer.fail(NoSuchMessage(f"message {uid} is not in this maildrop"))

        async def work() -> IO[bytes]:
            source = await maybe_deferred(self.twisted.getMessage, uid - 1)
            data = source.read()
            data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            # twisted.mail's server sends a message line by line with CRLF.
            return io.BytesIO(_LINE_END.sub(b"\r\n", data))

        return defer.Deferred.fromCoroutine(work())

    def commit(self, deleted: Iterable[int], seen: Iterable[int]) -> defer.Deferred[None]:
        """Delete and ``sync()``; ``seen`` has no place in twisted.mail's
        POP3 mailbox and is dropped."""
        doomed = sorted(uid for uid in set(deleted) if uid in self._sizes)

        async def work() -> None:
            try:
                for uid in doomed:
                    await maybe_deferred(self.twisted.deleteMessage, uid - 1)
                # As twisted.mail's server at QUIT: sync() even with nothing deleted.
                await maybe_deferred(self.twisted.sync)
            except Exception as e:
                raise storage_error(e) from e
            finally:
                self._unlock()

        return defer.Deferred.fromCoroutine(work())

    def release(self) -> defer.Deferred[None]:
        self._unlock()
        return defer.succeed(None)

    def _unlock(self) -> None:
        if self._locked:
            self._locked = False
            try:
                _held.discard(self.twisted)
            except TypeError:
                pass
        self._sizes = {}
