"""UNAUTHENTICATE (RFC 8437): back to the not authenticated state on the
same connection, so a client (an administrative tool, a proxy) can log in
as someone else without a new TCP and TLS handshake."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailsrv.imap.output import Done
from mailsrv.imap.registry import AUTHENTICATED, CommandSpec, Simple, no_arguments

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS"]


def handle_unauthenticate(session: Session, command: Simple) -> Done:
    # RFC 8437 3: never NO (a client may pipeline AUTHENTICATE after it);
    # the mailbox is left without expunging, and everything ENABLE turned
    # on, "$" and UPDATE contexts go with it (4.1).
    session.unauthenticate()
    return Done(text="UNAUTHENTICATE completed, now in not authenticated state")


COMMANDS = (
    CommandSpec(
        "UNAUTHENTICATE",
        no_arguments,
        handle_unauthenticate,
        AUTHENTICATED,
        capability="UNAUTHENTICATE",
    ),
)
