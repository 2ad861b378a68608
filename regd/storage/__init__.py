"""Bytes and paths: storage drivers know nothing of HTTP, users or events."""
