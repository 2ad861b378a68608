"""
The web UI in a real headless Chromium (Debian's chromium + chromedriver via
Selenium) against regd under twistd with htpasswd users: anonymous refused,
log in, search, open a repository, open a tag, delete a tag; and a session
begun on one instance used on a second one sharing the storage; and, with
the built-in token issuer, its users and rules deciding what pages show. Each page is
saved as a screenshot in tests/artifacts/web/ (git-ignored); with
REGD_UPDATE_SCREENSHOTS=1 also in docs/screenshots/, which the README links.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import bcrypt
import pytest

from tests.support.e2e_http import request
from tests.support.processes import RegdProcess, require_tool

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "tests" / "artifacts" / "web"
DOCS = REPO_ROOT / "docs" / "screenshots"
HOSTILE = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'
USER, PASSWORD = "alice", "wonderland-7"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,900")

pytestmark = pytest.mark.skipif(os.environ.get("REGD_E2E_TARGET", "regd") != "regd",
                                reason="the web UI is regd's own")


class UIRegd(RegdProcess):
    """regd with htpasswd users (loopback: no TLS needed), deletes on, and the UI titled."""

    def __init__(self, root, htpasswd: Path, **kwargs):
        super().__init__(root, **kwargs)
        self.htpasswd = htpasswd

    def config_text(self) -> str:
        return super().config_text() + (
            "auth:\n  htpasswd:\n    realm: regd-e2e\n"
            f"    path: {self.htpasswd}\n"
            "ui:\n  title: regd e2e\n  pulladdress: registry.example.test:5000\n")


def _push_blob(base: str, name: str, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    answer = request("POST", f"{base}/v2/{name}/blobs/uploads/?digest={digest}", data=data,
                     headers={**AUTH, "Content-Type": "application/octet-stream"})
    assert answer.status == 201, answer.describe()
    return {"digest": digest, "size": len(data)}


def _push_manifest(base: str, name: str, reference: str, document: dict) -> str:
    body = json.dumps(document).encode()
    answer = request("PUT", f"{base}/v2/{name}/manifests/{reference}", data=body,
                     headers={**AUTH, "Content-Type": document["mediaType"]})
    assert answer.status == 201, answer.describe()
    return answer.headers["Docker-Content-Digest"]


def push_image(base: str, name: str, tag: str, *, description: str, arch: str = "amd64") -> str:
    config = {"architecture": arch, "os": "linux", "created": "2026-01-02T03:04:05Z",
              "config": {"Entrypoint": ["/usr/bin/server"], "Cmd": ["--port", "8080"],
                         "Env": ["PATH=/usr/local/bin:/usr/bin", "MODE=production"],
                         "ExposedPorts": {"8080/tcp": {}},
                         "Labels": {"org.opencontainers.image.description": description,
                                    "org.opencontainers.image.source": "https://example.test/app"}},
              "history": [{"created_by": "ADD rootfs.tar /"}, {"created_by": "CMD [\"--port\" \"8080\"]",
                                                             "empty_layer": True}]}
    config_blob = _push_blob(base, name, json.dumps(config).encode())
    layers = [_push_blob(base, name, os.urandom(40_000 + i * 10_000)) for i in range(2)]
    return _push_manifest(base, name, tag, {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_blob},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer} for layer in layers],
        "annotations": {"org.opencontainers.image.description": description}})


@pytest.fixture(scope="module")
def ui_registry(e2e_tmp):
    work = Path(tempfile.mkdtemp(prefix="webui-", dir=e2e_tmp))
    htpasswd = work / "htpasswd"
    htpasswd.write_bytes(USER.encode() + b":" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)) + b"\n")
    proc = UIRegd(work / "root", htpasswd, workdir=work)
    proc.start()
    base = proc.url
    push_image(base, "team/webapp", "1.0", description="The team's web application server.")
    push_image(base, "team/webapp", "2.0", description="The team's web application server.")
    amd = push_image(base, "team/webapp", "amd64-only", description="x")
    arm = push_image(base, "team/webapp", "arm64-only", description="x", arch="arm64")
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": 1,
         "platform": {"os": "linux", "architecture": a}} for d, a in ((amd, "amd64"), (arm, "arm64"))]}
    for child in index["manifests"]:
        child["size"] = len(request("GET", f"{base}/v2/team/webapp/manifests/{child['digest']}",
                                    headers={**AUTH, "Accept": child["mediaType"]}).body)
    multi = _push_manifest(base, "team/webapp", "multi", index)
    empty = _push_blob(base, "team/webapp", b"{}")
    sbom = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/spdx+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", **empty},
        "layers": [{"mediaType": "application/spdx+json", **_push_blob(base, "team/webapp", b'{"spdx": 1}')}],
        "subject": {"mediaType": index["mediaType"], "digest": multi, "size": len(json.dumps(index).encode())}}
    _push_manifest(base, "team/webapp", "sha256:" + hashlib.sha256(json.dumps(sbom).encode()).hexdigest(), sbom)
    push_image(base, "library/hostile", "latest", description=HOSTILE)
    push_image(base, "tools/cli", "0.1", description="A command-line tool.")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def browser(e2e_tmp):
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=e2e_tmp)
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={profile}",):
        options.add_argument(flag)
    log = Path(profile).parent / "chromedriver.log"
    driver = webdriver.Chrome(options=options, service=Service(chromedriver, log_output=str(log)))
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    # The whole page, not just the window: size the window to the document first.
    height = driver.execute_script("return Math.min(document.documentElement.scrollHeight, 4000)")
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, max(height, 600))
    assert driver.save_screenshot(str(path)), name
    if os.environ.get("REGD_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS / path.name)


def follow(driver, element) -> None:
    """Click a link or submit button and wait until the next page replaced this one and loaded.

    The page being left is marked with a property of its document, which a new document lacks.
    (Waiting for an element of the old page to go stale is not enough: while Chromium swaps the
    documents, chromedriver can answer the staleness check with a generic error instead.) Errors
    of a check made during the swap are retried until the timeout."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait
    driver.execute_script("document.regdLeftBehind = true")
    element.click()
    WebDriverWait(driver, 15, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script(
            "return document.regdLeftBehind === undefined && document.readyState === 'complete'"))


def text(driver) -> str:
    from selenium.webdriver.common.by import By
    return driver.find_element(By.TAG_NAME, "body").text


def test_anonymous_is_refused(ui_registry, browser):
    browser.delete_all_cookies()
    browser.set_window_size(1280, 900)
    browser.get(ui_registry.url + "/")  # a browser on GET / is sent to the UI
    assert browser.current_url == ui_registry.url + "/ui/"
    assert "team/webapp" not in text(browser)
    assert "Log in" in text(browser)
    browser.get(ui_registry.url + "/ui/r/team/webapp")
    assert "Log in to see this repository" in text(browser)
    assert "2.0" not in text(browser)
    shot(browser, "refused")


def test_log_in_search_browse_and_delete_a_tag(ui_registry, browser):
    from selenium.webdriver.common.by import By
    browser.delete_all_cookies()
    browser.set_window_size(1280, 900)
    base = ui_registry.url

    # Log in with the htpasswd user, from the header's link.
    browser.get(base + "/ui/")
    follow(browser, browser.find_element(By.ID, "login-link"))
    browser.find_element(By.ID, "username").send_keys(USER)
    browser.find_element(By.ID, "password").send_keys("wrong")
    follow(browser, browser.find_element(By.ID, "login-submit"))
    assert browser.find_element(By.ID, "login-failed").is_displayed()
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    shot(browser, "login")
    follow(browser, browser.find_element(By.ID, "login-submit"))
    assert browser.current_url == base + "/ui/"
    session = browser.get_cookie("regd_session")
    assert session["httpOnly"] is True and session["sameSite"] == "Lax", session
    body = text(browser)
    assert USER in body
    for name in ("team/webapp", "tools/cli", "library/hostile"):
        assert name in body
    assert "pwned" not in browser.title
    shot(browser, "home")

    # Search from the header's box.
    box = browser.find_element(By.NAME, "q")
    box.send_keys("webapp")
    follow(browser, browser.find_element(By.CSS_SELECTOR, "form.search button"))
    assert browser.find_element(By.ID, "result-count").text.startswith("1 repositor")
    shot(browser, "search")

    # Open the repository: tags with digests, sizes, platforms, pusher, pull commands.
    follow(browser, browser.find_element(By.LINK_TEXT, "team/webapp"))
    assert browser.current_url == base + "/ui/r/team/webapp"
    body = text(browser)
    for expected in ("The team's web application server.", "linux/amd64, linux/arm64", f"by {USER}",
                     "docker pull registry.example.test:5000/team/webapp:", "podman pull", "Activity"):
        assert expected in body, expected
    shot(browser, "repository")
    # The progressive copy button: shown once the (same-origin, CSP-allowed) script ran.
    copy = browser.find_element(By.CSS_SELECTOR, "button.copy[data-copy=pull-docker]")
    assert copy.is_displayed()
    copy.click()
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(browser, 5).until(lambda d: copy.text == "Copied")

    # Open a tag: layers, config, history; then the index's platforms and its SBOM referrer.
    follow(browser, browser.find_element(By.LINK_TEXT, "2.0"))
    body = text(browser)
    for expected in ('["/usr/bin/server"]', '["--port", "8080"]', "MODE=production", "8080/tcp",
                     "ADD rootfs.tar /", "org.opencontainers.image.source", "Layers"):
        assert expected in body, expected
    shot(browser, "tag")
    browser.get(base + "/ui/r/team/webapp/-/tags/multi")
    body = text(browser)
    assert "linux/amd64" in body and "linux/arm64" in body and "application/spdx+json" in body
    shot(browser, "tag-index")

    # Hostile descriptions are shown as text, never run.
    browser.get(base + "/ui/r/library/hostile")
    assert "<script>" in text(browser)
    assert "pwned" not in browser.title
    assert not browser.find_elements(By.CSS_SELECTOR, "main img, main script")

    # Delete tag 1.0, through the confirmation page.
    browser.get(base + "/ui/r/team/webapp/-/tags/1.0")
    follow(browser, browser.find_element(By.ID, "delete-tag"))
    assert "Delete the tag 1.0?" in text(browser)
    shot(browser, "delete")
    follow(browser, browser.find_element(By.ID, "confirm-delete"))
    assert browser.current_url == base + "/ui/r/team/webapp?deleted=1.0"
    assert "Deleted 1.0." in text(browser)
    assert request("GET", f"{base}/v2/team/webapp/manifests/1.0", headers=AUTH).status == 404
    assert request("GET", f"{base}/v2/team/webapp/manifests/2.0", headers=AUTH).status == 200

    # Readable on a phone.
    browser.set_window_size(390, 844)
    browser.get(base + "/ui/r/team/webapp")
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    shot(browser, "phone-repository")


def _http(proc, method: str, path: str, *, body: bytes | None = None, cookie: str = "", form: bool = False):
    """(status, headers, text) without following redirects."""
    import http.client
    connection = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=20)
    headers = {"Cookie": cookie} if cookie else {}
    if form:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.headers, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def test_a_session_from_one_instance_works_on_another_sharing_storage(ui_registry):
    """The session secret lives in the shared storage root, so a balancer may send the next page anywhere."""
    import re
    from urllib.parse import urlencode
    # Anonymous forms are refused outright, whatever they carry.
    status, _, _ = _http(ui_registry, "POST", "/ui/r/team/webapp/-/delete", form=True,
                         body=b"reference=2.0&csrf=forged")
    assert status == 401
    other = UIRegd(ui_registry.root, ui_registry.htpasswd, workdir=ui_registry.workdir)
    other.start()
    try:
        status, headers, html = _http(ui_registry, "GET", "/ui/login")
        cookie = headers["Set-Cookie"].split(";")[0]
        csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
        status, headers, _ = _http(ui_registry, "POST", "/ui/login", cookie=cookie, form=True,
                                   body=urlencode({"csrf": csrf, "username": USER, "password": PASSWORD,
                                                   "next": "/ui/"}).encode())
        assert status == 303, status
        session = headers["Set-Cookie"].split(";")[0]
        status, _, html = _http(other, "GET", "/ui/r/tools/cli", cookie=session)
        assert status == 200 and USER in html, status
        assert _http(other, "GET", "/ui/r/tools/cli")[0] == 401
    finally:
        other.stop()


class TokenUIRegd(RegdProcess):
    """regd with the built-in token issuer: per-repository rules, anonymous pulls of public/*."""

    def __init__(self, root, htpasswd: Path, cert: str, key: str, **kwargs):
        super().__init__(root, **kwargs)
        self.htpasswd, self.cert, self.key = htpasswd, cert, key

    def config_text(self) -> str:
        return super().config_text() + (
            "auth:\n  token:\n"
            f"    realm: http://{self.host}/auth/token\n    service: regd-ui\n    issuer: regd-ui-issuer\n"
            f"    rootcertbundle: {self.cert}\n    builtin:\n      key: {self.key}\n      htpasswd: {self.htpasswd}\n"
            "      access:\n"
            "        - {names: ['public/*'], anonymous: true, actions: [pull]}\n"
            "        - {names: ['*'], users: [alice], actions: ['*']}\n"
            "        - {names: ['team/*'], users: [bob], actions: [pull]}\n")


def _log_in(proc, user: str, password: str) -> str:
    import re
    from urllib.parse import urlencode
    _, headers, html = _http(proc, "GET", "/ui/login")
    cookie = headers["Set-Cookie"].split(";")[0]
    csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    status, headers, _ = _http(proc, "POST", "/ui/login", cookie=cookie, form=True, body=urlencode(
        {"csrf": csrf, "username": user, "password": password, "next": "/ui/"}).encode())
    assert status == 303, status
    return headers["Set-Cookie"].split(";")[0]


def test_token_issuer_users_and_rules_decide_what_the_pages_show(e2e_tmp):
    from tests.support.certs import token_signing_pair
    work = Path(tempfile.mkdtemp(prefix="webui-token-", dir=e2e_tmp))
    htpasswd = work / "htpasswd"
    htpasswd.write_bytes(b"".join(name.encode() + b":" + bcrypt.hashpw(secret.encode(), bcrypt.gensalt(4)) + b"\n"
                                  for name, secret in ((USER, PASSWORD), ("bob", "builder"))))
    cert, key = token_signing_pair(str(work / "issuer"))
    proc = TokenUIRegd(work / "root", htpasswd, cert, key, workdir=work)
    proc.start()
    try:
        scope = "repository:public/tool:pull,push repository:team/app:pull,push"
        answer = request("GET", f"{proc.url}/auth/token?service=regd-ui&scope={scope.replace(' ', '&scope=')}",
                         headers=AUTH)
        assert answer.status == 200, answer.describe()
        token = {"Authorization": "Bearer " + answer.json()["token"]}
        for name in ("public/tool", "team/app"):
            _push_as(proc.url, name, token)
        status, _, html = _http(proc, "GET", "/ui/")
        assert status == 200 and "public/tool" in html and "team/app" not in html
        assert _http(proc, "GET", "/ui/r/team/app")[0] == 401
        assert _http(proc, "GET", "/ui/r/public/tool/-/tags/1")[0] == 200
        bob = _log_in(proc, "bob", "builder")
        assert _http(proc, "GET", "/ui/r/team/app", cookie=bob)[0] == 200
        assert _http(proc, "GET", "/ui/r/team/app/-/delete?reference=1", cookie=bob)[0] == 403
        alice = _log_in(proc, USER, PASSWORD)
        assert _http(proc, "GET", "/ui/r/team/app/-/delete?reference=1", cookie=alice)[0] == 200
    finally:
        proc.stop()


def _push_as(base: str, name: str, headers: dict) -> None:
    def blob(data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        answer = request("POST", f"{base}/v2/{name}/blobs/uploads/?digest={digest}", data=data,
                         headers={**headers, "Content-Type": "application/octet-stream"})
        assert answer.status == 201, answer.describe()
        return {"digest": digest, "size": len(data)}
    document = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **blob(b'{"architecture":"amd64","os":"linux"}')},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob(os.urandom(1000))}]}
    answer = request("PUT", f"{base}/v2/{name}/manifests/1", data=json.dumps(document).encode(),
                     headers={**headers, "Content-Type": document["mediaType"]})
    assert answer.status == 201, answer.describe()
