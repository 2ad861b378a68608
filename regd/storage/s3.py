# -*- test-case-name: tests.storage.test_s3 -*-
"""
S3 storage: the reference registry's tree under a bucket prefix
(C{<rootdirectory>/docker/registry/v2/...}, one object per file), so a bucket
written by registry:2's S3 driver is served by regd and back.

Bodies never sit whole in memory or on local disk. A request body goes into
an L{S3Spool} (regd.storage.s3streams, with the streaming reader), which
sends it on as the parts of a multipart upload, in C{chunksize} parts, while
it arrives (hashed on the way): streamed into each part's request when the
body's length is known, else counted into a local file per part first; the
client's connection is paused whenever bytes would pile up. A finished body is one object
under C{regd/spool/}. An upload's C{_uploads/<id>/data} is then a small index
object listing the bodies received so far, in order ("segments"; its
metadata carries the total size), so any instance can take the next chunk:
all upload state is in the bucket. Publishing a blob is a server-side copy
(a multipart copy above C{multipartcopythresholdsize}) of the segments to
C{blobs/.../data}, done only after the service has checked the digest; the
blob becomes visible when S3 completes the copy, whole. A body that is a
whole upload with its digest known up front needs no copy: its spool sends
the parts to the blob's own key, and completes that multipart upload only
once the digest matched (L{S3Spool} with an aim).

Segment objects are deleted with their upload (finished, cancelled or
purged); those of a process killed mid-request are swept by
L{S3Driver.sweep_spool}, which upload purging runs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from email.utils import parsedate_to_datetime
from xml.sax.saxutils import escape

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer
import xml.etree.ElementTree as ElementTree

from regd.oci.hashstate import running_hasher
from regd.storage import paths
from regd.storage.interfaces import (FileInfo, InvalidPath, IStorageDriver, PathNotFound, StorageError,
                                     StorageUnavailable, checked_path)
from regd.storage.s3client import S3Client, parse_error, static_credentials, xml_children, xml_text
from regd.storage.s3streams import (AIMED, Collector, Piece, S3Reader, S3Spool, Streamer, spool_path, spool_started,
                                    window)

log = Logger()

MIN_PART = 5 * 1024 * 1024  # S3's smallest part (but the last)
SEGMENTED = "x-amz-meta-regd-segmented"
# Server-side work (completing an upload, copying a part) answers only when done: give it time
# rather than retry it (a retried copy only adds load to a busy server).
COPY_TIMEOUT = 900.0
LOGICAL_SIZE = "x-amz-meta-regd-size"
# Beside an object too big to copy onto itself cheaply: its time is the object's "last used" time.
TOUCHED = ".regdtouched"


def _run(coroutine_function):
    """Make an async method return a Deferred that fails (never raises) on bad input."""
    def method(self, *args, **kwargs):
        return defer.ensureDeferred(coroutine_function(self, *args, **kwargs))
    method.__name__ = coroutine_function.__name__
    method.__doc__ = coroutine_function.__doc__
    return method


@attrs.frozen
class _Object:
    size: int
    modified: float
    segmented: bool


def _modified(response) -> float:
    value = response.headers.getRawHeaders("last-modified", [None])[0]
    if not value:
        return time.time()
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return time.time()


def _header(response, name: str, default=None):
    return response.headers.getRawHeaders(name, [default])[0]


# -- the driver -------------------------------------------------------------------


@implementer(IStorageDriver)
class S3Driver:
    """
    C{settings} is a L{regd.config.S3Config}. C{min_part} is S3's smallest
    part; tests lower it together with their S3 server's.
    """

    list_page = 1000
    # What an append wrote is stored when it returns (no page cache to lose): any instance's
    # saved running hash of an upload can be trusted (see UploadService._stored_hasher).
    durable_appends = True

    def __init__(self, settings, reactor, client: S3Client | None = None, credentials=None,
                 min_part: int = MIN_PART):
        self.settings = settings
        self.reactor = reactor
        root = settings.rootdirectory.strip("/")
        self.prefix = f"{root}/" if root else ""
        self.client = client or S3Client(settings, credentials or static_credentials(settings), reactor)
        self.chunksize = max(settings.chunksize, min_part)
        self.min_part = min_part
        self.copy_chunk = max(settings.multipartcopychunksize, min_part)
        self.copy_threshold = settings.multipartcopythresholdsize
        self.copy_concurrency = max(1, settings.multipartcopymaxconcurrency)

    # -- keys and headers ------------------------------------------------------

    def _key(self, path: str) -> str:
        return self.prefix + checked_path(path)

    def _write_headers(self, content_type: str = "application/octet-stream") -> dict:
        headers = {"Content-Type": content_type}
        if self.settings.storageclass and self.settings.storageclass != "NONE":
            headers["x-amz-storage-class"] = self.settings.storageclass
        if self.settings.encrypt:
            if self.settings.keyid:
                headers["x-amz-server-side-encryption"] = "aws:kms"
                headers["x-amz-server-side-encryption-aws-kms-key-id"] = self.settings.keyid
            else:
                headers["x-amz-server-side-encryption"] = "AES256"
        return headers

    def check(self) -> None:
        """Blocking, before the reactor runs: can the bucket be listed with these settings?"""
        self.client.check_bucket_blocking(self.prefix)

    # -- small objects -----------------------------------------------------------

    @_run
    async def get_content(self, path: str):
        response = await self.client.request("GET", self._key(path))
        if _header(response, SEGMENTED):
            return await self._read_pieces(await self._pieces(path, response.body))
        return response.body

    @_run
    async def put_content(self, path: str, data: bytes):
        await self.client.request("PUT", self._key(path), headers=self._write_headers(), body=bytes(data))

    async def _head(self, path: str) -> _Object | None:
        try:
            response = await self.client.request("HEAD", self._key(path))
        except PathNotFound:
            return None
        if _header(response, SEGMENTED):
            return _Object(int(_header(response, LOGICAL_SIZE, "0")), _modified(response), True)
        return _Object(int(_header(response, "content-length", "0")), _modified(response), False)

    @_run
    async def stat(self, path: str):
        found = await self._head(path)
        if found is not None:
            modified = found.modified
            if found.size > self.copy_threshold and not found.segmented:
                marker = await self._head(path + TOUCHED)
                if marker is not None:
                    modified = max(modified, marker.modified)
            return FileInfo(path, found.size, modified, False)
        entries = await self._list_page(self._key(path) + "/", delimiter="/", limit=1)
        if entries[0] or entries[1]:
            return FileInfo(path, 0, 0.0, True)
        raise PathNotFound(path)

    async def _list_page(self, prefix: str, delimiter: str | None = None, limit: int | None = None,
                         token: str | None = None):
        """One ListObjectsV2 page: (directories, [(key, size)], next token)."""
        query = {"list-type": "2", "prefix": prefix, "max-keys": str(limit or self.list_page)}
        if delimiter:
            query["delimiter"] = delimiter
        if token:
            query["continuation-token"] = token
        response = await self.client.request("GET", "", query=query)
        root = ElementTree.fromstring(response.body)
        directories = [xml_text(p, "Prefix") for p in xml_children(root, "CommonPrefixes")]
        files = [(xml_text(c, "Key"), int(xml_text(c, "Size", "0"))) for c in xml_children(root, "Contents")]
        following = xml_text(root, "NextContinuationToken") if xml_text(root, "IsTruncated") == "true" else None
        return directories, files, following

    async def _list_all(self, prefix: str, delimiter: str | None = None):
        directories, files, token = [], [], None
        while True:
            more_dirs, more_files, token = await self._list_page(prefix, delimiter, token=token)
            directories += more_dirs
            files += more_files
            if not token:
                return directories, files

    async def _children(self, path: str) -> tuple[list[str], list[str]]:
        prefix = self._key(path) + "/"
        directories, files = await self._list_all(prefix, "/")
        dirs = [d[len(prefix):].rstrip("/") for d in directories]
        names = [k[len(prefix):] for k, _ in files]
        return sorted(d for d in dirs if d), sorted(n for n in names if n and not n.endswith(TOUCHED))

    @_run
    async def list(self, path: str):
        dirs, files = await self._children(path)
        if not dirs and not files:
            raise PathNotFound(path)
        return sorted(set(dirs) | set(files))

    @_run
    async def delete(self, path: str):
        key = self._key(path)
        _, files = await self._list_all(key)
        doomed = [k for k, _ in files if k == key or k.startswith(key + "/") or k == key + TOUCHED]
        if not doomed:
            raise PathNotFound(path)
        for k in list(doomed):
            # An upload's data index takes its segments along.
            if k.endswith("/data") and "/_uploads/" in k:
                relative = k[len(self.prefix):]
                try:
                    found = await self._head(relative)
                    if found is not None and found.segmented:
                        doomed += [self._key(p.path) for p in await self._pieces(relative)]
                except PathNotFound:
                    pass
        await self._delete_keys(doomed)

    async def _delete_keys(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = keys[i:i + 1000]
            body = ("<Delete><Quiet>true</Quiet>"
                    + "".join(f"<Object><Key>{escape(k)}</Key></Object>" for k in batch)
                    + "</Delete>").encode("utf-8")
            md5 = base64.b64encode(hashlib.md5(body).digest()).decode("ascii")
            response = await self.client.request("POST", "", query={"delete": ""}, body=body,
                                                 headers={"Content-MD5": md5, "Content-Type": "application/xml"})
            errors = xml_children(ElementTree.fromstring(response.body), "Error") if response.body else []
            problems = [e for e in errors if xml_text(e, "Code") != "NoSuchKey"]
            if problems:
                raise StorageError(f"S3 delete failed: {xml_text(problems[0], 'Code')} {xml_text(problems[0], 'Key')}")

    @_run
    async def move(self, source: str, destination: str):
        checked_path(destination)
        found = await self._head(source)
        if found is None:
            raise PathNotFound(source)
        pieces = await self._pieces(source) if found.segmented else [Piece(source, 0, found.size, True)]
        await self._compose(pieces, destination)
        # (A touch marker left beside the source goes too: the copy is new, its time is now.)
        await self._delete_keys([self._key(source), self._key(source) + TOUCHED]
                                + [self._key(p.path) for p in pieces if p.path != source])

    @_run
    async def touch(self, path: str):
        found = await self._head(path)
        if found is None:
            raise PathNotFound(path)
        if found.segmented:
            raw = (await self.client.request("GET", self._key(path))).body
            await self._put_index(path, json.loads(raw)["segments"])
            return
        if found.size > self.copy_threshold:
            # Copying a big object onto itself costs a full server-side copy: a small marker
            # beside it carries the time instead (stat reports the later of the two).
            await self.client.request("PUT", self._key(path + TOUCHED), headers=self._write_headers(), body=b"")
            return
        # S3 has no utime: copy a small object onto itself with fresh metadata.
        await self._compose([Piece(path, 0, found.size, True)], path,
                            extra={"x-amz-metadata-directive": "REPLACE",
                                   "x-amz-meta-regd-touched": str(int(time.time()))})

    @_run
    async def truncate(self, path: str, size: int):
        found = await self._head(path)
        if found is None:
            raise PathNotFound(path)
        pieces = await self._pieces(path) if found.segmented else [Piece(path, 0, found.size, True)]
        if size >= found.size:
            return
        kept = window(pieces, 0, size)
        if not found.segmented:
            await self._compose(kept, path)
            return
        segments, sizes = [], {p.path: p.size for p in pieces}
        for piece in kept:
            if piece.size == sizes[piece.path]:
                segments.append([piece.path, piece.size])
            else:
                cut = spool_path(self.reactor)
                await self._compose([piece], cut)
                segments.append([cut, piece.size])
        await self._put_index(path, segments)
        used = {p for p, _ in segments}
        unused = [self._key(p.path) for p in pieces if p.path not in used]
        if unused:
            await self._delete_keys(unused)

    # -- segmented objects (upload data) -----------------------------------------------

    async def _pieces(self, path: str, raw: bytes | None = None) -> list[Piece]:
        if raw is None:
            raw = (await self.client.request("GET", self._key(path))).body
        try:
            return [Piece(p, 0, int(size), True) for p, size in json.loads(raw)["segments"]]
        except (ValueError, KeyError, TypeError):
            raise StorageError(f"unreadable upload index at {path}") from None

    async def _put_index(self, path: str, segments: list) -> None:
        total = sum(size for _, size in segments)
        headers = {"Content-Type": "application/json", SEGMENTED: "1", LOGICAL_SIZE: str(total)}
        await self.client.request("PUT", self._key(path), headers=headers,
                                  body=json.dumps({"segments": segments}).encode("ascii"))

    async def _read_pieces(self, pieces: list[Piece]) -> bytes:
        out = []
        await Streamer(self.client, Collector(out.append), pieces, self._key).start(register=False)
        return b"".join(out)

    # -- streams -----------------------------------------------------------------

    @_run
    async def reader(self, path: str):
        found = await self._head(path)
        if found is None:
            raise PathNotFound(path)
        pieces = await self._pieces(path) if found.segmented else [Piece(path, 0, found.size, True)]
        return S3Reader(self, pieces, found.size)

    def new_spool(self):
        return S3Spool(self)

    def new_aimed_spool(self, aim):
        """A spool whose parts go straight to C{aim.path} (a blob) if C{aim.confirm()} says so."""
        return S3Spool(self, aim)

    @_run
    async def store_spool(self, spool, path: str, hasher=None):
        try:
            checked_path(path)
            found = await self._head(path)
            existing = found.size if found is not None else 0
            body = await spool.finish()
            if spool.aimed_at is not None:
                # Sent toward a blob on the word that it ended an empty upload, which then
                # received data meanwhile (a client racing itself): the bytes cannot go elsewhere.
                raise StorageUnavailable("the upload received data while its last body arrived; send it again")
            if existing == 0:
                if body is not None:
                    await self.client.request("PUT", self._key(path), headers=self._write_headers(), body=body)
                else:
                    spool.adopted = True
                    await self._put_index(path, [[spool.path, spool.size]])
                return spool.size
            if spool.size == 0:
                return existing
            if body is not None and not found.segmented and existing + len(body) <= self.chunksize:
                # Small chunks of a small upload: keep one plain object.
                before = await self.get_content(path)
                await self.client.request("PUT", self._key(path), headers=self._write_headers(),
                                          body=before + body)
                if hasher is not None:
                    hasher.update(body)
                return existing + len(body)
            segments = (json.loads((await self.client.request("GET", self._key(path))).body)["segments"]
                        if found.segmented else None)
            if segments is None:
                # A plain object grown past one part: it becomes the first segment.
                first = spool_path(self.reactor)
                await self._compose([Piece(path, 0, existing, True)], first)
                segments = [[first, existing]]
            if body is not None:
                await self.client.request("PUT", self._key(spool.path), headers=self._write_headers(), body=body)
                if hasher is not None:
                    hasher.update(body)
            elif hasher is not None:
                await Streamer(self.client, Collector(hasher.update), [Piece(spool.path, 0, spool.size, True)],
                                self._key).start(register=False)
            spool.adopted = True
            await self._put_index(path, segments + [[spool.path, spool.size]])
            return existing + spool.size
        finally:
            spool.close()

    @_run
    async def publish_spool(self, spool, path: str):
        try:
            checked_path(path)
            body = await spool.finish()
            if body is not None:
                await self.client.request("PUT", self._key(path), headers=self._write_headers(), body=body)
            elif spool.aimed_at == path:
                await spool.complete()  # the parts are already at the blob's key: no copy
            elif spool.aimed_at is not None:
                raise StorageError(f"a body sent toward {spool.aimed_at} cannot be published at {path}")
            else:
                await self._compose([Piece(spool.path, 0, spool.size, True)], path)
            return spool.size
        finally:
            spool.close()  # removes the spool object (not adopted)

    @_run
    async def digest_file(self, path: str, algorithm: str):
        found = await self._head(path)
        if found is None:
            raise PathNotFound(path)
        pieces = await self._pieces(path) if found.segmented else [Piece(path, 0, found.size, True)]
        hasher = running_hasher(algorithm)
        await Streamer(self.client, Collector(hasher.update), pieces, self._key).start(register=False)
        return hasher

    @_run
    async def walk_repositories(self, root: str, marker: str = "_manifests"):
        found = []
        # One LIST per directory, many at once: a catalog of thousands of repositories is
        # thousands of round trips, so they overlap (bounded, to stay a polite S3 client).
        limit = defer.DeferredSemaphore(16)

        async def walk(path: str, name: str):
            await limit.acquire()
            try:
                dirs, _files = await self._children(path)
            finally:
                limit.release()
            if marker in dirs and name:
                found.append(name)
            await defer.gatherResults([defer.ensureDeferred(walk(f"{path}/{d}", f"{name}/{d}" if name else d))
                                       for d in dirs if not d.startswith("_")], consumeErrors=True)

        try:
            await walk(checked_path(root), "")
        except defer.FirstError as e:
            e.subFailure.raiseException()
        return sorted(found)

    def redirect_url(self, path: str, method: str = "GET"):
        """A presigned URL for the object (20 minutes, as registry:2)."""
        try:
            return defer.succeed(self.client.presign(self._key(path), method))
        except Exception:
            return defer.fail()

    async def sweep_spool(self, older_than: float, now: float | None = None) -> int:
        """
        Remove spool objects and abort spool multipart uploads older than
        C{older_than} seconds: left behind by a process killed mid-request.
        Returns how many went.
        """
        cutoff = (time.time() if now is None else now) - older_than
        prefix = self._key(paths.SPOOL) + "/"
        removed = 0
        # Finished segments are judged by age alone: a segment is never older than its
        # upload, and an upload older than the purge age is purged with its segments.
        token, old, aimed = None, [], []
        while True:
            query = {"list-type": "2", "prefix": prefix, "max-keys": str(self.list_page)}
            if token:
                query["continuation-token"] = token
            root = ElementTree.fromstring((await self.client.request("GET", "", query=query)).body)
            for item in xml_children(root, "Contents"):
                try:
                    if _iso(xml_text(item, "LastModified")) < cutoff:
                        old.append(xml_text(item, "Key"))
                        if old[-1].endswith(AIMED):
                            aimed.append(old[-1])
                except ValueError:
                    continue
            token = xml_text(root, "NextContinuationToken") if xml_text(root, "IsTruncated") == "true" else None
            if not token:
                break
        for key in aimed:
            # A body a killed process was sending straight to a blob's key: abort that upload
            # (never completed, so never visible), then the marker goes with the other leftovers.
            try:
                named = json.loads((await self.client.request("GET", key)).body)
                await self._abort_multipart(named["key"], named["upload"])
                removed += 1
            except PathNotFound:
                continue
            except (ValueError, KeyError, TypeError, InvalidPath):
                log.warn("unreadable marker {key} removed", key=key)
        if old:
            await self._delete_keys(old)
            removed += len(old)
        response = await self.client.request("GET", "", query={"uploads": "", "prefix": prefix})
        for upload in xml_children(ElementTree.fromstring(response.body), "Upload"):
            # The spool's name says when it began (some S3 servers report no real Initiated time).
            when = spool_started(xml_text(upload, "Key"))
            if when is not None and when < cutoff:
                relative = xml_text(upload, "Key")[len(self.prefix):]
                await self._abort_multipart(relative, xml_text(upload, "UploadId"))
                removed += 1
        return removed

    # -- multipart uploads and copies --------------------------------------------------------

    async def _create_multipart(self, path: str, extra: dict | None = None) -> str:
        response = await self.client.request("POST", self._key(path), query={"uploads": ""},
                                             headers={**self._write_headers(), **(extra or {})})
        upload_id = xml_text(ElementTree.fromstring(response.body), "UploadId")
        if not upload_id:
            raise StorageError("S3 did not start a multipart upload")
        return upload_id

    async def _upload_part(self, path: str, upload_id: str, number: int, data) -> str:
        response = await self.client.request("PUT", self._key(path),
                                             query={"partNumber": str(number), "uploadId": upload_id}, body=data)
        return _header(response, "etag", "")

    async def _copy_part(self, path: str, upload_id: str, number: int, piece: Piece) -> str:
        response = await self.client.request(
            "PUT", self._key(path), query={"partNumber": str(number), "uploadId": upload_id},
            headers={"x-amz-copy-source": self._copy_source(piece.path),
                     "x-amz-copy-source-range": f"bytes={piece.start}-{piece.end - 1}"},
            timeout=COPY_TIMEOUT)
        root = _raise_embedded_error(response.body, path)
        return xml_text(root, "ETag")

    async def _complete_multipart(self, path: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        body = ("<CompleteMultipartUpload>" + "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{escape(etag)}</ETag></Part>" for n, etag in parts)
            + "</CompleteMultipartUpload>").encode("ascii")
        response = await self.client.request("POST", self._key(path), query={"uploadId": upload_id}, body=body,
                                             headers={"Content-Type": "application/xml"}, timeout=COPY_TIMEOUT)
        # S3 may answer 200 and still report an error in the body.
        _raise_embedded_error(response.body, path)

    async def _abort_multipart(self, path: str, upload_id: str) -> None:
        try:
            await self.client.request("DELETE", self._key(path), query={"uploadId": upload_id}, ok=(200, 204))
        except PathNotFound:
            pass

    def _copy_source(self, path: str) -> str:
        from urllib.parse import quote
        return quote(f"{self.settings.bucket}/{self._key(path)}", safe="/-_.~")

    async def _compose(self, pieces: list[Piece], destination: str, extra: dict | None = None) -> None:
        """
        Make the object at C{destination} the concatenation of C{pieces},
        server-side: one copy when a single piece is under the threshold,
        else a multipart copy of C{multipartcopychunksize} ranges, run
        C{multipartcopymaxconcurrency} at a time. A part that would span
        pieces is assembled from downloaded bytes (at most one S3 part's
        minimum, a few at a time) so every part but the last is big enough.
        """
        total = sum(p.size for p in pieces)
        pieces = [p for p in pieces if p.size > 0]
        if total == 0:
            await self.client.request("PUT", self._key(destination), headers=self._write_headers(), body=b"")
            return
        if len(pieces) == 1 and total <= self.copy_threshold and pieces[0].start == 0 and \
                pieces[0].size == total and await self._whole(pieces[0]):
            headers = {**self._write_headers(), "x-amz-copy-source": self._copy_source(pieces[0].path),
                       "x-amz-metadata-directive": "REPLACE", **(extra or {})}
            response = await self.client.request("PUT", self._key(destination), headers=headers,
                                                 timeout=COPY_TIMEOUT)
            _raise_embedded_error(response.body, destination)
            return
        plan = _plan_parts(pieces, self.copy_chunk, self.min_part)
        upload_id = await self._create_multipart(destination, {
            k: v for k, v in (extra or {}).items() if k != "x-amz-metadata-directive"})
        copies = defer.DeferredSemaphore(self.copy_concurrency)
        downloads = defer.DeferredSemaphore(2)  # bounds memory: each holds one small part

        async def make_part(number, part_pieces):
            if len(part_pieces) == 1:
                return number, await self._copy_part(destination, upload_id, number, part_pieces[0])
            await downloads.acquire()
            try:
                data = await self._read_pieces(part_pieces)
                return number, await self._upload_part(destination, upload_id, number, data)
            finally:
                downloads.release()

        async def limited(number, part_pieces):
            await copies.acquire()
            try:
                return await make_part(number, part_pieces)
            finally:
                copies.release()

        try:
            results = await defer.gatherResults(
                [defer.ensureDeferred(limited(n, pp)) for n, pp in enumerate(plan, start=1)], consumeErrors=True)
            await self._complete_multipart(destination, upload_id, sorted(results))
        except BaseException as e:
            if isinstance(e, defer.FirstError):
                e = e.subFailure.value
            await self._abort_multipart(destination, upload_id)
            raise e from None

    async def _whole(self, piece: Piece) -> bool:
        # A single copy needs the whole source object: true unless a truncation cut it.
        if piece.start != 0:
            return False
        found = await self._head(piece.path)
        return found is not None and not found.segmented and found.size == piece.size


def _plan_parts(pieces: list[Piece], chunk: int, minimum: int) -> list[list[Piece]]:
    """
    Cut the concatenation of C{pieces} into parts: a part inside one piece
    is copied server-side (up to C{chunk} bytes); a part that must span
    pieces (a piece's tail under C{minimum}) is C{minimum} bytes gathered
    from several. Every part but the last is at least C{minimum} bytes.
    """
    total = sum(p.size for p in pieces)
    plan, position = [], 0
    starts, acc = [], 0
    for p in pieces:
        starts.append(acc)
        acc += p.size
    index = 0
    while position < total:
        while starts[index] + pieces[index].size <= position:
            index += 1
        piece = pieces[index]
        offset = position - starts[index]
        remaining = piece.size - offset
        if remaining >= minimum or position + remaining == total:
            size = min(chunk, remaining)
            plan.append([Piece(piece.path, piece.start + offset, piece.start + offset + size)])
        else:
            size = min(minimum, total - position)
            plan.append(window(pieces, position, position + size))
        position += size
    return plan


def _raise_embedded_error(body: bytes, path: str):
    try:
        root = ElementTree.fromstring(body) if body else None
    except ElementTree.ParseError:
        root = None
    if root is not None and root.tag.rsplit("}", 1)[-1] == "Error":
        error = parse_error(500, body, path)
        if error.code in ("SlowDown", "InternalError", "ServiceUnavailable"):
            raise StorageUnavailable(str(error))
        raise error
    return root


def _iso(text: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
