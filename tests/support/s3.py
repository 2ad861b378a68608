"""
A real S3 server for tests: moto in server mode (`moto_server`), on
127.0.0.1 and an ephemeral port, started and stopped by pid. Buckets are
created over the S3 API (botocore signing, plain urllib), so nothing here
depends on regd's own client.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from tests.support.processes import LIVE_LOGS, ProcessFailed, _stop_pid, free_port, tail

ACCESS_KEY = "AKIAREGDTESTKEY00000"
SECRET_KEY = "regd-test-secret-key-not-a-real-one/000"
REGION = "us-east-1"


class MotoServer:
    """moto_server on 127.0.0.1:port; C{min_part} lowers S3's 5 MiB smallest part for fast tests."""

    def __init__(self, min_part: int | None = None, extra_env: dict | None = None):
        self.port = free_port()
        self.min_part = min_part
        self.extra_env = dict(extra_env or {})
        self.workdir = Path(tempfile.mkdtemp(prefix="moto-"))
        self.log_path = self.workdir / f"moto-{self.port}.log"
        self.popen = None
        self.access_key, self.secret_key = ACCESS_KEY, SECRET_KEY

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MotoServer":
        binary = Path(sys.executable).parent / "moto_server"
        env = dict(os.environ, **self.extra_env)
        if self.min_part is not None:
            env["S3_UPLOAD_PART_MIN_SIZE"] = str(self.min_part)
        log = open(self.log_path, "ab")
        try:
            self.popen = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          env=env, cwd=self.workdir, start_new_session=True)
        finally:
            log.close()
        LIVE_LOGS[f"moto S3 on {self.port}"] = self.log_path
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ProcessFailed(f"moto_server exited with {self.popen.returncode}:\n{tail(self.log_path)}")
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=2):
                    return self
            except urllib.error.HTTPError:
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise ProcessFailed(f"moto_server not ready:\n{tail(self.log_path)}")

    def stop(self) -> None:
        if self.popen is not None:
            _stop_pid(self.popen, 10)
            self.popen = None

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        """A signed request to the server (path starts with /bucket)."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import ReadOnlyCredentials
        url = self.endpoint + path
        headers = dict(headers or {})
        # Without it urllib sends a form content type, and moto then reads the body as a form.
        headers.setdefault("Content-Type", "application/octet-stream")
        signed = AWSRequest(method=method, url=url, data=body, headers=headers)
        S3SigV4Auth(ReadOnlyCredentials(self.access_key, self.secret_key, None), "s3", REGION).add_auth(signed)
        request = urllib.request.Request(url, data=body if method in ("PUT", "POST") else None,
                                         headers=dict(signed.headers.items()), method=method)
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()

    def new_bucket(self) -> str:
        name = f"regd-{uuid.uuid4().hex[:12]}"
        self.request("PUT", f"/{name}")
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        import xml.etree.ElementTree as ET
        keys, token = [], None
        while True:
            query = f"list-type=2&prefix={urllib.request.quote(prefix, safe='')}"
            if token:
                query += f"&continuation-token={urllib.request.quote(token, safe='')}"
            _, body = self.request("GET", f"/{bucket}?{query}")
            root = ET.fromstring(body)
            keys += [e.text for e in root.iter() if e.tag.endswith("}Key")]
            truncated = [e.text for e in root.iter() if e.tag.endswith("}IsTruncated")]
            tokens = [e.text for e in root.iter() if e.tag.endswith("}NextContinuationToken")]
            if truncated != ["true"] or not tokens:
                return sorted(keys)
            token = tokens[0]

    def multipart_uploads(self, bucket: str) -> list[str]:
        _, body = self.request("GET", f"/{bucket}?uploads=")
        import xml.etree.ElementTree as ET
        return [e.text for e in ET.fromstring(body).iter() if e.tag.endswith("}UploadId")]

    def part_sizes(self, bucket: str, key: str, upload_id: str) -> list[int]:
        """The sizes of the parts a multipart upload received so far, in part order (ListParts)."""
        import xml.etree.ElementTree as ET
        query = f"uploadId={urllib.request.quote(upload_id, safe='')}"
        _, body = self.request("GET", f"/{bucket}/{urllib.request.quote(key)}?{query}")
        parts = [p for p in ET.fromstring(body).iter() if p.tag.endswith("}Part")]
        field = lambda part, name: [e.text for e in part if e.tag.endswith("}" + name)][0]
        return [int(field(p, "Size")) for p in sorted(parts, key=lambda p: int(field(p, "PartNumber")))]

    def yaml(self, bucket: str, rootdirectory: str = "", chunksize: int | None = None, indent: str = "  ") -> str:
        """A storage.s3 section (under `storage:`) for regd or the reference registry."""
        lines = ["s3:", f"  region: {REGION}", f"  regionendpoint: {self.endpoint}", f"  bucket: {bucket}",
                 f"  accesskey: {self.access_key}", f"  secretkey: {self.secret_key}", "  secure: false",
                 "  v4auth: true"]
        if rootdirectory:
            lines.append(f"  rootdirectory: {rootdirectory}")
        if chunksize:
            lines.append(f"  chunksize: {chunksize}")
        return "".join(f"{indent}{line}\n" for line in lines)

    @classmethod
    def checking_credentials(cls) -> "MotoServer":
        """
        A server that checks signatures and access keys (moto's IAM mode): its
        first requests, unauthenticated (its readiness probe counts), make a user allowed everything and
        its key, which become this object's credentials.
        """
        import json
        import urllib.parse
        import xml.etree.ElementTree as ET
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import ReadOnlyCredentials
        server = cls(extra_env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"}).start()

        def iam(params):
            body = urllib.parse.urlencode({**params, "Version": "2010-05-08"}).encode()
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            signed = AWSRequest(method="POST", url=server.endpoint + "/", data=body, headers=headers)
            SigV4Auth(ReadOnlyCredentials("AKIANOBODY0000000000", "none", None), "iam", REGION).add_auth(signed)
            request = urllib.request.Request(server.endpoint + "/", data=body, method="POST",
                                             headers=dict(signed.headers.items()))
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.read()
        try:
            iam({"Action": "CreateUser", "UserName": "regd"})
            iam({"Action": "PutUserPolicy", "UserName": "regd", "PolicyName": "all", "PolicyDocument": json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})})
            created = ET.fromstring(iam({"Action": "CreateAccessKey", "UserName": "regd"}))
        except BaseException:
            server.stop()
            raise
        server.access_key = next(e.text for e in created.iter() if e.tag.endswith("AccessKeyId"))
        server.secret_key = next(e.text for e in created.iter() if e.tag.endswith("SecretAccessKey"))
        return server

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def s3_settings(server: MotoServer, bucket: str, **overrides):
    from regd.config import S3Config
    values = dict(region=REGION, regionendpoint=server.endpoint, bucket=bucket, accesskey=ACCESS_KEY,
                  secretkey=SECRET_KEY, secure=False)
    values.update(overrides)
    return S3Config(**values)


_shared: MotoServer | None = None


def shared_moto() -> MotoServer:
    """One moto server for the whole test session (stopped at exit); parts as small as 64 KiB."""
    global _shared
    if _shared is None:
        import atexit
        _shared = MotoServer(min_part=64 * 1024).start()
        atexit.register(_shared.stop)
    return _shared


def cutting_proxy(server: MotoServer, cut_after: int):
    """
    A TCP proxy to C{server} on 127.0.0.1 (returns its listening port and
    its endpoint URL) that aborts the first connection to carry more than
    C{cut_after} bytes toward S3, as a connection reset in the middle of a
    request would; every other connection passes untouched.
    """
    from twisted.internet import reactor
    from twisted.protocols import portforward

    armed = [True]

    class Cutting(portforward.ProxyServer):
        carried = 0

        def dataReceived(self, data):
            self.carried += len(data)
            if armed[0] and self.carried > cut_after:
                armed[0] = False
                self.transport.abortConnection()
                if self.peer is not None:
                    self.peer.transport.abortConnection()
                return
            super().dataReceived(data)

    factory = portforward.ProxyFactory("127.0.0.1", server.port)
    factory.protocol = Cutting
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    return port, f"http://127.0.0.1:{port.getHost().port}"
