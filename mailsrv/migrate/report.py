"""What a migration run tells its operator: each user's outcome, progress
on a terminal, and the summary."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import IO

import attrs

__all__ = ["MigrationError", "Progress", "UserOutcome"]


class MigrationError(Exception):
    """One user could not be migrated; the message says why."""


@attrs.define
class UserOutcome:
    """What happened to one user."""

    user: str
    mailboxes: int = 0
    messages: int = 0  # copied this run (or compared, verifying)
    skipped: int = 0  # already on the target side
    octets: int = 0
    seconds: float = 0.0
    differences: list[str] = attrs.Factory(list)
    error: str | None = None


class Progress:
    """Shows the run to an operator: on a terminal a status line (messages
    per second, the user and folder at work) redrawn a few times a second,
    one line per user as it finishes, and a summary; elsewhere (cron, a
    log) only the per-user lines and the summary."""

    def __init__(self, stream: IO[str], tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._shown = 0.0
        self._width = 0
        self.started = time.monotonic()
        self.messages = 0

    def update(self, user: str, mailbox: str, done: int, total: int, rate: float) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if now - self._shown < 0.2 and done < total:
            return
        self._shown = now
        text = f"{user}: {mailbox} {done}/{total} messages, {rate:,.0f} msg/s"
        self.stream.write("\r" + text.ljust(self._width))
        self._width = len(text)
        self.stream.flush()

    def _clear(self) -> None:
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0

    def user_done(self, outcome: UserOutcome) -> None:
        self._clear()
        rate = outcome.messages / outcome.seconds if outcome.seconds > 0 else 0.0
        if outcome.error is not None:
            line = f"{outcome.user}: FAILED: {outcome.error}"
        elif outcome.differences:
            line = f"{outcome.user}: {len(outcome.differences)} differences"
            for difference in outcome.differences[:20]:
                line += f"\n  {difference}"
            if len(outcome.differences) > 20:
                line += f"\n  ... and {len(outcome.differences) - 20} more"
        else:
            boxes = "mailbox" if outcome.mailboxes == 1 else "mailboxes"
            line = (
                f"{outcome.user}: {outcome.mailboxes} {boxes}, "
                f"{outcome.messages} messages "
                f"({outcome.skipped} already there), {outcome.octets / 1e6:,.1f} MB "
                f"in {outcome.seconds:.1f} s ({rate:,.0f} msg/s)"
            )
        self.stream.write(line + "\n")
        self.stream.flush()

    def summary(self, outcomes: Sequence[UserOutcome], verifying: bool) -> None:
        self._clear()
        seconds = time.monotonic() - self.started
        messages = sum(o.messages for o in outcomes)
        failed = sum(1 for o in outcomes if o.error is not None)
        differing = sum(1 for o in outcomes if o.differences)
        ok = len(outcomes) - failed - differing
        verb = "verified" if verifying else "migrated"
        self.stream.write(
            f"{verb} {ok} of {len(outcomes)} users, {messages} messages in {seconds:.1f} s "
            f"({messages / seconds if seconds > 0 else 0:,.0f} msg/s); "
            f"{failed} failed, {differing} with differences\n"
        )
        self.stream.flush()
