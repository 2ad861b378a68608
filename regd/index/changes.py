# -*- test-case-name: tests.index.test_changes -*-
"""
Change markers: how instances sharing one storage learn of each other's
pushes. Every change an instance indexes from its own events is also
written to storage as a small JSON marker under
C{regd/index/changes/<minute bucket>/<marker>}; every instance lists the
recent buckets each refresh interval and re-scans the repositories named
by markers its database has not applied yet.

Markers only say *which* repository changed (plus what storage cannot
tell: who pushed, and pull/push counts), so applying one twice, late or out
of order just re-reads storage. Markers older than the retention are
deleted by whichever instance sees them first; an instance that was away
longer than that rebuilds its index from storage instead.
"""

from __future__ import annotations

import json
import time

from regd.randomids import random_ids
from regd.registry import links
from regd.storage import paths
from regd.storage.interfaces import PathNotFound, StorageError

_BUCKET = "%Y%m%d%H%M"


def bucket_of(seconds: float) -> str:
    return time.strftime(_BUCKET, time.gmtime(seconds))


def marker_time(marker: str) -> float:
    """When a marker was written (its name starts with milliseconds since the epoch)."""
    try:
        return int(marker.split("-", 1)[0]) / 1000.0
    except ValueError:
        return 0.0


class ChangeLog:
    def __init__(self, driver, clock):
        self._driver = driver
        self._clock = clock

    def new_marker(self) -> tuple[str, str]:
        now = self._clock.seconds()
        return bucket_of(now), f"{int(now * 1000):015d}-{random_ids.hex()}"

    async def write(self, bucket: str, marker: str, payload: dict) -> None:
        await self._driver.put_content(paths.index_change(bucket, marker),
                                       json.dumps(payload, sort_keys=True).encode("utf-8"))

    async def listing(self) -> list[tuple[str, str]]:
        """Every marker in storage, oldest first."""
        found = []
        for bucket in sorted(await links.list_or_empty(self._driver, paths.INDEX_CHANGES)):
            for marker in await links.list_or_empty(self._driver, paths.index_change_bucket(bucket)):
                if not marker.endswith(".tmp") and "." not in marker:
                    found.append((bucket, marker))
        found.sort(key=lambda item: item[1])
        return found

    async def read(self, bucket: str, marker: str) -> dict | None:
        try:
            payload = json.loads(await self._driver.get_content(paths.index_change(bucket, marker)))
        except (PathNotFound, ValueError, UnicodeDecodeError):
            return None
        return payload if isinstance(payload, dict) else None

    async def prune(self, older_than: float) -> int:
        """Delete whole buckets older than C{older_than} (seconds since the epoch)."""
        oldest_kept = bucket_of(older_than)
        removed = 0
        for bucket in await links.list_or_empty(self._driver, paths.INDEX_CHANGES):
            if bucket < oldest_kept:
                try:
                    await self._driver.delete(paths.index_change_bucket(bucket))
                    removed += 1
                except StorageError:
                    pass  # another instance pruned it first
        return removed
