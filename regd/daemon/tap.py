# -*- test-case-name: tests.test_tap -*-
"""
The composition root: twistd calls makeService with the parsed options; this
is the only module that imports the global reactor. Building the graph
starts nothing; the services start it when twistd runs them.
"""

from __future__ import annotations

import os
import sys

from twisted.application import internet, service
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

# Nothing here imports the reactor or TLS: Options decides what the configuration needs first (daemon.memory).
from regd.daemon.authsetup import admin_authorizer, auth_settings, build_token_access
from regd.config import ConfigError, load_config
from regd.logging import access_log_observed
from regd.daemon.services import (CertificateReloader, ClosingService, DrainService, ListenerService, RegdService,
                                  ThreadPoolService)

log = Logger()

DEFAULT_DRAIN = 30.0  # seconds requests in progress get at shutdown when http.draintimeout is unset


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = "Run the regd container image registry."
    optParameters = [["config", "c", None, "Path to the YAML configuration (registry:2 format)."]]

    def postOptions(self):
        # Refuse to start with one line naming the key and the problem.
        from regd.daemon.memory import early_imports, import_twisted, uses_twisted_tls
        from regd.notifications.settings import parse_notifications
        try:
            self["loaded"] = loaded = load_config(self["config"], os.environ)
            notifications, _ = parse_notifications(loaded.config.notifications, "")
            # Before anything imports the reactor (the S3 check does): what needs no TLS loads none.
            import_twisted(uses_twisted_tls(loaded.config), early_imports(loaded.config, notifications))
            tls = loaded.config.http.tls
            self["acme"] = None
            if tls.letsencrypt:
                from regd.daemon.letsencrypt import parse_settings, self_signed
                from regd.daemon.tls import ReloadingServerContext, TLSConfigError, options_from_pem
                if tls.certificate or tls.key:
                    raise TLSConfigError("http.tls: use either certificate/key or letsencrypt, not both")
                self["acme"] = parse_settings(tls.letsencrypt)
                placeholder = options_from_pem(tls, *self_signed(self["acme"].hosts))
                self["tls"] = ReloadingServerContext(tls, placeholder)
            elif tls.certificate or tls.key:
                from regd.daemon.tls import ReloadingServerContext
                self["tls"] = ReloadingServerContext(tls)
            else:
                self["tls"] = None
            self["auth"] = auth_settings(loaded.config, self["tls"] is not None)
            if loaded.config.regd.workers > 1 and loaded.config.storage.driver == "inmemory":
                raise ConfigError("regd.workers: several workers need storage they share (filesystem or s3), "
                                  "not inmemory")
            if loaded.config.regd.workers > 1 and self["acme"] is not None:
                raise ConfigError("regd.workers: several workers and http.tls.letsencrypt do not go together yet; "
                                  "use certificate/key files (reloaded by every worker)")
            _check_storage_root(loaded.config.storage)
            _check_index_path(loaded.config.index)
        except Exception as e:
            if not isinstance(e, _configuration_errors()):
                raise
            sys.stderr.write(f"regd: configuration error: {e}\n")
            raise SystemExit(1)


def _configuration_errors() -> tuple[type[Exception], ...]:
    """
    The exceptions that mean "this configuration is wrong". A feature's module
    is imported only when the feature is configured, so its error class is
    looked up only if its module was loaded (only then can it be raised).
    """
    from regd.notifications.settings import NotificationConfigError
    errors = [ConfigError, NotificationConfigError]
    for module, name in (("regd.http.htpasswd", "HtpasswdError"), ("regd.http.tokenauth", "TokenConfigError"),
                         ("regd.daemon.letsencrypt", "ACMEConfigError"), ("regd.daemon.tls", "TLSConfigError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def _check_storage_root(storage) -> None:
    if storage.driver == "s3":
        from regd.storage.interfaces import StorageUnavailable
        from regd.storage.s3client import check_bucket
        try:
            check_bucket(storage.s3)
        except StorageUnavailable as e:
            raise ConfigError(f"storage.s3: {e}") from None
    if storage.driver != "filesystem":
        return
    from regd.storage.filesystem import check_root
    root = storage.filesystem.rootdirectory
    try:
        check_root(root)
    except OSError as e:
        raise ConfigError(f"storage.filesystem.rootdirectory: {root} is not a writable directory "
                          f"({e.strerror or e})") from None


def _check_index_path(index) -> None:
    if not index.path:
        return  # under the storage root, checked above
    directory = os.path.dirname(os.path.abspath(index.path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"index.path: cannot create {directory} ({e.strerror or e})") from None
    if not os.access(directory, os.W_OK) or (os.path.exists(index.path) and not os.access(index.path, os.W_OK)):
        raise ConfigError(f"index.path: {index.path} is not writable")


def listen_description(host: str, port: int) -> str:
    """A server endpoint string for http.addr (':5000' means every interface)."""
    if not host:
        return f"tcp:{port}"
    kind = "tcp6" if ":" in host else "tcp"
    interface = host.replace(":", "\\:")
    return f"{kind}:{port}:interface={interface}"


def makeService(options) -> service.MultiService:
    from twisted.internet import reactor

    from regd.http.api import RegistryAPI
    from regd.http.responses import UrlBuilder
    from regd.http.site import RegdSite
    from regd.registry.manifests import UrlPolicy
    from regd.registry.service import Registry
    from regd.storage.threads import thread_pool_runner

    loaded = options["loaded"]
    config = loaded.config
    from regd.daemon.workers import worker_index
    worker = worker_index()
    if worker is None:  # the supervisor (or the one process) says it once
        for warning in loaded.warnings:
            log.warn("configuration: {warning}", warning=warning)

    from regd.logging import make_observer
    root = RegdService(make_observer(config.log), reactor)
    if config.regd.workers > 1 and worker is None:
        return add_supervisor(root, options, config, reactor)
    # Worker 0 (or the one process) also runs what runs once per host.
    primary = worker in (None, 0)
    storage = config.storage
    if storage.driver == "inmemory":
        from regd.storage.memory import InMemoryDriver
        driver = InMemoryDriver()
    elif storage.driver == "s3":
        from regd.storage.s3 import S3Driver
        driver = S3Driver(storage.s3, reactor)
        log.info("storage: S3 bucket {bucket} at {endpoint}, root {root!r}", bucket=storage.s3.bucket,
                 endpoint=f"{driver.client.scheme}://{driver.client.host}", root=driver.prefix)
    else:
        from regd.storage.filesystem import FilesystemDriver
        pool = ThreadPool(minthreads=1, maxthreads=storage.filesystem.maxthreads, name="regd-storage")
        ThreadPoolService(pool).setServiceParent(root)
        driver = FilesystemDriver(storage.filesystem.rootdirectory, thread_pool_runner(reactor, pool),
                                  inline_reads=config.regd.inlinereads)

    if storage.maintenance.readonly.enabled:
        log.warn("read-only mode (storage.maintenance.readonly): pushes and deletes are refused")
    url_rules = config.validation.manifests.urls
    from regd.cache.build import build_blob_cache
    cache = build_blob_cache(config, driver, reactor)
    if cache.kind != "none":
        log.info("blob descriptor cache: {kind}", kind=cache.kind)
        ClosingService(cache.close).setServiceParent(root)
    registry = Registry(
        driver, reactor,
        delete_enabled=storage.delete.enabled,
        readonly=storage.maintenance.readonly.enabled,
        url_policy=UrlPolicy(tuple(url_rules.allow), tuple(url_rules.deny)),
        validate_manifests=not config.validation.disabled,
        redirect=not storage.redirect.disable,
        cache=cache,
    )
    prefix = config.http.prefix.rstrip("/")
    urls = UrlBuilder(relative=config.http.relativeurls, base=config.http.host or None, prefix=prefix)
    access = issuer = authorize_admin = None
    metrics = None  # the debug address's /metrics is the only reader of these
    if config.http.debug_addr and primary:
        from prometheus_client import CollectorRegistry
        metrics = CollectorRegistry()
    if options["auth"] is not None:
        from twisted.internet.threads import deferToThread

        method, section = options["auth"]
        if method == "htpasswd":
            from regd.http.htpasswd import HtpasswdAccess
            access = HtpasswdAccess(section["realm"], section["path"], deferToThread, reactor)
            passwords = access
        else:
            access, issuer = build_token_access(section, reactor, deferToThread)
            passwords = issuer.passwords if issuer is not None else None
        if passwords is not None and metrics is not None:
            from regd.metrics import FailedLoginsCollector
            metrics.register(FailedLoginsCollector(passwords.failures))
        authorize_admin = admin_authorizer(section, access, passwords)
    notifications = add_notifications(root, registry, config, reactor, metrics, authorize_admin,
                                      deliver=primary)
    if config.search.enabled or config.ui.enabled:
        add_index(root, registry, config, reactor)
    api = RegistryAPI(registry, urls, access, issuer)
    api.search_enabled = config.search.enabled
    resource = api.resource()
    if config.ui.enabled:
        resource = add_web_ui(resource, registry, access, issuer, config, reactor, urls)
    headers = dict(config.http.headers)
    if worker is not None:
        headers["X-Regd-Worker"] = (str(worker),)  # which worker answered (regd.workers)
    site = RegdSite(mount_at_prefix(resource, prefix), registry.new_spool, upload_sink=registry.upload_sink,
                    credentials_required=access is not None, prefix=prefix,
                    spool_threshold=config.regd.spoolthreshold, max_body_size=config.regd.maxbodysize,
                    extra_headers=headers, access_log=access_log_observed(config.log),
                    limits=connection_limits(config.regd.limits), timeout=config.regd.limits.idletimeout or None)
    from twisted.internet.endpoints import serverFromString
    tls = options["tls"]
    if tls is None:
        endpoint = serverFromString(reactor, listen_description(config.http.host_addr, config.http.port))
    else:
        from regd.http.site import tls_listener_factory
        site.plain_http = False
        endpoint = serverFromString(reactor, listen_description(config.http.host_addr, config.http.port))
        listening = tls_listener_factory(tls, site)
        CertificateReloader(tls, reactor).setServiceParent(root)
        if options["acme"] is not None:
            add_acme(root, options["acme"], tls, config.http.tls, reactor)
    # Stopped newest first: the listener closes, then requests drain, then the rest.
    DrainService(site, config.http.draintimeout or DEFAULT_DRAIN, reactor).setServiceParent(root)
    if worker is None:
        ListenerService(endpoint, site if tls is None else listening, "http.addr",
                        config.http.addr).setServiceParent(root)
    else:
        add_worker_listener(root, site, tls, config, reactor)
    health = add_health(root, registry, reactor, config.health, notifications, free_space_probe(config))
    api.health = health
    if not primary:
        return root
    if config.http.debug_addr:
        from regd.http.metrics import HTTPMetrics
        site.metrics = HTTPMetrics(metrics, site, registry.uploads)
        add_debug_server(root, config.http.debug_addr, notifications, metrics, health, reactor)

    gc = config.regd.gc
    if gc.interval > 0:
        from regd.registry.gc import GarbageCollector
        collector = GarbageCollector(registry, reactor, grace=gc.grace, delete_untagged=gc.deleteuntagged)

        async def collect():
            report = await collector.run()
            log.info("garbage collection: {blobs} blobs ({bytes} bytes) and {manifests} manifests deleted; "
                     "{kept} unreferenced blobs ({kept_bytes} bytes) kept by the grace period "
                     "(`regd garbage-collect --grace 0s` reclaims them now), "
                     "{rescued} put back for pushes in progress",
                     blobs=len(report.blobs_deleted), bytes=report.bytes_freed,
                     manifests=len(report.manifests_deleted), kept=len(report.blobs_kept_by_grace),
                     kept_bytes=report.bytes_kept_by_grace, rescued=len(report.blobs_rescued))

        timer = internet.TimerService(gc.interval, _run_logged, collect)
        timer.setServiceParent(root)

    # At start and then with upload purging (daily if that is off): what a crash left behind goes.
    purging = storage.maintenance.uploadpurging

    async def purge():
        removed = await registry.remove_leftovers()
        if removed:
            log.info("removed {count} leftovers of interrupted writes (temp files, request-body spools)",
                     count=len(removed))
        if purging.enabled:
            await registry.purge_uploads(purging.age, purging.dryrun)
    internet.TimerService(purging.interval if purging.enabled else 24 * 3600.0, _run_logged,
                          purge).setServiceParent(root)
    return root


def add_supervisor(root, options, config, reactor):
    """regd.workers > 1: this process only starts, watches and stops the workers (regd.daemon.workers)."""
    from regd.daemon.workers import WorkerSupervisor
    argv = [sys.executable, "-m", "regd.cli", "serve"] + ([os.path.abspath(options["config"])]
                                                          if options["config"] else [])
    WorkerSupervisor(reactor, config.regd.workers, config.http.host_addr, config.http.port, argv,
                     config.http.draintimeout or DEFAULT_DRAIN).setServiceParent(root)
    return root


def add_worker_listener(root, site, tls, config, reactor):
    """A worker serves on the socket its supervisor opened (file descriptor 3), and stops if orphaned."""
    import socket

    from regd.daemon.workers import LISTEN_FD_ENV, PARENT_ENV, AdoptedListenerService, OrphanWatch
    factory = site
    if tls is not None:
        from regd.http.site import tls_listener_factory
        factory = tls_listener_factory(tls, site)
    family = socket.AF_INET6 if ":" in config.http.host_addr else socket.AF_INET
    AdoptedListenerService(reactor, int(os.environ[LISTEN_FD_ENV]), family, factory).setServiceParent(root)
    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit():
        OrphanWatch(reactor, int(parent)).setServiceParent(root)


def add_web_ui(api_resource, registry, access, issuer, config, reactor, urls):
    """
    The web pages under /ui/ (regd.web), in front of the API; needs the
    repository index. The pages are built on the first request under /ui/.
    """
    from regd.web.mount import UIMount
    index = getattr(registry, "index", None)
    if index is None:
        log.warn("ui.enabled is set but there is no repository index: the web UI is off")
        return api_resource
    prefix = config.http.prefix.rstrip("/")

    def build_ui():
        import hashlib

        from regd.web.access import web_access
        from regd.web.app import WebUI
        # http.secret (shared by every instance) signs sessions; without it a secret kept in storage does.
        secret = (hashlib.sha256(b"regd-ui:" + config.http.secret.encode("utf-8")).digest()
                  if config.http.secret else None)
        section = (next(iter(config.auth.values()), None) or {}) if config.auth else {}
        admins = {str(a) for a in (section.get("admins") or (section.get("builtin") or {}).get("admins") or [])}
        ui = WebUI(registry, web_access(access, issuer, admins), index, reactor, settings=config.ui, prefix=prefix,
                   secret=secret, urls=urls)
        return ui.resource()
    return UIMount(api_resource, build_ui, prefix + "/ui/")


def index_path(config) -> str:
    """
    index.path, else <rootdirectory>/regd/index/index.db (shared by the processes
    on that root); in memory for storage with no local root (S3, inmemory).
    """
    if config.index.path:
        return os.path.abspath(config.index.path)
    if config.storage.driver != "filesystem":
        # No local root to keep it under: rebuilt from storage at every start (set index.path to keep it).
        return ":memory:"
    return os.path.join(config.storage.filesystem.rootdirectory, "regd", "index", "index.db")


def add_index(root, registry, config, reactor):
    """The repository index search and the web pages query, kept by this process's events."""
    from regd.index.service import RepositoryIndex
    from regd.index.upkeep import IndexService
    from regd.storage.threads import thread_pool_runner
    # One thread: SQLite sees one connection used strictly in turn.
    pool = ThreadPool(minthreads=1, maxthreads=1, name="regd-index")
    index = RepositoryIndex(registry.driver, registry.manifests, index_path(config),
                            thread_pool_runner(reactor, pool), reactor, retention=config.index.retention)
    registry.index = index
    registry.add_listener(index)
    upkeep = IndexService(index, reactor, config.index.refreshinterval, pool)
    upkeep.setServiceParent(root)
    return upkeep


def connection_limits(limits):
    """regd.limits as the HTTP layer's value, after raising the descriptor limit it relies on."""
    from regd.http.limits import ConnectionLimits, raise_descriptor_limit
    soft, hard = raise_descriptor_limit()
    log.info("open-file limit {soft} (hard {hard}); at most {total} connections, {per} per client address",
             soft=soft, hard=hard, total=limits.maxconnections or "unlimited",
             per=limits.maxconnectionsperclient or "unlimited")
    return ConnectionLimits(max_connections=limits.maxconnections, max_per_client=limits.maxconnectionsperclient,
                            head_timeout=limits.headtimeout, body_timeout=limits.bodytimeout,
                            min_body_rate=limits.minbodyrate)


def add_notifications(root, registry, config, reactor, metrics=None, authorize_admin=None, deliver=True):
    """The webhook service, subscribed to registry events; None without endpoints."""
    from regd.notifications.build import build_notifications
    storage_root = (config.storage.filesystem.rootdirectory if config.storage.driver == "filesystem"
                    else os.path.abspath("."))
    service, admin, warnings = build_notifications(
        config.notifications, reactor=reactor,
        default_journal=os.path.join(storage_root, "regd", "notifications.sqlite3"),
        source_addr=config.http.addr, metrics=metrics, authorize_admin=authorize_admin,
        # Every worker journals; one starts the delivery process (regd.workers: worker 0).
        deliver=deliver, log_settings={"level": config.log.level, "formatter": config.log.formatter,
                                       "fields": dict(config.log.fields or {})})
    for warning in warnings:
        log.warn("configuration: {warning}", warning=warning)
    if service is None:
        return None
    service.setServiceParent(root)
    registry.add_listener(service)
    return admin


def free_space_probe(config):
    """A probe failing while the storage filesystem has less than regd.limits.freespace bytes free."""
    threshold = config.regd.limits.freespace
    if config.storage.driver != "filesystem" or threshold <= 0:
        return None
    import shutil
    directory = config.storage.filesystem.rootdirectory

    async def probe():
        free = shutil.disk_usage(directory).free  # one statvfs: no thread hop needed
        if free < threshold:
            raise OSError(f"storage nearly full: {free} bytes free, under regd.limits.freespace ({threshold})")
    return probe


def add_health(root, registry, reactor, raw, notifications, free_space=None):
    """Storage health check (health.storagedriver) plus notification endpoint status."""
    from regd.daemon.health import Check, HealthService, storage_check_settings
    from regd.storage import paths
    enabled, interval, threshold = storage_check_settings(raw)
    checks = []
    if enabled:
        async def storage_probe():
            stamp = str(reactor.seconds()).encode()
            await registry.driver.put_content(paths.HEALTH, stamp)
            if await registry.driver.get_content(paths.HEALTH) != stamp:
                raise OSError("storage returned other bytes than were written")
        checks.append((Check("storagedriver_filesystem", storage_probe, threshold), interval))
        if free_space is not None:
            checks.append((Check("storage_free_space", free_space, 1), interval))
    cache = registry.blobs.cache
    if cache.kind == "redis":
        # Not critical: without Redis every lookup goes to storage, slower but right.
        checks.append((Check("redis", cache.ping, 1, critical=False), interval))
    extra = {}
    if notifications is not None:
        def endpoints():
            return {e.name: {"pending": e.pending, "oldest_pending_age_seconds": round(e.oldest_pending_age(), 3),
                             "last_error": e.stats.last_error} for e in notifications.service.endpoints}
        extra["notifications"] = endpoints
    if cache.kind != "none":
        def blob_cache():
            return {"kind": cache.kind, "status": "degraded" if cache.degraded else "ok", "error": cache.error,
                    "hits": cache.hits, "misses": cache.misses, "failures": cache.failures}
        extra["blob_descriptor_cache"] = blob_cache
    health = HealthService(reactor, checks, extra)
    health.setServiceParent(root)
    return health


def debug_resource(metrics, health=None, notifications=None):
    """The debug address's tree: /metrics, /debug/health, /debug/notifications/..."""
    from twisted.web.resource import Resource

    from regd.daemon.health import HealthResource
    from regd.metrics import MetricsResource
    root, debug = Resource(), Resource()
    root.putChild(b"metrics", MetricsResource(metrics))
    root.putChild(b"debug", debug)
    if health is not None:
        debug.putChild(b"health", HealthResource(health))
    if notifications is not None:
        debug.putChild(b"notifications", notifications.resource())
    return root


def add_debug_server(root, addr: str, notifications, metrics, health, reactor) -> None:
    from twisted.web.server import Site

    from twisted.internet.endpoints import serverFromString

    from regd.config import parse_addr
    host, port = parse_addr(addr)
    endpoint = serverFromString(reactor, listen_description(host, port))
    site = Site(debug_resource(metrics, health, notifications))
    ListenerService(endpoint, site, "http.debug.addr", addr).setServiceParent(root)


def add_acme(root, settings, context, tls_config, reactor) -> None:
    """ACME certificates, with the http-01 challenge responder on its own plain-HTTP address."""
    from twisted.internet.threads import deferToThread
    from twisted.web.server import Site

    from twisted.internet.endpoints import serverFromString

    from regd.config import parse_addr
    from regd.daemon.letsencrypt import CertificateManager, ChallengeResource
    responder = ChallengeResource()
    host, port = parse_addr(settings.httpaddr)
    endpoint = serverFromString(reactor, listen_description(host, port))
    ListenerService(endpoint, Site(responder), "http.tls.letsencrypt.httpaddr",
                    settings.httpaddr).setServiceParent(root)
    CertificateManager(settings, context, tls_config, reactor, deferToThread, responder).setServiceParent(root)


def mount_at_prefix(resource, prefix: str):
    """Serve the API below http.prefix (e.g. /my/registry/v2/...)."""
    from twisted.web.resource import Resource
    segments = [s for s in prefix.split("/") if s]
    if not segments:
        return resource
    root = node = Resource()
    for segment in segments[:-1]:
        child = Resource()
        node.putChild(segment.encode("utf-8"), child)
        node = child
    node.putChild(segments[-1].encode("utf-8"), resource)
    return root


def _run_logged(function):
    from twisted.internet import defer
    d = defer.ensureDeferred(function())
    d.addErrback(lambda f: log.failure("scheduled maintenance failed", f))
    return d
