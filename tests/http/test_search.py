"""The Docker engine's v1 ping and search endpoints over real loopback sockets."""

from __future__ import annotations

import json

from twisted.trial.unittest import TestCase

from tests.support.server import RegistryServer, errors_of, header, simple_image


class SearchEndpointTests(TestCase):
    async def test_ping_says_standalone(self):
        server = RegistryServer(self)
        response, body = await server.request("GET", "/v1/_ping")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body), {"standalone": True})
        self.assertEqual(header(response, "X-Docker-Registry-Standalone"), "true")

    async def test_search_shape_order_and_paging(self):
        server = RegistryServer(self)
        for name in ["team/web-nginx", "nginx", "other/db"]:
            await server.push_manifest(name, "1", await simple_image(server, name))
        response, body = await server.request("GET", "/v1/search?q=NGINX&n=25")
        self.assertEqual(response.code, 200)
        document = json.loads(body)
        self.assertEqual([r["name"] for r in document["results"]], ["nginx", "team/web-nginx"])
        self.assertEqual((document["query"], document["num_results"], document["page_size"]), ("NGINX", 2, 25))
        self.assertEqual(set(document["results"][0]), {"name", "description", "star_count", "is_official",
                                                        "is_automated", "is_trusted"})
        response, body = await server.request("GET", "/v1/search?q=nginx&n=1&page=2")
        self.assertEqual([r["name"] for r in json.loads(body)["results"]], ["team/web-nginx"])
        response, body = await server.request("GET", "/v1/search?q=nginx&n=999999999")
        self.assertEqual((response.code, json.loads(body)["page_size"]), (200, 100))

    async def test_descriptions_from_annotation_or_label(self):
        server = RegistryServer(self)
        document = await simple_image(server, "ann/one")
        document["annotations"] = {"org.opencontainers.image.description": "<b>annotated</b> image"}
        await server.push_manifest("ann/one", "latest", document)
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "config": {"Labels": {"org.opencontainers.image.description": "labelled"}}})
        await server.push_manifest("ann/two", "v1", await simple_image(server, "ann/two", config=config.encode()))
        await server.push_manifest("ann/three", "v1", await simple_image(server, "ann/three"))
        response, body = await server.request("GET", "/v1/search?q=ann/")
        found = {r["name"]: r["description"] for r in json.loads(body)["results"]}
        self.assertEqual(found, {"ann/one": "<b>annotated</b> image", "ann/two": "labelled", "ann/three": ""})

    async def test_bad_input_is_400(self):
        server = RegistryServer(self)
        for path in ["/v1/search?q=a&n=abc", "/v1/search?q=a&n=-1", "/v1/search?q=a&page=1e9",
                     "/v1/search?q=" + "x" * 300, "/v1/search?q=%00%0a"]:
            response, body = await server.request("GET", path)
            self.assertEqual(response.code, 400, path)
            self.assertTrue(errors_of(body), path)
        response, body = await server.request("GET", "/v1/search?q=%3Cscript%3E%27%22%25")
        self.assertEqual((response.code, json.loads(body)["results"]), (200, []))

    async def test_switched_off_is_404(self):
        server = RegistryServer(self)
        server.api.search_enabled = False
        for path in ["/v1/_ping", "/v1/search?q=a"]:
            response, body = await server.request("GET", path)
            self.assertEqual((response.code, errors_of(body)), (404, ["NOT_FOUND"]), path)
