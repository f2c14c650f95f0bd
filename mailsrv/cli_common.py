"""What every ``mailsrv`` subcommand shares: the exit statuses, the error
that carries one, and the configuration and database each command opens.

Kept apart from :mod:`mailsrv.cli` so that ``python -m mailsrv.cli`` (where
that module is ``__main__``) and the subcommand modules raise and catch one
and the same :class:`CommandError`.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
from collections.abc import Iterator
from typing import Any

from mailsrv.config import Config, load_config

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


def config_of(args: argparse.Namespace, *, check_files: bool = False) -> Config:
    path = args.config
    if args.command == "check-config" and args.file:
        path = args.file
    return load_config(
        path,
        {"passwd": args.passwd, "maildir": args.maildir},
        check_files=check_files,
        require_listeners=args.command == "check-config",
    )


def connect(dsn: str) -> Any:
    """An autocommit connection to a configured database; unreachable is EX_TEMPFAIL."""
    import psycopg

    from mailsrv.config import redact_dsn

    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as e:
        where = redact_dsn(dsn)
        raise CommandError(f"cannot connect to {where}: {e}".strip(), EX_TEMPFAIL) from None


@contextlib.contextmanager
def database(dsn: str) -> Iterator[Any]:
    """A connection to a configured database, closed after: a schema this
    mailsrv cannot use is EX_CONFIG, the database away EX_TEMPFAIL, any
    other database error EX_SOFTWARE."""
    import psycopg

    from mailsrv.storage.postgres import schema

    conn = connect(dsn)
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
