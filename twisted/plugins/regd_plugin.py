"""The `regd` twistd plugin: `twistd -n regd --config etc/regd.yml`."""

from twisted.application.service import ServiceMaker

regd = ServiceMaker(
    "regd",
    "regd.daemon.tap",
    "A container image registry (Docker Registry HTTP API V2 / OCI Distribution 1.1).",
    "regd",
)
