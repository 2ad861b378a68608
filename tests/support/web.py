"""The web UI on a real RegdSite for tests: registry API + /ui/ on 127.0.0.1, and a small page client."""

from __future__ import annotations

import re
from urllib.parse import urlencode

from http.cookiejar import CookieJar

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool

from regd.config import UIConfig
from regd.index.service import RepositoryIndex
from regd.storage.threads import inline_runner
from regd.http.responses import UrlBuilder
from regd.web.access import web_access
from regd.web.app import WebUI
from regd.web.mount import UIMount
from tests.support.server import RegistryServer

SECRET = b"0123456789abcdef0123456789abcdef"


class WebServer(RegistryServer):
    """A RegistryServer whose site also serves the UI, over the given index."""

    def __init__(self, testcase, *, access=None, issuer=None, settings=UIConfig(), clock=reactor,
                 secret=SECRET, admins=frozenset(), **kwargs):
        super().__init__(testcase, access=access, **kwargs)
        index = getattr(self.registry, "index", None)
        if index is None:  # RegistryServer may already have built one
            index = RepositoryIndex(self.driver, self.registry.manifests, ":memory:", inline_runner, clock)
            testcase.successResultOf(index.open())
            testcase.addCleanup(index.close)
            self.registry.add_listener(index)
        self.index = index
        self.ui = WebUI(self.registry, web_access(access, issuer, admins), index, clock, settings=settings,
                        secret=secret, urls=UrlBuilder())
        self.site.resource = UIMount(self.api.resource(), self.ui.resource())
        self.cookies: dict[str, str] = {}
        # Cookies are kept by hand (self.cookies), so tests can drop or forge them.
        self.http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)),
                               cookiejar=_NoCookies())

    async def page(self, path: str, *, method: str = "GET", form: dict | None = None, headers=None,
                   keep_cookies: bool = True):
        """(response, text); remembers cookies like a browser; never follows redirects."""
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form).encode()
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        response = await self.http.request(method, self.url(path), data=body, headers=headers, allow_redirects=False)
        text = (await treq.content(response)).decode("utf-8", "replace")
        if keep_cookies:
            for raw in response.headers.getRawHeaders("Set-Cookie", []):
                name, _, rest = raw.partition("=")
                value = rest.split(";", 1)[0]
                if value:
                    self.cookies[name] = value
                else:
                    self.cookies.pop(name, None)
        return response, text


class _NoCookies(CookieJar):
    def extract_cookies(self, response, request):
        pass


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]*)"', html)
    assert match, "no CSRF field in the page"
    return match.group(1)
