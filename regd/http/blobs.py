# -*- test-case-name: tests.http.test_blobs -*-
"""Blob GET/HEAD/DELETE handlers."""

from __future__ import annotations

from regd.http.bodies import StreamingBody
from regd.http.ranges import Unsatisfiable, content_range, parse_range
from regd.http.responses import context_of, header, respond, respond_head, set_headers
from regd.oci.digest import Digest
from regd.oci.errors import RegistryError


class RangeNotSatisfiable(RegistryError):
    code = "RANGE_INVALID"
    status = 416
    message = "requested range not satisfiable"


class BlobHandler:
    def __init__(self, registry, urls):
        self._registry = registry
        self._urls = urls

    async def get(self, request, name: str, digest: Digest):
        context = context_of(request, self._urls)
        if request.method == b"HEAD":
            info = await self._registry.blobs.stat(name, digest)
            return respond_head(request, 200, self._headers(digest, info.size))
        location = await self._registry.blobs.redirect_url(name, digest, context)
        if location is not None:
            return respond(request, 307, b"", None, {"Location": location, "Docker-Content-Digest": str(digest)})
        blob = await self._registry.blobs.open(name, digest, context)
        try:
            wanted = parse_range(header(request, "Range"), blob.size)
        except Unsatisfiable:
            blob.close()
            raise RangeNotSatisfiable(detail={"size": blob.size},
                                      headers={"Content-Range": f"bytes */{blob.size}"}) from None
        headers = self._headers(digest, blob.size)
        if wanted is None:
            start, length, status = 0, blob.size, 200
        else:
            start, length = wanted
            status = 206
            headers["Content-Range"] = content_range(start, length, blob.size)
            headers["Content-Length"] = str(length)
        request.setResponseCode(status)
        set_headers(request, headers)
        return StreamingBody(blob, start, length)

    @staticmethod
    def _headers(digest: Digest, size: int) -> dict[str, str]:
        return {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size),
            "Docker-Content-Digest": str(digest),
            "ETag": f'"{digest}"',
            "Accept-Ranges": "bytes",
            "Cache-Control": "max-age=31536000",
        }

    async def delete(self, request, name: str, digest: Digest):
        self._registry.check_writable()
        await self._registry.blobs.delete(name, digest, context_of(request, self._urls))
        return respond(request, 202, b"", None, {"Docker-Content-Digest": str(digest)})
