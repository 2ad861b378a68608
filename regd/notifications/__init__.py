"""Webhook notifications: a durable journal and one delivery queue per endpoint."""
