"""Quota limits (RFC 9208's STORAGE and MESSAGE resources) and their one check.

A user's limits come from the users file's extra fields, in Dovecot's form
(``userdb_quota_rule=*:storage=1G``, ``userdb_quota_rule2=*:messages=10000``;
the ``userdb_`` prefix may be left out), and fall back to the ``[quota]``
section of the configuration.  A limit of 0, as in Dovecot, is no limit.

IMAP (APPEND, COPY, MOVE), ``mailsrv deliver`` and LMTP all ask
:func:`check` before they store anything, against the account's
:class:`~mailsrv.interfaces.IQuotaUsage`: a message that would take the
account past a limit is refused whole, so nothing is half-written.  Like
Dovecot's own quota, the check and the write are not one transaction: two
deliveries racing may both pass and together exceed the limit by one
message each.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import attrs
from twisted.internet import defer

from mailsrv.errors import OverQuota
from mailsrv.interfaces import IAccount, IQuotaUsage, Usage, maybe_deferred
from mailsrv.log import get_logger

if TYPE_CHECKING:
    from mailsrv.config import Config

__all__ = [
    "UNLIMITED",
    "QuotaLimits",
    "Quotas",
    "check",
    "format_size",
    "limits_from_fields",
    "parse_rule",
    "parse_size",
    "quotas_from_config",
]

_log = get_logger(__name__)

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"(\d+)\s*([BKMGT]?)B?", re.IGNORECASE)


@attrs.frozen
class QuotaLimits:
    """A user's limits: ``storage`` in octets, ``messages``; None is none."""

    storage: int | None = None
    messages: int | None = None

    @property
    def limited(self) -> bool:
        return self.storage is not None or self.messages is not None

    def over(self, usage: Usage, octets: int, messages: int) -> str | None:
        """Why adding ``octets`` in ``messages`` to ``usage`` breaks a
        limit, or None when it fits."""
        if self.storage is not None and usage.octets + octets > self.storage:
            return (
                f"Quota exceeded (storage: {format_size(usage.octets)} used of "
                f"{format_size(self.storage)}, {format_size(octets)} more would not fit)"
            )
        if self.messages is not None and usage.messages + messages > self.messages:
            return (
                f"Quota exceeded (messages: {usage.messages} of {self.messages}, "
                f"{messages} more would not fit)"
            )
        return None


#: No limit at all.
UNLIMITED = QuotaLimits()


def parse_size(text: str) -> int:
    """``1G``, ``500M``, ``100k``, ``2048`` (octets) -> octets; ValueError
    saying what is wrong otherwise."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size such as 2048, 100k, 500M or 1G")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def format_size(octets: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if octets >= _UNITS[unit] and octets % _UNITS[unit] == 0:
            return f"{octets // _UNITS[unit]}{unit}"
    return f"{octets} octets"


def parse_rule(rule: str, limits: QuotaLimits = UNLIMITED) -> QuotaLimits:
    """Apply one Dovecot quota rule (``*:storage=1G:messages=1000``) to
    ``limits``; ValueError for a rule mailsrv does not understand.

    Only ``*`` (the whole account) is supported: per-mailbox rules
    (``Trash:storage=+10%``) and percentages are refused, not half-applied.
    """
    mailbox, _, settings = rule.partition(":")
    if mailbox != "*":
        raise ValueError(f"only rules for '*' (the whole account) are supported, not {rule!r}")
    for setting in settings.split(":"):
        key, equals, value = setting.partition("=")
        key = key.strip().lower()
        if not equals or key not in ("storage", "messages", "bytes"):
            raise ValueError(f"expected storage=SIZE or messages=N in {rule!r}, not {setting!r}")
        if value.startswith(("+", "-")) or value.endswith("%"):
            raise ValueError(f"relative limits are not supported ({setting!r})")
        if key == "messages":
            if not value.isdigit():
                raise ValueError(f"messages must be a whole number, not {value!r}")
            limits = attrs.evolve(limits, messages=int(value) or None)
        else:
            limits = attrs.evolve(limits, storage=parse_size(value) or None)
    return limits


def limits_from_fields(
    fields: Iterable[str], default: QuotaLimits, warn: Callable[[str], None] | None = None
) -> QuotaLimits:
    """The limits a users-file entry's extra fields set over ``default``.

    ``warn`` is told of a rule that cannot be read; the entry then keeps
    the default for what that rule would have set.
    """
    limits = default
    for field in fields:
        key, equals, value = field.partition("=")
        key = key.removeprefix("userdb_")
        if not equals or not re.fullmatch(r"quota_rule\d*", key):
            continue
        try:
            limits = parse_rule(value, limits)
        except ValueError as e:
            if warn is not None:
                warn(f"{field}: {e}")
    return limits


def check(
    account: IAccount, limits: QuotaLimits, octets: int, messages: int = 1
) -> defer.Deferred[None]:
    """Fire when ``messages`` messages of ``octets`` fit under ``limits``;
    fail with :class:`~mailsrv.errors.OverQuota` when they do not.

    No limit, or a backend that cannot count (no IQuotaUsage), lets
    everything through.
    """
    if not limits.limited or not IQuotaUsage.providedBy(account):
        return defer.succeed(None)

    def decide(usage: Usage) -> None:
        reason = limits.over(usage, octets, messages)
        if reason is not None:
            raise OverQuota(reason)

    return maybe_deferred(account.usage).addCallback(decide)


class Quotas:
    """Every user's limits: ``default`` (the ``[quota]`` section), overridden
    by the quota rules among the user's extra fields (``fields_of(user)``,
    the users file's; a source without them gives none).

    A rule that cannot be read is logged once (naming ``source``, the user
    and the reason) and the default stands for what it would have set.
    """

    def __init__(
        self,
        default: QuotaLimits = UNLIMITED,
        fields_of: Callable[[str], Iterable[str]] | None = None,
        *,
        source: str = "users file",
        bounce: bool = False,
    ) -> None:
        self.default = default
        self._fields_of = fields_of
        self.source = source
        #: Deliveries over quota bounce (permanent) instead of being retried.
        self.bounce = bounce
        self._warned: set[str] = set()

    def limits_of(self, user: str) -> QuotaLimits:
        if self._fields_of is None:
            return self.default
        return limits_from_fields(self._fields_of(user), self.default, self._warner(user))

    def _warner(self, user: str) -> Callable[[str], None]:
        def warn(reason: str) -> None:
            key = f"{user}\0{reason}"
            if key not in self._warned:
                self._warned.add(key)
                _log.warn(
                    "{source}: quota rule of {user} ignored: {reason}",
                    source=self.source,
                    user=user,
                    reason=reason,
                )

        return warn


def quotas_from_config(
    config: Config, fields_of: Callable[[str], Iterable[str]] | None = None
) -> Quotas:
    """The ``[quota]`` section's :class:`Quotas`, with ``fields_of`` giving
    each user's extra fields (the users file's, where users live there)."""
    return Quotas(
        config.quota_default,
        fields_of,
        source=config.users.passwd_file,
        bounce=config.quota.delivery == "bounce",
    )
