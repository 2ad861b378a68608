# -*- test-case-name: tests.web.test_pages -*-
"""
Where the UI sits in the resource tree: `/ui/...` goes to the web pages,
everything else to the registry API unchanged. `GET /` keeps answering load
balancers as before; only a browser (one that asks for text/html) is sent
on to /ui/.

The pages are built on the first request under /ui/: a registry that only
serves clients never loads the templates (jinja2) and the page handlers.
"""

from __future__ import annotations

from twisted.web.resource import IResource, Resource


class UIMount(Resource):
    def __init__(self, api, ui, ui_path: str = "/ui/"):
        """C{ui}: the pages' resource, or a function that builds it (called once, when first needed)."""
        super().__init__()
        self._api = api
        self._ui = ui if IResource.providedBy(ui) else None
        self._build_ui = None if self._ui is not None else ui
        self._ui_path = ui_path.encode("utf-8")

    def getChildWithDefault(self, name, request):
        if name == b"ui":
            if not request.postpath:  # /ui without the slash
                return _Redirect(self._ui_path)
            if self._ui is None:
                self._ui = self._build_ui()
            return self._ui
        if name == b"" and not request.postpath and request.method == b"GET" and _wants_html(request):
            return _Redirect(self._ui_path)
        # Hand the whole path back to the API, which routes it from the top.
        request.postpath.insert(0, request.prepath.pop())
        return self._api


def _wants_html(request) -> bool:
    accept = b",".join(request.requestHeaders.getRawHeaders(b"accept", []))
    return b"text/html" in accept.lower()


class _Redirect(Resource):
    isLeaf = True

    def __init__(self, location: bytes):
        super().__init__()
        self._location = location

    def render(self, request):
        request.setResponseCode(302)
        request.setHeader(b"Location", self._location)
        request.setHeader(b"Content-Length", b"0")
        return b""
