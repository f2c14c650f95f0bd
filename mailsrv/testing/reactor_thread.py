"""A private Twisted reactor running in a background thread.

Synchronous test code (imaplib, imapclient, an asyncio loop in the main
thread) needs the server to answer while it blocks, so the server runs on a
reactor of its own in a thread.  It is a fresh reactor object, never the
global one: Twisted's global reactor cannot be restarted once stopped, and
a process may run many servers one after another, or beside trial's or
pytest-twisted's reactor.  :meth:`ReactorThread.stop` stops it, joins the
thread and closes the reactor's own descriptors, so nothing is left behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import threads
from twisted.internet.selectreactor import SelectReactor

__all__ = ["ReactorThread"]

_T = TypeVar("_T")

#: Seconds :meth:`ReactorThread.stop` waits for the thread to end.
STOP_DEADLINE = 30.0


class ReactorThread:
    """A reactor of its own, run in a daemon thread until :meth:`stop`."""

    def __init__(self, name: str = "mailsrv-testing-reactor") -> None:
        # select() works everywhere; a test server has a handful of sockets.
        self.reactor: Any = SelectReactor()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ended = threading.Event()
        self._thread.start()

    def _run(self) -> None:
        try:
            self.reactor.run(installSignalHandlers=False)
        finally:
            self._ended.set()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def in_thread(self) -> bool:
        """Whether the caller is the reactor's own thread."""
        return threading.current_thread() is self._thread

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``function`` in the reactor thread and wait for its result
        (a Deferred's result, if it returns one); its exception is raised
        here."""
        if self.in_thread():
            raise RuntimeError("ReactorThread.call from the reactor thread would wait forever")
        if self._ended.is_set():
            raise RuntimeError("the server's reactor has stopped")
        return threads.blockingCallFromThread(self.reactor, function, *args, **kwargs)

    def stop(self) -> None:
        """Stop the reactor (its shutdown triggers run), join the thread,
        and close the descriptors the reactor object holds."""
        if not self._ended.is_set():
            self.reactor.callFromThread(self.reactor.stop)
            self._thread.join(STOP_DEADLINE)
            if self._thread.is_alive():
                raise RuntimeError(f"the server's reactor did not stop in {STOP_DEADLINE:g}s")
        waker = self.reactor.waker
        if waker is not None:
            self.reactor._removeInternalReader(waker)
            waker.connectionLost(None)
            self.reactor.waker = None
