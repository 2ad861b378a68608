# -*- test-case-name: tests.notifications.test_events -*-
"""
Registry events as receivers read them: registry:2's JSON event (so a
receiver written for the reference registry works unchanged) or CloudEvents
1.0 structured mode.
"""

from __future__ import annotations

import json
import time
from typing import Any

from regd.randomids import random_ids
from regd.registry.listener import BLOB, MANIFEST, RegistryEvent

ENVELOPE_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"
CLOUDEVENT_STRUCTURED = "application/cloudevents+json"
CLOUDEVENT_TYPE_PREFIX = "io.regd.registry"


def source_address(listen_addr: str, hostname: str | None = None) -> str:
    """registry:2's source.addr: this host's name and the port it listens on ("host:5000")."""
    import socket
    hostname = hostname or socket.gethostname()
    port = listen_addr.rpartition(":")[2] if ":" in listen_addr else ""
    return f"{hostname}:{port}" if port.isdigit() else hostname


def _timestamp(seconds: float) -> str:
    whole = int(seconds)
    fraction = f"{seconds - whole:.9f}"[1:].rstrip("0").rstrip(".")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + fraction + "Z"


def _target_url(event: RegistryEvent) -> str:
    base = event.context.base_url.rstrip("/")
    if event.kind == MANIFEST and event.digest is not None:
        return f"{base}/v2/{event.repository}/manifests/{event.digest}"
    if event.kind == BLOB and event.digest is not None:
        return f"{base}/v2/{event.repository}/blobs/{event.digest}"
    return ""


def to_distribution(event: RegistryEvent, *, now: float, source_addr: str, instance_id: str,
                    include_references: bool, event_id: str | None = None) -> dict[str, Any]:
    """One entry of registry:2's {"events": [...]} envelope."""
    target: dict[str, Any] = {}
    if event.media_type:
        target["mediaType"] = event.media_type
    if event.digest is not None:
        target["digest"] = str(event.digest)
    if event.size is not None:
        target["size"] = event.size
        target["length"] = event.size
    target["repository"] = event.repository
    url = _target_url(event)
    if url:
        target["url"] = url
    if event.tag:
        target["tag"] = event.tag
    if event.from_repository:
        target["fromRepository"] = event.from_repository
    if include_references and event.kind == MANIFEST and event.references:
        target["references"] = [{"digest": str(d)} for d in event.references]
    context = event.context
    return {
        "id": event_id or random_ids(),
        "timestamp": _timestamp(now),
        "action": event.action,
        "target": target,
        "request": {"id": context.request_id, "addr": context.addr, "host": context.host,
                    "method": context.method, "useragent": context.user_agent},
        "actor": {"name": context.actor} if context.actor else {},
        "source": {"addr": source_addr, "instanceID": instance_id},
    }


def to_cloudevent(entry: dict[str, Any]) -> dict[str, Any]:
    """CloudEvents 1.0 structured JSON for one distribution-format entry."""
    target = entry["target"]
    subject = target["repository"] + (f":{target['tag']}" if target.get("tag") else "") + (
        f"@{target['digest']}" if target.get("digest") else "")
    return {
        "specversion": "1.0",
        "id": entry["id"],
        "source": f"/regd/{entry['source']['instanceID']}",
        "type": f"{CLOUDEVENT_TYPE_PREFIX}.{entry['action']}",
        "subject": subject,
        "time": entry["timestamp"],
        "datacontenttype": "application/json",
        "data": entry,
    }


def envelope(entries: list[dict[str, Any]], event_format: str, batched: bool = False) -> tuple[bytes, str]:
    """
    The POST body and its Content-Type for entries. CloudEvents go one per
    POST in structured mode, or as a JSON batch when the endpoint batches
    (batch > 1), so a receiver always sees one shape.
    """
    if event_format == "cloudevents":
        if not batched and len(entries) == 1:
            return json.dumps(to_cloudevent(entries[0])).encode(), CLOUDEVENT_STRUCTURED
        return json.dumps([to_cloudevent(e) for e in entries]).encode(), CLOUDEVENTS_BATCH
    return json.dumps({"events": entries}).encode(), ENVELOPE_MEDIA_TYPE
