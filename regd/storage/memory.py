# -*- test-case-name: tests.storage.test_memory -*-
"""
An in-memory driver: the same contract as the filesystem driver, for tests
and for `storage: inmemory` (data is gone when the process stops).
"""

from __future__ import annotations

import time
from io import BytesIO

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer

from regd.oci.hashstate import running_hasher
from regd.storage.interfaces import (FileInfo, IBlobReader, IBodySpool, IStorageDriver, PathNotFound,
                                     checked_path)


@implementer(IBodySpool)
class MemorySpool:
    def __init__(self):
        self._buffer = BytesIO()
        self.hasher = running_hasher()
        self.size = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self._buffer.seek(0, 2)
        self._buffer.write(data)
        self.hasher.update(data)
        self.size += len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._buffer.seek(offset, whence)

    def tell(self) -> int:
        return self._buffer.tell()

    def read(self, size: int = -1) -> bytes:
        return self._buffer.read(size)

    def getvalue(self) -> bytes:
        return self._buffer.getvalue()

    def close(self) -> None:
        self.closed = True


@implementer(IPullProducer)
class _BytesProducer:
    chunk_size = 256 * 1024

    def __init__(self, data: memoryview, consumer):
        self._data = data
        self._consumer = consumer
        self.done = defer.Deferred()

    def resumeProducing(self):
        chunk, self._data = self._data[:self.chunk_size], self._data[self.chunk_size:]
        if chunk:
            self._consumer.write(bytes(chunk))
        if not self._data and not self.done.called:
            self._consumer.unregisterProducer()
            self.done.callback(None)

    def stopProducing(self):
        if not self.done.called:
            self.done.errback(ConnectionDone("consumer stopped the producer"))


@implementer(IBlobReader)
class MemoryReader:
    def __init__(self, data: bytes):
        self._data = data
        self.size = len(data)

    def stream_to(self, consumer, offset: int = 0, length: int | None = None):
        end = self.size if length is None else offset + length
        producer = _BytesProducer(memoryview(self._data)[offset:end], consumer)
        consumer.registerProducer(producer, False)
        return producer.done

    def read_all(self):
        return defer.succeed(self._data)

    def close(self) -> None:
        pass


@implementer(IStorageDriver)
class InMemoryDriver:
    def __init__(self, clock=time):
        self._files: dict[str, bytes] = {}
        self._mtimes: dict[str, float] = {}
        self._clock = clock

    def _now(self) -> float:
        return self._clock.time() if hasattr(self._clock, "time") else self._clock.seconds()

    def _is_dir(self, path: str) -> bool:
        prefix = path + "/"
        return any(p.startswith(prefix) for p in self._files)

    def _set(self, path: str, data: bytes) -> None:
        self._files[path] = data
        self._mtimes[path] = self._now()

    @staticmethod
    def _sync(function, *args):
        try:
            return defer.succeed(function(*args))
        except BaseException:
            return defer.fail()

    def get_content(self, path):
        def get():
            try:
                return self._files[checked_path(path)]
            except KeyError:
                raise PathNotFound(path) from None
        return self._sync(get)

    def put_content(self, path, data):
        return self._sync(lambda: self._set(checked_path(path), bytes(data)))

    def stat(self, path):
        def stat():
            checked_path(path)
            if path in self._files:
                return FileInfo(path, len(self._files[path]), self._mtimes[path], False)
            if self._is_dir(path):
                return FileInfo(path, 0, 0.0, True)
            raise PathNotFound(path)
        return self._sync(stat)

    def list(self, path):
        def children():
            prefix = checked_path(path) + "/"
            names = {p[len(prefix):].split("/", 1)[0] for p in self._files if p.startswith(prefix)}
            if not names:
                raise PathNotFound(path)
            return sorted(names)
        return self._sync(children)

    def delete(self, path):
        def delete():
            checked_path(path)
            doomed = [p for p in self._files if p == path or p.startswith(path + "/")]
            if not doomed:
                raise PathNotFound(path)
            for p in doomed:
                del self._files[p]
                self._mtimes.pop(p, None)
        return self._sync(delete)

    def move(self, source, destination):
        def move():
            checked_path(destination)
            try:
                data = self._files.pop(checked_path(source))
            except KeyError:
                raise PathNotFound(source) from None
            self._mtimes.pop(source, None)
            self._set(destination, data)
        return self._sync(move)

    def touch(self, path):
        def touch():
            if checked_path(path) not in self._files:
                raise PathNotFound(path)
            self._mtimes[path] = self._now()
        return self._sync(touch)

    def truncate(self, path, size):
        def truncate():
            try:
                self._set(path, self._files[checked_path(path)][:size])
            except KeyError:
                raise PathNotFound(path) from None
        return self._sync(truncate)

    def reader(self, path):
        def open_():
            try:
                return MemoryReader(self._files[checked_path(path)])
            except KeyError:
                raise PathNotFound(path) from None
        return self._sync(open_)

    def new_spool(self):
        return MemorySpool()

    def store_spool(self, spool, path, hasher=None):
        def store():
            checked_path(path)
            data = spool.getvalue()
            existing = self._files.get(path, b"")
            if existing and hasher is not None:
                hasher.update(data)
            self._set(path, existing + data)
            spool.close()
            return len(existing) + len(data)
        return self._sync(store)

    def publish_spool(self, spool, path):
        def publish():
            self._set(checked_path(path), spool.getvalue())
            spool.close()
            return spool.size
        return self._sync(publish)

    def digest_file(self, path, algorithm):
        def digest():
            try:
                hasher = running_hasher(algorithm)
                hasher.update(self._files[checked_path(path)])
                return hasher
            except KeyError:
                raise PathNotFound(path) from None
        return self._sync(digest)

    def walk_repositories(self, root, marker="_manifests"):
        def walk():
            prefix = checked_path(root) + "/"
            found = set()
            for p in self._files:
                if not p.startswith(prefix):
                    continue
                parts = p[len(prefix):].split("/")
                for i, part in enumerate(parts):
                    if part == marker:
                        found.add("/".join(parts[:i]))
                        break
                    if part.startswith("_"):
                        break
            return sorted(found)
        return self._sync(walk)
