"""``mailsrv db upgrade|status|prune`` and ``mailsrv migrate``: the
PostgreSQL schema, and moving accounts between Maildir and PostgreSQL."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import IO, Any

from mailsrv.cli_common import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_DATAERR,
    EX_INTERRUPTED,
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
    EX_USAGE,
    CommandError,
    config_of,
    database,
)
from mailsrv.cli_users import all_users
from mailsrv.config import Config


def run_migrate(args: argparse.Namespace, stdout: IO[str], stderr: IO[str]) -> int:
    """``mailsrv migrate``: see :mod:`mailsrv.migrate`."""
    from mailsrv.migrate import Progress

    if args.source == args.target:
        raise CommandError("--from and --to name the same backend", EX_USAGE)
    config = config_of(args)
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
    users = all_users(config)
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


def _databases(config: Config) -> list[str]:
    """The PostgreSQL databases the configuration uses (mail, users), once each."""
    found = []
    if config.storage.backend == "postgresql":
        found.append(config.storage.dsn)
    if config.auth.backend == "postgresql" and config.auth_dsn not in found:
        found.append(config.auth_dsn)
    return found


def run_db(args: argparse.Namespace, stdout: IO[str]) -> int:
    """``mailsrv db upgrade`` / ``status`` / ``prune``: the PostgreSQL schema."""
    config = config_of(args)
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
    with database(dsn) as conn:
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
