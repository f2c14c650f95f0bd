"""``mailsrv deliver`` (an MTA's delivery agent) and ``mailsrv reindex``:
the subcommands that write to a user's mail."""

from __future__ import annotations

import argparse
from typing import IO, TYPE_CHECKING, Any, cast

import attrs

from mailsrv.cli_common import (
    EX_CANTCREAT,
    EX_DATAERR,
    EX_OK,
    EX_TEMPFAIL,
    CommandError,
    config_of,
)
from mailsrv.cli_users import extra_fields, home_of
from mailsrv.config import Config
from mailsrv.errors import NoSuchMailbox, StorageError

if TYPE_CHECKING:
    from mailsrv.interfaces import IAccount


def _account(config: Config, user: str) -> Any:
    from mailsrv.service import build_storage

    home = home_of(config, user)
    return build_storage(config).account(user, home)


def run_deliver(args: argparse.Namespace, stdin: IO[bytes], stdout: IO[str]) -> int:
    from mailsrv.errors import OverQuota
    from mailsrv.quota import quotas_from_config
    from mailsrv.service import build_storage
    from mailsrv.storage.deliver import EmptyMessage, deliver

    config = config_of(args, check_files=True)
    if config.storage.backend not in ("maildir", "postgresql"):
        raise CommandError("deliver needs storage.backend = 'maildir' or 'postgresql'", EX_TEMPFAIL)
    home = home_of(config, args.user)
    quotas = quotas_from_config(config, lambda user: extra_fields(config, user))
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


def run_reindex(args: argparse.Namespace, stdout: IO[str]) -> int:
    from mailsrv.storage.deliver import reindex

    config = config_of(args, check_files=True)
    if config.storage.backend != "maildir":
        raise CommandError("reindex rebuilds Maildir indexes: storage.backend is not 'maildir'")
    account = _account(config, args.user)
    skipped: list[str] = []
    counts = reindex(account, skipped)
    for folder, count in sorted(counts.items()):
        line = f"{folder}: {count} messages"
        if config.storage.fulltext:
            try:
                indexed, size = _reindex_text(account, folder, stdout)
            except Exception as exc:
                # Deleted or renamed by a client since its index was rebuilt.
                listed = {entry.name for entry in account.list_mailboxes()}
                if not isinstance(exc, NoSuchMailbox) and folder in listed:
                    raise
                skipped.append(folder)
                continue
            per_message = f", {size // indexed} octets each" if indexed else ""
            line += f"; full-text index {indexed} messages, {size} octets{per_message}"
        stdout.write(line + "\n")
    for folder in skipped:
        # A client's DELETE or RENAME while this ran: nothing to rebuild.
        stdout.write(f"{folder}: deleted or renamed meanwhile, skipped\n")
    return EX_OK


def _reindex_text(account: Any, folder: str, stdout: IO[str]) -> tuple[int, int]:
    """Rebuild one folder's full-text index: (messages, octets); progress
    is shown on a terminal, overwritten in place, then cleared."""
    shown = stdout.isatty()

    def progress(done: int, total: int) -> None:
        if shown:
            stdout.write(f"\r{folder}: full-text index {done}/{total}")
            stdout.flush()

    result = account.open_mailbox(folder).rebuild_fulltext(progress)
    if shown:
        stdout.write("\r\x1b[K")
    return result if result is not None else (0, 0)
