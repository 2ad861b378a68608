# -*- test-case-name: tests.registry.test_events -*-
"""
Who asked, from where: request details that travel with every event.

Built by the HTTP layer and handed to the service, so notifications can
describe a request without importing anything from HTTP.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class RequestContext:
    request_id: str = ""
    addr: str = ""
    host: str = ""
    method: str = ""
    user_agent: str = ""
    actor: str | None = None
    # Base URL clients reach this registry at, for event target URLs.
    base_url: str = ""


SYSTEM = RequestContext(request_id="", addr="", host="", method="", user_agent="regd", actor=None)
