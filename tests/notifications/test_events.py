"""Events exactly as registry:2 receivers read them, and as CloudEvents."""

import json

from twisted.trial.unittest import SynchronousTestCase

from regd.notifications.events import ENVELOPE_MEDIA_TYPE, envelope, to_distribution
from regd.oci.digest import Digest
from regd.registry.context import RequestContext
from regd.registry.listener import RegistryEvent

CTX = RequestContext(request_id="req-1", addr="10.0.0.5:41234", host="registry.example:5000", method="PUT",
                     user_agent="docker/27.0", actor="alice", base_url="https://registry.example:5000")
M = Digest("sha256", "a" * 64)
L = Digest("sha256", "b" * 64)


def make(event, include_references=False):
    return to_distribution(event, now=1_700_000_000.25, source_addr="regd-host:5000", instance_id="inst-1",
                           include_references=include_references, event_id="evt-1")


def registry2_receiver(body: bytes, content_type: str) -> list[tuple]:
    """A receiver written against registry:2's documented envelope, unchanged."""
    assert content_type == "application/vnd.docker.distribution.events.v1+json"
    out = []
    for e in json.loads(body)["events"]:
        t = e["target"]
        out.append((e["id"], e["action"], t["repository"], t.get("tag"), t.get("digest"), t.get("mediaType"),
                    t.get("size"), t.get("url"), e["request"]["method"], e["actor"].get("name"),
                    e["source"]["instanceID"]))
    return out


class EventTests(SynchronousTestCase):
    def test_manifest_push_fields(self):
        event = RegistryEvent("push", "manifest", "team/app", CTX, digest=M, size=528,
                              media_type="application/vnd.oci.image.manifest.v1+json", tag="v1", references=(L,))
        self.assertEqual(make(event, include_references=True), {
            "id": "evt-1",
            "timestamp": "2023-11-14T22:13:20.25Z",
            "action": "push",
            "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": str(M), "size": 528,
                       "length": 528, "repository": "team/app",
                       "url": f"https://registry.example:5000/v2/team/app/manifests/{M}", "tag": "v1",
                       "references": [{"digest": str(L)}]},
            "request": {"id": "req-1", "addr": "10.0.0.5:41234", "host": "registry.example:5000", "method": "PUT",
                        "useragent": "docker/27.0"},
            "actor": {"name": "alice"},
            "source": {"addr": "regd-host:5000", "instanceID": "inst-1"},
        })
        self.assertNotIn("references", make(event)["target"])

    def test_blob_mount_and_tag_delete(self):
        mount = make(RegistryEvent("mount", "blob", "dst", CTX, digest=L, size=9, media_type="application/octet-stream",
                                   from_repository="src"))
        self.assertEqual(mount["target"]["fromRepository"], "src")
        self.assertEqual(mount["target"]["url"], f"https://registry.example:5000/v2/dst/blobs/{L}")
        untag = make(RegistryEvent("delete", "tag", "dst", CTX, digest=M, tag="old"))
        self.assertEqual(untag["action"], "delete")
        self.assertEqual(untag["target"], {"digest": str(M), "repository": "dst", "tag": "old"})

    def test_registry2_receiver_parses_regd_envelope(self):
        entry = make(RegistryEvent("pull", "blob", "r", CTX, digest=L, size=3, media_type="application/octet-stream"))
        body, content_type = envelope([entry], "distribution")
        self.assertEqual(content_type, ENVELOPE_MEDIA_TYPE)
        self.assertEqual(registry2_receiver(body, content_type), [
            ("evt-1", "pull", "r", None, str(L), "application/octet-stream", 3,
             f"https://registry.example:5000/v2/r/blobs/{L}", "PUT", "alice", "inst-1")])

    def test_cloudevents(self):
        entry = make(RegistryEvent("push", "manifest", "r", CTX, digest=M, size=1, media_type="x", tag="t"))
        body, content_type = envelope([entry], "cloudevents")
        self.assertEqual(content_type, "application/cloudevents-batch+json")
        [cloud] = json.loads(body)
        self.assertEqual((cloud["specversion"], cloud["id"], cloud["type"], cloud["subject"], cloud["time"]),
                         ("1.0", "evt-1", "io.regd.registry.push", f"r:t@{M}", entry["timestamp"]))
        self.assertEqual(cloud["source"], "/regd/inst-1")
        self.assertEqual(cloud["data"], entry)
