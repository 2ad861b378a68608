# -*- test-case-name: tests.http.test_uploads -*-
"""Upload handlers: start (plain, single-request, mount), PATCH, PUT, status, cancel."""

from __future__ import annotations

from io import BytesIO

from regd.http.ranges import parse_upload_range
from regd.http.responses import context_of, header, query, respond
from regd.oci.digest import Digest
from regd.oci.errors import DigestInvalid
from regd.oci.reference import validate_name


def _range(size: int) -> str:
    return f"0-{size - 1}" if size > 0 else "0-0"


class UploadHandler:
    def __init__(self, registry, urls):
        self._registry = registry
        self._urls = urls

    def _body_spool(self, request):
        """
        The request body as a spool, whether twisted.web kept it in memory or
        spooled it. A spool made here is closed when the request ends, so a
        refused body never leaves a file behind (closing an adopted or
        already-closed spool does nothing).
        """
        spool, made_here = self._registry.uploads.as_spool(request.content)
        if made_here:
            request.notifyFinish().addBoth(lambda _: spool.close())
        return spool

    def _upload_headers(self, request, name: str, upload_id: str, size: int) -> dict[str, str]:
        return {
            "Location": self._urls.url(request, f"/v2/{name}/blobs/uploads/{upload_id}"),
            "Range": _range(size),
            "Docker-Upload-UUID": upload_id,
        }

    def _blob_created(self, request, name: str, digest: Digest) -> bytes:
        return respond(request, 201, b"", None, {
            "Location": self._urls.url(request, f"/v2/{name}/blobs/{digest}"),
            "Docker-Content-Digest": str(digest),
        })

    async def start(self, request, name: str):
        self._registry.check_writable()
        context = context_of(request, self._urls)
        mount, source = query(request, "mount"), query(request, "from")
        if mount is not None:
            digest = Digest.parse(mount)
            if source is not None:
                validate_name(source)
                if await self._registry.blobs.mount(name, source, digest, context) is not None:
                    return self._blob_created(request, name, digest)
            # No usable source: fall through to an ordinary upload, as the spec asks.
        digest_text = query(request, "digest")
        if digest_text is not None:
            digest = Digest.parse(digest_text)
            if isinstance(request.content, BytesIO):  # under the spool threshold: kept in memory
                await self._registry.uploads.put_small(name, digest, request.content.getvalue(), context)
                return self._blob_created(request, name, digest)
            spool = self._body_spool(request)
            await self._registry.uploads.put_whole(name, digest, spool, context)
            return self._blob_created(request, name, digest)
        upload_id = await self._registry.uploads.start(name)
        return respond(request, 202, b"", None, self._upload_headers(request, name, upload_id, 0))

    async def status(self, request, name: str, upload_id: str):
        size = await self._registry.uploads.status(name, upload_id)
        return respond(request, 204, b"", None, self._upload_headers(request, name, upload_id, size))

    async def patch(self, request, name: str, upload_id: str):
        self._registry.check_writable()
        wanted = parse_upload_range(header(request, "Content-Range"))
        start, end = wanted if wanted else (None, None)
        spool = self._body_spool(request)
        size = await self._registry.uploads.append(name, upload_id, spool, start, end)
        return respond(request, 202, b"", None, self._upload_headers(request, name, upload_id, size))

    async def put(self, request, name: str, upload_id: str):
        self._registry.check_writable()
        digest_text = query(request, "digest")
        if digest_text is None:
            await self._registry.uploads.status(name, upload_id)
            raise DigestInvalid("digest parameter missing", detail={"parameter": "digest"})
        digest = Digest.parse(digest_text)
        wanted = parse_upload_range(header(request, "Content-Range"))
        spool = self._body_spool(request)
        if wanted is not None:
            await self._registry.uploads.append(name, upload_id, spool, *wanted)
            spool = None
        elif spool.size == 0:
            spool.close()
            spool = None
        await self._registry.uploads.commit(name, upload_id, digest, spool, context_of(request, self._urls))
        return self._blob_created(request, name, digest)

    async def cancel(self, request, name: str, upload_id: str):
        self._registry.check_writable()
        await self._registry.uploads.cancel(name, upload_id)
        return respond(request, 204, b"", None, {})
