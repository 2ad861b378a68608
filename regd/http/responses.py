# -*- test-case-name: tests.http.test_api -*-
"""
Writing responses: every body gets an explicit Content-Length (otherwise
HTTP/1.1 falls back to chunked encoding), and Location headers are built in
one place so proxies and relative URLs are honoured everywhere.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import attrs

from regd.registry.context import RequestContext

# A DNS name or an IP literal with an optional port (the Host check of regd.http.site).
_VALID_HOST = re.compile(rb"(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")

JSON = "application/json"


def header(request, name: str) -> str | None:
    # Asked by bytes: asked by str, twisted.web decodes values as UTF-8 and fails on other bytes.
    value = request.getHeader(name.encode("latin-1"))
    if value is None:
        return None
    return value.decode("latin-1") if isinstance(value, bytes) else value


def respond(request, status: int, body: bytes = b"", content_type: str | None = None,
            headers: dict[str, str] | None = None) -> bytes:
    request.setResponseCode(status)
    if content_type:
        request.setHeader(b"Content-Type", content_type.encode("latin-1"))
    set_headers(request, headers or {})
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def respond_head(request, status: int, headers: dict[str, str]) -> bytes:
    """Headers only, with the Content-Length of the body a GET would send."""
    request.setResponseCode(status)
    set_headers(request, headers)
    return b""


def set_headers(request, headers: dict[str, str]) -> None:
    for name, value in headers.items():
        request.setHeader(name.encode("latin-1"), str(value).encode("latin-1"))


def respond_json(request, status: int, document: Any, content_type: str = JSON,
                 headers: dict[str, str] | None = None) -> bytes:
    body = json.dumps(document, separators=(",", ":")).encode("utf-8")
    return respond(request, status, body, content_type, headers)


def query(request, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    return values[0].decode("utf-8", "replace")


@attrs.frozen
class UrlBuilder:
    """
    Absolute (or relative) URLs for Location headers.

    Precedence: configured http.host, then X-Forwarded-Proto/Host from a
    proxy, then the request's Host header.
    """

    relative: bool = False
    base: str | None = None
    # http.prefix without its trailing slash, e.g. "/my/registry".
    prefix: str = ""

    def base_url(self, request) -> str:
        if self.base:
            return self.base.rstrip("/")
        forwarded_proto = header(request, "X-Forwarded-Proto")
        forwarded_host = header(request, "X-Forwarded-Host")
        proto = (forwarded_proto.split(",")[0].strip().lower() if forwarded_proto else None)
        if proto not in ("http", "https"):  # anything else is not a scheme a client can follow
            proto = "https" if request.isSecure() else "http"
        host = forwarded_host.split(",")[0].strip() if forwarded_host else None
        if not host or not _VALID_HOST.fullmatch(host.encode("latin-1")):
            host = header(request, "Host")
        if not host:
            address = request.getHost()
            host = f"{address.host}:{address.port}"
        return f"{proto}://{host}"

    def url(self, request, path: str) -> str:
        path = self.prefix + quote(path, safe="/:@=&?")
        if self.relative:
            return path
        return self.base_url(request) + path


def context_of(request, urls: UrlBuilder) -> RequestContext:
    peer = request.getClientAddress()
    return RequestContext(
        request_id=getattr(request, "request_id", ""),
        addr=f"{getattr(peer, 'host', '')}:{getattr(peer, 'port', '')}",
        host=header(request, "Host") or "",
        method=request.method.decode("ascii", "replace"),
        user_agent=header(request, "User-Agent") or "",
        actor=getattr(request, "actor", None),
        base_url=urls.base_url(request),
    )
