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
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from regd.config import ConfigError, load_config

log = Logger()

DEFAULT_DRAIN = 30.0  # seconds requests in progress get at shutdown when http.draintimeout is unset


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = "Run the regd container image registry."
    optParameters = [["config", "c", None, "Path to the YAML configuration (registry:2 format)."]]

    def postOptions(self):
        # Refuse to start with one line naming the key and the problem.
        from regd.notifications.settings import NotificationConfigError, parse_notifications
        from regd.http.htpasswd import HtpasswdError
        from regd.http.tokenauth import TokenConfigError
        from regd.letsencrypt import ACMEConfigError
        from regd.tls import TLSConfigError, ReloadingServerContext
        try:
            self["loaded"] = loaded = load_config(self["config"], os.environ, default_root=os.path.abspath("data"))
            parse_notifications(loaded.config.notifications, "")
            tls = loaded.config.http.tls
            self["acme"] = None
            if tls.letsencrypt:
                from regd.letsencrypt import parse_settings, self_signed
                from regd.tls import options_from_pem
                if tls.certificate or tls.key:
                    raise TLSConfigError("http.tls: use either certificate/key or letsencrypt, not both")
                self["acme"] = parse_settings(tls.letsencrypt)
                placeholder = options_from_pem(tls, *self_signed(self["acme"].hosts))
                self["tls"] = ReloadingServerContext(tls, placeholder)
            else:
                self["tls"] = ReloadingServerContext(tls) if (tls.certificate or tls.key) else None
            self["auth"] = auth_settings(loaded.config, self["tls"] is not None)
        except (ConfigError, NotificationConfigError, TLSConfigError, HtpasswdError, TokenConfigError,
                ACMEConfigError) as e:
            sys.stderr.write(f"regd: configuration error: {e}\n")
            raise SystemExit(1)


class RegdService(service.MultiService):
    """
    The root service. When twistd attaches it to its Application it installs
    regd's log observer there, so the `log` section decides level and format.
    """

    def __init__(self, log_observer=None, reactor=None):
        super().__init__()
        self.log_observer = log_observer
        self.reactor = reactor

    def startService(self):
        super().startService()
        if self.reactor is not None:
            self.reactor.callWhenRunning(self._handle_sigterm)

    def _handle_sigterm(self):
        """
        A SIGTERM stop is a clean stop: exit 0 once services stopped (twistd
        would otherwise re-raise the signal at exit). Installed after the
        reactor's own handlers, which it replaces for SIGTERM only.
        """
        import signal

        def stop(signum, frame):
            log.info("SIGTERM received: stopping cleanly")
            self.reactor.callFromThread(self.reactor.stop)

        signal.signal(signal.SIGTERM, stop)

    def stopService(self):
        """Stop children one at a time, newest first, so each can rely on the older ones."""
        from twisted.internet import defer
        service.Service.stopService(self)

        async def stop_all():
            for child in reversed(list(self)):
                try:
                    await defer.maybeDeferred(child.stopService)
                except Exception:
                    log.failure("stopping {child} failed", child=child)

        return defer.ensureDeferred(stop_all())

    def setServiceParent(self, parent):
        super().setServiceParent(parent)
        set_component = getattr(parent, "setComponent", None)
        if self.log_observer is not None and set_component is not None:
            from twisted.logger import ILogObserver
            set_component(ILogObserver, self.log_observer)


def auth_settings(config, tls_enabled: bool):
    """
    Validate the `auth` section; returns it (or None for an open registry).
    Passwords over plain HTTP beyond loopback are refused unless
    `allowinsecure` says a TLS proxy is in front.
    """
    from regd.http.htpasswd import HtpasswdError, parse_htpasswd
    auth = config.auth
    if not auth:
        return None
    unsupported = sorted(set(auth) - {"htpasswd", "token"})
    if unsupported or len(auth) != 1:
        raise HtpasswdError(f"auth.{(unsupported or sorted(auth))[0]}: configure exactly one of htpasswd or token")
    method, section = next(iter(auth.items()))
    section = section or {}
    if method == "htpasswd":
        if not section.get("realm") or not section.get("path"):
            raise HtpasswdError("auth.htpasswd: realm and path are both required")
        parse_htpasswd(section["path"])
        passwords_here = True
    else:
        build_token_access(section, clock=None)  # reads and checks every file now
        passwords_here = bool(section.get("builtin"))
    loopback = config.http.host_addr in ("127.0.0.1", "::1", "localhost")
    if passwords_here and not tls_enabled and not loopback:
        if not section.get("allowinsecure"):
            raise HtpasswdError(f"auth.{method}: passwords would cross the network in clear text; configure "
                                f"http.tls or set auth.{method}.allowinsecure: true (behind a TLS proxy)")
        log.warn("allowinsecure is set: passwords are accepted over plain HTTP")
    return method, section


def build_token_access(section, clock, run_in_thread=None):
    """TokenAccess (and the built-in TokenIssuer when configured) from auth.token."""
    from regd.http.tokenauth import TokenAccess, TokenConfigError, load_bundle, load_jwks
    for key in ("realm", "service", "issuer", "rootcertbundle"):
        if not section.get(key):
            raise TokenConfigError(f"auth.token.{key}: required")
    roots = load_bundle(section["rootcertbundle"])
    jwks = load_jwks(section["jwks"]) if section.get("jwks") else None
    issuer = None
    builtin = section.get("builtin")
    if builtin:
        from regd.http.htpasswd import HtpasswdAccess
        from regd.http.tokenissuer import TokenIssuer, parse_rules
        from regd.units import parse_duration
        rules = parse_rules(builtin.get("access") or [], builtin.get("groups"))
        try:
            with open(builtin["key"], "rb") as f:
                key_pem = f.read()
            with open(section["rootcertbundle"], "rb") as f:
                certificate_pem = f.read()
        except (KeyError, OSError) as e:
            raise TokenConfigError(f"auth.token.builtin.key: cannot read the signing key: {e}") from None
        passwords = HtpasswdAccess(section["realm"], builtin.get("htpasswd", ""), run_in_thread, clock) \
            if builtin.get("htpasswd") else None
        if passwords is None:
            raise TokenConfigError("auth.token.builtin.htpasswd: required (the users who may log in)")
        try:
            issuer = TokenIssuer(service=section["service"], issuer=section["issuer"], key_pem=key_pem,
                                 certificate_pem=certificate_pem, passwords=passwords, rules=rules,
                                 clock=clock or __import__("time"),
                                 expiration=parse_duration(builtin.get("expiration", "5m")))
        except ValueError as e:
            raise TokenConfigError(f"auth.token.builtin.key: {e}") from None
    visible = (lambda subject, name: issuer.rules.may_pull(subject or None, name)) if issuer else None
    access = TokenAccess(section["realm"], section["service"], section["issuer"], roots, clock, jwks, visible)
    return access, issuer


class CertificateReloader(service.Service):
    """Reloads the TLS certificate on SIGHUP, and when its files change (checked every few seconds)."""

    interval = 5.0

    def __init__(self, context, reactor):
        self.context = context
        self.reactor = reactor
        self._timer = None
        self._previous = None

    def startService(self):
        import signal
        from twisted.internet.task import LoopingCall
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._on_hangup)
        self._timer = LoopingCall(self.context.reload_if_changed)
        self._timer.clock = self.reactor
        self._timer.start(self.interval, now=False)

    def _on_hangup(self, signum, frame):
        self.reactor.callFromThread(self.context.reload)

    def stopService(self):
        import signal
        super().stopService()
        if self._timer is not None and self._timer.running:
            self._timer.stop()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)


class DrainService(service.Service):
    """
    On stop (after the listener closed), lets requests in progress finish,
    for at most `timeout` seconds; uploads complete rather than break.
    """

    flush_grace = 0.5

    def __init__(self, site, timeout: float, clock):
        self.site, self.timeout, self.clock = site, timeout, clock

    def stopService(self):
        from twisted.internet import task
        super().stopService()
        if self.site.in_flight:
            log.info("waiting up to {timeout}s for {count} requests in progress", timeout=self.timeout,
                     count=self.site.in_flight)
        idle = self.site.when_idle()
        timeout = self.clock.callLater(self.timeout, lambda: idle.called or idle.callback(None))

        def flushed(_):
            if timeout.active():
                timeout.cancel()
            # The last responses may still sit in transport buffers: give them a moment to go out.
            return task.deferLater(self.clock, self.flush_grace, lambda: None)

        return idle.addCallback(flushed)


class ThreadPoolService(service.Service):
    """Runs a ThreadPool for as long as the daemon runs."""

    def __init__(self, pool: ThreadPool):
        self.pool = pool

    def startService(self):
        super().startService()
        self.pool.start()

    def stopService(self):
        super().stopService()
        self.pool.stop()


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
    for warning in loaded.warnings:
        log.warn("configuration: {warning}", warning=warning)

    from regd.logging import make_observer
    root = RegdService(make_observer(config.log), reactor)
    storage = config.storage
    if storage.driver == "inmemory":
        from regd.storage.memory import InMemoryDriver
        driver = InMemoryDriver()
    else:
        from regd.storage.filesystem import FilesystemDriver
        pool = ThreadPool(minthreads=1, maxthreads=storage.filesystem.maxthreads, name="regd-storage")
        ThreadPoolService(pool).setServiceParent(root)
        driver = FilesystemDriver(storage.filesystem.rootdirectory, thread_pool_runner(reactor, pool),
                                  inline_reads=config.regd.inlinereads)

    url_rules = config.validation.manifests.urls
    registry = Registry(
        driver, reactor,
        delete_enabled=storage.delete.enabled,
        readonly=storage.maintenance.readonly.enabled,
        url_policy=UrlPolicy(tuple(url_rules.allow), tuple(url_rules.deny)),
        validate_manifests=not config.validation.disabled,
    )
    prefix = config.http.prefix.rstrip("/")
    urls = UrlBuilder(relative=config.http.relativeurls, base=config.http.host or None, prefix=prefix)
    access = issuer = authorize_admin = None
    from prometheus_client import CollectorRegistry
    metrics = CollectorRegistry()
    if options["auth"] is not None:
        from twisted.internet.threads import deferToThread

        from regd.metrics import FailedLoginsCollector
        method, section = options["auth"]
        if method == "htpasswd":
            from regd.http.htpasswd import HtpasswdAccess
            access = HtpasswdAccess(section["realm"], section["path"], deferToThread, reactor)
            passwords = access
        else:
            access, issuer = build_token_access(section, reactor, deferToThread)
            passwords = issuer.passwords if issuer is not None else None
        if passwords is not None:
            metrics.register(FailedLoginsCollector(passwords.failures))
        authorize_admin = admin_authorizer(section, access, passwords)
    notifications = add_notifications(root, registry, config, reactor, metrics, authorize_admin)
    api = RegistryAPI(registry, urls, access, issuer)
    site = RegdSite(mount_at_prefix(api.resource(), prefix), registry.new_spool,
                    spool_threshold=config.regd.spoolthreshold, max_body_size=config.regd.maxbodysize,
                    extra_headers=config.http.headers, access_log=not config.log.accesslog_disabled)
    tls = options["tls"]
    if tls is None:
        endpoint = serverFromString(reactor, listen_description(config.http.host_addr, config.http.port))
    else:
        from twisted.internet.endpoints import SSL4ServerEndpoint
        site.plain_http = False
        endpoint = SSL4ServerEndpoint(reactor, config.http.port, tls, interface=config.http.host_addr)
        CertificateReloader(tls, reactor).setServiceParent(root)
        if options["acme"] is not None:
            add_acme(root, options["acme"], tls, config.http.tls, reactor)
    # Stopped newest first: the listener closes, then requests drain, then the rest.
    DrainService(site, config.http.draintimeout or DEFAULT_DRAIN, reactor).setServiceParent(root)
    internet.StreamServerEndpointService(endpoint, site).setServiceParent(root)
    health = add_health(root, registry, reactor, config.health, notifications)
    api.health = health
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
            log.info("garbage collection: {blobs} blobs ({bytes} bytes) and {manifests} manifests deleted",
                     blobs=len(report.blobs_deleted), bytes=report.bytes_freed,
                     manifests=len(report.manifests_deleted))

        timer = internet.TimerService(gc.interval, _run_logged, collect)
        timer.setServiceParent(root)

    purging = storage.maintenance.uploadpurging
    if purging.enabled:
        def purge():
            d = registry.purge_uploads(purging.age, purging.dryrun)
            return d
        internet.TimerService(purging.interval, _run_logged, purge).setServiceParent(root)
    return root


def admin_authorizer(section, access, passwords):
    """
    Who may use the admin endpoints: users listed in `admins` (checked with
    their password), or, with an external token issuer, tokens granting
    registry:notifications:*.
    """
    from regd.http.access import Scope
    from regd.oci.errors import Denied
    admins = {str(a) for a in (section.get("admins") or (section.get("builtin") or {}).get("admins") or [])}

    async def authorize(request):
        if passwords is None:
            return await access.authorize(request, [Scope("registry", "notifications", ("*",))])
        grant = await passwords.authorize(request, [])
        if grant.actor not in admins:
            raise Denied("admin access required")
        return grant

    return authorize


def add_notifications(root, registry, config, reactor, metrics=None, authorize_admin=None):
    """The webhook service, subscribed to registry events; None without endpoints."""
    from regd.notifications.build import build_notifications
    storage_root = (config.storage.filesystem.rootdirectory if config.storage.driver == "filesystem"
                    else os.path.abspath("."))
    service, admin, warnings = build_notifications(
        config.notifications, reactor=reactor,
        default_journal=os.path.join(storage_root, "regd", "notifications.sqlite3"),
        source_addr=config.http.addr, metrics=metrics, authorize_admin=authorize_admin)
    for warning in warnings:
        log.warn("configuration: {warning}", warning=warning)
    if service is None:
        return None
    service.setServiceParent(root)
    registry.add_listener(service)
    return admin


def add_health(root, registry, reactor, raw, notifications):
    """Storage health check (health.storagedriver) plus notification endpoint status."""
    from regd.health import Check, HealthService, storage_check_settings
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
    extra = {}
    if notifications is not None:
        def endpoints():
            return {e.name: {"pending": e.pending, "oldest_pending_age_seconds": round(e.oldest_pending_age(), 3),
                             "last_error": e.stats.last_error} for e in notifications.service.endpoints}
        extra["notifications"] = endpoints
    health = HealthService(reactor, checks, extra)
    health.setServiceParent(root)
    return health


def debug_resource(metrics, health=None, notifications=None):
    """The debug address's tree: /metrics, /debug/health, /debug/notifications/..."""
    from twisted.web.resource import Resource

    from regd.health import HealthResource
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

    from regd.config import parse_addr
    host, port = parse_addr(addr)
    endpoint = serverFromString(reactor, listen_description(host, port))
    site = Site(debug_resource(metrics, health, notifications))
    internet.StreamServerEndpointService(endpoint, site).setServiceParent(root)


def add_acme(root, settings, context, tls_config, reactor) -> None:
    """ACME certificates, with the http-01 challenge responder on its own plain-HTTP address."""
    from twisted.internet.threads import deferToThread
    from twisted.web.server import Site

    from regd.config import parse_addr
    from regd.letsencrypt import CertificateManager, ChallengeResource
    responder = ChallengeResource()
    host, port = parse_addr(settings.httpaddr)
    endpoint = serverFromString(reactor, listen_description(host, port))
    internet.StreamServerEndpointService(endpoint, Site(responder)).setServiceParent(root)
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
