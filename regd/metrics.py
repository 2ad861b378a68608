# -*- test-case-name: tests.test_metrics -*-
"""
The debug address's /metrics: one Prometheus CollectorRegistry that every
part registers its collectors with (never the global default registry).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily
from twisted.web.resource import Resource

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request):
        body = generate_latest(self.registry)
        request.setHeader(b"Content-Type", CONTENT_TYPE)
        return body


class FailedLoginsCollector:
    """Counts logins refused for a wrong password or unknown user."""

    def __init__(self, failures):
        self._failures = failures

    def collect(self):
        family = CounterMetricFamily("regd_auth_failed_logins", "Logins refused (wrong password or unknown user)")
        family.add_metric([], self._failures.total)
        yield family
