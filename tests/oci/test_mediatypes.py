"""Manifest parsing, validation and Accept negotiation."""

import json

from twisted.trial.unittest import SynchronousTestCase

from regd.oci import mediatypes as mt
from regd.oci.errors import ManifestInvalid

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def body(document) -> bytes:
    return json.dumps(document).encode()


def image(media_type=mt.OCI_MANIFEST, **extra):
    document = {"schemaVersion": 2, "mediaType": media_type,
                "config": {"mediaType": mt.OCI_IMAGE_CONFIG, "digest": D1, "size": 10},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D2, "size": 20}]}
    document.update(extra)
    return document


class ParseTests(SynchronousTestCase):
    def test_oci_manifest(self):
        parsed = mt.parse_manifest(body(image()), mt.OCI_MANIFEST)
        self.assertEqual(parsed.media_type, mt.OCI_MANIFEST)
        self.assertEqual([str(d.digest) for d in parsed.blobs], [D1, D2])
        self.assertFalse(parsed.is_index)
        self.assertEqual(parsed.referrer_artifact_type(), mt.OCI_IMAGE_CONFIG)

    def test_docker_schema2_and_list(self):
        self.assertEqual(mt.parse_manifest(body(image(mt.DOCKER_MANIFEST)), mt.DOCKER_MANIFEST).media_type,
                         mt.DOCKER_MANIFEST)
        listing = {"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST_LIST,
                   "manifests": [{"mediaType": mt.DOCKER_MANIFEST, "digest": D1, "size": 5,
                                  "platform": {"architecture": "amd64", "os": "linux"}}]}
        parsed = mt.parse_manifest(body(listing), None)
        self.assertTrue(parsed.is_index)
        self.assertEqual([str(d.digest) for d in parsed.manifests], [D1])

    def test_artifact_with_subject(self):
        artifact = image(artifactType="application/spdx+json",
                         subject={"mediaType": mt.OCI_MANIFEST, "digest": D1, "size": 3})
        parsed = mt.parse_manifest(body(artifact), mt.OCI_MANIFEST)
        self.assertEqual(str(parsed.subject.digest), D1)
        self.assertEqual(parsed.referrer_artifact_type(), "application/spdx+json")

    def test_type_comes_from_content_type_or_media_type_never_from_structure(self):
        document = image()
        del document["mediaType"]
        # The Content-Type names it: accepted, as the spec and registry:2 do.
        self.assertEqual(mt.parse_manifest(body(document), mt.OCI_MANIFEST).media_type, mt.OCI_MANIFEST)
        self.assertEqual(mt.detect_media_type({"manifests": []}, mt.OCI_INDEX), mt.OCI_INDEX)
        # A generic or missing Content-Type with no mediaType: refused, not guessed.
        for declared in (None, "application/json", "application/octet-stream"):
            with self.assertRaises(mt.ManifestInvalid) as caught:
                mt.parse_manifest(body(document), declared)
            self.assertIn("Content-Type", caught.exception.message)
        with self.assertRaises(mt.ManifestInvalid):
            mt.detect_media_type({"manifests": []}, "application/json")
        # mediaType inside is enough when the Content-Type is generic.
        document["mediaType"] = mt.OCI_MANIFEST
        self.assertEqual(mt.parse_manifest(body(document), "application/json").media_type, mt.OCI_MANIFEST)

    def test_foreign_layer(self):
        document = image(mt.DOCKER_MANIFEST)
        document["layers"][0].update(mediaType="application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                                     urls=["https://example.com/layer"])
        parsed = mt.parse_manifest(body(document), mt.DOCKER_MANIFEST)
        self.assertTrue(parsed.layers[0].non_distributable)
        self.assertEqual(parsed.layers[0].urls, ("https://example.com/layer",))

    def test_schema1_refused_clearly(self):
        with self.assertRaises(mt.ManifestSchemaUnsupported) as caught:
            mt.parse_manifest(body({"schemaVersion": 1, "name": "x", "tag": "y"}), mt.DOCKER_SCHEMA1_SIGNED)
        self.assertEqual(caught.exception.status, 400)
        self.assertIn("schema version 1", caught.exception.message)

    def test_invalid(self):
        no_layers = image()
        del no_layers["layers"]
        bad_digest = image()
        bad_digest["layers"][0]["digest"] = "sha256:xyz"
        negative = image()
        negative["config"]["size"] = -1
        cases = [
            (b"{oops", mt.OCI_MANIFEST),
            (b"[1]", mt.OCI_MANIFEST),
            (body(no_layers), mt.OCI_MANIFEST),
            (body(bad_digest), mt.OCI_MANIFEST),
            (body(negative), mt.OCI_MANIFEST),
            (body(image()), mt.DOCKER_MANIFEST),  # Content-Type contradicts mediaType
            (body({"schemaVersion": 2, "mediaType": mt.OCI_INDEX}), mt.OCI_INDEX),
            (body(image(schemaVersion=3)), mt.OCI_MANIFEST),
            (b'{"schemaVersion": 2}' + b" " * mt.MAX_MANIFEST_SIZE, mt.OCI_MANIFEST),
            (body({"schemaVersion": 2, "mediaType": "text/plain"}), "text/plain"),
        ]
        for raw, content_type in cases:
            self.assertRaises(ManifestInvalid, mt.parse_manifest, raw, content_type)


class NegotiateTests(SynchronousTestCase):
    def test_negotiation(self):
        self.assertTrue(mt.negotiate(mt.OCI_MANIFEST, None))
        self.assertTrue(mt.negotiate(mt.OCI_MANIFEST, "*/*"))
        self.assertTrue(mt.negotiate(mt.OCI_MANIFEST, f"{mt.DOCKER_MANIFEST}, {mt.OCI_MANIFEST};q=0.5"))
        self.assertFalse(mt.negotiate(mt.OCI_MANIFEST, mt.DOCKER_MANIFEST))
        self.assertFalse(mt.negotiate(mt.OCI_INDEX, f"{mt.OCI_MANIFEST},{mt.DOCKER_MANIFEST}"))
        self.assertTrue(mt.negotiate(mt.DOCKER_MANIFEST, "application/json"))
