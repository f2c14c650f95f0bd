"""The ``mailsrv`` admin command.

Every subcommand reads the configuration exactly as the twistd plugin does
(``--config FILE`` plus the overrides ``--passwd`` and ``--maildir``), so
``mailsrv user add alice --passwd ./var/passwd`` and a daemon started with
``--passwd ./var/passwd`` agree about where users live.

Exit statuses follow sysexits(3): 0 success, 64 usage, 65 bad data,
67 unknown user, 70 internal error, 73 cannot create, 75 temporary failure,
78 configuration error.  ``deliver`` is run by MTAs, which bounce the
message on every status but 75 (Postfix treats only EX_TEMPFAIL and
EX_OSERR as temporary), so every failure of ``deliver`` that the
administrator can fix -- configuration, storage, an unexpected error -- is
75, and only an unknown user (67), bad usage (64) or an empty message (65)
is final.  A message over the user's quota is 75 too, unless ``[quota]
delivery = "bounce"`` makes it final (73).

A command whose reader goes away (``mailsrv user list | head -1``) stops
quietly with status 141, what a shell reports for a Unix tool that SIGPIPE
ended; ``deliver``, which writes only errors, exits 75 then, so the MTA
retries rather than bounces.

Warnings logged while a command runs (a ``--folder`` that does not exist,
an index being rebuilt) are written to standard error, where the MTA's log
picks them up.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any, cast

import attrs
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from zope.interface import implementer

from mailsrv import __version__
from mailsrv.config import Config, describe, format_error, load_config
from mailsrv.errors import ConfigError, StorageError

if TYPE_CHECKING:
    from mailsrv.interfaces import IAccount

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_CONFIG = 78
#: Not a sysexits status: what a shell shows for a command SIGPIPE ended.
EX_PIPE = 128 + signal.SIGPIPE
#: Likewise for Ctrl-C (SIGINT): ``mailsrv migrate`` stops and says how to resume.
EX_INTERRUPTED = 128 + signal.SIGINT


class CommandError(Exception):
    """A failure to report as one line on stderr with an exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("configuration (as for twistd mailsrv)")
    group.add_argument("-c", "--config", metavar="FILE", help="TOML configuration file")
    group.add_argument("--passwd", metavar="FILE", help="users file, overriding users.passwd_file")
    group.add_argument(
        "--maildir", metavar="TEMPLATE", help="Maildir path template, overriding storage.maildir"
    )
    return common


def _parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="mailsrv", description="Administer a mailsrv IMAP/POP3 server."
    )
    parser.add_argument("--version", action="version", version=f"mailsrv {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    user = commands.add_parser("user", help="add, change, remove and list users")
    user_commands = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    for name, helptext in (
        ("add", "add a user"),
        ("passwd", "set a user's password"),
    ):
        sub = user_commands.add_parser(name, parents=[common], help=helptext)
        sub.add_argument("name", help="user name")
        sub.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from the first line of standard input instead of a prompt",
        )
        sub.add_argument(
            "--scheme",
            choices=("ARGON2ID", "BLF-CRYPT", "SCRAM-SHA-256", "PLAIN"),
            help="password scheme (default: users.default_scheme, ARGON2ID); SCRAM-SHA-256"
            " lets clients log in with SCRAM and still keeps no plaintext",
        )
        if name == "add":
            sub.add_argument("--home", metavar="DIR", help="home directory (for {home} templates)")
    sub = user_commands.add_parser("del", parents=[common], help="remove a user")
    sub.add_argument("name", help="user name")
    user_commands.add_parser("list", parents=[common], help="list users")

    check = commands.add_parser(
        "check-config", parents=[common], help="validate a configuration file and exit"
    )
    check.add_argument("file", nargs="?", metavar="FILE", help="configuration file to check")

    deliver = commands.add_parser(
        "deliver",
        parents=[common],
        help="deliver a message from standard input (MTA mailbox_command / --mda)",
    )
    deliver.add_argument("user", help="recipient user name")
    deliver.add_argument("--folder", "-m", default="INBOX", help="target mailbox (default INBOX)")

    db = commands.add_parser(
        "db", help="manage the PostgreSQL database (storage.backend = 'postgresql')"
    )
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    db_commands.add_parser(
        "upgrade",
        parents=[common],
        help="create the schema or bring it to this version (safe to run again)",
    )
    db_commands.add_parser("status", parents=[common], help="show the schema version")
    prune = db_commands.add_parser(
        "prune",
        parents=[common],
        help="drop expunge-log rows and deleted mailboxes older than storage.retention_days",
    )
    prune.add_argument(
        "--days", type=int, metavar="N", help="keep N days instead of storage.retention_days"
    )

    migrate = commands.add_parser(
        "migrate",
        parents=[common],
        help="move accounts between the Maildir tree and the PostgreSQL database",
        description="Copy accounts keeping UIDVALIDITY, UIDs, flags, keywords, internal dates, "
        "special use, subscriptions and POP3 UIDLs. Resumable: run it again after an "
        "interruption. Exit status: 0 done, 65 --verify found differences, 67 unknown --user, "
        "73 some users could not be migrated, 75 the database is unavailable (run again), "
        "78 configuration error, 130 interrupted (run again).",
    )
    migrate.add_argument("--from", dest="source", required=True, choices=("maildir", "postgresql"))
    migrate.add_argument("--to", dest="target", required=True, choices=("maildir", "postgresql"))
    migrate.add_argument(
        "--user", action="append", metavar="NAME", help="only this user (repeatable; default: all)"
    )
    migrate.add_argument(
        "--verify", action="store_true", help="compare both sides instead of copying"
    )

    reindex = commands.add_parser(
        "reindex", parents=[common], help="rebuild a user's index from the Maildir files"
    )
    reindex.add_argument("user", help="user name")

    cert = commands.add_parser(
        "gen-cert",
        parents=[common],
        help="create the self-signed certificate and key named by [tls] (development)",
    )
    cert.add_argument("--force", action="store_true", help="replace existing files")
    return parser


def _config(args: argparse.Namespace, *, check_files: bool = False) -> Config:
    path = args.config
    if args.command == "check-config" and args.file:
        path = args.file
    return load_config(
        path,
        {"passwd": args.passwd, "maildir": args.maildir},
        check_files=check_files,
        require_listeners=args.command == "check-config",
    )


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


def _connect(dsn: str) -> Any:
    """An autocommit connection to a configured database; unreachable is EX_TEMPFAIL."""
    import psycopg

    from mailsrv.config import redact_dsn

    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as e:
        where = redact_dsn(dsn)
        raise CommandError(f"cannot connect to {where}: {e}".strip(), EX_TEMPFAIL) from None


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


def _user(args: argparse.Namespace, stdin: IO[str], stdout: IO[str]) -> int:
    config = _config(args)
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


@contextlib.contextmanager
def _database(dsn: str) -> Iterator[Any]:
    """A connection to a configured database, closed after: a schema this
    mailsrv cannot use is EX_CONFIG, the database away EX_TEMPFAIL, any
    other database error EX_SOFTWARE."""
    import psycopg

    from mailsrv.storage.postgres import schema

    conn = _connect(dsn)
    try:
        yield conn
    except schema.SchemaError as e:
        raise CommandError(str(e), EX_CONFIG) from None
    except psycopg.OperationalError as e:
        raise CommandError(f"database unavailable: {e}".strip(), EX_TEMPFAIL) from None
    except psycopg.Error as e:
        raise CommandError(f"database error: {e}".strip(), EX_SOFTWARE) from None
    finally:
        conn.close()


def _user_postgresql(
    args: argparse.Namespace, config: Config, stdin: IO[str], stdout: IO[str]
) -> int:
    """``mailsrv user ...`` with ``[auth] backend = "postgresql"``."""
    from mailsrv.storage.postgres import schema

    with _database(config.auth_dsn) as conn, _user_errors():
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


def _home(config: Config, user: str) -> str | None:
    """The user's home from the users file or table; unknown users are EX_NOUSER."""
    from mailsrv.auth.passwdfile import PasswdFile

    if config.auth.backend == "postgresql":
        from mailsrv.auth import pgusers
        from mailsrv.errors import TemporaryFailure

        conn = _connect(config.auth_dsn)
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


def _extra_fields(config: Config, user: str) -> list[str]:
    """The user's extra fields in the users file (quota rules...); the
    users table has none."""
    from mailsrv.auth.passwdfile import PasswdFile

    if config.auth.backend == "postgresql":
        return []
    record = PasswdFile(config.users.passwd_file).get(user)
    return record.extra.split() if record is not None else []


def _account(config: Config, user: str) -> Any:
    from mailsrv.service import build_storage

    home = _home(config, user)
    return build_storage(config).account(user, home)


def _deliver(args: argparse.Namespace, stdin: IO[bytes], stdout: IO[str]) -> int:
    from mailsrv.errors import OverQuota
    from mailsrv.quota import quotas_from_config
    from mailsrv.service import build_storage
    from mailsrv.storage.deliver import EmptyMessage, deliver

    config = _config(args, check_files=True)
    if config.storage.backend not in ("maildir", "postgresql"):
        raise CommandError("deliver needs storage.backend = 'maildir' or 'postgresql'", EX_TEMPFAIL)
    home = _home(config, args.user)
    quotas = quotas_from_config(config, lambda user: _extra_fields(config, user))
    # Without a reactor every storage call answers at once: one connection
    # is all a PostgreSQL delivery needs.
    storage = build_storage(attrs.evolve(config, storage=attrs.evolve(config.storage, pool_size=1)))
    try:
        # Without a reactor the storage answers at once, never with a Deferred.
        account = cast("IAccount", storage.account(args.user, home))
        deliver(account, stdin, args.folder, quotas.limits_of(args.user))
    except EmptyMessage as e:
        raise CommandError(str(e), EX_DATAERR) from None
    except OverQuota as e:
        # [quota] delivery: "tempfail" keeps the message at the MTA, which
        # retries until the user makes room; "bounce" returns it at once
        # (EX_CANTCREAT, which Postfix reports as 5.2.0, a mailbox problem).
        if quotas.bounce:
            raise CommandError(f"mailbox full: {e}", EX_CANTCREAT) from None
        raise CommandError(f"mailbox full, try again later: {e}", EX_TEMPFAIL) from None
    except (StorageError, OSError) as e:
        # TemporaryFailure, and every other storage problem too: a missing
        # home for {home}, UIDs to reindex, a vanished directory are all for
        # the administrator to fix while the MTA keeps the message.
        raise CommandError(f"temporary failure, try again later: {e}", EX_TEMPFAIL) from None
    finally:
        close = getattr(storage, "close", None)
        if close is not None:
            close()
    return EX_OK


def _all_users(config: Config) -> list[tuple[str, str | None]]:
    """(name, home) of every configured user, from the users file or table."""
    if config.auth.backend == "postgresql":
        from mailsrv.auth import pgusers

        conn = _connect(config.auth_dsn)
        try:
            return pgusers.list_users(conn)
        finally:
            conn.close()
    from mailsrv.auth.passwdfile import PasswdFile

    if not os.path.exists(config.users.passwd_file):
        raise CommandError(f"{config.users.passwd_file}: users file not found", EX_CONFIG)
    return [(record.name, record.home) for record in PasswdFile(config.users.passwd_file).users()]


def _migrate(args: argparse.Namespace, stdout: IO[str], stderr: IO[str]) -> int:
    """``mailsrv migrate``: see :mod:`mailsrv.migrate`."""
    from mailsrv.migrate import Progress

    if args.source == args.target:
        raise CommandError("--from and --to name the same backend", EX_USAGE)
    config = _config(args)
    if not config.storage.dsn:
        raise CommandError(
            "migrate needs storage.dsn (the database) and storage.maildir (the Maildir tree) "
            "in the configuration",
            EX_CONFIG,
        )
    users = _migration_users(args, config)
    progress = Progress(stderr)
    migration = _open_migration(config, progress)
    if args.verify:
        step = migration.verify
    elif args.target == "postgresql":
        step = migration.to_postgresql
    else:
        step = migration.to_maildir
    outcomes = _migrate_users(migration, step, users, progress, args.verify)
    progress.summary(outcomes, args.verify)
    if any(o.error is not None for o in outcomes):
        return EX_CANTCREAT
    if any(o.differences for o in outcomes):
        return EX_DATAERR
    return EX_OK


def _migration_users(args: argparse.Namespace, config: Config) -> list[tuple[str, str | None]]:
    """(name, home) of the users to migrate: all, or those ``--user`` names."""
    users = _all_users(config)
    if not args.user:
        return users
    known = dict(users)
    unknown = [name for name in args.user if name not in known]
    if unknown:
        raise CommandError(f"no user {unknown[0]!r} among the configured users", EX_NOUSER)
    return [(name, known[name]) for name in args.user]


def _open_migration(config: Config, progress: Any) -> Any:
    """A Migration whose database schema is current."""
    from mailsrv.errors import TemporaryFailure
    from mailsrv.migrate import Migration

    migration = Migration(config, progress)
    try:
        migration.postgres.check_schema()
    except TemporaryFailure as e:
        migration.close()
        raise CommandError(f"{e}; run again when it is back", EX_TEMPFAIL) from None
    except Exception as e:
        migration.close()
        raise CommandError(str(e), EX_CONFIG) from None
    return migration


def _migrate_users(
    migration: Any,
    step: Callable[[str, str | None], Any],
    users: list[tuple[str, str | None]],
    progress: Any,
    verify: bool,
) -> list[Any]:
    """Each user's outcome of ``step``; an outage or ^C stops the run
    (after a summary of what was done), to be resumed by running it again."""
    from mailsrv.errors import TemporaryFailure
    from mailsrv.migrate import MigrationError, UserOutcome

    outcomes: list[Any] = []
    try:
        for name, home in users:
            try:
                outcome = step(name, home)
            except MigrationError as e:
                outcome = UserOutcome(name, error=str(e))
            progress.user_done(outcome)
            outcomes.append(outcome)
    except TemporaryFailure as e:
        progress.summary(outcomes, verify)
        raise CommandError(
            f"{e}; stopped: run the same command again to resume", EX_TEMPFAIL
        ) from None
    except KeyboardInterrupt:
        progress.summary(outcomes, verify)
        raise CommandError(
            "interrupted: run the same command again to resume", EX_INTERRUPTED
        ) from None
    finally:
        migration.close()
    return outcomes


def _reindex(args: argparse.Namespace, stdout: IO[str]) -> int:
    from mailsrv.storage.deliver import reindex

    config = _config(args, check_files=True)
    if config.storage.backend != "maildir":
        raise CommandError("reindex rebuilds Maildir indexes: storage.backend is not 'maildir'")
    counts = reindex(_account(config, args.user))
    for folder, count in sorted(counts.items()):
        stdout.write(f"{folder}: {count} messages\n")
    return EX_OK


def _databases(config: Config) -> list[str]:
    """The PostgreSQL databases the configuration uses (mail, users), once each."""
    found = []
    if config.storage.backend == "postgresql":
        found.append(config.storage.dsn)
    if config.auth.backend == "postgresql" and config.auth_dsn not in found:
        found.append(config.auth_dsn)
    return found


def _db(args: argparse.Namespace, stdout: IO[str]) -> int:
    """``mailsrv db upgrade`` / ``status`` / ``prune``: the PostgreSQL schema."""
    config = _config(args)
    databases = _databases(config)
    if not databases:
        raise CommandError(
            f"storage.backend is {config.storage.backend!r} and auth.backend "
            f"{config.auth.backend!r}: `mailsrv db` manages the database of the "
            "'postgresql' backends",
            EX_CONFIG,
        )
    if args.db_command == "prune" and config.storage.backend != "postgresql":
        raise CommandError(
            "`mailsrv db prune` cleans the mail database: storage.backend is not 'postgresql'",
            EX_CONFIG,
        )
    for dsn in databases if args.db_command != "prune" else databases[:1]:
        status = _db_one(args, config, dsn, stdout, len(databases) > 1)
        if status != EX_OK:
            return status
    return EX_OK


def _db_one(
    args: argparse.Namespace, config: Config, dsn: str, stdout: IO[str], name_it: bool
) -> int:
    import datetime

    from mailsrv.config import redact_dsn
    from mailsrv.storage.postgres import maintenance, schema

    prefix = f"{redact_dsn(dsn)}: " if name_it else ""
    with _database(dsn) as conn:
        if args.db_command == "upgrade":
            before, after = schema.upgrade(conn)
            if before == after:
                stdout.write(f"{prefix}schema already at version {after}\n")
            else:
                stdout.write(f"{prefix}schema upgraded from version {before} to {after}\n")
            return EX_OK
        if args.db_command == "prune":
            schema.check_version(conn)
            days = args.days if args.days is not None else config.storage.retention_days
            if days < 1:
                raise CommandError("--days must be at least 1", EX_USAGE)
            done = maintenance.prune(conn, datetime.timedelta(days=days))
            stdout.write(
                f"pruned {done.expunged} expunge-log rows and {done.mailboxes} deleted "
                f"mailboxes older than {days} days\n"
            )
            return EX_OK
        found = schema.version(conn)
        stdout.write(
            f"{prefix}schema version {found} (this mailsrv uses {schema.SCHEMA_VERSION})\n"
        )
        schema.check_version(conn)
        return EX_OK


def _gen_cert(args: argparse.Namespace, stdout: IO[str]) -> int:
    from mailsrv.tls import generate_self_signed

    config = _config(args)
    tls = config.tls
    if tls.certificate is None or tls.key is None:
        raise CommandError("set tls.certificate and tls.key in the configuration first", EX_CONFIG)
    if not args.force and (os.path.exists(tls.certificate) or os.path.exists(tls.key)):
        raise CommandError(
            f"{tls.certificate} or {tls.key} exists; use --force to replace", EX_CANTCREAT
        )
    generate_self_signed(tls.certificate, tls.key, config.server.hostname, replace=args.force)
    stdout.write(f"wrote {tls.certificate} and {tls.key}\n")
    return EX_OK


def _check_quota_rules(config: Config, users: Sequence[Any], stdout: IO[str]) -> None:
    """Say which users' quota rules the daemon would ignore, and why."""
    from mailsrv.quota import limits_from_fields

    for user in users:

        def warn(reason: str, name: str = user.name) -> None:
            stdout.write(
                f"  warning: {config.users.passwd_file}: quota rule of {name} ignored: {reason}\n"
            )

        limits_from_fields(user.extra.split(), config.quota_default, warn)


def _check_config(args: argparse.Namespace, stdout: IO[str]) -> int:
    """Everything the daemon checks before it binds: the file, the
    certificate and the users file."""
    from mailsrv.auth.passwdfile import PasswdFile

    path = args.file or args.config
    if path is None:
        raise CommandError("check-config needs a FILE (or --config FILE)", EX_USAGE)
    config = load_config(path, {"passwd": args.passwd, "maildir": args.maildir})
    tls_pending = False
    if config.tls_enabled:
        from mailsrv.service import tls_context_of

        # The pair must match, generate_self_signed or not; a pair still to
        # be generated is not created here.
        tls_pending = tls_context_of(config, create=False) is None
    count: int | None = None
    if config.auth.backend == "postgresql":
        pass  # the database is not needed to check the file
    elif os.path.exists(config.users.passwd_file):
        users = PasswdFile(config.users.passwd_file).users()
        count = len(users)
        _check_quota_rules(config, users, stdout)
    else:  # create_if_missing: the daemon creates it
        count = 0
    for line in describe(config):
        stdout.write(line + "\n")
    if tls_pending:
        stdout.write("  (self-signed certificate and key to be created at first start)\n")
    if count is not None:
        stdout.write(f"  users: {count}\n")
    return EX_OK


@implementer(ILogObserver)
class _StderrLog:
    """Shows warnings and errors logged during a command on standard error."""

    def __init__(self, stderr: IO[str]) -> None:
        self.stderr = stderr

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level not in (LogLevel.warn, LogLevel.error, LogLevel.critical):
            return
        self.stderr.write(f"mailsrv: {level.name}: {formatEvent(event)}\n")
        failure = event.get("log_failure")
        if failure is not None:
            self.stderr.write(failure.getTraceback())


@contextlib.contextmanager
def _logging_to(stderr: IO[str]) -> Iterator[None]:
    observer = _StderrLog(stderr)
    globalLogPublisher.addObserver(observer)
    try:
        yield
    finally:
        globalLogPublisher.removeObserver(observer)


def main(
    argv: Sequence[str] | None = None,
    stdin: IO[Any] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Run the command; returns the exit status (the console script exits with it)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EX_USAGE if e.code not in (0, None) else EX_OK
    delivering = args.command == "deliver"
    try:
        status = _run(args, stdin, stdout, stderr)
        # Buffered output reaches a pipe here, not at exit, where a reader
        # that went away would be reported as "Exception ignored".
        stdout.flush()
    except BrokenPipeError:
        # Nobody reads any more: nothing more can be said to anyone, so say
        # nothing, as a Unix tool that SIGPIPE ends (Python ignores SIGPIPE).
        for stream in (stdout, stderr):
            _discard_output(stream)
        return EX_TEMPFAIL if delivering else EX_PIPE
    return status


def _run(args: argparse.Namespace, stdin: IO[Any] | None, stdout: IO[str], stderr: IO[str]) -> int:
    delivering = args.command == "deliver"
    try:
        with _logging_to(stderr):
            return _dispatch(args, stdin, stdout, stderr)
    except BrokenPipeError:
        raise
    except ConfigError as e:
        stderr.write(format_error(e) + "\n")
        # A bounce for a typo in the configuration would be a message lost
        # to its recipient; the MTA keeps it until the file is fixed.
        return EX_TEMPFAIL if delivering else EX_CONFIG
    except CommandError as e:
        stderr.write(f"mailsrv: {e}\n")
        return e.status
    except Exception as e:
        stderr.write(f"mailsrv: internal error: {e!r}\n")
        traceback.print_exc(file=stderr)
        return EX_TEMPFAIL if delivering else EX_SOFTWARE


def _dispatch(
    args: argparse.Namespace, stdin: IO[Any] | None, stdout: IO[str], stderr: IO[str]
) -> int:
    """Run the subcommand."""
    if args.command == "user":
        return _user(args, stdin or sys.stdin, stdout)
    if args.command == "check-config":
        return _check_config(args, stdout)
    if args.command == "deliver":
        return _deliver(args, stdin or sys.stdin.buffer, stdout)
    if args.command == "reindex":
        return _reindex(args, stdout)
    if args.command == "migrate":
        return _migrate(args, stdout, stderr)
    if args.command == "db":
        return _db(args, stdout)
    if args.command == "gen-cert":
        return _gen_cert(args, stdout)
    raise AssertionError(args.command)


def _discard_output(stream: IO[str]) -> None:
    """Point a closed pipe's file descriptor at /dev/null, so the interpreter's
    own flush at exit does not fail again on what is still buffered."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.StringIO and the like
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


if __name__ == "__main__":  # python -m mailsrv.cli, where the script is not on PATH
    sys.exit(main())
