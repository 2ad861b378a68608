"""The daemon's wiring: the twistd composition root and the services, TLS, ACME, auth and health it assembles."""
