"""From a :class:`~mailsrv.config.Config` to a running MultiService.

Everything here is importable on its own: :func:`build_portal` gives the
Portal the plugin uses, :func:`build_storage` the configured backend, and
:func:`make_service` the whole daemon, so an existing Twisted application
can take any layer and supply the others itself (see docs/embedding.md).
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.cred.portal import Portal
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorCore
from twisted.internet.protocol import Factory
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.logfile import BaseLogFile
from twisted.python.systemd import ListenFDs

from mailsrv import log, observe
from mailsrv.auth.checker import PasswdFileChecker
from mailsrv.auth.oauth import OAuthErrorInfo
from mailsrv.auth.oauth_config import build_token_validator
from mailsrv.auth.passwdfile import PasswdFile, create_empty
from mailsrv.auth.realm import MailRealm
from mailsrv.auth.sasl import SaslServices
from mailsrv.config import COMMAND_LINE, DEFAULT_ADMIN_SOCKET, Config, Listener
from mailsrv.errors import ConfigError
from mailsrv.imap.pacing import GIL_SWITCH_INTERVAL
from mailsrv.interfaces import IStorage, IWatchingStorage
from mailsrv.observe import Observer
from mailsrv.policy import ConnectionLimits, SessionPolicy
from mailsrv.quota import quotas_from_config
from mailsrv.reload import LiveParts, MailService
from mailsrv.tls import ensure_self_signed, server_context

_log = log.get_logger(__name__)


def tls_context_of(config: Config, *, create: bool = True) -> Any:
    """The server TLS context of ``[tls]``; errors name ``--tls-cert`` or
    ``--tls-key`` when that is where the file came from.

    With ``create`` false (``mailsrv check-config``), a self-signed pair
    that ``generate_self_signed`` would create is not, and None is returned.
    """
    where = config.path or COMMAND_LINE
    try:
        section = config.tls
        if section.generate_self_signed and not ensure_self_signed(
            section, where, config.server.hostname, create=create
        ):
            return None
        return server_context(section, where, config.server.hostname)
    except ConfigError as e:
        option = config.from_command_line.get(e.key)
        if option is None:
            raise
        raise ConfigError(COMMAND_LINE, option, e.reason) from None


def open_passwd(config: Config) -> PasswdFile:
    """The users file, created empty first if the configuration asks for it."""
    path = config.users.passwd_file
    if config.users.create_if_missing and not os.path.exists(path):
        create_empty(path)
    return PasswdFile(path)


def build_storage(config: Config, reactor: Any = None) -> IStorage:
    """The configured storage backend."""
    if config.storage.backend == "memory":
        from mailsrv.storage.memory import MemoryStorage

        return MemoryStorage()
    if config.storage.backend == "postgresql":
        from mailsrv.storage.postgres import PostgresStorage

        return PostgresStorage(
            config.storage.dsn, pool_size=config.storage.pool_size, reactor=reactor
        )
    from mailsrv.storage.maildir import MaildirStorage

    return MaildirStorage(
        config.storage.maildir,
        poll_interval=config.storage.poll_interval,
        reactor=reactor,
        fulltext=config.storage.fulltext,
        threaded_writes=config.storage.threaded_writes,
        cache_kinds=config.limits.max_cache_kinds,
    )


def check_database(config: Config, storage: IStorage | None, key: str = "storage.dsn") -> None:
    """At startup, refuse a PostgreSQL database whose schema is not this
    code's (a ConfigError naming ``key`` says what to do); a database
    that cannot be reached yet is only logged: sessions are answered
    [UNAVAILABLE] until it is back.  Without ``storage``, the users'
    database ([auth] dsn) is checked."""
    from mailsrv.errors import TemporaryFailure
    from mailsrv.storage.postgres.schema import SchemaError

    try:
        if storage is not None:
            storage.check_schema()  # type: ignore[attr-defined]
        else:
            from mailsrv.storage.postgres import schema
            from mailsrv.storage.postgres.db import Database

            conn = Database(config.auth_dsn, pool_size=1).connect()
            try:
                schema.check_version(conn)
            finally:
                conn.close()
    except SchemaError as e:
        origin = config.from_command_line.get(key, key)
        raise ConfigError(config.path or COMMAND_LINE, origin, str(e)) from None
    except TemporaryFailure as e:
        _log.warn(
            "cannot reach the mail database at startup ({e}); sessions are answered "
            "[UNAVAILABLE] until it is back",
            e=e,
        )


def build_checker(config: Config, storage: IStorage | None = None, reactor: Any = None) -> Any:
    """The checker of ``[auth] backend``: the users file, or the users table
    (on the storage's own connections when both use the same database)."""
    secret = config.auth.salt_secret
    scram_key = hashlib.sha256(secret.encode("utf-8")).digest() if secret else None
    tokens = build_token_validator(config.auth.oauth, config.path or COMMAND_LINE, reactor)
    if config.auth.backend != "postgresql":
        return PasswdFileChecker(
            open_passwd(config), reactor=reactor, scram_key=scram_key, token_validator=tokens
        )
    from mailsrv.auth.pgusers import PostgresChecker
    from mailsrv.storage.postgres import PostgresStorage
    from mailsrv.storage.postgres.db import Database

    if isinstance(storage, PostgresStorage) and storage.dsn == config.auth_dsn:
        db = storage.db
    else:
        db = Database(config.auth_dsn, pool_size=config.storage.pool_size, reactor=reactor)
    return PostgresChecker(db, reactor=reactor, scram_key=scram_key, token_validator=tokens)


def sasl_services(config: Config, checker: Any) -> SaslServices:
    """What SCRAM and the OAuth mechanisms need of the users' ``checker``
    (its secrets, its token validator), for the policy: SCRAM-SHA-256 is
    offered while some user has a secret it can use, OAUTHBEARER and
    XOAUTH2 when ``[auth.oauth]`` names a validator."""
    oauth = config.auth.oauth
    return SaslServices(
        scram=checker,
        scram_available=checker.any_scram,
        tokens=checker.token_validator,
        token_mechanisms=oauth.mechanisms,
        oauth_info=OAuthErrorInfo(oauth.scope, oauth.openid_configuration),
    )


def build_portal(
    config: Config,
    storage: IStorage | None = None,
    reactor: Any = None,
    *,
    served: IStorage | None = None,
) -> tuple[Portal, Any]:
    """A Portal over the configured users and the storage, and its checker
    (a PasswdFileChecker or a PostgresChecker; both have ``home_of`` and
    ``any_plaintext``).  ``served`` is the storage the avatars come from,
    if not ``storage`` itself (a wrapper timing its calls)."""
    storage = storage if storage is not None else build_storage(config, reactor)
    checker = build_checker(config, storage, reactor)
    realm = MailRealm(served if served is not None else storage, checker.home_of)
    return Portal(realm, [checker]), checker


def protocol_factory(
    listener: Listener,
    portal: Portal,
    policy: SessionPolicy,
    *,
    storage: IStorage | None = None,
    users: Callable[[str], Any] | None = None,
    tls: Any = None,
    config: Config | None = None,
) -> Factory[Any]:
    """The factory for one listener, wrapped in TLS for implicit-TLS ones
    and, outside that, in the PROXY header reader for ``haproxy:`` ones (the
    header precedes the TLS handshake).

    LMTP listeners need the ``storage`` to deliver into and the ``users``
    look-up (user name -> record with ``name`` and ``home``, or None, maybe
    as a Deferred).  ``tls`` is the connection creator implicit TLS uses
    (default: the policy's context); ``config`` gives the trusted proxies.
    """
    factory = _plain_factory(listener, portal, policy, storage=storage, users=users, tls=tls)
    if listener.proxy:
        from mailsrv.proxy import ProxyFactory, ProxyNetworks, parse_networks

        proxies = config.server.trusted_proxies if config is not None else ()
        networks, _problem = parse_networks(proxies)  # checked when loaded
        return ProxyFactory(factory, ProxyNetworks(networks))
    return factory


def _plain_factory(
    listener: Listener,
    portal: Portal,
    policy: SessionPolicy,
    *,
    storage: IStorage | None,
    users: Callable[[str], Any] | None,
    tls: Any,
) -> Factory[Any]:
    factory: Factory[Any]
    if listener.protocol == "lmtp":
        from mailsrv.lmtp.server import LMTPFactory

        if storage is None or users is None:
            raise ValueError("an LMTP listener needs storage and a users look-up")
        return LMTPFactory(storage, users, policy)
    if listener.protocol == "imap":
        from mailsrv.imap.protocol import IMAP4ServerFactory

        factory = IMAP4ServerFactory(portal, policy, implicit_tls=listener.implicit_tls)
    else:
        from mailsrv.pop3.server import POP3Factory

        factory = POP3Factory(portal, policy, implicit_tls=listener.implicit_tls)
    if listener.implicit_tls:
        return TLSMemoryBIOFactory(tls or policy.tls_context, False, factory)
    return factory


class ListenerService(StreamServerEndpointService):
    """One listening socket; a failure to bind stops startup with a clear
    message naming the configuration key.

    The port is bound in ``privilegedStartService``, which twistd runs before
    it drops root for ``--uid``/``--gid``, so ports below 1024 work, and an
    LMTP Unix socket can be given to the MTA's user (``socket_owner``).
    """

    def __init__(
        self,
        endpoint: Any,
        factory: Factory[Any],
        listener: Listener,
        path: str,
        socket_owner: tuple[str, str | None, str | None] | None = None,
    ) -> None:
        super().__init__(endpoint, factory)
        self.listener = listener
        self.config_path = path
        #: (socket path, owner, group) to chown once bound.
        self.socket_owner = socket_owner
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise ConfigError(
                self.config_path,
                self.listener.origin,
                f"cannot listen on {self.listener.endpoint!r}: {e.socketError}",
            ) from None
        if self.socket_owner is not None:
            self._chown(*self.socket_owner)
        _log.info(
            "{name} listening on {endpoint}{tls}{proxy}",
            name=self.listener.protocol.upper(),
            protocol=self.listener.protocol,
            endpoint=self.listener.endpoint,
            tls=" (implicit TLS)" if self.listener.implicit_tls else "",
            proxy=" (PROXY header required)" if self.listener.proxy else "",
        )

    def _chown(self, path: str, owner: str | None, group: str | None) -> None:
        import grp
        import pwd

        uid = pwd.getpwnam(owner).pw_uid if owner else -1
        gid = grp.getgrnam(group).gr_gid if group else -1
        try:
            os.chown(path, uid, gid)
        except OSError as e:
            key = "lmtp.socket_owner" if owner else "lmtp.socket_group"
            raise ConfigError(
                self.config_path,
                key,
                f"cannot give {path} to {owner or ''}{':' if group else ''}{group or ''}: "
                f"{e.strerror} (start the daemon as root, or leave {key} unset)",
            ) from None


def lmtp_endpoint(listener: Listener, mode: int) -> str:
    """An LMTP listener's endpoint string with ``lmtp.socket_mode`` applied
    to a Unix socket that does not give its own ``mode=`` (Twisted sets the
    mode before it listens, so the socket is never more open than asked)."""
    endpoint = listener.endpoint
    kind = listener.bare_endpoint.split(":", 1)[0]
    if kind != "unix" or any(part.startswith("mode=") for part in endpoint.split(":")[2:]):
        return endpoint
    return f"{endpoint}:mode={mode:o}"


class StorageService(service.Service):
    """Stops the storage's watcher (:class:`IWatchingStorage`) when the daemon stops."""

    def __init__(self, storage: IStorage) -> None:
        self.storage = storage

    def stopService(self) -> None:
        super().stopService()
        if IWatchingStorage.providedBy(self.storage):
            IWatchingStorage(self.storage).stop_watching()


class UsersFileCheck(service.Service):
    """Says at startup when the users file cannot be re-read.

    ``startService`` runs after twistd has dropped to ``--uid/--gid``; the
    file was loaded as root, so one only root may read would work until the
    first ``mailsrv user add`` and then silently never change again.
    """

    def __init__(self, passwd: PasswdFile) -> None:
        self.passwd = passwd

    def startService(self) -> None:
        super().startService()
        problem = self.passwd.unreadable()
        if problem is not None:
            _log.error(
                "users file {path} cannot be read by this process (uid {uid}): {problem}; "
                "users added or changed from now on are not seen until a restart. Let the "
                "daemon's group read it: chgrp GROUP {path} && chmod 0640 {path}",
                path=self.passwd.path,
                uid=os.getuid(),
                problem=problem,
            )


class LogReopener(service.Service):
    """SIGHUP reopens the file twistd logs to (``--logfile``), and never
    stops the daemon.

    logrotate renames the log file and sends SIGHUP (its ``postrotate``);
    without a handler the signal would end the process.  twistd itself
    handles only SIGUSR1 for its log, by renaming the file to ``.1`` itself,
    which is left alone.  ``reload`` (the daemon's
    :meth:`~mailsrv.reload.MailService.reload`) runs next, once the log is
    reopened, so what it logs goes to the new file; without it the log says
    the configuration is not reloaded, so nobody expects a changed file to
    take effect.
    """

    def __init__(self, reactor: Any = None, reload: Callable[[], Any] | None = None) -> None:
        self.reactor = reactor
        self.reload = reload
        self._previous: Any = None
        self._installed = False

    def privilegedStartService(self) -> None:
        # The earliest moment of the service's life, before the reactor runs.
        super().privilegedStartService()
        self._previous = signal.signal(signal.SIGHUP, self._on_hangup)
        self._installed = True

    def stopService(self) -> None:
        super().stopService()
        if self._installed:
            signal.signal(signal.SIGHUP, self._previous or signal.SIG_DFL)
            self._installed = False

    def _on_hangup(self, signum: int, frame: Any) -> None:
        # A signal handler may run in the middle of a log write: do the work
        # from the reactor's loop instead, as twistd does for SIGUSR1.
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor
        reactor.callFromThread(self.hangup)
        if callable(self._previous):
            self._previous(signum, frame)

    def hangup(self) -> Any:
        """What SIGHUP does: reopen the log files, then reload (its outcome)."""
        self.reopen()
        if self.reload is not None:
            return self.reload()
        return None

    def reopen(self) -> None:
        """Reopen every log file; log what was done."""
        files = _log_files()
        after = "" if self.reload is not None else _NOT_RELOADED
        if not files:
            _log.info(
                "SIGHUP: no log file to reopen (logging to standard output or syslog){after}",
                after=after,
            )
            return
        for log_file in files:
            _log.info("SIGHUP: reopening the log file {path}", path=log_file.path)
            try:
                # Opened first on our own: a failed reopen would leave the
                # log file closed, and nothing logged from then on.
                with open(log_file.path, "ab"):
                    pass
            except OSError as e:
                _log.error(
                    "SIGHUP: cannot reopen the log file {path}: {reason}; still logging to "
                    "the file it was renamed to",
                    path=log_file.path,
                    reason=e.strerror,
                )
                continue
            log_file.reopen()
            _log.info(
                "SIGHUP: reopened the log file {path}{after}", path=log_file.path, after=after
            )


_NOT_RELOADED = "; the configuration is not reloaded, restart mailsrv to apply changes"


def _log_files() -> list[BaseLogFile]:
    """The files the global log observers write to: twistd's ``--logfile``.

    Twisted offers no public way to them: twistd keeps its file observer to
    itself.  The observers are looked up on the global publisher, each file
    observer's file is checked, and anything unexpected is skipped, so a
    change inside Twisted makes SIGHUP log that it found no file rather than
    fail (tests/test_daemon.py HangupTests would show it).
    """
    found: list[BaseLogFile] = []
    for observer in getattr(globalLogPublisher, "_observers", ()):
        target = getattr(observer, "_outFile", None)
        if isinstance(target, BaseLogFile) and target not in found:
            found.append(target)
    return found


def _endpoint(reactor: Any, listener: Listener, where: str) -> Any:
    """The server endpoint of a listener; a systemd socket that was not
    inherited is a configuration error naming the listener, not a traceback."""
    try:
        return endpoints.serverFromString(reactor, listener.bare_endpoint)
    except (IndexError, KeyError):
        if not listener.bare_endpoint.startswith("systemd:"):
            raise
        count = len(ListenFDs.fromEnvironment().inheritedDescriptors())
        raise ConfigError(
            where,
            listener.origin,
            f"{listener.endpoint!r}: no such socket among the {count} systemd passed in; "
            "start mailsrv through its .socket unit (ListenStream=, FileDescriptorName=)",
        ) from None


def _innermost(factory: Factory[Any]) -> Factory[Any]:
    """The protocol factory inside the PROXY and TLS wrappers: what a reload
    updates."""
    while hasattr(factory, "wrappedFactory"):
        factory = factory.wrappedFactory
    return factory


def _check_databases(config: Config, storage: IStorage) -> None:
    """Refuse to start on a PostgreSQL database (mail or users) that cannot be used."""
    if config.storage.backend == "postgresql":
        check_database(config, storage)
    if config.auth.backend == "postgresql" and not (
        config.storage.backend == "postgresql" and config.auth_dsn == config.storage.dsn
    ):
        check_database(config, None, "auth.dsn" if config.auth.dsn else "storage.dsn")


def make_service(
    config: Config,
    reactor: IReactorCore | None = None,
    *,
    load: Callable[[], Config] | None = None,
    systemd_notify: bool = False,
    endpoints: Callable[[Listener], Any] | None = None,
    connections: ConnectionLimits | None = None,
    worker: bool = False,
) -> MailService:
    """Build the daemon: one listener service per configured endpoint.

    ``load`` reads the configuration again for a reload (SIGHUP): the
    twistd plugin passes the same file and command-line options it started
    with.  ``systemd_notify`` tells systemd (``Type=notify``) when the
    daemon is ready, reloading and stopping.  A worker process
    (:mod:`mailsrv.workers`) passes ``endpoints``, the endpoint of each
    listener (the socket its parent bound), and ``connections``, the
    counts its parent keeps for every worker, and ``worker=True``: the
    parent serves the admin socket and the metrics endpoint, and asks the
    worker (:mod:`mailsrv.workers.channel`; the metrics go through files,
    :mod:`mailsrv.workers.metrics`).
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    log.set_level(config.logging.level)
    log.set_format(config.logging.format)
    # How soon the reactor thread gets the interpreter back from a busy
    # worker thread: see mailsrv.imap.pacing.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    where = config.path or "command line"
    storage = build_storage(config, reactor)
    _check_databases(config, storage)

    metrics, served = _metrics(config, storage)

    def build(config: Config) -> LiveParts:
        tls_context = tls_context_of(config) if config.tls_enabled else None
        portal, checker = build_portal(config, storage, reactor, served=served)
        fields_of = getattr(checker, "extra_fields_of", None)  # the users table has none
        policy = SessionPolicy.from_config(
            config,
            tls_context,
            checker.any_plaintext,
            sasl_services(config, checker),
            quotas=quotas_from_config(config, fields_of),
        )
        return LiveParts(policy, portal, checker.find_user, tls_context, checker)

    top = MailService(config, build, load, systemd_notify=systemd_notify, connections=connections)
    parts = top.parts
    StorageService(storage).setServiceParent(top)
    if isinstance(parts.checker, PasswdFileChecker):
        UsersFileCheck(parts.checker.passwd).setServiceParent(top)
    for listener in config.listeners:
        owner = None
        if listener.protocol == "lmtp":
            listener = attrs.evolve(
                listener, endpoint=lmtp_endpoint(listener, config.lmtp.socket_mode)
            )
        if endpoints is not None:
            endpoint = endpoints(listener)
        else:
            endpoint = _endpoint(reactor, listener, where)
        factory = protocol_factory(
            listener,
            parts.portal,
            parts.policy,
            storage=served,
            users=parts.users,
            tls=top.tls,
            config=config,
        )
        top.add_factory(_innermost(factory))
        path = getattr(endpoint, "_address", None)
        if listener.protocol == "lmtp" and isinstance(path, str):
            if config.lmtp.socket_owner or config.lmtp.socket_group:
                owner = (path, config.lmtp.socket_owner, config.lmtp.socket_group)
        ListenerService(endpoint, factory, listener, where, owner).setServiceParent(top)
    _observers(top, config, storage, metrics, reactor, where, worker)
    return top


def _metrics(config: Config, storage: IStorage) -> tuple[Any, IStorage]:
    """The metrics observer when ``[metrics]`` is configured (else None),
    and the storage the sessions use: timed for the metrics, or as it is."""
    if not config.metrics.listen:
        return None, storage
    from mailsrv.metrics import Metrics
    from mailsrv.storage.timed import timed

    return Metrics(), timed(storage)


def _observers(
    top: MailService,
    config: Config,
    storage: IStorage,
    metrics: Any,
    reactor: Any,
    where: str,
    worker: bool,
) -> None:
    """The admin socket's session table, and the metrics with their endpoint
    (in a worker: the table and the metrics only, which its parent serves)."""
    from mailsrv.admin import LocalAdmin, SessionTable

    table = SessionTable()
    top.observer.add(table)
    top.admin = LocalAdmin(table, top.admin_reload)
    if config.admin.socket and not worker:
        admin_service(config, top.admin, reactor, where).setServiceParent(top)
    if metrics is None:
        return
    from mailsrv.metrics import SampledThreadPools, ThreadPools, metrics_site

    top.observer.add(metrics)
    db = getattr(storage, "db", None)
    pools = {"reactor": reactor.getThreadPool, "postgresql": lambda: getattr(db, "pool", None)}
    Subscription(metrics).setServiceParent(top)
    if worker:
        SampledThreadPools(metrics.registry, pools, reactor).setServiceParent(top)
        return
    metrics.registry.register(ThreadPools(pools))
    metrics_listener(config, metrics_site(metrics.registry), reactor, where).setServiceParent(top)


def admin_service(config: Config, backend: Any, reactor: Any, where: str) -> service.Service:
    """The admin socket of ``[admin]``, answered by ``backend``."""
    from mailsrv.admin import AdminService

    return AdminService(
        config.admin.socket,
        backend,
        config_path=where,
        required=config.admin.socket != DEFAULT_ADMIN_SOCKET,
        group=config.admin.group,
        reactor=reactor,
    )


def metrics_listener(config: Config, site: Any, reactor: Any, where: str) -> ListenerService:
    """The endpoint of ``[metrics] listen``, serving ``site``."""
    listener = Listener("metrics", config.metrics.listen, False, "metrics.listen")
    endpoint = _endpoint(reactor, listener, where)
    return ListenerService(endpoint, site, listener, where)


class Subscription(service.Service):
    """Sends the storage's events to an observer while the daemon runs
    (:func:`mailsrv.observe.subscribe`)."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer

    def startService(self) -> None:
        super().startService()
        observe.subscribe(self.observer)

    def stopService(self) -> None:
        super().stopService()
        observe.unsubscribe(self.observer)
