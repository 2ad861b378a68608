"""The blob-descriptor cache storage.cache.blobdescriptor asks for, over a given storage driver."""

from __future__ import annotations

from regd.cache.descriptors import BlobDescriptorCache, StorageGeneration


def build_blob_cache(config, driver, reactor, *, strict: bool = False) -> BlobDescriptorCache:
    """
    C{config}: the whole L{regd.config.Config}. Without a configured cache the
    result caches nothing but still marks deletes in storage, so the caches
    of other instances that do have one learn of them.
    """
    kind = config.storage.cache.blobdescriptor
    backend = None
    if kind == "inmemory":
        from regd.cache.memory import InMemoryBackend
        backend = InMemoryBackend(config.storage.cache.blobdescriptorsize)
    elif kind == "redis":
        from regd.cache.redis import RedisBackend
        backend = RedisBackend(config.redis, reactor)
    return BlobDescriptorCache(backend, StorageGeneration(driver), strict=strict)
