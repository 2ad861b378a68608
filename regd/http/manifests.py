# -*- test-case-name: tests.http.test_manifests -*-
"""Manifest GET/HEAD/PUT/DELETE, tag listing and the referrers API."""

from __future__ import annotations

from urllib.parse import quote

from regd.http.responses import context_of, header, query, respond, respond_head, respond_json
from regd.oci import mediatypes
from regd.oci.digest import Digest
from regd.oci.errors import DigestInvalid, ManifestUnknown, PaginationNumberInvalid, RequestTooLarge, TagInvalid
from regd.oci.reference import validate_tag


def validate_reference(reference: str) -> str:
    if ":" in reference:
        Digest.parse(reference)
    else:
        validate_tag(reference)
    return reference


def known_reference(reference: str) -> str:
    """
    For reads and deletes, a reference that is neither a tag nor a digest
    names nothing: 404 MANIFEST_UNKNOWN, as registry:2 answers. Only a PUT,
    which would create it, is told the reference itself is invalid (400).
    """
    try:
        return validate_reference(reference)
    except (DigestInvalid, TagInvalid) as invalid:
        raise ManifestUnknown(f"manifest unknown: {invalid.message}",
                              detail={"reference": reference[:256]}) from None


def page_size(request) -> int | None:
    n = query(request, "n")
    if n is None or n == "":
        return None
    try:
        return int(n)
    except ValueError:
        raise PaginationNumberInvalid(detail={"n": n[:32]}) from None


def next_link(path: str, n: int | None, last: str | None, extra: str = "") -> dict[str, str]:
    if last is None:
        return {}
    params = f"last={quote(last, safe='')}"
    if n is not None:
        params = f"n={n}&{params}"
    return {"Link": f'<{path}?{params}{extra}>; rel="next"'}


class ManifestHandler:
    def __init__(self, registry, urls):
        self._registry = registry
        self._urls = urls

    async def get(self, request, name: str, reference: str):
        known_reference(reference)
        head = request.method == b"HEAD"
        stored = await self._registry.manifests.get(name, reference, context_of(request, self._urls),
                                                    report=not head)
        accept = ",".join(v.decode("latin-1") for v in request.requestHeaders.getRawHeaders(b"Accept", []))
        if not mediatypes.negotiate(stored.media_type, accept):
            raise ManifestUnknown(
                f"manifest of type {stored.media_type} not acceptable to this client",
                detail={"mediaType": stored.media_type})
        headers = {
            "Content-Type": stored.media_type,
            "Docker-Content-Digest": str(stored.digest),
            "ETag": f'"{stored.digest}"',
        }
        if head:
            headers["Content-Length"] = str(len(stored.body))
            return respond_head(request, 200, headers)
        return respond(request, 200, stored.body, None, headers)

    async def put(self, request, name: str, reference: str):
        self._registry.check_writable()
        validate_reference(reference)
        content = request.content
        content.seek(0, 2)
        if content.tell() > mediatypes.MAX_MANIFEST_SIZE:
            raise RequestTooLarge("manifest exceeds the size limit",
                                  detail={"limit": mediatypes.MAX_MANIFEST_SIZE})
        content.seek(0)
        body = content.read()
        digest, parsed = await self._registry.manifests.put(
            name, reference, body, header(request, "Content-Type"), context_of(request, self._urls))
        headers = {
            "Location": self._urls.url(request, f"/v2/{name}/manifests/{digest}"),
            "Docker-Content-Digest": str(digest),
        }
        if parsed.subject is not None:
            headers["OCI-Subject"] = str(parsed.subject.digest)
        return respond(request, 201, b"", None, headers)

    async def delete(self, request, name: str, reference: str):
        self._registry.check_writable()
        known_reference(reference)
        await self._registry.manifests.delete(name, reference, context_of(request, self._urls))
        return respond(request, 202, b"", None, {})

    async def tags(self, request, name: str):
        n = page_size(request)
        page = await self._registry.listing.tags(name, n, query(request, "last"))
        return respond_json(request, 200, {"name": name, "tags": list(page.items)},
                            headers=next_link(f"/v2/{name}/tags/list", n, page.next_last))

    async def referrers(self, request, name: str, digest: Digest):
        artifact_type = query(request, "artifactType")
        manifests = await self._registry.manifests.referrers(name, digest, artifact_type)
        headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
        document = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": manifests}
        return respond_json(request, 200, document, mediatypes.OCI_INDEX, headers)
