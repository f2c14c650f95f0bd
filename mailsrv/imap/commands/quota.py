"""GETQUOTA, GETQUOTAROOT and SETQUOTA (RFC 9208), STORAGE and MESSAGE.

Each user has one quota root, named ``""``, over all of their mailboxes;
its limits are the administrator's (the users file's quota rules over the
``[quota]`` default: :mod:`mailsrv.quota`), so SETQUOTA is refused and
QUOTASET is not advertised.  Usage comes from the account's
:class:`~mailsrv.interfaces.IQuotaUsage`; the capability is offered only
where the storage declares it.  APPEND and COPY check the same limits
(:mod:`mailsrv.imap.commands.append`, :mod:`mailsrv.imap.commands.copy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

from mailsrv.imap import response, syntax
from mailsrv.imap.lexer import Reader
from mailsrv.imap.output import Done, no
from mailsrv.imap.registry import AUTHENTICATED, Command, CommandSpec, Result, State
from mailsrv.interfaces import IQuotaUsage, Usage, maybe_deferred
from mailsrv.quota import QuotaLimits

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "ROOT", "QuotaRoot", "SetQuota", "limits_of"]

#: The one quota root of every user.
ROOT = ""


@attrs.frozen
class QuotaRoot(Command):
    """GETQUOTA (``name`` is the root) and GETQUOTAROOT (a mailbox)."""

    argument: str


@attrs.frozen
class SetQuota(Command):
    root: str
    limits: tuple[tuple[str, int], ...]


def parse_getquota(reader: Reader, tag: str, name: str, uid: bool) -> QuotaRoot:
    reader.space()
    root = reader.astring("a quota root").decode("utf-8", "replace")
    reader.end()
    return QuotaRoot(tag, name, root)


def parse_getquotaroot(reader: Reader, tag: str, name: str, uid: bool) -> QuotaRoot:
    reader.space()
    mailbox = syntax.mailbox(reader)
    reader.end()
    return QuotaRoot(tag, name, mailbox)


def parse_setquota(reader: Reader, tag: str, name: str, uid: bool) -> SetQuota:
    # RFC 9208 7: setquota = "SETQUOTA" SP quota-root-name SP setquota-list
    reader.space()
    root = reader.astring("a quota root").decode("utf-8", "replace")
    reader.space()
    reader.expect(b"(")
    limits: list[tuple[str, int]] = []
    if not reader.accept(b")"):
        while True:
            resource = reader.atom("a resource name").upper()
            reader.space()
            limits.append((resource, reader.number("a limit")))
            if reader.accept(b")"):
                break
            reader.space()
    reader.end()
    return SetQuota(tag, name, root, tuple(limits))


def limits_of(session: Session) -> QuotaLimits:
    """The logged-in user's limits."""
    assert session.user is not None
    return session.policy.quotas.limits_of(session.user)


def _quota_line(limits: QuotaLimits, usage: Usage) -> bytes:
    """``* QUOTA "" (STORAGE used limit MESSAGE used limit)``: STORAGE in
    units of 1024 octets (RFC 9208 5.1), a resource without a limit left
    out (4.2.1: "Resources not named in the list are not limited")."""
    triplets: list[bytes] = []
    if limits.storage is not None:
        triplets.append(b"STORAGE %d %d" % (usage.octets // 1024, limits.storage // 1024))
    if limits.messages is not None:
        triplets.append(b"MESSAGE %d %d" % (usage.messages, limits.messages))
    return response.untagged("QUOTA", response.string(ROOT), b"(" + b" ".join(triplets) + b")")


def _report(session: Session, done: Done, first: bytes = b"") -> Result:
    account = session.logged_in_account()
    if not IQuotaUsage.providedBy(account):
        raise no("This server's storage keeps no quota", "CANNOT")
    limits = limits_of(session)

    def write(usage: Usage) -> Done:
        session.send(first + _quota_line(limits, usage))
        return done

    return maybe_deferred(account.usage).addCallback(write)


def handle_getquota(session: Session, command: QuotaRoot) -> Result:
    if command.argument != ROOT:
        raise no(f'No such quota root; yours is "{ROOT}"', "NONEXISTENT")
    return _report(session, Done(text="GETQUOTA completed"))


def handle_getquotaroot(session: Session, command: QuotaRoot) -> Result:
    # RFC 9208 4.1.2: the mailbox need not exist (a client may ask which
    # root a mailbox it is about to create falls under): every one is ROOT's.
    first = response.untagged(
        "QUOTAROOT", response.mailbox(command.argument), response.string(ROOT)
    )
    return _report(session, Done(text="GETQUOTAROOT completed"), first)


def handle_setquota(session: Session, command: SetQuota) -> Done:
    # RFC 9208 4.1.3: NO when the limit cannot be set; QUOTASET is not
    # advertised, limits being the administrator's.
    raise no(
        "Quota limits are set by the administrator (the users file or the [quota] "
        "configuration), not over IMAP",
        "NOPERM",
    )


def _quota_capability(session: Session) -> Sequence[str]:
    offered = session.state in (State.AUTHENTICATED, State.SELECTED) and (
        IQuotaUsage.providedBy(session.account)
    )
    return ["QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE"] if offered else []


COMMANDS = (
    CommandSpec(
        "GETQUOTA", parse_getquota, handle_getquota, AUTHENTICATED, capability=_quota_capability
    ),
    CommandSpec(
        "GETQUOTAROOT",
        parse_getquotaroot,
        handle_getquotaroot,
        AUTHENTICATED,
        capability=_quota_capability,
    ),
    CommandSpec(
        "SETQUOTA", parse_setquota, handle_setquota, AUTHENTICATED, capability=_quota_capability
    ),
)
