# -*- test-case-name: tests.http.test_api -*-
"""
URL converters. Repository names contain '/', so the name converter spans
path segments (part_isolating off); it matches loosely and the handler
validates, so a bad name gets NAME_INVALID rather than a bare 404.
"""

from werkzeug.routing import BaseConverter


class RepositoryNameConverter(BaseConverter):
    regex = r"[^?#]+?"
    part_isolating = False


class SegmentConverter(BaseConverter):
    """A single path segment: a tag, digest or upload id (validated later)."""

    regex = r"[^/]+"


CONVERTERS = {"repo": RepositoryNameConverter, "segment": SegmentConverter}
