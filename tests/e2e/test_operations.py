"""Logs as operators read them: JSON lines with fixed fields, an access log carrying the request id, levels."""

from __future__ import annotations

import json

import pytest

from tests.support import e2e_http
from tests.support.processes import RegdProcess

pytestmark = pytest.mark.e2e


class LoggingRegd(RegdProcess):
    def __init__(self, root, workdir, log_section: str):
        super().__init__(root, workdir=workdir)
        self.log_section = log_section

    def config_text(self) -> str:
        return super().config_text() + self.log_section


def test_json_logs_with_fields_and_request_ids(tmp_path):
    regd = LoggingRegd(tmp_path / "root", tmp_path,
                       "log:\n  level: info\n  formatter: json\n  fields:\n    service: registry-eu\n")
    try:
        regd.start()
        answer = e2e_http.get(f"{regd.url}/v2/_catalog")
        request_id = answer.headers["X-Request-Id"]
    finally:
        regd.stop()
    events = [json.loads(line) for line in regd.log_path.read_text().splitlines() if line.startswith("{")]
    assert events, regd.logs()
    assert all(e.get("service") == "registry-eu" for e in events)
    access = [e for e in events if request_id in json.dumps(e)]
    assert len(access) == 1, events[-5:]
    assert "/v2/_catalog" in json.dumps(access[0])


def test_log_level_filters(tmp_path):
    regd = LoggingRegd(tmp_path / "root", tmp_path, "log:\n  level: error\n")
    try:
        regd.start()
        e2e_http.get(f"{regd.url}/v2/")
    finally:
        regd.stop()
    text = regd.logs()
    assert "GET /v2/" not in text  # access lines are info
    assert "Starting factory" not in text
