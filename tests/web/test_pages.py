"""The web UI's pages on a real site: escaping, bad input, access control, CSRF, cookies, delete."""

from __future__ import annotations

import json
import os
from twisted.trial.unittest import TestCase

from regd.config import UIConfig, UIPageSizes
from regd.http.htpasswd import HtpasswdAccess
from regd.storage.threads import inline_runner
from tests.http.test_htpasswd import write_htpasswd
from regd.oci.digest import Digest
from regd.web.access import web_access
from tests.support.indexing import context, push_index, put_blob
from tests.support.server import header, simple_image
from tests.support.web import WebServer, csrf_of

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


async def push_image(server, name, tag, labels=None, annotations=None):
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["A=1"],
                                    "ExposedPorts": {"8080/tcp": {}}, "Labels": labels or {}},
                         "history": [{"created_by": "COPY app /bin/app"}]}).encode()
    document = await simple_image(server, name, config=config, layer=f"layer of {name}:{tag}".encode() * 50)
    if annotations:
        document["annotations"] = annotations
    response, body, _ = await server.push_manifest(name, tag, document)
    assert response.code == 201, body
    return document


class OpenRegistryPages(TestCase):
    """No auth section: everyone may browse and (with deletes on) delete."""

    def setUp(self):
        self.server = WebServer(self)

    async def test_pages_escape_everything_that_came_from_a_push(self):
        await push_image(self.server, "library/evil", "v1", labels={"org.opencontainers.image.description": HOSTILE,
                                                                     "x": HOSTILE},
                         annotations={"note": HOSTILE})
        await push_image(self.server, "library/admin", "v1")
        await self.server.index.set_description("library/admin", HOSTILE)
        for path in ("/ui/", "/ui/search?q=evil", "/ui/r/library/evil", "/ui/r/library/evil/-/tags/v1",
                     "/ui/search?q=" + HOSTILE, "/ui/r/library/admin", "/ui/search?q=onerror"):
            response, html = await self.server.page(path)
            self.assertEqual(response.code, 200, path)
            self.assertNotIn("<script>alert", html, path)
            self.assertNotIn("<img src=x", html, path)
        self.assertIn("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;", html)
        response, html = await self.server.page("/ui/r/library/evil/-/tags/v1")
        self.assertEqual(html.count("&lt;script&gt;"), 5)  # description, 2 labels, annotation, manifest JSON
        self.assertIn("default-src 'none'", header(response, "Content-Security-Policy"))

    async def test_tag_page_shows_config_layers_and_pull_commands(self):
        await push_image(self.server, "team/app", "1.0")
        response, html = await self.server.page("/ui/r/team/app/-/tags/1.0", headers={"Host": "reg.example:5000"})
        self.assertEqual(response.code, 200)
        for expected in ("docker pull reg.example:5000/team/app:1.0", "podman pull reg.example:5000/team/app:1.0",
                         '["/bin/app"]', "8080/tcp", "A=1", "COPY app /bin/app", "Layers"):
            self.assertIn(expected, html)

    async def test_index_platforms_and_referrers(self):
        registry = self.server.registry
        digest = await push_index(registry, "multi/app", "v1", [("linux", "amd64"), ("linux", "arm64")])
        artifact = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "artifactType": "application/vnd.example.sbom+json",
                    "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                               "digest": str(await put_blob(registry, "multi/app", b"{}")), "size": 2},
                    "layers": [], "subject": {"mediaType": "application/vnd.oci.image.index.v1+json",
                                              "digest": str(digest), "size": 1}}
        body = json.dumps(artifact).encode()
        await registry.manifests.put("multi/app", str(Digest.of(body)), body, None, context())
        response, html = await self.server.page("/ui/r/multi/app/-/tags/v1")
        self.assertEqual(response.code, 200)
        self.assertIn("linux/amd64", html)
        self.assertIn("linux/arm64", html)
        self.assertIn("application/vnd.example.sbom+json", html)
        response, html = await self.server.page("/ui/r/multi/app")
        self.assertIn("linux/amd64, linux/arm64", html)
        response, html = await self.server.page(f"/ui/r/multi/app/-/manifests/{Digest.of(body)}")
        self.assertEqual(response.code, 200)
        self.assertIn(f"/ui/r/multi/app/-/manifests/{digest}", html)  # its subject

    async def test_repository_and_home_pages(self):
        await push_image(self.server, "team/app", "1.0")
        await push_image(self.server, "team/app", "2.0")
        response, html = await self.server.page("/ui/")
        self.assertIn('href="/ui/r/team/app"', html)
        self.assertIn("team", html)
        response, html = await self.server.page("/ui/r/team/app")
        self.assertEqual(response.code, 200)
        self.assertIn("/ui/r/team/app/-/tags/2.0", html)
        self.assertIn("docker pull", html)
        await push_image(self.server, "other/thing", "1")
        response, html = await self.server.page("/ui/o/team")
        self.assertEqual(response.code, 200)
        self.assertIn('href="/ui/r/team/app"', html)
        self.assertNotIn("other/thing", html)
        for bad in ("/ui/o/Team", "/ui/o/a%2Fb", "/ui/o/_x", "/ui/o/team?page=x"):
            response, _ = await self.server.page(bad)
            self.assertIn(response.code, (400, 404), bad)

    async def test_bad_input_gets_clean_4xx_pages(self):
        await push_image(self.server, "team/app", "1.0")
        cases = {
            "/ui/nope": 404, "/ui/r/NOT_VALID": 404, "/ui/r/team/app/-/tags/" + "x" * 200: 404,
            "/ui/r/team/app/-/tags/missing": 404, "/ui/r/team/app/-/manifests/sha256:zz": 404,
            "/ui/r/team/app/-/manifests/sha256:" + "0" * 64: 404, "/ui/r/nobody/here": 404,
            "/ui/?page=abc": 400, "/ui/?page=-1": 400, "/ui/?page=99999999999999": 400,
            "/ui/search?q=" + "a" * 300: 400, "/ui/search?q=%00": 400, "/ui/static/../../etc/passwd": 404,
            "/ui/static/nothing.css": 404, "/ui/r/team/app/-/delete?reference=%3Cb%3E": 400,
        }
        for path, status in cases.items():
            response, html = await self.server.page(path)
            self.assertEqual(response.code, status, path)
            self.assertIn("text/html", header(response, "Content-Type"), path)
            self.assertNotIn("Traceback", html)
        response, html = await self.server.page("/ui/?page=999999")
        self.assertEqual(response.code, 200)  # past the end: an empty page, with a way back

    async def test_hostile_requests_never_get_a_5xx(self):
        await push_image(self.server, "team/app", "1.0")
        paths = ["/ui/r/", "/ui/r//", "/ui/r/team//app", "/ui/r/team/app/-/", "/ui/r/team/app/-/tags/",
                 "/ui/r/team/app/-/tags/1.0/extra", "/ui/r/%2e%2e/%2e%2e/etc", "/ui/r/team/app/-/manifests/x:y",
                 "/ui/r/team/app/-/manifests/sha256:" + "a" * 1000, "/ui/r/" + "a/" * 300 + "b",
                 "/ui/search?q=%ff%fe", "/ui/search?q=a&q=b&page=2&page=x", "/ui/?page=&orgpage=0",
                 "/ui/?page=" + "9" * 50, "/ui/login?next=javascript:alert(1)", "/ui/o/", "/ui/o/" + "a" * 300,
                 "/ui/r/team/app?page=0", "/ui/r/team/app?deleted=" + "<b>" * 100, "/ui/static/", "/ui/%00",
                 "/ui/r/team/app/-/delete?reference=sha256:zz", "/ui/r/team/app/-/delete?reference="]
        requests = [("GET", p) for p in paths] + [("POST", p) for p in paths[::3]] + \
            [(m, p) for m in ("HEAD", "PUT", "DELETE") for p in ("/ui/", "/ui/r/team/app", "/ui/r/team/app/-/delete")]
        for method, path in requests:
            response, html = await self.server.page(path, method=method)
            self.assertLess(response.code, 500, (method, path))
            self.assertNotIn("Traceback", html)

    async def test_root_keeps_answering_load_balancers_and_sends_browsers_to_the_ui(self):
        response, body = await self.server.page("/")
        self.assertEqual((response.code, body), (200, ""))
        response, _ = await self.server.page("/", headers={"Accept": "text/html,application/xhtml+xml"})
        self.assertEqual((response.code, header(response, "Location")), (302, "/ui/"))
        response, _ = await self.server.page("/ui")
        self.assertEqual((response.code, header(response, "Location")), (302, "/ui/"))
        response, _ = await self.server.page("/v2/")
        self.assertEqual(response.code, 200)

    async def test_admin_description_is_escaped_and_needs_csrf(self):
        await push_image(self.server, "team/app", "1.0")
        response, html = await self.server.page("/ui/r/team/app")
        self.assertIn("description-text", html)  # no auth: everyone is an admin
        response, _ = await self.server.page("/ui/r/team/app/-/description", method="POST",
                                             form={"csrf": "x", "description": "nope"})
        self.assertEqual(response.code, 403)
        response, _ = await self.server.page("/ui/r/team/app/-/description", method="POST",
                                             form={"csrf": csrf_of(html), "description": HOSTILE})
        self.assertEqual((response.code, header(response, "Location")), (303, "/ui/r/team/app"))
        for path in ("/ui/search?q=onerror", "/ui/", "/ui/r/team/app"):
            response, html = await self.server.page(path)
            self.assertIn("&lt;script&gt;alert", html, path)
            self.assertNotIn("<script>alert", html, path)
        response, _ = await self.server.page("/ui/r/team/app/-/description", method="POST",
                                             form={"csrf": csrf_of(html), "description": "x" * 4001})
        self.assertEqual(response.code, 400)

    async def test_under_an_http_prefix(self):
        from regd.daemon.tap import mount_at_prefix
        from regd.web.app import WebUI
        from regd.web.mount import UIMount
        await push_image(self.server, "team/app", "1.0")
        ui = WebUI(self.server.registry, self.server.ui.access, self.server.index, self.server.ui.clock,
                   settings=UIConfig(), prefix="/my/registry", secret=b"p" * 32)
        self.server.site.resource = mount_at_prefix(
            UIMount(self.server.api.resource(), ui.resource(), "/my/registry/ui/"), "/my/registry/")
        response, _ = await self.server.page("/my/registry/", headers={"Accept": "text/html"})
        self.assertEqual(header(response, "Location"), "/my/registry/ui/")
        response, html = await self.server.page("/my/registry/ui/")
        self.assertEqual(response.code, 200)
        self.assertIn('href="/my/registry/ui/r/team/app"', html)
        response, html = await self.server.page("/my/registry/ui/r/team/app/-/tags/1.0")
        self.assertEqual(response.code, 200)
        self.assertIn('href="/my/registry/ui/static/regd.css"', html)

    async def test_static_files(self):
        response, css = await self.server.page("/ui/static/regd.css")
        self.assertEqual(response.code, 200)
        self.assertIn("text/css", header(response, "Content-Type"))

    async def test_delete_tag_with_confirmation_and_csrf(self):
        await push_image(self.server, "team/app", "1.0")
        await push_image(self.server, "team/app", "2.0")
        response, html = await self.server.page("/ui/r/team/app/-/delete?reference=1.0")
        self.assertEqual(response.code, 200)
        token = csrf_of(html)
        # A forged or missing token is refused and deletes nothing.
        for bad in ("", "forged", token + "x"):
            response, _ = await self.server.page("/ui/r/team/app/-/delete", method="POST",
                                                 form={"csrf": bad, "reference": "1.0"})
            self.assertEqual(response.code, 403)
        tags = (await self.server.registry.listing.tags("team/app", None, None)).items
        self.assertEqual(tags, ("1.0", "2.0"))
        response, _ = await self.server.page("/ui/r/team/app/-/delete", method="POST",
                                             form={"csrf": token, "reference": "1.0"})
        self.assertEqual((response.code, header(response, "Location")), (303, "/ui/r/team/app?deleted=1.0"))
        tags = (await self.server.registry.listing.tags("team/app", None, None)).items
        self.assertEqual(tags, ("2.0",))
        self.assertIn(("delete", "tag", "team/app"), [(a, k, r) for a, k, r in self.server.listener.actions()])

    async def test_delete_a_manifest_by_digest_and_page_through_many(self):
        for number in range(3):
            await push_image(self.server, f"many/repo{number}", "1.0")
        self.server.ui.settings = UIConfig(pagesize=UIPageSizes(repositories=1))
        response, html = await self.server.page("/ui/?page=2")
        self.assertIn("page 2 of 3", html)
        self.assertIn('href="/ui/?page=1"', html)
        self.assertIn('href="/ui/?page=3"', html)
        digest = str(await self.server.registry.manifests.resolve("many/repo0", "1.0"))
        response, html = await self.server.page(f"/ui/r/many/repo0/-/delete?reference={digest}")
        self.assertIn("every tag pointing at it", html)
        response, _ = await self.server.page("/ui/r/many/repo0/-/delete", method="POST",
                                             form={"csrf": csrf_of(html), "reference": digest})
        self.assertEqual(response.code, 303)
        response, _ = await self.server.page(f"/ui/r/many/repo0/-/manifests/{digest}")
        self.assertEqual(response.code, 404)
        response, html = await self.server.page("/ui/r/many/repo0")
        self.assertIn("No tags.", html)

    async def test_delete_refused_when_deletes_are_off(self):
        self.server.registry.delete_enabled = False
        await push_image(self.server, "team/app", "1.0")
        response, html = await self.server.page("/ui/r/team/app/-/delete?reference=1.0")
        self.assertEqual(response.code, 405)
        response, html = await self.server.page("/ui/r/team/app/-/tags/1.0")
        self.assertNotIn("delete-tag", html)

    async def test_forms_refuse_other_encodings_and_huge_bodies(self):
        response, html = await self.server.page("/ui/r/team/app/-/delete", method="POST", form={"a": "b"},
                                                headers={"Content-Type": "text/plain"})
        self.assertEqual(response.code, 415)
        response, html = await self.server.page("/ui/r/team/app/-/delete", method="POST",
                                                form={"reference": "x" * 20000})
        self.assertEqual(response.code, 413)


class HtpasswdPages(TestCase):
    """htpasswd auth: anonymous sees nothing; a logged-in user may do everything."""

    def setUp(self):
        path = write_htpasswd(os.path.abspath(self.mktemp()), {"alice": "wonderland"})
        from twisted.internet import reactor
        self.access = HtpasswdAccess("regd", path, inline_runner, reactor)
        self.server = WebServer(self, access=self.access, admins={"root"},
                                settings=UIConfig(title="Team <registry>", pagesize=UIPageSizes(tags=1)))
        self.auth = {"Authorization": "Basic YWxpY2U6d29uZGVybGFuZA=="}

    async def push(self, name, tag):
        self.server.http_headers = self.auth
        config = b'{"architecture":"amd64","os":"linux"}'
        from tests.support.server import RegistryServer
        original = RegistryServer.request

        async def with_auth(server, method, path, body=None, headers=None):
            return await original(server, method, path, body, {**(headers or {}), **self.auth})
        self.server.request = with_auth.__get__(self.server)
        document = await simple_image(self.server, name, config=config)
        response, body, _ = await self.server.push_manifest(name, tag, document)
        self.assertEqual(response.code, 201, body)

    async def login(self, password="wonderland"):
        response, html = await self.server.page("/ui/login?next=/ui/r/team/app")
        self.assertEqual(response.code, 200)
        return await self.server.page("/ui/login", method="POST", form={
            "csrf": csrf_of(html), "username": "alice", "password": password, "next": "/ui/r/team/app"})

    async def test_anonymous_is_refused_and_sees_no_repositories(self):
        await self.push("team/app", "1.0")
        response, html = await self.server.page("/ui/")
        self.assertEqual(response.code, 200)
        self.assertNotIn("team/app", html)
        self.assertIn("Team &lt;registry&gt;", html)
        for path in ("/ui/r/team/app", "/ui/r/team/app/-/tags/1.0", "/ui/r/no/such"):
            response, html = await self.server.page(path)
            self.assertEqual(response.code, 401, path)
            self.assertIn("Log in", html)
        response, html = await self.server.page("/ui/search?q=team")
        self.assertNotIn("team/app", html.replace('value="team"', ""))

    async def test_login_sets_a_safe_cookie_and_shows_repositories(self):
        await self.push("team/app", "1.0")
        await self.push("team/app", "2.0")
        response, _ = await self.login()
        self.assertEqual((response.code, header(response, "Location")), (303, "/ui/r/team/app"))
        cookie = header(response, "Set-Cookie")
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=lax", cookie)
        self.assertIn("Path=/ui/", cookie)
        self.assertNotIn("Secure", cookie)  # plain HTTP: a Secure cookie would never come back
        self.assertNotIn("wonderland", cookie)
        response, html = await self.server.page("/ui/r/team/app")
        self.assertEqual(response.code, 200)
        self.assertIn("alice", html)
        self.assertIn("page 1 of 2", html)  # ui.pagesize.tags: 1
        response, second = await self.server.page("/ui/r/team/app?page=2")
        for tag in ("1.0", "2.0"):
            self.assertEqual((html + second).count(f'class="tag" href="/ui/r/team/app/-/tags/{tag}"'), 1)
        # Behind a TLS proxy the cookie is Secure.
        self.server.cookies.clear()
        response, html = await self.server.page("/ui/login", headers={"X-Forwarded-Proto": "https"})
        self.assertIn("Secure", header(response, "Set-Cookie"))

    async def test_the_cookie_is_secure_over_tls(self):
        import http.client
        import ssl

        from twisted.internet import reactor, threads

        from tests.support.certs import PKI
        pki = PKI(os.path.abspath(self.mktemp()))
        port = reactor.listenSSL(0, self.server.site, pki.server_options(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.server.site.plain_http = False

        def get():
            context = ssl.create_default_context(cafile=pki.ca)
            connection = http.client.HTTPSConnection("127.0.0.1", port.getHost().port, context=context, timeout=10)
            try:
                connection.request("GET", "/ui/login")
                response = connection.getresponse()
                response.read()
                return response.status, response.getheader("Set-Cookie")
            finally:
                connection.close()

        status, cookie = await threads.deferToThread(get)
        self.assertEqual(status, 200)
        self.assertIn("Secure", cookie)
        self.assertIn("HttpOnly", cookie)

    async def test_wrong_password_and_missing_csrf(self):
        response, html = await self.login("wrong")
        self.assertEqual(response.code, 401)
        self.assertIn("login-failed", html)
        self.assertNotIn("regd_session=", "".join(response.headers.getRawHeaders("Set-Cookie", [])).replace(
            "regd_session=;", ""))
        self.server.cookies.clear()
        response, _ = await self.server.page("/ui/login", method="POST",
                                             form={"username": "alice", "password": "wonderland"})
        self.assertEqual(response.code, 403)

    async def test_login_never_redirects_elsewhere(self):
        response, html = await self.server.page("/ui/login")
        for target in ("https://evil.example/", "//evil.example/ui/", "/ui/\\evil", "/elsewhere"):
            response, _ = await self.server.page("/ui/login", method="POST", form={
                "csrf": csrf_of(html), "username": "alice", "password": "wonderland", "next": target})
            self.assertEqual(header(response, "Location"), "/ui/")
            self.server.cookies.clear()
            response, html = await self.server.page("/ui/login")

    async def test_logout_needs_csrf_and_ends_the_session(self):
        await self.push("team/app", "1.0")
        await self.login()
        response, html = await self.server.page("/ui/")
        self.assertIn("team/app", html)
        response, _ = await self.server.page("/ui/logout", method="POST", form={"csrf": "nope"})
        self.assertEqual(response.code, 403)
        response, _ = await self.server.page("/ui/logout", method="POST", form={"csrf": csrf_of(html)})
        self.assertEqual(response.code, 303)
        response, html = await self.server.page("/ui/r/team/app")
        self.assertEqual(response.code, 401)

    async def test_only_admins_set_descriptions(self):
        await self.push("team/app", "1.0")
        await self.login()
        response, html = await self.server.page("/ui/r/team/app")
        self.assertNotIn("description-text", html)
        response, _ = await self.server.page("/ui/r/team/app/-/description", method="POST",
                                             form={"csrf": csrf_of(html), "description": "mine"})
        self.assertEqual(response.code, 403)

    async def test_removing_a_user_ends_their_sessions(self):
        await self.push("team/app", "1.0")
        await self.login()
        self.assertEqual((await self.server.page("/ui/r/team/app"))[0].code, 200)
        write_htpasswd(self.access.path, {"bob": "builder"})
        os.utime(self.access.path, ns=(0, 1))
        response, html = await self.server.page("/ui/r/team/app")
        self.assertEqual(response.code, 401)
        self.assertNotIn('class="who"', html)

    async def test_a_forged_session_cookie_is_anonymous(self):
        await self.push("team/app", "1.0")
        await self.login()
        value = self.server.cookies["regd_session"]
        payload, _, mac = value.partition(".")
        self.server.cookies["regd_session"] = payload + "." + mac[::-1]
        response, _ = await self.server.page("/ui/r/team/app")
        self.assertEqual(response.code, 401)


class StoredSecretTests(TestCase):
    """Without http.secret the session key comes from storage, and a changed one is picked up."""

    async def test_instances_converge_on_the_stored_secret(self):
        from twisted.internet.task import Clock

        from regd.storage import paths
        clock = Clock()
        server = WebServer(self, secret=None, clock=clock)
        first = await server.ui.signer()
        stored = await server.driver.get_content(paths.SESSION_SECRET)
        cookie = first.encode(first.issue("alice"))
        # Another instance that raced this one wrote its own secret last.
        await server.driver.put_content(paths.SESSION_SECRET, b"f" * 64)
        self.assertIs(await server.ui.signer(), first)  # not re-read at every request
        clock.advance(30)
        second = await server.ui.signer()
        self.assertIsNot(second, first)
        self.assertIsNone(second.decode(cookie))
        self.assertNotEqual(stored, b"f" * 64)


class TokenIssuerPages(TestCase):
    """The built-in token issuer's rules decide what each user, and anonymous, sees."""

    def setUp(self):
        from twisted.internet import reactor

        from regd.http.tokenissuer import parse_rules
        path = write_htpasswd(os.path.abspath(self.mktemp()), {"alice": "wonderland"})
        passwords = HtpasswdAccess("regd", path, inline_runner, reactor)
        rules = parse_rules([{"names": ["public/*"], "actions": ["pull"], "anonymous": True},
                             {"names": ["*"], "actions": ["*"], "users": ["alice"]}], {})
        issuer = type("Issuer", (), {"passwords": passwords, "rules": rules})()
        # The API stays open so the test can push; the pages follow the issuer's rules.
        self.server = WebServer(self)
        self.server.ui.access = web_access(object(), issuer)

    async def test_anonymous_sees_only_what_anonymous_may_pull(self):
        await push_image(self.server, "public/tool", "1")
        await push_image(self.server, "team/secret", "1")
        response, html = await self.server.page("/ui/")
        self.assertIn("public/tool", html)
        self.assertNotIn("team/secret", html)
        response, html = await self.server.page("/ui/search?q=t")
        self.assertIn("public/tool", html)
        self.assertNotIn("team/secret", html)
        self.assertEqual((await self.server.page("/ui/r/team/secret"))[0].code, 401)
        self.assertEqual((await self.server.page("/ui/r/public/tool/-/tags/1"))[0].code, 200)
        # Anonymous may pull public/* but not delete there.
        self.assertEqual((await self.server.page("/ui/r/public/tool/-/delete?reference=1"))[0].code, 403)
        response, html = await self.server.page("/ui/login")
        response, _ = await self.server.page("/ui/login", method="POST", form={
            "csrf": csrf_of(html), "username": "alice", "password": "wonderland", "next": "/ui/r/team/secret"})
        self.assertEqual(response.code, 303)
        response, html = await self.server.page("/ui/r/team/secret")
        self.assertEqual(response.code, 200)
