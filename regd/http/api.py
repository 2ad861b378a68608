# -*- test-case-name: tests.http.test_api -*-
"""
The route table of the Distribution API. Each route validates the names in
its URL and hands over to a handler; handlers call the registry service.
"""

from __future__ import annotations

from klein import Klein

from regd.http import access
from regd.http.access import OpenAccess
from regd.http.blobs import BlobHandler
from regd.http.converters import CONVERTERS
from regd.http.errors import install_error_handlers
from regd.http.search import SearchHandler
from regd.http.manifests import ManifestHandler, page_size, next_link
from regd.http.responses import UrlBuilder, query, respond, respond_json
from regd.http.uploads import UploadHandler
from regd.oci.digest import Digest
from regd.oci.errors import MethodNotAllowed as MethodNotAllowedError
from regd.oci.errors import NotFound as NotFoundError
from regd.oci.reference import validate_name

_BLOB_METHODS = ["GET", "HEAD", "DELETE"]
_MANIFEST_METHODS = ["GET", "HEAD", "PUT", "DELETE"]
_UPLOAD_METHODS = ["GET", "PATCH", "PUT", "DELETE"]
_UPLOAD_HANDLERS = {b"GET": "status", b"PATCH": "patch", b"PUT": "put", b"DELETE": "cancel"}


def _app() -> Klein:
    app = Klein()
    # Converters must be known before the first route that uses them.
    app.url_map.converters.update(CONVERTERS)
    app.url_map.strict_slashes = False
    return app


class RegistryAPI:
    """Klein app bound per instance (state lives in the object, not globals)."""

    app = _app()

    def __init__(self, registry, urls: UrlBuilder = UrlBuilder(), access_controller=None, token_issuer=None):
        self.registry = registry
        self.urls = urls
        self.access = access_controller or OpenAccess()
        self.token_issuer = token_issuer
        self.health = None  # a HealthService; / answers 503 while a check fails
        self.search_enabled = True  # the config's search.enabled: /v1/ answers 404 when off
        self.blobs = BlobHandler(registry, urls)
        self.uploads = UploadHandler(registry, urls)
        self.manifests = ManifestHandler(registry, urls)
        self.searching = SearchHandler(registry)

    def resource(self):
        return self.app.resource()

    async def _authorize(self, request, *scopes):
        grant = await self.access.authorize(request, list(scopes))
        request.actor = grant.actor
        return grant

    @app.route("/", methods=["GET", "HEAD"])
    def root(self, request):
        """Load-balancer health check."""
        healthy = self.health is None or self.health.healthy
        return respond(request, 200 if healthy else 503, b"", None, {})

    @app.route("/auth/token", methods=["GET"])
    async def token(self, request):
        """The built-in token issuer, when auth.token.builtin is configured."""
        if self.token_issuer is None:
            raise NotFoundError()
        return await self.token_issuer.handle(request)

    @app.route("/v2/", methods=["GET", "HEAD"])
    async def base(self, request):
        await self._authorize(request)
        return respond_json(request, 200, {})

    @app.route("/v2/_catalog", methods=["GET"])
    async def catalog(self, request):
        grant = await self._authorize(request, access.CATALOG)
        n = page_size(request)
        page = await self.registry.listing.catalog(n, query(request, "last"), grant.may_pull)
        return respond_json(request, 200, {"repositories": list(page.items)},
                            headers=next_link("/v2/_catalog", n, page.next_last))

    @app.route("/v1/_ping", methods=["GET", "HEAD"])
    def v1_ping(self, request):
        """The Docker engine pings this before its search call."""
        if not self.search_enabled or self.registry.index is None:
            raise NotFoundError()
        return self.searching.ping(request)

    @app.route("/v1/search", methods=["GET"])
    async def v1_search(self, request):
        if not self.search_enabled or self.registry.index is None:
            raise NotFoundError()
        grant = await self._authorize(request, access.CATALOG)
        return await self.searching.search(request, grant.may_pull)

    @app.route("/v2/<repo:name>/tags/list", methods=["GET"])
    async def tags(self, request, name):
        await self._authorize(request, access.repository(validate_name(name), "pull"))
        return await self.manifests.tags(request, name)

    @app.route("/v2/<repo:name>/manifests/<segment:reference>", methods=_MANIFEST_METHODS)
    async def manifest(self, request, name, reference):
        validate_name(name)
        method = request.method
        if method in (b"GET", b"HEAD"):
            await self._authorize(request, access.repository(name, "pull"))
            return await self.manifests.get(request, name, reference)
        if method == b"PUT":
            await self._authorize(request, access.repository(name, "pull", "push"))
            return await self.manifests.put(request, name, reference)
        await self._authorize(request, access.repository(name, "delete"))
        return await self.manifests.delete(request, name, reference)

    @app.route("/v2/<repo:name>/blobs/uploads/", methods=["POST"])
    async def upload_start(self, request, name):
        grant = await self._authorize(request, access.repository(validate_name(name), "pull", "push"))
        source = query(request, "from")
        if source is not None and not grant.may_pull(source):
            # Mounting reads the source: without pull there it falls back to an upload.
            request.args.pop(b"from", None)
        return await self.uploads.start(request, name)

    @app.route("/v2/<repo:name>/blobs/uploads/<segment:upload_id>", methods=_UPLOAD_METHODS)
    async def upload(self, request, name, upload_id):
        if request.method not in _UPLOAD_HANDLERS:
            # werkzeug adds HEAD to every GET rule; the spec defines no HEAD on an upload.
            error = MethodNotAllowedError(detail={"method": request.method.decode("ascii", "replace")})
            error.headers["Allow"] = ", ".join(_UPLOAD_METHODS)
            raise error
        await self._authorize(request, access.repository(validate_name(name), "pull", "push"))
        handler = getattr(self.uploads, _UPLOAD_HANDLERS[request.method])
        return await handler(request, name, upload_id)

    @app.route("/v2/<repo:name>/blobs/<segment:digest>", methods=_BLOB_METHODS)
    async def blob(self, request, name, digest):
        validate_name(name)
        parsed = Digest.parse(digest)
        if request.method == b"DELETE":
            await self._authorize(request, access.repository(name, "delete"))
            return await self.blobs.delete(request, name, parsed)
        await self._authorize(request, access.repository(name, "pull"))
        return await self.blobs.get(request, name, parsed)

    @app.route("/v2/<repo:name>/referrers/<segment:digest>", methods=["GET"])
    async def referrers(self, request, name, digest):
        await self._authorize(request, access.repository(validate_name(name), "pull"))
        return await self.manifests.referrers(request, name, Digest.parse(digest))

    install_error_handlers(app)
