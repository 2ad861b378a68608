# -*- test-case-name: tests.notifications.test_admin -*-
"""
Notification visibility on the debug address: JSON status per endpoint,
dead letters to list and replay, and Prometheus metrics.
"""

from __future__ import annotations

import json

from klein import Klein
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class NotificationCollector:
    """Reads endpoint figures at scrape time (no second copy of the counters)."""

    def __init__(self, service):
        self._service = service

    def collect(self):
        gauges = {
            "pending": GaugeMetricFamily("regd_notifications_pending", "Events waiting for delivery",
                                         labels=["endpoint"]),
            "age": GaugeMetricFamily("regd_notifications_oldest_pending_age_seconds",
                                     "Age of the oldest pending event", labels=["endpoint"]),
            "dead": GaugeMetricFamily("regd_notifications_dead_letters", "Events given up on", labels=["endpoint"]),
            "bytes": GaugeMetricFamily("regd_notifications_pending_bytes", "Bytes of event JSON waiting for delivery",
                                       labels=["endpoint"]),
        }
        counters = {
            "attempts": CounterMetricFamily("regd_notifications_attempts", "Delivery attempts", labels=["endpoint"]),
            "successes": CounterMetricFamily("regd_notifications_successes", "Successful deliveries",
                                             labels=["endpoint"]),
            "failures": CounterMetricFamily("regd_notifications_failures", "Failed deliveries", labels=["endpoint"]),
            "dropped": CounterMetricFamily("regd_notifications_dropped", "Events refused at the queue limit",
                                           labels=["endpoint"]),
        }
        for endpoint in self._service.endpoints:
            labels = [endpoint.name]
            gauges["pending"].add_metric(labels, endpoint.pending)
            gauges["age"].add_metric(labels, endpoint.oldest_pending_age())
            gauges["dead"].add_metric(labels, endpoint.stats.dead_letters)
            gauges["bytes"].add_metric(labels, endpoint.pending_bytes)
            for key in counters:
                counters[key].add_metric(labels, getattr(endpoint.stats, key))
        yield from gauges.values()
        yield from counters.values()


def _admin_only(handler):
    """Answer 401/403 unless the admin authorizer accepts the request (open without one)."""
    import functools

    @functools.wraps(handler)
    async def guarded(self, request, *args, **kwargs):
        if self.authorize is not None:
            try:
                await self.authorize(request)
            except Exception as e:
                for name, value in getattr(e, "headers", {}).items():
                    request.setHeader(name.encode(), value.encode())
                return self._json(request, getattr(e, "status", 403), {"error": "admin access required"})
        return await handler(self, request, *args, **kwargs)

    return guarded


def _app() -> Klein:
    app = Klein()
    # /debug/notifications (as the README writes it) answers itself, not with a redirect to .../
    app.url_map.strict_slashes = False
    return app


class NotificationAdmin:
    app = _app()

    def __init__(self, service, registry: CollectorRegistry | None = None, authorize=None):
        self.service = service
        self.metrics = registry or CollectorRegistry()
        self.metrics.register(NotificationCollector(service))
        # authorize(request) -> Deferred that fails with a RegistryError for non-admins; None: open.
        self.authorize = authorize

    def resource(self):
        return self.app.resource()

    @staticmethod
    def _json(request, status: int, document) -> bytes:
        body = json.dumps(document, indent=2).encode()
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    # Routes are relative: the daemon mounts this at /debug/notifications.
    @app.route("/", methods=["GET"])
    @_admin_only
    async def status(self, request):
        return self._json(request, 200, {"endpoints": await self.service.status()})

    @app.route("/<name>/deadletters", methods=["GET"])
    @_admin_only
    async def dead_letters(self, request, name):
        if self.service.endpoint(name) is None:
            return self._json(request, 404, {"error": "no such endpoint"})
        entries = await self.service.journal.dead_letters(name)
        return self._json(request, 200, {"endpoint": name, "deadletters": [
            {"seq": e.seq, "id": e.event_id, "created": e.created, "attempts": e.attempts,
             "last_error": e.last_error, "event": json.loads(e.body)} for e in entries]})

    @app.route("/<name>/deadletters/replay", methods=["POST"])
    @_admin_only
    async def replay(self, request, name):
        if self.service.endpoint(name) is None:
            return self._json(request, 404, {"error": "no such endpoint"})
        # ?id=<event id> and ?seq=<journal seq> (repeatable) pick dead letters; neither: all of them.
        seqs = [int(v) for v in request.args.get(b"seq", []) if v.isdigit()] or None
        ids = [v.decode("utf-8", "replace") for v in request.args.get(b"id", [])] or None
        count = await self.service.replay(name, seqs, ids)
        return self._json(request, 200, {"endpoint": name, "replayed": count})
