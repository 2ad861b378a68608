"""Plain urllib calls for e2e checks of a registry's HTTP API (no Twisted: the server is another process)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import attrs

MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


@attrs.frozen
class Answer:
    method: str
    url: str
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)

    def describe(self) -> str:
        """Request and response, for assertion messages."""
        head = "\n".join(f"  {k}: {v}" for k, v in self.headers.items())
        return f"{self.method} {self.url} -> {self.status}\n{head}\n  body: {self.body[:2000]!r}"


def request(method: str, url: str, *, headers: dict | None = None, data: bytes | None = None,
            timeout: float = 30) -> Answer:
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Answer(method, url, r.status, dict(r.headers.items()), r.read())
    except urllib.error.HTTPError as e:
        return Answer(method, url, e.code, dict(e.headers.items()), e.read())


def get(url: str, **kwargs) -> Answer:
    return request("GET", url, **kwargs)


def get_json(url: str, **kwargs):
    """GET expecting 200 and JSON; the assertion message shows the whole exchange."""
    answer = get(url, **kwargs)
    assert answer.status == 200, answer.describe()
    return answer.json(), answer


def manifest_digest(base_url: str, name: str, reference: str) -> str:
    answer = request("HEAD", f"{base_url}/v2/{name}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT})
    assert answer.status == 200, answer.describe()
    return answer.headers.get("Docker-Content-Digest")
