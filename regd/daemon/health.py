# -*- test-case-name: tests.test_health -*-
"""
Health checks (registry:2's `health` section): each check runs every
`interval`; a check is failing after `threshold` consecutive failures.
/debug/health reports every check as JSON and answers 503 while one fails;
the load-balancer check on / answers 503 too. A non-critical check
(Redis) reports "degraded" without either.
"""

from __future__ import annotations

import json

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web.resource import Resource

from regd.units import parse_duration

log = Logger()


class Check:
    """
    A non-critical check (critical=False) that fails reports "degraded" and
    leaves the service healthy: regd still answers right, only slower.
    """

    def __init__(self, name: str, probe, threshold: int, critical: bool = True):
        self.name, self.probe, self.threshold = name, probe, max(1, threshold)
        self.critical = critical
        self.failures = 0
        self.error = ""
        self.checked_at: float | None = None

    @property
    def healthy(self) -> bool:
        return self.failures < self.threshold

    async def run(self, now: float) -> None:
        try:
            await defer.maybeDeferred(self.probe)
        except Exception as e:
            self.failures += 1
            self.error = f"{type(e).__name__}: {e}"[:300]
            if self.failures == self.threshold:
                log.error("health check {name} failing: {error}", name=self.name, error=self.error)
        else:
            if not self.healthy:
                log.info("health check {name} passing again", name=self.name)
            self.failures = 0
            self.error = ""
        self.checked_at = now


class HealthService(service.Service):
    def __init__(self, clock, checks: list[tuple[Check, float]], extra_reports=None):
        self.clock = clock
        self.checks = [c for c, _ in checks]
        self._intervals = checks
        self._loops = []
        # name -> callable returning a JSON-able report (informational, never failing)
        self.extra_reports = dict(extra_reports or {})

    def startService(self):
        super().startService()
        for check, interval in self._intervals:
            loop = task.LoopingCall(lambda c=check: defer.ensureDeferred(c.run(self.clock.seconds())))
            loop.clock = self.clock
            loop.start(interval, now=True).addErrback(lambda f: log.failure("health loop stopped", f))
            self._loops.append(loop)

    def stopService(self):
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()

    @property
    def healthy(self) -> bool:
        return all(c.healthy for c in self.checks if c.critical)

    def report(self) -> dict:
        document = {c.name: {"status": "ok" if c.healthy else "failing" if c.critical else "degraded",
                             "consecutive_failures": c.failures,
                             "error": c.error, "checked_at": c.checked_at} for c in self.checks}
        for name, make in self.extra_reports.items():
            document[name] = make()
        return document


class HealthResource(Resource):
    isLeaf = True

    def __init__(self, health: HealthService):
        super().__init__()
        self.health = health

    def render_GET(self, request):
        request.setResponseCode(200 if self.health.healthy else 503)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(self.health.report(), indent=2).encode()


def storage_check_settings(raw: dict) -> tuple[bool, float, int]:
    """(enabled, interval, threshold) from health.storagedriver; on by default, 10 s, threshold 3."""
    section = (raw or {}).get("storagedriver") or {}
    enabled = bool(section.get("enabled", True))
    return enabled, parse_duration(section.get("interval", "10s")), int(section.get("threshold", 3))
