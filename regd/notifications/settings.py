# -*- test-case-name: tests.notifications.test_settings -*-
"""
The `notifications` section: registry:2's keys, so existing configurations
work, plus regd's own (retries, dead letters, queue limits, batching,
signing, TLS to the receiver, CloudEvents).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import attrs

from regd.units import parse_duration

ACTIONS = ("push", "pull", "mount", "delete")
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
               "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


class NotificationConfigError(ValueError):
    """One line naming the key path and the problem."""


def _duration(value: Any, where: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise NotificationConfigError(f"{where}: {e}") from None


def _int(value: Any, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise NotificationConfigError(f"{where}: expected a whole number >= {minimum}, got {value!r}")
    return value


def _queue_limit(value: Any, where: str) -> tuple[int, int]:
    """(events, bytes): a whole number counts events; "512MB" or "1GiB" counts bytes of event JSON."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return _int(value, where, 1), 0
    match = _SIZE.match(str(value))
    if match is None:
        raise NotificationConfigError(f"{where}: expected a number of events or a size like 512MB, got {value!r}")
    unit = match.group(2).lower().rstrip("b")
    size = int(match.group(1)) * _SIZE_UNITS[unit]
    if size < 1:
        raise NotificationConfigError(f"{where}: must be positive")
    return 0, size


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise NotificationConfigError(f"{where}: expected a list of strings")
    return tuple(value)


@attrs.frozen
class EndpointSettings:
    name: str
    url: str
    headers: dict = attrs.field(factory=dict, repr=False)
    timeout: float = 1.0
    # registry:2 counts consecutive failures before backing off; regd backs
    # off from the first failure and keeps the key for compatibility.
    threshold: int = 10
    backoff: float = 1.0
    max_backoff: float = 300.0
    disabled: bool = False
    ignored_media_types: frozenset = frozenset()
    ignored_actions: frozenset = frozenset()
    max_retries: int = 0  # 0: retry until max_age
    max_age: float = 7 * 24 * 3600.0  # then the event becomes a dead letter
    queue_limit: int = 100_000  # pending events kept for this endpoint (0: no count limit)
    queue_limit_bytes: int = 0  # pending event JSON bytes kept for this endpoint (0: no byte limit)
    format: str = "distribution"
    batch: int = 1
    secrets: tuple[str, ...] = attrs.field(default=(), repr=False)
    ca_file: str = ""
    client_certificate: str = ""
    client_key: str = ""


@attrs.frozen
class NotificationSettings:
    endpoints: tuple[EndpointSettings, ...] = ()
    include_references: bool = False
    journal: str = ""
    drain_timeout: float = 5.0


_ENDPOINT_KEYS = {"name", "url", "headers", "timeout", "threshold", "backoff", "maxbackoff", "disabled",
                  "ignoredmediatypes", "ignore", "maxretries", "maxage", "queuelimit", "format", "batch",
                  "secret", "secrets", "tls"}


def _endpoint(raw: Any, where: str, warnings: list[str]) -> EndpointSettings:
    if not isinstance(raw, dict):
        raise NotificationConfigError(f"{where}: expected a map")
    for key in raw:
        if key not in _ENDPOINT_KEYS:
            warnings.append(f"unknown configuration key {where}.{key}")
    name = raw.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise NotificationConfigError(f"{where}.name: required, a name without '/'")
    url = raw.get("url")
    if not isinstance(url, str) or not re.match(r"^https?://[^/]+", url):
        raise NotificationConfigError(f"{where}.url: not an http(s) URL")
    headers = raw.get("headers") or {}
    if not isinstance(headers, dict):
        raise NotificationConfigError(f"{where}.headers: expected a map of name to list of values")
    headers = {str(k): _strings(v, f"{where}.headers.{k}") for k, v in headers.items()}
    ignore = raw.get("ignore") or {}
    if not isinstance(ignore, dict):
        raise NotificationConfigError(f"{where}.ignore: expected a map")
    actions = _strings(ignore.get("actions"), f"{where}.ignore.actions")
    for action in actions:
        if action not in ACTIONS:
            raise NotificationConfigError(f"{where}.ignore.actions: unknown action {action!r}")
    media_types = _strings(raw.get("ignoredmediatypes"), f"{where}.ignoredmediatypes") + _strings(
        ignore.get("mediatypes"), f"{where}.ignore.mediatypes")
    event_format = raw.get("format", "distribution")
    if event_format not in ("distribution", "cloudevents"):
        raise NotificationConfigError(f"{where}.format: expected distribution or cloudevents")
    secrets = _strings(raw.get("secrets"), f"{where}.secrets") or _strings(raw.get("secret"), f"{where}.secret")
    tls = raw.get("tls") or {}
    if not isinstance(tls, dict):
        raise NotificationConfigError(f"{where}.tls: expected a map")
    limit_events, limit_bytes = _queue_limit(raw.get("queuelimit", 100_000), f"{where}.queuelimit")
    settings = EndpointSettings(
        name=name, url=url, headers=headers,
        timeout=_duration(raw.get("timeout", "1s"), f"{where}.timeout"),
        threshold=_int(raw.get("threshold", 10), f"{where}.threshold"),
        backoff=_duration(raw.get("backoff", "1s"), f"{where}.backoff"),
        max_backoff=_duration(raw.get("maxbackoff", "5m"), f"{where}.maxbackoff"),
        disabled=bool(raw.get("disabled", False)),
        ignored_media_types=frozenset(media_types), ignored_actions=frozenset(actions),
        max_retries=_int(raw.get("maxretries", 0), f"{where}.maxretries"),
        max_age=_duration(raw.get("maxage", "168h"), f"{where}.maxage"),
        queue_limit=limit_events, queue_limit_bytes=limit_bytes,
        format=event_format, batch=_int(raw.get("batch", 1), f"{where}.batch", 1),
        secrets=secrets,
        ca_file=str(tls.get("ca", "")), client_certificate=str(tls.get("certificate", "")),
        client_key=str(tls.get("key", "")),
    )
    if settings.timeout <= 0 or settings.backoff <= 0:
        raise NotificationConfigError(f"{where}: timeout and backoff must be positive")
    if bool(settings.client_certificate) != bool(settings.client_key):
        raise NotificationConfigError(f"{where}.tls: certificate and key go together")
    return settings


def parse_notifications(raw: dict | None, default_journal: str) -> tuple[NotificationSettings, list[str]]:
    warnings: list[str] = []
    raw = raw or {}
    if not isinstance(raw, dict):
        raise NotificationConfigError("notifications: expected a map")
    for key in raw:
        if key not in ("events", "endpoints", "journal", "draintimeout"):
            warnings.append(f"unknown configuration key notifications.{key}")
    events = raw.get("events") or {}
    endpoints_raw = raw.get("endpoints") or []
    if not isinstance(endpoints_raw, list):
        raise NotificationConfigError("notifications.endpoints: expected a list")
    endpoints = tuple(_endpoint(e, f"notifications.endpoints[{i}]", warnings) for i, e in enumerate(endpoints_raw))
    names = [e.name for e in endpoints]
    if len(set(names)) != len(names):
        raise NotificationConfigError("notifications.endpoints: endpoint names must be unique")
    return NotificationSettings(
        endpoints=tuple(e for e in endpoints if not e.disabled),
        include_references=bool(events.get("includereferences", False)) if isinstance(events, dict) else False,
        journal=str(raw.get("journal") or default_journal),
        drain_timeout=_duration(raw.get("draintimeout", "5s"), "notifications.draintimeout"),
    ), warnings


def redacted_url(url: str) -> str:
    """The URL without credentials or query string, for logs and status pages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return f"{parts.scheme}://{netloc}{parts.path}"
