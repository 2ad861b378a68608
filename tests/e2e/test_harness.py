"""The e2e harness itself: tool checks, process lifecycle, and the hand-built images."""

from __future__ import annotations

import gzip
import hashlib
import json
import signal
import socket
import sys

import pytest

from tests.support import images, processes
from tests.support.processes import ProcessFailed, RegistryProcess, free_port, require_tool

MISSING = "regd-e2e-no-such-tool"


def test_require_tool_skips_locally(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_tool(MISSING)


def test_require_tool_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        require_tool(MISSING)


def test_require_tool_finds_python():
    assert require_tool("sh").endswith("/sh")


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


_FAKE_REGISTRY = r"""
import http.server, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)   # forces stop() to escalate to SIGKILL
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/v2/" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
print("fake registry up", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


class _Fake(RegistryProcess):
    kind = "fake"
    script = _FAKE_REGISTRY

    def command(self):
        return [sys.executable, "-c", self.script, str(self.port)]


class _Crashing(_Fake):
    kind = "crashing"
    script = "print('fatal: bad config', flush=True); raise SystemExit(3)"


def test_registry_process_waits_then_escalates_to_sigkill(tmp_path):
    proc = _Fake(tmp_path / "root", workdir=tmp_path).start()
    assert proc.config_path.read_text().count(f"addr: 127.0.0.1:{proc.port}") == 1
    assert processes.LIVE_LOGS[f"fake registry on {proc.host}"] == proc.log_path
    assert proc.stop(term_timeout=0.5) == -signal.SIGKILL
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proc.port), timeout=1).close()
    assert "fake registry up" in proc.logs()


def test_registry_process_reports_early_exit_with_log(tmp_path):
    proc = _Crashing(tmp_path / "root", workdir=tmp_path)
    with pytest.raises(ProcessFailed, match="fatal: bad config"):
        proc.start()
    assert proc.popen is None


def test_registry_config_matches_reference_format(tmp_path):
    proc = processes.RegdProcess(tmp_path / "root", 5555, workdir=tmp_path)
    text = proc.config_text()
    assert "version: 0.1\n" in text
    assert f"rootdirectory: {tmp_path / 'root'}\n" in text
    assert "addr: 127.0.0.1:5555\n" in text
    assert proc.command()[1:5] == ["-n", "--pidfile=", "regd", "--config"]


def test_index_layout_is_consistent_and_deterministic(tmp_path):
    a = images.build_index_with_artifact(tmp_path / "a")
    b = images.build_index_with_artifact(tmp_path / "b")
    assert images.blob_digests(tmp_path / "a") == images.blob_digests(tmp_path / "b")
    images.verify_layout_blobs(tmp_path / "a")
    index = images.read_blob_json(tmp_path / "a", a["index"]["digest"])
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    artifact = images.read_blob_json(tmp_path / "a", a["artifact"]["digest"])
    assert artifact["subject"] == {k: a["amd64"][k] for k in ("mediaType", "digest", "size")}
    assert artifact["artifactType"] == images.TEST_ARTIFACT_TYPE
    refs = json.loads((tmp_path / "a" / "index.json").read_text())["manifests"]
    assert [r["annotations"][images.REF_NAME] for r in refs] == ["multiarch", "sig"]
    assert b["artifact"] == a["artifact"]


def test_layer_diff_ids_match_uncompressed_layers(tmp_path):
    info = images.build_multilayer_layout(tmp_path, "multi")
    manifest = images.read_blob_json(tmp_path, info["manifest"]["digest"])
    assert len(manifest["layers"]) == 3
    for layer, diff_id in zip(manifest["layers"], info["diff_ids"]):
        data = (tmp_path / "blobs" / "sha256" / layer["digest"].split(":")[1]).read_bytes()
        assert layer["size"] == len(data)
        assert "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest() == diff_id
