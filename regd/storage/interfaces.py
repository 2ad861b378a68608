# -*- test-case-name: tests.storage.test_contract -*-
"""
The one seam between the registry service and where bytes live.

Every method that may touch a disk or a network returns a Deferred, so a
driver is free to run it in a thread (filesystem) or over HTTP (S3). Paths
are the slash-separated, root-relative strings that L{regd.storage.paths}
builds; a driver never sees anything else and must refuse anything that
could escape its root.

Uploaded bodies arrive through an L{IBodySpool}: the HTTP layer writes the
request body into it as it streams off the socket (hashing as it goes), and
the service hands the finished spool to L{IStorageDriver.store_spool}, which
places it with a rename when it can, so a layer is written once.
"""

from __future__ import annotations

import attrs
from zope.interface import Attribute, Interface


class StorageError(Exception):
    """A driver failure that is not the client's fault."""


class StorageUnavailable(StorageError, OSError):
    """
    The storage cannot be reached or refuses us (an object store that is
    down, throttling beyond the retries, wrong credentials): clients get a
    503 with the spec's JSON, and may retry.
    """


class PathNotFound(StorageError):
    """Nothing is stored at that path."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = path


class InvalidPath(StorageError):
    """A path that could escape the driver's root or is otherwise malformed."""


def checked_path(path: str) -> str:
    """A driver path as drivers take it: relative, '/'-separated, no empty, '.' or '..' parts."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "\0" in path:
        raise InvalidPath(path)
    if any(p in ("", ".", "..") for p in path.split("/")):
        raise InvalidPath(path)
    return path


@attrs.frozen
class FileInfo:
    path: str
    size: int
    modified: float  # seconds since the epoch
    is_dir: bool


class BodyPosition:
    """
    The file position twisted.web keeps on C{request.content} (seek, tell)
    for a body sink that is written only at its end: C{size} bytes so far.
    """

    size = 0
    _position = 0

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self._position = offset
        elif whence == 1:
            self._position += offset
        else:
            self._position = self.size + offset
        return self._position

    def tell(self) -> int:
        return self._position


class IBodySpool(Interface):
    """
    A request body on its way to storage: a write-only file for twisted.web
    that hashes every byte written (sha256) and disappears on close unless a
    driver has taken it over.

    It honours the file methods twisted.web calls on C{request.content}:
    write, seek, tell, read, close.
    """

    size = Attribute("Number of bytes written so far.")
    hasher = Attribute("hashlib sha256 object over every byte written.")

    def write(data: bytes) -> None:
        """Append bytes (and hash them)."""

    def seek(offset: int, whence: int = 0) -> int:
        """File seek."""

    def tell() -> int:
        """File tell."""

    def read(size: int = -1) -> bytes:
        """File read; only used by twisted.web for form bodies, which we refuse."""

    def close() -> None:
        """Release the spool; its bytes are discarded unless a driver adopted it."""

    # Optional, detected with getattr:
    #   expect_length(length): the body's length (its Content-Length), told
    #       before its first byte when the request declares one; a spool
    #       that sends bytes on (S3) can then declare each part's length up
    #       front and stream it instead of holding it.
    #   set_producer(producer): a spool that sends bytes on over the network
    #       (S3) pauses the producer (the request's transport) while bytes
    #       would pile up in it, and resumes it once they would not, so the
    #       client cannot outrun the object store.


@attrs.frozen
class SpoolAim:
    """
    Where a body that ends an upload may be sent straight away: C{path},
    the blob's own object, if the awaitable C{confirm()} (asked once, before
    the first byte leaves) says the body will be the upload's whole content.
    A driver that can (S3, optional C{new_aimed_spool(aim)}) sends the bytes
    there without making them visible: only L{IStorageDriver.publish_spool}
    to that same path, after the digest is checked, does.
    """
    path: str
    confirm: object  # () -> awaitable bool


class IBlobReader(Interface):
    """An open stored object, ready to stream to a consumer."""

    size = Attribute("Total size of the object in bytes.")

    def stream_to(consumer, offset: int = 0, length: int | None = None):
        """
        Write C{length} bytes from C{offset} to C{consumer} (an IConsumer such
        as a twisted.web request), registering a producer so the consumer's
        backpressure is honoured. Returns a Deferred that fires with None
        once every byte was written, or fails if the consumer stopped the
        producer (client went away). The reader is closed either way.
        """

    def read_all():
        """Deferred[bytes]: the whole object; only for small objects."""

    def close() -> None:
        """Release the underlying handle."""


class IStorageDriver(Interface):
    """Asynchronous, streaming storage of objects by path."""

    def get_content(path: str):
        """Deferred[bytes]: a small object's bytes; fails with PathNotFound."""

    def put_content(path: str, data: bytes):
        """Deferred[None]: write a small object atomically (readers see old or new)."""

    def stat(path: str):
        """Deferred[FileInfo]: fails with PathNotFound."""

    def list(path: str):
        """Deferred[list[str]]: names of the direct children of a directory, sorted; PathNotFound if absent."""

    def delete(path: str):
        """Deferred[None]: remove an object or a whole directory tree; PathNotFound if absent."""

    def move(source: str, destination: str):
        """
        Deferred[None]: atomically and durably replace destination with
        source (data flushed before it becomes visible under the new name).
        """

    def reader(path: str):
        """Deferred[IBlobReader]: open an object for streaming; PathNotFound if absent."""

    def new_spool():
        """
        IBodySpool: synchronously create an empty spool. Called from the
        reactor thread as a request's headers arrive, so it must be cheap.
        """

    def store_spool(spool, path: str, hasher=None):
        """
        Deferred[int]: put a finished spool's bytes at the end of the object
        at C{path} (creating it if absent) and fire with the object's new
        size. If the object is absent or empty the spool is adopted whole
        (a rename on a filesystem); otherwise its bytes are appended, and
        also fed to C{hasher} if one is given. The spool is closed after.
        """

    def publish_spool(spool, path: str):
        """
        Deferred[int]: durably and atomically replace the object at C{path}
        with a finished spool's bytes (readers see the old object or the
        whole new one) and fire with its size. The spool is closed after.
        """

    def digest_file(path: str, algorithm: str):
        """
        Deferred[hashlib object]: hash a stored object from its start, off the
        reactor thread. Used when an upload is resumed after a restart and its
        running hash is gone.
        """

    def walk_repositories(root: str, marker: str = "_manifests"):
        """
        Deferred[list[str]]: every repository name under C{root} (the
        repositories directory), sorted; a repository is a directory holding
        C{marker} (C{_manifests}, or C{_uploads} to find uploads in
        repositories that have no manifest yet); directories starting with
        '_' are not descended.
        """

    def touch(path: str):
        """
        Deferred[None]: mark an object as just used (its modified time becomes
        now), so garbage collection's grace period protects it; PathNotFound if absent.
        """

    def truncate(path: str, size: int):
        """Deferred[None]: cut an object back to C{size} bytes (failed append)."""

    # Optional capabilities, detected with getattr:
    #   redirect_url(path, method="GET") -> Deferred[str | None]: a URL the
    #       client may fetch the object from directly (S3: presigned).
    #   check() -> None: raise StorageUnavailable with one line when the
    #       storage cannot be used at all (called once at startup, blocking).
    #   in_one_job(steps) -> Deferred: run the coroutine function
    #       C{steps(driver)} as one blocking job, C{driver} being this driver
    #       doing each of its calls at once on that job's thread: a sequence of
    #       small storage calls costs one thread hop instead of one each.
