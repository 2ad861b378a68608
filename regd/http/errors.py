# -*- test-case-name: tests.http.test_api -*-
"""
The one place domain failures become HTTP responses, in the spec's JSON
error format. Nothing internal (paths, tracebacks) ever reaches a client.
"""

from __future__ import annotations

import errno

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from urllib.parse import urlsplit

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from regd.oci.errors import MethodNotAllowed as MethodNotAllowedError
from regd.oci.errors import NotFound as NotFoundError
from regd.oci.errors import InsufficientStorage, RegistryError, Unavailable
from regd.http.responses import JSON, respond

log = Logger()


def render_registry_error(request, error: RegistryError) -> bytes:
    return respond(request, error.status, error.body(), JSON, error.headers)


def storage_failure(request, error: OSError) -> RegistryError:
    """
    A storage failure while serving a request: one log line (the cause is the
    machine's, not a bug: no traceback), counted in regd_storage_errors, and
    the error the client shows: 507 when the disk or quota is full, else 503.
    """
    log.error("storage error on {method} {path}: {error}", method=request.method.decode("ascii", "replace"),
              path=request.path.decode("ascii", "replace")[:200], error=_describe(error))
    metrics = getattr(getattr(request, "site", None), "metrics", None)
    if metrics is not None:
        metrics.storage_error(request)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage()
    return Unavailable("storage error; see the registry's log")


def _describe(error: OSError) -> str:
    """The error without the file name (which could be a temp path nobody needs)."""
    if error.errno is not None:
        return f"[Errno {error.errno}] {error.strerror or errno.errorcode.get(error.errno, '')}"
    return str(error)


def install_error_handlers(app) -> None:
    """Register handlers on a Klein app bound to instances, most specific first."""

    @app.handle_errors(RegistryError)
    def registry_error(_api, request, failure):
        return render_registry_error(request, failure.value)

    @app.handle_errors(HTTPException)
    def http_error(_api, request, failure):
        if isinstance(failure.value, RequestRedirect):
            # `/v2//_catalog`: a relative Location, and the Host never echoed into a body.
            target = urlsplit(failure.value.new_url)
            location = target.path + ("?" + target.query if target.query else "")
            return respond(request, failure.value.code, b"", None, {"Location": location})
        if isinstance(failure.value, MethodNotAllowed):
            error = MethodNotAllowedError(detail={"method": request.method.decode("ascii", "replace")})
            allowed = failure.value.valid_methods or []
            if allowed:
                error.headers["Allow"] = ", ".join(sorted(allowed))
        elif isinstance(failure.value, NotFound):
            error = NotFoundError()
        else:
            error = RegistryError(failure.value.description or "request error", status=failure.value.code)
            error.code = "UNSUPPORTED" if failure.value.code == 405 else "UNKNOWN"
        return render_registry_error(request, error)

    @app.handle_errors(Exception)
    def unexpected(_api, request, failure):
        if failure.check(CancelledError):
            return b""
        if failure.check(OSError):
            return render_registry_error(request, storage_failure(request, failure.value))
        log.failure("internal error handling {method} {path}", failure,
                    method=request.method.decode("ascii", "replace"),
                    path=request.path.decode("ascii", "replace"))
        error = RegistryError("internal error; see the registry's log")
        return render_registry_error(request, error)
