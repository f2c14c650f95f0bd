"""``mailsrv check-config`` and ``mailsrv gen-cert``: the configuration and
the certificates it names."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import IO, Any

from mailsrv.cli_common import EX_CANTCREAT, EX_CONFIG, EX_OK, EX_USAGE, CommandError, config_of
from mailsrv.config import Config, describe, load_config
from mailsrv.errors import ConfigError


def run_gen_cert(args: argparse.Namespace, stdout: IO[str]) -> int:
    from mailsrv.tls import generate_self_signed

    config = config_of(args)
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


def run_check_config(args: argparse.Namespace, stdout: IO[str]) -> int:
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
    # Worked out before anything is written: an expired certificate is an
    # error, and the output then is that error alone.
    certificates = [] if tls_pending or not config.tls_enabled else _certificates(config, path)
    for line in describe(config):
        stdout.write(line + "\n")
    if tls_pending:
        stdout.write("  (self-signed certificate and key to be created at first start)\n")
    for line in certificates:
        stdout.write(line + "\n")
    if count is not None:
        stdout.write(f"  users: {count}\n")
    return EX_OK


#: check-config warns when a certificate has fewer days left than this.
EXPIRY_WARNING_DAYS = 14


def _certificates(config: Config, path: str) -> list[str]:
    """Lines on the names and expiry of each certificate; an expired one is
    an error (every client that checks certificates would refuse it)."""
    from mailsrv.tls import certificates

    lines = []
    for info in certificates(config.tls, path):
        left = info.days_left()
        until = info.not_after.strftime("%Y-%m-%d %H:%M UTC")
        if left < 0:
            raise ConfigError(path, info.key, f"{info.path} expired on {until}")
        names = ", ".join(info.names) or "no names"
        lines.append(f"  {info.key}: {info.path} for {names}, valid until {until}")
        if left < EXPIRY_WARNING_DAYS:
            lines.append(f"  warning: {info.key} expires in {left:.1f} days; renew it")
    return lines
