"""Connection limits counted by the parent, for a worker's sessions.

The same interface as :class:`mailsrv.policy.ConnectionLimits`, but the
counts are the whole daemon's: each opening asks the parent
(:class:`~mailsrv.workers.channel.Acquire`), which answers at once, and
each closing tells it.  The limits themselves are this worker's
configuration, sent with each question, so a reload applies them as it
does in one process.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress

from mailsrv.policy import ConnectionLimits
from mailsrv.workers.channel import ParentLink

__all__ = ["SharedConnectionLimits"]

#: Counter names in the parent's table.
IP = "ip"
USER = "user"


def _host(peer: IAddress | None) -> str:
    return str(getattr(peer, "host", ""))


class SharedConnectionLimits(ConnectionLimits):
    """Per-IP and per-user limits over every worker of the daemon."""

    def __init__(self, link: ParentLink, per_user: int = 20, per_ip: int = 50) -> None:
        super().__init__(per_user, per_ip)
        self.link = link

    def open_ip(self, peer: IAddress | None) -> bool | Deferred[bool]:
        return self.link.acquire(IP, _host(peer), self.per_ip)

    def close_ip(self, peer: IAddress | None) -> None:
        self.link.release(IP, _host(peer))

    def open_user(self, user: str) -> bool | Deferred[bool]:
        return self.link.acquire(USER, user, self.per_user)

    def close_user(self, user: str) -> None:
        self.link.release(USER, user)
