"""A worker's listening sockets: the ones its parent bound, shared by all.

The parent binds every listener (before twistd drops root) and hands the
sockets to each worker it starts (``spawnProcess`` ``childFDs``); every
worker adopts each of them, the way ``reactor.adoptStreamPort`` does, and
the kernel gives each new connection to whichever worker accepts first.

Two things differ from a port adopted the usual way:

* **One connection per wakeup.**  Twisted accepts up to a hundred
  connections each time a listening socket is readable; with several
  processes on one socket, the first to wake would take a whole burst and
  the others none (fifty clients connecting at once could all land on one
  worker).  Taking one at a time lets every waiting worker take its turn,
  and a busy one, which wakes later, takes fewer.
* **The parent owns a Unix socket's file.**  A worker leaves its mode as
  the parent set it (Twisted would make an adopted socket 0666) and does
  not unlink it when it stops: the other workers still serve it, and the
  parent removes it when the daemon stops.
"""

from __future__ import annotations

import os
import socket
import stat
from typing import Any

from twisted.internet import defer, tcp, unix
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["InheritedEndpoint"]


class _SharedTCPPort(tcp.Port):
    """A TCP (or TCP6) port several workers accept from."""

    def doRead(self) -> None:
        self.numberAccepts = 1
        super().doRead()


class _SharedUnixPort(unix.Port):
    """A Unix socket several workers accept from; the parent owns its file."""

    def doRead(self) -> None:
        self.numberAccepts = 1
        super().doRead()

    def connectionLost(self, reason: Failure) -> None:
        # unix.Port would unlink the socket's path here; skip to the TCP
        # port's cleanup, which closes our descriptor only.
        tcp.Port.connectionLost(self, reason)


@implementer(IStreamServerEndpoint)
class InheritedEndpoint:
    """The endpoint of a listening socket inherited from the parent as
    descriptor ``fd``: listening adopts it (once) and closes ``fd``, which
    the port has duplicated."""

    def __init__(self, reactor: Any, fd: int, family: int, description: str) -> None:
        self.reactor = reactor
        self.fd = fd
        self.family = family
        self.description = description

    def __repr__(self) -> str:
        return f"<InheritedEndpoint fd={self.fd} {self.description}>"

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        return defer.maybeDeferred(self._adopt, factory)

    def _adopt(self, factory: IProtocolFactory) -> IListeningPort:
        port: Any
        if self.family == socket.AF_UNIX:
            port = _SharedUnixPort._fromListeningDescriptor(self.reactor, self.fd, factory)
            path = port._bindPath  # str or bytes; an abstract name starts with NUL
            if isinstance(path, str | bytes) and path and path[:1] not in ("\0", b"\0"):
                # startListening chmods the path to ``mode``: keep the parent's.
                port.mode = stat.S_IMODE(os.stat(path).st_mode)
        else:
            port = _SharedTCPPort._fromListeningDescriptor(
                self.reactor, self.fd, self.family, factory
            )
        port.startListening()
        os.close(self.fd)
        listening: IListeningPort = port
        return listening
