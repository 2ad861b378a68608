# -*- test-case-name: tests.http.test_metrics -*-
"""
Request metrics for Prometheus: counts and latency per route and status,
bytes in and out, requests in progress. Routes are named by the API
resource, never by repository, so label values stay few.
"""

from __future__ import annotations

import re
import time

from prometheus_client import Counter, Gauge, Histogram

_ROUTES = [
    ("blob_upload", re.compile(rb"^/v2/.+/blobs/uploads/")),
    ("blob", re.compile(rb"^/v2/.+/blobs/[^/]+$")),
    ("manifest", re.compile(rb"^/v2/.+/manifests/[^/]+$")),
    ("tags", re.compile(rb"^/v2/.+/tags/list$")),
    ("referrers", re.compile(rb"^/v2/.+/referrers/[^/]+$")),
    ("catalog", re.compile(rb"^/v2/_catalog$")),
    ("base", re.compile(rb"^/v2/?$")),
    ("token", re.compile(rb"^/auth/token$")),
    ("root", re.compile(rb"^/$")),
]


def route_of(path: bytes) -> str:
    path = path.split(b"?", 1)[0]
    for name, pattern in _ROUTES:
        if pattern.search(path):
            return name
    return "other"


class HTTPMetrics:
    def __init__(self, registry, site=None, uploads=None):
        labels = ["route", "method", "status"]
        self.requests = Counter("regd_http_requests", "Requests answered", labels, registry=registry)
        self.latency = Histogram("regd_http_request_duration_seconds", "Time from request line to last byte",
                                 ["route", "method"], registry=registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.bytes_in = Counter("regd_http_request_bytes", "Request body bytes received", ["route"],
                                registry=registry)
        self.bytes_out = Counter("regd_http_response_bytes", "Response body bytes sent", ["route"],
                                 registry=registry)
        self.aborted = Counter("regd_http_requests_aborted", "Requests whose client hung up before the response ended",
                               ["route", "method"], registry=registry)
        self.in_flight = Gauge("regd_http_requests_in_progress", "Requests being received or answered",
                               registry=registry)
        if site is not None:
            self.in_flight.set_function(lambda: site.in_flight)
        self.uploads = Gauge("regd_uploads_in_progress", "Upload sessions started and not yet finished",
                             registry=registry)
        if uploads is not None:
            self.uploads.set_function(uploads.in_progress)
        self.storage_errors = Counter("regd_storage_errors", "Requests that failed on a storage error",
                                      ["route"], registry=registry)
        if site is not None and hasattr(site, "connections"):
            registry.register(_RefusalsCollector(site.connections))

    def storage_error(self, request) -> None:
        self.storage_errors.labels(route_of(request.uri or b"")).inc()

    def observe_aborted(self, request) -> None:
        route = route_of(request.uri or b"")
        self.aborted.labels(route, (request.method or b"?").decode("ascii", "replace")[:10]).inc()
        self.bytes_in.labels(route).inc(getattr(request, "body_bytes", 0))
        self.bytes_out.labels(route).inc(request.sentLength or 0)

    def observe(self, request) -> None:
        route = route_of(request.uri or b"")
        method = (request.method or b"?").decode("ascii", "replace")[:10]
        self.requests.labels(route, method, str(request.code)).inc()
        started = getattr(request, "started", None)
        if started is not None:
            self.latency.labels(route, method).observe(time.monotonic() - started)
        self.bytes_in.labels(route).inc(getattr(request, "body_bytes", 0))
        self.bytes_out.labels(route).inc(request.sentLength or 0)


class _RefusalsCollector:
    """Connections refused or cut by regd.http.limits, by reason, read from the site's counter."""

    def __init__(self, connections):
        self.connections = connections

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        refused = CounterMetricFamily("regd_connections_refused", "Connections refused (503) or cut (408)",
                                      labels=["reason"])
        for reason, count in sorted(self.connections.refusals.items()):
            refused.add_metric([reason], count)
        yield refused
        yield GaugeMetricFamily("regd_connections_open", "Client connections held", value=self.connections.total)
