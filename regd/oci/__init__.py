"""Pure OCI/Docker distribution values: no I/O, no Twisted."""
