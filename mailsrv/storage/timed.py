"""The storage contract with each call timed: a wrapper over any backend.

:func:`timed` wraps an :class:`~mailsrv.interfaces.IStorage`; the accounts
it hands out and their mailboxes are wrapped in turn, so every call a
session makes through the contract (``mailbox.fetch``, ``account.status``,
``storage.account``...) is reported to :func:`mailsrv.observe.storage_operation`
with the time it took (until its Deferred fired, for one that answers
later) and whether it failed.  The daemon wraps its storage only when
something listens (``[metrics]``), so nothing is paid otherwise.

A wrapper provides the interfaces its backend object provides (optional
features stay visible to ``providedBy``), hands every other attribute
through, and unwraps wrapped arguments (COPY's destination mailbox), so the
backend sees its own objects.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy
from zope.interface.interface import Method

from mailsrv import observe
from mailsrv.interfaces import (
    IAccount,
    IMailbox,
    IMaildropLocking,
    IMessageCache,
    IMessageColumns,
    IMessageRows,
    IPop3UidSource,
    IStorage,
)

__all__ = ["Timed", "timed"]


def _methods(*interfaces: Any) -> frozenset[str]:
    return frozenset(
        name
        for interface in interfaces
        for name in interface.names()
        if isinstance(interface[name], Method)
    )


#: The methods timed on each kind of object: the contract's, but for the
#: bookkeeping that never touches the storage.
_TIMED = {
    "storage": _methods(IStorage),
    "account": _methods(IAccount) - {"logout"},
    "mailbox": _methods(
        IMailbox, IMessageCache, IMessageRows, IMessageColumns, IMaildropLocking, IPop3UidSource
    )
    - {"add_listener", "remove_listener"},
}

#: Calls whose answer is itself to be wrapped: (kind, method) -> its kind.
_WRAPS = {("storage", "account"): "account", ("account", "get_mailbox"): "mailbox"}


class Timed:
    """One storage, account or mailbox object, its contract calls timed."""

    def __init__(self, target: Any, kind: str) -> None:
        self._timed_target = target
        self._timed_kind = kind
        directlyProvides(self, providedBy(target))

    def __repr__(self) -> str:
        return f"<timed {self._timed_target!r}>"

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._timed_target, name)
        if name not in _TIMED[self._timed_kind] or not callable(value):
            return value
        return _timed_call(value, self._timed_kind, name)


def _unwrap(value: Any) -> Any:
    return value._timed_target if isinstance(value, Timed) else value


def _timed_call(method: Callable[..., Any], kind: str, name: str) -> Callable[..., Any]:
    operation = f"{kind}.{name}"
    wraps = _WRAPS.get((kind, name))

    def call(*args: Any, **kwargs: Any) -> Any:
        args = tuple(_unwrap(a) for a in args)
        kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
        started = time.perf_counter()
        try:
            result = method(*args, **kwargs)
        except Exception:
            observe.storage_operation(operation, time.perf_counter() - started, True)
            raise
        if isinstance(result, Deferred):

            def done(value: Any) -> Any:
                failed = isinstance(value, Failure)
                observe.storage_operation(operation, time.perf_counter() - started, failed)
                if wraps is not None and not failed:
                    return Timed(value, wraps)
                return value

            return result.addBoth(done)
        observe.storage_operation(operation, time.perf_counter() - started, False)
        return Timed(result, wraps) if wraps is not None else result

    return call


def timed(storage: IStorage) -> IStorage:
    """``storage`` with every contract call timed (see the module's docstring)."""
    wrapped: IStorage = Timed(storage, "storage")  # type: ignore[assignment]
    return wrapped
