"""A small disconnected-mode IMAP client that resynchronises with QRESYNC
(RFC 7162 section 6), as Thunderbird, K-9 and FairEmail do, for tests that
drive a real daemon (tests/test_qresync_daemon.py, tests/interop/).

:class:`MailboxCache` is what such a client keeps of one mailbox between
connections: UIDVALIDITY, HIGHESTMODSEQ and each message's flags.
:class:`QresyncClient` speaks IMAP over a blocking socket (TLS optional) and
applies what the server says to the cache:

* ``SELECT mailbox (QRESYNC (uidvalidity modseq known-uids))``, then
  ``VANISHED (EARLIER)`` and the FETCH responses bring the known messages up
  to date, and ``UID FETCH n:* (FLAGS)`` fetches the new ones;
* unsolicited ``FETCH``, ``VANISHED`` and ``EXISTS`` keep it up to date
  while connected;
* HIGHESTMODSEQ follows section 6's rule: at each tagged response, a
  HIGHESTMODSEQ response code received during the command wins, else the
  highest MODSEQ of the FETCH responses if it is higher.

Nothing here is the server's code; it only uses what the RFC promises, so
a resynchronised cache equal to the server's state is the check.
"""

from __future__ import annotations

import re
import socket
import ssl

import attrs

__all__ = ["MailboxCache", "QresyncClient", "uid_set"]

_FETCH = re.compile(rb"^\* (\d+) FETCH \((.*)\)$")
_UID = re.compile(rb"\bUID (\d+)")
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")
_MODSEQ = re.compile(rb"\bMODSEQ \((\d+)\)")
_HIGHEST = re.compile(rb"\[HIGHESTMODSEQ (\d+)\]")
_VALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_VANISHED = re.compile(rb"^\* VANISHED (\(EARLIER\) )?([\d:,]+)$")


def uid_set(uids: list[int]) -> str:
    """Ascending UIDs as a compact uid-set."""
    parts: list[str] = []
    for uid in sorted(uids):
        if parts and parts[-1].split(":")[-1] == str(uid - 1):
            parts[-1] = parts[-1].split(":")[0] + f":{uid}"
        else:
            parts.append(str(uid))
    return ",".join(parts)


def _expand(text: bytes) -> list[int]:
    out: list[int] = []
    for part in text.split(b","):
        low, _, high = part.partition(b":")
        out.extend(range(int(low), int(high or low) + 1))
    return out


@attrs.define
class MailboxCache:
    """What a client keeps of one mailbox between connections."""

    uidvalidity: int = 0
    highest_modseq: int = 0
    flags: dict[int, frozenset[str]] = attrs.Factory(dict)


class QresyncClient:
    """One logged-in connection with QRESYNC enabled."""

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        password: str,
        context: ssl.SSLContext | None = None,
        server_name: str = "localhost",
    ) -> None:
        raw = socket.create_connection((host, port), timeout=30)
        self.sock = context.wrap_socket(raw, server_hostname=server_name) if context else raw
        self.file = self.sock.makefile("rb")
        self.counter = 0
        self.cache: MailboxCache | None = None
        #: Every line the server sent, for a failing test's message.
        self.transcript: list[bytes] = []
        self._line()  # the greeting
        self.command(f"LOGIN {user} {password}")
        self.command("ENABLE QRESYNC")

    def close(self) -> None:
        try:
            self.command("LOGOUT")
        except (OSError, AssertionError):
            pass
        self.file.close()
        self.sock.close()

    def _line(self) -> bytes:
        line = self.file.readline()
        if not line:
            raise AssertionError("the server closed the connection")
        line = line.rstrip(b"\r\n")
        self.transcript.append(line)
        return line

    def command(self, text: str) -> list[bytes]:
        """Send a command and apply its responses; the untagged lines.
        Fails unless the answer is OK."""
        self.counter += 1
        tag = b"q%d" % self.counter
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        lines: list[bytes] = []
        highest: int | None = None  # a HIGHESTMODSEQ code during this command
        seen = 0  # the highest MODSEQ of its FETCH responses
        while True:
            line = self._line()
            code = _HIGHEST.search(line)
            if code and (line.startswith(b"* OK") or line.startswith(tag + b" OK")):
                highest = int(code.group(1))
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise AssertionError(f"{text!r} answered {line!r}")
                break
            lines.append(line)
            seen = max(seen, self._apply(line))
        if self.cache is not None:
            # RFC 7162 6: the code wins; else the FETCHes' MODSEQ, if higher.
            if highest is not None:
                self.cache.highest_modseq = highest
            elif seen > self.cache.highest_modseq:
                self.cache.highest_modseq = seen
        return lines

    def _apply(self, line: bytes) -> int:
        """Apply one untagged response to the cache; the MODSEQ it shows."""
        cache = self.cache
        if cache is None:
            return 0
        fetch = _FETCH.match(line)
        if fetch is not None:
            uid, flags, modseq = (
                _UID.search(fetch.group(2)),
                _FLAGS.search(fetch.group(2)),
                _MODSEQ.search(fetch.group(2)),
            )
            if uid is not None and flags is not None:
                names = frozenset(flags.group(1).decode().split()) - {"\\Recent"}
                cache.flags[int(uid.group(1))] = names
            return int(modseq.group(1)) if modseq is not None else 0
        vanished = _VANISHED.match(line)
        if vanished is not None:
            for gone in _expand(vanished.group(2)):
                cache.flags.pop(gone, None)
        return 0

    def resync(self, mailbox: str, cache: MailboxCache) -> list[bytes]:
        """Open ``mailbox`` the QRESYNC way and bring ``cache`` up to date
        (a first, full synchronisation when it knows nothing yet); the
        SELECT's untagged responses."""
        self.cache = cache
        if cache.uidvalidity and cache.highest_modseq:
            known = f" {uid_set(list(cache.flags))}" if cache.flags else ""
            params = f" (QRESYNC ({cache.uidvalidity} {cache.highest_modseq}{known}))"
        else:
            params = " (CONDSTORE)"
        lines = self.command(f"SELECT {mailbox}{params}")
        validity = next(int(m.group(1)) for m in map(_VALIDITY.search, lines) if m)
        if validity != cache.uidvalidity:
            # RFC 7162 6 step 1a: another UIDVALIDITY, start afresh.
            cache.uidvalidity = validity
            cache.flags.clear()
        # The new messages.  "n:*" also names the highest UID when nothing
        # is new (RFC 3501 6.4.8): that one is known, its answer harmless.
        start = max(cache.flags, default=0) + 1
        self.command(f"UID FETCH {start}:* (UID FLAGS MODSEQ)")
        return lines

    def noop(self) -> list[bytes]:
        return self.command("NOOP")
