# -*- test-case-name: tests.registry.test_secrets -*-
"""
A secret every instance on the same storage shares, for signing what one
instance hands out and another must accept (the web UI's session cookies)
when the configuration sets no http.secret.

Created once with random bytes; an instance that raced another re-reads
what landed, so all instances end up with the stored value.
"""

from __future__ import annotations

import secrets as _random

from regd.storage import paths
from regd.storage.interfaces import PathNotFound

SECRET_BYTES = 32


async def shared_secret(driver) -> bytes:
    try:
        value = await driver.get_content(paths.SESSION_SECRET)
        if len(value) >= SECRET_BYTES:
            return value
    except PathNotFound:
        pass
    await driver.put_content(paths.SESSION_SECRET, _random.token_hex(SECRET_BYTES).encode("ascii"))
    return await driver.get_content(paths.SESSION_SECRET)
