"""A real redis-server on 127.0.0.1 (Debian's redis-server), for cache tests."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from tests.support.processes import LIVE_LOGS, ProcessFailed, free_port, require_tool, tail


class RedisServer:
    """
    redis-server on an ephemeral port, no persistence. C{kill()} SIGKILLs it
    and C{start()} brings it back on the same port (empty, as after a crash
    without persistence).
    """

    def __init__(self, workdir: Path, password: str = "", tls=None):
        """C{tls}: a L{tests.support.certs.PKI}: TLS only, client certificates required."""
        self.binary = require_tool("redis-server")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.log_path = self.workdir / f"redis-{self.port}.log"
        self.popen: subprocess.Popen | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "RedisServer":
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), "--logfile", str(self.log_path),
                "--maxmemory-policy", "allkeys-lru"]
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls is not None:
            args[1:3] = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.tls.server_chain,
                         "--tls-key-file", self.tls.server_key, "--tls-ca-cert-file", self.tls.ca,
                         "--tls-auth-clients", "yes"]
        self.popen = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        LIVE_LOGS[f"redis {self.port}"] = self.log_path
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ProcessFailed(f"redis-server exited {self.popen.returncode}:\n{tail(self.log_path)}")
            try:
                if self.command("PING") in ("PONG", "NOAUTH Authentication required."):
                    return self
            except OSError:
                pass
            time.sleep(0.02)
        raise ProcessFailed(f"redis-server did not answer:\n{tail(self.log_path)}")

    def _exchange(self, line: str) -> list[str]:
        """Send one inline command (then PING, to know where the reply ends); the reply's lines."""
        with self._connect() as s:
            prefix = f"AUTH {self.password}\r\n" if self.password else ""
            s.sendall((prefix + line + "\r\nPING\r\n").encode())
            data = b""
            while not data.endswith(b"+PONG\r\n") and not data.endswith(b"NOAUTH Authentication required.\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        lines = data.decode().split("\r\n")[:-2]
        return lines[1:] if self.password else lines

    def _connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        if self.tls is None:
            return s
        import ssl
        context = ssl.create_default_context(cafile=self.tls.ca)
        context.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        return context.wrap_socket(s, server_hostname="127.0.0.1")

    def command(self, *words: str) -> str:
        """One inline command; its reply's first line without the type sign (PING, EXISTS, DBSIZE...)."""
        return self._exchange(" ".join(words))[0].lstrip("+:-")

    def keys(self, pattern: str = "*") -> set[str]:
        lines = self._exchange(f"KEYS {pattern}")
        return {line for i, line in enumerate(lines) if i > 0 and lines[i - 1].startswith("$")}

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self.popen = None
