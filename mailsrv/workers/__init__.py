"""Several reactor processes sharing the listeners: ``[server] workers``.

One mailsrv process runs one reactor, hence one core.  With ``workers``
above one, the process twistd starts becomes a parent that binds the
listeners and starts that many worker processes; each worker is a whole
mailsrv (storage, portal, protocol factories) accepting connections on the
parent's sockets, so a session lives entirely in one worker.

What the workers share goes through the storage, which already supports
several processes (Maildir's locks, index and inotify; PostgreSQL's
LISTEN/NOTIFY), and through the parent, which keeps the daemon-wide
connection counts (:mod:`.channel`), owns the log (:mod:`.logpipe`) and
serves the admin socket (:mod:`.admin`) and the metrics (:mod:`.metrics`)
for every worker.

Modules: :mod:`.supervisor` (the parent), :mod:`.child` (a worker),
:mod:`.ports` (adopting the parent's sockets), :mod:`.channel` (parent and
worker talking), :mod:`.limits` (connection limits through the parent),
:mod:`.logpipe` (worker logs into the parent's log), :mod:`.admin` (admin
commands asked of every worker), :mod:`.metrics` (every worker's figures in
one scrape).
"""

from __future__ import annotations

from mailsrv.config import Config, resolved_workers
from mailsrv.config_checks import single_process_reason

__all__ = ["single_process_reason", "worker_count"]


def worker_count(config: Config) -> int:
    """The number of reactor processes the configuration asks for (one
    where :func:`single_process_reason` says so; asking for more there is
    refused when the configuration is loaded)."""
    return resolved_workers(config)
