"""
regd's container image (`make image`) run as the registry guides run
registry:2: `docker run` with only -v and -e flags (host networking here),
plain, TLS + htpasswd from the environment, read-only; docker and skopeo push
and pull through it; it keeps its data over a restart, drains an upload at
`docker stop`, reclaims space with `docker exec ... garbage-collect`, and holds
its own image.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest

from tests.support import background, e2e_http
from tests.support.certs import PKI
from tests.support.images import build_multilayer_layout, write_rootfs_tar
from tests.support.processes import free_port, require_tool, run

pytestmark = pytest.mark.e2e

SOURCE = Path(__file__).resolve().parents[2]
IMAGE = "regd:latest"
CERTS_D = Path("/etc/docker/certs.d")
UNVERIFIED = ssl._create_unverified_context()


@pytest.fixture(scope="module")
def nginx_rootfs(tmp_path_factory):
    """Debian's nginx extracted (in the background) for the compose example's nginx:stable."""
    rootfs = tmp_path_factory.mktemp("nginx") / "rootfs"
    extracting = subprocess.Popen([require_tool("mmdebstrap"), "--quiet", "--variant=extract", "--include=nginx",
                                   "bookworm", str(rootfs)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    yield extracting, rootfs
    if extracting.poll() is None:
        extracting.kill()
        extracting.wait()


@pytest.fixture(scope="module")
def image(docker_daemon, nginx_rootfs):
    """`make image` into the test engine, once; returns the tarball (cached by a hash of the inputs).

    The tarball is built in the background from the session's start (tests/support/background.py),
    so `make image` finds it in its cache and loads it."""
    require_tool("mmdebstrap")
    require_tool("make")
    started = time.monotonic()
    built = background.wait("image-tarball", 900).strip().splitlines()
    made = subprocess.run(["make", "image"], cwd=SOURCE, env=docker_daemon.env, capture_output=True, text=True,
                          timeout=900)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    tar = SOURCE / re.search(r"^image tarball: (\S+)$", made.stdout, re.M).group(1)  # relative to the checkout
    print(f"\nimage build: {built[-1] if built else ''}; make image {time.monotonic() - started:.1f} s later")
    return tar


class Container:
    """One `docker run -d --network host` of the image with -v and -e flags only."""

    def __init__(self, docker, name: str, flags: list[str], image: str = IMAGE, args: tuple = (),
                 tls: bool = False):
        self.docker, self.name, self.flags, self.image, self.args = docker, name, flags, image, list(args)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"{'https' if tls else 'http'}://{self.host}"

    def start(self) -> "Container":
        self.docker.docker("run", "-d", "--name", self.name, "--network", "host",
                           "-e", f"REGISTRY_HTTP_ADDR={self.host}", *self.flags, self.image, *self.args)
        return self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> "Container":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state()["Status"] == "exited":
                raise AssertionError(f"{self.name} exited:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2, context=UNVERIFIED) as answer:
                    if answer.status == 200:
                        return self
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready:\n{self.logs()}")

    def state(self) -> dict:
        return json.loads(self.docker.docker("inspect", "--format", "{{json .State}}", self.name).stdout)

    def logs(self) -> str:
        result = self.docker.docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        result = self.docker.docker("exec", self.name, *argv, check=False)
        assert not check or result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}\n{self.logs()}"
        return result


@pytest.fixture(scope="module")
def containers(docker_daemon):
    started: list[str] = []

    def start(name, flags, **kwargs) -> Container:
        container = Container(docker_daemon, f"{name}-{os.urandom(3).hex()}", flags, **kwargs)
        started.append(container.name)
        return container.start()

    yield start
    removing = [subprocess.Popen(["docker", "rm", "-f", name], env=docker_daemon.env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL) for name in started]
    for process in removing:
        process.wait(timeout=120)


@pytest.fixture(scope="module")
def plain(image, containers, docker_daemon, tmp_path_factory):
    """registry:2's first guide: `-v /data:/var/lib/registry`, a fresh host directory docker creates as root."""
    data = tmp_path_factory.mktemp("plain") / "data"
    container = containers("plain", ["-v", f"{data}:/var/lib/registry", "-e", "REGISTRY_STORAGE_DELETE_ENABLED=true"])
    container.data = data
    ref = f"{container.host}/guides/app:1"
    tar = write_rootfs_tar(tmp_path_factory.mktemp("rootfs") / "a.tar", {"srv/a": 300_000, "etc/x": 100}, seed="img-a")
    docker_daemon.docker("import", str(tar), ref)
    docker_daemon.docker("push", ref)
    container.ref = ref
    return container


def _pid_uid(docker_daemon, name: str) -> int:
    pid = docker_daemon.docker("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def test_the_image_is_shaped_like_registry_2(image, docker_daemon):
    config = json.loads(docker_daemon.docker("image", "inspect", "--format", "{{json .Config}}", IMAGE).stdout)
    assert config["ExposedPorts"] == {"5000/tcp": {}}
    assert config["Volumes"] == {"/var/lib/registry": {}}
    assert config["Cmd"] == ["/etc/docker/registry/config.yml"]
    assert config["Healthcheck"]["Test"] == ["CMD", "/usr/local/bin/regd", "healthcheck"]
    labels = config["Labels"]
    for key in ("version", "source", "licenses", "description"):
        assert labels[f"org.opencontainers.image.{key}"], key
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    size = int(docker_daemon.docker("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    assert size <= 150_000_000, size
    print(f"\nimage size: {size / 1e6:.1f} MB uncompressed")


def test_plain_push_pull_with_docker_and_skopeo_as_the_service_user(plain, docker_daemon, skopeo, tmp_path):
    # The daemon runs as uid 1000 and the fresh volume was given to it.
    assert _pid_uid(docker_daemon, plain.name) == 1000
    assert plain.data.stat().st_uid == 1000
    assert "regd: making /var/lib/registry owned by registry" in plain.logs()
    docker_daemon.docker("rmi", plain.ref)
    docker_daemon.docker("pull", plain.ref)
    run([skopeo, "copy", "--src-tls-verify=false", f"docker://{plain.ref}", f"oci:{tmp_path / 'layout'}:app"])
    run([skopeo, "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:app",
         f"docker://{plain.host}/guides/copied:1"])
    tags, _ = e2e_http.get_json(f"{plain.url}/v2/guides/copied/tags/list")
    assert tags["tags"] == ["1"]
    assert plain.exec("regd", "healthcheck").stdout.strip() == "GET /: 200"
    # Logs go to stdout: the access log of those requests is in docker logs.
    assert "/v2/guides/copied/tags/list" in plain.logs()


def test_restart_keeps_the_data(plain, docker_daemon):
    digest = e2e_http.manifest_digest(plain.url, "guides/app", "1")
    docker_daemon.docker("restart", plain.name)
    plain.wait_ready()
    assert e2e_http.manifest_digest(plain.url, "guides/app", "1") == digest
    docker_daemon.docker("rmi", plain.ref)
    docker_daemon.docker("pull", plain.ref)


def test_garbage_collect_in_the_container_reclaims_space(plain, docker_daemon, tmp_path):
    ref = f"{plain.host}/guides/gone:1"
    tar = write_rootfs_tar(tmp_path / "b.tar", {"srv/b": 2_000_000}, seed="img-gone")
    docker_daemon.docker("import", str(tar), ref)
    docker_daemon.docker("push", ref)
    manifest = json.loads(e2e_http.get(f"{plain.url}/v2/guides/gone/manifests/1", headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"}).body)
    layer = manifest["layers"][0]["digest"].split(":")[1]
    blob = plain.data / "docker/registry/v2/blobs/sha256" / layer[:2] / layer / "data"
    assert blob.exists()
    digest = e2e_http.manifest_digest(plain.url, "guides/gone", "1")
    deleted = e2e_http.request("DELETE", f"{plain.url}/v2/guides/gone/manifests/{digest}")
    assert deleted.status == 202, deleted.describe()
    # registry:2's spelling, and the configuration file registry:2's image ships.
    collected = plain.exec("registry", "garbage-collect", "--grace", "0s", "/etc/docker/registry/config.yml")
    assert f"deleted blob sha256:{layer}" in collected.stdout, collected.stdout
    assert not blob.exists()
    assert e2e_http.manifest_digest(plain.url, "guides/app", "1")  # what a tag still needs is kept
    dry = plain.exec("regd", "garbage-collect", "--dry-run", "/etc/docker/registry/config.yml")
    assert "would delete blob" not in dry.stdout, dry.stdout  # nothing left to collect


def test_docker_stop_drains_an_upload_in_progress(image, containers, docker_daemon, tmp_path):
    data = tmp_path / "data"
    container = containers("drain", ["-v", f"{data}:/var/lib/registry"])
    started = e2e_http.request("POST", f"{container.url}/v2/drain/app/blobs/uploads/")
    assert started.status == 202, started.describe()
    location = started.headers["Location"]
    if location.startswith("/"):
        location = container.url + location
    body = os.urandom(3_000_000)
    path = location[len(container.url):]
    with socket.create_connection(("127.0.0.1", container.port), timeout=30) as conn:
        conn.sendall((f"PATCH {path} HTTP/1.1\r\nHost: {container.host}\r\nContent-Type: application/octet-stream\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body[:1_000_000])
        stopping = threading.Thread(target=docker_daemon.docker, args=("stop", container.name))
        stopping.start()
        # SIGTERM has arrived once the listener is closed; the upload's connection stays open.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", container.port), timeout=1).close()
                time.sleep(0.05)
            except OSError:
                break
        else:
            raise AssertionError("the listener did not close after docker stop")
        conn.sendall(body[1_000_000:])
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    stopping.join(30)
    assert answer.startswith(b"HTTP/1.1 202"), answer[:500]
    assert f"Range: 0-{len(body) - 1}".encode() in answer, answer[:500]
    assert container.state()["ExitCode"] == 0, container.logs()
    # Started again: the drained upload is there to finish.
    docker_daemon.docker("start", container.name)
    container.wait_ready()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    finished = e2e_http.request("PUT", f"{location}{'&' if '?' in location else '?'}digest={digest}")
    assert finished.status == 201, finished.describe()
    assert e2e_http.get(f"{container.url}/v2/drain/app/blobs/{digest}").body == body


@pytest.fixture
def trusted_dirs():
    made = []
    yield made
    for directory in made:
        shutil.rmtree(directory, ignore_errors=True)


def test_tls_and_htpasswd_from_the_environment(image, containers, docker_daemon, skopeo, tmp_path, trusted_dirs):
    """The guide's `-v certs:/certs -v auth:/auth -e REGISTRY_HTTP_TLS_* -e REGISTRY_AUTH=htpasswd ...`."""
    pki = PKI(str(tmp_path / "pki"))
    certs, auth = tmp_path / "certs", tmp_path / "auth"
    certs.mkdir()
    auth.mkdir()
    shutil.copy(pki.server_chain, certs / "domain.crt")
    shutil.copy(pki.server_key, certs / "domain.key")
    (certs / "domain.key").chmod(0o600)  # as openssl writes it: the service user could not read it
    (auth / "htpasswd").write_bytes(b"testuser:" + bcrypt.hashpw(b"testpassword", bcrypt.gensalt(5)) + b"\n")
    container = containers("tls", [
        "-v", f"{tmp_path / 'data'}:/var/lib/registry", "-v", f"{certs}:/certs", "-v", f"{auth}:/auth",
        "-e", "REGISTRY_HTTP_TLS_CERTIFICATE=/certs/domain.crt", "-e", "REGISTRY_HTTP_TLS_KEY=/certs/domain.key",
        "-e", "REGISTRY_AUTH=htpasswd", "-e", "REGISTRY_AUTH_HTPASSWD_REALM=Registry Realm",
        "-e", "REGISTRY_AUTH_HTPASSWD_PATH=/auth/htpasswd"], tls=True)
    context = ssl.create_default_context(cafile=pki.ca)
    try:
        urllib.request.urlopen(f"{container.url}/v2/", timeout=10, context=context)
        raise AssertionError("/v2/ answered without credentials")
    except urllib.error.HTTPError as e:
        assert e.code == 401 and 'realm="Registry Realm"' in e.headers["WWW-Authenticate"]
    ref = f"{container.host}/secure/app:1"
    docker_daemon.docker("import", str(write_rootfs_tar(tmp_path / "r.tar", {"a": 50_000}, seed="tls-img")), ref)
    assert docker_daemon.docker("push", ref, check=False).returncode != 0
    docker_daemon.docker("login", "-u", "testuser", "-p", "testpassword", container.host)
    docker_daemon.docker("push", ref)
    docker_daemon.docker("rmi", ref)
    docker_daemon.docker("pull", ref)
    docker_daemon.docker("logout", container.host)
    cert_dir = tmp_path / "skopeo-certs"
    cert_dir.mkdir()
    shutil.copy(pki.ca, cert_dir / "ca.crt")
    run([skopeo, "copy", "--src-cert-dir", str(cert_dir), "--src-creds", "testuser:testpassword",
         "--dest-cert-dir", str(cert_dir), "--dest-creds", "testuser:testpassword",
         f"docker://{ref}", f"docker://{container.host}/secure/copy:1"])
    assert container.exec("regd", "healthcheck").stdout.strip() == "GET /: 200"
    assert _pid_uid(docker_daemon, container.name) == 1000


def test_the_image_pushed_to_itself_runs_read_only(image, plain, containers, docker_daemon, skopeo, tmp_path):
    """regd holds its own image; that image, pulled back, serves the same data read-only."""
    version = json.loads(docker_daemon.docker("image", "inspect", "--format", "{{json .Config.Labels}}",
                                              IMAGE).stdout)["org.opencontainers.image.version"]
    own = f"{plain.host}/regd:{version}"
    run([skopeo, "copy", "--dest-tls-verify=false", f"docker-archive:{image}:{IMAGE}", f"docker://{own}"])
    docker_daemon.docker("pull", own)
    ids = {docker_daemon.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip() for ref in (own, IMAGE)}
    assert len(ids) == 1, ids
    readonly = containers("readonly", ["-v", f"{plain.data}:/var/lib/registry",
                                       "-e", 'REGISTRY_STORAGE_MAINTENANCE_READONLY={"enabled":true}'], image=own,
                          args=("serve", "/etc/docker/registry/config.yml"))
    run([skopeo, "copy", "--src-tls-verify=false", f"docker://{readonly.host}/guides/app:1",
         f"oci:{tmp_path / 'layout'}:app"])
    refused = e2e_http.request("POST", f"{readonly.url}/v2/guides/app/blobs/uploads/")
    assert refused.status == 405 and b"UNSUPPORTED" in refused.body, refused.describe()
    # The HEALTHCHECK (every 10 s) has judged the first container by now.
    deadline = time.monotonic() + 30
    while plain.state()["Health"]["Status"] != "healthy" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert plain.state()["Health"]["Status"] == "healthy", plain.state()["Health"]


# -- examples/compose with Debian's docker-compose ----------------------------

@pytest.fixture(scope="module")
def nginx_image(nginx_rootfs, docker_daemon, tmp_path_factory):
    """nginx:stable, from Debian's nginx package: no image registry is reachable here."""
    extracting, rootfs = nginx_rootfs
    output, _ = extracting.communicate(timeout=300)
    assert extracting.returncode == 0, output
    (rootfs / "etc/passwd").write_text("root:x:0:0::/root:/usr/sbin/nologin\n"
                                       "nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n")
    (rootfs / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (rootfs / "run").mkdir(exist_ok=True)
    tar = tmp_path_factory.mktemp("nginx-tar") / "nginx.tar"
    run(["tar", "-C", str(rootfs), "-cf", str(tar), "."])
    docker_daemon.docker("import", "--change", 'CMD ["/usr/sbin/nginx", "-g", "daemon off; error_log stderr;"]',
                         str(tar), "nginx:stable")
    return "nginx:stable"


@pytest.fixture
def compose_example(image, docker_daemon, tmp_path):
    """copy(name, ports) -> the example's directory, its ports moved to free ones; `docker-compose down` after."""
    tool = require_tool("docker-compose")
    projects = []

    def copy(name: str, ports: dict[int, int]) -> Path:
        directory = tmp_path / name
        shutil.copytree(SOURCE / "examples/compose" / name, directory)
        for path in directory.iterdir():
            if path.suffix in (".yml", ".conf"):
                text = path.read_text()
                for old, new in ports.items():
                    text = re.sub(rf"\b{old}\b", str(new), text)
                path.write_text(text)
        projects.append(directory)
        return directory

    def compose(directory: Path, *args: str) -> subprocess.CompletedProcess:
        return run([tool, "--no-ansi", "-p", directory.name, *args], env=docker_daemon.env, cwd=directory)

    copy.compose = compose
    yield copy
    for directory in projects:
        logs = subprocess.run([tool, "-p", directory.name, "logs", "--no-color"], env=docker_daemon.env,
                              cwd=directory, capture_output=True, text=True)
        print(logs.stdout[-3000:])  # shown when the test failed
        compose(directory, "down", "--timeout", "5")


def _wait_https(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"https://127.0.0.1:{port}/", timeout=2, context=UNVERIFIED)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing answers TLS on {port}")


def test_compose_tls_and_htpasswd(compose_example, skopeo, tmp_path):
    port = free_port()
    directory = compose_example("tls-htpasswd", {5000: port})
    pki = PKI(str(tmp_path / "pki"))
    for sub in ("certs", "auth"):
        (directory / sub).mkdir()
    shutil.copy(pki.server_chain, directory / "certs/domain.crt")
    shutil.copy(pki.server_key, directory / "certs/domain.key")
    (directory / "auth/htpasswd").write_bytes(b"testuser:" + bcrypt.hashpw(b"testpassword", bcrypt.gensalt(5)) + b"\n")
    compose_example.compose(directory, "up", "-d")
    _wait_https(port)
    context = ssl.create_default_context(cafile=pki.ca)
    try:
        urllib.request.urlopen(f"https://127.0.0.1:{port}/v2/", timeout=10, context=context)
        raise AssertionError("/v2/ answered without credentials")
    except urllib.error.HTTPError as e:
        assert e.code == 401, e
    cert_dir = tmp_path / "ca"
    cert_dir.mkdir()
    shutil.copy(pki.ca, cert_dir / "ca.crt")
    layout = tmp_path / "layout"
    build_multilayer_layout(layout, "multi", seed="compose-tls")
    run([skopeo, "copy", "--dest-cert-dir", str(cert_dir), "--dest-creds", "testuser:testpassword",
         f"oci:{layout}:multi", f"docker://127.0.0.1:{port}/compose/tls:1"])
    inspected = run([skopeo, "inspect", "--cert-dir", str(cert_dir), "--creds", "testuser:testpassword",
                     f"docker://127.0.0.1:{port}/compose/tls:1"])
    assert '"Layers"' in inspected.stdout


def test_compose_behind_nginx_push_and_pull(compose_example, nginx_image, docker_daemon, tmp_path):
    registry_port, nginx_port = free_port(), free_port()
    directory = compose_example("nginx", {5000: registry_port, 443: nginx_port})
    pki = PKI(str(tmp_path / "pki"))
    (directory / "auth").mkdir()
    shutil.copy(pki.server_chain, directory / "auth/domain.crt")
    shutil.copy(pki.server_key, directory / "auth/domain.key")
    (directory / "auth/nginx.htpasswd").write_bytes(
        b"testuser:" + bcrypt.hashpw(b"testpassword", bcrypt.gensalt(5)).replace(b"$2b$", b"$2y$") + b"\n")
    compose_example.compose(directory, "up", "-d")
    _wait_https(nginx_port)
    _wait_http(registry_port)  # depends_on orders the starts; nginx answers 502 until regd listens
    host = f"127.0.0.1:{nginx_port}"
    ref = f"{host}/behind/nginx:1"
    docker_daemon.docker("import", str(write_rootfs_tar(tmp_path / "n.tar", {"srv/n": 1_500_000}, seed="nginx")), ref)
    assert docker_daemon.docker("push", ref, check=False).returncode != 0  # nginx asks for the password
    docker_daemon.docker("login", "-u", "testuser", "-p", "testpassword", host)
    docker_daemon.docker("push", ref)
    docker_daemon.docker("rmi", ref)
    docker_daemon.docker("pull", ref)
    docker_daemon.docker("logout", host)
    # regd itself, on loopback, holds what went through nginx.
    tags, _ = e2e_http.get_json(f"http://127.0.0.1:{registry_port}/v2/behind/nginx/tags/list")
    assert tags["tags"] == ["1"]


def test_compose_two_instances_on_s3_with_redis(compose_example, docker_daemon, tmp_path):
    """The regd services of s3-redis/ (S3: moto, Redis: Debian's redis-server, both on the host)."""
    from tests.support.redis import RedisServer
    from tests.support.s3 import MotoServer
    moto = MotoServer().start()
    redis = RedisServer(tmp_path / "redis")
    try:
        redis.start()
        moto.request("PUT", "/registry")
        first, second = free_port(), free_port()
        directory = compose_example("s3-redis", {9000: moto.port, 6379: redis.port, 5000: first, 5001: second})
        compose_example.compose(directory, "up", "-d", "--no-deps", "registry1", "registry2")
        for port in (first, second):
            _wait_http(port)
        pushed, pulled = f"127.0.0.1:{first}/compose/s3:1", f"127.0.0.1:{second}/compose/s3:1"
        tar = write_rootfs_tar(tmp_path / "s.tar", {"srv/s3": 800_000}, seed="compose-s3")
        docker_daemon.docker("import", str(tar), pushed)
        docker_daemon.docker("push", pushed)
        docker_daemon.docker("pull", pulled)  # the other instance, presigned redirects to the bucket
        assert any(key.startswith("docker/registry/v2/repositories/compose/s3/_manifests/tags/1/")
                   for key in moto.keys("registry")), moto.keys("registry")
        assert redis.keys(), "the blob-descriptor cache in Redis stayed empty"
    finally:
        redis.stop()
        moto.stop()


def _wait_http(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"regd on {port} did not become ready")
