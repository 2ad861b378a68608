"""haproxy in front of several registry instances, for multi-instance tests."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.processes import LIVE_LOGS, ProcessFailed, free_port, require_tool, tail


class Haproxy:
    """
    Round-robin over C{backends} (host:port strings) with one request per
    connection to the servers (option http-server-close), so consecutive
    requests of one upload land on different instances.
    """

    def __init__(self, backends: list[str], workdir: Path):
        self.backends = backends
        self.port = free_port()
        self.workdir = Path(workdir)
        self.config_path = self.workdir / f"haproxy-{self.port}.cfg"
        self.log_path = self.workdir / f"haproxy-{self.port}.log"
        self.popen: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def config_text(self) -> str:
        servers = "".join(
            f"    server r{i} {b} check inter 500 fall 1 rise 1\n" for i, b in enumerate(self.backends))
        return (
            "global\n    maxconn 256\n"
            "defaults\n    mode http\n    timeout connect 5s\n    timeout client 120s\n"
            "    timeout server 120s\n    option http-server-close\n"
            f"frontend fe\n    bind 127.0.0.1:{self.port}\n    default_backend regd\n"
            "backend regd\n    balance roundrobin\n    option httpchk GET /v2/\n"
            "    retry-on conn-failure empty-response\n    retries 2\n    option redispatch\n"
            + servers)

    def start(self) -> "Haproxy":
        self.config_path.write_text(self.config_text())
        log = open(self.log_path, "ab")
        try:
            self.popen = subprocess.Popen(
                [require_tool("haproxy"), "-db", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        LIVE_LOGS[f"haproxy on {self.host}"] = self.log_path
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ProcessFailed(f"haproxy exited with {self.popen.returncode}:\n{tail(self.log_path)}")
            try:
                with urllib.request.urlopen(self.url + "/v2/", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.1)
        self.stop()
        raise ProcessFailed(f"haproxy not ready:\n{tail(self.log_path)}")

    def stop(self) -> None:
        if self.popen is not None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
            self.popen = None


_UPLOAD_LINE = re.compile(r'"(POST|PATCH|PUT|GET|DELETE) [^ "]*/blobs/uploads/([0-9a-f-]{36})')


def upload_requests(log_text: str) -> list[tuple[str, str]]:
    """(method, upload id) of every upload request in a regd access log."""
    return _UPLOAD_LINE.findall(log_text)
