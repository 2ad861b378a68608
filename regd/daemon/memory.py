# -*- test-case-name: tests.test_memory -*-
"""
Keeping the daemon's memory small, before it imports what serves requests.

Most of an idle regd's memory is the code of the modules it imported, so
what a configuration does not use is not imported. The largest piece is
pyOpenSSL with `cryptography` (about 15-20 MiB of a 60 MiB process), and it
is Twisted, not regd, that loads it: its TCP transport, reactor and
endpoints import their TLS support when they are imported, if pyOpenSSL is
installed. Twisted supports running without pyOpenSSL (those imports fall
back to no TLS), so when nothing configured speaks TLS through Twisted those
modules are imported as if pyOpenSSL were absent; so is the S3 client over
plain HTTP (botocore's session module then takes the standard library's
SSLContext, the one it uses anyway). Nothing else changes: any later import
of pyOpenSSL works as usual.
"""

from __future__ import annotations

import sys

# The Twisted modules whose TLS support is decided when they are imported, and that a
# plain-HTTP regd uses: the reactor (TCP transports, listenSSL), endpoints, the web server.
_TWISTED_SERVING = ("twisted.internet.reactor", "twisted.internet.endpoints", "twisted.web.server")


def uses_twisted_tls(config) -> bool:
    """
    Whether anything configured may make or take a TLS connection through
    Twisted: the listener (certificates or ACME), S3 over HTTPS, Redis over
    TLS. Webhook endpoints do not count: their POSTs (HTTPS or not) leave
    from the delivery process, python -m regd.notifications.deliverer.
    """
    s3 = config.storage.s3 if config.storage.driver == "s3" else None
    return bool(config.http.tls.certificate or config.http.tls.key or config.http.tls.letsencrypt
                or (s3 is not None and _s3_scheme(s3) != "http") or config.redis.tls.enabled)


def early_imports(config, notifications) -> tuple[str, ...]:
    """
    What to import with the reactor, so that it loads no TLS support when
    none is wanted: the S3 driver, and AMP (spoken to the webhook delivery
    process; it takes twisted.internet.ssl whenever that imports).
    """
    return (("regd.storage.s3",) if config.storage.driver == "s3" else ()) + (
        ("twisted.protocols.amp",) if notifications.endpoints else ())


def _s3_scheme(s3) -> str:
    """The S3 endpoint's scheme, as regd.storage.s3client decides it (not imported here: it loads botocore)."""
    if "://" in s3.regionendpoint:
        return s3.regionendpoint.split("://", 1)[0].lower()
    return "https" if s3.secure else "http"


def import_twisted(tls: bool, modules: tuple[str, ...] = ()) -> bool:
    """
    Import the reactor, the serving modules and C{modules} now; without TLS
    support if C{tls} is false and Twisted's were not imported yet. Returns
    whether they were imported without TLS.
    """
    names = _TWISTED_SERVING + tuple(modules)
    if tls or any(name in sys.modules for name in ("twisted.internet.tcp", "OpenSSL")):
        for name in names:
            __import__(name)
        return False
    missing = object()
    saved = sys.modules.get("OpenSSL", missing)
    sys.modules["OpenSSL"] = None  # "import OpenSSL" raises ImportError, as when it is not installed
    try:
        for name in names:
            __import__(name)
    finally:
        if saved is missing:
            del sys.modules["OpenSSL"]
        else:
            sys.modules["OpenSSL"] = saved
    return True
