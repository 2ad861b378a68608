# -*- test-case-name: tests.storage.test_filesystem -*-
"""
Filesystem storage: the reference registry's tree under one root directory.

Blocking calls run through an injected run_in_thread; only creating a spool
and writing request bytes into it happen on the reactor thread, where the
socket cannot outrun the disk.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import os
import re
import shutil
import socket
import stat
import time

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPullProducer
from twisted.python import failure
from zope.interface import implementer

from regd.oci.hashstate import running_hasher
from regd.randomids import random_ids
from regd.storage import paths
from regd.storage.interfaces import BodyPosition, FileInfo, IBlobReader, IBodySpool, IStorageDriver, InvalidPath, PathNotFound

COPY_CHUNK = 1024 * 1024
# Start the disk writing a spool's bytes every this many bytes, while the
# body still arrives, so the fsync before a blob is published waits only for
# the tail instead of the whole layer.
WRITEBACK_EVERY = 32 * 1024 * 1024


def _load_sync_file_range():
    """libc's sync_file_range(2) (Linux), or None; Python's os module lacks it."""
    try:
        import ctypes
        import ctypes.util
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing that range to disk now, without waiting (durability still needs fsync)."""
    if _sync_file_range is not None and length > 0:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _inline(function, *args):
    return defer.execute(function, *args)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Temp names this driver writes: <path>.<32 hex>.tmp (put_content) and the root write check.
_TEMP = re.compile(r"^(?:.+\.|\.regd-write-check\.)[0-9a-f]{32}\.tmp$")
# Spool names: <owner>.<pid>.<32 hex>, so a process can tell its dead predecessors' spools from live ones.
_SPOOL = re.compile(r"^(?P<owner>[A-Za-z0-9-]+)\.(?P<pid>[0-9]+)\.[0-9a-f]{32}$")


def _process_owner() -> str:
    """
    This host and PID namespace: a PID can only be tested for life by a
    process that shares both (two containers may reuse each other's PIDs).
    """
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = "0"
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64] or "host"
    return f"{host}-{namespace}"


_OWNER = _process_owner()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _temp_name(full: str) -> str:
    """A unique temp name beside C{full} (see _TEMP), from the pooled random source: no system call."""
    return f"{full}.{random_ids.hex()}.tmp"


def _make_directory(directory: str) -> None:
    """
    os.makedirs(directory, exist_ok=True) without its existence probes: one
    mkdir when only the last level is missing (a new blob's or link's
    directory), parents made only when that mkdir says they are missing. A
    non-directory in the way is left to the caller's next step to report.
    """
    try:
        os.mkdir(directory)
    except FileExistsError:
        pass
    except FileNotFoundError:
        parent = os.path.dirname(directory)
        if parent == directory:
            raise
        _make_directory(parent)
        try:
            os.mkdir(directory)
        except FileExistsError:
            pass


def _in_directory(directory: str, place):
    """
    Make C{directory}, then run C{place}; again if the directory vanished in
    between (a garbage collection removes a blob's directory once it is
    empty, see FilesystemDriver.remove_empty_directory).
    """
    for attempt in range(3):
        _make_directory(directory)
        try:
            return place()
        except FileNotFoundError:
            if attempt == 2 or os.path.isdir(directory):
                raise
        except NotADirectoryError:
            _raise_if_not_directory(directory)
            raise


def _raise_if_not_directory(directory: str) -> None:
    """FileExistsError, as os.makedirs raised it, when a file stands where a directory should be."""
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise FileExistsError(errno.EEXIST, "a file stands where a directory should be", directory) from None


@implementer(IBodySpool)
class FileSpool(BodyPosition):
    """
    A body spool in <root>/regd/spool, on the storage filesystem so that a
    rename can place it. Appends go straight to the descriptor (no Python
    buffering: twisted.web already hands us socket-sized chunks) and are
    hashed as they pass. Deleted on close unless a driver adopted it.
    """

    def __init__(self, directory: str):
        _make_directory(directory)
        self.path = os.path.join(directory, f"{_OWNER}.{os.getpid()}.{random_ids.hex()}")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)
        self._position = 0
        self.hasher = running_hasher()
        self.size = 0
        self.adopted = False
        self.closed = False
        self._flushed = 0  # bytes whose writeback was started

    def write(self, data: bytes) -> None:
        _write_all(self._fd, data)
        if self.hasher is not None:
            self.hasher.update(data)
        self.size += len(data)
        if self.size - self._flushed >= WRITEBACK_EVERY:
            start_writeback(self._fd, self._flushed, self.size - self._flushed)
            self._flushed = self.size

    def prefer_fast_hash(self) -> None:
        """
        Optional spool capability: hash with hashlib (OpenSSL, and it lets
        other threads run meanwhile) instead of the resumable sha256, whose
        state can be saved but which is slower and holds the interpreter
        lock. For bodies that end an upload (PUT, monolithic POST): their
        hash state is never saved.
        """
        if self.size == 0:
            import hashlib
            self.hasher = hashlib.sha256()

    def skip_hash(self) -> None:
        """
        Optional spool capability: do not hash (hasher becomes None). For a
        chunk appended to an upload that already has bytes: the upload's
        running hash takes the chunk's bytes when it is appended, so hashing
        it here too would hash every byte twice.
        """
        if self.size == 0:
            self.hasher = None

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = max(self.size - self._position, 0)
        data = os.pread(self._fd, size, self._position)
        self._position += len(data)
        return data

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        os.close(self._fd)
        if not self.adopted:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


@implementer(IBodySpool)
class FileAppender(BodyPosition):
    """
    A request body written in place: straight onto the end of an existing
    file (an upload's data), at the size the file had when it was opened,
    so a later chunk of an upload is written once instead of spooled and
    copied. Bytes are hashed as they pass when a hasher is set.

    It holds an exclusive flock on the file while open, so two writers (of
    this or another process) never write it at once, and nothing moves it
    meanwhile (see FilesystemDriver._move). Until keep(), what it wrote is
    provisional: close() cuts the file back to its old size, so an aborted,
    short or refused body leaves the file exactly as it was.
    """

    def __init__(self, fd: int, path: str, offset: int, run_in_thread):
        self._fd = fd
        self.path = path
        self.offset = offset
        self.size = 0
        self.hasher = None
        self.kept = False
        self.closed = False
        self._run = run_in_thread
        self._position = 0
        self._flushed = 0  # bytes whose writeback was started
        self._when_closed = []

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        at = self.offset + self.size
        while view:
            written = os.pwrite(self._fd, view, at)
            view = view[written:]
            at += written
        if self.hasher is not None:
            self.hasher.update(data)
        self.size += len(data)
        if self.size - self._flushed >= WRITEBACK_EVERY:
            start_writeback(self._fd, self.offset + self._flushed, self.size - self._flushed)
            self._flushed = self.size

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = max(self.size - self._position, 0)
        size = max(min(size, self.size - self._position), 0)
        data = os.pread(self._fd, size, self.offset + self._position)
        self._position += len(data)
        return data

    def hash_into(self, hasher):
        """Deferred: feed the bytes written to C{hasher}, read back in a thread (when none was set)."""
        def read_back():
            done = 0
            while done < self.size:
                chunk = os.pread(self._fd, min(COPY_CHUNK, self.size - done), self.offset + done)
                if not chunk:
                    raise OSError(f"file ended after {done} of {self.size} bytes written")
                hasher.update(chunk)
                done += len(chunk)
            return hasher
        return self._run(read_back)

    def when_closed(self, callback) -> None:
        """Call C{callback}() once, when the appender is closed (kept or not)."""
        self._when_closed.append(callback)

    def keep(self) -> None:
        """What was written is part of the file now; close() will no longer cut it."""
        if self.size - self._flushed > 0:
            start_writeback(self._fd, self.offset + self._flushed, self.size - self._flushed)
            self._flushed = self.size
        self.kept = True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if not self.kept and self.size > 0 and self._still_at_path():
                os.ftruncate(self._fd, self.offset)
        finally:
            os.close(self._fd)  # releases the flock
            callbacks, self._when_closed = self._when_closed, []
            for callback in callbacks:
                callback()

    def _still_at_path(self) -> bool:
        """Whether the path still names this file (an upload cancelled meanwhile has none)."""
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            return False


def _lock_or_busy(fd: int, path: str, mode: int = fcntl.LOCK_EX) -> None:
    """Take the file's flock without waiting; EBUSY when a FileAppender is writing it."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OSError(errno.EBUSY, "another request is writing this upload", path) from None


@implementer(IPullProducer)
class _FileProducer:
    chunk_size = 1024 * 1024

    def __init__(self, reader, consumer, offset, length):
        self._reader = reader
        self._consumer = consumer
        self._remaining = length
        self._file = reader._file
        self._file.seek(offset)
        self.done = defer.Deferred()

    def resumeProducing(self):
        if self._remaining <= 0:
            self._finish()
            return
        data = self._file.read(min(self.chunk_size, self._remaining))
        if not data:
            self._consumer.unregisterProducer()
            self._reader.close()
            self.done.errback(IOError("blob shorter than expected"))
            return
        self._remaining -= len(data)
        self._consumer.write(data)
        if self._remaining <= 0:
            self._finish()

    def _finish(self):
        if self.done.called:
            return
        self._consumer.unregisterProducer()
        self._reader.close()
        self.done.callback(None)

    def stopProducing(self):
        self._reader.close()
        if not self.done.called:
            self.done.errback(ConnectionDone("consumer stopped the producer"))


@implementer(IBlobReader)
class FileReader:
    def __init__(self, file, size: int, run_in_thread):
        self._file = file
        self.size = size
        self._run = run_in_thread

    def stream_to(self, consumer, offset: int = 0, length: int | None = None):
        if length is None:
            length = self.size - offset
        producer = _FileProducer(self, consumer, offset, length)
        consumer.registerProducer(producer, False)
        return producer.done

    def sendfile_fd(self) -> int | None:
        """
        Optional IBlobReader capability: the open descriptor, for zero-copy
        sending (os.sendfile). It stays valid, on the same inode, until
        close(), whatever happens to the path meanwhile.
        """
        return None if self._file.closed else self._file.fileno()

    def read_all(self):
        def read():
            self._file.seek(0)
            try:
                return self._file.read()
            finally:
                self._file.close()
        return self._run(read)

    def close(self) -> None:
        self._file.close()


def _append_file(source: int, size: int, target: int, at: int, hasher) -> None:
    """
    Copy C{size} bytes of C{source} to C{target} at offset C{at}, in the
    kernel (copy_file_range; no bytes through Python) unless a hasher must
    see them, in which case each piece is read once, hashed and written.
    """
    done = 0
    if hasher is None and hasattr(os, "copy_file_range"):
        try:
            while done < size:
                copied = os.copy_file_range(source, target, size - done, done, at + done)
                if copied == 0:
                    break
                done += copied
        except OSError:
            pass  # e.g. EXDEV on old kernels: fall back to read/write from where it stopped
    while done < size:
        chunk = os.pread(source, min(COPY_CHUNK, size - done), done)
        if not chunk:
            raise OSError(f"spool ended after {done} of {size} bytes")
        view = memoryview(chunk)
        while view:
            view = view[os.pwrite(target, view, at + done + len(chunk) - len(view)):]
        if hasher is not None:
            hasher.update(chunk)
        done += len(chunk)
    start_writeback(target, at, size)


def check_root(root: str) -> None:
    """Raise OSError unless root is (or can be made) a directory regd can write in."""
    os.makedirs(root, exist_ok=True)
    probe = os.path.join(root, f".regd-write-check.{random_ids.hex()}.tmp")
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.unlink(probe)


@implementer(IStorageDriver)
class FilesystemDriver:
    """
    Writes, fsyncs, copies, hashing and tree walks go through
    C{run_in_thread}. Small reads (a link, a manifest, a stat, opening a
    blob) are done inline on the caller's thread when C{inline_reads} is
    set: from the page cache they take microseconds, and a thread hop per
    request halves the request rate. Turn it off on network filesystems.
    """

    def __init__(self, root: str, run_in_thread, inline_reads: bool = True):
        self.root = os.path.abspath(root)
        self._run = run_in_thread
        self._read = _inline if inline_reads else run_in_thread
        self._spool_dir = os.path.join(self.root, *paths.SPOOL.split("/"))

    def in_one_job(self, steps):
        """
        Deferred: the result of C{await steps(driver)}, run as one job of the
        thread runner, where C{driver} is this driver doing every call at
        once on that thread (optional capability). A small push's note,
        look-ups, writes and note removal then cost one thread hop, not one
        each, and no look-up blocks the reactor on a directory another write
        holds. C{steps} must wait on nothing but C{driver}.
        """
        return self._deferred(self._in_one_job, steps)

    def _in_one_job(self, steps):
        inline = copy.copy(self)
        inline._run = inline._read = _inline
        outcome = []
        defer.ensureDeferred(steps(inline)).addBoth(outcome.append)
        if not outcome:
            raise RuntimeError("storage steps waited on something other than the storage")
        if isinstance(outcome[0], failure.Failure):
            outcome[0].raiseException()
        return outcome[0]

    def _full(self, path: str) -> str:
        if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "\0" in path:
            raise InvalidPath(path)
        parts = path.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise InvalidPath(path)
        return os.path.join(self.root, *parts)

    # small objects

    def get_content(self, path: str):
        return self._deferred(self._get_content, path, runner=self._read)

    def _deferred(self, function, *args, runner=None):
        """Run a blocking step through a runner (the thread runner by default); always a Deferred."""
        try:
            return (runner or self._run)(function, *args)
        except BaseException:
            return defer.fail()

    def _get_content(self, path):
        full = self._full(path)
        try:
            with open(full, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise PathNotFound(path) from None

    def put_content(self, path: str, data: bytes):
        return self._deferred(self._put_content, path, data)

    def _put_content(self, path, data):
        full = self._full(path)
        directory = os.path.dirname(full)
        temp = _temp_name(full)

        def write():
            with open(temp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, full)
        try:
            _in_directory(directory, write)
        except BaseException:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(directory)

    def put_contents(self, items):
        """
        Deferred[None]: write several small objects in one thread hop
        (optional capability), each atomically and durably as put_content
        writes one, made visible in the order given. The files are all
        written and flushed before the first rename, and each directory is
        flushed once after the last: a blob and its link cost the journal
        commits of one object, not two (a single-request push of a small
        blob). Fires only once everything is on disk.
        """
        return self._deferred(self._put_contents, list(items))

    def _put_contents(self, items):
        written = []  # (temp, full, descriptor), in order
        try:
            for path, data in items:
                full = self._full(path)
                temp = _temp_name(full)
                fd = _in_directory(os.path.dirname(full),
                                   lambda temp=temp: os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                written.append((temp, full, fd))
                _write_all(fd, data)
            for _, _, fd in written:
                os.fsync(fd)
        except BaseException:
            for temp, _, fd in written:
                os.close(fd)
                try:
                    os.unlink(temp)
                except FileNotFoundError:
                    pass
            raise
        for _, _, fd in written:
            os.close(fd)
        # A temp file keeps its directory from being removed as empty: the renames need no retry.
        for index, (temp, full, _) in enumerate(written):
            try:
                os.replace(temp, full)
            except BaseException:
                for later, _, _ in written[index:]:
                    try:
                        os.unlink(later)
                    except FileNotFoundError:
                        pass
                raise
        for directory in dict.fromkeys(os.path.dirname(full) for _, full, _ in written):
            _fsync_dir(directory)

    def remove_empty_directory(self, path: str):
        """
        Deferred[bool]: remove a directory if, and only if, it is empty
        (optional capability; atomic, so a concurrent writer either finds it
        gone and makes it again, or keeps it). False if it held anything.
        """
        return self._deferred(self._remove_empty_directory, path)

    def _remove_empty_directory(self, path):
        try:
            os.rmdir(self._full(path))
        except OSError:
            return False
        return True

    def put_transient(self, path: str, data: bytes):
        """
        Deferred[None]: write a small object atomically but not durably
        (optional capability): for notes that matter only while the process
        that wrote them lives, such as pending-reference notes, where two
        fsyncs would double the cost of a push.
        """
        return self._deferred(self._put_transient, path, data)

    def _put_transient(self, path, data):
        # Plain descriptor calls, and the directory made only when missing: every push writes
        # one of these, and each system call is a hand-over of the interpreter lock.
        full = self._full(path)
        temp = _temp_name(full)
        create = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            fd = os.open(temp, create, 0o666)
        except FileNotFoundError:
            fd = _in_directory(os.path.dirname(full), lambda: os.open(temp, create, 0o666))
        try:
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            os.replace(temp, full)
        except BaseException:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            raise

    def stat(self, path: str):
        return self._deferred(self._stat, path, runner=self._read)

    def _stat(self, path):
        full = self._full(path)
        try:
            st = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(path) from None
        return FileInfo(path, st.st_size, st.st_mtime, stat.S_ISDIR(st.st_mode))

    def list(self, path: str):
        return self._deferred(self._list, path, runner=self._read)

    def _list(self, path):
        full = self._full(path)
        try:
            return sorted(os.listdir(full))
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(path) from None

    def delete(self, path: str):
        return self._deferred(self._delete, path)

    def _delete(self, path):
        full = self._full(path)
        try:
            try:
                os.unlink(full)  # a file (most deletes: a pending note, a link): no stat first
            except (IsADirectoryError, PermissionError):
                if not os.path.isdir(full) or os.path.islink(full):
                    raise
                shutil.rmtree(full)
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(path) from None

    def move(self, source: str, destination: str):
        return self._deferred(self._move, source, destination)

    def _move(self, source, destination):
        src, dst = self._full(source), self._full(destination)
        try:
            fd = os.open(src, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(source) from None
        try:
            # Never while a FileAppender (this or another process) still writes the file;
            # shared, so movers racing each other (GC, a push taking a blob back) go on as before.
            _lock_or_busy(fd, source, fcntl.LOCK_SH)
            os.fsync(fd)
            directory = os.path.dirname(dst)
            try:
                _in_directory(directory, lambda: os.replace(src, dst))
            except FileNotFoundError:
                if os.path.lexists(src):
                    raise
                raise PathNotFound(source) from None  # moved or removed meanwhile by another process
        finally:
            os.close(fd)
        _fsync_dir(directory)

    def touch(self, path: str):
        return self._deferred(self._touch, path)

    def _touch(self, path):
        try:
            os.utime(self._full(path))
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(path) from None

    def truncate(self, path: str, size: int):
        return self._deferred(self._truncate, path, size)

    def _truncate(self, path, size):
        full = self._full(path)
        try:
            os.truncate(full, size)
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(path) from None

    # streams

    def reader(self, path: str):
        return self._deferred(self._open, path, runner=self._read)

    def _open(self, path):
        full = self._full(path)
        try:
            f = open(full, "rb", buffering=0)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise PathNotFound(path) from None
        return FileReader(f, os.fstat(f.fileno()).st_size, self._run)

    def new_spool(self):
        return FileSpool(self._spool_dir)

    def open_append(self, path: str):
        """
        Optional capability: a FileAppender onto the end of the file at
        C{path}, opened synchronously (on the reactor thread, as a spool is,
        when a request's head arrives), or None when the file is absent or
        empty (a first body is spooled and renamed into place instead) or
        another appender holds it.
        """
        full = self._full(path)
        try:
            fd = os.open(full, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            size = os.fstat(fd).st_size
            # Still the file at that path once locked (not moved into the blob store meanwhile)?
            if size == 0 or os.stat(full).st_ino != os.fstat(fd).st_ino:
                os.close(fd)
                return None
        except OSError:
            os.close(fd)
            return None
        return FileAppender(fd, full, size, self._run)

    def store_spool(self, spool, path: str, hasher=None):
        return self._deferred(self._store_spool, spool, path, hasher)

    def _store_spool(self, spool, path, hasher):
        full = self._full(path)
        try:
            existing = os.stat(full).st_size
        except FileNotFoundError:
            existing = 0
        try:
            # No fsync here: upload data is not visible to readers, and the
            # move that publishes it as a blob flushes it first (a torn
            # upload after a power cut fails its digest check, never serves).
            if existing == 0:
                _make_directory(os.path.dirname(full))
                os.replace(spool.path, full)
                spool.adopted = True
                return spool.size
            with open(full, "r+b", buffering=0) as target:
                _lock_or_busy(target.fileno(), path)
                try:
                    _append_file(spool.fileno(), spool.size, target.fileno(), existing, hasher)
                except BaseException:
                    target.truncate(existing)
                    raise
                return existing + spool.size
        finally:
            spool.close()

    def publish_spool(self, spool, path: str):
        return self._deferred(self._publish_spool, spool, path)

    def _publish_spool(self, spool, path):
        full = self._full(path)
        try:
            os.fsync(spool.fileno())
            directory = os.path.dirname(full)
            _in_directory(directory, lambda: os.replace(spool.path, full))
            spool.adopted = True
            _fsync_dir(directory)
            return spool.size
        finally:
            spool.close()

    def digest_file(self, path: str, algorithm: str):
        return self._deferred(self._digest_file, path, algorithm)

    def _digest_file(self, path, algorithm):
        full = self._full(path)
        hasher = running_hasher(algorithm)
        try:
            with open(full, "rb") as f:
                while True:
                    chunk = f.read(COPY_CHUNK)
                    if not chunk:
                        break
                    hasher.update(chunk)
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(path) from None
        return hasher

    def remove_leftovers(self, temp_age: float, spool_age: float):
        """
        Deferred[list[str]]: remove what processes killed mid-write left
        behind (optional driver capability): temp files of atomic writes older
        than C{temp_age} seconds, and body spools whose process is dead (same
        host and PID namespace) or, for spools of other hosts, untouched for
        C{spool_age} seconds (a live upload writes to its spool all along).
        Several instances may share the root, so nothing younger is touched.
        """
        return self._deferred(self._remove_leftovers, temp_age, spool_age)

    def _remove_leftovers(self, temp_age, spool_age):
        now = time.time()
        removed = []

        def remove(full, older_than):
            try:
                if now - os.lstat(full).st_mtime < older_than:
                    return
                os.unlink(full)
            except (FileNotFoundError, NotADirectoryError):
                return
            removed.append(os.path.relpath(full, self.root).replace(os.sep, "/"))

        spool_dir = self._spool_dir
        for directory, subdirs, files in os.walk(self.root):
            if directory == spool_dir:
                subdirs[:] = []
                for name in files:
                    match = _SPOOL.match(name)
                    mine = match is not None and match["owner"] == _OWNER
                    if mine and int(match["pid"]) == os.getpid():
                        continue
                    if mine and not _alive(int(match["pid"])):
                        remove(os.path.join(directory, name), 0)
                    else:
                        remove(os.path.join(directory, name), spool_age)
                continue
            for name in files:
                if _TEMP.match(name):
                    remove(os.path.join(directory, name), temp_age)
        return sorted(removed)

    def walk_repositories(self, root: str, marker: str = "_manifests"):
        return self._deferred(self._walk, root, marker)

    def _walk(self, root, marker):
        base = self._full(root)
        found = []
        for directory, subdirs, _files in os.walk(base):
            if marker in subdirs:
                found.append(os.path.relpath(directory, base).replace(os.sep, "/"))
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("_"))
        return sorted(found)
