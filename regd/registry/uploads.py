# -*- test-case-name: tests.registry.test_uploads -*-
"""
Upload sessions: bytes arrive in one or more bodies, are appended to the
session's data file while a running hash follows them, and become a blob only
once the digest the client names matches what was received.

The stored data file is the truth about an upload, so any process or
instance sharing the storage can take its next chunk or its final PUT. The
running hash a process keeps is a cache: it is used only while its offset
matches the stored size. After every append the hash state is saved beside
the data with the offset it covers, so the next process carries on from it;
when it is missing or stale the data file is hashed again once.
"""

from __future__ import annotations

import time
import uuid

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from regd.oci.digest import CANONICAL, Digest
from regd.oci.hashstate import ResumableSha256, decode_state, encode_state
from regd.oci.errors import BlobUploadInvalid, BlobUploadUnknown, DigestInvalid, RangeInvalid, SizeInvalid
from regd.oci.reference import is_valid_name
from regd.randomids import random_ids
from regd.registry import links
from regd.registry.blobs import BlobInfo, BlobService
from regd.registry.context import RequestContext
from regd.registry.listener import BLOB, PUSH, ListenerSet, RegistryEvent
from regd.storage import paths
from regd.storage.interfaces import IBodySpool, PathNotFound, SpoolAim

log = Logger()


def format_started_at(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def parse_started_at(text: str) -> float | None:
    import calendar
    text = text.strip()
    for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ"):
        try:
            return float(calendar.timegm(time.strptime(text, fmt)))
        except ValueError:
            pass
    # Go's RFC 3339 with nanoseconds (more digits than %f takes).
    if text.endswith("Z") and "." in text:
        return parse_started_at(text.split(".")[0] + "Z")
    return None


@attrs.define
class _Session:
    """In-memory state of an upload this process has seen."""

    size: int = 0
    hasher: object = None  # sha256 over data[0:size], when known
    lock: defer.DeferredLock = attrs.field(factory=defer.DeferredLock)


@attrs.frozen
class FinalBody:
    """
    What a request line says of the body that follows, when that body ends
    an upload with its digest named: C{PUT .../blobs/uploads/<id>?digest=}
    (no Content-Range) or C{POST .../blobs/uploads/?digest=} (C{upload_id}
    None). Only a hint for where the bytes may go while they arrive; the
    handler still checks everything.
    """
    name: str
    upload_id: str | None
    digest: str


def is_upload_id(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except (ValueError, AttributeError, TypeError):
        return False


def this_boot() -> str:
    """The kernel's id of this boot of the machine; '' where it does not say."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return ""


class UploadService:
    def __init__(self, driver, blobs: BlobService, listeners: ListenerSet, clock):
        self._driver = driver
        self._blobs = blobs
        self._listeners = listeners
        self._clock = clock
        self._sessions: dict[tuple[str, str], _Session] = {}
        self.max_sessions = 4096
        self.boot = this_boot()  # written into saved hash states (see _stored_hasher)

    def new_spool(self, ends: FinalBody | None = None):
        """
        A spool for a request body. For a body that ends an upload (C{ends}),
        a driver that can (S3) sends it toward the blob's own object, which
        only becomes visible once the digest was checked: no copy afterwards.
        """
        aimed = getattr(self._driver, "new_aimed_spool", None)
        if ends is None or aimed is None or not is_valid_name(ends.name) or (
                ends.upload_id is not None and not is_upload_id(ends.upload_id)):
            return self._driver.new_spool()
        try:
            digest = Digest.parse(ends.digest)
        except DigestInvalid:
            return self._driver.new_spool()
        if digest.algorithm != CANONICAL:
            return self._driver.new_spool()
        return aimed(SpoolAim(paths.blob_data(digest), lambda: defer.ensureDeferred(
            self._is_empty(ends.name, ends.upload_id))))

    async def _is_empty(self, name: str, upload_id: str | None) -> bool:
        """Would a body now be the upload's whole content? (Always, without an upload: a monolithic POST.)"""
        if upload_id is None:
            return True
        if not await links.exists(self._driver, paths.upload_started_at(name, upload_id)):
            return False
        try:
            return (await self._driver.stat(paths.upload_data(name, upload_id))).size == 0
        except PathNotFound:
            return True

    def in_progress(self) -> int:
        """Upload sessions this process has seen and not seen finish (bounded, see _forget_idle)."""
        return len(self._sessions)

    def spool_from_bytes(self, data: bytes):
        spool = self._driver.new_spool()
        spool.write(data)
        return spool

    def as_spool(self, content) -> tuple[object, bool]:
        """
        A request body as a spool: the body itself when the HTTP layer
        already streamed it into one, else a new spool holding its bytes.
        The flag says whether the spool is new (its closing is the caller's).
        """
        if IBodySpool.providedBy(content):
            return content, False
        content.seek(0)
        return self.spool_from_bytes(content.read()), True

    def body_sink(self, name: str, upload_id: str, start: int | None):
        """
        Where a PATCH body for this upload can be written as it arrives, or
        None: onto the end of the upload's own data (drivers that can append
        in place: filesystem), so a later chunk is written once, not spooled
        and copied. Called from the reactor when the request head arrives,
        before routing and authorization; append() checks everything again.

        None (and the body is spooled as before) when the driver cannot, the
        upload is unknown or has no bytes yet (a first body is renamed into
        place), a chunk of it is being handled here, or C{start} (from
        Content-Range) is not where it ends, which the handler answers with
        416. The sink holds the upload's lock until it is closed: append()
        keeps its bytes; any other end of the request cuts them off again.
        """
        open_append = getattr(self._driver, "open_append", None)
        if open_append is None or not is_upload_id(upload_id) or not is_valid_name(name):
            return None
        key = (name, upload_id)
        session = self._sessions.get(key)
        if session is not None and session.lock.locked:
            return None
        sink = open_append(paths.upload_data(name, upload_id))
        if sink is None:
            return None
        if start is not None and start != sink.offset:
            sink.close()
            return None
        if session is None:
            self._forget_idle()
            session = self._sessions.setdefault(key, _Session())
        session.lock.acquire()  # free (checked above): taken at once
        sink.when_closed(session.lock.release)
        sink.upload = key
        if session.hasher is not None and session.size == sink.offset:
            sink.hasher = session.hasher.copy()
        return sink

    async def start(self, name: str) -> str:
        upload_id = random_ids()
        started = format_started_at(self._clock.seconds())
        await self._driver.put_content(paths.upload_started_at(name, upload_id), started.encode("ascii"))
        self._forget_idle()
        self._sessions[(name, upload_id)] = _Session()
        return upload_id

    async def _session(self, name: str, upload_id: str) -> _Session:
        if not is_upload_id(upload_id):
            raise BlobUploadUnknown(detail={"uuid": upload_id[:64]})
        key = (name, upload_id)
        session = self._sessions.get(key)
        if not await links.exists(self._driver, paths.upload_started_at(name, upload_id)):
            self._sessions.pop(key, None)
            raise BlobUploadUnknown(detail={"uuid": upload_id})
        if key not in self._sessions:
            self._forget_idle()
        return self._sessions.setdefault(key, _Session())

    def _forget_idle(self) -> None:
        """
        Uploads finished or cancelled by another instance never tell this one:
        keep at most C{max_sessions} cached, dropping the oldest idle ones
        (an idle session holds nothing the storage does not also hold).
        """
        excess = len(self._sessions) - self.max_sessions + 1
        for key in [k for k, v in self._sessions.items() if not v.lock.locked][:max(excess, 0)]:
            del self._sessions[key]

    async def _refresh(self, name: str, upload_id: str, session: _Session) -> None:
        """
        Another process (or instance) may have appended since this one last
        saw the upload: the stored data is the truth, and what is held here is
        only a cache, dropped as soon as the sizes disagree. Called under the
        session lock so this process's own appends are never half-seen.
        """
        try:
            size = (await self._driver.stat(paths.upload_data(name, upload_id))).size
        except PathNotFound:
            size = 0
        if session.size != size:
            session.size = size
            session.hasher = await self._stored_hasher(name, upload_id, size)

    async def _stored_hasher(self, name: str, upload_id: str, size: int):
        """
        The running hash saved by whoever appended last, if it covers exactly
        C{size} bytes and its chunks' bytes cannot have been lost since.

        On the filesystem a chunk is not fsynced when its PATCH is answered
        (the blob is, once, when it is published), but the state is. After
        the machine went down, the upload's file may have the length the
        state names with other bytes in it, and a state trusted then would
        publish them under the client's digest. So where appends are not
        durable when made, only a state written during this boot of the
        kernel (whose page cache still holds those bytes, even if the
        process that wrote them was killed) is used; any other means hashing
        the stored bytes again. Drivers whose appends are durable when they
        return (S3: each part is stored when acknowledged) set
        C{durable_appends} and any instance's state is used.
        """
        try:
            saved = decode_state(await self._driver.get_content(paths.upload_hash_state(name, upload_id)))
        except PathNotFound:
            return None
        if saved is None or saved[0] != size:
            return None  # a crash between append and save: re-hash from storage when needed
        _, hasher, boot = saved
        if not getattr(self._driver, "durable_appends", False) and self.boot and boot != self.boot:
            log.info("upload {upload_id}: its hash state is from another boot; re-hashing the stored bytes",
                     upload_id=upload_id)
            return None
        return hasher

    async def _save_hasher(self, name: str, upload_id: str, session: _Session) -> None:
        if isinstance(session.hasher, ResumableSha256):
            await self._driver.put_content(paths.upload_hash_state(name, upload_id),
                                           encode_state(session.size, session.hasher, self.boot))

    async def status(self, name: str, upload_id: str) -> int:
        """Bytes received so far."""
        session = await self._session(name, upload_id)
        await session.lock.acquire()
        try:
            await self._refresh(name, upload_id, session)
            return session.size
        finally:
            session.lock.release()

    async def append(self, name: str, upload_id: str, spool, start: int | None = None,
                     end: int | None = None) -> int:
        """
        Add a body to the upload. C{start}/C{end} come from a Content-Range
        header; a chunk that does not continue exactly where the data ends is
        refused with 416 so the client can ask where to resume.
        """
        if getattr(spool, "upload", None) is not None:
            return await self._keep_in_place(name, upload_id, spool, start, end)
        session = await self._session(name, upload_id)
        await session.lock.acquire()
        try:
            await self._refresh(name, upload_id, session)
            try:
                size = await self._append_locked(name, upload_id, session, spool, start, end)
            except (PathNotFound, FileNotFoundError):
                await self._cancelled_meanwhile(name, upload_id)
                raise
            # Cancelled by another process while the chunk was stored: what the append
            # wrote (a data file, a hash state) must not bring the upload back.
            await self._cancelled_meanwhile(name, upload_id)
            return size
        finally:
            session.lock.release()

    async def _keep_in_place(self, name: str, upload_id: str, sink, start, end) -> int:
        """
        append() for a body written in place by a sink from body_sink(),
        whose lock it holds: check it as a spooled chunk is checked, then
        keep its bytes and carry the running hash on. Closing the sink at
        the end releases the lock (and cuts the bytes off unless kept).
        """
        try:
            if sink.upload != (name, upload_id):  # routed elsewhere than its request line said
                raise BlobUploadInvalid("the body was received for another upload")
            if not await links.exists(self._driver, paths.upload_started_at(name, upload_id)):
                await self._cancelled_meanwhile(name, upload_id)
            if start is not None and start != sink.offset:
                raise RangeInvalid(detail={"expected_start": sink.offset, "start": start},
                                   headers={"Range": _range_header(sink.offset)})
            if end is not None and end - start + 1 != sink.size:
                raise SizeInvalid("Content-Range does not match the body length",
                                  detail={"range": f"{start}-{end}", "length": sink.size})
            session = self._sessions.setdefault((name, upload_id), _Session())
            hasher = sink.hasher
            if hasher is None and sink.size > 0:
                # The running hash was not known here when the body began (another instance
                # took the chunk before): the saved one, fed this chunk back from storage.
                hasher = await self._stored_hasher(name, upload_id, sink.offset)
                if hasher is not None:
                    await sink.hash_into(hasher)
                else:
                    hasher = await self._driver.digest_file(paths.upload_data(name, upload_id), CANONICAL)
            sink.keep()
            session.size = sink.offset + sink.size
            session.hasher = hasher  # None (empty body, nothing known): re-hashed from storage at commit
            await self._save_hasher(name, upload_id, session)
            await self._cancelled_meanwhile(name, upload_id)
            return session.size
        except (PathNotFound, FileNotFoundError):
            await self._cancelled_meanwhile(name, upload_id)
            raise
        finally:
            sink.close()

    async def _cancelled_meanwhile(self, name: str, upload_id: str) -> None:
        """Raise BlobUploadUnknown, removing anything written since, if the upload was cancelled."""
        if await links.exists(self._driver, paths.upload_started_at(name, upload_id)):
            return
        self._sessions.pop((name, upload_id), None)
        await links.delete_if_present(self._driver, paths.upload_dir(name, upload_id))
        raise BlobUploadUnknown(detail={"uuid": upload_id})

    async def _append_locked(self, name, upload_id, session, spool, start, end) -> int:
        if start is not None:
            if start != session.size:
                spool.close()
                raise RangeInvalid(detail={"expected_start": session.size, "start": start},
                                   headers={"Range": _range_header(session.size)})
            if end is not None and end - start + 1 != spool.size:
                spool.close()
                raise SizeInvalid("Content-Range does not match the body length",
                                  detail={"range": f"{start}-{end}", "length": spool.size})
        if spool.size == 0:
            spool.close()
            return session.size
        data_path = paths.upload_data(name, upload_id)
        if session.size == 0:
            hasher = spool.hasher.copy() if spool.hasher is not None else None
            session.size = await self._driver.store_spool(spool, data_path)
            session.hasher = hasher
            await self._save_hasher(name, upload_id, session)
            return session.size
        else:
            if session.hasher is None:
                session.hasher = await self._driver.digest_file(data_path, CANONICAL)
            before = session.size
            try:
                session.size = await self._driver.store_spool(spool, data_path, hasher=session.hasher)
            except Exception:
                # The hasher may have seen part of the chunk: forget it, rebuild on demand.
                session.hasher = None
                session.size = before
                raise
        await self._save_hasher(name, upload_id, session)
        return session.size

    async def commit(self, name: str, upload_id: str, digest: Digest, spool,
                     context: RequestContext) -> BlobInfo:
        """Finish an upload: append the last body, verify, place, link, report."""
        session = await self._session(name, upload_id)
        await session.lock.acquire()
        try:
            await self._refresh(name, upload_id, session)
            if session.size == 0 and _aimed_at(spool, digest):
                # The whole upload in this body, already sent toward its blob (S3): verified and
                # placed as a single-request upload is, without passing through the upload's data.
                size = await self._place_whole(name, digest, spool)
            else:
                size = await self._commit_data(name, upload_id, session, digest, spool)
            await links.delete_if_present(self._driver, paths.upload_dir(name, upload_id))
            self._sessions.pop((name, upload_id), None)
        finally:
            session.lock.release()
        return await self._pushed(name, digest, size, context)

    async def _commit_data(self, name: str, upload_id: str, session: _Session, digest: Digest, spool) -> int:
        """Append the last body to the upload's data, verify the whole, move it into place and link it."""
        try:
            if spool is not None:
                await self._append_locked(name, upload_id, session, spool, None, None)
            data_path = paths.upload_data(name, upload_id)
            if session.size == 0 and not await links.exists(self._driver, data_path):
                await self._driver.put_content(data_path, b"")
            actual = await self._verified_digest(data_path, session, digest.algorithm)
        except (PathNotFound, FileNotFoundError):
            await self._cancelled_meanwhile(name, upload_id)
            raise
        if actual != digest.hex:
            raise DigestInvalid(detail={"expected": str(digest), "received": f"{digest.algorithm}:{actual}"})
        async with self._blobs.pending.holding(name, [digest]):
            placed = await self._blobs.global_size(digest) is None
            if placed:
                await self._driver.move(data_path, paths.blob_data(digest))
            await self._blobs.link(name, digest, touch=not placed)
        return session.size

    async def _pushed(self, name: str, digest: Digest, size: int, context: RequestContext) -> BlobInfo:
        await self._listeners.emit(RegistryEvent(
            PUSH, BLOB, name, context, digest=digest, size=size, media_type="application/octet-stream"))
        return BlobInfo(digest, size)

    async def _verified_digest(self, data_path: str, session: _Session, algorithm: str) -> str:
        if algorithm == CANONICAL and session.hasher is not None:
            return session.hasher.hexdigest()
        hasher = await self._driver.digest_file(data_path, algorithm)
        if algorithm == CANONICAL:
            session.hasher = hasher
        return hasher.hexdigest()

    async def put_whole(self, name: str, digest: Digest, spool, context: RequestContext) -> BlobInfo:
        """
        Single-request upload (POST with ?digest=): verified from the spool's
        own running hash, then renamed straight into the blob store, or just
        linked when the blob is already there. No upload session is needed.
        """
        if digest.algorithm != CANONICAL:
            upload_id = await self.start(name)
            return await self.commit(name, upload_id, digest, spool, context)
        size = await self._place_whole(name, digest, spool)
        return await self._pushed(name, digest, size, context)

    async def _place_whole(self, name: str, digest: Digest, spool) -> int:
        """Check a whole blob's body against its digest, then publish it (unless held already) and link it."""
        received = spool.hasher.hexdigest() if spool.hasher is not None else None
        if received != digest.hex:
            spool.close()
            raise DigestInvalid(detail={"expected": str(digest), "received": f"{CANONICAL}:{received}"})
        size = spool.size
        async with self._blobs.pending.holding(name, [digest]):
            placed = await self._blobs.global_size(digest) is None
            if placed:
                await self._driver.publish_spool(spool, paths.blob_data(digest))
            else:
                spool.close()
            await self._blobs.link(name, digest, touch=not placed)
        return size

    async def put_small(self, name: str, digest: Digest, data: bytes, context: RequestContext) -> BlobInfo:
        """
        Single-request upload of a body the HTTP layer kept in memory (under
        its spool threshold): hashed and checked before anything is written,
        then stored and linked with no spool file and no upload session.
        """
        received = Digest.of(data, digest.algorithm)
        if received != digest:
            raise DigestInvalid(detail={"expected": str(digest), "received": str(received)})

        async def store(driver):
            blobs = self._blobs.using(driver)
            async with blobs.pending.holding(name, [digest]):
                if await blobs.global_size(digest) is None:
                    await blobs.store_and_link(name, digest, data)
                else:
                    await blobs.link(name, digest, touch=True)

        # The note, the look-ups, the writes and the note's removal: one storage job where the
        # driver can run them together, in the same order as the protocol of regd.registry.pending.
        in_one_job = getattr(self._driver, "in_one_job", None)
        await (in_one_job(store) if in_one_job is not None else store(self._driver))
        await self._listeners.emit(RegistryEvent(
            PUSH, BLOB, name, context, digest=digest, size=len(data), media_type="application/octet-stream"))
        return BlobInfo(digest, len(data))

    async def cancel(self, name: str, upload_id: str) -> None:
        """
        Remove an upload. A chunk or commit of it in progress here finishes
        first (its lock), so neither request meets the other's half-done
        work; one in progress in another process notices afterwards and
        answers BLOB_UPLOAD_UNKNOWN.
        """
        session = await self._session(name, upload_id)
        await session.lock.acquire()
        try:
            await self._session(name, upload_id)  # still there once the chunk before us ended?
            self._sessions.pop((name, upload_id), None)
            await links.delete_if_present(self._driver, paths.upload_dir(name, upload_id))
        finally:
            session.lock.release()

    async def purge(self, repositories: list[str], older_than: float, dry_run: bool = False) -> list[str]:
        """Remove uploads started more than C{older_than} seconds ago; returns their paths."""
        cutoff = self._clock.seconds() - older_than
        purged = []
        for name in repositories:
            for upload_id in await links.list_or_empty(self._driver, paths.uploads(name)):
                started = await self._started_at(name, upload_id)
                if started is None:
                    # No start time (yet): an instance may be creating it right now, or a
                    # crash cut its writing short. The directory's own age decides.
                    try:
                        started = (await self._driver.stat(paths.upload_dir(name, upload_id))).modified
                    except PathNotFound:
                        continue
                if started >= cutoff:
                    continue
                purged.append(paths.upload_dir(name, upload_id))
                if not dry_run:
                    self._sessions.pop((name, upload_id), None)
                    await links.delete_if_present(self._driver, paths.upload_dir(name, upload_id))
        return purged

    async def _started_at(self, name: str, upload_id: str) -> float | None:
        try:
            raw = await self._driver.get_content(paths.upload_started_at(name, upload_id))
        except PathNotFound:
            return None
        return parse_started_at(raw.decode("ascii", "replace"))


def _aimed_at(spool, digest: Digest) -> bool:
    """Was this body spooled toward this digest's blob (L{UploadService.new_spool} with C{ends})?"""
    aim = getattr(spool, "aim", None)
    return aim is not None and digest.algorithm == CANONICAL and aim.path == paths.blob_data(digest)


def _range_header(size: int) -> str:
    return f"0-{size - 1}" if size > 0 else "0-0"
