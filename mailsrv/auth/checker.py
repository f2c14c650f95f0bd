"""A twisted.cred checker backed by a passwd-file.

Password hashing (argon2, bcrypt) costs tens of milliseconds, so checks run
in the reactor's thread pool, a few at a time: other connections keep being
served and a burst of logins cannot take all memory (argon2 uses 64 MiB per
check). Every failure looks the same to the client: one message, and an
unknown user costs the same hashing work as a wrong password.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, TypeVar, cast

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorThreads
from twisted.python.failure import Failure
from zope.interface import implementer

from mailsrv.auth.passwdfile import PasswdFile, UserRecord
from mailsrv.auth.passwords import (
    dummy_hash,
    is_known_scheme,
    plaintext_secret_bytes,
    verify_password,
)

__all__ = ["FAILURE_MESSAGE", "HashingChecker", "PasswdFileChecker", "decode_name"]

#: The one message every failed authentication carries.
FAILURE_MESSAGE = "Authentication failed"

_T = TypeVar("_T")

#: Checked against when a user has no plaintext-equivalent secret.
_NOBODYS_SECRET = secrets.token_bytes(24)


def decode_name(username: object) -> str | None:
    if isinstance(username, bytes):
        try:
            return username.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(username, str):
        return username
    return None


class HashingChecker:
    """What every mailsrv checker shares, whatever holds the users: hashing
    in a bounded number of reactor pool threads, dummy work for unknown
    users, challenge mechanisms only with a plaintext-equivalent secret,
    and one failure message.

    ``reactor`` supplies the thread pool (the global reactor by default);
    ``run_in_thread=False`` checks inline, for tests. ``max_parallel`` bounds
    how many hashes are computed at once.
    """

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(
        self,
        *,
        reactor: IReactorThreads | None = None,
        run_in_thread: bool = True,
        max_parallel: int = 4,
    ) -> None:
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, not {max_parallel}")
        self._reactor = reactor
        self._run_in_thread = run_in_thread
        self._semaphore = defer.DeferredSemaphore(max_parallel)
        # Made now, not at the first unknown user: making it costs a hash of
        # its own, which would make that first answer come late.
        dummy_hash()

    def verify_password(self, stored: str | None, password: object) -> defer.Deferred[bool]:
        """Hash ``password`` against ``stored`` (None: dummy work, False)
        in a pool thread, at most ``max_parallel`` at a time."""
        return self._semaphore.run(self._in_thread, self._verify, stored, password)

    @staticmethod
    def usable(stored: str | None) -> str | None:
        """``stored`` if it is a secret mailsrv can check, else None."""
        if stored is None or not is_known_scheme(stored):
            return None
        return stored

    @staticmethod
    def check_hashed(credentials: Any, stored: str | None) -> bool:
        """CRAM-MD5 and APOP need the shared secret itself; users whose
        secret is hashed (or who do not exist) fail exactly like a wrong
        password, after the same digest computation."""
        secret = plaintext_secret_bytes(stored) if stored is not None else None
        if secret is None:
            credentials.checkPassword(_NOBODYS_SECRET)
            return False
        return bool(credentials.checkPassword(secret))

    @staticmethod
    def _verify(stored: str | None, password: object) -> bool:
        if not isinstance(password, bytes | str):
            password = b""
        if stored is None:
            verify_password(dummy_hash(), password)
            return False
        return verify_password(stored, password)

    def _in_thread(self, function: Callable[..., _T], *args: object) -> defer.Deferred[_T]:
        if not self._run_in_thread:
            return defer.maybeDeferred(function, *args)
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = cast(IReactorThreads, global_reactor)
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)

    @staticmethod
    def _outcome(ok: bool, name: str | None) -> str:
        if ok and name is not None:
            return name
        raise UnauthorizedLogin(FAILURE_MESSAGE)

    @staticmethod
    def _error(failure: Failure) -> Failure:
        """Pass on anything but a refusal: a checker that broke (a hashing
        library error, an exhausted thread pool, a database that cannot be
        reached) is not a wrong password.  The protocols answer it as
        temporarily unavailable (IMAP ``NO [UNAVAILABLE]``, POP3
        ``-ERR [SYS/TEMP]``), log it, and do not count it as a failed login,
        so it can neither lock a user out nor be mistaken for a guess."""
        if failure.check(UnauthorizedLogin):
            return Failure(UnauthorizedLogin(FAILURE_MESSAGE))
        return failure


@implementer(ICredentialsChecker)
class PasswdFileChecker(HashingChecker):
    """Checks user names and passwords against a :class:`PasswdFile`."""

    def __init__(
        self,
        passwd: PasswdFile,
        *,
        reactor: IReactorThreads | None = None,
        run_in_thread: bool = True,
        max_parallel: int = 4,
    ) -> None:
        super().__init__(reactor=reactor, run_in_thread=run_in_thread, max_parallel=max_parallel)
        self._passwd = passwd

    @property
    def passwd(self) -> PasswdFile:
        """The users file this checker reads."""
        return self._passwd

    # Twisted types avatar ids as bytes; mailsrv's realm takes the user name as
    # str (user names are UTF-8 text), hence the override.
    def requestAvatarId(self, credentials: Any) -> defer.Deferred[str]:  # type: ignore[override]
        """Fire with the user name (``str``) or fail with UnauthorizedLogin."""
        name = decode_name(getattr(credentials, "username", None))
        if IUsernamePassword.providedBy(credentials):
            password = credentials.password
            d = self.verify_password(self._stored(name), password)
        elif IUsernameHashedPassword.providedBy(credentials):
            d = defer.maybeDeferred(self._check_hashed, credentials, name)
        else:
            d = defer.succeed(False)
        return d.addCallbacks(self._outcome, self._error, callbackArgs=(name,))

    def find_user(self, name: str) -> UserRecord | None:
        """The user called ``name`` (with ``name`` and ``home``), or None:
        how LMTP finds a recipient without a password."""
        return self._passwd.get(name)

    def any_plaintext(self) -> bool:
        """Whether any user could use CRAM-MD5 or APOP (has a plaintext-equivalent secret).

        Protocols offer those mechanisms only when this is true.
        """
        return any(plaintext_secret_bytes(user.password) for user in self._passwd.users())

    def home_of(self, name: str) -> str | None:
        """The user's home directory (for ``{home}`` path templates)."""
        record = self._passwd.get(name)
        return record.home if record is not None else None

    def extra_fields_of(self, name: str) -> list[str]:
        """The user's extra fields (``key=value`` words: quota rules...)."""
        record = self._passwd.get(name)
        return record.extra.split() if record is not None else []

    def _stored(self, name: str | None) -> str | None:
        """The secret to check against, or None to spend dummy work and fail."""
        if name is None:
            return None
        record = self._passwd.get(name)
        return self.usable(record.password if record is not None else None)

    def _check_hashed(self, credentials: Any, name: str | None) -> bool:
        record = self._passwd.get(name) if name is not None else None
        return self.check_hashed(credentials, record.password if record is not None else None)
