"""A real regd HTTP server on 127.0.0.1 for tests, and a small client for it."""

from __future__ import annotations

import hashlib
import json

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool

from regd.http.api import RegistryAPI
from regd.http.responses import UrlBuilder
from regd.http.site import RegdSite
from regd.registry.service import Registry
from regd.storage.filesystem import FilesystemDriver
from regd.storage.threads import inline_runner


class RecordingListener:
    def __init__(self):
        self.events = []

    def registry_event(self, event):
        self.events.append(event)

    def actions(self):
        return [(e.action, e.kind, e.repository) for e in self.events]


class RegistryServer:
    """Starts a RegdSite over a filesystem driver; stops everything on test cleanup."""

    def __init__(self, testcase, *, spool_threshold=1024, max_body_size=0, urls=None, access=None,
                 index=True, driver=None, root=None, **registry_kwargs):
        self.root = root or testcase.mktemp()
        testcase.addCleanup(self._assert_no_spools_left, testcase)
        self.driver = driver if driver is not None else FilesystemDriver(self.root, inline_runner)
        registry_kwargs.setdefault("delete_enabled", True)
        self.listener = RecordingListener()
        self.registry = Registry(self.driver, reactor, listeners=[self.listener], **registry_kwargs)
        if index:
            from regd.index.service import RepositoryIndex
            self.registry.index = RepositoryIndex(self.driver, self.registry.manifests, ":memory:",
                                                  inline_runner, reactor)
            self.registry.index.open()
            self.registry.add_listener(self.registry.index)
            testcase.addCleanup(self.registry.index.close)
        self.api = RegistryAPI(self.registry, urls or UrlBuilder(), access)
        self.site = RegdSite(self.api.resource(), self.registry.new_spool, upload_sink=self.registry.upload_sink,
                             credentials_required=access is not None, spool_threshold=spool_threshold, max_body_size=max_body_size)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        testcase.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))

    def _assert_no_spools_left(self, testcase):
        """Every body spool must be adopted or deleted once its request ended."""
        import os
        spool_dir = os.path.join(self.root, "regd", "spool")
        left = os.listdir(spool_dir) if os.path.isdir(spool_dir) else []
        testcase.assertEqual(left, [], "spool files left behind")

    def url(self, path: str) -> str:
        return path if path.startswith("http") else self.base + path

    async def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        """Returns (response, body bytes)."""
        response = await self.http.request(method, self.url(path), data=body, headers=headers or {})
        content = await treq.content(response)
        return response, content

    async def raw_head(self, path: str) -> tuple[int, dict[str, str]]:
        """HEAD with http.client (twisted's Agent hides Content-Length on HEAD)."""
        import http.client

        from twisted.internet import threads

        def head():
            connection = http.client.HTTPConnection("127.0.0.1", self.port.getHost().port, timeout=10)
            try:
                connection.request("HEAD", path)
                response = connection.getresponse()
                response.read()
                return response.status, {k.lower(): v for k, v in response.getheaders()}
            finally:
                connection.close()

        return await threads.deferToThread(head)

    async def push_blob(self, name: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        response, _ = await self.request("POST", f"/v2/{name}/blobs/uploads/")
        assert response.code == 202, response.code
        location = response.headers.getRawHeaders("Location")[0]
        sep = "&" if "?" in location else "?"
        response, body = await self.request("PUT", f"{location}{sep}digest={digest}", data)
        assert response.code == 201, (response.code, body)
        return digest

    async def push_manifest(self, name: str, reference: str, document: dict,
                            media_type="application/vnd.oci.image.manifest.v1+json"):
        body = json.dumps(document).encode()
        response, content = await self.request("PUT", f"/v2/{name}/manifests/{reference}", body,
                                               {"Content-Type": media_type})
        return response, content, body


def header(response, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


def errors_of(body: bytes) -> list[str]:
    return [e["code"] for e in json.loads(body)["errors"]]


async def simple_image(server: RegistryServer, name: str, layer: bytes = b"layer-bytes" * 100,
                       config: bytes = b'{"architecture":"amd64","os":"linux"}',
                       media_type="application/vnd.oci.image.manifest.v1+json"):
    """Push config + one layer; return the manifest document (not yet pushed)."""
    config_digest = await server.push_blob(name, config)
    layer_digest = await server.push_blob(name, layer)
    oci = media_type.startswith("application/vnd.oci")
    return {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json" if oci else
                   "application/vnd.docker.container.image.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip" if oci else
                    "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": layer_digest, "size": len(layer)}],
    }


def raw_exchange(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One blocking request over http.client (run it in a thread); returns (status, body)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()
