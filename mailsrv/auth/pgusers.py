"""Users in PostgreSQL: ``[auth] backend = "postgresql"``.

The users live in the ``users`` table of the mail schema (migration 3 gave
it ``password`` and ``home``), so every node sees a new user or a changed
password at once, with nothing to copy between machines.  A row whose
password is NULL is not a user who may log in: the storage creates rows for
mail owners, and ``mailsrv user del`` clears the password but keeps the
mail, as deleting a line of the users file keeps the Maildir.

Passwords are stored exactly as in the users file (``{ARGON2ID}...``,
``{BLF-CRYPT}...``, ``{PLAIN}...``), so the same schemes work and a users
file can be loaded with ``mailsrv user add --password-stdin`` or copied row
by row.

:class:`PostgresChecker` looks the user up in a database worker thread and
then hashes in the reactor's pool exactly as the users file's checker does
(:class:`~mailsrv.auth.checker.HashingChecker`): an unknown user costs a
lookup and a dummy hash like a known one, and a database that cannot be
reached is a temporary failure (IMAP ``NO [UNAVAILABLE]``), never a failed
login.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import attrs
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from twisted.internet.interfaces import IReactorThreads
from zope.interface import implementer

from mailsrv import log
from mailsrv.auth import scram
from mailsrv.auth.checker import HashingChecker, decode_name
from mailsrv.auth.passwdfile import NoSuchUser, UserExists, validate_user_name
from mailsrv.auth.passwords import (
    PLAINTEXT_SCHEMES,
    is_known_scheme,
    plaintext_secret_bytes,
    scram_secret,
)
from mailsrv.storage.postgres.db import Database

__all__ = [
    "PostgresChecker",
    "add_user",
    "any_plaintext",
    "any_scram",
    "list_users",
    "lookup",
    "remove_user",
    "set_password",
]

_log = log.get_logger(__name__)

#: Seconds between checks whether any user has a plaintext-equivalent (or
#: a SCRAM) secret.
PLAINTEXT_REFRESH = 30.0
#: Homes remembered from successful lookups, for the realm.
_HOMES_KEPT = 10000


# -- SQL, run in a worker thread or by `mailsrv user` ---------------------------------


def lookup(conn: Any, name: str) -> tuple[str, str | None] | None:
    """(password, home) of a user who may log in, or None."""
    row = conn.execute(
        "SELECT password, home FROM users WHERE user_name = %s AND password IS NOT NULL",
        (name,),
    ).fetchone()
    return None if row is None else (row[0], row[1])


def _check_secret(password_hash: str) -> None:
    if not password_hash or any(c in password_hash for c in "\n\r\0"):
        raise ValueError("empty password field, or one with CR, LF or NUL")
    if not is_known_scheme(password_hash):
        raise ValueError("unknown or malformed password scheme")


def add_user(conn: Any, name: str, password_hash: str, home: str | None = None) -> None:
    """Add a user (UserExists if one with a password has the name).

    A row without a password (mail kept after ``user del``, or created by
    the storage) takes the password: the user gets the old mail back, as
    re-adding a line to the users file finds the Maildir again.
    """
    validate_user_name(name)
    _check_secret(password_hash)
    if home is not None and (not home.startswith("/") or any(ord(c) < 0x20 for c in home)):
        raise ValueError(f"home must be an absolute path without control characters: {home!r}")
    row = conn.execute(
        "INSERT INTO users (user_name, password, home, password_changed_at) "
        "VALUES (%s, %s, %s, now()) ON CONFLICT (user_name) DO UPDATE "
        "SET password = EXCLUDED.password, home = EXCLUDED.home, password_changed_at = now() "
        "WHERE users.password IS NULL RETURNING 1",
        (name, password_hash, home),
    ).fetchone()
    if row is None:
        raise UserExists(f"user {name!r} already exists")


def set_password(conn: Any, name: str, password_hash: str) -> None:
    _check_secret(password_hash)
    row = conn.execute(
        "UPDATE users SET password = %s, password_changed_at = now() "
        "WHERE user_name = %s AND password IS NOT NULL RETURNING 1",
        (password_hash, name),
    ).fetchone()
    if row is None:
        raise NoSuchUser(f"no such user: {name!r}")


def remove_user(conn: Any, name: str) -> None:
    """Take away the user's password (and so the login); the mail stays."""
    row = conn.execute(
        "UPDATE users SET password = NULL, password_changed_at = now() "
        "WHERE user_name = %s AND password IS NOT NULL RETURNING 1",
        (name,),
    ).fetchone()
    if row is None:
        raise NoSuchUser(f"no such user: {name!r}")


def list_users(conn: Any) -> list[tuple[str, str | None]]:
    """(name, home) of every user who may log in, by name."""
    rows = conn.execute(
        "SELECT user_name, home FROM users WHERE password IS NOT NULL "
        'ORDER BY user_name COLLATE "C"'
    ).fetchall()
    return [(row[0], row[1]) for row in rows]


def any_plaintext(conn: Any) -> bool:
    """Whether some user has a plaintext-equivalent secret (CRAM-MD5, APOP).

    The scheme is matched in SQL on the prefix and confirmed in Python, so
    the rule is :func:`plaintext_secret_bytes`' own.
    """
    prefixes = [f"{{{scheme}}}%" for scheme in sorted(PLAINTEXT_SCHEMES)]
    rows = conn.execute(
        "SELECT password FROM users WHERE password ILIKE ANY(%s) LIMIT 100", (prefixes,)
    ).fetchall()
    return any(plaintext_secret_bytes(row[0]) for row in rows)


def any_scram(conn: Any) -> bool:
    """Whether some user can log in with SCRAM: has a ``{SCRAM-SHA-256}``
    secret or a plaintext-equivalent one (from which one is derived)."""
    rows = conn.execute(
        "SELECT password FROM users WHERE password ILIKE %s LIMIT 100", (f"{{{scram.SCHEME}}}%",)
    ).fetchall()
    return any(scram_secret(row[0]) is not None for row in rows) or any_plaintext(conn)


def _secret_kinds(conn: Any) -> tuple[bool, bool]:
    return any_plaintext(conn), any_scram(conn)


# -- the checker ------------------------------------------------------------------------


@attrs.frozen
class UserEntry:
    """A user of the ``users`` table as a recipient look-up sees it."""

    name: str
    home: str | None


@implementer(ICredentialsChecker)
class PostgresChecker(HashingChecker):
    """Checks user names and passwords against the ``users`` table.

    :param db: the database (the storage's own when both use one DSN).
    """

    def __init__(
        self,
        db: Database,
        *,
        reactor: IReactorThreads | None = None,
        run_in_thread: bool = True,
        max_parallel: int = 4,
        scram_key: bytes | None = None,
        token_validator: Any = None,
    ) -> None:
        super().__init__(
            reactor=reactor,
            run_in_thread=run_in_thread,
            max_parallel=max_parallel,
            scram_key=scram_key,
            token_validator=token_validator,
        )
        self.db = db
        self._homes: OrderedDict[str, str | None] = OrderedDict()
        self._plaintext = False
        self._scram = False
        self._plaintext_checked = float("-inf")
        self._plaintext_pending = False

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[str]:  # type: ignore[override]
        """Fire with the user name (``str``) or fail with UnauthorizedLogin;
        a database error fails with TemporaryFailure."""
        name = decode_name(getattr(credentials, "username", None))
        found = self._lookup(name)

        def check(record: tuple[str, str | None] | None) -> Any:
            stored = self.usable(record[0]) if record is not None else None
            d = self.check(credentials, stored, name)

            def remember(ok: bool) -> bool:
                if ok and name is not None and record is not None:
                    self._remember_home(name, record[1])
                return ok

            return d.addCallback(remember)

        d = found.addCallback(check)
        return d.addCallbacks(self._outcome, self._error, callbackArgs=(name,))

    def _lookup(self, name: str | None) -> defer.Deferred[Any]:
        """(password, home) of ``name``, or None, from a worker thread."""
        if name is None or not name or "\x00" in name:
            return defer.succeed(None)
        return defer.maybeDeferred(self.db.run, lookup, name, transaction=False)

    def scram_secret(self, name: str) -> defer.Deferred[scram.ScramSecret]:
        """The user's SCRAM secret, for the SCRAM exchange (a fake one for
        users who do not exist or cannot use SCRAM)."""
        d = self._lookup(name)
        return d.addCallback(
            lambda record: self.scram_secret_of(
                self.usable(record[0]) if record is not None else None, name
            )
        )

    def _remember_home(self, name: str, home: str | None) -> None:
        self._homes[name] = home
        self._homes.move_to_end(name)
        while len(self._homes) > _HOMES_KEPT:
            self._homes.popitem(last=False)

    def find_user(self, name: str) -> defer.Deferred[UserEntry | None]:
        """The user called ``name`` (with ``name`` and ``home``), or None:
        how LMTP finds a recipient without a password."""
        d: defer.Deferred[Any] = defer.maybeDeferred(self.db.run, lookup, name, transaction=False)
        return d.addCallback(lambda found: None if found is None else UserEntry(name, found[1]))

    def home_of(self, name: str) -> str | None:
        """The home found when ``name`` last logged in here (the realm asks
        right after a successful check, so no second query is needed)."""
        return self._homes.get(name)

    def any_plaintext(self) -> bool:
        """Whether CRAM-MD5 and APOP can succeed, as last looked up.

        Protocols ask at every connection and need the answer at once; the
        lookup runs in the background at most every
        :data:`PLAINTEXT_REFRESH` seconds, and until the first one has
        answered the mechanisms are not offered.
        """
        self._refresh_kinds()
        return self._plaintext

    def any_scram(self) -> bool:
        """Whether SCRAM can succeed, as last looked up (as :meth:`any_plaintext`)."""
        self._refresh_kinds()
        return self._scram

    def _refresh_kinds(self) -> None:
        now = time.monotonic()
        if not self._plaintext_pending and now - self._plaintext_checked >= PLAINTEXT_REFRESH:
            self._plaintext_pending = True
            self._plaintext_checked = now
            d = defer.maybeDeferred(self.db.run, _secret_kinds, transaction=False)
            d.addCallbacks(self._plaintext_known, self._plaintext_failed)

    def _plaintext_known(self, kinds: tuple[bool, bool]) -> None:
        self._plaintext, self._scram = bool(kinds[0]), bool(kinds[1])
        self._plaintext_pending = False

    def _plaintext_failed(self, failure: Any) -> None:
        self._plaintext_pending = False
        _log.info("cannot tell whether users have plaintext secrets: {e}", e=failure.value)
