"""What an embedding application's hooks (:mod:`mailsrv.hooks`) change in
an IMAP session: capabilities withdrawn, commands delayed or refused, an
ALERT added, the connection dropped before or after the answer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer, task

from mailsrv.hooks import CommandHook, Drop
from mailsrv.imap import response
from mailsrv.imap.output import Done
from mailsrv.imap.registry import Command, Handler, State

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["hook_done", "hooked", "refusal", "withdrawn"]


def withdrawn(session: Session, capability: str) -> bool:
    """The policy's hooks took ``capability`` out of CAPABILITY."""
    return session.policy.hooks is not None and capability not in session.capabilities()


def hooked(session: Session, handler: Handler, hook: CommandHook) -> Handler:
    """``handler`` delayed, or replaced by a refusal, as ``hook`` says."""
    clock = session.clock

    def run(session: Session, command: Command) -> defer.Deferred[Done]:
        d: defer.Deferred[Any] = (
            task.deferLater(clock, hook.delay, lambda: None)
            if hook.delay > 0
            else defer.succeed(None)
        )
        if hook.refuse is not None:
            return d.addCallback(lambda _: refusal(hook.refuse or ""))
        return d.addCallback(lambda _: handler(session, command))

    return run


def hook_done(done: Done, session: Session, hook: CommandHook) -> Done:
    if hook.alert is not None:
        session.send(response.untagged_status("OK", hook.alert, "ALERT"))
    if hook.drop is Drop.BEFORE_ANSWER:
        # The command ran; its answer is never sent.
        session.lost = True
        session.state = State.LOGOUT
        session.close()
    elif hook.drop is Drop.AFTER_ANSWER:
        before = done.after

        def cut() -> None:
            if before is not None:
                before()
            session.state = State.LOGOUT
            session.close()

        done = attrs.evolve(done, after=cut)
    return done


def refusal(text: str) -> Done:
    """A hook's refusal: NO with ``text``, whose leading ``[CODE]``, if any,
    is the response code (a text may not start with "[" itself: RFC 3501
    7.1, see :func:`response.tagged`)."""
    if text.startswith("[") and "]" in text:
        code, _, rest = text[1:].partition("]")
        return Done("NO", rest.strip() or "Refused", code)
    return Done("NO", text)
