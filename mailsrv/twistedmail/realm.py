"""The realm bridge and the factories that serve twisted.mail avatars."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.mail import imap4, pop3
from zope.interface import implementer

from mailsrv.hooks import CommandHook
from mailsrv.imap.protocol import IMAP4ServerFactory as _IMAP4ServerFactory
from mailsrv.interfaces import IAccount, IMaildrop, maybe_deferred
from mailsrv.policy import SessionPolicy
from mailsrv.pop3.server import POP3Factory as _POP3Factory
from mailsrv.twistedmail.account import TwistedAccount
from mailsrv.twistedmail.maildrop import TwistedMaildrop

__all__ = [
    "IMAP4ServerFactory",
    "POP3Factory",
    "TwistedMailRealm",
    "WithoutModseq",
    "bridge_portal",
]

AvatarTuple = tuple[Any, Any, Callable[[], None]]

#: What a bridged account cannot back: MODSEQ values that survive a restart,
#: and several changes made at once (MULTIAPPEND's all or none, REPLACE's
#: append and expunge as one), which twisted.mail's interfaces cannot say.
NO_MODSEQ = frozenset({"CONDSTORE", "QRESYNC", "MULTIAPPEND", "REPLACE"})


def _name(avatar_id: Any) -> str:
    if isinstance(avatar_id, bytes):
        return avatar_id.decode("utf-8", "replace")
    return str(avatar_id)


@implementer(IRealm)
class TwistedMailRealm:
    """Wraps a realm written for twisted.mail.

    Asked for mailsrv's :class:`~mailsrv.interfaces.IAccount` it asks the
    wrapped realm for ``twisted.mail.imap4.IAccount`` and wraps the avatar
    (:class:`~mailsrv.twistedmail.account.TwistedAccount`); asked for
    :class:`~mailsrv.interfaces.IMaildrop`, it asks for
    ``twisted.mail.pop3.IMailbox``
    (:class:`~mailsrv.twistedmail.maildrop.TwistedMaildrop`).  mailsrv's own
    interfaces are asked for first, so a realm that already serves them
    (MailRealm) passes through unchanged.
    """

    def __init__(self, realm: Any) -> None:
        self.realm = realm

    def requestAvatar(
        self, avatarId: Any, mind: object, *interfaces: Any
    ) -> defer.Deferred[AvatarTuple]:
        if IAccount in interfaces:
            wanted: Sequence[Any] = (IAccount, imap4.IAccount)
        elif IMaildrop in interfaces:
            wanted = (IMaildrop, pop3.IMailbox)
        else:
            wanted = interfaces
        d = maybe_deferred(self.realm.requestAvatar, avatarId, mind, *wanted)
        return d.addCallback(self._wrap, _name(avatarId))

    @staticmethod
    def _wrap(result: AvatarTuple, name: str) -> AvatarTuple:
        interface, avatar, logout = result
        if interface is imap4.IAccount:
            return (IAccount, TwistedAccount(name, avatar), logout)
        if interface is pop3.IMailbox:
            return (IMaildrop, TwistedMaildrop(avatar), logout)
        return result


def bridge_portal(portal: Portal) -> Portal:
    """A Portal with ``portal``'s checkers over its realm, bridged."""
    return Portal(TwistedMailRealm(portal.realm), list(portal.checkers.values()))


@attrs.frozen
class WithoutModseq:
    """Session hooks for bridged accounts: CONDSTORE and QRESYNC are not
    offered (their MODSEQ values would not survive a restart), nor are
    MULTIAPPEND and REPLACE (not atomic over twisted.mail), and any
    hooks the policy already had still apply."""

    inner: Any = None

    def capabilities(self, protocol: str, offered: Sequence[str]) -> list[str]:
        names = [name for name in offered if name.split("=")[0].upper() not in NO_MODSEQ]
        return names if self.inner is None else self.inner.capabilities(protocol, names)

    def command(self, protocol: str, name: str) -> CommandHook | None:
        return None if self.inner is None else self.inner.command(protocol, name)


def _bridged_policy(policy: SessionPolicy | None) -> SessionPolicy:
    base = policy if policy is not None else SessionPolicy()
    return attrs.evolve(base, hooks=WithoutModseq(base.hooks))


class IMAP4ServerFactory(_IMAP4ServerFactory):
    """mailsrv's IMAP server for a Portal whose realm gives twisted.mail
    ``imap4.IAccount`` avatars (as it does for twisted.mail's server).

    ``challengers`` is twisted.mail's ``IMAP4Server(chal=...)`` mapping.
    """

    def __init__(
        self,
        portal: Portal,
        policy: SessionPolicy | None = None,
        *,
        challengers: Mapping[str | bytes, Callable[[], Any]] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            bridge_portal(portal), _bridged_policy(policy), challengers=challengers, **options
        )


class POP3Factory(_POP3Factory):
    """mailsrv's POP3 server for a Portal whose realm gives twisted.mail
    ``pop3.IMailbox`` avatars; ``challengers`` as twisted.mail's
    ``POP3Factory.challengers``."""

    def __init__(
        self,
        portal: Portal,
        policy: SessionPolicy | None = None,
        *,
        challengers: Mapping[str | bytes, Callable[[], Any]] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(bridge_portal(portal), policy, challengers=challengers, **options)
