"""``mailsrv user``, over the users file or the users table alike, and the
look-ups of users that the other subcommands make."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
from collections.abc import Iterator
from typing import IO, Any

from mailsrv.cli_common import (
    EX_CONFIG,
    EX_DATAERR,
    EX_NOUSER,
    EX_OK,
    CommandError,
    config_of,
    connect,
    database,
)
from mailsrv.config import Config


def _read_password(args: argparse.Namespace, stdin: IO[str]) -> str:
    if args.password_stdin:
        line = stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password.removesuffix("\r")
    else:
        try:
            password = getpass.getpass(f"Password for {args.name}: ")
            again = getpass.getpass("Again: ")
        except EOFError:
            raise CommandError(
                "no password given (input ended); to pipe one in, use --password-stdin",
                EX_DATAERR,
            ) from None
        if again != password:
            raise CommandError("passwords do not match", EX_DATAERR)
    if not password:
        raise CommandError("empty password refused", EX_DATAERR)
    return password


class _FileUsers:
    """The users of a passwd-file, for ``mailsrv user``; ``where`` names
    them in messages, ``kept`` is said after a removal."""

    kept = ""

    def __init__(self, path: str) -> None:
        from mailsrv.auth.passwdfile import PasswdFile

        self.file, self.where = PasswdFile(path), path

    def names(self) -> list[str]:
        return [record.name for record in self.file.users()]

    def exists(self, name: str) -> bool:
        return self.file.get(name) is not None

    def add(self, name: str, secret: str, home: str | None) -> None:
        self.file.add(name, secret, home=home)

    def set_password(self, name: str, secret: str) -> None:
        self.file.set_password(name, secret)

    def remove(self, name: str) -> None:
        self.file.remove(name)


class _TableUsers:
    """The users table of ``[auth] backend = "postgresql"``, as _FileUsers."""

    where, kept = "the users table", " (the mail is kept)"

    def __init__(self, conn: Any) -> None:
        from mailsrv.auth import pgusers

        self.conn, self.table = conn, pgusers

    def names(self) -> list[str]:
        return [name for name, _home in self.table.list_users(self.conn)]

    def exists(self, name: str) -> bool:
        return self.table.lookup(self.conn, name) is not None

    def add(self, name: str, secret: str, home: str | None) -> None:
        self.table.add_user(self.conn, name, secret, home)

    def set_password(self, name: str, secret: str) -> None:
        self.table.set_password(self.conn, name, secret)

    def remove(self, name: str) -> None:
        self.table.remove_user(self.conn, name)


def run_user(args: argparse.Namespace, stdin: IO[str], stdout: IO[str]) -> int:
    config = config_of(args)
    if config.auth.backend == "postgresql":
        return _user_postgresql(args, config, stdin, stdout)
    from mailsrv.auth.passwdfile import create_empty

    path = config.users.passwd_file
    if args.user_command == "add" and not os.path.exists(path):
        with contextlib.suppress(FileExistsError):  # another add created it meanwhile
            create_empty(path)
    if not os.path.exists(path):
        raise CommandError(f"{path}: users file not found", EX_CONFIG)
    with _user_errors():
        _user_action(args, _FileUsers(path), config, stdin, stdout)
    return EX_OK


def _user_postgresql(
    args: argparse.Namespace, config: Config, stdin: IO[str], stdout: IO[str]
) -> int:
    """``mailsrv user ...`` with ``[auth] backend = "postgresql"``."""
    from mailsrv.storage.postgres import schema

    with database(config.auth_dsn) as conn, _user_errors():
        schema.check_version(conn)
        _user_action(args, _TableUsers(conn), config, stdin, stdout)
    return EX_OK


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """A user the command cannot find is EX_NOUSER; a bad name, password or
    scheme, or a user who exists already, EX_DATAERR."""
    from mailsrv.auth.passwdfile import NoSuchUser, UserExists

    try:
        yield
    except NoSuchUser as e:
        raise CommandError(str(e), EX_NOUSER) from None
    except (UserExists, ValueError) as e:
        raise CommandError(str(e), EX_DATAERR) from None


def _user_action(
    args: argparse.Namespace,
    users: _FileUsers | _TableUsers,
    config: Config,
    stdin: IO[str],
    stdout: IO[str],
) -> None:
    """``mailsrv user list|add|passwd|del`` on ``users``."""
    from mailsrv.auth.passwdfile import NoSuchUser, UserExists, validate_user_name
    from mailsrv.auth.passwords import hash_password

    action, where = args.user_command, users.where
    if action == "list":
        for name in users.names():
            stdout.write(f"{name}\n")
        return
    if action == "del":
        users.remove(args.name)
        stdout.write(f"removed {args.name} from {where}{users.kept}\n")
        return
    validate_user_name(args.name)
    known = users.exists(args.name)
    if action == "add" and known:
        raise UserExists(f"user {args.name!r} already exists in {where}")
    if action == "passwd" and not known:
        raise NoSuchUser(f"no user {args.name!r} in {where}")
    secret = hash_password(_read_password(args, stdin), args.scheme or config.users.default_scheme)
    if action == "add":
        home = os.path.abspath(args.home) if args.home else None
        users.add(args.name, secret, home)
        stdout.write(f"added {args.name} to {where}\n")
    else:
        users.set_password(args.name, secret)
        stdout.write(f"changed the password of {args.name} in {where}\n")


def home_of(config: Config, user: str) -> str | None:
    """The user's home from the users file or table; unknown users are EX_NOUSER."""
    from mailsrv.auth.passwdfile import PasswdFile

    if config.auth.backend == "postgresql":
        from mailsrv.auth import pgusers
        from mailsrv.errors import TemporaryFailure

        conn = connect(config.auth_dsn)
        try:
            found = pgusers.lookup(conn, user)
        except Exception as e:
            raise TemporaryFailure(f"cannot look the user up: {e}") from None
        finally:
            conn.close()
        if found is None:
            raise CommandError(f"no user {user!r} in the users table", EX_NOUSER)
        return found[1]
    passwd = PasswdFile(config.users.passwd_file)
    record = passwd.get(user)
    if record is None:
        raise CommandError(f"no user {user!r} in {config.users.passwd_file}", EX_NOUSER)
    return record.home


def extra_fields(config: Config, user: str) -> list[str]:
    """The user's extra fields in the users file (quota rules...); the
    users table has none."""
    from mailsrv.auth.passwdfile import PasswdFile

    if config.auth.backend == "postgresql":
        return []
    record = PasswdFile(config.users.passwd_file).get(user)
    return record.extra.split() if record is not None else []


def all_users(config: Config) -> list[tuple[str, str | None]]:
    """(name, home) of every configured user, from the users file or table."""
    if config.auth.backend == "postgresql":
        from mailsrv.auth import pgusers

        conn = connect(config.auth_dsn)
        try:
            return pgusers.list_users(conn)
        finally:
            conn.close()
    from mailsrv.auth.passwdfile import PasswdFile

    if not os.path.exists(config.users.passwd_file):
        raise CommandError(f"{config.users.passwd_file}: users file not found", EX_CONFIG)
    return [(record.name, record.home) for record in PasswdFile(config.users.passwd_file).users()]
