"""The failed-login penalty: failures remembered across connections.

``auth.failure_delay`` and ``auth.max_failures`` act on one connection, so
a client opening many connections in parallel could still try many
passwords a second.  :class:`LoginPenalty` remembers failures per client
address and per user name for :data:`MEMORY` seconds, whatever connection
they came on, and spaces out the checks they earn:

* from an address with ``n`` recent failures, login attempts are checked
  one at a time, each at least :meth:`LoginPenalty.interval` (``n``) after
  the previous one, however many connections they come on; an attempt
  whose turn is more than ``auth.penalty_max`` seconds away is refused
  without being checked (the same answer as a wrong password, so it tells
  the guesser nothing);
* an attempt for a user with ``n`` recent failures waits ``interval(n)``
  before it is checked, right password or not: a bounded delay (never a
  lockout) that slows a guesser spread over many addresses.

The interval doubles with each failure from the :data:`FREE` th on, up to
``auth.penalty_max`` (15 seconds by default, as Dovecot's auth penalty):
after ten failures one address gets at most one check per 15 seconds.
A successful login forgets its user's failures, not its address's (else a
guesser with one account of its own could clear its address's record).
"""

from __future__ import annotations

import attrs

__all__ = ["FREE", "MEMORY", "LoginPenalty"]

#: Failures that cost nothing (typing mistakes).
FREE = 3
#: Seconds after its last failure that an address or user is forgotten.
MEMORY = 900.0
#: Addresses and users remembered at most; past it the least recently
#: failed are forgotten first, so a flood of addresses cannot grow memory.
MAX_ENTRIES = 100_000


@attrs.define
class _Record:
    failures: int = 0
    last: float = 0.0
    #: The earliest moment the next attempt may be checked.
    next_free: float = 0.0


class LoginPenalty:
    """Failed logins per address and per user, shared by every connection of
    a service (it lives in :class:`mailsrv.policy.ConnectionLimits`)."""

    def __init__(self, maximum: float = 15.0) -> None:
        #: ``auth.penalty_max``: the longest interval and the longest wait;
        #: 0 turns the penalty off.
        self.maximum = maximum
        self._records: dict[tuple[str, str], _Record] = {}

    def interval(self, failures: int) -> float:
        """Seconds between checks after ``failures`` recent failures."""
        if failures < FREE or self.maximum <= 0:
            return 0.0
        return min(self.maximum, 0.25 * 2.0 ** min(failures - FREE, 32))

    def admit(self, address: str, user: str | None, now: float) -> float | None:
        """Seconds this attempt waits before it is checked (its turn is taken
        now), or None: refuse it unchecked, its turn is too far away."""
        user_record = self._get(("user", user), now) if user else None
        start = now + (self.interval(user_record.failures) if user_record is not None else 0.0)
        record = self._get(("address", address), now) if address else None
        if record is not None:
            if record.next_free - now > self.maximum:
                return None
            start = max(start, record.next_free)
            record.next_free = start + self.interval(record.failures)
        return start - now

    def failed(self, address: str, user: str | None, now: float) -> None:
        """Count a failed login from ``address`` for ``user``."""
        for key in (("address", address), ("user", user or "")):
            if not key[1]:
                continue
            record = self._records.pop(key, None) or _Record()
            record.failures += 1
            record.last = now
            self._records[key] = record  # the most recently failed last
        while len(self._records) > MAX_ENTRIES:
            del self._records[next(iter(self._records))]

    def succeeded(self, user: str) -> None:
        """``user`` logged in: forget the user's failures."""
        self._records.pop(("user", user), None)

    def _get(self, key: tuple[str, str], now: float) -> _Record | None:
        record = self._records.get(key)
        if record is not None and record.last + MEMORY < now and record.next_free <= now:
            del self._records[key]
            return None
        return record
