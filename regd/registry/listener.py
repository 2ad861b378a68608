# -*- test-case-name: tests.registry.test_events -*-
"""
The seam notifications plug into: one record per successful operation.

The service calls listeners only after the write is durable. A listener may
return a Deferred (a durable journal, say); the request is answered only
after it fires, so an event a client saw succeed is never lost.
"""

from __future__ import annotations

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Interface

from regd.oci.digest import Digest
from regd.registry.context import RequestContext

PUSH = "push"
PULL = "pull"
MOUNT = "mount"
DELETE = "delete"

BLOB = "blob"
MANIFEST = "manifest"
TAG = "tag"


@attrs.frozen
class RegistryEvent:
    action: str  # push | pull | mount | delete
    kind: str  # blob | manifest | tag
    repository: str
    context: RequestContext
    digest: Digest | None = None
    size: int | None = None
    media_type: str | None = None
    tag: str | None = None
    from_repository: str | None = None
    # Digests a manifest references (config, layers, child manifests).
    references: tuple[Digest, ...] = ()


class IRegistryListener(Interface):
    def registry_event(event: RegistryEvent):
        """Record an event; may return a Deferred the request waits for."""


class ListenerSet:
    """Fans one event out to every listener; a failing listener never fails a request."""

    log = Logger()

    def __init__(self, listeners=()):
        self._listeners = list(listeners)

    def add(self, listener) -> None:
        self._listeners.append(listener)

    def remove(self, listener) -> None:
        self._listeners.remove(listener)

    def emit(self, event: RegistryEvent):
        if not self._listeners:
            return defer.succeed(None)
        if len(self._listeners) == 1:  # the common case: no list of Deferreds to gather
            listener = self._listeners[0]
            d = defer.maybeDeferred(listener.registry_event, event)
            return d.addCallbacks(lambda _: None, self._failed, errbackArgs=(listener, event))
        waits = []
        for listener in self._listeners:
            d = defer.maybeDeferred(listener.registry_event, event)
            d.addErrback(self._failed, listener, event)
            waits.append(d)
        return defer.gatherResults(waits).addCallback(lambda _: None)

    def _failed(self, failure, listener, event):
        self.log.failure("listener {listener!r} failed on {action} {kind} in {repository}",
                         failure, listener=listener, action=event.action, kind=event.kind,
                         repository=event.repository)
