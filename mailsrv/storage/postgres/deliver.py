"""``mailsrv deliver`` into PostgreSQL: the shared delivery path.

Delivery is one code path for every backend (:mod:`mailsrv.storage.deliver`);
this module keeps the name older scripts import.  The storage is used
without a reactor, so every call answers in this thread; the message is
committed (body, row, NOTIFY to the daemons' IDLE sessions) before
:func:`deliver` returns, and anything that stops it before the commit
leaves nothing behind: the transaction is rolled back, by PostgreSQL itself
if this process is killed.
"""

from __future__ import annotations

from mailsrv.storage.deliver import deliver

__all__ = ["deliver"]
