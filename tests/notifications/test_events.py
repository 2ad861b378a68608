"""Events exactly as registry:2 receivers read them, and as CloudEvents."""

import json

from twisted.trial.unittest import SynchronousTestCase

from regd.notifications.events import ENVELOPE_MEDIA_TYPE, envelope, source_address, to_distribution
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

    def test_cloudevents_structured_one_per_post(self):
        entry = make(RegistryEvent("push", "manifest", "r", CTX, digest=M, size=1, media_type="x", tag="t"))
        body, content_type = envelope([entry], "cloudevents")
        self.assertEqual(content_type, "application/cloudevents+json")
        cloud = json.loads(body)
        self.assertEqual((cloud["specversion"], cloud["id"], cloud["type"], cloud["subject"], cloud["time"]),
                         ("1.0", "evt-1", "io.regd.registry.push", f"r:t@{M}", entry["timestamp"]))
        self.assertEqual((cloud["source"], cloud["datacontenttype"]), ("/regd/inst-1", "application/json"))
        self.assertEqual(cloud["data"], entry)

    def test_cloudevents_batched_when_the_endpoint_batches(self):
        entry = make(RegistryEvent("push", "blob", "r", CTX, digest=L, size=1, media_type="x"))
        for entries in ([entry], [entry, dict(entry, id="evt-2")]):
            body, content_type = envelope(entries, "cloudevents", batched=True)
            self.assertEqual(content_type, "application/cloudevents-batch+json")
            self.assertEqual([c["id"] for c in json.loads(body)], [e["id"] for e in entries])

    def test_every_field_has_registry2s_json_type(self):
        """What Go's encoding/json needs to decode into registry:2's Event struct without error."""
        events = [
            make(RegistryEvent("push", "manifest", "team/app", CTX, digest=M, size=528, media_type="m", tag="v1",
                               references=(L,)), include_references=True),
            make(RegistryEvent("pull", "blob", "r", RequestContext(), digest=L, size=3, media_type="o")),
            make(RegistryEvent("mount", "blob", "r", CTX, digest=L, size=3, media_type="o", from_repository="s")),
            make(RegistryEvent("delete", "manifest", "r", CTX, digest=M)),
            make(RegistryEvent("delete", "blob", "r", CTX, digest=L)),
            make(RegistryEvent("delete", "tag", "r", CTX, tag="v1")),
        ]
        body, _ = envelope(events, "distribution")
        types = {"mediaType": str, "digest": str, "size": int, "length": int, "repository": str, "url": str,
                 "tag": str, "fromRepository": str, "references": list}
        for event in json.loads(body)["events"]:
            self.assertEqual(set(event), {"id", "timestamp", "action", "target", "request", "actor", "source"})
            self.assertIn(event["action"], ("push", "pull", "mount", "delete"))
            # Go's time.Time takes RFC 3339 with optional fraction.
            self.assertRegex(event["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
            for key, value in event["target"].items():
                self.assertIsInstance(value, types[key], key)
            self.assertTrue(set(event["request"]) <= {"id", "addr", "host", "method", "useragent"})
            self.assertTrue(all(isinstance(v, str) for v in event["request"].values()))
            self.assertTrue(set(event["actor"]) <= {"name"})
            self.assertEqual(set(event["source"]), {"addr", "instanceID"})
        self.assertEqual(json.loads(body)["events"][1]["actor"], {})  # anonymous: {} as registry:2 sends it

    def test_source_address_is_host_and_listening_port(self):
        self.assertEqual(source_address("127.0.0.1:5000", "reg1"), "reg1:5000")
        self.assertEqual(source_address(":5000", "reg1"), "reg1:5000")
        self.assertEqual(source_address("", "reg1"), "reg1")
