"""Several reactor processes sharing the listeners: ``[server] workers``.

One mailsrv process runs one reactor, hence one core.  With ``workers``
above one, the process twistd starts becomes a parent that binds the
listeners and starts that many worker processes; each worker is a whole
mailsrv (storage, portal, protocol factories) accepting connections on the
parent's sockets, so a session lives entirely in one worker.

What the workers share goes through the storage, which already supports
several processes (Maildir's locks, index and inotify; PostgreSQL's
LISTEN/NOTIFY), and through the parent, which keeps the daemon-wide
connection counts (:mod:`.channel`) and owns the log (:mod:`.logpipe`).

Modules: :mod:`.supervisor` (the parent), :mod:`.child` (a worker),
:mod:`.ports` (adopting the parent's sockets), :mod:`.channel` (parent and
worker talking), :mod:`.limits` (connection limits through the parent),
:mod:`.logpipe` (worker logs into the parent's log).
"""

from __future__ import annotations

from mailsrv.config import COMMAND_LINE, DEFAULT_ADMIN_SOCKET, Config, resolved_workers
from mailsrv.errors import ConfigError

__all__ = ["single_process_reason", "worker_count"]


def single_process_reason(config: Config) -> str | None:
    """Why the configuration needs one process whatever ``[server] workers``
    says (None: it does not).  The metrics and the admin socket see the
    sessions of the process they live in; their figures and their who/kick
    are not pooled across workers, so a daemon that serves them runs one."""
    if config.storage.backend == "memory":
        return "storage.backend 'memory' lives in one process"
    if config.metrics.listen:
        return "metrics.listen counts the sessions of one process (not pooled across workers)"
    if config.admin.socket and config.admin.socket != DEFAULT_ADMIN_SOCKET:
        return "admin.socket lists and kicks the sessions of one process"
    return None


def worker_count(config: Config) -> int:
    """The number of reactor processes the configuration asks for: one
    where :func:`single_process_reason` says so (a configuration error if
    ``workers`` explicitly asks for more)."""
    reason = single_process_reason(config)
    if reason is None:
        return resolved_workers(config)
    if config.server.workers > 1:
        where = config.path or COMMAND_LINE
        raise ConfigError(where, "server.workers", f"{reason}: set workers = 1 (or leave it 0)")
    return 1
