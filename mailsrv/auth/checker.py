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

from mailsrv.auth import scram
from mailsrv.auth.oauth import ITokenCredentials, ITokenValidator, TokenRefused
from mailsrv.auth.passwdfile import PasswdFile, UserRecord
from mailsrv.auth.passwords import (
    dummy_hash,
    is_known_scheme,
    plaintext_secret_bytes,
    scram_secret,
    verify_password,
)
from mailsrv.auth.scram_server import IScramCredentials

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
    SCRAM secrets (stored, or derived from a plaintext one), and one
    failure message.

    ``reactor`` supplies the thread pool (the global reactor by default);
    ``run_in_thread=False`` checks inline, for tests. ``max_parallel`` bounds
    how many hashes are computed at once.  ``scram_key`` derives the SCRAM
    salts of unknown users and of users with a plaintext secret (random per
    process unless given: several nodes serving the same users should share
    one, or their salts for an unknown user would differ where a real
    user's do not).  ``token_validator`` checks the OAuth bearer tokens of
    OAUTHBEARER and XOAUTH2 logins; without one they fail.
    """

    credentialInterfaces = (
        IUsernamePassword,
        IUsernameHashedPassword,
        IScramCredentials,
        ITokenCredentials,
    )

    def __init__(
        self,
        *,
        reactor: IReactorThreads | None = None,
        run_in_thread: bool = True,
        max_parallel: int = 4,
        scram_key: bytes | None = None,
        token_validator: ITokenValidator | None = None,
    ) -> None:
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, not {max_parallel}")
        self._reactor = reactor
        self._run_in_thread = run_in_thread
        self._semaphore = defer.DeferredSemaphore(max_parallel)
        self._scram_key = scram_key if scram_key else secrets.token_bytes(32)
        #: What OAUTHBEARER and XOAUTH2 logins are checked with (None: refused).
        self.token_validator = token_validator
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

    def scram_secret_of(self, stored: str | None, name: str | None) -> defer.Deferred[Any]:
        """The SCRAM secret of a user whose stored secret is ``stored``
        (None: unknown user): the stored one, one derived from a plaintext
        secret, or a fake one that never verifies.  Each costs one PBKDF2
        in a pool thread, so the time taken tells nothing about the user."""
        return self._semaphore.run(self._in_thread, self._scram_secret, stored, name or "")

    def _scram_secret(self, stored: str | None, name: str) -> scram.ScramSecret:
        found = scram_secret(stored) if stored is not None else None
        if found is not None:
            scram.spend_derivation()
            return found
        plain = plaintext_secret_bytes(stored) if stored is not None else None
        if plain is not None:
            return scram.secret_from_plaintext(self._scram_key, name, plain)
        scram.spend_derivation()
        return scram.fake_secret(self._scram_key, name)

    def check(self, credentials: Any, stored: str | None, name: str | None) -> defer.Deferred[bool]:
        """Whether ``credentials`` prove to be the user whose stored secret
        is ``stored`` (None: an unknown user, who fails after the same work)."""
        if IUsernamePassword.providedBy(credentials):
            return self.verify_password(stored, credentials.password)
        if IUsernameHashedPassword.providedBy(credentials):
            return defer.maybeDeferred(self.check_hashed, credentials, stored)
        if IScramCredentials.providedBy(credentials):
            proof: Any = credentials
            d = self.scram_secret_of(stored, name)
            return cast("defer.Deferred[bool]", d.addCallback(lambda s: bool(proof.check(s))))
        if ITokenCredentials.providedBy(credentials):
            return cast("defer.Deferred[bool]", self._check_token(credentials, stored, name))
        return defer.succeed(False)

    def _check_token(self, credentials: Any, stored: str | None, name: str | None) -> Any:
        """A token opens the account of a user who has one here (whatever
        their secret) and whom the validator says it authorizes: asked
        again, not taken on the mechanism's word (the validator caches)."""
        if stored is None or name is None or self.token_validator is None:
            return defer.succeed(False)

        def refused(failure: Failure) -> bool:
            failure.trap(TokenRefused)
            return False

        d = defer.maybeDeferred(self.token_validator.validate, credentials.token, name)
        return d.addCallbacks(lambda user: user == name, refused)

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
        scram_key: bytes | None = None,
        token_validator: ITokenValidator | None = None,
    ) -> None:
        super().__init__(
            reactor=reactor,
            run_in_thread=run_in_thread,
            max_parallel=max_parallel,
            scram_key=scram_key,
            token_validator=token_validator,
        )
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
        d = self.check(credentials, self._stored(name), name)
        return d.addCallbacks(self._outcome, self._error, callbackArgs=(name,))

    def scram_secret(self, name: str) -> defer.Deferred[scram.ScramSecret]:
        """The user's SCRAM secret, for the SCRAM exchange (a fake one for
        users who do not exist or cannot use SCRAM)."""
        return self.scram_secret_of(self._stored(name), name)

    def any_scram(self) -> bool:
        """Whether any user could log in with SCRAM (has a SCRAM or a
        plaintext-equivalent secret); protocols offer SCRAM only then."""
        return any(
            scram_secret(user.password) is not None or plaintext_secret_bytes(user.password)
            for user in self._passwd.users()
        )

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
