# -*- test-case-name: tests.oci.test_errors -*-
"""
The registry's error vocabulary.

Every failure a client can cause is a L{RegistryError} carrying the spec's
error code and HTTP status, so that exactly one place (the HTTP error
handler) turns domain failures into the spec's JSON error body.
"""

from __future__ import annotations

import json
from typing import Any


class RegistryError(Exception):
    """A failure reported to the client in the spec's JSON error format."""

    code = "UNKNOWN"
    status = 500
    message = "unknown error"

    def __init__(self, message: str | None = None, detail: Any = None,
                 status: int | None = None, headers: dict[str, str] | None = None):
        self.message = message if message is not None else type(self).message
        self.detail = detail
        if status is not None:
            self.status = status
        self.headers = dict(headers or {})
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return error

    def body(self) -> bytes:
        return render_errors([self])


def render_errors(errors: list[RegistryError]) -> bytes:
    return json.dumps({"errors": [e.to_dict() for e in errors]}).encode("utf-8")


def _error(name: str, code: str, status: int, message: str) -> type[RegistryError]:
    return type(name, (RegistryError,), {"code": code, "status": status, "message": message})


BlobUnknown = _error("BlobUnknown", "BLOB_UNKNOWN", 404, "blob unknown to registry")
BlobUploadInvalid = _error("BlobUploadInvalid", "BLOB_UPLOAD_INVALID", 400, "blob upload invalid")
BlobUploadUnknown = _error("BlobUploadUnknown", "BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry")
DigestInvalid = _error("DigestInvalid", "DIGEST_INVALID", 400, "provided digest did not match uploaded content")
ManifestBlobUnknown = _error("ManifestBlobUnknown", "MANIFEST_BLOB_UNKNOWN", 400, "blob unknown to registry")
ManifestInvalid = _error("ManifestInvalid", "MANIFEST_INVALID", 400, "manifest invalid")
ManifestUnknown = _error("ManifestUnknown", "MANIFEST_UNKNOWN", 404, "manifest unknown")
ManifestUnverified = _error("ManifestUnverified", "MANIFEST_UNVERIFIED", 400, "manifest failed signature verification")
NameInvalid = _error("NameInvalid", "NAME_INVALID", 400, "invalid repository name")
NameUnknown = _error("NameUnknown", "NAME_UNKNOWN", 404, "repository name not known to registry")
PaginationNumberInvalid = _error("PaginationNumberInvalid", "PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested")
RangeInvalid = _error("RangeInvalid", "RANGE_INVALID", 416, "invalid content range")
SizeInvalid = _error("SizeInvalid", "SIZE_INVALID", 400, "provided length did not match content length")
TagInvalid = _error("TagInvalid", "TAG_INVALID", 400, "manifest tag did not match URI")
Unauthorized = _error("Unauthorized", "UNAUTHORIZED", 401, "authentication required")
Denied = _error("Denied", "DENIED", 403, "requested access to the resource is denied")
Unsupported = _error("Unsupported", "UNSUPPORTED", 405, "The operation is unsupported.")
TooManyRequests = _error("TooManyRequests", "TOOMANYREQUESTS", 429, "too many requests")
Unavailable = _error("Unavailable", "UNAVAILABLE", 503, "service unavailable")
# The disk (or quota) is full: 507 as WebDAV defines it; docker and podman print the status line of a 5xx.
InsufficientStorage = _error("InsufficientStorage", "UNKNOWN", 507,
                             "insufficient storage: the registry has no space left; nothing was stored")
MethodNotAllowed = _error("MethodNotAllowed", "UNSUPPORTED", 405, "method not allowed")
NotFound = _error("NotFound", "NOT_FOUND", 404, "not found")
RequestTooLarge = _error("RequestTooLarge", "SIZE_INVALID", 413, "request entity too large")
ReadOnly = _error("ReadOnly", "UNSUPPORTED", 405, "registry is in read-only mode")
