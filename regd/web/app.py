# -*- test-case-name: tests.web.test_pages -*-
"""
The browsable pages under /ui/: thin Klein handlers that check what the
browser's user may see, ask the index (lists, search, activity) or the
registry (a tag's manifest, config, layers and referrers), and render a
template. Every form carries a CSRF token bound to the session cookie; every
failure is a small HTML page with a 4xx status, never a traceback.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, quote, urlsplit

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from regd.http.converters import CONVERTERS
from regd.http.responses import UrlBuilder, context_of
from regd.oci.digest import Digest
from regd.oci.errors import RegistryError
from regd.oci.reference import is_valid_name, is_valid_tag
from regd.registry.inspect import Inspector
from regd.registry.secrets import shared_secret
from regd.web import render
from regd.web.sessions import COOKIE, Session, SessionSigner

log = Logger()

MAX_TERM = 255
MAX_PAGE = 1_000_000
MAX_FORM_BYTES = 16 * 1024
MAX_DESCRIPTION = 4000
ACTIVITY_DAYS = 30
SECRET_RECHECK = 30.0  # seconds between re-reads of the stored session secret
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".svg": "image/svg+xml"}
SECURITY_HEADERS = {
    b"Content-Security-Policy": b"default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
                                b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"same-origin",
}


class PageError(Exception):
    """A failure shown to the browser as a page with this status."""

    def __init__(self, status: int, title: str, message: str = "", login: bool = False):
        super().__init__(title)
        self.status, self.title, self.message, self.login = status, title, message, login


def _app() -> Klein:
    app = Klein()
    app.url_map.converters.update(CONVERTERS)
    app.url_map.strict_slashes = False
    return app


class WebUI:
    app = _app()

    def __init__(self, registry, access, index, clock, *, settings, prefix: str = "", secret: bytes | None = None,
                 urls: UrlBuilder = UrlBuilder()):
        self.registry = registry
        self.access = access  # a regd.web.access.WebAccess
        self.index = index  # the repository index (lists, search, activity)
        self.clock = clock
        self.settings = settings  # config.ui
        self.root = prefix.rstrip("/") + "/ui"
        self.urls = urls
        self.inspector = Inspector(registry)
        self.env = render.environment()
        self._secret = secret
        self._signer: SessionSigner | None = None
        self._signer_secret = b""
        self._signer_loaded = 0.0

    def resource(self):
        return self.app.resource()

    # -- sessions --------------------------------------------------------

    async def signer(self) -> SessionSigner:
        """
        Signs with http.secret, else with the secret kept in storage, which is
        re-read now and then: instances that raced to create it converge on
        the stored one (a process-local copy is only a cache of storage).
        """
        now = self.clock.seconds()
        if self._signer is None or (self._secret is None and now - self._signer_loaded >= SECRET_RECHECK):
            secret = self._secret or await shared_secret(self.registry.driver)
            if self._signer is None or secret != self._signer_secret:
                self._signer = SessionSigner(secret, self.clock, self.settings.sessionmaxage)
                self._signer_secret = secret
            self._signer_loaded = now
        return self._signer

    async def _session(self, request) -> Session | None:
        cached = getattr(request, "_regd_session", False)
        if cached is not False:
            return cached
        session = (await self.signer()).decode(request.getCookie(COOKIE))
        request._regd_session = session
        return session

    async def _user(self, request) -> str | None:
        session = await self._session(request)
        return self.access.current(session.user) if session is not None else None

    async def _form_session(self, request) -> Session:
        """The session a form is bound to; starts an anonymous one when there is none."""
        session = await self._session(request)
        if session is None:
            session = (await self.signer()).issue(None)
            await self._set_cookie(request, session)
        return session

    async def _set_cookie(self, request, session: Session | None) -> None:
        signer = await self.signer()
        value = signer.encode(session) if session is not None else b""
        request.addCookie(COOKIE, value, path=(self.root + "/").encode("utf-8"), httpOnly=True,
                          secure=self._secure(request), sameSite="lax",
                          max_age=str(signer.max_age if session is not None else 0).encode("ascii"))
        request._regd_session = session

    def _secure(self, request) -> bool:
        if request.isSecure():
            return True
        forwarded = request.getHeader(b"x-forwarded-proto") or b""
        return self.urls.base is not None and self.urls.base.startswith("https://") \
            or forwarded.split(b",")[0].strip().lower() == b"https"

    async def _check_form(self, request) -> tuple[Session, dict[str, str]]:
        form = _read_form(request)
        session = await self._session(request)
        if not (await self.signer()).check_csrf(session, form.get("csrf")):
            raise PageError(403, "Form expired", "The form was stale or not sent by this site. "
                                                 "Go back, reload the page and try again.")
        return session, form

    # -- rendering -------------------------------------------------------

    async def page(self, request, template: str, status: int = 200, form: bool = False, **values) -> bytes:
        session = await self._session(request)
        if session is None and (form or self.access.login_supported):
            session = await self._form_session(request)  # the header's log-in/out forms need a token
        csrf = (await self.signer()).csrf_token(session) if session is not None else ""
        body = self.env.get_template(template).render(
            title=self.settings.title, root=self.root, user=self.access.current(session.user) if session else None,
            login_supported=self.access.login_supported, csrf=csrf, term=values.pop("term", ""),
            next_url=_here(request), **values).encode("utf-8")
        request.setResponseCode(status)
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body if request.method != b"HEAD" else b""

    def redirect(self, request, location: str) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"Location", location.encode("utf-8"))
        request.setHeader(b"Content-Length", b"0")
        return b""

    def pull_address(self, request) -> str:
        if self.settings.pulladdress:
            return self.settings.pulladdress
        if self.urls.base:
            return urlsplit(self.urls.base).netloc
        host = request.getHeader(b"host")
        return host.decode("ascii", "replace") if host else "localhost:5000"

    def repo_url(self, name: str) -> str:
        return f"{self.root}/r/{quote(name, safe='/')}"

    # -- access ----------------------------------------------------------

    async def _require_pull(self, request, name: str) -> str | None:
        if not is_valid_name(name):
            raise PageError(404, "Repository not found", "There is no repository by that name.")
        user = await self._user(request)
        if not self.access.may_pull(user, name):
            if user is None:
                raise PageError(401, "Log in to see this repository",
                                "Anonymous users may not pull this repository.", login=self.access.login_supported)
            raise PageError(403, "Not allowed", "You may not pull this repository.")
        return user

    def _visible(self, user):
        return lambda name: self.access.may_pull(user, name)

    def may_delete(self, user, name: str) -> bool:
        return (self.registry.delete_enabled and not self.registry.readonly
                and self.access.may_delete(user, name))

    # -- pages -----------------------------------------------------------

    @app.route("/", methods=["GET", "HEAD"])
    async def home(self, request):
        user = await self._user(request)
        sizes = self.settings.pagesize
        page = _number(request, "page")
        orgpage = _number(request, "orgpage")
        repositories = await self.index.repositories(page, sizes.repositories, self._visible(user))
        organizations = await self.index.organizations(orgpage, sizes.organizations, self._visible(user))
        return await self.page(request, "home.html", repositories=repositories, organizations=organizations,
                               anonymous_hidden=user is None and not self.access.open)

    @app.route("/search", methods=["GET", "HEAD"])
    async def search(self, request):
        user = await self._user(request)
        term = _arg(request, "q") or ""
        if len(term) > MAX_TERM or any(ord(c) < 0x20 or ord(c) == 0x7f for c in term):
            raise PageError(400, "Invalid search", f"Search for at most {MAX_TERM} printable characters.")
        results = await self.index.search(term, _number(request, "page"), self.settings.pagesize.search,
                                          self._visible(user))
        return await self.page(request, "search.html", term=term, results=results)

    @app.route("/o/<segment:organization>", methods=["GET", "HEAD"])
    async def organization(self, request, organization):
        if not is_valid_name(organization) or "/" in organization:
            raise PageError(404, "Organization not found", "There is no organization by that name.")
        user = await self._user(request)
        repositories = await self.index.repositories(_number(request, "page"), self.settings.pagesize.repositories,
                                                     self._visible(user), organization=organization)
        return await self.page(request, "organization.html", organization=organization, repositories=repositories,
                               anonymous_hidden=user is None and not self.access.open)

    @app.route("/r/<repo:name>", methods=["GET", "HEAD"])
    async def repository(self, request, name):
        user = await self._require_pull(request, name)
        summary = await self.index.repository(name, _number(request, "page"), self.settings.pagesize.tags)
        if summary is None:
            raise PageError(404, "Repository not found", "There is no repository by that name.")
        activity = await self.index.activity(name, ACTIVITY_DAYS)
        deleted = _arg(request, "deleted")
        return await self.page(request, "repository.html", repo=summary, activity=activity,
                               may_describe=self.access.is_admin(user), form=self.access.is_admin(user),
                               peak=max([0] + [max(d.pulls, d.pushes) for d in activity]),
                               address=self.pull_address(request), may_delete=self.may_delete(user, name),
                               deleted=deleted if deleted and len(deleted) <= 200 else "")

    @app.route("/r/<repo:name>/-/tags/<segment:tag>", methods=["GET", "HEAD"])
    async def tag(self, request, name, tag):
        user = await self._require_pull(request, name)
        if not is_valid_tag(tag):
            raise PageError(404, "Tag not found", "There is no tag by that name.")
        return await self._manifest_page(request, user, name, tag)

    @app.route("/r/<repo:name>/-/manifests/<segment:digest>", methods=["GET", "HEAD"])
    async def manifest(self, request, name, digest):
        user = await self._require_pull(request, name)
        return await self._manifest_page(request, user, name, str(_digest(digest)))

    async def _manifest_page(self, request, user, name: str, reference: str) -> bytes:
        details = await self.inspector.details(name, reference)
        row = await self._tag_row(name, reference) if ":" not in reference else None
        return await self.page(request, "tag.html", repo_name=name, d=details, row=row,
                               address=self.pull_address(request), may_delete=self.may_delete(user, name))

    @app.route("/r/<repo:name>/-/description", methods=["POST"])
    async def description(self, request, name):
        await self._require_pull(request, name)
        session, form = await self._check_form(request)
        if not self.access.is_admin(self.access.current(session.user)):
            raise PageError(403, "Not allowed", "Only an admin may set descriptions.",
                            login=session.user is None and self.access.login_supported)
        text = form.get("description", "").strip()
        if len(text) > MAX_DESCRIPTION:
            raise PageError(400, "Description too long", f"At most {MAX_DESCRIPTION} characters.")
        await self.index.set_description(name, text or None)
        log.info("web: {user} set the description of {name}", user=session.user or "anonymous", name=name)
        return self.redirect(request, self.repo_url(name))

    async def _tag_row(self, name: str, tag: str):
        """The index's row for C{tag} (who pushed it, when), if among the newest page of tags."""
        summary = await self.index.repository(name, 1, 100)
        for row in summary.tags.items if summary is not None else ():
            if row.tag == tag:
                return row
        return None

    @app.route("/r/<repo:name>/-/delete", methods=["GET", "HEAD", "POST"])
    async def delete(self, request, name):
        user = await self._require_pull(request, name)
        if request.method == b"POST":
            session, form = await self._check_form(request)
            user = self.access.current(session.user)
        else:
            form = {"reference": _arg(request, "reference") or ""}
        reference = form.get("reference", "")
        if ":" in reference:
            _digest(reference)
        elif not is_valid_tag(reference):
            raise PageError(400, "Nothing to delete", "Name a tag or a manifest digest to delete.")
        if not self.may_delete(user, name):
            if not self.registry.delete_enabled:
                raise PageError(405, "Deleting is off", "This registry does not allow deletes "
                                                        "(storage.delete.enabled is false).")
            if self.registry.readonly:
                raise PageError(405, "Read-only", "This registry is in read-only mode.")
            raise PageError(403, "Not allowed", "You may not delete from this repository.",
                            login=user is None and self.access.login_supported)
        if request.method != b"POST":
            return await self.page(request, "delete.html", form=True, repo_name=name, reference=reference)
        request.actor = user
        await self.registry.manifests.delete(name, reference, context_of(request, self.urls))
        log.info("web: {user} deleted {name} {reference}", user=user or "anonymous", name=name, reference=reference)
        return self.redirect(request, self.repo_url(name) + "?deleted=" + quote(reference, safe=":"))

    @app.route("/login", methods=["GET", "HEAD", "POST"])
    async def login(self, request):
        if not self.access.login_supported:
            raise PageError(404, "No log-in here", "This registry has no users to log in as from the web.")
        next_url = _safe_next(_arg(request, "next"), self.root)
        if request.method != b"POST":
            await self._form_session(request)
            return await self.page(request, "login.html", next=next_url, failed=False, username="")
        _, form = await self._check_form(request)
        next_url = _safe_next(form.get("next"), self.root)
        username = form.get("username", "")[:256]
        if await self.access.check_password(request, username, form.get("password", "")):
            await self._set_cookie(request, (await self.signer()).issue(username))
            log.info("web: {user} logged in", user=username)
            return self.redirect(request, next_url)
        return await self.page(request, "login.html", status=401, next=next_url, failed=True, username=username)

    @app.route("/logout", methods=["POST"])
    async def logout(self, request):
        await self._check_form(request)
        await self._set_cookie(request, None)
        return self.redirect(request, self.root + "/")

    @app.route("/static/<segment:filename>", methods=["GET", "HEAD"])
    def static(self, request, filename):
        extension = os.path.splitext(filename)[1]
        if extension not in _STATIC_TYPES or filename not in _static_files():
            raise PageError(404, "Not found")
        with open(os.path.join(render.STATIC, filename), "rb") as f:
            body = f.read()
        request.setHeader(b"Content-Type", _STATIC_TYPES[extension].encode("ascii"))
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Cache-Control", b"public, max-age=3600")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body if request.method != b"HEAD" else b""

    # -- errors ----------------------------------------------------------

    async def error_page(self, request, status: int, title: str, message: str = "", login: bool = False):
        try:
            return await self.page(request, "error.html", status=status, heading=title, message=message,
                                   show_login=login)
        except Exception:
            log.failure("web: rendering the error page failed")
            request.setResponseCode(status)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return title.encode("utf-8")

    @app.handle_errors(PageError)
    def page_error(self, request, failure):
        e = failure.value
        return self.error_page(request, e.status, e.title, e.message, e.login)

    @app.handle_errors(RegistryError)
    def registry_error(self, request, failure):
        e = failure.value
        status = e.status if 400 <= e.status < 500 else 503
        title = {404: "Not found", 400: "Bad request", 401: "Log in required", 403: "Not allowed",
                 405: "Not allowed here"}.get(status, "Unavailable")
        return self.error_page(request, status, title, e.message)

    @app.handle_errors(HTTPException)
    def http_error(self, request, failure):
        e = failure.value
        if isinstance(e, MethodNotAllowed):
            request.setHeader(b"Allow", ", ".join(sorted(e.valid_methods or [])).encode("ascii"))
        code = e.code if 400 <= (e.code or 0) < 500 else 400
        if 300 <= (e.code or 0) < 400:  # werkzeug's slash redirects: relative Location only
            target = urlsplit(getattr(e, "new_url", "") or self.root + "/")
            return self.redirect(request, target.path + ("?" + target.query if target.query else ""))
        titles = {404: "Page not found", 405: "Method not allowed"}
        return self.error_page(request, code, titles.get(code, "Bad request"),
                               "There is nothing at this address." if code == 404 else "")

    @app.handle_errors(Exception)
    def unexpected(self, request, failure):
        if failure.check(CancelledError):
            return b""
        log.failure("web: internal error on {path}", failure, path=request.path[:200].decode("ascii", "replace"))
        return self.error_page(request, 503, "Something went wrong", "The error was logged; try again later.")


_STATIC_CACHE: list[frozenset] = []


def _static_files() -> frozenset:
    if not _STATIC_CACHE:
        _STATIC_CACHE.append(frozenset(os.listdir(render.STATIC)))
    return _STATIC_CACHE[0]


def _arg(request, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    return values[0].decode("utf-8", "replace")


def _number(request, name: str) -> int:
    raw = _arg(request, name)
    if raw is None or raw == "":
        return 1
    if not raw.isdigit() or len(raw) > 9:
        raise PageError(400, "Bad page number", "Page numbers are whole numbers from 1.")
    return min(max(int(raw), 1), MAX_PAGE)


def _digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except RegistryError:
        raise PageError(404, "Manifest not found", "That is not a digest.") from None


def _read_form(request) -> dict[str, str]:
    kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if kind != b"application/x-www-form-urlencoded":
        raise PageError(415, "Unsupported form", "Forms must be sent as application/x-www-form-urlencoded.")
    content = request.content
    content.seek(0, 2)
    if content.tell() > MAX_FORM_BYTES:
        raise PageError(413, "Form too large")
    content.seek(0)
    try:
        fields = parse_qs(content.read().decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise PageError(400, "Bad form") from None
    return {k: v[0] for k, v in fields.items()}


def _here(request) -> str:
    path = request.uri.decode("utf-8", "replace")
    return path if len(path) <= 1024 else ""


def _safe_next(target: str | None, root: str) -> str:
    """Only a path inside the UI: never another host (an open redirect)."""
    if not target or not target.startswith(root + "/") or "//" in target or "\\" in target \
            or any(ord(c) < 0x20 for c in target):
        return root + "/"
    return target
