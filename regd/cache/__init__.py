"""
Caches in front of storage: the blob-descriptor cache (storage.cache.blobdescriptor),
in this process's memory or in a Redis shared by every instance.
"""
