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
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import IO, Any

from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from zope.interface import implementer

from mailsrv import __version__
from mailsrv.cli_checks import run_check_config, run_gen_cert
from mailsrv.cli_common import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_DATAERR,
    EX_INTERRUPTED,
    EX_NOUSER,
    EX_OK,
    EX_PIPE,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_USAGE,
    CommandError,
    config_of,
)
from mailsrv.cli_db import run_db, run_migrate
from mailsrv.cli_deliver import run_deliver, run_reindex
from mailsrv.cli_users import run_user
from mailsrv.config import format_error
from mailsrv.errors import ConfigError

# The exit statuses and CommandError live in mailsrv.cli_common; they are
# named here too, where the tests and scripts look for them.
__all__ = [
    "EX_CANTCREAT",
    "EX_CONFIG",
    "EX_DATAERR",
    "EX_INTERRUPTED",
    "EX_NOUSER",
    "EX_OK",
    "EX_PIPE",
    "EX_SOFTWARE",
    "EX_TEMPFAIL",
    "EX_USAGE",
    "CommandError",
    "main",
]


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
    from mailsrv import admin_client

    admin_client.add_commands(commands, common)
    return parser


def _admin(args: argparse.Namespace, stdout: IO[str]) -> int:
    """admin who|kick|stats|reload (or who, kick, ... alone): over the
    daemon's admin socket."""
    from mailsrv import admin_client

    path = args.socket or config_of(args).admin.socket
    if not path:
        raise CommandError("admin.socket is empty: this daemon has no admin socket", EX_CONFIG)
    try:
        return admin_client.run(args, path, stdout)
    except admin_client.AdminError as e:
        raise CommandError(str(e), e.status) from None


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
        return run_user(args, stdin or sys.stdin, stdout)
    if args.command == "check-config":
        return run_check_config(args, stdout)
    if args.command == "deliver":
        return run_deliver(args, stdin or sys.stdin.buffer, stdout)
    if args.command == "reindex":
        return run_reindex(args, stdout)
    if args.command == "migrate":
        return run_migrate(args, stdout, stderr)
    if args.command == "db":
        return run_db(args, stdout)
    if args.command == "gen-cert":
        return run_gen_cert(args, stdout)
    if args.command in ("admin", "who", "kick", "stats", "reload"):
        return _admin(args, stdout)
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
