# -*- test-case-name: tests.cache.test_redis -*-
"""
The Redis backend (storage.cache.blobdescriptor: redis), shared by every
instance that names the same Redis, over txredisapi: a Twisted-native client,
so a lookup costs no thread hop and never blocks the event loop.

Keys are registry:2's, so both can share one Redis:
    blobs::<digest>                         hash {digest, size, mediatype}
    repository::<name>::blobs               set of the digests the repository links
    repository::<name>::blobs::<digest>     hash {digest, mediatype}
No key expires: configure Redis with `maxmemory-policy allkeys-lru`, as for registry:2.

When no pooled connection is up the backend says so at once (`available`
false) instead of queueing the command, so a Redis outage costs a request
nothing; the pool reconnects by itself with backoff.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from regd.cache.interfaces import CacheUnavailable, Descriptor, IDescriptorBackend
from regd.oci.digest import Digest

log = Logger()

DEFAULT_COMMAND_TIMEOUT = 1.0  # seconds, when neither readtimeout nor writetimeout is set


def _global_key(digest) -> str:
    return f"blobs::{digest}"


def _repository_set(repository: str) -> str:
    return f"repository::{repository}::blobs"


def _repository_key(repository: str, digest) -> str:
    return f"repository::{repository}::blobs::{digest}"


def tls_options(host: str, tls):
    """A client TLS connection creator from redis.tls (clientcas: the CAs the server's certificate must chain to)."""
    from twisted.internet import ssl

    trust = None
    if tls.clientcas:
        certificates = []
        for path in tls.clientcas:
            with open(path, "rb") as f:
                certificates.append(ssl.Certificate.loadPEM(f.read()))
        trust = ssl.trustRootFromCertificates(certificates)
    client = None
    if tls.certificate:
        with open(tls.certificate, "rb") as cert, open(tls.key or tls.certificate, "rb") as key:
            client = ssl.PrivateCertificate.loadPEM(cert.read() + b"\n" + key.read())
    return ssl.optionsForClientTLS(host, trustRoot=trust, clientCertificate=client)


def pool_size(pool) -> int:
    """registry:2's pool settings onto txredisapi's fixed pool: maxidle connections, capped by maxactive."""
    size = pool.maxidle or 1
    if pool.maxactive:
        size = min(size, pool.maxactive)
    return max(1, size)


@implementer(IDescriptorBackend)
class RedisBackend:
    shared = True

    def __init__(self, settings, reactor, connect=None):
        """
        C{settings}: L{regd.config.RedisConfig}. C{connect}: txredisapi's
        lazyConnectionPool (a seam for tests).
        """
        if connect is None:
            import txredisapi
            connect = txredisapi.lazyConnectionPool
        self.settings = settings
        self._reactor = reactor
        timeout = (settings.readtimeout + settings.writetimeout) or DEFAULT_COMMAND_TIMEOUT
        self._timeout = timeout + (settings.dialtimeout or 0)
        self._redis = connect(
            host=settings.host, port=settings.port, dbid=settings.db, poolsize=pool_size(settings.pool),
            reconnect=True, password=settings.password or None,
            ssl_context_factory=tls_options(settings.host, settings.tls) if settings.tls.enabled else False,
            connectTimeout=settings.dialtimeout or None, replyTimeout=timeout, convertNumbers=False)
        # The client retries a lost connection after 1 s, backing off to 10 s at most. Failures to
        # connect surface through `available` and ping(), not as an unhandled "pool ready" error.
        ready = getattr(self._redis, "_connected", None)
        if isinstance(ready, defer.Deferred):
            ready.addErrback(lambda failure: None)

    @property
    def available(self) -> bool:
        factory = getattr(self._redis, "_factory", None)
        return factory is None or factory.size > 0

    async def _call(self, command: str, *args):
        if not self.available:
            raise CacheUnavailable(f"redis {self.settings.addr}: not connected")
        d = getattr(self._redis, command)(*args)
        d.addTimeout(self._timeout, self._reactor)
        try:
            return await d
        except defer.TimeoutError:
            raise CacheUnavailable(f"redis {self.settings.addr}: no answer within {self._timeout}s") from None
        except Exception as e:
            raise CacheUnavailable(f"redis {self.settings.addr}: {type(e).__name__}: {e}") from None

    async def get(self, digest):
        fields = await self._call("hgetall", _global_key(digest))
        if not fields:
            return None
        try:
            return Descriptor(Digest.parse(fields["digest"]), int(fields["size"]),
                              fields.get("mediatype") or "application/octet-stream")
        except (KeyError, ValueError, Exception):
            return None  # written by something else; storage decides

    async def put(self, descriptor: Descriptor):
        await self._call("hmset", _global_key(descriptor.digest),
                         {"digest": str(descriptor.digest), "size": str(descriptor.size),
                          "mediatype": descriptor.media_type})

    async def get_linked(self, repository, digest):
        if not await self._call("sismember", _repository_set(repository), str(digest)):
            return None
        return await self.get(digest)

    async def put_linked(self, repository, descriptor: Descriptor):
        await self.put(descriptor)
        await self._call("hmset", _repository_key(repository, descriptor.digest),
                         {"digest": str(descriptor.digest), "mediatype": descriptor.media_type})
        await self._call("sadd", _repository_set(repository), str(descriptor.digest))

    async def invalidate(self, digest):
        await self._call("delete", _global_key(digest))

    async def invalidate_repo_link(self, repository, digest):
        await self._call("srem", _repository_set(repository), str(digest))
        await self._call("delete", _repository_key(repository, digest))

    async def ping(self):
        await self._call("ping")

    async def wait_connected(self, timeout: float) -> None:
        """For one-shot tools (garbage-collect): wait for the first connection, or raise CacheUnavailable."""
        waited = 0.0
        step = 0.05
        from twisted.internet import task
        while not self.available:
            if waited >= timeout:
                raise CacheUnavailable(f"redis {self.settings.addr}: cannot connect")
            await task.deferLater(self._reactor, step, lambda: None)
            waited += step
        await self.ping()

    def close(self):
        disconnect = getattr(self._redis, "disconnect", None)
        return disconnect() if disconnect is not None else None
