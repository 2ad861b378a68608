"""docker login, push and pull over native TLS with htpasswd users; mutual TLS with client certificates."""

from __future__ import annotations

import shutil
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest

from tests.support.certs import PKI
from tests.support.images import write_rootfs_tar
from tests.support.processes import ProcessFailed, RegdProcess, tail

pytestmark = pytest.mark.e2e

CERTS_D = Path("/etc/docker/certs.d")


class TLSRegd(RegdProcess):
    def __init__(self, root, workdir, pki: PKI, htpasswd: Path | None, mutual: bool = False):
        super().__init__(root, workdir=workdir)
        self.pki, self.htpasswd, self.mutual = pki, htpasswd, mutual

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def config_text(self) -> str:
        text = super().config_text() + (
            "  tls:\n"
            f"    certificate: {self.pki.server_chain}\n"
            f"    key: {self.pki.server_key}\n")
        if self.mutual:
            text += f"    clientcas: [{self.pki.ca}]\n"
        if self.htpasswd:
            text += f"auth:\n  htpasswd:\n    realm: regd-test\n    path: {self.htpasswd}\n"
        return text

    def _wait_ready(self) -> None:
        context = ssl.create_default_context(cafile=self.pki.ca)
        if self.mutual:
            context.load_cert_chain(self.pki.client_cert, self.pki.client_key)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ProcessFailed(f"regd exited:\n{tail(self.log_path)}")
            try:
                urllib.request.urlopen(self.url + "/v2/", timeout=2, context=context)
                return
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise ProcessFailed(f"regd not ready over TLS:\n{tail(self.log_path)}")


@pytest.fixture
def tls_setup(tmp_path):
    pki = PKI(str(tmp_path / "pki"))
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_bytes(b"alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(5)).replace(b"$2b$", b"$2y$") + b"\n")
    started, dirs = [], []
    yield pki, htpasswd, tmp_path, started, dirs
    for process in started:
        process.stop()
    for directory in dirs:
        shutil.rmtree(directory, ignore_errors=True)


def trust(registry: TLSRegd, dirs: list, client: bool = False) -> None:
    directory = CERTS_D / registry.host
    directory.mkdir(parents=True, exist_ok=True)
    dirs.append(directory)
    shutil.copy(registry.pki.ca, directory / "ca.crt")
    if client:
        shutil.copy(registry.pki.client_cert, directory / "client.cert")
        shutil.copy(registry.pki.client_key, directory / "client.key")


def test_docker_login_push_pull_over_tls(docker_daemon, tls_setup):
    """docker login/push/pull over TLS against htpasswd (docker skips CA checks for loopback registries)."""
    pki, htpasswd, tmp, started, dirs = tls_setup
    registry = TLSRegd(tmp / "root", tmp, pki, htpasswd)
    started.append(registry)
    registry.start()
    trust(registry, dirs)
    ref = f"{registry.host}/team/app:1"
    docker_daemon.docker("import", str(write_rootfs_tar(tmp / "rootfs.tar", {"a": 5_000}, seed="tls")), ref)
    denied = docker_daemon.docker("push", ref, check=False)
    said = (denied.stdout + denied.stderr).lower()
    assert denied.returncode != 0 and ("no basic auth credentials" in said or "authentication required" in said), said
    wrong = docker_daemon.docker("login", "-u", "alice", "-p", "nope", registry.host, check=False)
    assert wrong.returncode != 0
    docker_daemon.docker("login", "-u", "alice", "-p", "wonderland", registry.host)
    docker_daemon.docker("push", ref)
    docker_daemon.docker("rmi", ref)
    docker_daemon.docker("pull", ref)
    docker_daemon.docker("logout", registry.host)
    docker_daemon.docker("rmi", ref)
    anonymous = docker_daemon.docker("pull", ref, check=False)
    assert anonymous.returncode != 0


def test_mutual_tls_needs_the_client_certificate(skopeo, tls_setup):
    """
    skopeo with --cert-dir (ca.crt, client.cert, client.key). Docker cannot show this on loopback: it
    treats 127.0.0.0/8 registries as insecure and then reads no certs.d files at all.
    """
    from tests.support.images import build_multilayer_layout
    from tests.support.processes import run
    pki, _, tmp, started, _ = tls_setup
    registry = TLSRegd(tmp / "root", tmp, pki, None, mutual=True)
    started.append(registry)
    registry.start()
    build_multilayer_layout(tmp / "layout", "multi", seed="mtls")
    server_only, with_client = tmp / "certs-ca", tmp / "certs-client"
    for directory in (server_only, with_client):
        directory.mkdir()
        shutil.copy(pki.ca, directory / "ca.crt")
    shutil.copy(pki.client_cert, with_client / "client.cert")
    shutil.copy(pki.client_key, with_client / "client.key")
    target = f"docker://{registry.host}/mtls/app:1"
    refused = run([skopeo, "copy", "--dest-cert-dir", str(server_only), f"oci:{tmp / 'layout'}:multi", target],
                  check=False)
    assert refused.returncode != 0
    run([skopeo, "copy", "--dest-cert-dir", str(with_client), f"oci:{tmp / 'layout'}:multi", target])
    inspected = run([skopeo, "inspect", "--cert-dir", str(with_client), target])
    assert '"Layers"' in inspected.stdout


class TokenRegd(RegdProcess):
    """regd with its built-in token issuer: alice pushes to team/*, bob only pulls."""

    def __init__(self, root, workdir, cert: str, key: str, htpasswd: Path):
        super().__init__(root, workdir=workdir)
        self.cert, self.key, self.htpasswd = cert, key, htpasswd

    def config_text(self) -> str:
        return super().config_text() + (
            "auth:\n"
            "  token:\n"
            f"    realm: http://{self.host}/auth/token\n"
            "    service: regd-e2e\n"
            "    issuer: regd-e2e-issuer\n"
            f"    rootcertbundle: {self.cert}\n"
            "    builtin:\n"
            f"      key: {self.key}\n"
            f"      htpasswd: {self.htpasswd}\n"
            "      access:\n"
            "        - {names: ['team/*'], users: [alice], actions: [pull, push]}\n"
            "        - {names: ['team/*'], users: [bob], actions: [pull]}\n")


def test_token_auth_through_the_builtin_issuer(docker_daemon, tls_setup):
    from tests.support.certs import token_signing_pair
    _, htpasswd, tmp, started, _ = tls_setup
    with open(htpasswd, "ab") as f:
        f.write(b"bob:" + bcrypt.hashpw(b"builder", bcrypt.gensalt(5)) + b"\n")
    cert, key = token_signing_pair(str(tmp / "issuer"))
    registry = TokenRegd(tmp / "root", tmp, cert, key, htpasswd)
    started.append(registry)
    registry.start()
    ref = f"{registry.host}/team/app:1"
    docker_daemon.docker("import", str(write_rootfs_tar(tmp / "rootfs.tar", {"c": 5_000}, seed="token")), ref)
    docker_daemon.docker("login", "-u", "bob", "-p", "builder", registry.host)
    refused = docker_daemon.docker("push", ref, check=False)
    assert refused.returncode != 0, refused.stdout
    docker_daemon.docker("login", "-u", "alice", "-p", "wonderland", registry.host)
    docker_daemon.docker("push", ref)
    other = f"{registry.host}/private/app:1"
    docker_daemon.docker("tag", ref, other)
    assert docker_daemon.docker("push", other, check=False).returncode != 0  # no rule for private/*
    docker_daemon.docker("rmi", ref, other)
    docker_daemon.docker("login", "-u", "bob", "-p", "builder", registry.host)
    docker_daemon.docker("pull", ref)
    docker_daemon.docker("logout", registry.host)
    docker_daemon.docker("rmi", ref)
    assert docker_daemon.docker("pull", ref, check=False).returncode != 0  # anonymous: nothing allowed


class AdminRegd(RegdProcess):
    def __init__(self, root, workdir, htpasswd: Path, debug_port: int):
        super().__init__(root, workdir=workdir)
        self.htpasswd, self.debug_port = htpasswd, debug_port

    def config_text(self) -> str:
        return super().config_text() + (
            f"  debug:\n    addr: 127.0.0.1:{self.debug_port}\n"
            f"auth:\n  htpasswd:\n    realm: r\n    path: {self.htpasswd}\n    admins: [alice]\n"
            "notifications:\n  endpoints:\n    - name: ci\n      url: http://127.0.0.1:9/hook\n      backoff: 10s\n")


def test_admin_endpoint_needs_an_admin_and_failed_logins_are_counted(tls_setup):
    import base64

    from tests.support import e2e_http
    from tests.support.processes import free_port
    _, htpasswd, tmp, started, _ = tls_setup
    with open(htpasswd, "ab") as f:
        f.write(b"bob:" + bcrypt.hashpw(b"builder", bcrypt.gensalt(5)) + b"\n")
    debug = free_port()
    registry = AdminRegd(tmp / "root", tmp, htpasswd, debug)
    started.append(registry)
    registry.start()

    def auth(user, password):
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    status = f"http://127.0.0.1:{debug}/debug/notifications"
    assert e2e_http.get(status).status == 401
    assert e2e_http.get(status, headers=auth("bob", "builder")).status == 403
    answer = e2e_http.get(status, headers=auth("alice", "wonderland"))
    assert answer.status == 200 and "ci" in answer.json()["endpoints"], answer.describe()
    for _ in range(2):
        assert e2e_http.get(f"{registry.url}/v2/", headers=auth("alice", "guess")).status == 401
    metrics = e2e_http.get(f"http://127.0.0.1:{debug}/metrics").body.decode()
    assert "regd_auth_failed_logins_total 2.0" in metrics, metrics
    assert 'regd_notifications_pending{endpoint="ci"}' in metrics
    # two wrong guesses plus the start-up readiness probe
    assert 'regd_http_requests_total{method="GET",route="base",status="401"} 3.0' in metrics, metrics
    assert "regd_http_request_duration_seconds_bucket" in metrics
    assert "regd_uploads_in_progress 0.0" in metrics and "# TYPE regd_storage_errors_total counter" in metrics
    health = e2e_http.get(f"http://127.0.0.1:{debug}/debug/health")
    assert health.status == 200, health.describe()
    assert health.json()["storagedriver_filesystem"]["status"] == "ok"
    assert "ci" in health.json()["notifications"]
    assert e2e_http.get(f"{registry.url}/").status == 200


def test_sighup_reloads_the_certificate_at_once(tls_setup):
    import signal

    from tests.e2e.test_acme import served_certificate
    pki, _, tmp, started, _ = tls_setup
    registry = TLSRegd(tmp / "root", tmp, pki, None)
    started.append(registry)
    registry.start()
    before = served_certificate(registry.port).serial_number
    fresh = PKI(str(tmp / "fresh"))
    shutil.copy(fresh.server_chain, pki.server_chain)
    shutil.copy(fresh.server_key, pki.server_key)
    registry.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 2  # well before the 5 s file check
    while served_certificate(registry.port).serial_number == before:
        assert time.monotonic() < deadline, tail(registry.log_path)
        time.sleep(0.05)
    assert registry.popen.poll() is None
