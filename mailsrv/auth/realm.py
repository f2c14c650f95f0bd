"""The twisted.cred realm: an authenticated user name becomes a mailbox avatar.

The same realm serves both protocols: IMAP asks for :class:`IAccount`, POP3
for :class:`IMaildrop`, and both are built on the one account the storage
hands out, so the two protocols share messages, flags and UIDs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.cred.portal import IRealm
from twisted.internet import defer
from zope.interface import implementer

from mailsrv.interfaces import IAccount, IMaildrop, IStorage, maybe_deferred

# At import, not at the first POP3 login: by then twistd has dropped root,
# and the daemon's user may not be able to read the installed code.
from mailsrv.storage.maildrop import Maildrop

#: What the realm returns, as twisted.cred expects: (interface, avatar, logout).
AvatarTuple = tuple[Any, Any, Callable[[], None]]


@implementer(IRealm)
class MailRealm:
    """Hands out the IMAP and POP3 avatars of a user's storage.

    ``home_of`` maps a user name to the home directory of its users-file
    entry (for ``{home}`` path templates); by default there is none.
    """

    def __init__(
        self, storage: IStorage, home_of: Callable[[str], str | None] | None = None
    ) -> None:
        self.storage = storage
        self.home_of = home_of or (lambda _name: None)

    def requestAvatar(
        self, avatarId: bytes | str | tuple[()], mind: object, *interfaces: Any
    ) -> defer.Deferred[AvatarTuple]:
        # Our checkers give the user name as str; Twisted's own give bytes.
        if isinstance(avatarId, tuple):
            return defer.fail(NotImplementedError("anonymous access is not offered"))
        name = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else avatarId
        wanted = [i for i in interfaces if i in (IAccount, IMaildrop)]
        if not wanted:
            return defer.fail(NotImplementedError("mailsrv serves IAccount and IMaildrop only"))
        d = maybe_deferred(self.storage.account, name, self.home_of(name))
        return d.addCallback(self._avatar, wanted[0])

    @staticmethod
    def _avatar(account: IAccount, interface: Any) -> AvatarTuple:
        if interface is IAccount:
            return (IAccount, account, account.logout)
        maildrop = Maildrop(account)

        def logout() -> None:
            maildrop.release()
            account.logout()

        return (IMaildrop, maildrop, logout)
