"""What a server-side SASL mechanism hands its protocol: the steps.

Kept apart from :mod:`mailsrv.auth.sasl` so that the mechanisms living in
modules of their own (SCRAM, OAuth) and the module that offers them all can
share the types without importing each other.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeAlias

import attrs
from twisted.internet import defer

__all__ = ["Challenge", "Credentials", "Mechanism", "Refusal", "Step", "StepResult"]


@attrs.frozen
class Challenge:
    """Send ``data`` (base64-encoded by the protocol) and wait for an answer.

    ``failed`` marks a challenge that carries an error (SCRAM's ``e=``,
    RFC 5802 7; OAUTHBEARER's JSON status, RFC 7628 3.2.2): the attempt has
    already failed, and whatever the client answers, even the protocol's
    cancellation, ends in a failed login.  A protocol counts it as one
    and answers it after the failure delay, so that sending the cancel
    instead of the dummy response cannot make guesses free.
    """

    data: bytes
    failed: bool = False


@attrs.frozen
class Credentials:
    """The exchange is complete: hand ``credentials`` to ``Portal.login``."""

    credentials: Any


@attrs.frozen
class Refusal:
    """The exchange failed; ``reason`` is safe to show the client."""

    reason: str


Step: TypeAlias = Challenge | Credentials | Refusal

#: What a mechanism returns: a step, or a Deferred of one when the next
#: step needs a look-up (a user's SCRAM secret, a token's validation).
StepResult: TypeAlias = "Step | defer.Deferred[Step]"


class Mechanism(Protocol):
    """One server-side SASL exchange; each instance serves one attempt."""

    name: str

    def start(self, initial_response: bytes | None) -> StepResult:
        """Begin, with the client's initial response if it sent one."""

    def respond(self, data: bytes) -> StepResult:
        """The client's (decoded) answer to the last challenge."""
