"""The registry service: repositories, blobs, uploads, manifests, tags, events."""
