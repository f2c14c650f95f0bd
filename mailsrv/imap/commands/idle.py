"""IDLE (RFC 2177): updates pushed as they happen until the client's DONE.

While idling the session reads the client's next line itself (a
continuation), the selected view calls back on every change, and the
updates are flushed with EXPUNGE allowed (no sequence numbers are in use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from mailsrv.errors import NoSuchMailbox
from mailsrv.imap.output import Done
from mailsrv.imap.registry import AUTHENTICATED, CommandSpec, Simple, no_arguments
from mailsrv.imap.session import GONE, LOG

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "IDLE_TIMEOUT"]


#: The least autologout time while in IDLE (RFC 2177 clients renew at 29 min).
IDLE_TIMEOUT = 31 * 60.0


def handle_idle(session: Session, command: Simple) -> defer.Deferred[Done]:
    idling = _Idling(session)
    session.expect_continuation(idling)
    # RFC 2177: clients re-issue IDLE every 29 minutes; never log out an
    # idling client sooner, whatever the authenticated timeout.
    session.timer.set_idle(max(session.policy.imap_timeout_authenticated, IDLE_TIMEOUT))
    session.send(b"+ idling\r\n")
    if session.selected is not None:
        session.selected.on_change = idling.schedule_push
        if session.selected.has_pending():
            idling.schedule_push()
    return idling.result


class _Idling:
    """One IDLE: its completion, and the push waiting for a reactor turn."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.result: defer.Deferred[Done] = defer.Deferred()
        self.done = False
        self._push: IDelayedCall | None = None

    def line(self, data: bytes) -> None:
        """The client's line: DONE ends IDLE; anything else too, with BAD."""
        session = self.session
        self.done = True
        session.end_continuation()
        session.timer.set_idle(session.policy.imap_timeout_authenticated)
        if session.selected is not None:
            session.selected.on_change = None
        self.cancel()
        if data.upper() == b"DONE":
            self.result.callback(Done(text="IDLE terminated"))
        else:
            self.result.callback(Done("BAD", "Expected DONE to end IDLE"))

    def cancel(self) -> None:
        push, self._push = self._push, None
        if push is not None and push.active():
            push.cancel()

    def schedule_push(self) -> None:
        # Listeners run inside another session's call: push from a fresh
        # reactor turn instead.
        if self._push is None or not self._push.active():
            self._push = self.session.clock.callLater(0, self._push_updates)

    def _push_updates(self) -> None:
        self._push = None
        session = self.session
        if self.done or session.selected is None or session.lost:
            return
        d = session.selected.flush(True)
        d.addCallbacks(session.write_lines, self._push_failed)

    def _push_failed(self, failure: Failure) -> None:
        if not isinstance(failure.value, NoSuchMailbox):
            LOG.failure("IMAP: pushing updates during IDLE failed", failure)
            return
        # The selected mailbox is gone under an idling client: say so and
        # close (as after any command that finds it gone).
        self.session.forget_selected()
        self.session.end_with_bye(GONE)


COMMANDS = (CommandSpec("IDLE", no_arguments, handle_idle, AUTHENTICATED, capability="IDLE"),)
